"""Guided synthesis with verification (DESIGN §4): QA + paraphrase per document, resumable.

    summary = synthesize(docs, teacher, out="data/synth.jsonl", threshold=0.9)

Per document: list the facts, write simple QA (one fact per pair, none repeated) and
complex QA, then **verify and regenerate**: check which facts some pair covers, ask for
pairs for the uncovered ones, up to ``max_rounds`` rounds; a document that never reaches
``threshold`` coverage is dropped (logged to ``OUT.dropped.jsonl``). A kept document
becomes two :class:`PretrainRecord` lines — ``qa`` (all pairs) and ``paraphrase`` — written
together, flushed and fsynced, so a crash loses at most the documents in flight. Re-running
skips every document already in the output or the dropped log; a torn last line is cut off.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from clara.errors import ClaraError, ConfigError, DataError
from clara.fileio import atomic_write_json
from clara.pretrain.teachers import Fact, SynthDoc, Teacher
from clara.data.jsonl import iter_json_lines
from clara.data.records import DataType, Document, PretrainRecord, QAPair

log = logging.getLogger(__name__)

MAX_ROUNDS = 10
PARAPHRASE_INSTRUCTION = "Rewrite the document in other words, keeping every fact."


@dataclass
class DocResult:
    doc: SynthDoc
    kept: bool
    facts: list[Fact]
    pairs: list[QAPair] = field(default_factory=list)
    simple: int = 0
    complex: int = 0
    coverage: float = 0.0
    rounds: int = 0  # regeneration rounds used (0: the first draft covered enough)
    uncovered: list[Fact] = field(default_factory=list)
    paraphrase: str = ""
    continuation: str = ""
    reason: str = ""


def _norm_question(q: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", q.lower()).strip()


def _add_unique(pairs: list[QAPair], new: Iterable[QAPair], seen: set[str]) -> int:
    added = 0
    for p in new:
        key = _norm_question(p.question)
        if key and p.answer.strip() and key not in seen:
            seen.add(key)
            pairs.append(QAPair(p.question.strip(), p.answer.strip()))
            added += 1
    return added


def synthesize_document(doc: SynthDoc, teacher: Teacher, *, threshold: float = 0.9, max_rounds: int = MAX_ROUNDS) -> DocResult:
    """Draft, verify, regenerate; kept when coverage reaches ``threshold``."""
    facts = teacher.facts(doc)
    if not facts:
        return DocResult(doc, False, [], reason="the teacher found no facts")
    pairs: list[QAPair] = []
    seen: set[str] = set()
    simple = _add_unique(pairs, teacher.simple_qa(doc, facts), seen)
    is_covered = [teacher.covered(f, pairs) for f in facts]
    rounds = 0
    # Aim at every fact even once the threshold is met: rounds are cheap next to losing facts.
    while not all(is_covered) and rounds < max_rounds:
        rounds += 1
        missing = [f for f, c in zip(facts, is_covered) if not c]
        simple += _add_unique(pairs, teacher.simple_qa(doc, missing, attempt=rounds), seen)
        is_covered = [c or teacher.covered(f, pairs) for f, c in zip(facts, is_covered)]
    coverage = sum(is_covered) / len(facts)
    uncovered = [f for f, c in zip(facts, is_covered) if not c]
    result = DocResult(doc, coverage >= threshold, facts, pairs, simple, 0, coverage, rounds, uncovered)
    if not result.kept:
        result.reason = f"coverage {coverage:.2f} < threshold {threshold} after {rounds} rounds"
        return result
    # complex pairs only for kept documents: they do not count towards coverage
    result.complex = _add_unique(pairs, teacher.complex_qa(doc, facts), seen)
    result.paraphrase = teacher.paraphrase(doc).strip()
    result.continuation = teacher.continuation(doc).strip()
    if not result.paraphrase:
        result.kept, result.reason = False, "the teacher wrote an empty paraphrase"
    return result


# ---------------------------------------------------------------------------- output files


def dropped_path(out: Path) -> Path:
    return out.with_name(out.name + ".dropped.jsonl")


def summary_path(out: Path) -> Path:
    return out.with_name(out.name + ".summary.json")


def _scan_lines(path: Path) -> tuple[list[tuple[int, dict]], int]:
    """Parsed lines with their start offsets, and the byte length of the good prefix.

    A last line without its newline, or that does not parse, is a torn write from a crash
    and is excluded; a bad line anywhere else is a data error.
    """
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    rows, pos = [], 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        last = end < 0 or end == len(data) - 1
        if end < 0:
            log.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", path, len(data) - pos)
            return rows, pos
        line = data[pos:end]
        try:
            obj = json.loads(line) if line.strip() else None
        except (ValueError, UnicodeDecodeError):
            if last:
                log.warning("%s: dropping an unreadable last line left by an interrupted run", path)
                return rows, pos
            lineno = data.count(b"\n", 0, pos) + 1
            raise DataError(f"{path}:{lineno}: record: invalid JSON in the middle of the output; "
                            "fix or remove the line, or write to a new --out") from None  # fmt: skip
        if isinstance(obj, dict):
            rows.append((pos, obj))
        pos = end + 1
    return rows, pos


def load_done(out: Path) -> tuple[set[str], set[str]]:
    """Doc ids already kept (both records present) and already dropped; repairs torn tails."""
    rows, good = _scan_lines(out)
    kinds: dict[str, set[str]] = {}
    for _, obj in rows:
        kinds.setdefault(str(obj.get("doc_id")), set()).add(str(obj.get("data_type")))
    # Records of one document are adjacent; only the last document can be incomplete.
    if rows:
        last_id = str(rows[-1][1].get("doc_id"))
        if not {"qa", "paraphrase"} <= kinds[last_id]:
            good = min(pos for pos, obj in rows if str(obj.get("doc_id")) == last_id)
            kinds.pop(last_id)
            log.warning("%s: document %s was half-written; it will be redone", out, last_id)
    _truncate(out, good)
    drows, dgood = _scan_lines(dropped_path(out))
    _truncate(dropped_path(out), dgood)
    return set(kinds), {str(obj.get("doc_id")) for _, obj in drows}


def _truncate(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size != size:
        with open(path, "r+b") as f:
            f.truncate(size)
            os.fsync(f.fileno())


def _append(f, lines: list[dict]) -> None:
    f.write("".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in lines))
    f.flush()
    os.fsync(f.fileno())


def result_records(r: DocResult, teacher_name: str, paraphrase_instruction: str | None = None) -> list[dict]:
    """The document's records: qa, the continuation if any, and the paraphrase last — a document
    counts as done once its paraphrase is written (:func:`load_done`)."""
    doc = r.doc.as_text()
    qa = PretrainRecord(doc=doc, data_type=DataType.QA, pairs=tuple(r.pairs), id=f"{r.doc.id}:qa", doc_id=r.doc.id)
    para = PretrainRecord(doc=doc, data_type=DataType.PARAPHRASE, paraphrase=r.paraphrase,
                          instruction=paraphrase_instruction or PARAPHRASE_INSTRUCTION, id=f"{r.doc.id}:paraphrase",
                          doc_id=r.doc.id)  # fmt: skip
    # Readers of pretrain records ignore unknown keys; these make the file self-describing.
    meta = {"teacher": teacher_name, "facts": len(r.facts), "simple": r.simple, "complex": r.complex,
            "coverage": round(r.coverage, 4), "rounds": r.rounds}  # fmt: skip
    out = [{**qa.to_json(), "synth": meta}]
    if r.continuation:
        from clara.pretrain.text_teachers import CONTINUATION_INSTRUCTION

        cont = PretrainRecord(doc=doc, data_type=DataType.PARAPHRASE, paraphrase=r.continuation,
                              instruction=CONTINUATION_INSTRUCTION, id=f"{r.doc.id}:continuation", doc_id=r.doc.id)  # fmt: skip
        out.append(cont.to_json())
    return out + [para.to_json()]


def dropped_record(r: DocResult) -> dict:
    return {"doc_id": r.doc.id, "reason": r.reason, "coverage": round(r.coverage, 4), "rounds": r.rounds,
            "facts": len(r.facts), "uncovered": [f.text for f in r.uncovered]}  # fmt: skip


# ---------------------------------------------------------------------------- inputs


def read_documents(path: str | Path) -> Iterator[SynthDoc]:
    """Documents JSONL (``{id,title,text}`` / ``{id,contents}``), with world ``facts`` kept if present.

    Passages of one source, as `clara corpus ingest` writes them (``SRC#0``, ``SRC#1``, … in file
    order), get the next passage's text as ``next_text`` (a continuation target)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such documents file; give a JSONL of {{id, title, text}}")
    prev: SynthDoc | None = None
    for where, obj in iter_json_lines(path):
        d = Document.from_json(obj, where)
        doc = SynthDoc(d.id, d.title, d.text, obj.get("entity_type", ""), tuple(obj.get("facts") or ()))
        if prev is not None:
            yield replace(prev, next_text=doc.text) if follows(prev.id, doc.id) else prev
        prev = doc
    if prev is not None:
        yield prev


def follows(first: str, second: str) -> bool:
    """Whether passage id ``second`` is the passage right after ``first`` of one source (``S#n``, ``S#n+1``)."""
    a, sep_a, n = first.rpartition("#")
    b, sep_b, m = second.rpartition("#")
    return bool(sep_a and sep_b) and a == b and n.isdigit() and m.isdigit() and int(m) == int(n) + 1


def fresh_world_documents(n: int, seed: int, world_ranges: int = 0) -> Iterator[SynthDoc]:
    """The first ``n`` documents of the fresh stream ``seed`` (``world_ranges``: see ``iter_fresh_documents``)."""
    from itertools import islice

    from clara.world import iter_fresh_documents

    for d in islice(iter_fresh_documents(seed, world_ranges=world_ranges), n):
        yield SynthDoc(d["id"], d["title"], d["text"], d["entity_type"], tuple(d["facts"]))


# ---------------------------------------------------------------------------- the run


@dataclass
class SynthRun:
    kept: int = 0
    dropped: int = 0
    skipped: int = 0  # already done in an earlier run
    errors: int = 0
    pairs: int = 0
    simple: int = 0
    complex: int = 0
    coverage_sum: float = 0.0  # over kept documents
    rounds_sum: int = 0

    def add(self, r: DocResult) -> None:
        if r.kept:
            self.kept += 1
            self.pairs += len(r.pairs)
            self.simple += r.simple
            self.complex += r.complex
            self.coverage_sum += r.coverage
        else:
            self.dropped += 1
        self.rounds_sum += r.rounds

    def summary(self, seconds: float, teacher: str, threshold: float) -> dict:
        done = self.kept + self.dropped
        return {
            "teacher": teacher, "threshold": threshold, "kept": self.kept, "dropped": self.dropped,
            "skipped_already_done": self.skipped, "errors": self.errors,
            "pairs_per_doc": self.pairs / self.kept if self.kept else 0.0,
            "simple_per_doc": self.simple / self.kept if self.kept else 0.0,
            "complex_per_doc": self.complex / self.kept if self.kept else 0.0,
            "mean_coverage_kept": self.coverage_sum / self.kept if self.kept else 0.0,
            "mean_rounds": self.rounds_sum / done if done else 0.0,
            "seconds": round(seconds, 3), "docs_per_second": done / seconds if seconds > 0 else 0.0,
        }  # fmt: skip


def synthesize(
    docs: Iterable[SynthDoc], teacher: Teacher, out: str | Path, *, threshold: float = 0.9,
    max_rounds: int = MAX_ROUNDS, max_errors: int = 10, total: int | None = None,
) -> dict:
    """Run the loop over ``docs``, appending to ``out``; returns (and writes) this run's summary."""
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"--threshold {threshold}: must be in (0, 1]")
    if not 1 <= max_rounds <= 100:
        raise ConfigError(f"--max-rounds {max_rounds}: must be between 1 and 100")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kept_ids, dropped_ids = load_done(out)
    done = kept_ids | dropped_ids
    run = SynthRun()
    start = time.perf_counter()
    todo = _skip_done(docs, done, run)
    with open(out, "a", encoding="utf-8") as fout, open(dropped_path(out), "a", encoding="utf-8") as fdrop, \
            tqdm(total=total, desc=f"synth ({teacher.name})", unit="doc", disable=None) as bar:  # fmt: skip
        for r in _run_pool(todo, teacher, threshold, max_rounds, max_errors, run):
            if r.kept:
                _append(fout, result_records(r, teacher.name, teacher.paraphrase_instruction))
            else:
                _append(fdrop, [dropped_record(r)])
            run.add(r)
            bar.update(1)
            bar.set_postfix(kept=run.kept, dropped=run.dropped)
    summary = run.summary(time.perf_counter() - start, teacher.name, threshold)
    summary["total_kept_in_output"] = len(load_done(out)[0])
    atomic_write_json(summary_path(out), summary)
    return summary


def _skip_done(docs: Iterable[SynthDoc], done: set[str], run: SynthRun) -> Iterator[SynthDoc]:
    for d in docs:
        if d.id in done:
            run.skipped += 1
            continue
        done.add(d.id)  # a repeated id in the input is done once
        yield d


def _run_pool(docs: Iterator[SynthDoc], teacher: Teacher, threshold: float, max_rounds: int, max_errors: int,
              run: SynthRun) -> Iterator[DocResult]:  # fmt: skip
    """Results as they complete, with at most ``teacher.workers`` documents in flight."""
    workers = max(1, teacher.workers)
    consecutive = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="synth") as pool:
        pending: dict[Future, SynthDoc] = {}
        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < workers:
                doc = next(docs, None)
                if doc is None:
                    exhausted = True
                    break
                pending[pool.submit(synthesize_document, doc, teacher, threshold=threshold, max_rounds=max_rounds)] = doc
            if not pending:
                break
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                doc = pending.pop(fut)
                try:
                    result = fut.result()
                except ConfigError:
                    raise
                except (ClaraError, OSError) as e:  # teacher unreachable after retries: not done, redo next run
                    run.errors += 1
                    consecutive += 1
                    log.warning("document %s failed (%s); it will be retried on the next run", doc.id, e)
                    if consecutive >= max_errors:
                        raise ClaraError(f"{consecutive} documents in a row failed, last: {e}; "
                                         "check the teacher and re-run (finished documents are kept)") from None  # fmt: skip
                    continue
                consecutive = 0
                yield result
