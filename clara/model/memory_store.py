"""Compressed memory on disk (DESIGN §5, §9): the one store behind stage 2's candidate cache
(:class:`clara.model.memory_cache.MemoryCache`) and the memory bank's resumable build
(:mod:`clara.serving.bank_build`).

Documents are compressed in batches without gradient (:func:`compress_batches`) into *shards*: one
``.npy`` array ``(rows, m, H)`` each, optionally with a ``.json`` list naming each row. A shard is
written under a temporary name, fsynced and renamed, its key list last (:func:`new_shard`), so it is
complete or invisible after a crash; :func:`read_shard` checks it against the model's shape and names
the file when it does not fit.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from clara.errors import CheckpointError
from clara.fileio import named_write_error


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices of each batch when rows are taken shortest first (stable: equal lengths keep their
    order), so that a batch pads to nearly its own length instead of the longest row near it."""
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def compress_batches(model, texts: Sequence[str], batch_size: int,
                     lengths: Sequence[int] | None = None) -> Iterator[tuple[np.ndarray, object]]:
    """(row indices, memory (b, m, H)) for each batch of ``texts``: no gradient, dropout off (the memory
    must not depend on when it was computed); the model's training mode is restored afterwards.

    Rows are batched in order, or shortest first when ``lengths`` (one per text, e.g. tokens) is given:
    less padding, the same memory up to float rounding. Either way each row's memory is yielded with its index.
    """
    import torch

    from clara.model.kv_memory import require_states_readout

    require_states_readout(model, "a memory bank or cache")
    if lengths is None:
        batches = [np.arange(i, min(i + batch_size, len(texts))) for i in range(0, len(texts), batch_size)]
    else:
        batches = length_sorted_batches(lengths, batch_size)
    was_training = getattr(model, "training", False)  # stand-ins (hashing) are no torch modules
    if was_training:
        model.eval()
    try:
        with torch.no_grad():
            for rows in batches:
                mem = model.compress([texts[i] for i in rows])  # (b, m, H)
                if tuple(mem.shape) != (len(rows), model.num_mem, model.hidden_size):
                    raise CheckpointError(f"compressor returned {tuple(mem.shape)}, expected "
                                          f"({len(rows)}, {model.num_mem}, {model.hidden_size})")
                yield rows, mem
    finally:
        if was_training:
            model.train(True)


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def _new_memmap(tmp: Path, final: Path, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A new ``.npy`` array mapped from ``tmp``, its blocks allocated now: on a full disk a write through the map
    kills the process with SIGBUS, where this raises ENOSPC naming the shard ``final``."""
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
        if hasattr(os, "posix_fallocate"):  # not on macOS, where the map is written as before
            fd = os.open(tmp, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):  # a file system that cannot
                    raise
            finally:
                os.close(fd)
        return array
    except OSError as e:
        tmp.unlink(missing_ok=True)
        named = named_write_error(e, final)
        if named is None:
            raise
        raise named from e


@contextlib.contextmanager
def new_shard(path: Path, shape: tuple[int, ...], dtype, keys: Sequence[str] | None = None) -> Iterator[np.ndarray]:
    """A writable memory-mapped array for the shard at ``path``; on a clean exit it is flushed, fsynced
    and renamed into place, then ``keys`` (if given) as ``path`` with ``.json``. On an error nothing appears."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    array = _new_memmap(tmp, path, shape, dtype)
    try:
        yield array
        array.flush()
    except BaseException:
        del array
        tmp.unlink(missing_ok=True)
        raise
    del array
    _fsync_replace(tmp, path)
    if keys is not None:
        tmp_keys = path.with_name(f".{path.stem}.json.tmp")
        tmp_keys.write_text(json.dumps(list(keys)), encoding="utf-8")
        _fsync_replace(tmp_keys, path.with_suffix(".json"))  # the shard is visible to keyed readers now


def read_shard(path: Path, row_shape: tuple[int, ...], dtype, rows: int | None = None, mmap: bool = False) -> np.ndarray:
    """The shard at ``path``, checked: ``dtype`` and rows of ``row_shape`` (``rows`` of them, if given)."""
    try:
        array = np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: unreadable memory shard ({e}); delete {path.parent} and run again") from None
    want = ((rows,) if rows is not None else array.shape[:1]) + tuple(row_shape)
    if array.dtype != np.dtype(dtype) or array.shape != want:
        raise CheckpointError(f"{path}: shard {array.shape} {array.dtype} does not fit {want} {np.dtype(dtype)}; "
                              f"delete {path.parent} and run again")
    return array


def read_keys(path: Path) -> list[str]:
    """The row keys of the shard at ``path`` (its ``.json``)."""
    keys_path = Path(path).with_suffix(".json")
    try:
        return json.loads(keys_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{keys_path}: unreadable shard keys ({e}); delete {keys_path.parent}") from None
