"""Candidate memory computed once with the frozen compressor and kept on disk (DESIGN §5).

    cache = MemoryCache.for_model(model, "out/memory-cache")
    cache.fill(model, documents)                 # compresses only documents not cached yet
    mem = cache.lookup(keys)                     # (len(keys), m, H) float32, from np.memmap

Layout: ``<root>/<compressor hash>/shard-000000.npy`` (float32 ``[rows, m, H]``) with
``shard-000000.json`` (the document key of each row), shards of :mod:`clara.model.memory_store`.
The hash covers everything the memory depends on — backbone, compressor LoRA weights,
memory-token embeddings, chunk length, m — so a changed compressor gets a fresh directory and
never reads stale memory. Each fill writes one new shard, complete or invisible.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from clara.config import ClaraConfig
from clara.model.memory_store import compress_batches, new_shard, read_keys, read_shard

if TYPE_CHECKING:
    import torch

    from clara.model.clara_model import ClaraModel
    from clara.data.records import Document

log = logging.getLogger(__name__)


def document_key(doc: Document) -> str:
    """Cache key of a candidate: its id plus a digest of its text (ids can repeat across corpora)."""
    digest = hashlib.sha256(doc.as_text().encode("utf-8")).hexdigest()[:16]
    return f"{doc.id}:{digest}" if doc.id else f"sha:{digest}"


def cache_root(cfg: ClaraConfig) -> Path:
    """Where a run keeps its candidates' memory: ``joint.cache_dir``, else ``memory-cache`` beside the run."""
    return Path(cfg.joint.cache_dir) if cfg.joint.cache_dir else Path(cfg.out_dir).parent / "memory-cache"


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
            keys = read_keys(array_path)
            array = read_shard(array_path, self.shape, np.float32, rows=len(keys), mmap=True)
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
        from tqdm.auto import tqdm

        todo = self.missing(docs)
        if not todo:
            return 0
        self.dir.mkdir(parents=True, exist_ok=True)
        shard = len(list(self.dir.glob("shard-*.json")))
        path = self.dir / f"shard-{shard:06d}-{os.getpid()}.npy"
        texts = [d.as_text() for d in todo]
        bar = tqdm(total=-(-len(texts) // batch_size), desc="compressing candidates", unit="batch")
        with new_shard(path, (len(todo), *self.shape), np.float32, keys=[document_key(d) for d in todo]) as array:
            for rows, mem in compress_batches(model, texts, batch_size):  # (b, m, H)
                self.compress_calls += 1
                array[rows] = mem.float().cpu().numpy()
                bar.update(1)
        bar.close()
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
