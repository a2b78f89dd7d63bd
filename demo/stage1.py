"""The demo's stage-1 round (DESIGN §4, §11): synthesise QA from world documents, score the
release SCP adapters, and run a short live SCP beside them.

SCP learns to compress far more slowly than a demo can wait on 2 CPU cores (DESIGN §11), so the
demo starts from release adapters trained by the project's own ``clara pretrain train`` (see
``assets/*/README.md`` for the command and config) and shows a short live run next to them on
the same held-out questions. Every number in the report is measured here, on this machine.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_RELEASE = ASSETS / "scp-smollm2-cr16-shuffled"
EVAL_SPLITS = ("test_unseen",)  # entities no training question ever asked about


def add_arguments(p) -> None:
    p.add_argument("--scp-release", default=str(DEFAULT_RELEASE),
                   help="release SCP adapters to score (skipped with a note when absent or trained on another "
                   "backbone)")
    p.add_argument("--scp-steps", type=int, default=20,
                   help="steps of the live SCP run on the synthesised documents; 0 skips stage 1 entirely")
    p.add_argument("--scp-docs", type=int, default=80, help="fresh world documents to synthesise QA for")


def live_config(args, backbone: Path, kind: str, out: Path, release: Path | None):
    """The release's own training config (when it has one) with this demo's backbone and budget, from a fresh
    LoRA (a release trained further from other adapters records them, and they are not shipped) and at the
    precision that suits this CPU (a release may record bf16, 27x slower on a CPU without native bf16)."""
    from clara.config import load_config

    overrides = [f"model.backbone={backbone}", f"model.kind={kind}", f"train.max_steps={args.scp_steps}",
                 "train.save_every=0", "train.log_every=5", "train.warmup_steps=2", f"out_dir={out}",
                 "scp.data_types=[qa]", "scp.init_adapters=", "train.precision=auto"]  # fmt: skip
    preset = release / "train_config.yaml" if release is not None and (release / "train_config.yaml").is_file() else None
    if preset is None:  # no release recipe (e.g. the tiny backbone): a small CR-16 setting
        overrides += ["model.chunk_len=64", "model.compression_rate=16", "train.batch_size=4",
                      "model.memory_norm=center", "scp.max_target_tokens=64", "model.lora.r=8", "model.lora.alpha=16"]  # fmt: skip
    return load_config(preset, overrides)


def usable_release(path: Path, backbone: Path) -> tuple[Path | None, str]:
    """The release directory if it fits this backbone, else None and the reason, in one line."""
    from clara.model.backbone import backbone_hash, backbone_recipe, same_backbone

    info_file = path / "clara_model.json"
    if not info_file.is_file():
        return None, f"no release adapters at {path}"
    info = json.loads(info_file.read_text(encoding="utf-8"))
    ours = backbone_hash(backbone)
    if not same_backbone(info, ours, backbone_recipe(backbone)):
        return None, (f"release {path} was trained on backbone {info['backbone_hash']}, this demo's is {ours} "
                      "(run the demo with its default --reader-steps to rebuild the same reader backbone)")
    return path, ""


def run_stage1(args, backbone: Path, kind: str, world_dir: Path, out: Path, timings: dict) -> dict[str, Any]:
    from clara.eval.compression import evaluate_compression
    from clara.model.loading import load_trained_model
    from clara.eval.reading import load_world_questions
    from clara.pretrain.scp import build_scp_model, train_scp
    from clara.pretrain.synth import fresh_world_documents, synthesize
    from clara.pretrain.teacher_factory import make_teacher

    result: dict[str, Any] = {"backbone": str(backbone)}
    start = time.perf_counter()
    synth_file = out / "synth" / "world-fresh.jsonl"
    shutil.rmtree(synth_file.parent, ignore_errors=True)  # synthesis appends and skips done documents: start clean
    summary = synthesize(fresh_world_documents(args.scp_docs, 1), make_teacher("world"), synth_file, total=args.scp_docs)
    timings["synth"] = time.perf_counter() - start
    result["synth"] = {k: summary[k] for k in ("kept", "dropped", "pairs_per_doc", "mean_coverage_kept") if k in summary}
    result["synth"]["file"] = str(synth_file)
    print(f"synth: {summary['kept']} documents kept, {summary['dropped']} dropped -> {synth_file}")

    questions, documents = load_world_questions(str(world_dir), EVAL_SPLITS, ["single_hop"], args.limit)
    release, why = usable_release(Path(args.scp_release), backbone)
    if release is not None:
        start = time.perf_counter()
        model = load_trained_model(release, backbone=str(backbone))
        result["release"] = {**evaluate_compression(model, questions, documents, style=args.style), "model": str(release)}
        timings["release eval"] = time.perf_counter() - start
        result["lens"] = two_hop_lens(model, world_dir, out)
        del model
    else:
        result["release_note"] = why
        print(f"stage 1: {why}")

    start = time.perf_counter()
    cfg = live_config(args, backbone, kind, out / "scp-live", release)

    run_dir = Path(cfg.out_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # the live run is the demo's point: train it afresh each time
    model = build_scp_model(cfg)
    train_scp(cfg, synth_file, model=model)
    timings["live SCP"] = time.perf_counter() - start
    start = time.perf_counter()
    model.eval()
    settings = ["memory", "wrong_memory"] if release is not None else ["memory", "wrong_memory", "raw_text", "closed_book"]
    result["live"] = {**evaluate_compression(model, questions, documents, settings=settings, style=args.style),
                      "steps": args.scp_steps, "model": str(run_dir / "adapters")}  # fmt: skip
    timings["live eval"] = time.perf_counter() - start
    if "lens" not in result:
        result["lens"] = two_hop_lens(model, world_dir, out)
    result["plots"] = stage1_plots(result, run_dir, out)
    return result


def two_hop_lens(model, world_dir: Path, out: Path) -> dict[str, Any]:
    """Logit lens of a held-out linked two-hop question through the compressor — the query
    reasoner's starting point before joint training (DESIGN §5) — at six depths, as a heatmap."""
    from clara.eval.lens import logit_lens
    from clara.eval.plots import plot_lens_heatmap
    from clara.eval.reading import load_world_questions

    questions, _ = load_world_questions(str(world_dir), EVAL_SPLITS, ["two_hop_linked"], 1)
    blocks = model.lm.config.num_hidden_layers
    layers = sorted({round(i * blocks / 5) for i in range(6)})
    res = logit_lens(model, questions[0]["question"], "compressor", layers, top=3)
    png = plot_lens_heatmap(res, out / "lens-two-hop.png",
                            title=f"logit lens (compressor) — {questions[0]['question'][:48]}…")  # fmt: skip
    last = [slot[0] for slot in res.tokens[-1]]
    return {"question": questions[0]["question"], "answers": questions[0]["answers"], "layers": layers,
            "last_layer_top_tokens": last, "png": str(png)}  # fmt: skip


def stage1_plots(result: dict[str, Any], run_dir: Path, out: Path) -> dict[str, str]:
    from clara.eval.plots import plot_settings
    from clara.training.curves import plot_training_curves

    models = {}
    if result.get("release"):
        models["release adapters"] = result["release"]["settings"]
    models[f"live run ({result['live']['steps']} steps)"] = result["live"]["settings"]
    plots = {"settings": str(plot_settings(models, out / "stage1-em.png", title="stage 1: EM from memory vs baselines"))}
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size:
        plots["live_curves"] = str(plot_training_curves(metrics, out / "scp-live-curves.png",
                                                        keys=["loss", "ce", "mse", "mem_cos"],
                                                        title="live SCP run"))  # fmt: skip
    return plots


def stage1_report(stage1: dict[str, Any]) -> list[str]:
    """Markdown lines: release and live scores side by side, with the memory spread."""
    synth = stage1.get("synth", {})
    lines = ["", "## Stage 1 — compressing documents into memory (SCP, CR "
             f"{_cr(stage1)})", "",
             f"- synthesis (world teacher, verified coverage): {synth.get('kept', 0)} fresh documents kept, "
             f"{synth.get('dropped', 0)} dropped, {synth.get('pairs_per_doc', float('nan')):.1f} QA pairs per document",
             f"- questions: single-hop about held-out entities ({', '.join(EVAL_SPLITS)}); the generator sees only "
             "the compressed document (memory), another document's memory (wrong memory), the raw document as "
             "text, or nothing (closed book)"]  # fmt: skip
    if stage1.get("release_note"):
        lines.append(f"- release adapters: not scored — {stage1['release_note']}")
    rows = ["| model | setting | n | EM | F1 | Cover-EM |", "|---|---|---|---|---|---|"]
    spread = ["| model | mean pairwise cos between documents | target NLL right memory | wrong memory |",
              "|---|---|---|---|"]
    for key, name in (("release", "release adapters"), ("live", f"live run ({stage1.get('live', {}).get('steps', 0)} steps)")):
        res = stage1.get(key)
        if not res:
            continue
        for setting, s in res["settings"].items():
            rows.append(f"| {name} | {setting} | {s['n']} | {s['em']:.3f} | {s['f1']:.3f} | {s['cover_em']:.3f} |")
        spread.append(f"| {name} | {res['mem_cos']:.4f} | {res['nll_right']:.3f} | {res['nll_wrong']:.3f} |")
    lines += ["", *rows, "", *spread, ""]
    release = stage1.get("release")
    if release:
        lines.append(f"Release adapters: `{release['model']}` (its README gives the command and config that trained it).")
    plots = stage1.get("plots", {})
    lines += [f"![{name}]({Path(path).name})" for name, path in plots.items()]
    lens = stage1.get("lens")
    if lens:
        lines += ["", f"Logit lens of a held-out two-hop question through the compressor (the query reasoner's start): "
                  f"*{lens['question']}* (answer {lens['answers'][0]}); top token per memory slot at the last layer: "
                  + ", ".join(f"`{t}`" for t in lens["last_layer_top_tokens"]),
                  "", f"![lens]({Path(lens['png']).name})"]  # fmt: skip
    return lines


def _cr(stage1: dict[str, Any]) -> str:
    res = stage1.get("release") or stage1.get("live") or {}
    return str(res["chunk_len"] // res["num_mem"]) if res else "?"
