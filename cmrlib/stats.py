"""The statistics of the study in one place: bootstrap intervals over groups (patients), the hierarchical bootstrap
over seeds and patients, paired comparisons with their tests against 0 and against an equivalence margin, and the
multiple-comparison correction across the comparisons of one table (``docs/protocol.md#statistics``).

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


def percentile_bounds(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap draws; NaN bounds when there are none."""
    alpha = (1 - level) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha]) if len(draws) else (np.nan, np.nan)
    return float(low), float(high)


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
    method = f"percentile bootstrap over {n_groups} groups, {n_boot} draws" if groups is not None else "bootstrap"
    out = []
    for k in range(values.shape[1]):
        b = boot[:, k]
        out.append(Interval(float(estimate[k]), *percentile_bounds(b[~np.isnan(b)], level), level, n_groups, method))
    return out


def bootstrap_statistic(statistic: Callable[[np.ndarray], float], groups: np.ndarray, *, n_boot: int = 1000,
                        level: float = 0.95, seed: int = 0, strata: np.ndarray | None = None) -> Interval:
    """Any statistic of a set of slices (``statistic(rows) -> float``, rows indexing the slices) with a percentile
    bootstrap interval that resamples whole ``groups`` (patients) with replacement, separately within each stratum
    (for example members and non-members, so every draw keeps both classes). Draws giving NaN are dropped."""
    estimate, boot = bootstrap_draws(lambda seeds, rows: statistic(rows), groups, strata=strata, n_boot=n_boot, seed=seed)
    strata = np.zeros(len(groups), dtype=int) if strata is None else np.asarray(strata)
    n_groups = len(set(zip(strata.tolist(), np.asarray(groups).tolist())))
    return Interval(estimate, *percentile_bounds(boot, level), level, n_groups, f"percentile bootstrap over {n_groups} groups, {n_boot} draws")


def bootstrap_two_sample(statistic: Callable[[np.ndarray, np.ndarray], float], groups_a: np.ndarray, groups_b: np.ndarray,
                         *, n_boot: int = 200, level: float = 0.95, seed: int = 0) -> Interval:
    """A statistic of two sets (``statistic(rows_a, rows_b)``, for example FID between real and generated features)
    with a percentile bootstrap interval that resamples whole groups of each set (patients; one group per sample for
    generated images). Resampling with replacement repeats samples, which biases a distance between sets upwards
    (FID by far more than its own sampling error), so the draws are first shifted by their mean bias
    (mean of the draws minus the estimate): a bias-corrected percentile interval."""
    ga, gb = np.asarray(groups_a), np.asarray(groups_b)
    members = [[np.flatnonzero(g == k) for k in np.unique(g)] for g in (ga, gb)]
    rng = np.random.default_rng(seed)
    estimate = float(statistic(np.arange(len(ga)), np.arange(len(gb))))
    draws = []
    for _ in range(n_boot):
        rows = [np.concatenate([m[j] for j in rng.integers(0, len(m), len(m))]) for m in members]
        draws.append(statistic(*rows))
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    low, high = percentile_bounds(draws - (draws.mean() - estimate) if len(draws) else draws, level)
    n = f"{len(members[0])} and {len(members[1])} groups"
    return Interval(estimate, low, high, level, len(members[0]), f"bias-corrected percentile bootstrap over {n}, {n_boot} draws")


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


# -- paired comparisons between arms ----------------------------------------------------------------------------------
def bootstrap_draws(statistic: Callable[[np.ndarray, np.ndarray], float], groups: np.ndarray, *, n_seeds: int = 1,
                    strata: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0) -> tuple[float, np.ndarray]:
    """The hierarchical bootstrap of ``statistic(seeds, rows)`` (seeds: indices of training seeds, rows: indices of
    units): each draw resamples the ``n_seeds`` seeds with replacement, then whole ``groups`` (patients) with
    replacement, separately within each stratum (for example members and non-members), and keeps all rows of a drawn
    group. Returns the estimate on everything and the draws (NaN draws dropped)."""
    groups = np.asarray(groups)
    strata = np.zeros(len(groups), dtype=int) if strata is None else np.asarray(strata)
    if len(strata) != len(groups):
        raise ValueError(f"{len(strata)} strata labels for {len(groups)} group labels")
    rows_of: dict = {}
    for i, key in enumerate(zip(strata.tolist(), groups.tolist())):
        rows_of.setdefault(key, []).append(i)
    by_stratum: dict = {}
    for (stratum, _), rows in rows_of.items():
        by_stratum.setdefault(stratum, []).append(np.asarray(rows))
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for b in range(n_boot):
        seeds = rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else np.zeros(1, dtype=int)  # one seed: no draw
        rows = [members[j] for members in by_stratum.values() for j in rng.integers(0, len(members), len(members))]
        draws[b] = statistic(seeds, np.concatenate(rows))
    return float(statistic(np.arange(n_seeds), np.arange(len(groups)))), draws[~np.isnan(draws)]


def seeded_mean(values: np.ndarray) -> Callable[[np.ndarray, np.ndarray], float]:
    """The statistic of :func:`bootstrap_draws` for ``values`` (seeds, units): the mean over the drawn seeds of the
    NaN-ignoring mean over the drawn units."""
    values = np.asarray(values, dtype=np.float64)

    def statistic(seeds: np.ndarray, rows: np.ndarray) -> float:
        part = values[np.ix_(seeds, rows)]
        ok = ~np.isnan(part)
        counts = ok.sum(1)
        if not counts.all():
            return float("nan")
        return float((np.where(ok, part, 0.0).sum(1) / counts).mean())

    return statistic


@dataclass(frozen=True)
class Comparison:
    """A difference between two arms on the same units (and seeds), oriented so that positive favours the first,
    with its percentile interval and the bootstrap tests against 0 and against the equivalence ``margin``:

    - ``p_difference``: two-sided, H0 difference = 0;
    - ``p_equivalence``: two one-sided tests (TOST), H0 |difference| >= margin;
    - ``p_noninferiority``: H0 difference <= -margin (the first is worse by the margin or more);
    - ``p_inferiority``: H0 difference >= -margin (the first is not worse by more than the margin).

    A bootstrap p-value is the share of draws on the null's side, ``(count + 1) / (draws + 1)``."""

    estimate: float
    low: float
    high: float
    level: float
    margin: float
    p_difference: float
    p_equivalence: float
    p_noninferiority: float
    p_inferiority: float
    n_draws: int

    def as_dict(self) -> dict:
        return {"difference": self.estimate, "low": self.low, "high": self.high, "level": self.level, "margin": self.margin,
                "p_difference": self.p_difference, "p_equivalence": self.p_equivalence,
                "p_noninferiority": self.p_noninferiority, "p_inferiority": self.p_inferiority, "n_draws": self.n_draws}


def compare(estimate: float, draws: np.ndarray, margin: float, level: float = 0.95) -> Comparison:
    """The :class:`Comparison` of a difference from its bootstrap draws (:func:`bootstrap_draws`)."""
    draws = np.asarray(draws, dtype=np.float64)
    n = len(draws)
    if n == 0 or not np.isfinite(estimate):
        nan = float("nan")
        return Comparison(float(estimate), nan, nan, level, margin, nan, nan, nan, nan, n)
    share = lambda hits: float((np.count_nonzero(hits) + 1) / (n + 1))
    return Comparison(float(estimate), *percentile_bounds(draws, level), level, margin,
                      p_difference=min(1.0, 2 * min(share(draws <= 0), share(draws >= 0))),
                      p_equivalence=max(share(draws <= -margin), share(draws >= margin)),
                      p_noninferiority=share(draws <= -margin), p_inferiority=share(draws >= -margin), n_draws=n)


__all__ = ["Interval", "Comparison", "percentile_bounds", "bootstrap_mean", "bootstrap_statistic", "bootstrap_two_sample", "bootstrap_draws", "seeded_mean", "compare",
           "holm", "mean_and_spread"]
