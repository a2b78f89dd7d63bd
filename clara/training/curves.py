"""Training curves (DESIGN §10): OUT/curves.png, one panel per logged metric against the step.

The one training loop redraws it at each checkpoint; ``clara plot curves`` draws it again. Figures are
written as PNGs with matplotlib's Agg backend, atomically (a reader never sees half a file).
"""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from clara.errors import DataError
from clara.fileio import atomic_file

log = logging.getLogger(__name__)

# keys of a metrics record that are bookkeeping, not curves
NON_CURVE_KEYS = frozenset({"step", "kind", "epoch", "time", "timestamp", "wall", "elapsed_s", "config_hash", "bad_steps"})
MAX_PANELS = 16


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in tests
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Render ``fig`` to PNG bytes, then write them atomically; closes the figure."""
    plt = pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    with atomic_file(path, "wb") as f:
        f.write(buf.getvalue())
    log.info("plot written to %s", path)
    return Path(path)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def curve_series(records: Iterable[dict], keys: Sequence[str] | None = None) -> dict[str, dict[str, tuple[list, list]]]:
    """{panel: {line: (steps, values)}} for every numeric key (or those in ``keys``), first-seen order.

    A plain key (``loss``) is a panel with one line per record kind (train, eval); a key
    ``name/part`` (``R@5/two_hop_linked``) is a line ``part`` in panel ``name``.
    """
    series: dict[str, dict[str, tuple[list, list]]] = {}
    for r in records:
        if "step" not in r:
            continue
        for k, v in r.items():
            panel, _, part = k.partition("/")
            if k in NON_CURVE_KEYS or not _is_number(v) or (keys and k not in keys and panel not in keys):
                continue
            steps, values = series.setdefault(panel, {}).setdefault(part or str(r.get("kind", "train")), ([], []))
            steps.append(r["step"])
            values.append(float(v))
    return series


def plot_training_curves(metrics: str | Path | Sequence[dict], path: str | Path, *, keys: Sequence[str] | None = None,
                         title: str | None = None) -> Path:  # fmt: skip
    """One panel per logged key (loss, recall, reward, …), x = step, one line per record kind."""
    from clara.training.metrics import read_metrics

    source = str(metrics) if isinstance(metrics, (str, Path)) else "records"
    records = read_metrics(metrics, kind=None) if isinstance(metrics, (str, Path)) else list(metrics)
    series = curve_series(records, keys)
    if not series:
        raise DataError(f"{source}: no numeric metrics with a step to plot" + (f" (keys {list(keys)})" if keys else ""))
    if len(series) > MAX_PANELS:
        log.warning("%d metric keys; plotting the first %d (pass keys= to choose)", len(series), MAX_PANELS)
        series = dict(list(series.items())[:MAX_PANELS])
    plt = pyplot()
    cols = min(3, len(series))
    rows = math.ceil(len(series) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, (key, by_kind) in zip(axes.flat, series.items()):
        for kind, (steps, values) in by_kind.items():
            style = "-" if len(steps) > 1 else "o"
            ax.plot(steps, values, style, label=kind, linewidth=1.6, markersize=5)
        ax.set_title(key, fontsize=12)
        ax.set_xlabel("step", fontsize=10)
        ax.grid(alpha=0.3)
        if len(by_kind) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    fig.suptitle(title or f"training curves — {Path(source).parent.name or source}", fontsize=14)
    fig.tight_layout(rect=(0, 0, 1, 0.97))  # room for the suptitle
    return save_figure(fig, path)
