"""Which of a document's facts does the SCP generator answer from memory, by the fact's slot in training?

    python -m clara.eval.fact_position --model RUN/adapters [--backbone DIR] --docs 40

SCP's QA target lists a document's pairs in the world teacher's fixed fact order, and
``scp.max_target_tokens`` cuts the list, so later facts may never train. On fresh world documents
(never trained on), each fact's simple question is answered from the document's memory two ways:

- **alone**: the reply starts ``Question: q\\nAnswer:``, as in ``clara eval compression``;
- **in place**: after the gold pairs that precede it in the teacher's order, as in training;
- **wrong**: alone, but from the next document's memory (its own when there is one document). A fact
  answered this way is held in the LoRA weights, not read from memory: after many epochs on a small set
  (issue 28's capacity test) the generator can learn the set's answers by heart.

EM per position, for each way. A generator that answers position 3 with EM 0 both ways never learned
that slot; a large gap between the ways means the answer depends on where the question sits.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Sequence

import torch

FRESH_SEED = 777  # not 1, 2 or 3 (the streams SCP runs train on)
WAYS = ("alone", "in_place", "wrong")


@dataclass(frozen=True)
class FactRow:
    doc: int  # index of the document
    position: int  # the fact's slot in the teacher's order
    question: str
    answer: str
    prefix: str  # the gold pairs before it, as the training target lists them
    trained: bool | None = None  # whether an SCP run trained this pair as a target row (None: not asked)


def fact_rows(docs: Sequence, teacher, trained: set[str] | None = None) -> list[FactRow]:
    """One row per simple QA pair of each document, in the teacher's order; ``trained``: the target rows
    an SCP run trained on (:func:`trained_rows`), to mark each pair as trained or not."""
    from clara.pretrain.scp import qa_target

    rows = []
    for i, doc in enumerate(docs):
        pairs = teacher.simple_qa(doc, teacher.facts(doc))
        for j, p in enumerate(pairs):
            prefix = qa_target(pairs[:j]) + "\n" if j else ""
            seen = None if trained is None else qa_target([p]) in trained
            rows.append(FactRow(i, j, p.question, p.answer, prefix, seen))
    return rows


def trained_rows(path: str, scp) -> set[str]:
    """Every ``Question: q\nAnswer: a`` target an SCP run on the pretrain file ``path`` trains, as
    ``scp`` (its ScpConfig) and today's code lay the QA records out: every pair of a file, in groups, in the
    rows layout; in the lines layout, pairs that ``max_target_tokens`` cuts off still count as trained."""
    from clara.pretrain.scp import load_examples

    out: set[str] = set()
    for e in load_examples(path, ("qa",), scp=scp):
        lines = e.target.split("\n")  # lines / shuffled layouts: every pair of the target, two lines each
        out.update(e.rows or ("\n".join(lines[i : i + 2]) for i in range(0, len(lines) - 1, 2)))
    return out


@torch.no_grad()
def position_em(model, mem: torch.Tensor | None, rows: Sequence[FactRow], batch_size: int = 8,
                texts: Sequence[str] | None = None) -> dict[str, Any]:
    """EM overall and per position, answering alone, in place and from a wrong document's memory (the next
    document's); mem (D, m, H) per document, or ``texts`` (mem None): each document as text where its memory
    would go (a ``scp.read_text`` run)."""
    from clara.eval.compression import answer_from_memory
    from clara.answers import exact_match
    from clara.model.prompts import extract_answer

    out: dict[str, Any] = {}
    own, n = [r.doc for r in rows], len(mem) if texts is None else len(texts)
    for way in WAYS:
        pick = [(d + 1) % n for d in own] if way == "wrong" else own
        row_mem, row_docs = (mem[pick], None) if texts is None else (None, [texts[d] for d in pick])  # (R, m, H)
        preds = answer_from_memory(model, [r.question for r in rows], row_mem, batch_size=batch_size, desc=way,
                                   documents=row_docs,
                                   before=[r.prefix for r in rows] if way == "in_place" else None)  # fmt: skip
        hits = [exact_match(extract_answer(p), [r.answer]) for p, r in zip(preds, rows)]
        by_pos: dict[int, list[float]] = {}
        for r, h in zip(rows, hits):
            by_pos.setdefault(r.position, []).append(h)
        out[way] = {"em": sum(hits) / len(hits),
                    "by_position": {p: {"n": len(v), "em": sum(v) / len(v)} for p, v in sorted(by_pos.items())}}  # fmt: skip
        if rows and rows[0].trained is not None:
            out[way]["by_trained"] = {}
            for flag in (True, False):
                v = [h for r, h in zip(rows, hits) if r.trained is flag]
                out[way]["by_trained"]["trained" if flag else "untrained"] = {
                    "n": len(v), "em": sum(v) / len(v) if v else None}
    return out


def add_probe_arguments(ap: argparse.ArgumentParser, docs: int, docs_help: str, batch_size: int) -> None:
    """What every probe of an SCP model on fresh world documents takes: --model, --backbone, --docs, --seed,
    --batch-size, --threads (apply with ``clara.cli.args.set_threads``) and --out."""
    from clara.cli.args import add_threads_argument

    ap.add_argument("--model", required=True, help="SCP run directory or adapter directory")
    ap.add_argument("--backbone", default=None, help="backbone directory, if not where the adapters were trained")
    ap.add_argument("--docs", type=int, default=docs, help=docs_help)
    ap.add_argument("--seed", type=int, default=FRESH_SEED, help="fresh-document stream (not one SCP trained on)")
    ap.add_argument("--world-ranges", type=int, default=0, metavar="N",
                    help="the stream with the value ranges of a world of N entities (scp.fresh_world_ranges; 0: its own)")
    ap.add_argument("--batch-size", type=int, default=batch_size)
    add_threads_argument(ap)
    ap.add_argument("--out", default=None, help="also write the figures to this JSON file")


def main(argv: list[str] | None = None) -> int:
    from clara.cli.args import set_threads
    from clara.eval.compression import compress_all
    from clara.model.loading import load_trained_model
    from clara.pretrain.synth import fresh_world_documents
    from clara.pretrain.teachers import WorldTeacher

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_probe_arguments(ap, 40, "fresh world documents (about 4 facts each)", 8)
    ap.add_argument("--trained-data", default=None,
                    help="the pretrain file the run trained on: EM is also split by whether each pair was a target")
    ap.add_argument("--train-config", default=None,
                    help="the run's config.yaml (its scp.qa_layout and rows_per_document say which pairs trained; "
                         "with scp.read_text, documents are read as text, not memory)")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    model = load_trained_model(args.model, args.backbone)
    docs = list(fresh_world_documents(args.docs, args.seed, args.world_ranges))
    teacher = WorldTeacher()
    texts = [d.as_text() for d in docs]
    scp = None
    if args.train_config:
        from clara.config import load_config

        scp = load_config(args.train_config).scp
    read_text = bool(scp and scp.read_text)  # a text-LoRA control run: its generator reads documents as text
    mem = None if read_text else compress_all(model, texts, args.batch_size)
    trained = trained_rows(args.trained_data, scp) if args.trained_data else None
    stats = {"model": args.model, "docs": len(docs), "seed": args.seed, "world_ranges": args.world_ranges, "read_text": read_text,
             **position_em(model, mem, fact_rows(docs, teacher, trained), args.batch_size,
                           texts if read_text else None)}  # fmt: skip
    print("| position | n | EM alone | EM in place | EM wrong memory |\n|---|---|---|---|---|")
    for p, row in stats["alone"]["by_position"].items():
        print(f"| {p} | {row['n']} | " + " | ".join(f"{stats[w]['by_position'][p]['em']:.3f}" for w in WAYS) + " |")
    print(f"| all | {sum(r['n'] for r in stats['alone']['by_position'].values())} | "
          + " | ".join(f"{stats[w]['em']:.3f}" for w in WAYS) + " |")  # fmt: skip
    for k, row in stats["alone"].get("by_trained", {}).items():
        print(f"| {k} pairs | {row['n']} | " + " | ".join(f"{stats[w]['by_trained'][k]['em'] or 0:.3f}" for w in WAYS) + " |")
    if args.out:
        from clara.fileio import atomic_write_json

        atomic_write_json(args.out, stats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
