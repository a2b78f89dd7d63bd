"""Statistics of evaluation results."""

from __future__ import annotations

from typing import Sequence


def bootstrap_ci(values: Sequence[float], *, resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:  # fmt: skip
    """(mean, low, high): the mean of ``values`` and its percentile bootstrap interval.

    For paired comparisons pass the per-item differences: the interval then holds the items'
    pairing (each resample keeps an item's two scores together). Seeded, so a report reproduces.
    """
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    means = x[np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(x.mean()), float(low), float(high)
