"""Intervals shared by the evaluation notebooks: the percentile bootstrap over groups (patients).

Slices of one patient are not independent, so intervals resample *patients* with replacement and keep all their
slices (the cluster bootstrap); a statistic that is a mean of per-slice values is then the mean over the drawn
slices, with each patient counted as often as it was drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    level: float
    n_groups: int
    method: str

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level,
                "n_groups": self.n_groups, "interval": self.method}


def bootstrap_mean(values: np.ndarray, groups: np.ndarray | None = None, *, n_boot: int = 1000, level: float = 0.95,
                   seed: int = 0) -> list[Interval]:
    """Mean of ``values`` ((N,) or (N, K): K statistics at once) over slices, ignoring NaN, with a percentile
    bootstrap interval that resamples ``groups`` (one label per slice, e.g. the patient; None: each slice alone).

    Per group the sums and counts of non-NaN values are formed once; a bootstrap draw is a vector of group counts
    (multinomial), and its mean is ``sum(count_g * sum_g) / sum(count_g * n_g)``. Infinite values (PSNR of identical
    images) propagate to the estimate. Returns one :class:`Interval` per column.
    """
    values = np.asarray(values, dtype=np.float64)
    flat = values.ndim == 1
    values = values[:, None] if flat else values
    groups = np.arange(len(values)) if groups is None else np.asarray(groups)
    if len(groups) != len(values):
        raise ValueError(f"{len(groups)} group labels for {len(values)} values")
    _, index = np.unique(groups, return_inverse=True)
    n_groups = int(index.max()) + 1 if len(index) else 0
    ok = ~np.isnan(values)
    sums = np.zeros((n_groups, values.shape[1]))
    counts = np.zeros((n_groups, values.shape[1]))
    np.add.at(sums, index, np.where(ok, values, 0.0))
    np.add.at(counts, index, ok)
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = sums.sum(0) / counts.sum(0)
        rng = np.random.default_rng(seed)
        draws = rng.multinomial(n_groups, np.full(n_groups, 1 / n_groups), size=n_boot) if n_groups else np.zeros((0, 0))
        boot = (draws @ sums) / (draws @ counts)  # (n_boot, K)
    alpha = (1 - level) / 2
    method = f"percentile bootstrap over {n_groups} groups, {n_boot} draws" if groups is not None else "bootstrap"
    out = []
    for k in range(values.shape[1]):
        b = boot[:, k]
        b = b[~np.isnan(b)]
        low, high = (np.quantile(b, [alpha, 1 - alpha]) if len(b) else (np.nan, np.nan))
        out.append(Interval(float(estimate[k]), float(low), float(high), level, n_groups, method))
    return out


__all__ = ["Interval", "bootstrap_mean"]
