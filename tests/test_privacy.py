"""Privacy metrics can catch a leak: exact search against brute force, AUC / TPR against known answers, copying and
honest "generators", an overfitted model against an untrained one, and the axis written on a tiny run."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import cdist
from sklearn.metrics import roc_auc_score, roc_curve

from cmrlib import models, params as params_mod, privacy, privacy_controls, segmenters
from cmrlib.data import prepare
from cmrlib.generation import save_samples
from cmrlib.metrics import privacy as mp
from cmrlib.paths import RunPaths
from builders import tiny_params

RNG = np.random.default_rng(0)


# -- exact nearest neighbours ---------------------------------------------------------------------------------------
def test_nearest_neighbours_agree_with_brute_force_across_chunks():
    q, r = RNG.normal(size=(37, 6, 6)).astype(np.float32), RNG.normal(size=(53, 6, 6)).astype(np.float32)  # images are float32
    d = cdist(q.reshape(37, -1), r.reshape(53, -1))
    nn = mp.nearest_l2(q, r, k=2, chunk=8)  # several chunks
    np.testing.assert_array_equal(nn.index, np.argsort(d, 1)[:, :2])
    np.testing.assert_allclose(nn.value, np.sort(d, 1)[:, :2], rtol=1e-10)
    corr = np.corrcoef(q.reshape(37, -1), r.reshape(53, -1))[:37, 37:]
    c = mp.nearest_correlation(q, r, k=3, chunk=10)
    np.testing.assert_array_equal(c.index, np.argsort(-corr, 1)[:, :3])
    np.testing.assert_allclose(c.value, -np.sort(-corr, 1)[:, :3], atol=1e-5)


def test_mask_dice_search_agrees_with_brute_force_and_skips_empty_masks():
    q, r = RNG.integers(0, 4, (9, 8, 8)), RNG.integers(0, 4, (12, 8, 8))
    q[0] = 0  # no foreground: identifies nobody

    def dice(a, b):
        inter = sum(((a == c) & (b == c)).sum() for c in (1, 2, 3))
        return 2 * inter / ((a > 0).sum() + (b > 0).sum())

    brute = np.array([[dice(a, b) for b in r] for a in q[1:]])
    nn = mp.nearest_mask_dice(q, r, chunk=4)
    np.testing.assert_allclose(nn.value[1:, 0], brute.max(1))
    np.testing.assert_array_equal(nn.index[1:, 0], brute.argmax(1))
    assert np.isnan(nn.value[0, 0]) and nn.index[0, 0] == -1
    assert mp.nearest_mask_dice(r[:3], r).value[:, 0] == pytest.approx([1, 1, 1])  # its own copy


def test_near_copies_have_exact_tiny_distances_despite_large_norms():
    r = RNG.uniform(-1, 1, (20, 64, 64)).astype(np.float32) + 5  # |x|^2 ~ 1e5: the expanded form alone would blur 1e-3
    q = r[:4] + 1e-3
    nn = mp.nearest_l2(q, r, k=2)
    np.testing.assert_array_equal(nn.index[:, 0], np.arange(4))
    np.testing.assert_allclose(nn.value[:, 0], 1e-3 * 64, rtol=1e-3)
    assert (mp.distance_ratio(nn) < 0.01).all()


# -- scores of two groups -------------------------------------------------------------------------------------------
def test_auc_and_tpr_at_fpr_match_sklearn():
    scores = np.round(RNG.normal(size=400), 1)  # with ties
    labels = RNG.random(400) < 0.4
    scores[labels] += 0.7
    assert mp.auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    fpr, tpr, _ = roc_curve(labels, scores)
    for target in (0.01, 0.05, 0.2):
        assert mp.tpr_at_fpr(scores, labels, target) == pytest.approx(tpr[fpr <= target].max())


def test_tpr_at_1pct_fpr_on_a_known_case():
    negatives = np.arange(100.0)  # 1% FPR allows exactly one false positive: the threshold sits above 98
    positives = np.r_[np.full(30, 98.5), np.full(20, 150.0), np.full(50, -1.0)]
    scores, labels = np.r_[positives, negatives], np.r_[np.ones(100, bool), np.zeros(100, bool)]
    assert mp.tpr_at_fpr(scores, labels, 0.01) == pytest.approx(0.5)
    assert mp.tpr_at_fpr(scores, labels, 0.0) == pytest.approx(0.2)  # no false positive allowed: above 99
    assert mp.auc(scores, labels) == pytest.approx(0.3 * 0.99 + 0.2 * 1 + 0.5 * 0)  # 98.5 beats 99 of the 100 negatives


def test_dcr_share_is_a_half_for_a_generator_of_the_distribution_one_for_copies_and_a_half_when_off_manifold():
    train, holdout = RNG.normal(size=(300, 8)), RNG.normal(size=(200, 8))
    fresh = RNG.normal(size=(2000, 8))  # a generator that learnt the distribution
    assert mp.dcr_closer_to_train(fresh, train, holdout, seed=0).mean() == pytest.approx(0.5, abs=0.04)
    assert mp.dcr_closer_to_train(train[:50], train[:200], holdout, seed=0).mean() == 1.0  # copies, sets of equal size
    assert 0.66 < mp.dcr_closer_to_train(train[:50], train, holdout, seed=0).mean() < 1  # 2/3 of the copies' rows kept
    noisy = RNG.normal(size=(2000, 8)) * 4  # far from both sets alike: a fidelity failure, not a privacy one
    assert mp.dcr_closer_to_train(noisy, train, holdout, seed=0).mean() == pytest.approx(0.5, abs=0.04)
    assert set(mp.dcr_closer_to_train(train[:3], train[:3], train[:3], seed=0)) == {0.5}  # ties count half


def test_the_released_set_attack_is_at_chance_for_fresh_samples_and_finds_every_copied_member():
    p = params_mod.validate({"run_name": "released", "privacy": {"bootstrap": 200}})
    rng = np.random.default_rng(7)
    patients = np.repeat([f"p{i:02d}" for i in range(40)], 5)  # 20 members, 20 non-members, 5 slices each
    labels = np.repeat(np.arange(40) < 20, 5)
    real = rng.normal(size=(200, 6, 6))
    fresh = rng.normal(size=(300, 6, 6))
    rows = {r["unit"]: r for r in privacy.score_rows(p, mp.released_scores(real, fresh), labels, patients, "fresh")}
    for r in rows.values():
        assert r["auc_low"] < 0.5 < r["auc_high"] and r["p_chance"] > 0.05 and r["auc_from_chance_low"] == 0, r
    assert rows["patient"]["n_positive"] == 20 and rows["slice"]["n_positive"] == 100
    copied = real[labels]  # a "generator" that releases its training images
    rows = {r["unit"]: r for r in privacy.score_rows(p, mp.released_scores(real, copied), labels, patients, "copies")}
    assert rows["patient"]["tpr_at_1fpr"] == 1.0 and rows["patient"]["auc"] == 1.0 and rows["slice"]["auc_from_chance"] == 0.5
    assert rows["patient"]["p_chance"] < 0.01
    near = copied + 0.05 * rng.normal(size=copied.shape)  # near-copies: found as well
    assert privacy.score_rows(p, mp.released_scores(real, near), labels, patients, "near")[1]["tpr_at_1fpr"] == 1.0


def test_the_patient_permutation_test_holds_its_level_where_a_patient_bootstrap_does_not():
    """Two sets of 6 patients drawn alike, each patient's slices sharing a strong patient effect: the AUC often lands
    far from 0.5 by the draw of patients. The permutation test rejects at about its level; the bootstrap interval over
    so few patients excludes 0.5 more often (in 200 such trials: 8.5% against 15%), which is why the controls are
    judged by the permutation test."""
    p = params_mod.validate({"run_name": "perm", "privacy": {"bootstrap": 200}})
    rng = np.random.default_rng(3)
    groups = np.repeat([f"p{i:02d}" for i in range(12)], 8)
    labels = np.repeat(np.arange(12) < 6, 8)
    rejected, excluded = 0, 0
    for trial in range(40):
        scores = np.repeat(rng.normal(size=12), 8) + 0.3 * rng.normal(size=96)
        row = privacy.score_rows(p, scores, labels, groups, f"trial{trial}")[0]  # per slice
        rejected += row["p_chance"] < 0.05
        excluded += not row["auc_low"] <= 0.5 <= row["auc_high"]
    assert rejected <= 5 and excluded > rejected, (rejected, excluded)


def test_per_patient_scores_are_the_mean_of_the_slices_and_overlapping_sets_are_refused():
    scores, labels, patients = mp.per_patient([1.0, 3.0, 0.0, 5.0], ["b", "b", "a", "c"], [True, True, False, False])
    assert patients.tolist() == ["a", "b", "c"] and scores.tolist() == [0.0, 2.0, 5.0] and labels.tolist() == [False, True, False]
    with pytest.raises(ValueError, match="patient a has member and non-member"):
        mp.per_patient([1.0, 2.0], ["a", "a"], [True, False])


def test_logistic_attack_matches_sklearn_and_scores_are_nan_when_undefined():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = RNG.normal(size=(300, 3)) * [1, 5, 0.1]
    y = x @ [1.0, -0.2, 4.0] + RNG.normal(size=300) > 0
    ours = mp.LogisticAttack(C=1.0).fit(x, y).predict_proba(x)
    theirs = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, tol=1e-10, max_iter=1000)).fit(x, y).predict_proba(x)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert np.isnan(mp.auc([0.1, np.nan], [True, False])) and np.isnan(mp.tpr_at_fpr([0.1, np.nan], [True, False]))
    assert np.isnan(mp.auc([0.1, 0.2], [True, True]))


def test_calibrated_attack_never_fits_on_the_patients_it_scores():
    n = 120
    groups = np.repeat([f"p{i}" for i in range(12)], 10)
    labels = np.repeat(np.arange(12) < 6, 10)
    errors = np.exp(RNG.normal(size=(n, 3)))  # unique rows: a row's features identify it
    row_of = {float(np.log(e[0])): i for i, e in enumerate(errors)}
    calls = []

    class Spy:
        classes_ = np.array([False, True])

        def fit(self, x, y):
            self.fitted = [row_of[float(v)] for v in x[:, 0]]
            return self

        def predict_proba(self, x):
            calls.append((self.fitted, [row_of[float(v)] for v in x[:, 0]]))
            return np.full((len(x), 2), 0.5)

    scores, folds = mp.calibrated_scores(errors, labels, groups, seed=1, make_model=Spy)
    assert len(calls) == 2 and not np.isnan(scores).any()
    scored = sorted(i for _, rows in calls for i in rows)
    assert scored == list(range(n))  # every slice scored exactly once
    for fitted, rows in calls:
        assert not set(groups[fitted]) & set(groups[rows])  # no patient both fitted on and scored
        assert labels[fitted].any() and (~labels[fitted]).any()  # both classes in every fitting half
    with pytest.raises(ValueError, match="member"):
        mp.patient_folds(groups[:10], labels[:10], seed=0)  # one patient cannot be split into two folds


# -- copying and honest generators on phantom data ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny phantom run with a reference segmenter, fake arms (``ddpm`` returns training images, ``fm`` holdout
    images, half of each lightly noised) and a mask prior that returns training masks."""
    p = tiny_params("priv", seed=2,
                    data={"n_train_patients": 6, "n_holdout_patients": 6, "n_val_patients": 2, "n_test_patients": 6, "phantom": {"patients_per_domain": 10}},
                    fidelity={"segmenter": {"steps": 20}}, privacy={"bootstrap": 200, "mia_snr": [0.3, 3.0], "mia_draws": 1})
    paths = RunPaths(tmp_path_factory.mktemp("run"))
    slices = prepare(p, paths)
    segmenter, _ = segmenters.reference_segmenter(p, paths, slices)
    ref = privacy.reference(p, slices, segmenter)
    rng = np.random.default_rng(0)
    for arm, source in (("ddpm", ref.train), ("fm", ref.holdout)):
        images = source.images[rng.choice(len(source), 60)]
        images[::2] = np.clip(images[::2] + rng.normal(0, 0.02, images[::2].shape), -1, 1)
        save_samples(paths, arm, "synthetic", record={}, images=images.astype(np.float32), masks=np.zeros(images.shape, np.uint8))
    save_samples(paths, "mask_prior", "masks", record={}, masks=ref.train.masks[:30])
    return p, paths, slices, ref


def test_a_copying_generator_is_flagged_and_an_honest_one_is_not(tiny_run):
    p, paths, slices, ref = tiny_run
    mem = privacy.memorisation(p, paths, ref, arms=("ddpm", "fm"))
    t = mem.rows.set_index(["set", "metric"])
    assert t.loc[("ddpm", "copy_share"), "estimate"] > 0.95
    assert t.loc[("ddpm", "dcr_train_share"), "low"] > 0.9  # closer to its training set than to the holdout set
    assert t.loc[("fm", "copy_share"), "estimate"] <= t.loc[(privacy.UNSEEN, "copy_share"), "estimate"] + 0.05
    assert t.loc[("fm", "copy_share"), "high"] < 0.5
    assert t.loc[("fm", "dcr_train_share"), "high"] < 0.1  # the holdout patients themselves: closer to the holdout
    assert t.loc[(privacy.COPIER, "copy_share"), "estimate"] == 1.0 and t.loc[(privacy.COPIER, "dcr_train_share"), "estimate"] == 1.0
    assert np.isnan(t.loc[("ddpm", "lpips_flag_share"), "estimate"]) and "unavailable" in t.loc[("ddpm", "lpips_flag_share"), "interval"]
    # the attack on the released set: members against holdout patients, and the never-seen control (holdout
    # against test patients); "fm" releases holdout images, so it reveals its holdout patients (AUC below 0.5)
    rel = privacy.released(p, ref, {arm: mem.images[arm] for arm in ("ddpm", "fm")}).set_index(["arm", "protocol", "space", "unit"])
    assert rel.loc[("ddpm", "ours", "pixel", "patient"), "auc"] > 0.9
    assert rel.loc[("fm", "ours", "pixel", "patient"), "auc"] < 0.1 and rel.loc[("fm", "ours", "pixel", "patient"), "auc_from_chance"] > 0.4
    assert rel.loc[(privacy.COPIER, "ours", "seg", "patient"), "auc"] == 1.0
    pairs = privacy.most_similar(mem, n=3)
    assert (pairs[pairs.set == "ddpm"]["l2"] < 1e-6).all()  # the exact copies come first


def test_copied_stage1_masks_are_flagged(tiny_run):
    p, paths, slices, ref = tiny_run
    masks = privacy.mask_copies(p, paths, ref).set_index(["set", "metric"])["estimate"]
    assert masks["mask_prior", "copy_share"] == 1.0
    assert masks[privacy.UNSEEN, "copy_share"] < 1.0


def test_the_axis_writes_every_key_the_paper_and_export_gate_read(tiny_run):
    p, paths, slices, ref = tiny_run
    arms = ("ddpm", "fm")
    mem = privacy.memorisation(p, paths, ref, arms=arms)
    masks = privacy.mask_copies(p, paths, ref)
    rng = np.random.default_rng(1)  # errors of a model that fits its members better (no model needed here)
    errors = {arm: {"train": rng.exponential(0.5, (len(ref.train), 2)), "holdout": rng.exponential(1.0, (len(ref.holdout), 2)),
                    **{name: rng.exponential(1.0, (len(s), 2)) for name, s in ref.sets.items() if name not in ("train", "holdout")}}
              for arm in arms}
    table, roc = privacy.attacks(p, ref, errors)
    mia = privacy.Membership(table, roc, errors, {})
    released = privacy.released(p, ref, {arm: mem.images[arm] for arm in arms})
    controls = privacy_controls.table(privacy_controls.untrained(table, released), pd.DataFrame())
    path = privacy.save(p, paths, ref, mem, masks, mia, released, controls, arms=arms)
    record = json.loads(path.read_text())
    keys = {k for k, *_ in privacy.SUMMARY_ATTACKS + privacy.SUMMARY_RELEASED} | {"copy_share", "dcr_train_share", "dcr_train_share_seg"}
    keys |= {f"{k}_{s}" for k in keys for s in ("low", "high")} | {"arm", "n_synthetic", "n_members", "n_nonmembers"}
    assert [r["arm"] for r in record["summary"]] == list(arms)
    for r in record["summary"]:
        assert keys <= set(r), keys - set(r)
        assert r["mia_auc_low"] <= r["mia_auc"] <= r["mia_auc_high"] and r["mia_auc"] > 0.6
        assert r["never_seen_auc_low"] < 0.5 < r["never_seen_auc_high"]  # both sets drawn alike: nothing to find
        assert r["n_members"] == len(ref.train) and r["n_nonmembers"] == len(ref.holdout)
    assert record["mask_prior"]["copy_share"] == 1.0
    assert {r["level"] for r in record["mia"]} == {"0.3", "3", "all"} and {r["unit"] for r in record["mia"]} == {"slice", "patient"}
    ctl = pd.DataFrame(record["controls"])
    assert set(ctl["control"]) == {"never seen", "copier"}
    assert ctl.loc[ctl.control == "copier", "passed"].eq(1).all() and ctl.loc[ctl.control == "copier", "tpr_at_1fpr"].eq(1).all()
    mia_rows = pd.DataFrame(record["mia"])
    crossing = mia_rows[mia_rows["protocol"].isin(["reference", "domain shift"])]
    assert set(crossing["cross_set"]) == set(ref.cross) == {"cross_C", "cross_D"}  # a row per cross-domain set
    assert set(crossing.loc[crossing["primary"], "cross_set"]) == {ref.cross_split}
    assert set(mia_rows.loc[mia_rows["protocol"].isin(["ours", "never seen"]), "cross_set"]) == {""}
    for name in ("privacy_summary", "privacy_released", "privacy_controls"):
        assert (paths.tables / f"{name}.csv").is_file()


def test_reference_protocol_domain_must_be_a_cross_domain_set(tiny_run):
    p, paths, slices, ref = tiny_run
    assert privacy.reference_split(p, slices) == ref.cross_split and ref.cross_split.startswith("cross_")
    bad = p.model_copy(update={"privacy": p.privacy.model_copy(update={"reference_protocol_domain": "A"})})
    with pytest.raises(ValueError, match="reference_protocol_domain"):
        privacy.reference_split(bad, slices)


def test_without_a_cross_domain_set_the_reference_protocol_is_not_applicable(tiny_run):
    """A single-domain run (ACDC alone): every protocol on our non-members runs; the reference protocol and its
    domain-shift control are reported as not applicable, with the reason, instead of stopping the stage."""
    import dataclasses

    p, paths, slices, ref = tiny_run
    alone = slices.select(~slices.meta["split"].str.startswith("cross_").to_numpy())
    single = p.model_copy(update={"data": p.data.model_copy(update={"cross_domains": []})})
    assert privacy.reference_split(single, alone) is None
    ref = dataclasses.replace(ref, cross={}, cross_split=None)
    assert set(ref.sets) == {"train", "holdout", "unseen"}
    status = privacy.protocol_status(ref)
    assert status["ours"]["applicable"] and not status["reference"]["applicable"] and not status["domain shift"]["applicable"]
    assert "no cross-domain set" in status["reference"]["reason"]
    rng = np.random.default_rng(1)
    errors = {"ddpm": {"train": rng.exponential(0.5, (len(ref.train), 2)), "holdout": rng.exponential(1.0, (len(ref.holdout), 2)),
                       "unseen": rng.exponential(1.0, (len(ref.unseen), 2))}}
    table, roc = privacy.attacks(single, ref, errors)
    assert set(table["protocol"]) == {"ours", "never seen"}
    mia = privacy.Membership(table, roc, errors, {}, status)
    mem = privacy.memorisation(single, paths, ref, arms=("ddpm",))
    released = privacy.released(single, ref, {"ddpm": mem.images["ddpm"]})
    record = json.loads(privacy.save(single, paths, ref, mem, privacy.mask_copies(single, paths, ref), mia, released, pd.DataFrame(),
                                     arms=("ddpm",)).read_text())
    summary = record["summary"][0]
    assert summary["mia_auc"] > 0.6 and summary["reference_mia_auc"] is None and summary["domain_shift_auc"] is None
    assert record["settings"]["protocols"]["reference"]["applicable"] is False
    assert record["settings"]["counts"]["cross"] == {}


# -- an overfitted model against an untrained one -------------------------------------------------------------------
def _smooth_images(n, seed, size=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand((n, 1, size, size), generator=g) * 2 - 1, 3, 1, 1)
    return (x / x.abs().amax((1, 2, 3), keepdim=True))[:, 0].numpy()


def _model_auc(model, members, nonmembers, p):
    masks = np.zeros((len(members) + len(nonmembers), 16, 16), np.uint8)
    errors = privacy.model_errors(p, model, np.concatenate([members, nonmembers]), masks, "test errors", batch_size=16)
    labels = np.r_[np.ones(len(members), bool), np.zeros(len(nonmembers), bool)]
    return mp.auc(mp.loss_scores(errors), labels)


def test_an_overfitted_model_is_caught_and_an_untrained_one_is_not():
    p = params_mod.validate({"run_name": "mia", "privacy": {"mia_snr": [1.0, 3.0, 10.0], "mia_draws": 4}})
    torch.manual_seed(0)
    unet = dict(widths=[8, 16], attention=[False, False], head_dim=8)
    model = models.FlowMatchingModel(data_channels=1, cond_channels=4, sample_size=16, unet=unet)
    members, nonmembers = _smooth_images(6, 1), _smooth_images(6, 2)
    assert abs(_model_auc(model, _smooth_images(48, 3), _smooth_images(48, 4), p) - 0.5) < 0.15  # untrained: chance
    x = torch.from_numpy(members)[:, None]
    cond = models.one_hot(torch.zeros((len(x), 16, 16), dtype=torch.long))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        opt.zero_grad()
        model.loss(x, cond, g).backward()
        opt.step()
    model.eval()
    assert _model_auc(model, members, nonmembers, p) > 0.9


def test_a_cross_domain_set_too_small_to_attack_is_skipped_with_the_reason(tiny_run):
    import dataclasses

    p, paths, slices, ref = tiny_run
    other = next(name for name in ref.cross if name != ref.cross_split)
    one = ref.cross[other].select((ref.cross[other].meta["patient"] == ref.cross[other].meta["patient"].iloc[0]).to_numpy())
    small = dataclasses.replace(ref, cross={**ref.cross, other: one})
    status = privacy.protocol_status(small)
    assert status["reference"]["applicable"] and status["reference"]["cross_sets"] == [ref.cross_split]
    assert status["reference"]["skipped"] == {other: f"{other} has 1 patient(s); the attack needs at least 2"}
    rng = np.random.default_rng(1)
    errors = {"ddpm": {name: rng.exponential(1.0, (len(s), 2)) for name, s in small.sets.items()}}
    table, _ = privacy.attacks(p, small, errors)
    assert set(table["cross_set"]) == {"", ref.cross_split}


# -- the controls that need no training -------------------------------------------------------------------------------
def test_canaries_are_repeated_members_and_the_plain_phantom_keeps_patients_masks_and_splits(tiny_run):
    p, paths, slices, ref = tiny_run
    chosen = privacy_controls.canaries(p, ref.train)
    assert len(chosen) == p.privacy.controls.canary_patients and set(chosen) < set(ref.train.meta["patient"])
    trained_on = privacy_controls.with_canaries(p, ref.train, chosen)
    counts = trained_on.meta.groupby("patient").size() / ref.train.meta.groupby("patient").size()
    assert counts[chosen].eq(p.privacy.controls.canary_repeats).all() and counts.drop(chosen).eq(1).all()
    plain = privacy_controls.without_signature(p, json.loads(paths.splits.read_text()))
    assert plain.meta[["patient", "split"]].equals(slices.meta[["patient", "split"]])
    np.testing.assert_array_equal(plain.masks, slices.masks)  # the anatomy does not depend on the signature
    assert np.abs(plain.images - slices.images).mean() > 0.01
    bad = p.model_copy(update={"privacy": p.privacy.model_copy(update={"controls": p.privacy.controls.model_copy(update={"canary_patients": 6})})})
    with pytest.raises(ValueError, match="canary_patients = 6"):
        privacy_controls.canaries(bad, ref.train)
    real = p.model_copy(update={"data": p.data.model_copy(update={"source": "acdc_h5", "root": "/nowhere"})})
    assert privacy_controls.without_signature(real, {}) is None  # only the phantom has a signature to remove


def test_band_error_keeps_the_mid_frequencies_only():
    y, x = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    wave = lambda f: np.sin(2 * np.pi * f * x)[None].astype(float)
    low, mid, high = (float(mp.band_error(wave(f))[0]) for f in (1 / 32, 4 / 32, 14 / 32))
    assert mid > 100 * max(low, high) and low < 1e-20 and high < 1e-20


def test_the_reference_attack_draws_its_own_noise_levels_or_matched_ones():
    ddpm = models.DiffusionModel(data_channels=1, cond_channels=4, sample_size=16, unet=dict(widths=[8, 16], attention=[False, False], head_dim=8))
    fm = models.FlowMatchingModel(data_channels=1, cond_channels=4, sample_size=16, unet=dict(widths=[8, 16], attention=[False, False], head_dim=8))
    g = torch.Generator().manual_seed(0)
    steps = privacy.reference_levels(ddpm, 500, g, matched=False)
    assert steps.min() >= 300 and steps.max() < 600 and len(steps.unique()) > 100
    times = privacy.reference_levels(fm, 500, g, matched=False)
    assert times.min() < 0.1 and times.max() > 0.9  # U[0, 1]: low and high noise alike, unlike the diffusion band
    for model in (ddpm, fm):
        levels = privacy.reference_levels(model, 200, g, matched=True)
        snr = [float(ddpm.log_snr[int(t)].exp()) for t in levels] if model is ddpm else [(t / (1 - t)) ** 2 for t in levels.tolist()]
        assert min(snr) > privacy.REFERENCE_SNR[0] * 0.9 and max(snr) < privacy.REFERENCE_SNR[1] * 1.1
