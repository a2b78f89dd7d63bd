"""Plots for runs and reports (DESIGN §10), written as PNGs with matplotlib's Agg backend.

    plot_training_curves("out/joint/metrics.jsonl", "curves.png")   # clara.training.curves
    plot_cr_sweep(compression_results, "sweep.png", metric="em")   # `clara eval compression --out`
    plot_retrieval(retrieval_results, "retrieval.png")             # `clara eval retrieval --out`
    plot_lens_heatmap(lens_result, "lens.png")                     # clara.eval.lens.logit_lens

Every function takes plain dicts / paths, writes its PNG atomically (a reader never sees half a
file) and returns the path. Fonts are sized for a report page, not a notebook.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from clara.errors import DataError
from clara.training.curves import pyplot, save_figure

if TYPE_CHECKING:
    from clara.eval.lens import LensResult

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- CR sweep


SWEEP_STYLES = {"memory": ("C0", "-o"), "wrong_memory": ("C3", "-s"), "raw_text": ("C2", "--"), "closed_book": ("C7", ":")}


def sweep_points(results: dict[str, Any], metric: str) -> dict[str, list[tuple[int, float]]]:
    """{setting: [(cr, value), …]} sorted by CR, from ``run_compression_eval`` results."""
    runs = results.get("runs")
    if not runs:
        raise DataError("CR sweep: results hold no 'runs' (expected the JSON of `clara eval compression --out`)")
    points: dict[str, list[tuple[int, float]]] = {}
    for run in runs:
        for setting, scores in run.get("settings", {}).items():
            if metric not in scores:
                raise DataError(f"CR sweep: setting {setting!r} at CR {run.get('cr')} has no metric {metric!r}")
            points.setdefault(setting, []).append((int(run["cr"]), float(scores[metric])))
    return {s: sorted(p) for s, p in points.items()}


def plot_cr_sweep(results: dict[str, Any], path: str | Path, *, metric: str = "em", title: str | None = None) -> Path:
    """Metric vs compression rate, one line per setting. Text baselines evaluated once (they do not
    depend on the compressor) are drawn as horizontal lines across the sweep."""
    points = sweep_points(results, metric)
    crs = sorted({cr for p in points.values() for cr, _ in p})
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for setting, pts in points.items():
        color, style = SWEEP_STYLES.get(setting, (None, "-o"))
        if len(pts) == 1 and len(crs) > 1 and setting in ("raw_text", "closed_book"):
            ax.axhline(pts[0][1], color=color, linestyle=style.strip("o") or "--", label=setting, linewidth=1.6)
        else:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, style, color=color, label=setting, linewidth=1.8, markersize=6)
    if len(crs) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(crs, [str(c) for c in crs])
    ax.set_xlabel("compression rate (document tokens per memory vector)", fontsize=11)
    ax.set_ylabel(metric, fontsize=11)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=10)
    ax.set_title(title or f"{metric} vs compression rate", fontsize=13)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_settings(models: dict[str, dict[str, Any]], path: str | Path, *, metric: str = "em",
                  title: str | None = None) -> Path:  # fmt: skip
    """Grouped bars of one metric per evaluation setting (memory, wrong memory, raw text, closed
    book), one bar per model: ``models`` maps a label to `evaluate_compression`'s ``settings``."""
    settings = [s for s in SWEEP_STYLES if any(s in m for m in models.values())]
    if not settings:
        raise DataError(f"no settings among {list(SWEEP_STYLES)} to plot")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.8 / max(1, len(models))
    for i, (label, scores) in enumerate(models.items()):
        xs = [j + (i - (len(models) - 1) / 2) * width for j, s in enumerate(settings) if s in scores]
        ys = [scores[s][metric] for s in settings if s in scores]
        bars = ax.bar(xs, ys, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(range(len(settings)), [s.replace("_", " ") for s in settings], fontsize=10)
    ax.set_ylabel(metric, fontsize=11)
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=9)
    ax.set_title(title or f"{metric} by setting", fontsize=13)
    fig.tight_layout()
    return save_figure(fig, path)


# ---------------------------------------------------------------------------- retrieval vs baselines


def plot_retrieval(results: dict[str, Any], path: str | Path, *, ks: Sequence[int] | None = None,
                   title: str | None = None) -> Path:  # fmt: skip
    """Grouped bars: Recall@k per question type, one bar per retriever, one panel per k.

    ``results`` is the JSON of `clara eval retrieval --out` ({"recall": {retriever: {type: row}}})
    or that inner ``recall`` dict.
    """
    import numpy as np

    tables = results.get("recall", results)
    if not tables or not all(isinstance(t, dict) for t in tables.values()):
        raise DataError("retrieval plot: expected {'recall': {retriever: {type: {'R@k': …}}}}")
    retrievers = list(tables)
    types = list(dict.fromkeys(t for table in tables.values() for t in table))
    available = sorted({int(c[2:]) for table in tables.values() for row in table.values() for c in row if c.startswith("R@")})
    ks = list(ks or available)
    missing = [k for k in ks if k not in available]
    if missing:
        raise DataError(f"retrieval plot: no R@{missing[0]} in the results (have {available})")
    plt = pyplot()
    fig, axes = plt.subplots(len(ks), 1, figsize=(max(7, 1.3 * len(types) * max(1, len(retrievers) / 2)), 3.3 * len(ks)),
                             squeeze=False)  # fmt: skip
    width = 0.8 / len(retrievers)
    x = np.arange(len(types))
    for ax, k in zip(axes[:, 0], ks):
        for j, name in enumerate(retrievers):
            vals = [tables[name].get(t, {}).get(f"R@{k}", float("nan")) for t in types]
            bars = ax.bar(x + (j - (len(retrievers) - 1) / 2) * width, vals, width, label=name, color=f"C{j}")
            ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=1)
        ax.set_xticks(x, [t.replace("_", " ") for t in types], fontsize=10)
        ax.set_ylim(0, 1.12)
        ax.set_ylabel(f"Recall@{k}", fontsize=11)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=10, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a bar
    axes[0, 0].set_title(title or "retrieval: query reasoner vs baselines (same candidates)", fontsize=13)
    fig.tight_layout()
    return save_figure(fig, path)


# ---------------------------------------------------------------------------- logit lens


def _short(token: str, width: int = 10) -> str:
    return token if len(token) <= width else token[: width - 1] + "…"


def plot_lens_heatmap(res: LensResult, path: str | Path, *, title: str | None = None) -> Path:
    """Rows = layers, columns = memory slots, colour = top-1 probability, cell text = top-1 token."""
    import numpy as np

    probs = np.array([[slot[0] for slot in layer] for layer in res.top_probs])  # (layers, m)
    n_layers, m = probs.shape
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.95 * m + 2.2), max(2.4, 0.42 * n_layers + 1.6)))
    image = ax.imshow(probs, cmap="viridis", vmin=0.0, vmax=max(float(probs.max()), 1e-3), aspect="auto")
    font = 9 if m <= 16 else 7
    for i in range(n_layers):
        for j in range(m):
            dark = probs[i, j] < 0.6 * image.norm.vmax  # white text on the dark end of viridis
            ax.text(j, i, _short(res.tokens[i][j][0]), ha="center", va="center", fontsize=font,
                    color="white" if dark else "black")  # fmt: skip
    names = ["emb" if layer == 0 else ("last" if layer == res.num_blocks else str(layer)) for layer in res.layers]
    ax.set_yticks(range(n_layers), names, fontsize=9)
    ax.set_xticks(range(m), [str(j) for j in range(m)], fontsize=9)
    ax.set_xlabel("memory slot", fontsize=11)
    ax.set_ylabel("layer", fontsize=11)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02).set_label("top-1 probability", fontsize=10)
    text = res.text if len(res.text) <= 70 else res.text[:69] + "…"
    ax.set_title(title or f"logit lens ({res.adapter or 'no adapter'}): {text}", fontsize=12)
    fig.tight_layout()
    return save_figure(fig, path)
