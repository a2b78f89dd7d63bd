"""Held-out EM from memory against documents seen: the points, a fit, and where the fit reaches a target.

    python -m clara.eval.learning_curve --point 200=RUN/eval-50.json --point 800=RUN/eval-200.json ... \\
        --target 0.5 --sec-per-doc 1.3 --gpu-docs-per-hour 288000 --out curve.json --png curve.png

Each ``--point DOCS=FILE[=LABEL]`` is the JSON of ``clara eval compression --out`` for adapters that had
seen DOCS training documents (steps × batch). The fit is least squares of EM on log10(DOCS) over the
points with the first label (``--fit-label``; default: every point), ``EM = a + b·log10(docs)``; its
reach is the DOCS where the line meets ``--target``, and at ``--sec-per-doc`` (measured CPU seconds per
training document) and ``--gpu-docs-per-hour`` what that costs. A log-linear fit is what a curve that
keeps bending down on a log axis looks like at its best: read the reach as a lower bound on the documents
needed, never as a promise.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from clara.errors import DataError


@dataclass(frozen=True)
class CurvePoint:
    docs: int
    em: float
    em_wrong: float | None
    nll_right: float | None
    nll_wrong: float | None
    label: str
    source: str


def read_point(spec: str) -> CurvePoint:
    """``DOCS=FILE[=LABEL]`` -> its point, from the first run of the eval JSON."""
    parts = spec.split("=")
    if len(parts) not in (2, 3) or not parts[0].isdigit():
        raise DataError(f"--point {spec!r}: expected DOCS=FILE or DOCS=FILE=LABEL, DOCS a whole number")
    docs, path = int(parts[0]), parts[1]
    try:
        run = json.loads(Path(path).read_text(encoding="utf-8"))["runs"][0]
        settings = run["settings"]
        em = float(settings["memory"]["em"])
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise DataError(f"{path}: not the JSON of `clara eval compression --out` with a memory setting ({e})") from e
    wrong = settings.get("wrong_memory", {}).get("em")
    return CurvePoint(docs, em, None if wrong is None else float(wrong), run.get("nll_right"), run.get("nll_wrong"),
                      parts[2] if len(parts) == 3 else "", path)


def fit_log_linear(points: Sequence[CurvePoint]) -> tuple[float, float]:
    """(a, b) of EM = a + b·log10(docs), least squares."""
    if len({p.docs for p in points}) < 2:
        raise DataError("a fit needs points at two or more document counts at least")
    xs, ys = [math.log10(p.docs) for p in points], [p.em for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def docs_to_reach(a: float, b: float, target: float) -> float | None:
    """Documents at which the fit meets ``target``; None when it never does (slope <= 0)."""
    return 10 ** ((target - a) / b) if b > 0 else None


def plot_curve(points: Sequence[CurvePoint], fit: tuple[float, float], target: float, path: str | Path) -> Path:
    """EM (right and wrong memory) with the fit and the target on the left; answer NLL, right and wrong
    memory, on the right; both against documents seen on a log axis."""
    from clara.training.curves import pyplot, save_figure

    plt = pyplot()
    fig, (ax, nll) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, label in enumerate(dict.fromkeys(p.label for p in points)):
        mine = sorted((p for p in points if p.label == label), key=lambda p: p.docs)
        xs = [p.docs for p in mine]
        ax.plot(xs, [p.em for p in mine], "-o", color=f"C{i}", label=f"memory {label}".strip(), markersize=6)
        if all(p.em_wrong is not None for p in mine):
            ax.plot(xs, [p.em_wrong for p in mine], ":x", color=f"C{i}", label=f"wrong memory {label}".strip())
        if all(p.nll_right is not None and p.nll_wrong is not None for p in mine):
            nll.plot(xs, [p.nll_right for p in mine], "-o", color=f"C{i}", label=f"right memory {label}".strip())
            nll.plot(xs, [p.nll_wrong for p in mine], ":x", color=f"C{i}", label=f"wrong memory {label}".strip())
    a, b = fit
    reach = docs_to_reach(a, b, target)
    lo = min(p.docs for p in points)
    hi = max(max(p.docs for p in points), reach or 0) * 1.5
    xs = [lo * (hi / lo) ** (i / 50) for i in range(51)]
    ax.plot(xs, [a + b * math.log10(x) for x in xs], "--", color="C7", label=f"fit {a:.3f} + {b:.3f}·log10(docs)")
    ax.axhline(target, color="C2", linewidth=1, label=f"target {target}")
    ax.set_ylabel("held-out EM")
    ax.set_ylim(0, max(target, max(p.em for p in points)) + 0.05)
    nll.set_ylabel("answer NLL per token")
    for axis in (ax, nll):
        axis.set_xscale("log")
        axis.set_xlabel("training documents seen")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--point", action="append", required=True, help="DOCS=EVAL_JSON[=LABEL]; repeat per point")
    ap.add_argument("--fit-label", default=None, help="fit only the points with this label (default: all)")
    ap.add_argument("--target", type=float, default=0.5, help="EM the extrapolation aims at")
    ap.add_argument("--sec-per-doc", type=float, default=None, help="measured CPU seconds of training per document")
    ap.add_argument("--gpu-docs-per-hour", type=float, default=None, help="measured GPU training documents per hour")
    ap.add_argument("--out", default=None, help="write points, fit and reach as JSON")
    ap.add_argument("--png", default=None, help="write the plot")
    args = ap.parse_args(argv)
    points = sorted((read_point(s) for s in args.point), key=lambda p: p.docs)
    fitted = [p for p in points if args.fit_label is None or p.label == args.fit_label]
    if not fitted:
        raise DataError(f"--fit-label {args.fit_label!r}: no point has that label")
    a, b = fit_log_linear(fitted)
    reach = docs_to_reach(a, b, args.target)
    print("| documents | EM memory | EM wrong | NLL right / wrong | label |\n|---|---|---|---|---|")
    for p in points:
        nll = f"{p.nll_right:.2f} / {p.nll_wrong:.2f}" if p.nll_right is not None and p.nll_wrong is not None else "—"
        wrong = "—" if p.em_wrong is None else f"{p.em_wrong:.3f}"
        print(f"| {p.docs:,} | {p.em:.3f} | {wrong} | {nll} | {p.label} |")
    res = {"points": [asdict(p) for p in points], "fit": {"a": a, "b": b, "points": len(fitted), "label": args.fit_label},
           "target": args.target, "docs_to_target": reach}
    line = f"fit over {len(fitted)} points: EM = {a:.4f} + {b:.4f}·log10(docs); "
    if reach is None:
        line += f"the slope is not positive, so it never reaches {args.target}"
    else:
        line += f"EM {args.target} at {reach:.3g} documents"
        if args.sec_per_doc:
            res["cpu_hours"] = reach * args.sec_per_doc / 3600
            line += f", {res['cpu_hours']:.3g} CPU-hours at {args.sec_per_doc} s/document"
        if args.gpu_docs_per_hour:
            res["gpu_hours"] = reach / args.gpu_docs_per_hour
            line += f", {res['gpu_hours']:.3g} GPU-hours at {args.gpu_docs_per_hour:,.0f} documents/hour"
    print(line)
    if args.out:
        from clara.fileio import atomic_write_json

        atomic_write_json(args.out, res)
    if args.png:
        plot_curve(points, (a, b), args.target, args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
