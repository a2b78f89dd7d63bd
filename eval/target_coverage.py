"""Which facts SCP trains at all: per relation, how many QA pairs of the fresh stream end inside the part of
their document's target that ``scp.max_target_tokens`` keeps.

    python -m clara.eval.target_coverage --tokenizer out/backbones/smollm2-135m-reader --docs 400 \\
        --world-ranges 300 --max-target-tokens 64

Under ``scp.qa_layout`` lines (and shuffled) every pair of a document is one target, cut after
``max_target_tokens`` tokens, so the facts a document states last may never be trained (issue 28). The
examples come from the trainer's own path (the fresh stream, the world teacher, ``example_from_record``);
a fact counts as trained when its own pair (question, then the fact's value as the whole answer) ends
within the cut. The rows layout trains each pair as its own row and is not cut this way.
"""

from __future__ import annotations

import argparse
from collections import Counter

from clara.cli.args import add_out_file_arguments, claim_out_file, positive_int
from clara.errors import ConfigError


def pair_token_end(tokenizer, target: str, pair) -> int:
    """The number of ``target``'s tokens up to the end of ``pair``'s answer line (a record's pairs are distinct)."""
    from clara.pretrain.scp import qa_target

    line = qa_target([pair])
    at = target.find(line)
    if at < 0:
        raise ValueError(f"pair {line[:60]!r} is not in its target")
    return len(tokenizer(target[: at + len(line)], add_special_tokens=False)["input_ids"])


def relation_coverage(tokenizer, docs: int, seed: int = 1, world_ranges: int = 0, max_target_tokens: int = 64,
                      layout: str = "lines") -> dict[str, dict[str, int]]:
    """{relation: {"trained": pairs within the cut, "stated": facts}} over the first ``docs`` documents of the
    fresh stream ``seed``."""
    from clara.config import QaLayout, ScpConfig
    from clara.data.records import PretrainRecord
    from clara.pretrain.scp import example_from_record
    from clara.pretrain.synth import fresh_world_documents, result_records, synthesize_document
    from clara.pretrain.teacher_factory import make_teacher

    if QaLayout(layout) is QaLayout.ROWS:
        raise ConfigError("--layout rows trains every pair as its own row: no target is cut")
    scp = ScpConfig(qa_layout=QaLayout(layout), fresh_world_ranges=world_ranges, max_target_tokens=max_target_tokens)
    teacher = make_teacher("world")
    stated, trained = Counter(), Counter()
    for doc in fresh_world_documents(docs, seed, world_ranges):
        result = synthesize_document(doc, teacher)
        if not result.kept:
            continue
        rec = next(PretrainRecord.from_json(o, doc.id) for o in result_records(result, teacher.name) if o["data_type"] == "qa")
        target = example_from_record(rec, scp).target
        by_value = {}
        for p in rec.pairs:
            by_value.setdefault(p.answer, p)  # a fact's own pair: the first whose whole answer is its value
        for fact in doc.facts:
            pair = by_value.get(str(fact["value"]))
            stated[fact["relation"]] += 1
            trained[fact["relation"]] += pair is not None and pair_token_end(tokenizer, target, pair) <= max_target_tokens
    return {r: {"trained": trained[r], "stated": stated[r]} for r in sorted(stated)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clara.eval.target_coverage", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="backbone directory whose tokenizer SCP uses")
    p.add_argument("--docs", type=positive_int, default=400, help="documents of the fresh stream")
    p.add_argument("--seed", type=int, default=1, help="the stream's seed (scp.fresh_seed)")
    p.add_argument("--world-ranges", type=int, default=0, help="scp.fresh_world_ranges")
    p.add_argument("--max-target-tokens", type=positive_int, default=64, help="scp.max_target_tokens")
    p.add_argument("--layout", default="lines", choices=["lines", "shuffled"], help="scp.qa_layout")
    add_out_file_arguments(p, "write the table as JSON")
    args = p.parse_args(argv)
    claim_out_file(args)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    table = relation_coverage(tok, args.docs, args.seed, args.world_ranges, args.max_target_tokens, args.layout)
    print(f"| relation | pairs trained within {args.max_target_tokens} target tokens | facts stated |")
    print("|---|---|---|")
    for relation, row in table.items():
        print(f"| {relation} | {row['trained']} | {row['stated']} |")
    if args.out:
        from clara.fileio import atomic_write_json

        atomic_write_json(args.out, {"args": vars(args), "relations": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
