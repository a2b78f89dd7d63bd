"""Typed data records for every stage, validated from JSON (DESIGN §4, §5, §7, §10).

Each record type has ``from_json(obj, where, ...)`` that checks every field and raises
:class:`DataError` with one line ``file:line: field: problem``; ``to_json()`` writes the
project's own format. Formats read:

- **pretrain** — project ``{"id"?, "doc_id"?, "data_type": "qa"|"paraphrase", "doc",
  "pairs": [{"question", "answer"}] | "paraphrase", "instruction"?}`` and reference
  ``{"data_type", "question": [..], "answers": [..], "docs": [doc, ...]}`` (several docs
  are joined with a blank line; for paraphrase ``answers[0]`` is the target and
  ``question[0]``, if any, the instruction). Either may name the data set it came from in
  ``source`` (a string; ``clara eval compression --data`` scores each source apart).
- **joint / eval** — ``question``; answers from exactly one of ``answer`` (string),
  ``answers`` or ``golden_answers`` (lists; several may be given only if they agree);
  candidates from ``docs`` (strings or document objects) or ``doc_ids`` (resolved against a
  corpus), at top level or — for FlashRAG records ``{id, question, golden_answers,
  metadata}`` — inside ``metadata``; ``pos_index`` (int or list, top level or in
  ``metadata``), derived from ``gold_ids`` when absent. Unknown keys are kept in ``extra``.
  FlashRAG records whose candidates live in a separate file get them merged in by the
  reader (:func:`clara.data.jsonl.load_candidates`, ``--candidates``).
- **joint / eval, reference form** — the reference's end-to-end records ``{"question",
  "docs": [str, ...], "gold_answer": str}`` and its instruction-tuning records, which add
  ``"answer"``: there ``answer`` is a teacher's *generated* answer, not the reference, so
  ``gold_answer`` is the answer and ``answer`` is kept as the extra field
  ``generated_answer``. These records name no gold document: with neither ``pos_index``
  nor ``gold_ids``, ``pos_index`` lists the candidates whose text contains a gold answer
  as a run of normalised tokens (:func:`clara.answers.cover_em`: lowercase, no
  punctuation or articles), and the extra field ``"pos_from": "answer_match"`` says it
  was derived, not labelled — a candidate can mention the answer without supporting it.
- **documents** — ``{"id", "title", "text"}`` or FlashRAG ``{"id", "contents"}`` where
  contents is ``title\\ntext`` (a title in double quotes loses them).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from clara.answers import cover_em
from clara.errors import DataError


class RecordKind(str, enum.Enum):
    PRETRAIN = "pretrain"
    JOINT = "joint"
    EVAL = "eval"
    DOCUMENTS = "documents"


class DataType(str, enum.Enum):
    QA = "qa"
    PARAPHRASE = "paraphrase"


@dataclass(frozen=True)
class Limits:
    """Size limits; a longer value is a data error, since it is almost always a broken file."""

    max_question_chars: int = 10_000  # questions, answers, titles, instructions
    max_doc_chars: int = 1_000_000  # document text, paraphrases
    max_id_chars: int = 1_000
    max_candidates: int = 10_000
    max_line_bytes: int = 64 << 20


DEFAULT_LIMITS = Limits()


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages a user can act on."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def show(value: Any, limit: int = 40) -> str:
    """A short, single-line, ASCII echo of a scalar value; containers by type only."""
    if isinstance(value, str):
        cut = value[:limit]
        return json.dumps(cut, ensure_ascii=True) + ("..." if len(value) > limit else "")
    if value is None or isinstance(value, (bool, int, float)):
        text = json.dumps(value)
        return text if len(text) <= limit else text[:limit] + "..."
    return f"an {json_type(value)}" if json_type(value)[0] in "ao" else json_type(value)


def data_error(where: str, fieldname: str, problem: str) -> DataError:
    msg = f"{where}: {fieldname}: {problem}"
    # One line, always: a path or echoed value must not break the format.
    return DataError(msg.replace("\r", "\\r").replace("\n", "\\n"))


class _Check:
    """Field validators bound to one record's location and limits."""

    def __init__(self, where: str, limits: Limits):
        self.where = where
        self.limits = limits

    def error(self, name: str, problem: str) -> DataError:
        return data_error(self.where, name, problem)

    def obj(self, value: Any, name: str) -> dict:
        if not isinstance(value, dict):
            raise self.error(name, f"expected an object, got {show(value)}")
        return value

    def require(self, obj: dict, key: str, prefix: str = "") -> Any:
        if key not in obj:
            raise self.error(prefix + key, "missing (required field)")
        return obj[key]

    def string(self, value: Any, name: str, max_chars: int, allow_empty: bool = False) -> str:
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {show(value)}")
        if not allow_empty and not value.strip():
            raise self.error(name, "must not be empty")
        if len(value) > max_chars:
            raise self.error(name, f"too long ({len(value)} chars > limit {max_chars}); fix the file or raise the limit")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise self.error(name, f"not valid Unicode (unpaired surrogate at char {e.start})") from None
        return value

    def array(self, value: Any, name: str, allow_empty: bool = False, max_len: int | None = None) -> list:
        if not isinstance(value, list):
            raise self.error(name, f"expected an array, got {show(value)}")
        if not allow_empty and not value:
            raise self.error(name, "must not be an empty array")
        if max_len is not None and len(value) > max_len:
            raise self.error(name, f"too many items ({len(value)} > limit {max_len})")
        return value

    def strings(self, value: Any, name: str, max_chars: int, allow_empty: bool = False) -> tuple[str, ...]:
        items = self.array(value, name, allow_empty=allow_empty)
        return tuple(self.string(v, f"{name}[{i}]", max_chars) for i, v in enumerate(items))

    def ident(self, value: Any, name: str) -> str:
        # Integer ids are common in public datasets; they are kept as their decimal string.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return self.string(value, name, self.limits.max_id_chars)

    def idents(self, value: Any, name: str, allow_empty: bool = False) -> tuple[str, ...]:
        items = self.array(value, name, allow_empty=allow_empty, max_len=self.limits.max_candidates)
        return tuple(self.ident(v, f"{name}[{i}]") for i, v in enumerate(items))

    def optional(self, obj: dict, key: str, parse, *args) -> Any:
        return parse(obj[key], key, *args) if key in obj else None

    def serializable(self, value: Any, name: str) -> None:
        # Extra fields are passed through on convert; they must be writable as UTF-8 JSON.
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise self.error(name, "not valid Unicode (unpaired surrogate)") from None
        except (RecursionError, ValueError):
            raise self.error(name, "nested too deeply to write back") from None


# ---------------------------------------------------------------------------- documents


@dataclass(frozen=True)
class Document:
    text: str
    title: str = ""
    id: str | None = None  # None only for inline candidates given as plain strings

    def as_text(self) -> str:
        return f"{self.title}\n{self.text}" if self.title else self.text

    def to_json(self) -> dict:
        out: dict[str, Any] = {} if self.id is None else {"id": self.id}
        out.update(title=self.title, text=self.text)
        return out

    @classmethod
    def from_json(
        cls, obj: Any, where: str, limits: Limits = DEFAULT_LIMITS, *, prefix: str = "", require_id: bool = True
    ) -> "Document":
        c = _Check(where, limits)
        obj = c.obj(obj, prefix.rstrip(".") or "record")
        doc_id = None
        if require_id or "id" in obj:
            doc_id = c.ident(c.require(obj, "id", prefix), prefix + "id")
        if "contents" in obj and "text" not in obj:
            contents = c.string(obj["contents"], prefix + "contents", limits.max_doc_chars)
            title, sep, text = contents.partition("\n")
            if not sep:  # no title line: the whole thing is text
                title, text = "", contents
            if len(title) >= 2 and title[0] == title[-1] == '"':
                title = title[1:-1]
            if not text.strip():
                raise c.error(prefix + "contents", "has a title line but no text after it")
            return cls(text=text, title=title, id=doc_id)
        if "text" not in obj:
            raise c.error(prefix + "text", "missing (required field; or give 'contents')")
        text = c.string(obj["text"], prefix + "text", limits.max_doc_chars)
        title = ""
        if "title" in obj and obj["title"] is not None:
            title = c.string(obj["title"], prefix + "title", limits.max_question_chars, allow_empty=True)
        return cls(text=text, title=title, id=doc_id)


# ---------------------------------------------------------------------------- pretraining


@dataclass(frozen=True)
class QAPair:
    question: str
    answer: str


@dataclass(frozen=True)
class PretrainRecord:
    doc: str
    data_type: DataType
    pairs: tuple[QAPair, ...] = ()  # data_type qa
    paraphrase: str | None = None  # data_type paraphrase
    instruction: str | None = None  # optional paraphrase instruction
    id: str | None = None
    doc_id: str | None = None
    source: str | None = None  # the data set it came from

    def to_json(self) -> dict:
        out: dict[str, Any] = {}
        for key in ("id", "doc_id", "source"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update(data_type=self.data_type.value, doc=self.doc)
        if self.data_type is DataType.QA:
            out["pairs"] = [{"question": p.question, "answer": p.answer} for p in self.pairs]
        else:
            out["paraphrase"] = self.paraphrase
            if self.instruction is not None:
                out["instruction"] = self.instruction
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str, limits: Limits = DEFAULT_LIMITS) -> "PretrainRecord":
        c = _Check(where, limits)
        obj = c.obj(obj, "record")
        raw_type = c.require(obj, "data_type")
        try:
            data_type = DataType(raw_type)
        except (ValueError, TypeError):
            raise c.error("data_type", f"unknown value {show(raw_type)} (expected \"qa\" or \"paraphrase\")") from None
        ids = dict(id=c.optional(obj, "id", c.ident), doc_id=c.optional(obj, "doc_id", c.ident),
                   source=c.optional(obj, "source", c.string, limits.max_id_chars))  # fmt: skip
        if "doc" in obj:
            return cls._from_project(c, obj, data_type, ids)
        if "docs" in obj:
            return cls._from_reference(c, obj, data_type, ids)
        raise c.error("doc", "missing (project format needs 'doc'; reference format needs 'docs')")

    @classmethod
    def _from_project(cls, c: _Check, obj: dict, data_type: DataType, ids: dict) -> "PretrainRecord":
        lim = c.limits
        doc = c.string(obj["doc"], "doc", lim.max_doc_chars)
        if data_type is DataType.QA:
            if "paraphrase" in obj:
                raise c.error("paraphrase", "not allowed with data_type \"qa\" (use data_type \"paraphrase\")")
            pairs = []
            for i, p in enumerate(c.array(c.require(obj, "pairs"), "pairs")):
                name = f"pairs[{i}]"
                p = c.obj(p, name)
                q = c.string(c.require(p, "question", name + "."), name + ".question", lim.max_question_chars)
                a = c.string(c.require(p, "answer", name + "."), name + ".answer", lim.max_question_chars)
                pairs.append(QAPair(q, a))
            return cls(doc=doc, data_type=data_type, pairs=tuple(pairs), **ids)
        if "pairs" in obj:
            raise c.error("pairs", "not allowed with data_type \"paraphrase\" (use data_type \"qa\")")
        para = c.string(c.require(obj, "paraphrase"), "paraphrase", lim.max_doc_chars)
        instr = None
        if obj.get("instruction") is not None:
            instr = c.string(obj["instruction"], "instruction", lim.max_question_chars)
        return cls(doc=doc, data_type=data_type, paraphrase=para, instruction=instr, **ids)

    @classmethod
    def _from_reference(cls, c: _Check, obj: dict, data_type: DataType, ids: dict) -> "PretrainRecord":
        lim = c.limits
        doc = "\n\n".join(c.strings(obj["docs"], "docs", lim.max_doc_chars))
        if len(doc) > lim.max_doc_chars:
            raise c.error("docs", f"too long when joined ({len(doc)} chars > limit {lim.max_doc_chars})")
        answers = c.strings(c.require(obj, "answers"), "answers", lim.max_doc_chars)
        if data_type is DataType.QA:
            questions = c.strings(c.require(obj, "question"), "question", lim.max_question_chars)
            if len(questions) != len(answers):
                raise c.error("answers", f"has {len(answers)} items but question has {len(questions)}; they pair up")
            for i, a in enumerate(answers):
                if len(a) > lim.max_question_chars:
                    raise c.error(f"answers[{i}]", f"too long ({len(a)} chars > limit {lim.max_question_chars})")
            pairs = tuple(QAPair(q, a) for q, a in zip(questions, answers))
            return cls(doc=doc, data_type=data_type, pairs=pairs, **ids)
        instr = None
        if obj.get("question") is not None:
            items = c.array(obj["question"], "question", allow_empty=True)
            texts = [c.string(q, f"question[{i}]", lim.max_question_chars, allow_empty=True) for i, q in enumerate(items)]
            instr = texts[0] if texts and texts[0].strip() else None
        return cls(doc=doc, data_type=data_type, paraphrase=answers[0], instruction=instr, **ids)


# ---------------------------------------------------------------------------- questions

_QUESTION_KEYS = {"id", "question", "answer", "answers", "golden_answers", "gold_answer", "docs", "doc_ids", "pos_index",
                  "type", "gold_ids"}  # fmt: skip
_CANDIDATE_KEYS = ("docs", "doc_ids", "pos_index")


@dataclass(frozen=True)
class QuestionRecord:
    """A question with answers and (for joint training, optionally for eval) candidates."""

    question: str
    answers: tuple[str, ...]
    candidates: tuple[Document, ...] = ()
    pos_index: tuple[int, ...] = ()  # indices into candidates of the gold documents
    id: str | None = None
    type: str | None = None
    gold_ids: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)  # unknown keys, kept

    require_candidates = False

    def to_json(self) -> dict:
        out: dict[str, Any] = {} if self.id is None else {"id": self.id}
        out.update(question=self.question, answers=list(self.answers))
        if self.type is not None:
            out["type"] = self.type
        if self.candidates:
            out["docs"] = [d.to_json() for d in self.candidates]
            out["pos_index"] = list(self.pos_index)
        if self.gold_ids:
            out["gold_ids"] = list(self.gold_ids)
        out.update(self.extra)
        return out

    @classmethod
    def from_json(
        cls, obj: Any, where: str, limits: Limits = DEFAULT_LIMITS, *, corpus: Mapping[str, Document] | None = None
    ):
        c = _Check(where, limits)
        obj = c.obj(obj, "record")
        question = c.string(c.require(obj, "question"), "question", limits.max_question_chars)
        answers = _answers(c, obj)
        meta = c.obj(obj["metadata"], "metadata") if obj.get("metadata") is not None else {}
        candidates, source = _candidates(c, obj, meta, corpus)
        if cls.require_candidates and candidates is None:
            raise c.error("docs", "missing (give candidates as 'docs' or 'doc_ids', at top level or in 'metadata')")
        gold_ids = c.optional(obj, "gold_ids", c.idents, True) or ()
        pos_index = _pos_index(c, obj, meta, candidates, gold_ids)
        extra = _extra(c, obj, meta, source)
        if "gold_answer" in obj:
            pos_index = _reference_form(c, obj, meta, candidates, gold_ids, answers, pos_index, extra)
        kwargs = dict(
            question=question,
            answers=answers,
            candidates=candidates or (),
            pos_index=pos_index,
            id=c.optional(obj, "id", c.ident),
            type=c.optional(obj, "type", c.string, limits.max_id_chars),
            gold_ids=gold_ids,
            extra=extra,
        )
        return cls(**kwargs)


class JointRecord(QuestionRecord):
    """A joint-training question: candidates are required (DESIGN §5)."""

    require_candidates = True


class EvalRecord(QuestionRecord):
    """An evaluation question: candidates optional (closed book needs none)."""


def _answers(c: _Check, obj: dict) -> tuple[str, ...]:
    lim = c.limits.max_question_chars
    found: list[tuple[str, tuple[str, ...]]] = []
    # beside 'gold_answer', 'answer' is a teacher's generated answer (_reference_form), not a gold one
    single = "gold_answer" if "gold_answer" in obj else "answer"
    if single in obj:
        found.append((single, (c.string(obj[single], single, lim),)))
    for key in ("answers", "golden_answers"):
        if key in obj:
            found.append((key, c.strings(obj[key], key, lim)))
    if not found:
        raise c.error("answers", "missing (give 'answer', 'answers', 'golden_answers' or 'gold_answer')")
    first_key, first = found[0]
    for key, other in found[1:]:
        if set(other) != set(first):
            raise c.error(key, f"disagrees with '{first_key}'; give only one of them")
    return first


def _candidates(c: _Check, obj: dict, meta: dict, corpus: Mapping[str, Document] | None):
    """Candidate documents and where they came from ('' top level, 'metadata.' inside it)."""
    for prefix, src in (("", obj), ("metadata.", meta)):
        if "docs" in src and "doc_ids" in src:
            raise c.error(prefix + "doc_ids", "give either 'docs' or 'doc_ids', not both")
        if "docs" in src:
            items = c.array(src["docs"], prefix + "docs", max_len=c.limits.max_candidates)
            docs = []
            for i, d in enumerate(items):
                name = f"{prefix}docs[{i}]"
                if isinstance(d, str):
                    docs.append(Document(text=c.string(d, name, c.limits.max_doc_chars)))
                else:
                    docs.append(Document.from_json(d, c.where, c.limits, prefix=name + ".", require_id=False))
            return tuple(docs), prefix
        if "doc_ids" in src:
            ids = c.idents(src["doc_ids"], prefix + "doc_ids")
            if corpus is None:
                raise c.error(prefix + "doc_ids", "candidate ids need a corpus; pass --corpus documents.jsonl")
            docs = []
            for i, doc_id in enumerate(ids):
                if doc_id not in corpus:
                    raise c.error(f"{prefix}doc_ids[{i}]", f"unknown document id {show(doc_id)} (not in the corpus)")
                docs.append(corpus[doc_id])
            return tuple(docs), prefix
    return None, None


def _pos_index(c: _Check, obj: dict, meta: dict, candidates, gold_ids) -> tuple[int, ...]:
    name, raw = "pos_index", obj.get("pos_index")
    if "pos_index" not in obj and "pos_index" in meta:
        name, raw = "metadata.pos_index", meta["pos_index"]
    if raw is None:
        if gold_ids and candidates:  # derive from ids when the record names its gold documents
            gold = set(gold_ids)
            return tuple(i for i, d in enumerate(candidates) if d.id in gold)
        return ()
    if candidates is None:
        raise c.error(name, "given without candidates ('docs' or 'doc_ids')")
    items = [raw] if isinstance(raw, int) and not isinstance(raw, bool) else c.array(raw, name, allow_empty=True)
    out: list[int] = []
    for i, v in enumerate(items):
        item = name if items is not raw else f"{name}[{i}]"
        if not isinstance(v, int) or isinstance(v, bool):
            raise c.error(item, f"expected an integer index, got {show(v)}")
        if not 0 <= v < len(candidates):
            raise c.error(item, f"index {v} out of range for {len(candidates)} candidates")
        if v in out:
            raise c.error(item, f"index {v} listed twice")
        out.append(v)
    return tuple(out)


def _reference_form(c: _Check, obj: dict, meta: dict, candidates, gold_ids, answers, pos_index, extra: dict):
    """The reference's records with ``gold_answer`` (module docstring): a generated ``answer`` moves to
    ``extra["generated_answer"]``; without a gold label, pos_index is derived by answer match."""
    if "answer" in obj:
        generated = c.string(obj["answer"], "answer", c.limits.max_question_chars)
        if extra.get("generated_answer", generated) != generated:
            raise c.error("generated_answer", "disagrees with 'answer' (beside 'gold_answer', the generated answer); "
                          "give only one of them")  # fmt: skip
        extra["generated_answer"] = generated
    labelled = obj.get("pos_index", meta.get("pos_index")) is not None or bool(gold_ids)
    if candidates is None or labelled:
        return pos_index
    extra["pos_from"] = "answer_match"
    return tuple(i for i, d in enumerate(candidates) if cover_em(d.as_text(), answers))


def _extra(c: _Check, obj: dict, meta: dict, source: str | None) -> dict:
    extra = {k: v for k, v in obj.items() if k not in _QUESTION_KEYS}
    if "metadata" in extra and isinstance(extra["metadata"], dict) and source == "metadata.":
        # Candidates were read from metadata and are written at top level; don't keep them twice.
        rest = {k: v for k, v in meta.items() if k not in _CANDIDATE_KEYS}
        extra["metadata"] = rest
        if not rest:
            del extra["metadata"]
    for k, v in extra.items():
        c.serializable(v, k)
    return extra


RECORD_TYPES: dict[RecordKind, type] = {
    RecordKind.PRETRAIN: PretrainRecord,
    RecordKind.JOINT: JointRecord,
    RecordKind.EVAL: EvalRecord,
    RecordKind.DOCUMENTS: Document,
}
