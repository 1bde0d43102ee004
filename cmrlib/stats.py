"""The statistics of the study in one place: bootstrap intervals over groups (patients), paired tests, and the
multiple-comparison correction across the comparisons the paper makes (``docs/protocol.md#statistics``).

Slices of one patient are not independent, so intervals resample *patients* with replacement and keep all their
slices (the cluster bootstrap); a statistic that is a mean of per-slice values is then the mean over the drawn
slices, with each patient counted as often as it was drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


def format_number(value: float | None, digits: int = 3) -> str:
    """A number as the tables print it: ``digits`` decimals, scientific notation for a non-zero value that would
    print as zero, ``n/a``
    for a missing one (None or NaN) and ``inf`` / ``-inf`` for an infinity."""
    if value is None or np.isnan(value):
        return "n/a"
    if np.isinf(value):
        return str(float(value))
    return f"{value:.{digits - 1}e}" if value != 0 and abs(value) < 10**-digits else f"{value:.{digits}f}"


def format_interval(estimate: float | None, low: float | None = None, high: float | None = None, digits: int = 3) -> str:
    """``estimate [low, high]`` (the one interval format of every table, card and text), or the estimate alone when
    the interval is missing or not finite, or ``n/a``."""
    text = format_number(estimate, digits)
    if estimate is None or not np.isfinite(estimate) or low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return text
    return f"{text} [{format_number(low, digits)}, {format_number(high, digits)}]"


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


def bootstrap_statistic(statistic: Callable[[np.ndarray], float], groups: np.ndarray, *, n_boot: int = 1000,
                        level: float = 0.95, seed: int = 0, strata: np.ndarray | None = None) -> Interval:
    """Any statistic of a set of slices (``statistic(rows) -> float``, rows indexing the slices) with a percentile
    bootstrap interval that resamples whole ``groups`` (patients) with replacement, separately within each stratum
    (for example members and non-members, so every draw keeps both classes). Draws giving NaN are dropped."""
    groups = np.asarray(groups)
    strata = np.zeros(len(groups), dtype=int) if strata is None else np.asarray(strata)
    if len(strata) != len(groups):
        raise ValueError(f"{len(strata)} strata labels for {len(groups)} group labels")
    rows_of = {}
    for i, key in enumerate(zip(strata.tolist(), groups.tolist())):
        rows_of.setdefault(key, []).append(i)
    by_stratum: dict = {}
    for (stratum, _), rows in rows_of.items():
        by_stratum.setdefault(stratum, []).append(np.asarray(rows))
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        rows = [members[j] for members in by_stratum.values() for j in rng.integers(0, len(members), len(members))]
        boot.append(statistic(np.concatenate(rows)))
    boot = np.asarray(boot, dtype=np.float64)
    boot = boot[~np.isnan(boot)]
    alpha = (1 - level) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha]) if len(boot) else (np.nan, np.nan)
    n_groups = len(rows_of)
    return Interval(float(statistic(np.arange(len(groups)))), float(low), float(high), level, n_groups,
                    f"percentile bootstrap over {n_groups} groups, {n_boot} draws")


def paired_wilcoxon(a: np.ndarray, b: np.ndarray) -> dict:
    """Two-sided Wilcoxon signed-rank test of paired values (for example per-patient Dice of a regime against
    real-only on the same patients); pairs with a NaN are dropped. Returns the median difference a - b, the number
    of pairs and the p-value (NaN with fewer than two non-zero differences)."""
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in shape: {a.shape} and {b.shape}")
    ok = ~(np.isnan(a) | np.isnan(b))
    diff = a[ok] - b[ok]
    p = float(wilcoxon(diff).pvalue) if np.count_nonzero(diff) >= 2 else float("nan")
    return {"median_difference": float(np.median(diff)) if len(diff) else float("nan"), "n_pairs": int(ok.sum()), "p_value": p}


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (family-wise error control across the comparisons); NaN stays NaN."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def mean_and_spread(values) -> dict:
    """Seeds aggregated: mean, sample standard deviation and count (spread NaN for one seed)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return {"mean": float(v.mean()) if len(v) else float("nan"), "std": float(v.std(ddof=1)) if len(v) > 1 else float("nan"), "n": int(len(v))}


__all__ = ["Interval", "bootstrap_mean", "bootstrap_statistic", "paired_wilcoxon", "holm", "mean_and_spread"]
