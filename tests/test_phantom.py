"""The embedded phantom: determinism, anatomy (base to apex, ED to ES), domains and per-patient signatures."""

import numpy as np
import pytest

from cmrlib.data import build_slices, phantom
from cmrlib.data.anatomy import check_masks, class_areas, lv_enclosed_by_myo
from cmrlib.labels import LV, MYO, RV


def volumes(seed=0, domains=("A",), n=3, slices=8):
    return list(phantom.generate_volumes(seed=seed, domains=list(domains), patients_per_domain=n, slices_per_volume=slices))


def test_same_seed_same_data_and_other_seed_other_data():
    a, b, c = volumes(seed=1), volumes(seed=1), volumes(seed=2)
    for va, vb in zip(a, b):
        np.testing.assert_array_equal(va.image, vb.image)
        np.testing.assert_array_equal(va.mask, vb.mask)
    assert not np.array_equal(a[0].mask, c[0].mask)
    assert not np.allclose(a[0].image, c[0].image)


def test_a_patient_does_not_depend_on_how_many_are_generated():
    few, many = volumes(n=2), volumes(n=4)
    np.testing.assert_array_equal(few[2].image, many[2].image)


def test_labels_are_canonical_and_every_slice_has_a_heart():
    for v in volumes(domains="ABCD", n=2):
        assert set(np.unique(v.mask)) <= {0, LV, MYO, RV}
        assert (v.mask == LV).reshape(len(v.mask), -1).any(axis=1).all()


def test_lv_cavity_enclosed_by_myocardium_in_every_slice(small_params):
    slices = build_slices(small_params)
    flags = check_masks(slices.masks)
    assert flags["lv_enclosed"].all()
    assert flags["single_lv"].all() and flags["single_myo"].all()


def test_rv_shrinks_from_base_and_is_absent_at_the_apex():
    for v in volumes(domains="AC", n=4):
        rv_area = (v.mask == RV).reshape(len(v.mask), -1).sum(axis=1)
        assert rv_area[0] > 0, "RV missing at the base"
        assert rv_area[-1] == 0, "RV present at the apex"
        assert rv_area[0] >= rv_area[len(rv_area) // 2]


def test_es_cavity_smaller_and_wall_thicker_than_ed():
    vols = volumes(domains="AB", n=4)
    for ed, es in zip(vols[0::2], vols[1::2]):
        assert (ed.patient, ed.phase, es.phase) == (es.patient, "ED", "ES")
        lv_ed, lv_es = ((v.mask == LV).sum(axis=(1, 2)) for v in (ed, es))
        assert (lv_es < lv_ed).all()
        # myocardial area is conserved (incompressible), so the wall is thicker where the cavity is smaller
        myo_ed, myo_es = ((v.mask == MYO).sum(axis=(1, 2)) for v in (ed, es))
        np.testing.assert_allclose(myo_es, myo_ed, rtol=0.15)


def test_class_areas_are_plausible(small_params):
    """Areas in mm^2 at the processed resolution: LV cavity up to ~25 cm^2, MYO ~5 to 25 cm^2, RV up to ~40 cm^2."""
    slices = build_slices(small_params)
    mm2 = (small_params.data.crop_mm / small_params.data.image_size) ** 2
    areas = {k: v * mm2 for k, v in class_areas(slices.masks).items()}
    assert 50 < areas["LV"].min() and areas["LV"].max() < 2500
    assert 300 < areas["MYO"].min() and areas["MYO"].max() < 2500
    assert areas["RV"].max() < 4000 and (areas["RV"] == 0).any()
    assert (areas["background"] > 0.7 * slices.image_size**2 * mm2).all()


def test_domains_differ_in_noise_and_contrast():
    def air_noise(v):  # the top rows are air: Rician noise only, relative to the image's bright tissue
        return v.image[:, :4].std() / np.percentile(v.image, 99)

    by_domain = {d: volumes(domains=d, n=2) for d in "ABCD"}
    noise = {d: np.mean([air_noise(v) for v in vs]) for d, vs in by_domain.items()}
    assert noise["A"] < noise["B"] < noise["C"]
    scale = {d: np.median([v.image.max() for v in vs]) for d, vs in by_domain.items()}
    assert len({round(float(s), -1) for s in scale.values()}) == 4  # raw intensity units differ per vendor


def test_patient_signature_makes_a_patient_its_own_nearest_neighbour():
    """The ED and ES stacks of a patient look more alike than those of two patients of the same vendor."""
    vols = volumes(domains="A", n=6)
    ed = np.stack([v.image[2].ravel() for v in vols[0::2]])
    es = np.stack([v.image[2].ravel() for v in vols[1::2]])
    corr = np.corrcoef(ed, es)[: len(ed), len(ed):]
    assert (corr.argmax(axis=1) == np.arange(len(ed))).all()


@pytest.mark.parametrize("size", [32, 64, 128])
def test_anatomy_survives_resizing(size, small_params):
    params = small_params.model_copy(update={"data": small_params.data.model_copy(update={"image_size": size})})
    slices = build_slices(params)
    assert slices.images.shape[1:] == (size, size)
    assert slices.images.min() >= -1 and slices.images.max() <= 1
    assert np.mean([lv_enclosed_by_myo(m) for m in slices.masks]) > 0.97


def test_signature_zero_leaves_anatomy_and_noise_and_removes_what_identifies_a_patient():
    """``signature`` 0 (the privacy negative control): two patients that share an anatomy but not a signature render
    identically; at the default 1 they differ; the label maps never depend on it."""
    import dataclasses

    a = phantom.sample_anatomy(np.random.default_rng(1))
    other = phantom.sample_anatomy(np.random.default_rng(2))
    twin = dataclasses.replace(a, texture_waves=other.texture_waves, tissue_jitter=other.tissue_jitter,
                               bias_coeffs=other.bias_coeffs, lung_vessels=other.lung_vessels)
    render = lambda anatomy, s: phantom.render(anatomy, phantom.DOMAINS["A"], np.random.default_rng(0), phase="ED",
                                               n_slices=3, signature=s)
    (x0, m0), (y0, n0) = render(a, 0.0), render(twin, 0.0)
    np.testing.assert_array_equal(x0, y0)
    np.testing.assert_array_equal(m0, n0)
    (x1, m1), (y1, _) = render(a, 1.0), render(twin, 1.0)
    assert np.abs(x1 - y1).mean() > 0.01 * np.abs(x1).mean()
    np.testing.assert_array_equal(m0, m1)
