"""A resumable, shardable stream of batches.

Training is counted in steps, not epochs, so the stream is endless: epoch ``e`` visits the
items in an order fixed by ``(seed, e)``, and the position inside the epoch is all the state
there is. ``state_dict()`` after consuming a batch, loaded into a fresh stream, yields exactly
the batch that would have come next. Under DDP every rank draws the same permutation and takes
its own slice of each global batch, so ranks stay in lock-step and never see the same item.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from clara.errors import CheckpointError, DataError


class ResumableBatches:
    """Endless batches of ``batch_size`` items from ``dataset``, shuffled per (seed, epoch).

    The last incomplete global batch of an epoch is dropped so every rank gets the same number
    of batches per epoch (DDP needs all ranks to step together).
    """

    def __init__(
        self,
        dataset: Sequence[Any],
        batch_size: int,
        collate: Callable[[list[Any]], Any] = list,
        seed: int = 0,
        shuffle: bool = True,
    ):
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.collate = collate
        self.seed = seed
        self.shuffle = shuffle
        self.rank, self.world_size = 0, 1
        self.epoch, self.position = 0, 0  # position = batches already taken in this epoch
        self._order: np.ndarray | None = None

    def set_shard(self, rank: int, world_size: int) -> None:
        """Take slice ``rank`` of ``world_size`` of every global batch (called by the Trainer)."""
        self.rank, self.world_size = rank, world_size
        self._order = None
        if self.batches_per_epoch < 1:
            raise DataError(
                f"dataset has {len(self.dataset)} items, fewer than one global batch "
                f"(batch_size {self.batch_size} x {world_size} ranks); add data or lower train.batch_size"
            )

    @property
    def batches_per_epoch(self) -> int:
        return len(self.dataset) // (self.batch_size * self.world_size)

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            n = len(self.dataset)
            if self.shuffle:
                # A fresh generator per epoch: the order depends on (seed, epoch) only, never on
                # how many batches were drawn before, which is what makes resuming exact.
                self._order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
            else:
                self._order = np.arange(n)
        return self._order

    def next_batch(self) -> Any:
        if self.batches_per_epoch < 1:
            self.set_shard(self.rank, self.world_size)  # raises the clear error
        order = self._epoch_order()
        global_start = self.position * self.batch_size * self.world_size
        start = global_start + self.rank * self.batch_size
        batch = self.collate([self.dataset[int(i)] for i in order[start : start + self.batch_size]])
        self.position += 1
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        return batch

    def __iter__(self):
        while True:
            yield self.next_batch()

    def _signature(self) -> dict[str, int]:
        return {"seed": self.seed, "batch_size": self.batch_size, "world_size": self.world_size,
                "items": len(self.dataset)}

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, **self._signature()}

    def _grown_in_order(self, state: dict[str, int]) -> bool:
        """True when an unshuffled stream grew and the saved run had not gone past its first epoch
        (finishing it exactly counts): the items it read are still the prefix of this one."""
        saved_items, epoch, position = int(state.get("items", 0)), int(state["epoch"]), int(state["position"])
        return (not self.shuffle and saved_items <= len(self.dataset)
                and (epoch == 0 or (epoch == 1 and position == 0)))

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key, mine in self._signature().items():
            if key == "items" and self._grown_in_order(state):
                continue  # an in-order stream that grew (a longer fresh run) keeps its prefix
            if key in state and state[key] != mine:
                raise CheckpointError(
                    f"data position was saved with {key}={state[key]} but this run has {key}={mine}; "
                    "resume with the same data, batch size, seed and number of ranks"
                )
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None
        if self._grown_in_order(state) and self.epoch == 1:  # read all of the shorter stream: go on after it
            global_batch = self.batch_size * self.world_size
            self.epoch, self.position = 0, int(state["items"]) // global_batch
