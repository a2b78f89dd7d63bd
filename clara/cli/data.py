"""``clara data check|convert|mix``: validate data files, normalise them to the project format, mix them.

``check`` lists every problem in a file, one ``file:line: field: problem`` per line (exit 1),
or prints a summary when the file is clean. ``convert`` reads any supported format
(project, reference, FlashRAG, world corpus with ``doc_ids``) and writes the project's own
format atomically: on an error nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Iterable

from clara.cli.args import add_overwrite_argument
from clara.data.records import DEFAULT_LIMITS, Limits, RecordKind
from clara.errors import DataError

KIND_HELP = (
    "record kind: pretrain (SCP qa/paraphrase, project or reference format), joint (questions with "
    "candidates and pos_index; the reference's gold_answer records too), eval (questions, candidates "
    "optional; FlashRAG and reference records too), "
    "documents (corpus lines {id,title,text} or {id,contents})"
)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", required=True, choices=[k.value for k in RecordKind], help=KIND_HELP)
    p.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="documents.jsonl to resolve 'doc_ids' candidates against (default: a documents.jsonl "
        "beside the file or one folder up, if there is one)",
    )
    p.add_argument(
        "--candidates",
        type=Path,
        default=None,
        help="JSON lines {id, doc_ids|docs, pos_index?} giving candidates, by question id, to questions "
        "that have none (e.g. a retriever's output for FlashRAG records); joint and eval only",
    )
    p.add_argument(
        "--max-question-chars",
        type=int,
        default=DEFAULT_LIMITS.max_question_chars,
        help="longest allowed question, answer, title or instruction, in characters (default %(default)s)",
    )
    p.add_argument(
        "--max-doc-chars",
        type=int,
        default=DEFAULT_LIMITS.max_doc_chars,
        help="longest allowed document text or paraphrase, in characters (default %(default)s)",
    )


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data", help="validate and convert data files", description="Validate data files and normalise them to the project format."
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    check = sub.add_parser(
        "check",
        help="validate a JSON-lines file; list every problem or print a summary",
        description="Validate every line of FILE. Prints each problem as 'file:line: field: problem' "
        "and exits 1 if there are any; otherwise prints a summary and exits 0.",
    )
    check.add_argument("file", type=Path, metavar="FILE", help="JSON-lines file to validate")
    _add_common(check)
    check.set_defaults(func=run_check)

    convert = sub.add_parser(
        "convert",
        help="normalise reference/FlashRAG/world records into the project format",
        description="Read IN (any supported format of --kind) and write OUT in the project's format. "
        "OUT is written atomically: on an error it is not created (or left untouched).",
    )
    convert.add_argument("input", type=Path, metavar="IN", help="JSON-lines file to read")
    convert.add_argument("output", type=Path, metavar="OUT", help="JSON-lines file to write (an existing file is "
                         "refused without --overwrite, a directory always)")
    add_overwrite_argument(convert, "a file", "OUT")
    _add_common(convert)
    convert.add_argument(
        "--skip-bad-records",
        action="store_true",
        help="skip (and log, with a total) lines that fail validation instead of stopping at the first (the count is printed)",
    )
    convert.set_defaults(func=run_convert)

    mixp = sub.add_parser(
        "mix",
        help="a shuffled training mixture of pretraining records, reproducible from this command",
        description="Join parts FILE:KIND:N[:SOURCE] of pretraining records and shuffle them with --seed. KIND: qa, "
        "paraphrase, continuation (by the record id's suffix, as `clara pretrain synth` writes them) or all; N: a "
        "count drawn without replacement, or all; SOURCE: the records' 'source' (default: the file's stem), which "
        "`clara eval compression --data` reports by. Every record is validated; OUT is written atomically.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    mixp.add_argument("parts", nargs="+", metavar="FILE:KIND:N[:SOURCE]", help="e.g. cloze.jsonl:qa:all:wiki")
    mixp.add_argument("--out", required=True, type=Path, help="mixture JSONL to write")
    mixp.add_argument("--seed", type=int, default=0, help="seed of the draws and the shuffle")
    add_overwrite_argument(mixp, "a file")
    mixp.set_defaults(func=run_mix)


def run_mix(args: argparse.Namespace) -> int:
    from clara.data.mix import mix
    from clara.fileio import FILE, claim_output

    claim_output(args.out, FILE, overwrite=args.overwrite)
    counts = mix(args.parts, args.out, seed=args.seed)
    print(f"{args.out}: {sum(counts.values())} records (" + ", ".join(f"{p} {n}" for p, n in counts.items()) + ")")
    return 0


def _limits(args: argparse.Namespace) -> Limits:
    for flag in ("max_question_chars", "max_doc_chars"):
        if getattr(args, flag) <= 0:
            raise DataError(f"--{flag.replace('_', '-')}: must be a positive number of characters")
    return Limits(max_question_chars=args.max_question_chars, max_doc_chars=args.max_doc_chars)


def run_check(args: argparse.Namespace) -> int:
    from clara.data.jsonl import ReadStats, iter_records

    stats = ReadStats(str(args.file))
    summary = Summary(RecordKind(args.kind))
    problems = 0

    def report(err: DataError) -> None:
        nonlocal problems
        problems += 1
        print(err, flush=True)

    records = iter_records(
        args.file,
        args.kind,
        corpus=args.corpus,
        candidates=args.candidates,
        limits=_limits(args),
        stats=stats,
        on_problem=report,
    )
    for record in records:
        summary.add(record)
    if problems:
        print(f"error: {args.file}: {problems} bad line(s) of {stats.lines}", file=sys.stderr)
        return 1
    if stats.records == 0:
        raise DataError(f"{args.file}: no records (the file is empty or blank)")
    for line in summary.lines(args.file, stats.corpus):
        print(line)
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from clara.data.jsonl import ReadStats, iter_records, write_jsonl

    from clara.fileio import FILE, claim_output

    if args.input.resolve() == args.output.resolve():
        raise DataError(f"{args.output}: OUT must differ from IN")
    claim_output(args.output, FILE, overwrite=args.overwrite)
    stats = ReadStats(str(args.input))
    records = iter_records(
        args.input,
        args.kind,
        skip_bad=args.skip_bad_records,
        corpus=args.corpus,
        candidates=args.candidates,
        limits=_limits(args),
        stats=stats,
    )
    n = write_jsonl(args.output, _nonempty(records, args.input, stats))
    skipped = f", skipped {stats.skipped} bad line(s)" if stats.skipped else ""
    print(f"wrote {n} {args.kind} record(s) to {args.output}{skipped}")
    return 0


def _nonempty(records: Iterable, path: Path, stats) -> Iterable:
    """Pass records through; raise at the end if there were none, so no empty OUT is written."""
    n = 0
    for r in records:
        n += 1
        yield r
    if n == 0:
        why = f"all {stats.skipped} line(s) were bad" if stats.skipped else "the file is empty or blank"
        raise DataError(f"{path}: no records to convert ({why})")


class Summary:
    """Counts and averages for a clean file's summary."""

    def __init__(self, kind: RecordKind):
        self.kind = kind
        self.n = 0
        self.types: Counter = Counter()
        self.sums: Counter = Counter()
        self.maxes: Counter = Counter()

    def _add(self, name: str, value: int) -> None:
        self.sums[name] += value
        self.maxes[name] = max(self.maxes[name], value)

    def add(self, r) -> None:
        self.n += 1
        if self.kind is RecordKind.DOCUMENTS:
            self._add("text chars", len(r.text))
            self.types["with title" if r.title else "without title"] += 1
        elif self.kind is RecordKind.PRETRAIN:
            self.types[r.data_type.value] += 1
            self._add("doc chars", len(r.doc))
            self._add("qa pairs", len(r.pairs))
        else:
            self.types[r.type or "(no type)"] += 1
            self._add("answers", len(r.answers))
            self._add("question chars", len(r.question))
            self._add("candidates", len(r.candidates))
            self._add("positives", len(r.pos_index))
            self.sums["with candidates"] += bool(r.candidates)

    def lines(self, path: Path, corpus: str | None) -> list[str]:
        out = [f"{path}: {self.n} {self.kind.value} record(s), no problems"]
        if corpus:
            out.append(f"  corpus: {corpus}")
        unit = {RecordKind.DOCUMENTS: "document", RecordKind.PRETRAIN: "record"}.get(self.kind, "question")
        label = {RecordKind.PRETRAIN: "data_type", RecordKind.DOCUMENTS: "titles"}.get(self.kind, "type")
        out.append(f"  {label}: " + ", ".join(f"{k} {v}" for k, v in sorted(self.types.items())))
        if self.kind in (RecordKind.JOINT, RecordKind.EVAL):
            out.append(f"  with candidates: {self.sums['with candidates']}")
        for name in sorted(self.maxes):
            if self.kind is RecordKind.PRETRAIN and name == "qa pairs":
                per = self.types["qa"] or 1
                out.append(f"  qa pairs per qa record: {self.sums[name] / per:.1f} (max {self.maxes[name]})")
                continue
            out.append(f"  {name} per {unit}: {self.sums[name] / self.n:.1f} (max {self.maxes[name]})")
        return out
