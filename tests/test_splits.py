"""Patient-level splits: disjoint, balanced, seeded, nested in the number of training patients."""

import json

import numpy as np
import pandas as pd
import pytest

from cmrlib.data import prepare
from cmrlib.data.splits import assign, check_disjoint, make_splits
from cmrlib.paths import RunPaths


def fake_meta(per_domain=10, domains="ABCD", layout_test=()):
    rows = [{"dataset": "fake", "patient": f"{d}{i:02d}", "domain": d,
             "layout_split": "test" if f"{d}{i:02d}" in layout_test else "train"}
            for d in domains for i in range(per_domain) for _ in range(3)]
    return pd.DataFrame(rows)


def split(meta, seed=0, n_train=6, **kw):
    return make_splits(meta, seed=seed, train_domains=["A", "B"], n_train=n_train, n_holdout=4, n_test=4, **kw)


def test_sets_are_disjoint_balanced_and_complete():
    s = split(fake_meta())
    check_disjoint(s)
    sets = s["sets"]
    assert set(sets) == {"train", "holdout", "val", "test", "cross_C", "cross_D"} and sets["val"] == []
    assert [len(sets[k]) for k in ("train", "holdout", "test")] == [6, 4, 4]
    for name in ("train", "holdout", "test"):
        domains = [p[0] for p in sets[name]]
        assert domains.count("A") == domains.count("B"), name  # same vendors in members and non-members
    assert all(p.startswith("C") for p in sets["cross_C"]) and len(sets["cross_C"]) == 10


def test_same_seed_same_split_other_seed_other_split():
    meta = fake_meta()
    assert split(meta, seed=5) == split(meta, seed=5)
    assert split(meta, seed=5)["sets"]["train"] != split(meta, seed=6)["sets"]["train"]


def test_training_sets_are_nested_and_test_holdout_fixed():
    meta = fake_meta()
    small, large = split(meta, n_train=4), split(meta, n_train=10)
    assert set(small["sets"]["train"]) < set(large["sets"]["train"])
    for name in ("test", "holdout"):
        assert small["sets"][name] == large["sets"][name]


def test_too_many_patients_requested_names_the_keys():
    with pytest.raises(ValueError, match="n_train_patients"):
        split(fake_meta(per_domain=5), n_train=20)
    with pytest.raises(ValueError, match="train_domains"):
        make_splits(fake_meta(domains="CD"), seed=0, train_domains=["A"], n_train=1, n_holdout=1, n_test=1)


def test_cross_domain_sets_can_be_chosen_and_capped():
    s = split(fake_meta(), cross_domains=["D"], n_cross=3)
    assert set(s["sets"]) == {"train", "holdout", "val", "test", "cross_D"}
    assert len(s["sets"]["cross_D"]) == 3


def test_assign_marks_unused_patients_empty():
    meta = fake_meta()
    labels = assign(meta, split(meta))
    assert set(labels) == {"train", "holdout", "test", "cross_C", "cross_D", ""}


def test_prepare_writes_splits_matching_the_data_and_reuses_the_cache(small_params, tmp_path):
    paths = RunPaths(tmp_path / "run")
    slices = prepare(small_params, paths)
    splits = json.loads(paths.splits.read_text())
    for name, patients in splits["sets"].items():
        in_data = set(slices.meta.loc[slices.meta["split"] == name, "patient"])
        assert in_data == set(patients)
    # no image of a test patient is also an image of a training patient (checked from the pixels)
    train, test = slices.split("train").images, slices.split("test").images
    assert not (np.abs(train[:, None] - test[None]).reshape(len(train), len(test), -1).max(-1) == 0).any()
    stamp = (paths.data / "slices.npz").stat().st_mtime_ns
    again = prepare(small_params, paths)
    assert (paths.data / "slices.npz").stat().st_mtime_ns == stamp  # cached: not rebuilt
    np.testing.assert_array_equal(again.images, slices.images)
    changed = small_params.model_copy(update={"seed": 4})
    prepare(changed, paths)
    assert (paths.data / "slices.npz").stat().st_mtime_ns != stamp  # params changed: rebuilt


def test_validation_patients_are_drawn_balanced_without_moving_test_or_holdout():
    meta = fake_meta()
    without, with_val = split(meta), split(meta, n_val=4)
    assert len(with_val["sets"]["val"]) == 4 and [p[0] for p in with_val["sets"]["val"]].count("A") == 2
    assert (with_val["sets"]["test"], with_val["sets"]["holdout"]) == (without["sets"]["test"], without["sets"]["holdout"])
    check_disjoint(with_val)
    with pytest.raises(ValueError, match="n_val_patients"):
        split(meta, n_train=10, n_val=4)


def test_layout_test_split_takes_exactly_the_layouts_test_patients():
    meta = fake_meta(layout_test={"A01", "A07", "B03", "C02"})  # C is a cross domain: not an in-domain test patient
    s = split(meta, test_split="layout", n_val=2)
    assert s["sets"]["test"] == ["A01", "A07", "B03"] and s["test_split"] == "layout"
    check_disjoint(s)
    assert "C02" in s["sets"]["cross_C"]
    with pytest.raises(ValueError, match="lists no test patient"):
        split(fake_meta(), test_split="layout")


def test_splits_name_each_domains_data_set():
    meta = pd.concat([fake_meta(domains="AB"), fake_meta(domains="X").assign(dataset="other")])
    assert split(meta)["datasets"] == {"A": "fake", "B": "fake", "X": "other"}
