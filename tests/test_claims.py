"""Claims decided by paired differences: known answers for the comparisons, Holm, the verdicts and the balance claim."""

import numpy as np
import pandas as pd
import pytest

from cmrlib import claims, stats
from cmrlib.params import StudyParams

ARMS = ["ddpm", "ldm", "fm"]


def params(**paper) -> StudyParams:
    return StudyParams.model_validate({"run_name": "t", "paper": {"bootstrap": 400, **paper}})


def dice_units(metric: str, shifts: dict[str, float], noise: float, n_patients: int = 20, per_patient: int = 4,
               seeds=(0,), fraction: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """Per-unit values: a shared per-unit base plus each arm's shift plus independent noise of scale ``noise``."""
    rng = np.random.default_rng(seed)
    n = n_patients * per_patient
    patients = np.repeat([f"p{i:02d}" for i in range(n_patients)], per_patient)
    frames = []
    for s in seeds:
        base = rng.uniform(0.6, 0.9, n)
        for arm, shift in shifts.items():
            values = base + shift + rng.normal(0, noise, n)
            frames.append(claims.units_frame(metric, arm, fraction, s, patients, np.arange(n), values))
    return pd.concat(frames, ignore_index=True)


def auc_units(separation: dict[str, float], n_patients: int = 12, per_patient: int = 6, seed: int = 0,
              metric: str = "mia_auc") -> pd.DataFrame:
    """Attack scores of members (label 1) and non-members: members shifted by each arm's separation."""
    rng = np.random.default_rng(seed)
    n = 2 * n_patients * per_patient
    patients = np.repeat([f"p{i:02d}" for i in range(2 * n_patients)], per_patient)
    labels = (np.arange(n) < n // 2).astype(int)
    noise = rng.normal(0, 1, n)  # shared: arms of equal separation score exactly alike
    frames = [claims.units_frame(metric, arm, 1.0, 0, patients, np.arange(n), noise + sep * labels, labels)
              for arm, sep in separation.items()]
    return pd.concat(frames, ignore_index=True)


def outcome(table, metric, first, second):
    r = table[(table.metric == metric) & (table["first"] == first) & (table["second"] == second)]
    assert len(r) == 1
    return r.iloc[0]


def test_one_arm_better_by_far_two_equal_within_the_margin():
    units = dice_units("mask_dice", {"ddpm": 0.10, "ldm": 0.0, "fm": 0.0}, noise=0.002)
    table = claims.comparisons(params(), units, ARMS)
    assert outcome(table, "mask_dice", "ddpm", "ldm").outcome == "better"
    assert outcome(table, "mask_dice", "ldm", "ddpm").outcome == "worse"
    assert outcome(table, "mask_dice", "ldm", "fm").outcome == "equivalent"
    r = outcome(table, "mask_dice", "ddpm", "fm")
    assert r.difference == pytest.approx(0.10, abs=0.005) and r.low > 0.09
    verdicts = claims.verdicts(params(), table, arms=ARMS).set_index("key")
    assert verdicts.loc["fidelity_ddpm_best", "verdict"] == "confirmed"


def test_noise_only_is_inconclusive_and_equal_arms_are_equivalent():
    noisy = claims.comparisons(params(), dice_units("utility_dice", {a: 0.0 for a in ARMS}, noise=0.3), ARMS)
    assert set(noisy.outcome) == {"unclear"}
    v = claims.verdicts(params(), noisy, arms=ARMS).set_index("key")
    assert v.loc["utility_ddpm_best", "verdict"] == "inconclusive"
    assert v.loc["utility_fm_below_ddpm", "verdict"] == "inconclusive"
    equal = claims.comparisons(params(), dice_units("utility_dice", {a: 0.0 for a in ARMS}, noise=0.001), ARMS)
    v = claims.verdicts(params(), equal, arms=ARMS).set_index("key")
    assert v.loc["utility_ddpm_best", "verdict"] == "equivalent"
    assert v.loc["utility_fm_below_ddpm", "verdict"] == "equivalent"


def test_a_claim_against_the_data_is_refuted():
    table = claims.comparisons(params(), dice_units("utility_dice", {"ddpm": 0.0, "ldm": -0.2, "fm": 0.1}, noise=0.01), ARMS)
    v = claims.verdicts(params(), table, arms=ARMS).set_index("key")
    assert v.loc["utility_ddpm_best", "verdict"] == "refuted"
    assert v.loc["utility_fm_below_ddpm", "verdict"] == "refuted"


def test_auc_is_judged_by_its_distance_from_chance():
    # LDM's attack separates members perfectly; DDPM's is at chance; FM's AUC is *below* chance by as much as
    # LDM's is above: equally far from 0.5, so not better privacy than LDM
    units = auc_units({"ddpm": 0.0, "ldm": 3.0, "fm": -3.0})
    table = claims.comparisons(params(), units, ARMS)
    assert outcome(table, "mia_auc", "ddpm", "ldm").outcome == "better"
    assert outcome(table, "mia_auc", "ddpm", "fm").outcome == "better"
    assert outcome(table, "mia_auc", "fm", "ldm").outcome in {"equivalent", "unclear"}
    v = claims.verdicts(params(), table, arms=ARMS).set_index("key")
    assert v.loc["privacy_ddpm_best", "verdict"] == "confirmed"
    assert v.loc["privacy_fm_best", "verdict"] == "refuted"


def test_balance_needs_non_inferiority_on_every_axis_and_one_win():
    units = pd.concat([dice_units("mask_dice", {"ddpm": 0.1, "ldm": 0.0, "fm": 0.0}, noise=0.002, seed=1),
                       dice_units("utility_dice", {"ddpm": 0.0, "ldm": 0.0, "fm": 0.0}, noise=0.002, seed=2),
                       auc_units({"ddpm": 0.0, "ldm": 0.0, "fm": 0.0}, metric="released_auc")])
    table = claims.comparisons(params(), units, ARMS)
    v = claims.verdicts(params(), table, arms=ARMS).set_index("key")
    assert v.loc["balance_ddpm", "verdict"] == "confirmed", v.loc["balance_ddpm", "reason"]
    assert v.loc["balance_ldm", "verdict"] == "refuted"  # worse than DDPM on mask faithfulness by more than the margin
    # a privacy failure beyond the margin (the attack on the released set) refutes DDPM's balance
    units = pd.concat([units[units.metric != "released_auc"], auc_units({"ddpm": 3.0, "ldm": 0.0, "fm": 0.0}, metric="released_auc")])
    v = claims.verdicts(params(), claims.comparisons(params(), units, ARMS), arms=ARMS).set_index("key")
    assert v.loc["balance_ddpm", "verdict"] == "refuted"


def test_holm_is_applied_across_the_table():
    # one small true difference among noise: raw p small, Holm multiplies it by the family size
    units = dice_units("mask_dice", {"ddpm": 0.02, "ldm": 0.0, "fm": 0.0}, noise=0.03, n_patients=30)
    table = claims.comparisons(params(), units, ARMS)
    unordered = table[[ARMS.index(a) < ARMS.index(b) for a, b in zip(table["first"], table["second"])]]
    assert np.allclose(np.sort(unordered.p_difference_holm), np.sort(stats.holm(unordered.p_difference)))
    r, back = outcome(table, "mask_dice", "ddpm", "ldm"), outcome(table, "mask_dice", "ldm", "ddpm")
    assert r.p_difference_holm == back.p_difference_holm and r.difference == pytest.approx(-back.difference)


def test_seeds_are_resampled_and_each_fraction_is_its_own_table():
    units = pd.concat([dice_units("utility_dice", {"ddpm": 0.05, "ldm": 0.0, "fm": 0.0}, noise=0.01, seeds=(0, 1, 2)),
                       dice_units("utility_dice", {"ddpm": 0.0, "ldm": 0.0, "fm": 0.05}, noise=0.01, fraction=0.5)])
    table = claims.comparisons(params(), units, ARMS)
    assert set(table.fraction) == {0.5, 1.0}
    assert set(table.loc[table.fraction == 1.0, "n_seeds"]) == {3}
    v = claims.verdicts(params(), table, arms=ARMS)
    by = v[v.key == "utility_ddpm_best"].set_index("fraction")["verdict"]
    assert by[1.0] == "confirmed" and by[0.5] == "refuted"


def test_bootstrap_draws_with_one_seed_matches_the_patient_bootstrap():
    rng = np.random.default_rng(0)
    values = rng.normal(size=40)
    groups = np.repeat(np.arange(10), 4)
    estimate, draws = stats.bootstrap_draws(stats.seeded_mean(values[None]), groups, n_boot=300, seed=1)
    ref = stats.bootstrap_mean(values, groups, n_boot=300, seed=1)[0]
    assert estimate == pytest.approx(values.mean())
    assert np.quantile(draws, 0.025) == pytest.approx(ref.low, abs=0.1) and np.quantile(draws, 0.975) == pytest.approx(ref.high, abs=0.1)


def test_compare_known_answers():
    c = stats.compare(0.5, np.full(99, 0.5), margin=0.1)
    assert c.p_difference == pytest.approx(2 / 100) and c.p_equivalence == pytest.approx(1.0)
    c = stats.compare(0.0, np.linspace(-0.01, 0.01, 99), margin=0.1)
    assert c.p_equivalence == pytest.approx(1 / 100) and c.p_difference == 1.0
    assert c.p_noninferiority == pytest.approx(1 / 100) and c.p_inferiority == 1.0


def test_the_smoke_run_decides_every_claim_from_two_seeds_of_each_model(smoke_run):
    import json

    from cmrlib.paths import RunPaths

    _, folder, _ = smoke_run
    units = claims.load_units(RunPaths(folder))
    full = units[units.fraction == 1.0]
    for metric in claims.METRICS:
        assert set(full.loc[full.metric == metric, "seed"]) == {0, 1}, metric  # generator seeds, or segmenter seeds
    assert set(units.fraction) > {1.0}  # earlier checkpoints too
    table = pd.read_csv(folder / "paper" / "tables" / "claims.csv")
    assert set(table.verdict) <= set(claims.VERDICTS)
    assert {f"balance_{a}" for a in ARMS} <= set(table.key) and {c.key for c in claims.CLAIMS} <= set(table.key)
    comparisons = pd.read_csv(folder / "paper" / "tables" / "claims_comparisons.csv")
    assert set(comparisons.n_seeds[comparisons.fraction == 1.0]) == {2}
    fid = {(r["set"], r["metric"]): r for r in json.loads((folder / "metrics" / "fidelity.json").read_text())["metrics"]}
    for key in (("ddpm", "fid"), ("ddpm", "kid"), ("real", "fid")):
        assert np.isfinite(fid[key]["low"]) and fid[key]["low"] <= fid[key]["high"], key
    models = pd.read_csv(folder / "tables" / "utility_models.csv")
    same = models[(models.regime == "real+synthetic") & (models.n_real_patients == 2)]
    assert set(same.generators_from) == {"same (2 patients)"} and set(same.generator_seed) == {0, 1}
