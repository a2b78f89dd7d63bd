"""Candidate memory computed once with the frozen compressor and kept on disk (DESIGN §5).

    cache = MemoryCache.for_model(model, "out/memory-cache")
    cache.fill(model, documents)                 # compresses only documents not cached yet
    mem = cache.lookup(keys)                     # (len(keys), m, H) float32, from np.memmap

Layout: ``<root>/<compressor hash>/shard-000000.npy`` (float32 ``[rows, m, H]``) with
``shard-000000.json`` (the document key of each row). The hash covers everything the memory
depends on — backbone, compressor LoRA weights, memory-token embeddings, chunk length, m —
so a changed compressor gets a fresh directory and never reads stale memory. Each fill
writes one new shard: the array and its key list are written under temporary names and
renamed, keys last, so a shard is either complete or invisible.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from clara.errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from clara.model import ClaraModel
    from clara.records import Document

log = logging.getLogger(__name__)


def document_key(doc: Document) -> str:
    """Cache key of a candidate: its id plus a digest of its text (ids can repeat across corpora)."""
    digest = hashlib.sha256(doc.as_text().encode("utf-8")).hexdigest()[:16]
    return f"{doc.id}:{digest}" if doc.id else f"sha:{digest}"


class MemoryCache:
    """Memory-mapped compressed candidates under one compressor hash."""

    def __init__(self, root: str | os.PathLike, key: str, num_mem: int, hidden: int):
        self.dir = Path(root) / key
        self.key, self.shape = key, (num_mem, hidden)
        self.compress_calls = 0  # batches compressed by this object (tests count recompression)
        self._rows: dict[str, tuple[int, int]] = {}  # doc key -> (shard, row)
        self._shards: list[np.ndarray] = []
        self._load()

    @classmethod
    def for_model(cls, model: ClaraModel, root: str | os.PathLike) -> MemoryCache:
        return cls(root, model.compressor_hash(), model.num_mem, model.hidden_size)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def _load(self) -> None:
        self._rows.clear()
        self._shards.clear()
        for keys_path in sorted(self.dir.glob("shard-*.json")):
            array_path = keys_path.with_suffix(".npy")
            try:
                keys = json.loads(keys_path.read_text(encoding="utf-8"))
                array = np.load(array_path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{array_path}: unreadable memory cache shard ({e}); delete {self.dir}") from None
            if array.shape != (len(keys), *self.shape):
                raise CheckpointError(
                    f"{array_path}: shape {array.shape} does not match its {len(keys)} keys and memory "
                    f"{self.shape}; delete {self.dir}"
                )
            shard = len(self._shards)
            self._shards.append(array)
            for row, key in enumerate(keys):
                self._rows.setdefault(key, (shard, row))

    def missing(self, docs: Iterable[Document]) -> list[Document]:
        """Distinct documents not cached yet, in first-seen order."""
        out: dict[str, Document] = {}
        for d in docs:
            k = document_key(d)
            if k not in self._rows and k not in out:
                out[k] = d
        return list(out.values())

    def fill(self, model: ClaraModel, docs: Iterable[Document], batch_size: int = 16) -> int:
        """Compress the documents not cached yet (no gradient) and add them as a shard; returns the count."""
        import torch
        from tqdm.auto import tqdm

        todo = self.missing(docs)
        if not todo:
            return 0
        self.dir.mkdir(parents=True, exist_ok=True)
        shard = len(list(self.dir.glob("shard-*.json")))
        name = f"shard-{shard:06d}-{os.getpid()}"
        tmp_array = self.dir / f".{name}.npy.tmp"
        array = np.lib.format.open_memmap(tmp_array, mode="w+", dtype=np.float32, shape=(len(todo), *self.shape))
        was_training = model.training
        model.eval()  # dropout off: the cache must not depend on when it was filled
        try:
            with torch.no_grad():
                for start in tqdm(range(0, len(todo), batch_size), desc="compressing candidates", unit="batch"):
                    chunk = todo[start : start + batch_size]
                    mem = model.compress([d.as_text() for d in chunk])  # (b, m, H)
                    self.compress_calls += 1
                    array[start : start + len(chunk)] = mem.float().cpu().numpy()
        finally:
            model.train(was_training)
        array.flush()
        del array
        os.replace(tmp_array, self.dir / f"{name}.npy")
        tmp_keys = self.dir / f".{name}.json.tmp"
        tmp_keys.write_text(json.dumps([document_key(d) for d in todo]), encoding="utf-8")
        os.replace(tmp_keys, self.dir / f"{name}.json")  # the shard becomes visible only now
        self._load()
        log.info("memory cache %s: compressed %d documents (%d cached)", self.dir, len(todo), len(self))
        return len(todo)

    def lookup(self, keys: Sequence[str]) -> np.ndarray:
        """Memory of the given document keys, (len(keys), m, H) float32."""
        out = np.empty((len(keys), *self.shape), dtype=np.float32)
        for i, k in enumerate(keys):
            if k not in self._rows:
                raise KeyError(f"document {k} is not in the memory cache {self.dir}; call fill() first")
            shard, row = self._rows[k]
            out[i] = self._shards[shard][row]
        return out

    def candidates(self, records: Sequence, device: torch.device | str = "cpu") -> torch.Tensor:
        """Candidate memory of a batch of question records, (B, N, m, H)."""
        import torch

        n = {len(r.candidates) for r in records}
        if len(n) != 1:
            raise ValueError(f"records in a batch must have the same number of candidates, got {sorted(n)}")
        keys = [document_key(d) for r in records for d in r.candidates]
        mem = torch.from_numpy(self.lookup(keys)).to(device)  # (B·N, m, H)
        return mem.view(len(records), n.pop(), *self.shape)  # (B, N, m, H)
