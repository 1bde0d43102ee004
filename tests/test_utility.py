"""The utility axis: Dice and HD95 against hand-computed cases, per-patient aggregation, the training regimes (data
from the split only, no leak), a trained segmenter beating a constant one, determinism, and the summary on a tiny run."""

import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from cmrlib import generation, metrics, params as params_mod, segmenters, utility
from cmrlib.data import prepare
from cmrlib.generation import save_samples
from cmrlib.models import SegmentationModel, one_hot
from cmrlib.paths import RunPaths
from builders import tiny_params

LV, MYO, RV = 1, 2, 3


# -- metrics against hand-computed cases ---------------------------------------------------------------------------
def _square(size=20, top=5, left=5, side=4, label=LV):
    m = np.zeros((size, size), np.uint8)
    m[top : top + side, left : left + side] = label
    return m


def test_perfect_prediction_scores_dice_one_and_hd95_zero():
    m = _square()[None]
    np.testing.assert_array_equal(metrics.dice_per_structure(m, m), [[1.0, np.nan, np.nan]])
    d = metrics.surface_distances(m, m, spacing=1.5)
    np.testing.assert_array_equal(d["hd95"], [[0.0, np.nan, np.nan]])
    np.testing.assert_array_equal(d["asd"], [[0.0, np.nan, np.nan]])
    assert metrics.reference_protocol_dice(m, m) == pytest.approx([1.0])


def test_shift_by_known_pixels_gives_known_dice_hd95_and_asd():
    # a 4 x 4 square shifted by one column: overlap 12 of 16 + 16 pixels -> Dice 24 / 32
    target, pred = _square()[None], _square(left=6)[None]
    assert metrics.dice_per_structure(pred, target)[0, 0] == pytest.approx(0.75)
    # a one-pixel-wide line shifted by 4 columns: every surface point lies exactly 4 pixels from the other line
    line = np.zeros((1, 20, 20), np.uint8)
    line[0, 3:15, 5] = MYO
    moved = np.roll(line, 4, axis=2)
    d = metrics.surface_distances(moved, line, spacing=1.5)
    assert d["hd95"][0, 1] == pytest.approx(4 * 1.5) and d["asd"][0, 1] == pytest.approx(4 * 1.5)
    assert metrics.surface_distances(moved, line, spacing=(1.0, 2.0))["hd95"][0, 1] == pytest.approx(4 * 2.0)  # columns at 2 mm


def test_a_structure_missing_on_one_side_has_no_distance_and_is_counted():
    target = _square()[None]
    empty = np.zeros_like(target)
    for pred, ref in ((empty, target), (target, empty)):  # missed, and hallucinated
        assert metrics.dice_per_structure(pred, ref)[0, 0] == 0.0
        d = metrics.surface_distances(pred, ref, spacing=2.0)
        assert np.isnan(d["hd95"][0, 0]) and np.isnan(d["asd"][0, 0])  # nnU-Net's evaluation: scored by Dice alone
        np.testing.assert_array_equal(d["one_sided"], [[True, False, False]])
    # absent from both: undefined, NaN for Dice and the distances, and not one-sided
    assert np.isnan(metrics.dice_per_structure(empty, empty)).all()
    d = metrics.surface_distances(empty, empty)
    assert np.isnan(d["hd95"]).all() and not d["one_sided"].any()
    # the reference protocol includes background: an empty prediction still scores on the background class
    bg = 2 * (400 - 16) / (400 + 400 - 16)
    assert metrics.reference_protocol_dice(empty, target) == pytest.approx([(bg + 0.0) / 2])


def test_distances_in_3d_use_the_through_plane_spacing_and_the_slice_index():
    rv = _square(top=14, left=14, label=RV)
    lv = np.where(_square(label=LV) > 0, LV, rv)
    # LV on slices 0 and 1 of the reference, 1 and 2 of the prediction: one slice off through the plane
    target, pred = np.stack([lv, lv, rv]), np.stack([rv, lv, lv])
    meta = pd.DataFrame({"patient": "P", "phase": "ED", "slice_index": [0, 1, 2], "slice_spacing_mm": 10.0})
    _, volumes = utility.score_volumes(pred, target, meta, spacing=1.0)
    v = volumes.iloc[0]
    assert v["distances"] == "3D" and v["hd95_LV"] == pytest.approx(10.0) and v["hd95_RV"] == pytest.approx(0.0)
    assert v["asd_LV"] == pytest.approx(5.0)  # half the surface in place, half one slice (10 mm) away
    # a dropped unlabelled slice between them keeps its distance
    gap = metrics.volume_stack(pred[[0, 2]], np.array([3, 5]))
    assert gap.shape[0] == 3 and not gap[1].any()
    # without the through-plane spacing: per 2D slice, the one-sided slices counted
    _, flat = utility.score_volumes(pred, target, meta.drop(columns="slice_spacing_mm"), spacing=1.0)
    assert flat.iloc[0]["distances"] == "2D" and flat.iloc[0]["hd95_LV"] == pytest.approx(0.0)
    assert flat.iloc[0]["hd95_one_sided_LV"] == pytest.approx(2 / 3)


def test_volume_dice_sums_over_slices_before_the_ratio():
    target = np.stack([_square(), _square()])
    pred = np.stack([_square(), np.zeros((20, 20), np.uint8)])
    # 3D: 2 * 16 / (16 + 32); the mean of the slice Dice would be 0.5
    assert metrics.volume_dice(pred, target)[0] == pytest.approx(32 / 48)
    assert np.nanmean(metrics.dice_per_structure(pred, target)[:, 0]) == pytest.approx(0.5)
    assert np.isnan(metrics.volume_dice(pred, target)[1:]).all()


def test_per_patient_aggregation_stacks_volumes_and_averages_phases():
    full = _square(side=6, label=LV)
    full[14:18, 14:18] = RV
    no_lv = np.where(full == LV, 0, full)
    # patient P: ED perfect (2 slices), ES with LV missed on one of its 2 slices; patient Q: perfect (1 slice each)
    target = np.stack([full, full, full, full, full, full])
    pred = np.stack([full, full, full, no_lv, full, full])
    meta = pd.DataFrame({"patient": ["P", "P", "P", "P", "Q", "Q"], "phase": ["ED", "ED", "ES", "ES", "ED", "ES"],
                         "slice_index": [1, 0, 0, 1, 0, 0]})
    per_slice, volumes = utility.score_volumes(pred, target, meta, spacing=1.0)
    assert len(per_slice) == 6 and len(volumes) == 4
    es = volumes.set_index(["patient", "phase"]).loc[("P", "ES")]
    assert es["dice_LV"] == pytest.approx(2 * 36 / (36 + 72))  # one of two slices found
    assert es["dice_RV"] == pytest.approx(1.0) and np.isnan(es["dice_MYO"])
    assert es["dice_mean"] == pytest.approx((2 * 36 / 108 + 1) / 2)  # MYO absent from both: left out
    assert es["hd95_LV"] == pytest.approx(0.0) and es["hd95_one_sided_LV"] == pytest.approx(0.5)  # the missed slice: no distance
    patients = utility.per_patient(volumes).set_index("patient")
    assert patients.loc["P", "dice_LV"] == pytest.approx((1 + 2 * 36 / 108) / 2)  # mean of ED and ES
    assert patients.loc["Q", "dice_mean"] == pytest.approx(1.0)
    assert (patients["n_volumes"] == 2).all()


# -- the segmentation model's augmentation ---------------------------------------------------------------------------
def test_augmentation_is_reproducible_and_flips_only_keeps_the_old_config():
    assert "augment" not in SegmentationModel(widths=[8, 16, 32]).config  # checkpoints from before the option still load
    model = SegmentationModel(widths=[8, 16, 32], augment="monai")
    assert model.config["augment"] == "monai"
    x = torch.linspace(-1, 1, 4 * 32 * 32).reshape(4, 1, 32, 32)
    cond = one_hot(torch.from_numpy(np.stack([_square(32, 8, 8, 12)] * 4)))
    a = model.augmented(x, cond, torch.Generator().manual_seed(5))
    b = model.augmented(x, cond, torch.Generator().manual_seed(5))
    c = model.augmented(x, cond, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert torch.equal(a[1].sum(1), torch.ones(4, 32, 32))  # the label stays one-hot after rotation (border padding)
    with pytest.raises(ValueError, match="augment"):
        SegmentationModel(augment="mixup")


# -- the regimes on a tiny run -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 32-px phantom run with a fake 'ddpm' synthetic set (noise images on training masks)."""
    p = tiny_params("util", seed=2,
                    data={"n_test_patients": 2, "n_cross_patients": 2, "phantom": {"slices_per_volume": 5}},
                    utility={"segmenter": {"steps": 40}, "n_real_patients": [2, None]})
    paths = RunPaths(tmp_path_factory.mktemp("run"))
    slices = prepare(p, paths)
    splits = json.loads(paths.splits.read_text())
    train = slices.split("train")
    rng = np.random.default_rng(0)
    save_samples(paths, "ddpm", "synthetic", record={}, images=rng.uniform(-1, 1, train.images[:24].shape).astype(np.float32),
                 masks=train.masks[:24])
    return p, paths, slices, splits


def _hashes(images):
    return {hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images}


def test_plan_and_training_sets_use_exactly_the_split_patients(tiny_run):
    p, paths, slices, splits = tiny_run
    runs = utility.plan(p, splits, arms=("ddpm",))
    assert [r.name for r in runs] == ["real_none_n2_seed0", "real_none_n4_seed0", "synthetic_ddpm_n0_seed0",
                                      "real+synthetic_ddpm_n2_seed0", "real+synthetic_ddpm_n4_seed0"]
    held_out = _hashes(slices.images[slices.meta["split"].to_numpy() != "train"])  # test, holdout, cross-domain
    train_ids = splits["sets"]["train"]
    for run in runs:
        data = utility.training_set(p, paths, slices, splits, run)
        assert data.patients == train_ids[: run.n_real]
        real = data.images[: data.n_real]
        expected = slices.images[slices.meta["patient"].isin(train_ids[: run.n_real]).to_numpy()]
        assert _hashes(real) == _hashes(expected) and len(real) == len(expected)  # exactly those patients' slices
        assert not (_hashes(data.images) & held_out), f"{run.name} trains on a held-out image"
        assert data.n_synthetic == (0 if run.regime == "real" else 24)
    with pytest.raises(ValueError, match="n_real_patients"):
        utility.n_real_grid(p.model_copy(update={"utility": p.utility.model_copy(update={"n_real_patients": [9]})}), splits)


def test_a_trained_segmenter_beats_a_constant_prediction_and_the_same_seed_repeats(tiny_run, tmp_path):
    p, paths, slices, splits = tiny_run
    run = utility.Run("real", "none", 4, 0)
    model, result, _ = utility.train_run(p, paths, slices, splits, run)
    test = slices.split("test")
    pred = utility.segment(model, test.images)
    dice = np.nanmean(metrics.dice_per_structure(pred, test.masks))
    for label in range(4):  # every constant label map scores lower
        assert dice > np.nanmean(metrics.dice_per_structure(np.full_like(test.masks, label), test.masks)) + 0.1
    # the same run in another folder: identical losses and predictions
    again, result2, _ = utility.train_run(p, RunPaths(tmp_path), slices, splits, run)
    pd.testing.assert_series_equal(result.losses["loss"], result2.losses["loss"])
    np.testing.assert_array_equal(pred, utility.segment(again, test.images))
    # done: loads at once
    _, resumed, _ = utility.train_run(p, paths, slices, splits, run)
    assert resumed.resumed_from == p.utility.segmenter.steps


def test_runs_on_two_processes_give_the_numbers_of_one_process(tiny_run, tmp_path):
    """utility.workers = 2 (two single-threaded trainings at once) against the same runs one after the other, also on
    one thread: the same losses and per-patient scores."""
    p, _, slices, splits = tiny_run
    two = p.model_copy(update={"utility": p.utility.model_copy(update={"workers": 2})})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = utility.run_all(p, RunPaths(tmp_path / "one"), slices, splits, arms=())
    finally:
        torch.set_num_threads(threads)
    both = utility.run_all(two, RunPaths(tmp_path / "two"), slices, splits, arms=())
    assert list(both.losses) == ["real_none_n2_seed0", "real_none_n4_seed0"] == list(one.losses)
    for name in one.losses:
        pd.testing.assert_series_equal(one.losses[name]["loss"], both.losses[name]["loss"])
        np.testing.assert_array_equal(one.test_predictions[name], both.test_predictions[name])
    pd.testing.assert_frame_equal(one.patients, both.patients)


def test_run_all_summary_and_json(tiny_run):
    p, paths, slices, splits = tiny_run
    results = utility.run_all(p, paths, slices, splits, arms=("ddpm",))
    table = utility.summary(p, results)
    sets = utility.eval_sets(splits)
    assert sets[0] == "test" and len(sets) == 3  # cross_C, cross_D
    assert len(table) == 5 * len(sets)
    assert set(utility.SUMMARY_KEYS) <= set(table.columns)
    real = table[table.regime == "real"]
    assert real["delta_vs_real"].isna().all() and real["p_value"].isna().all() and (real["arm"] == "none").all()
    other = table[table.regime != "real"]
    assert other["delta_vs_real"].notna().all()
    assert (table.loc[table.regime == "synthetic", "baseline_n"] == 4).all()
    ok = table["p_value"].notna()
    assert (table.loc[ok, "p_holm"] >= table.loc[ok, "p_value"] - 1e-12).all()
    assert ((table["dice_mean_low"] <= table["dice_mean"] + 1e-9) & (table["dice_mean"] <= table["dice_mean_high"] + 1e-9)).all()
    # delta = regime minus real-only on the same patients, recomputed from the per-patient table
    pp = results.patients
    row = table[(table.regime == "real+synthetic") & (table.n_real_patients == 2) & (table.eval_set == "test")].iloc[0]
    a = pp[(pp.regime == "real+synthetic") & (pp.n_real_patients == 2) & (pp.eval_set == "test")].set_index("patient")["dice_mean"]
    b = pp[(pp.regime == "real") & (pp.n_real_patients == 2) & (pp.eval_set == "test")].set_index("patient")["dice_mean"]
    assert row["delta_vs_real"] == pytest.approx((a - b).mean())
    assert row["dice_mean"] == pytest.approx(a.mean()) and row["n_patients"] == len(a) == len(splits["sets"]["test"])
    path = utility.save(p, paths, results, table)
    record = json.loads(path.read_text())
    assert len(record["summary"]) == len(table) and set(utility.SUMMARY_KEYS) <= set(record["summary"][0])
    assert all(m["train_wall_time_s"] >= 0 for m in record["models"])
    assert (paths.tables / "utility_dice.csv").exists() and (paths.tables / "utility_delta.md").exists()
    # every run is chosen on the validation patients, and every table names the chosen step
    assert results.models["stopping"].str.startswith("best val").all() and set(results.validation) == set(results.models["run"])
    assert (results.models["chosen_step"] <= results.models["steps"]).all()
    assert table["chosen_steps"].map(len).eq(1).all()
    dice = pd.read_csv(paths.tables / "utility_dice.csv")
    assert "chosen_step" in dice.columns and record["segmenter"]["chosen_on"] == "val"
    examples = utility.examples(results, slices)
    assert len(examples) == 2 * 3 and examples[0]["dice"] >= examples[1]["dice"]


class FixedSegmenter(torch.nn.Module):
    """A "segmenter" that predicts the given label maps, whatever the images."""

    def __init__(self, labels: np.ndarray):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.labels = torch.from_numpy(labels)

    def predict(self, x):
        return self.labels


def test_validation_dice_is_one_for_a_perfect_segmenter_and_averages_patients(tiny_run):
    _, _, slices, _ = tiny_run
    val = segmenters.validation_set(slices)
    assert segmenters.validation_dice(FixedSegmenter(val.masks), val) == 1.0
    assert segmenters.validation_dice(FixedSegmenter(np.zeros_like(val.masks)), val) == 0.0
    first = val.meta["patient"] == val.meta["patient"].iloc[0]
    half = np.where(first.to_numpy()[:, None, None], val.masks, 0)  # right for one patient, empty for the others
    assert segmenters.validation_dice(FixedSegmenter(half), val) == pytest.approx(1 / val.meta["patient"].nunique())
    # the statistic the utility axis reports on the test patients, computed its way
    noisy = np.random.default_rng(0).integers(0, 4, val.masks.shape).astype(np.uint8)
    noisy = np.where(np.random.default_rng(1).random(val.masks.shape) < 0.7, val.masks, noisy)
    _, volumes = utility.score_volumes(noisy, val.masks, val.meta, 1.0)
    expected = utility.per_patient(volumes)["dice_mean"].mean()
    assert segmenters.validation_dice(FixedSegmenter(noisy), val) == pytest.approx(expected)
    no_val = slices.select(slices.meta["split"].to_numpy() != "val")
    assert segmenters.validation_set(no_val) is None


def test_the_segmenter_budget_axis_trains_each_fraction_with_its_own_schedule(tiny_run):
    p, paths, slices, splits = tiny_run
    p = p.model_copy(update={"utility": p.utility.model_copy(update={"segmenter_budgets": [0.5]})})
    table = utility.against_segmenter_budget(p, paths, slices, splits, arms=("ddpm",))
    assert table[["regime", "budget_fraction", "steps"]].values.tolist() == [
        ["real", 0.5, 20], ["real+synthetic", 0.5, 20], ["real", 1.0, 40], ["real+synthetic", 1.0, 40]]
    assert (table["chosen_step"] <= table["steps"]).all() and table["n_real_patients"].eq(2).all()
    assert table.loc[table.regime == "real", "delta_vs_real"].isna().all()
    assert table.loc[table.regime != "real", "delta_vs_real"].notna().all()
    half = pd.read_csv(paths.checkpoints / "utility" / "real_none_n2_seed0_budget0.5" / "loss.csv")
    assert half["step"].max() == 20 and half["lr"].iloc[-1] == pytest.approx(0.0, abs=1e-12)  # its own decay to 0
    run, whole = utility.Run("real", "none", 2, 0, budget=0.5), utility.Run("real", "none", 2, 0)
    cfg = utility.train_config(p, run, validates=True)
    assert cfg.warmup_steps == round(p.utility.segmenter.warmup_steps * 0.5)  # the warm-up scaled with the budget
    assert cfg.seed == utility.train_config(p, whole, validates=True).seed  # the same start as the whole budget
    assert cfg.val_every * (p.utility.segmenter.val_checks - 1) < cfg.steps <= cfg.val_every * p.utility.segmenter.val_checks
    real_only = p.model_copy(update={"utility": p.utility.model_copy(update={"regimes": ["real"]})})
    assert utility.against_segmenter_budget(real_only, paths, slices, splits, arms=("ddpm",))["regime"].eq("real").all()
    assert utility.against_training_step(real_only, paths, slices, splits, arms=("ddpm",)).empty


def test_every_run_of_the_stage_is_planned_once_for_the_one_pool(tiny_run):
    p, paths, slices, splits = tiny_run
    p = p.model_copy(update={"utility": p.utility.model_copy(update={"segmenter_budgets": [0.5], "mask_sources": ["oracle"]})})
    parts = [utility.plan(p, splits, ["ddpm"]), utility.step_runs(p, paths, splits, ["ddpm"]),
             utility.budget_runs(p, splits, ["ddpm"]), utility.mask_source_runs(p, splits, ["ddpm"])]
    runs = utility.all_runs(p, paths, splits, ["ddpm"])
    assert len({r.name for r in runs}) == len(runs) and set(runs) == set().union(*parts)  # one job per folder
    assert [r.name for r in runs[len(parts[0]):]] == ["real_none_n2_seed0_budget0.5", "real+synthetic_ddpm_n2_seed0_budget0.5",
                                                      "real+synthetic_ddpm_n2_seed0_masks-oracle"]  # the rest: runs of the grid
    assert not parts[1]  # no generator checkpoints in this run: no steps axis


def test_each_segmenter_seed_trains_on_its_generator_seed_and_same_uses_the_fewest_patients_own_generators():
    splits = {"sets": {"train": [f"p{i}" for i in range(6)]}}
    p = params_mod.load(params_mod.project_root() / "params/default.yaml",
                        ["utility.seeds=[0, 1, 2]", "generators.n_seeds=2", "utility.n_real_patients=[2, null]",
                         "utility.generators_from=same"])
    runs = {(r.regime, r.arm, r.n_real, r.seed): r for r in utility.plan(p, splits, ["ddpm"])}
    assert runs["real+synthetic", "ddpm", 2, 0].generators == generation.Replica(0, 2)
    assert runs["real+synthetic", "ddpm", 2, 1].generators == generation.Replica(1, 2)
    assert runs["real+synthetic", "ddpm", 2, 2].generators == generation.Replica(0, 2)  # seed index 2, modulo 2
    assert runs["real+synthetic", "ddpm", 6, 1].generators == generation.Replica(1)  # every patient: the seed's replica
    assert runs["real", "none", 2, 1].generators == generation.PRIMARY and runs["real", "none", 2, 1].generators_from == ""
    assert runs["real+synthetic", "ddpm", 2, 1].name == "real+synthetic_ddpm_n2_seed1_generators_n2_seed1"
    assert runs["real+synthetic", "ddpm", 2, 1].generators_from == "same (2 patients)"
    assert runs["real+synthetic", "ddpm", 6, 0].name == "real+synthetic_ddpm_n6_seed0"  # the primary replica: as before
