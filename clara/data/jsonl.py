"""Validating JSON-lines reader and atomic writer for data records.

Every line is decoded as strict UTF-8, parsed as strict JSON (no NaN/Infinity, no
duplicate keys), validated as a typed record (:mod:`clara.data.records`) and checked for a
duplicate ``id``. A problem raises :class:`DataError` ``file:line: field: problem`` —
or, with ``skip_bad=True``, the line is logged at WARNING, counted and skipped.
Blank lines are ignored.

Questions without candidates can take them from a separate ``candidates`` file keyed by
question id (see :func:`load_candidates`). Candidates given as ``doc_ids`` are resolved against a corpus (``documents.jsonl``): the
one passed in, else a ``documents.jsonl`` next to the file or one folder up (the world
corpus keeps questions in ``questions/*.jsonl`` beside its ``documents.jsonl``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Union

from tqdm import tqdm

from clara.errors import DataError
from clara.fileio import atomic_file
from clara.data.records import (
    DEFAULT_LIMITS,
    RECORD_TYPES,
    Document,
    EvalRecord,
    JointRecord,
    Limits,
    PretrainRecord,
    RecordKind,
    data_error,
    show,
)

logger = logging.getLogger(__name__)

Record = Union[PretrainRecord, JointRecord, EvalRecord, Document]
CORPUS_NAME = "documents.jsonl"
PROGRESS_MIN_BYTES = 32 << 20  # show a progress bar (on a terminal) for files at least this big


@dataclass
class ReadStats:
    """What a read saw; filled in as the iterator runs."""

    path: str
    lines: int = 0  # non-blank lines
    records: int = 0
    skipped: int = 0
    line: int = 0  # the line number of the record last yielded
    corpus: str | None = None  # the corpus used to resolve doc_ids, if any
    problems: list[str] = field(default_factory=list)


BLANK = object()  # a blank line, as distinct from a line holding JSON null


class _TooLong:
    def __init__(self, size: int):
        self.size = size


def _raw_lines(f, max_bytes: int) -> Iterator[tuple[int, bytes | _TooLong]]:
    """Numbered raw lines; a line over ``max_bytes`` is drained without being held in memory."""
    lineno = 0
    while True:
        raw = f.readline(max_bytes + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            size = len(raw)
            while raw and not raw.endswith(b"\n"):
                raw = f.readline(1 << 20)
                size += len(raw)
            yield lineno, _TooLong(size)
            continue
        yield lineno, raw


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {show(k)}")
        out[k] = v
    return out


def parse_line(raw: bytes | _TooLong, where: str, limits: Limits, first: bool = False) -> Any:
    """Decode and parse one line; :data:`BLANK` for a blank line."""
    if isinstance(raw, _TooLong):
        raise data_error(where, "record", f"line too long ({raw.size} bytes > limit {limits.max_line_bytes})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise data_error(where, "record", f"invalid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1})") from None
    if first:
        text = text.removeprefix("\ufeff")
    if not text.strip():
        return BLANK
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise data_error(where, "record", f"invalid JSON: {e.msg} at column {e.colno}") from None
    except RecursionError:
        raise data_error(where, "record", "invalid JSON: nested too deeply") from None
    except ValueError as e:  # duplicate keys, NaN, integers too long to convert
        raise data_error(where, "record", f"invalid JSON: {str(e)[:120]}") from None


def _open(path: Path):
    try:
        return open(path, "rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}; check the path") from None


class CorpusError(DataError):
    """A bad corpus: fatal even when skipping bad records, since every question needs it."""


class _LazyCorpus(Mapping[str, Document]):
    """A corpus loaded on first use, so files that never name doc_ids don't pay for it."""

    def __init__(self, path: Path, limits: Limits):
        self.path = path
        self.limits = limits
        self._docs: dict[str, Document] | None = None

    def _load(self) -> dict[str, Document]:
        if self._docs is None:
            try:
                self._docs = load_corpus(self.path, limits=self.limits)
            except CorpusError:
                raise
            except DataError as e:
                raise CorpusError(f"{e} (in the corpus; check it with: clara data check {self.path} --kind documents)") from None
        return self._docs

    def __getitem__(self, key: str) -> Document:
        return self._load()[key]

    def __iter__(self):
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


def find_corpus(path: str | os.PathLike) -> Path | None:
    """A ``documents.jsonl`` beside ``path`` or one folder up (the world corpus layout)."""
    here = Path(path).resolve().parent
    for folder in (here, here.parent):
        candidate = folder / CORPUS_NAME
        if candidate.is_file() and candidate != Path(path).resolve():
            return candidate
    return None


def load_corpus(path: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS) -> dict[str, Document]:
    """All documents of a corpus file by id; any bad line is an error naming the corpus file."""
    docs = {}
    for doc in iter_records(path, RecordKind.DOCUMENTS, limits=limits):
        docs[doc.id] = doc
    logger.debug("loaded %d documents from %s", len(docs), path)
    return docs


def iter_records(
    path: str | os.PathLike,
    kind: RecordKind | str,
    *,
    skip_bad: bool = False,
    corpus: str | os.PathLike | Mapping[str, Document] | None = None,
    candidates: str | os.PathLike | None = None,
    limits: Limits = DEFAULT_LIMITS,
    stats: ReadStats | None = None,
    on_problem: Callable[[DataError], None] | None = None,
) -> Iterator[Record]:
    """Yield validated records of ``kind`` from a JSON-lines file.

    A bad line raises :class:`DataError`; with ``skip_bad`` it is logged and skipped; with
    ``on_problem`` it is handed to the callback (used by ``clara data check`` to list all).
    A bad corpus or candidates file is always fatal.
    """
    kind = RecordKind(kind)
    path = Path(path)
    stats = stats if stats is not None else ReadStats(str(path))
    parse = _record_parser(kind, path, corpus, candidates, limits, stats)
    seen: dict[str, int] = {}
    with _open(path) as f, _progress(f, path) as bar:
        for lineno, raw in _raw_lines(f, limits.max_line_bytes):
            bar.update(raw.size if isinstance(raw, _TooLong) else len(raw))
            where = f"{path}:{lineno}"
            obj = BLANK
            try:
                obj = parse_line(raw, where, limits, first=lineno == 1)
                if obj is BLANK:
                    continue
                stats.lines += 1
                record = parse(obj, where)
                _check_unique(record, seen, lineno, where)
            except DataError as e:
                if isinstance(e, CorpusError) or (on_problem is None and not skip_bad):
                    raise
                if obj is BLANK:  # the line itself was unreadable, so it was not counted above
                    stats.lines += 1
                stats.skipped += 1
                stats.problems.append(str(e))
                if on_problem is not None:
                    on_problem(e)
                else:
                    logger.warning("skipping bad record: %s", e)
                continue
            stats.records += 1
            stats.line = lineno
            yield record
    if skip_bad and stats.skipped:
        logger.warning("skipped %d bad record(s) of %d in %s", stats.skipped, stats.lines, path)


def _progress(f, path: Path) -> tqdm:
    size = os.fstat(f.fileno()).st_size
    # disable=None: on only when stderr is a terminal, so piped CLI errors stay one line.
    off = True if size < PROGRESS_MIN_BYTES else None
    return tqdm(total=size, unit="B", unit_scale=True, desc=f"reading {path.name}", disable=off, leave=False)


def _record_parser(kind: RecordKind, path: Path, corpus, candidates, limits: Limits, stats: ReadStats):
    cls = RECORD_TYPES[kind]
    if candidates is not None and kind not in (RecordKind.JOINT, RecordKind.EVAL):
        raise DataError(f"{candidates}: a candidates file applies only to joint and eval records, not {kind.value}")
    if kind is RecordKind.PRETRAIN:
        return lambda obj, where: cls.from_json(obj, where, limits)
    if kind is RecordKind.DOCUMENTS:
        return lambda obj, where: cls.from_json(obj, where, limits, require_id=True)
    if corpus is None:
        corpus = find_corpus(path)
    if isinstance(corpus, (str, os.PathLike)):
        stats.corpus = str(corpus)
        corpus = _LazyCorpus(Path(corpus), limits)
    by_id = load_candidates(candidates, limits=limits) if candidates is not None else {}

    def parse(obj: Any, where: str):
        found = by_id.get(_question_id(obj)) if by_id and not _has_candidates(obj) else None
        if found is None:
            return cls.from_json(obj, where, limits, corpus=corpus)
        fields, cand_where = found
        try:
            return cls.from_json({**obj, **fields}, where, limits, corpus=corpus)
        except DataError as e:
            raise DataError(f"{e} (candidates from {cand_where})") from None

    return parse


def _question_id(obj: Any) -> str | None:
    qid = obj.get("id") if isinstance(obj, dict) else None
    return str(qid) if isinstance(qid, (str, int)) and not isinstance(qid, bool) else None


def _has_candidates(obj: Any) -> bool:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    sources = [obj] + ([meta] if isinstance(meta, dict) else [])
    return any(isinstance(src, dict) and ("docs" in src or "doc_ids" in src) for src in sources)


def load_candidates(path: str | os.PathLike, *, limits: Limits = DEFAULT_LIMITS) -> dict[str, tuple[dict, str]]:
    """Candidates for questions by id, from JSON lines ``{"id", "doc_ids"|"docs", "pos_index"?}``.

    This is how FlashRAG records ``{id, question, golden_answers, metadata}`` get candidates
    kept in a separate file (a retriever's output). Any bad line is fatal.
    """
    out: dict[str, tuple[dict, str]] = {}
    path = Path(path)
    with _open(path) as f:
        for lineno, raw in _raw_lines(f, limits.max_line_bytes):
            where = f"{path}:{lineno}"
            obj = parse_line(raw, where, limits, first=lineno == 1)
            if obj is BLANK:
                continue
            if not isinstance(obj, dict):
                raise data_error(where, "record", f"expected an object, got {show(obj)}")
            qid = _question_id(obj)
            if qid is None:
                raise data_error(where, "id", f"expected the question's id (string or integer), got {show(obj.get('id'))}")
            if qid in out:
                raise data_error(where, "id", f"duplicate id {show(qid)} (first at {out[qid][1]})")
            if not _has_candidates(obj):
                raise data_error(where, "doc_ids", "missing (give 'doc_ids' or 'docs')")
            out[qid] = ({k: obj[k] for k in ("docs", "doc_ids", "pos_index") if k in obj}, where)
    logger.debug("loaded candidates for %d questions from %s", len(out), path)
    return out


def _check_unique(record: Record, seen: dict[str, int], lineno: int, where: str) -> None:
    rid = getattr(record, "id", None)
    if rid is None:
        return
    if rid in seen:
        raise data_error(where, "id", f"duplicate id {show(rid)} (first on line {seen[rid]}); ids must be unique")
    seen[rid] = lineno


def read_records(
    path: str | os.PathLike,
    kind: RecordKind | str,
    *,
    skip_bad: bool = False,
    corpus: str | os.PathLike | Mapping[str, Document] | None = None,
    candidates: str | os.PathLike | None = None,
    limits: Limits = DEFAULT_LIMITS,
    stats: ReadStats | None = None,
) -> list[Record]:
    """All valid records of a file (see :func:`iter_records`)."""
    return list(
        iter_records(path, kind, skip_bad=skip_bad, corpus=corpus, candidates=candidates, limits=limits, stats=stats)
    )


def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """(``file:line``, parsed value) of each non-blank line, for readers that keep the raw objects
    (synthesis inputs, mixtures); a line that is no JSON is one ``file:line: record: ...`` error."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield where, json.loads(line)
            except ValueError as e:
                raise DataError(f"{where}: record: invalid JSON ({e})") from None


def write_jsonl(path: str | os.PathLike, records: Iterable[Record | dict]) -> int:
    """Write records (or plain dicts) one per line, atomically; returns the count.

    If ``records`` raises part-way (a bad input line), nothing is left at ``path``.
    """
    n = 0
    with atomic_file(path, "w") as f:
        for rec in records:
            obj = rec if isinstance(rec, dict) else rec.to_json()
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            n += 1
    return n
