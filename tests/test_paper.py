"""The paper module: the trade-off and budget tables, numbers that come from the metrics, a manuscript that quotes only them."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from cmrlib import claims, paper, stats
from cmrlib.params import load
from cmrlib.paths import RunPaths

from conftest import REPO
from test_claims import auc_units, dice_units


def fake_results(mask_dice: dict, utility: dict, mia: dict, cross: bool = True) -> dict:
    """Metrics files in the schema the axis notebooks write; each value is (estimate, low, high)."""
    fidelity = {"counts": {"train_slices": 40, "test_slices": 20, "test_patients": 4},
                "metrics": [{"set": a, "metric": "dice_mean", "estimate": e, "low": lo, "high": hi} for a, (e, lo, hi) in mask_dice.items()]
                + [{"set": a, "metric": "fid", "estimate": 1.0 + i, "low": None, "high": None} for i, a in enumerate(mask_dice)],
                "quality_against_training_step": [{"arm": a, "step": s, "dice_mean": 0.1 * s / 4, "fid_seg": 10 / s}
                                                  for a in mask_dice for s in (2, 4, 8)]}
    summary = []
    for arm, (e, lo, hi) in utility.items():
        regime = "real" if arm == "none" else "real+synthetic"
        for eval_set, shift in (("test", 0.0), ("cross_C", -0.2))[: 2 if cross else 1]:
            summary.append({"regime": regime, "arm": arm, "n_real_patients": 2, "eval_set": eval_set, "dice_mean": e + shift,
                            "dice_mean_low": lo + shift, "dice_mean_high": hi + shift,
                            "delta_vs_real": None if arm == "none" else e - utility["none"][0], "p_holm": 0.5})
    privacy = {"summary": [{"arm": a, "mia_auc": e, "mia_auc_low": lo, "mia_auc_high": hi, "copy_share": 0.0,
                            "copy_share_low": 0.0, "copy_share_high": 0.01, "dcr_train_share": 0.5, "dcr_train_share_low": 0.4,
                            "dcr_train_share_high": 0.6, "released_auc": e, "released_auc_low": lo, "released_auc_high": hi, "reference_mia_auc": e + 0.2 if cross else None, "mia_tpr_at_1fpr": 0.02}
                           for a, (e, lo, hi) in mia.items()],
               "settings": {"protocols": {"reference": {"applicable": cross}}}}
    return {"fidelity": fidelity, "utility": {"summary": summary}, "privacy": privacy}


RESULTS_ARGS = dict(
    mask_dice={"ddpm": (0.80, 0.75, 0.85), "ldm": (0.60, 0.55, 0.65), "fm": (0.78, 0.72, 0.83)},
    utility={"none": (0.70, 0.65, 0.75), "ddpm": (0.74, 0.70, 0.78), "ldm": (0.60, 0.55, 0.64), "fm": (0.85, 0.81, 0.89)},
    mia={"ddpm": (0.70, 0.64, 0.76), "ldm": (0.52, 0.47, 0.57), "fm": (0.50, 0.45, 0.55)},
)
RESULTS = fake_results(**RESULTS_ARGS)


EIGHT_STEPS = [f"generators.{arm}.train.steps=8" for arm in ("ddpm", "ldm", "fm")]


def verdicts_of(params) -> pd.DataFrame:
    """Verdicts at three fractions of the budget from per-unit values (:mod:`cmrlib.claims`)."""
    units = pd.concat([dice_units(metric, {"ddpm": 0.05, "ldm": 0.0, "fm": 0.0}, noise=0.01, fraction=f)
                       for metric in ("mask_dice", "utility_dice") for f in (0.25, 0.5, 1.0)])
    units = pd.concat([units, auc_units({"ddpm": 0.0, "ldm": 1.0, "fm": 0.5})])
    return claims.verdicts(params, claims.comparisons(params, units))


def manuscript(tmp_path, results, params):
    """numbers, and the text of paper.md without its inlined tables and file links."""
    table = paper.trade_off(results)
    by_budget = verdicts_of(params)
    verdicts = claims.at_fraction(by_budget)
    numbers = paper.numbers(params, results, table, verdicts, by_budget)
    folder = tmp_path / "paper"
    (folder / "tables").mkdir(parents=True)
    for name in ("trade_off", "claims", "mask_sources", "conditioning_ablation"):
        (folder / "tables" / f"{name}.md").write_text("| x |\n|---|\n| 1 |\n")
    paper.save_numbers(numbers, folder)
    paper.write_manuscript(paper.blocks(params, numbers, verdicts), folder)
    text = (folder / "paper.md").read_text()
    text = re.sub(r"\|.*\|", "", text)  # inlined tables are generated files, not text
    text = re.sub(r"\([^)]*\.(png|csv)\)", "", text)  # file links
    return numbers, text, folder


def unlisted_numbers(text: str, numbers: dict[str, str]) -> list[str]:
    """The numbers of a manuscript's text that its numbers file does not hold (the data's credit line, a citation,
    left out)."""
    def numbers_in(s: str) -> set[str]:
        return set(re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])", s))

    listed = set().union(*(numbers_in(v) for v in numbers.values()))  # "94%", "... 0.815 at step 800" hold numbers too
    allowed = {"0", "1", "2", "3", "-1"}  # stage 1 / stage 2, the [-1, 1] range: fixed by the method, not results
    return sorted(numbers_in(text.replace(numbers.get("data_credit", "\0"), "")) - listed - allowed)


@pytest.mark.parametrize("folder", ["paper", "paper/acdc"])
def test_a_published_paper_quotes_only_numbers_of_its_numbers_file(folder):
    folder = REPO / folder
    if not (folder / "paper.md").is_file():
        pytest.skip(f"{folder} holds no published paper")
    numbers = json.loads((folder / "numbers.json").read_text())
    text = re.sub(r"\|.*\|", "", (folder / "paper.md").read_text())  # inlined tables are generated files
    text = re.sub(r"\([^)]*\.(png|csv)\)", "", text)
    assert not unlisted_numbers(text, numbers)


def test_every_number_of_the_manuscript_is_in_the_numbers_file(tmp_path):
    numbers, text, folder = manuscript(tmp_path, RESULTS, load(REPO / "params/default.yaml", EIGHT_STEPS))
    missing = unlisted_numbers(text, numbers)
    assert not missing, f"numbers in paper.md not in numbers.json: {missing}"
    assert "0.800" in text and numbers["ddpm_mask_dice"] == "0.800"
    assert "*DDPM gives the best fidelity*: **confirmed**" in text and "confirmed at 25%" in text
    macros = (folder / "numbers.tex").read_text()
    assert "\\newcommand{\\numDdpmMaskDice}{0.800}" in macros
    assert json.loads((folder / "numbers.json").read_text()) == numbers
    tex = (folder / "main.tex").read_text()
    assert "\\input{tables/trade_off.tex}" in tex and "\\input{numbers.tex}" in tex
    assert "Cross-domain (the first cross-domain set, C)" in text and "not applicable" not in text


def test_a_real_data_paper_names_its_params_seeds_and_credits_the_data_under_every_figure(tmp_path):
    params = load(REPO / "params/default.yaml", EIGHT_STEPS)
    params = params.model_copy(update={"data": params.data.model_copy(update={"source": "acdc_h5"})})
    numbers, text, folder = manuscript(tmp_path, RESULTS, params)
    assert numbers["params_digest"] == params.digest() and numbers["generator_seeds"] == "0"
    assert numbers["utility_seeds"] == ", ".join(map(str, params.utility.seeds))
    credit = numbers["data_credit"]
    assert "ACDC" in credit and "CC BY-NC-SA 4.0" in credit
    captions = re.findall(r"\*Figure: (.*)\*", text)
    assert captions and all(c.endswith(credit + ".") for c in captions)
    missing = unlisted_numbers(text, numbers)
    assert not missing, f"numbers in paper.md not in numbers.json: {missing}"
    phantom, _, _ = manuscript(tmp_path / "phantom", RESULTS, load(REPO / "params/default.yaml", EIGHT_STEPS))
    assert "data_credit" not in phantom


def test_a_figure_carries_the_credit_line_once_when_one_is_set(tmp_path):
    import matplotlib.pyplot as plt

    from cmrlib import report
    from cmrlib.data import terms

    fig = plt.figure()
    report.set_figure_credit(terms.figure_credit(load(REPO / "params/default.yaml").data))
    report.save_figure(fig, tmp_path, "phantom")
    assert not fig.texts
    params = load(REPO / "params/default.yaml")
    report.set_figure_credit(terms.figure_credit(params.data.model_copy(update={"source": "acdc_h5"})))
    try:
        paths = report.save_figure(fig, tmp_path, "real") + report.save_figure(fig, tmp_path, "real_again")
    finally:
        report.set_figure_credit(None)
    assert [t.get_text() for t in fig.texts] == [terms.CREDITS["acdc"]]
    assert all(p.stat().st_size > 0 for p in paths)


def test_a_run_without_a_cross_domain_set_says_so_and_claims_nothing_about_vendor_shift(tmp_path):
    results = fake_results(**RESULTS_ARGS, cross=False)
    params = load(REPO / "params/default.yaml", EIGHT_STEPS + ["data.cross_domains=[]"])
    numbers, text, _ = manuscript(tmp_path, results, params)
    assert numbers["n_cross_sets"] == "0" and numbers["reference_protocol"] == "not applicable"
    assert "reference protocol (non-members from another vendor) and its domain-shift control are not applicable" in text
    assert "No cross-domain set" in text and "vendor shift" not in text and "Cross-domain (first other" not in text
    assert "cross_dice" not in set(paper.trade_off(results).metric)


def test_budget_curves_use_fractions_of_each_budget():
    params = load(REPO / "params/default.yaml", EIGHT_STEPS)
    results = json.loads(json.dumps(RESULTS))
    results["privacy"]["against_training_step"] = [
        {"arm": a, "step": s, "mia_auc": auc, "mia_auc_low": auc - 0.02, "mia_auc_high": auc + 0.02}
        for a, base in (("ddpm", 0.5), ("ldm", 0.6), ("fm", 0.7)) for s in (2, 4, 8) for auc in [base + (0.3 - base) * (s == 8) * (a == "fm")]]
    curves = paper.budget_curves(results, params)
    assert sorted(curves.fraction.unique()) == [0.25, 0.5, 1.0] and "mia_auc_low" in curves
    fm = curves[curves.arm == "fm"].set_index("fraction")["mia_auc"]
    assert fm[1.0] == pytest.approx(0.3) and fm[0.25] == pytest.approx(0.7)


def test_holm_known_answer():
    assert np.allclose(stats.holm([0.01, 0.04, 0.03, np.nan, 0.5]), [0.04, 0.09, 0.09, np.nan, 0.5], equal_nan=True)


def test_bootstrap_statistic_matches_bootstrap_mean_and_keeps_strata():
    rng = np.random.default_rng(0)
    values = rng.normal(size=60)
    groups = np.repeat(np.arange(20), 3)
    a = stats.bootstrap_statistic(lambda rows: values[rows].mean(), groups, n_boot=2000, seed=1)
    b = stats.bootstrap_mean(values, groups, n_boot=2000, seed=1)[0]
    assert a.estimate == pytest.approx(b.estimate) and abs(a.low - b.low) < 0.08 and abs(a.high - b.high) < 0.08
    strata = (groups >= 10).astype(int)
    seen = []
    stats.bootstrap_statistic(lambda rows: seen.append(set(strata[rows])) or 0.0, groups, strata=strata, n_boot=50)
    assert all(s == {0, 1} for s in seen)


def test_missing_metrics_file_names_the_notebook(tmp_path):
    with pytest.raises(FileNotFoundError, match="30_fidelity"):
        paper.load_results(RunPaths(tmp_path))
