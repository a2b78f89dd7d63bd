"""Building and growing memory banks: batched, resumable, written atomically (DESIGN §9).

Compression is the slow part, so it is checkpointed: documents are compressed in shards of
``shard_docs`` rows, each shard written atomically to a work directory beside the bank
(``BANK.work`` for build, ``BANK.add-work`` for add) together with ``job.json`` naming the
corpus sha256, compressor hash and dtype. Re-running the same command after a crash skips
the shards already on disk; a work directory from a different job is discarded.

The bank itself is then assembled in a temporary directory and renamed into place
(:func:`clara.fileio.atomic_dir`) with its manifest written last inside it, so a crash at any
point leaves either the previous bank or the new one, each agreeing with its manifest.
``add`` copies the existing files into the new directory and appends: nothing already in
the bank is recompressed, and an ivf/ivfpq index keeps its trained quantiser.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from clara.config import Scoring
from clara.data.records import Document
from clara.errors import CheckpointError, DataError
from clara.fileio import (
    BANK_WORK,
    atomic_dir,
    atomic_write_json,
    claim_output,
    sha256_file,
    write_manifest,
    writer_lock,
)
from clara.model.memory_store import compress_batches, new_shard, read_shard
from clara.model.scoring import in_retrieval_space, retrieval_vectors
from clara.serving.bank import (
    FAISS_FILE,
    MEMORY_FILE,
    META_FILE,
    VECTORS_FILE,
    BankInfo,
    IndexKind,
    IndexParams,
    MemDtype,
    MemoryBank,
    _enum,
    _read_faiss,
    from_bits,
    new_faiss_index,
    to_bits,
    vectors_from_numpy,
    vectors_to_numpy,
)
from clara.serving.protocols import compressor_hash

log = logging.getLogger(__name__)

DEFAULT_SHARD_DOCS = 1024


def load_documents(corpus: str | Path) -> list[Document]:
    from clara.data.jsonl import load_corpus

    docs = list(load_corpus(corpus).values())
    if not docs:
        raise DataError(f"{corpus}: no documents; a bank needs at least one")
    return docs


def compress_to_shards(
    docs: Sequence[Document], model, work: Path, job: dict, *, batch_size: int, dtype: MemDtype,
    shard_docs: int = DEFAULT_SHARD_DOCS, progress: bool = True,
) -> list[Path]:
    """Compress ``docs`` into uint16 shards under ``work``; shards already there are kept. A directory at ``work``
    that is no bank's work directory is refused, never cleared."""
    claim_output(work, BANK_WORK)
    job_file = work / "job.json"
    if job_file.is_file():
        try:
            old = json.loads(job_file.read_text(encoding="utf-8"))
        except ValueError:
            old = None
        if old != job:
            log.warning("%s holds another job's partial work; discarding it", work)
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(job_file, job)
    shards = [work / f"shard-{i:06d}.npy" for i in range(math.ceil(len(docs) / shard_docs))]
    done = sum(min(shard_docs, len(docs) - i * shard_docs) for i, p in enumerate(shards) if p.is_file())
    if done:
        log.info("resuming: %d of %d documents already compressed in %s", done, len(docs), work)
    bar = tqdm(total=len(docs), initial=done, unit="doc", desc="compress", disable=not progress)
    for i, path in enumerate(shards):
        if path.is_file():
            continue
        chunk = [d.as_text() for d in docs[i * shard_docs:(i + 1) * shard_docs]]
        with new_shard(path, (len(chunk), model.num_mem, model.hidden_size), np.uint16) as array:
            for start, mem in compress_batches(model, chunk, batch_size):  # (b, m, H)
                array[start : start + len(mem)] = to_bits(mem, dtype)  # uint16 bit patterns
                bar.update(len(mem))
    bar.close()
    return shards


def _load_shard(path: Path, model) -> np.ndarray:
    return read_shard(path, (model.num_mem, model.hidden_size), np.uint16)


def _synced(path: Path, mode: str):
    """A plain file handle whose close also fsyncs (the directory rename comes after)."""

    class _F:
        def __enter__(self):
            self.f = open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
            return self.f

        def __exit__(self, *exc):
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()

    return _F()


def _write_memory_and_meta(tmp: Path, base: MemoryBank | None, shards: list[Path], docs, model) -> None:
    with _synced(tmp / MEMORY_FILE, "wb") as out:
        if base is not None:
            with open(base.directory / MEMORY_FILE, "rb") as src:
                shutil.copyfileobj(src, out, 16 << 20)
        for s in shards:
            _load_shard(s, model).tofile(out)
    with _synced(tmp / META_FILE, "w") as out:
        if base is not None:
            out.write((base.directory / META_FILE).read_text(encoding="utf-8"))
        for d in docs:
            out.write(json.dumps({"id": d.id, "title": d.title, "text": d.text}, ensure_ascii=False) + "\n")


def _shard_vectors(shards: list[Path], model, dtype: MemDtype, scoring: Scoring):
    for s in shards:  # keys live where queries are scored (the model's retrieval space)
        mem = from_bits(_load_shard(s, model), dtype)  # (b, m, H)
        yield retrieval_vectors(in_retrieval_space(model, mem), scoring)  # (b, D)


def _write_index(tmp: Path, base: MemoryBank | None, shards, model, info: BankInfo) -> IndexParams:
    params = info.index
    if params.kind is IndexKind.KERNEL:
        parts = [vectors_from_numpy(np.load(base.directory / VECTORS_FILE), params.vectors)] if base is not None else []
        parts += list(_shard_vectors(shards, model, info.dtype, info.retrieval))
        with _synced(tmp / VECTORS_FILE, "wb") as f:
            np.save(f, vectors_to_numpy(np.concatenate(parts), params.vectors))
        return params
    import faiss

    if base is not None:
        index = _read_faiss(base.directory / FAISS_FILE)  # trained quantiser kept as is
    else:
        index, params = new_faiss_index(params, info.dim, info.count)
        if not index.is_trained:
            # train on the leading vectors: enough for nlist centroids (and 256 PQ codes)
            want = min(info.count, max(64 * params.nlist, 4096))
            sample, have = [], 0
            for v in _shard_vectors(shards, model, info.dtype, info.retrieval):
                sample.append(v)
                have += len(v)
                if have >= want:
                    break
            log.info("training %s index on %d vectors (nlist=%d)", params.kind.value, have, params.nlist)
            index.train(np.concatenate(sample)[:want])
    for v in _shard_vectors(shards, model, info.dtype, info.retrieval):
        index.add(v)
    faiss.write_index(index, str(tmp / FAISS_FILE))
    return params


def _assemble(out: Path, base: MemoryBank | None, shards, docs, model, info: BankInfo) -> BankInfo:
    with atomic_dir(out) as tmp:
        _write_memory_and_meta(tmp, base, shards, docs, model)
        params = _write_index(tmp, base, shards, model, info)
        info = BankInfo(**{**info.__dict__, "index": params})
        write_manifest(tmp, info.to_manifest())  # last: the manifest vouches for finished files
    return info


def _model_fields(model) -> dict:
    chunk = getattr(model, "chunk_len", None)
    return {"num_mem": model.num_mem, "hidden_size": model.hidden_size, "compressor_hash": compressor_hash(model),
            "chunk_len": chunk, "compression_rate": chunk // model.num_mem if chunk else None}


def build_bank(corpus: str | Path, model, out: str | Path, **kw) -> BankInfo:
    """Compress every document of ``corpus`` into a new bank at ``out`` (replacing one there); keyword
    arguments as :func:`_build_bank`. One writer per bank: a second build or add of it is refused."""
    with writer_lock(out, "bank"):
        return _build_bank(corpus, model, out, **kw)


def add_to_bank(bank_dir: str | Path, corpus: str | Path, model, **kw) -> BankInfo:
    """Append the documents of ``corpus`` to an existing bank without recompressing it; keyword
    arguments as :func:`_add_to_bank`. One writer per bank: a second build or add of it is refused."""
    with writer_lock(bank_dir, "bank"):
        return _add_to_bank(bank_dir, corpus, model, **kw)


def _build_bank(
    corpus: str | Path, model, out: str | Path, *, batch_size: int = 16, dtype: MemDtype | str = MemDtype.FP16,
    retrieval: Scoring | str = Scoring.FLATTENED, index: IndexParams = IndexParams(),
    shard_docs: int = DEFAULT_SHARD_DOCS, progress: bool = True,
) -> BankInfo:
    dtype = _enum(MemDtype, dtype, "--dtype")
    retrieval = _enum(Scoring, retrieval, "--retrieval")
    out = Path(out)
    docs = load_documents(corpus)
    fields = _model_fields(model)
    info = BankInfo(count=len(docs), dtype=dtype, retrieval=retrieval, index=index,
                    extra={"corpus": [str(corpus)]}, **fields)
    if info.index.kind is not IndexKind.KERNEL:
        new_faiss_index(info.index, info.dim, info.count)  # fail on bad ivf settings before compressing
    work = out.parent / f"{out.name}.work"
    job = {"op": "build", "corpus_sha256": sha256_file(corpus), "dtype": dtype.value,
           "shard_docs": shard_docs, **fields}
    shards = compress_to_shards(docs, model, work, job, batch_size=batch_size, dtype=dtype,
                                shard_docs=shard_docs, progress=progress)
    info = _assemble(out, None, shards, docs, model, info)
    shutil.rmtree(work, ignore_errors=True)
    log.info("bank written to %s: %d documents, %.1f KiB memory per document", out, info.count,
             info.num_mem * info.hidden_size * 2 / 1024)
    return info


def _add_to_bank(
    bank_dir: str | Path, corpus: str | Path, model, *, batch_size: int = 16,
    shard_docs: int = DEFAULT_SHARD_DOCS, progress: bool = True,
) -> BankInfo:
    bank_dir = Path(bank_dir)
    base = MemoryBank.open(bank_dir, verify="sha256", use_gpu=False)
    fields = _model_fields(model)
    if fields["compressor_hash"] != base.info.compressor_hash:
        raise CheckpointError(
            f"{bank_dir}: bank was built by compressor {base.info.compressor_hash}, this model's is "
            f"{fields['compressor_hash']}; add with the same --model or build a new bank"
        )
    docs = load_documents(corpus)
    known = set(base.ids)
    clash = [d.id for d in docs if d.id in known]
    if clash:
        raise DataError(f"{corpus}: id {clash[0]!r} is already in bank {bank_dir} ({len(clash)} clashing ids)")
    work = bank_dir.parent / f"{bank_dir.name}.add-work"
    job = {"op": "add", "corpus_sha256": sha256_file(corpus), "bank_manifest_sha256": sha256_file(bank_dir / "manifest.json"),
           "dtype": base.info.dtype.value, "shard_docs": shard_docs, **fields}
    shards = compress_to_shards(docs, model, work, job, batch_size=batch_size, dtype=base.info.dtype,
                                shard_docs=shard_docs, progress=progress)
    extra = {**base.info.extra, "corpus": [*base.info.extra.get("corpus", []), str(corpus)]}
    info = BankInfo(**{**base.info.__dict__, "count": base.info.count + len(docs), "extra": extra})
    info = _assemble(bank_dir, base, shards, docs, model, info)
    del base  # drop the memmap of the replaced files
    shutil.rmtree(work, ignore_errors=True)
    log.info("added %d documents to %s (now %d)", len(docs), bank_dir, info.count)
    return info
