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

A document longer than the model's ``chunk_len`` becomes several rows (:func:`bank_rows`), cut as
``clara corpus ingest`` cuts passages (at sentence ends, each row with the document's title), with
ids ``{id}#0``, ``{id}#1``, ... and ``"source": id`` in their ``meta.jsonl`` line; a document that fits
keeps its id and its line has no ``source``. Rows are compressed shortest first within each shard, so
batches pad little, and written back in corpus order.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from dataclasses import dataclass
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


@dataclass
class BankRows:
    """What a corpus becomes in a bank: one row per document, several for one longer than ``chunk_len``."""

    docs: list[Document]  # one per row, in bank order
    sources: list[str | None]  # the corpus document a split row came from; None for a whole document
    lengths: list[int]  # tokens of each row's text (characters, for a model without a tokenizer)
    split_documents: int = 0

    def counts(self) -> dict:
        whole = sum(s is None for s in self.sources)
        return {"documents": whole + self.split_documents, "rows": len(self.docs), "split_documents": self.split_documents}


def _split(doc: Document, tokens: int, model) -> list[Document]:
    from clara.data.corpus import chunk_document

    try:
        return chunk_document(doc, model.tokenizer, model.chunk_len, min_tokens=1)  # no tail is dropped
    except DataError:
        raise DataError(f"document {doc.id!r}: {tokens} tokens, more than the model's chunk_len={model.chunk_len}, "
                        "and its title leaves too little room to split it into rows; shorten the title") from None


def bank_rows(docs: Sequence[Document], model, where: str | Path) -> BankRows:
    """The bank rows of ``docs`` for ``model``; ``where`` names the corpus in errors. A model without
    ``chunk_len`` and ``token_counts`` (the hashing stand-in) reads any length: one row per document."""
    texts = [d.as_text() for d in docs]
    chunk_len, count = getattr(model, "chunk_len", None), getattr(model, "token_counts", None)
    if not chunk_len or count is None:
        return BankRows(list(docs), [None] * len(docs), [len(t) for t in texts])
    lengths = count(texts)
    rows, sources, split = [], [], 0
    for doc, tokens in zip(docs, lengths):
        parts = _split(doc, tokens, model) if tokens > chunk_len else []
        if len(parts) < 2:  # fits (or re-tokenised, nearly): the whole document, as it always was
            rows.append(doc)
            sources.append(None)
            continue
        split += 1
        rows += parts
        sources += [doc.id] * len(parts)
    if not split:
        return BankRows(rows, sources, lengths)
    seen: set[str] = set()
    for row, source in zip(rows, sources):
        if row.id in seen:
            raise DataError(f"{where}: document {source or row.id!r} is split into rows named {{id}}#N, and row id "
                            f"{row.id!r} is taken by another document; rename one of them")
        seen.add(row.id)
    log.info("%s: %d documents longer than chunk_len=%d tokens become %d rows", where, split, chunk_len,
             sum(s is not None for s in sources))
    return BankRows(rows, sources, count([r.as_text() for r in rows]), split)


def warn_if_chunked_for_another_length(corpus: str | Path, model) -> None:
    """One warning when ``clara corpus ingest`` cut ``corpus`` for another chunk_len than the model's."""
    from clara.data.corpus import summary_path

    chunk_len, path = getattr(model, "chunk_len", None), summary_path(Path(corpus))
    if not chunk_len or not path.is_file():
        return
    try:
        ingested = int(json.loads(path.read_text(encoding="utf-8"))["chunk_len"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if ingested != chunk_len:
        effect = ("passages longer than the model reads become several rows" if ingested > chunk_len
                  else "each row holds less text than the model reads")
        log.warning("%s was ingested with chunk_len=%d but the model compresses chunk_len=%d tokens: %s; "
                    "ingest again with `clara corpus ingest ... --chunk-len %d` for passages cut to fit",
                    corpus, ingested, chunk_len, effect, chunk_len)


def load_documents(corpus: str | Path) -> list[Document]:
    from clara.data.jsonl import load_corpus

    docs = list(load_corpus(corpus).values())
    if not docs:
        raise DataError(f"{corpus}: no documents; a bank needs at least one")
    return docs


def compress_to_shards(
    docs: Sequence[Document], model, work: Path, job: dict, *, batch_size: int, dtype: MemDtype,
    shard_docs: int = DEFAULT_SHARD_DOCS, progress: bool = True, lengths: Sequence[int] | None = None,
) -> list[Path]:
    """Compress ``docs`` into uint16 shards under ``work``; shards already there are kept. A directory at ``work``
    that is no bank's work directory is refused, never cleared. With ``lengths`` (one per document) each shard's
    rows are batched shortest first, then stored in order."""
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
        chunk_lengths = None if lengths is None else lengths[i * shard_docs:(i + 1) * shard_docs]
        with new_shard(path, (len(chunk), model.num_mem, model.hidden_size), np.uint16) as array:
            for rows, mem in compress_batches(model, chunk, batch_size, chunk_lengths):  # (b, m, H)
                array[rows] = to_bits(mem, dtype)  # uint16 bit patterns
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


def _write_memory_and_meta(tmp: Path, base: MemoryBank | None, shards: list[Path], rows: BankRows, model) -> None:
    with _synced(tmp / MEMORY_FILE, "wb") as out:
        if base is not None:
            with open(base.directory / MEMORY_FILE, "rb") as src:
                shutil.copyfileobj(src, out, 16 << 20)
        for s in shards:
            _load_shard(s, model).tofile(out)
    with _synced(tmp / META_FILE, "w") as out:
        if base is not None:
            out.write((base.directory / META_FILE).read_text(encoding="utf-8"))
        for d, source in zip(rows.docs, rows.sources):
            line = {"id": d.id, "title": d.title, "text": d.text, **({"source": source} if source is not None else {})}
            out.write(json.dumps(line, ensure_ascii=False) + "\n")


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


def _assemble(out: Path, base: MemoryBank | None, shards, rows: BankRows, model, info: BankInfo) -> BankInfo:
    with atomic_dir(out) as tmp:
        _write_memory_and_meta(tmp, base, shards, rows, model)
        params = _write_index(tmp, base, shards, model, info)
        info = BankInfo(**{**info.__dict__, "index": params})
        write_manifest(tmp, info.to_manifest())  # last: the manifest vouches for finished files
    return info


def _model_fields(model) -> dict:
    chunk = getattr(model, "chunk_len", None)
    return {"num_mem": model.num_mem, "hidden_size": model.hidden_size, "compressor_hash": compressor_hash(model),
            "chunk_len": chunk, "compression_rate": chunk // model.num_mem if chunk else None}


def _work_fields(rows: BankRows, model) -> dict:
    """What else a shard's contents depend on: the rows, and the precision of the forwards."""
    precision = getattr(model, "inference_precision", None)  # the hashing stand-in has none
    return {"rows": len(rows.docs), "split_documents": rows.split_documents,
            "precision": getattr(precision, "value", precision)}


def build_bank(corpus: str | Path, model, out: str | Path, **kw) -> BankInfo:
    """Compress every document of ``corpus`` into a new bank at ``out`` (replacing one there); keyword
    arguments as :func:`_build_bank` (``counts``: a dict to fill with documents, rows and split documents;
    ``sort_by_length=False`` batches rows in corpus order). One writer per bank: a second build or add of it
    is refused."""
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
    shard_docs: int = DEFAULT_SHARD_DOCS, progress: bool = True, counts: dict | None = None,
    sort_by_length: bool = True,
) -> BankInfo:
    dtype = _enum(MemDtype, dtype, "--dtype")
    retrieval = _enum(Scoring, retrieval, "--retrieval")
    out = Path(out)
    warn_if_chunked_for_another_length(corpus, model)
    rows = bank_rows(load_documents(corpus), model, corpus)
    fields = _model_fields(model)
    info = BankInfo(count=len(rows.docs), dtype=dtype, retrieval=retrieval, index=index,
                    extra={"corpus": [str(corpus)]}, **fields)
    if info.index.kind is not IndexKind.KERNEL:
        new_faiss_index(info.index, info.dim, info.count)  # fail on bad ivf settings before compressing
    work = out.parent / f"{out.name}.work"
    job = {"op": "build", "corpus_sha256": sha256_file(corpus), "dtype": dtype.value,
           "shard_docs": shard_docs, **fields, **_work_fields(rows, model)}
    shards = compress_to_shards(rows.docs, model, work, job, batch_size=batch_size, dtype=dtype, shard_docs=shard_docs,
                                progress=progress, lengths=rows.lengths if sort_by_length else None)
    info = _assemble(out, None, shards, rows, model, info)
    if counts is not None:
        counts.update(rows.counts())
    shutil.rmtree(work, ignore_errors=True)
    log.info("bank written to %s: %d documents, %.1f KiB memory per document", out, info.count,
             info.num_mem * info.hidden_size * 2 / 1024)
    return info


def _add_to_bank(
    bank_dir: str | Path, corpus: str | Path, model, *, batch_size: int = 16,
    shard_docs: int = DEFAULT_SHARD_DOCS, progress: bool = True, counts: dict | None = None,
) -> BankInfo:
    bank_dir = Path(bank_dir)
    base = MemoryBank.open(bank_dir, verify="sha256", use_gpu=False)
    fields = _model_fields(model)
    if fields["compressor_hash"] != base.info.compressor_hash:
        raise CheckpointError(
            f"{bank_dir}: bank was built by compressor {base.info.compressor_hash}, this model's is "
            f"{fields['compressor_hash']}; add with the same --model or build a new bank"
        )
    warn_if_chunked_for_another_length(corpus, model)
    rows = bank_rows(load_documents(corpus), model, corpus)
    known = set(base.ids)
    clash = [d.id for d in rows.docs if d.id in known]
    if clash:
        raise DataError(f"{corpus}: id {clash[0]!r} is already in bank {bank_dir} ({len(clash)} clashing ids)")
    work = bank_dir.parent / f"{bank_dir.name}.add-work"
    job = {"op": "add", "corpus_sha256": sha256_file(corpus), "bank_manifest_sha256": sha256_file(bank_dir / "manifest.json"),
           "dtype": base.info.dtype.value, "shard_docs": shard_docs, **fields, **_work_fields(rows, model)}
    shards = compress_to_shards(rows.docs, model, work, job, batch_size=batch_size, dtype=base.info.dtype,
                                shard_docs=shard_docs, progress=progress, lengths=rows.lengths)
    extra = {**base.info.extra, "corpus": [*base.info.extra.get("corpus", []), str(corpus)]}
    info = BankInfo(**{**base.info.__dict__, "count": base.info.count + len(rows.docs), "extra": extra})
    info = _assemble(bank_dir, base, shards, rows, model, info)
    if counts is not None:
        counts.update(rows.counts())
    del base  # drop the memmap of the replaced files
    shutil.rmtree(work, ignore_errors=True)
    log.info("added %d rows to %s (now %d)", len(rows.docs), bank_dir, info.count)
    return info
