"""`clara world`: generate the world corpus into a directory."""

from __future__ import annotations

import argparse
import time

from clara.cli.args import add_overwrite_argument
from clara.config import WorldConfig


def register(subparsers) -> None:
    defaults = WorldConfig()
    p = subparsers.add_parser(
        "world",
        help="generate the synthetic world corpus (documents, facts, questions with candidates)",
        description="Generate a deterministic synthetic world: one article per invented entity, "
        "verified questions of five kinds with gold + hard-negative candidates, and "
        "train/dev/test/test_unseen splits. The same seed gives byte-identical files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="random seed; a different seed is a different world")
    p.add_argument("--entities", type=int, default=defaults.entities,
                   help="number of entities (people, organisations, cities); one document each; at least 10")
    p.add_argument("--out", required=True, help="output directory (written atomically; an existing one is refused)")
    add_overwrite_argument(p, "a world corpus")
    p.add_argument("--candidates", type=int, default=defaults.candidates,
                   help="candidate documents per question (gold + hard negatives + random)")
    p.add_argument("--max-words", type=int, default=defaults.max_words,
                   help="longest document in words; articles are ~45 words (~75 SmolLM2 tokens) at most seeds, "
                   "(filler is added only while it fits; mentions of related entities go next)")
    p.set_defaults(func=run)


def format_summary(world) -> str:
    from clara.world.generate import QUESTION_TYPES

    counts = world.counts()
    splits = list(counts["types"])
    header = f"{'type':<16}" + "".join(f"{s:>13}" for s in splits)
    rows = [header, "-" * len(header)]
    for kind in QUESTION_TYPES:
        rows.append(f"{kind:<16}" + "".join(f"{counts['types'][s].get(kind, 0):>13}" for s in splits))
    rows.append(f"{'total':<16}" + "".join(f"{counts['questions'][s]:>13}" for s in splits))
    return "\n".join(rows)


def run(args) -> int:
    from clara.fileio import WORLD, claim_output
    from clara.world import generate_world, write_world

    claim_output(args.out, WORLD, overwrite=args.overwrite)
    start = time.perf_counter()
    world = generate_world(args.seed, args.entities, candidates=args.candidates, max_words=args.max_words)
    out = write_world(world, args.out)
    elapsed = time.perf_counter() - start
    print(f"world seed={args.seed}: {len(world.documents)} documents -> {out} ({elapsed:.1f}s)")
    print(format_summary(world))
    return 0
