"""The demo's stage-2 round (DESIGN §5, §10): a short joint training run from the stage-1
adapters, then Recall@k of the query reasoner before and after it beside BM25 and MiniLM on
the same candidates, per question type, with the recall curve and a comparison figure.

The query reasoner starts as a copy of the compressor and learns from the generator's
next-token loss alone; no relevance label is used in training. The recipe is
``configs/joint-smollm2.yaml`` with this demo's backbone, world and step budget; the model
section is the one the stage-1 adapters were trained with.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

JOINT_PRESET = Path(__file__).resolve().parents[1] / "configs" / "joint-smollm2.yaml"
STAGE2_START = Path(__file__).resolve().parents[1] / "assets" / "scp-smollm2-cr16-rows"
REPORT_KS = (1, 2, 5)
LENS_TOP = 10  # top lens tokens per memory slot, as `clara lens compare`


def add_arguments(p) -> None:
    p.add_argument("--joint-steps", type=int, default=30,
                   help="steps of the demo's joint training run (stage 2); 0 skips stage 2")
    p.add_argument("--joint-eval-every", type=int, default=10, help="Recall@k on the test split every this many steps")
    p.add_argument("--joint-init", default=str(STAGE2_START),
                   help="SCP adapters stage 2 starts from when stage 1 used a release (the default: the release trained "
                        "further, last one row per QA pair, which retrieves better); '' = the stage-1 release itself")


def joint_config(args, backbone: Path, kind: str, world_dir: Path, out: Path, init: Path, release: Path | None):
    """The joint preset with this demo's paths and budget, on the model settings of ``init``."""
    from clara.config import load_config
    from clara.demo.stage1 import live_config

    stage1 = live_config(args, backbone, kind, out / "scp-live", release)  # the model ``init`` was trained with
    cfg = load_config(JOINT_PRESET, [
        f"out_dir={out / 'joint'}", f"joint.world={world_dir}", f"joint.init_adapters={init}",
        f"joint.cache_dir={out / 'memory-cache'}", f"train.max_steps={args.joint_steps}", "train.save_every=0",
        f"joint.eval_every={args.joint_eval_every}", "joint.eval_split=test",
    ])  # fmt: skip
    return dataclasses.replace(cfg, model=stage1.model)


def _table(flat: dict[str, float], counts: dict[str, dict]) -> dict[str, dict[str, float]]:
    """``{"R@1/single_hop": v}`` (the joint run's log) -> ``{"single_hop": {"n": .., "R@1": v}}``."""
    table: dict[str, dict[str, float]] = {}
    for key, value in flat.items():
        metric, _, group = key.partition("/")
        table.setdefault(group, {"n": counts.get(group, {}).get("n", 0)})[metric] = value
    return table


def run_stage2(args, backbone: Path, kind: str, world_dir: Path, out: Path, timings: dict,
               release: Path | None) -> dict[str, Any]:  # fmt: skip
    from clara.eval.baselines import bm25_rankings, minilm_rankings
    from clara.model.scoring import recall_by_type
    from clara.joint.train import EVAL_KS, run_joint
    from clara.world.splits import load_split

    if release is None:  # no release (e.g. the tiny backbone): the live stage-1 run
        init = out / "scp-live" / "adapters"
    else:
        init = Path(args.joint_init) if args.joint_init else release
    if not (init / "clara_model.json").is_file():
        return {"note": f"no stage-1 adapters to start from ({init}); run stage 1 (--scp-steps > 0) or give --scp-release"}
    cfg = joint_config(args, backbone, kind, world_dir, out, init, release)
    shutil.rmtree(cfg.out_dir, ignore_errors=True)  # the demo trains afresh each time
    start = time.perf_counter()
    summary = run_joint(cfg)
    timings["joint"] = time.perf_counter() - start
    print(f"joint: {summary['steps']} steps -> {cfg.out_dir}")

    start = time.perf_counter()
    records = load_split(cfg, cfg.joint.eval_split, train=False)[: cfg.joint.eval_limit]
    # the same k values the joint run logs for the query reasoner
    tables = {"bm25": recall_by_type(bm25_rankings(records), records, EVAL_KS),
              "minilm": recall_by_type(minilm_rankings(records), records, EVAL_KS)}  # fmt: skip
    recall = {"query before": _table(summary["before"], tables["bm25"]),
              "query after": _table(summary["after"], tables["bm25"]), **tables}  # fmt: skip
    timings["baselines"] = time.perf_counter() - start
    result = {"steps": summary["steps"], "n": len(records), "split": cfg.joint.eval_split, "init": str(init),
              "top_k": cfg.joint.top_k, "candidates": cfg.joint.candidates, "lr": cfg.train.lr,
              "train_questions": summary["train_questions"], "recall": recall, "run": str(cfg.out_dir)}  # fmt: skip
    result["plots"] = stage2_plots(summary, Path(cfg.out_dir), recall, out)
    start = time.perf_counter()
    from clara.world import document_kinds

    result["lens"] = two_hop_lens_overlap(summary["model"], records, document_kinds(str(world_dir)))
    timings["lens compare"] = time.perf_counter() - start
    return result


def two_hop_lens_overlap(model, records, kinds: dict[str, str] | None = None) -> dict[str, Any]:
    """DESIGN §10: how many words of the bridge document — absent from the question — the query's
    logit lens surfaces, after joint training and before it (the compressor the query started as),
    against the bare backbone's lens of the raw question. ``read_by_type``: the same counts in the
    ``read`` view (states centred over the questions, by cosine against the input embeddings). ``kinds``
    (document id -> entity type): the wrong-document control is a bridge document of the same kind, the
    other-kind control one of another kind. ``memory``: the bridge document's own memory, the ceiling;
    ``*specific``: only the bridge's words that the same-kind control lacks."""
    from clara.eval.lens import lens_overlap

    two_hop = [r for r in records if (r.type or "").startswith("two_hop")]
    if not two_hop:
        return {}
    result: dict[str, Any] = {"top": LENS_TOP}
    for view, key in (("lens", "by_type"), ("read", "read_by_type")):
        after = lens_overlap(model, two_hop, adapter="query", top=LENS_TOP, view=view, kinds=kinds)
        before = lens_overlap(model, two_hop, adapter="compressor", top=LENS_TOP, view=view, kinds=kinds, memory=False)
        result[key] = {g: {"n": s["n"], "target_words": s["target_words"], "before": before["by_type"][g]["query_overlap"],
                           "after": s["query_overlap"], "after_wrong": s["query_wrong_overlap"],
                           "after_other_kind": s["query_other_kind_overlap"], "raw": s["raw_overlap"],
                           "raw_wrong": s["raw_wrong_overlap"], "memory": s["memory_overlap"],
                           "after_specific": s["query_specific_overlap"],
                           "after_wrong_specific": s["query_wrong_specific_overlap"],
                           "memory_specific": s["memory_specific_overlap"]} for g, s in after["by_type"].items()}  # fmt: skip
        if view == "read":  # the view where the query's words show (the logit lens decodes every slot alike)
            result["examples"] = [{"question": q["question"], "after": q["query"]["words"], "raw": q["raw"]["words"],
                                   "memory": q["memory"]["words"]}
                                  for q in after["questions"] if q["query"]["words"] or q["raw"]["words"]][:3]  # fmt: skip
    return result


def stage2_plots(summary: dict, run_dir: Path, recall: dict, out: Path) -> dict[str, str]:
    from clara.eval.plots import plot_retrieval
    from clara.training.curves import plot_training_curves
    from clara.training.metrics import read_metrics

    records = [{"step": 0, "kind": "eval", **summary["before"]}, *read_metrics(run_dir / "metrics.jsonl", kind=None)]
    curve = plot_training_curves(records, out / "joint-curves.png", keys=["loss", "R@1", "R@2"],
                                 title="joint training: loss and test Recall@k per question type")  # fmt: skip
    bars = plot_retrieval(recall, out / "retrieval.png", ks=[1, 2],
                          title="test Recall@k: query reasoner before/after joint training vs baselines")  # fmt: skip
    return {"joint_curves": str(curve), "retrieval": str(bars)}


def stage2_report(stage2: dict[str, Any]) -> list[str]:
    """Markdown lines: Recall@k per question type for the query reasoner before/after and the baselines."""
    lines = ["", "## Stage 2 — joint training: retrieval learned from the generator's loss alone", ""]
    if stage2.get("note"):
        return lines + [f"Not run: {stage2['note']}", ""]
    lines += [f"- {stage2['steps']} steps from `{stage2['init']}` on {stage2['train_questions']} training questions "
              f"(k = {stage2['top_k']} of N = {stage2['candidates']} candidates, lr {stage2['lr']:g}); no relevance "
              "labels in training",
              f"- Recall@k on the {stage2['n']} `{stage2['split']}` questions, every retriever ranking the same "
              "candidates (hard negatives: documents that share the question's words)", ""]  # fmt: skip
    recall = stage2["recall"]
    names = list(recall)
    ks = "/".join(f"R@{k}" for k in REPORT_KS)
    lines += ["| type | n | " + " | ".join(f"{name} {ks}" for name in names) + " |", "|---|---|" + "---|" * len(names)]
    for group, row in recall["bm25"].items():
        cells = [" / ".join(f"{recall[name].get(group, {}).get(f'R@{k}', float('nan')):.3f}" for k in REPORT_KS)
                 for name in names]  # fmt: skip
        lines.append(f"| {group} | {row['n']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"![{name}]({Path(path).name})" for name, path in stage2.get("plots", {}).items()]
    return lines + lens_report(stage2.get("lens") or {})


def lens_report(lens: dict[str, Any]) -> list[str]:
    if not lens:
        return []
    lines = ["", f"Logit lens of the two-hop test questions (last layer, top {lens['top']} tokens per memory slot): "
             "mean number of content words of the bridge document, absent from the question, that the lens "
             "surfaces — the query reasoner before and after joint training, and the bare backbone on the raw "
             "question (`clara lens compare`; `read`: the same states centred over the questions and ranked by "
             "cosine against the input embeddings, as the generator reads memory — `--view read`). Control "
             "(*wrong doc*): the same words counted against another question's bridge document of the same kind "
             "(person, organisation, city); words every such document shares hit both alike, so only the margin "
             "over it is specific to the bridge entity. *Other kind*: against a bridge document of another kind; "
             "a query that thinks of its bridge's kind hits these less. *Bridge memory*: the bridge document's own "
             "memory (compressor) in the same view — what the memory the query is matched against shows, the "
             "ceiling. *Specific*: only the bridge's words that the same-kind document lacks.", "",
             "| view | type | n | bridge words | query before | query after | after, wrong doc | after, other kind | "
             "raw question | raw, wrong doc | bridge memory | specific: after | specific: after, wrong doc | "
             "specific: bridge memory |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for view, key in (("lens", "by_type"), ("read", "read_by_type")):
        for g, r in (lens.get(key) or {}).items():
            lines.append(f"| {view} | {g} | {r['n']} | {r['target_words']:.1f} | {r['before']:.3f} | {r['after']:.3f} | "
                         f"{r['after_wrong']:.3f} | {r['after_other_kind']:.3f} | {r['raw']:.3f} | {r['raw_wrong']:.3f} | "
                         f"{r['memory']:.3f} | {r['after_specific']:.3f} | {r['after_wrong_specific']:.3f} | "
                         f"{r['memory_specific']:.3f} |")  # fmt: skip
    if lens.get("examples"):
        lines += ["", "Bridge-document words surfaced, read view:", ""]
    for ex in lens.get("examples", []):
        lines.append(f"- *{ex['question']}* — query after: {', '.join(ex['after']) or '–'}; raw: {', '.join(ex['raw']) or '–'}; "
                     f"bridge memory: {', '.join(ex.get('memory', [])) or '–'}")  # fmt: skip
    return lines + [""]
