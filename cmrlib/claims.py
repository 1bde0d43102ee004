"""The reference study's claims, decided by paired differences between arms (``docs/protocol.md#verdicts``).

Every arm is scored on the same units: the same test slices (mask faithfulness), the same test patients (utility; the
segmenter seeds are paired by their label, each arm's run with its own initial weights), the same member and
non-member slices (membership inference). So a claim is decided by the
difference between two arms on those units, bootstrapped hierarchically (seeds, then patients:
:func:`cmrlib.stats.bootstrap_draws`), not by whether two marginal intervals overlap.

The axis notebooks write their per-unit values to ``metrics/units/<part>.csv`` (:func:`save_units`; columns
:data:`UNIT_COLUMNS`): the final models at ``fraction`` 1 and every earlier kept checkpoint at its fraction of the
arm's step budget. This module reads them (:func:`load_units`) and, per fraction:

1. compares every ordered pair of arms on every metric of :data:`METRICS` (:func:`comparisons`): the difference
   oriented so that positive favours the first arm (a higher Dice; a membership AUC nearer 0.5), its interval, and the
   bootstrap p-values against 0, against the equivalence margin (``paper.margins``, two one-sided tests) and for
   non-inferiority; each kind of p-value is Holm-adjusted across the comparisons of the table (one fraction);
2. names each comparison's outcome: *equivalent* (the difference within the margin), else *better* or *worse* (the
   difference is not 0), else *unclear*;
3. decides each claim of :data:`CLAIMS` from its comparisons (:func:`judge`): confirmed / refuted / equivalent /
   inconclusive, with the reason;
4. decides the balance claim for every arm (:func:`balance`): an arm gives the best balance when it is not worse than
   any other arm by more than the margin on any axis (non-inferiority shown) and better than some arm on at least one.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np
import pandas as pd

from . import registry
from .metrics import privacy as mp
from .params import StudyParams
from .paths import RunPaths, atomic_path
from .seeds import seed_for
from .stats import bootstrap_draws, compare, format_interval, holm, seeded_mean

UNIT_COLUMNS = ["metric", "arm", "fraction", "seed", "patient", "unit", "value", "label"]
VERDICTS = ("confirmed", "refuted", "equivalent", "inconclusive")


@dataclass(frozen=True)
class Metric:
    """A metric the claims compare arms on: its axis, what one unit is, and which way is better (``higher``, or
    ``chance``: an AUC nearer 0.5)."""

    key: str
    axis: str
    label: str
    unit: str
    better: str


METRICS = {
    "mask_dice": Metric("mask_dice", "fidelity", "mask faithfulness (mean foreground Dice)", "test slice (paired set)", "higher"),
    "utility_dice": Metric("utility_dice", "utility", "Dice, real + synthetic at the fewest real patients (in-domain test)",
                           "test patient and segmenter seed", "higher"),
    "mia_auc": Metric("mia_auc", "privacy", "membership AUC of the loss attack (white box), as its distance from 0.5",
                      "member or holdout slice", "chance"),
    "released_auc": Metric("released_auc", "privacy", "AUC of the attack on the released synthetic set, as its distance from 0.5",
                           "member or holdout patient", "chance"),
}
BALANCE_AXES = ("mask_dice", "utility_dice", "released_auc")  # privacy: the threat of releasing the synthetic set


@dataclass(frozen=True)
class Claim:
    """A headline claim of the reference study, as a comparison on one metric of :data:`METRICS`."""

    key: str
    text: str
    metric: str
    subject: str
    kind: str = "best"  # best: subject better than every other arm; below: subject worse than `other`
    other: str | None = None


CLAIMS = [
    Claim("fidelity_ddpm_best", "DDPM gives the best fidelity", "mask_dice", "ddpm"),
    Claim("utility_ddpm_best", "DDPM gives the best utility with limited data", "utility_dice", "ddpm"),
    Claim("privacy_ddpm_best", "DDPM gives the best privacy", "mia_auc", "ddpm"),
    Claim("privacy_fm_best", "FM shows the most promising privacy", "mia_auc", "fm"),
    Claim("utility_fm_below_ddpm", "FM gives (slightly) lower segmentation performance than DDPM", "utility_dice", "fm", "below", "ddpm"),
]


# -- units ------------------------------------------------------------------------------------------------------------
def units_frame(metric: str, arm: str, fraction: float, seed: int, patients, units, values, labels=None) -> pd.DataFrame:
    """One arm's per-unit values of ``metric`` at ``fraction`` of its budget, for one seed (the rows of a units file)."""
    values = np.asarray(values, dtype=np.float64)
    return pd.DataFrame({"metric": metric, "arm": arm, "fraction": round(float(fraction), 2), "seed": int(seed),
                         "patient": np.asarray(patients).astype(str), "unit": np.asarray(units).astype(str), "value": values,
                         "label": np.full(len(values), -1) if labels is None else np.asarray(labels).astype(int)})


def fraction(params: StudyParams, arm: str, step: int) -> float:
    """``step`` as a fraction of the arm's training budget, rounded as the budget tables print it."""
    return round(step / registry.get(arm).params(params).train.steps, 2)


def save_units(paths: RunPaths, part: str, frames: list[pd.DataFrame]) -> "Path":
    """Write ``metrics/units/<part>.csv`` (replacing it) from :func:`units_frame` rows."""
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=UNIT_COLUMNS)
    unknown = sorted(set(frame["metric"]) - set(METRICS))
    if unknown:
        raise ValueError(f"units of unknown metrics {unknown}: the claims compare {sorted(METRICS)}")
    path = paths.metrics / "units" / f"{part}.csv"
    with atomic_path(path) as tmp:
        frame[UNIT_COLUMNS].to_csv(tmp, index=False)
    return path


def load_units(paths: RunPaths) -> pd.DataFrame:
    """Every ``metrics/units/*.csv`` of the run in one frame (empty when the axis notebooks wrote none)."""
    files = sorted((paths.metrics / "units").glob("*.csv"))
    if not files:
        return pd.DataFrame(columns=UNIT_COLUMNS)
    frame = pd.concat([pd.read_csv(f, dtype={"patient": str, "unit": str}) for f in files], ignore_index=True)
    return frame


# -- comparisons ------------------------------------------------------------------------------------------------------
def _aligned(units: pd.DataFrame, arms: list[str]) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Per arm a (seeds, units) matrix over the seeds every arm has and the units every arm has at every one of those
    seeds, and those units' patient and label. A unit given twice for one arm and seed is an error."""
    twice = units.duplicated(["arm", "seed", "unit"])
    if twice.any():
        r = units[twice].iloc[0]
        raise ValueError(f"metrics/units: {r.metric} of {r.arm} at fraction {r.fraction}, seed {r.seed}, unit {r.unit} is "
                         "given twice; re-run the axis notebook that writes it")
    seeds = sorted(set.intersection(*[set(units.loc[units.arm == a, "seed"]) for a in arms]))
    wide = {a: units[(units.arm == a) & units.seed.isin(seeds)].pivot(index="seed", columns="unit", values="value").reindex(seeds)
            for a in arms}
    names = sorted(set.intersection(*[set(w.columns[w.notna().all(0)]) for w in wide.values()]))
    index = units.drop_duplicates("unit").set_index("unit").loc[names, ["patient", "label"]]
    return {a: w[names].to_numpy(dtype=np.float64) for a, w in wide.items()}, index


def _statistic(metric: Metric, a: np.ndarray, b: np.ndarray, labels: np.ndarray):
    """The oriented difference of arm ``a`` over arm ``b`` as a statistic of (seeds, rows)."""
    if metric.better == "higher":
        return seeded_mean(a - b)
    if metric.better == "chance":
        def distance(m: np.ndarray, seeds: np.ndarray, rows: np.ndarray) -> float:
            return float(np.mean([abs(mp.auc(m[s, rows], labels[rows]) - 0.5) for s in seeds]))
        return lambda seeds, rows: distance(b, seeds, rows) - distance(a, seeds, rows)
    raise ValueError(f"metric {metric.key}: unknown direction {metric.better!r}")


def margin_of(params: StudyParams, metric: str) -> float:
    return float(getattr(params.paper.margins, metric))


def comparisons(params: StudyParams, units: pd.DataFrame, arms=None) -> pd.DataFrame:
    """Every ordered pair of arms on every metric at every fraction: one row with the oriented difference (positive
    favours ``first``), its interval, the Holm-adjusted p-values and the ``outcome`` (module docstring)."""
    arms = registry.names() if arms is None else arms
    p = params.paper
    rows = []
    for (metric_key, frac), part in units.groupby(["metric", "fraction"], sort=True):
        metric = METRICS[metric_key]
        present = [a for a in arms if (part.arm == a).any()]
        if len(present) < 2:
            continue
        matrices, index = _aligned(part, present)
        if index.empty:
            continue  # no unit every arm has: no comparison (the verdicts say so)
        labels = index["label"].to_numpy()
        strata = labels if metric.better == "chance" else None
        drawn = {}  # one bootstrap per pair: its mirror's difference is the negative, draw by draw
        for first, second in permutations(present, 2):
            if (second, first) in drawn:
                estimate, draws = (-v for v in drawn[second, first])
            else:
                statistic = _statistic(metric, matrices[first], matrices[second], labels)
                estimate, draws = drawn[first, second] = bootstrap_draws(
                    statistic, index["patient"].to_numpy(), n_seeds=len(matrices[first]), strata=strata, n_boot=p.bootstrap,
                    seed=seed_for(params.seed, "claims", metric_key, str(frac), *sorted([first, second])))
            c = compare(estimate, draws, margin_of(params, metric_key), p.confidence)
            rows.append({"fraction": frac, "metric": metric_key, "first": first, "second": second, **c.as_dict(),
                         "n_seeds": len(matrices[first]), "n_patients": int(index["patient"].nunique()), "n_units": len(index)})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    out = []
    for _, t in table.groupby("fraction", sort=True):
        t = t.copy()
        unordered = [arms.index(r.first) < arms.index(r.second) for r in t.itertuples()]
        for col in ("p_difference", "p_equivalence"):  # the same hypothesis in both orders: adjusted once
            adjusted = pd.Series(holm(t.loc[unordered, col].to_numpy()), index=t.index[unordered])
            key = t.apply(lambda r: (r.metric, *sorted([r.first, r.second])), axis=1)
            lookup = dict(zip(key[unordered], adjusted))
            t[f"{col}_holm"] = [lookup[k] for k in key]
        for col in ("p_noninferiority", "p_inferiority"):
            t[f"{col}_holm"] = holm(t[col].to_numpy())
        t["outcome"] = [_outcome(r, p.alpha) for r in t.itertuples()]
        out.append(t)
    return pd.concat(out, ignore_index=True)


def _outcome(r, alpha: float) -> str:
    if r.p_equivalence_holm < alpha:
        return "equivalent"
    if r.p_difference_holm < alpha:
        return "better" if r.difference > 0 else "worse"
    return "unclear"


# -- verdicts ---------------------------------------------------------------------------------------------------------
def _pair(table: pd.DataFrame, metric: str, first: str, second: str) -> pd.Series | None:
    hit = table[(table.metric == metric) & (table["first"] == first) & (table["second"] == second)]
    return hit.iloc[0] if len(hit) else None


def _describe(r: pd.Series) -> str:
    return (f"{registry.label(r['first'])} vs {registry.label(r['second'])} {format_interval(r.difference, r.low, r.high)}, "
            f"p_Holm {r.p_difference_holm:.3g}: {r.outcome}")


def judge(claim: Claim, table: pd.DataFrame, arms=None) -> dict:
    """The verdict on one claim from the comparisons of one fraction (:func:`comparisons`)."""
    arms = registry.names() if arms is None else arms
    others = [claim.other] if claim.kind == "below" else [a for a in arms if a != claim.subject]
    pairs = [_pair(table, claim.metric, claim.subject, o) for o in others]
    base = {"key": claim.key, "claim": claim.text, "metric": claim.metric}
    missing = [o for o, r in zip(others, pairs) if r is None or not np.isfinite(r.low)]
    if missing:
        return {**base, "verdict": "inconclusive", "reason": f"no paired comparison with {', '.join(map(registry.label, missing))}"}
    outcomes = [r.outcome for r in pairs]
    if claim.kind == "below":
        verdict = {"worse": "confirmed", "better": "refuted", "equivalent": "equivalent"}.get(outcomes[0], "inconclusive")
    elif all(o == "better" for o in outcomes):
        verdict = "confirmed"
    elif "worse" in outcomes:
        verdict = "refuted"
    elif "equivalent" in outcomes and "unclear" not in outcomes:
        verdict = "equivalent"
    else:
        verdict = "inconclusive"
    return {**base, "verdict": verdict, "reason": "; ".join(_describe(r) for r in pairs)}


def balance(arm: str, table: pd.DataFrame, alpha: float, arms=None, axes=BALANCE_AXES) -> dict:
    """The balance claim for ``arm`` at one fraction: confirmed when, against every other arm on every axis, it is not
    worse by more than the margin (Holm-adjusted non-inferiority) and it is better than some arm on some axis;
    refuted when it is worse than some arm by more than the margin; equivalent when every comparison is; else
    inconclusive."""
    arms = registry.names() if arms is None else arms
    base = {"key": f"balance_{arm}", "claim": f"{registry.label(arm)} gives the best balance of fidelity, utility and privacy",
            "metric": " + ".join(axes)}
    pairs = [(m, o, _pair(table, m, arm, o)) for m in axes for o in arms if o != arm]
    missing = sorted({m for m, _, r in pairs if r is None or not np.isfinite(r.low)})
    if missing:
        return {**base, "verdict": "inconclusive", "reason": f"no paired comparisons on {', '.join(missing)}"}
    worse = [f"{registry.label(o)} on {m}" for m, o, r in pairs if r.p_inferiority_holm < alpha]
    not_shown = [f"{registry.label(o)} on {m}" for m, o, r in pairs if not r.p_noninferiority_holm < alpha]
    better = [f"{registry.label(o)} on {m}" for m, o, r in pairs if r.outcome == "better"]
    if worse:
        return {**base, "verdict": "refuted", "reason": "worse by more than the margin than " + ", ".join(worse)}
    if all(r.outcome == "equivalent" for _, _, r in pairs):
        return {**base, "verdict": "equivalent", "reason": "equivalent to every arm on every axis"}
    if not not_shown and better:
        return {**base, "verdict": "confirmed", "reason": "not worse than any arm beyond the margin; better than " + ", ".join(better)}
    reason = ("non-inferiority not shown against " + ", ".join(not_shown)) if not_shown else "better than no arm on any axis"
    return {**base, "verdict": "inconclusive", "reason": reason}


def verdicts(params: StudyParams, table: pd.DataFrame, claims=CLAIMS, arms=None) -> pd.DataFrame:
    """Every claim and every arm's balance claim at every fraction of ``table``; columns fraction, key, claim, metric,
    verdict, reason."""
    arms = registry.names() if arms is None else arms
    columns = ["fraction", "key", "claim", "metric", "verdict", "reason"]
    if table.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for frac, t in table.groupby("fraction", sort=True):
        present = [a for a in arms if (t["first"] == a).any()]
        for claim in claims:
            if claim.subject in present and (claim.other is None or claim.other in present):
                rows.append({"fraction": frac, **judge(claim, t, present)})
        rows += [{"fraction": frac, **balance(arm, t, params.paper.alpha, present)} for arm in present]
    return pd.DataFrame(rows, columns=columns)


def at_fraction(verdicts_table: pd.DataFrame, fraction_of_budget: float = 1.0) -> pd.DataFrame:
    """The verdicts of one fraction of the budget (default: the whole budget), without the fraction column."""
    part = verdicts_table[np.isclose(verdicts_table["fraction"].astype(float), fraction_of_budget)]
    return part.drop(columns="fraction").reset_index(drop=True)


def comparisons_view(table: pd.DataFrame) -> pd.DataFrame:
    """The comparisons as the paper prints them: difference with interval, margin, Holm-adjusted p-values, outcome."""
    if table.empty:
        return table
    view = table[["fraction", "metric", "first", "second"]].copy()
    view["difference"] = [format_interval(r.difference, r.low, r.high) for r in table.itertuples()]
    for col in ("margin", "p_difference_holm", "p_equivalence_holm", "p_noninferiority_holm", "p_inferiority_holm"):
        view[col] = table[col].map(lambda v: f"{v:.3g}")
    return view.assign(outcome=table.outcome, n_seeds=table.n_seeds, n_patients=table.n_patients)


__all__ = ["UNIT_COLUMNS", "VERDICTS", "METRICS", "BALANCE_AXES", "Metric", "Claim", "CLAIMS", "units_frame", "fraction",
           "save_units", "load_units", "comparisons", "judge", "balance", "verdicts", "margin_of", "at_fraction", "comparisons_view"]
