"""The preflight: what a later stage needs, checked before the first stage and again once the data stage has run."""

import json

import pandas as pd

from cmrlib import preflight
from builders import tiny_params


def _run_files(tmp_path, sets: dict[str, list[str]], slices_per_patient: dict[str, int]):
    """The splits.json and data/metadata.csv a data stage leaves, with the given sets and training slices."""
    (tmp_path / "data").mkdir()
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"sets": sets}))
    rows = [{"patient": p, "split": split} for split, patients in sets.items() for p in patients
            for _ in range(slices_per_patient.get(p, 3))]
    meta = tmp_path / "data" / "metadata.csv"
    pd.DataFrame(rows).to_csv(meta, index=False)
    return splits, meta


def test_counts_from_the_data_stage_are_the_sets_and_the_slices_per_training_patient(tmp_path):
    splits, meta = _run_files(tmp_path, {"train": ["a", "b", "c"], "holdout": ["d"], "test": ["e"], "cross_C": ["f"]},
                              {"a": 5, "b": 1, "c": 2})
    counts = preflight.counts_from_run(splits, meta)
    assert counts.patients == {"train": 3, "holdout": 1, "test": 1, "cross_C": 1}
    assert counts.train_slices == [5, 1, 2]  # in the splits' draw order
    assert counts.source == str(splits)


def test_the_data_stages_counts_name_each_need_a_later_stage_cannot_meet(tmp_path):
    # one holdout patient, one patient in the reference protocol's cross-domain set, and 2 slices in the smallest
    # utility regime (its first patient) for a batch of 8
    splits, meta = _run_files(tmp_path, {"train": ["a", "b", "c", "d"], "holdout": ["h"], "test": ["t"], "cross_C": ["x"]},
                              {"a": 2, "b": 9, "c": 9, "d": 9})
    p = tiny_params("pre", data={"n_cross_patients": 1}, utility={"n_real_patients": [1, None], "segmenter": {"batch_size": 8}})
    found = preflight.problems(p, preflight.counts_from_run(splits, meta))
    text = "\n".join(found)
    assert any(m.startswith("50_privacy: the calibrated membership attack deals holdout patients") and "got 1" in m for m in found), text
    assert any(m.startswith("50_privacy: data.n_cross_patients = 1 leaves the reference protocol 1 patient") for m in found), text
    assert any(m.startswith("50_privacy: the calibrated membership attack deals test patients") for m in found), text  # never seen
    assert any(m.startswith("50_privacy: privacy.controls.canary_patients = 4 leaves fewer than 2 training patients") for m in found), text
    uncapped = preflight.problems(tiny_params("pre"), preflight.counts_from_run(splits, meta))
    assert not any("reference protocol" in m for m in uncapped)  # one patient in the data: reported as not attackable
    assert any(m.startswith("40_utility: utility.segmenter.batch_size = 8 exceeds the 2 slices of the 1 real patient(s)")
               for m in found), text
    assert all(str(splits) in m for m in found if m.startswith(("50_privacy", "40_utility: utility.segmenter"))), text


def test_the_same_data_serve_a_configuration_that_fits_them(tmp_path):
    splits, meta = _run_files(tmp_path, {"train": ["a", "b", "c", "d"], "holdout": ["h", "i"], "test": ["t", "u"],
                                         "cross_C": ["x", "y"]}, {p: 9 for p in "abcd"})
    p = tiny_params("pre", utility={"n_real_patients": [1, None], "segmenter": {"batch_size": 8}},
                    privacy={"controls": {"canary_patients": 2}})
    assert preflight.problems(p, preflight.counts_from_run(splits, meta)) == []


def test_a_control_arm_that_does_not_exist_is_named():
    found = preflight.problems(tiny_params("pre", privacy={"controls": {"arm": "gan"}}), None)
    assert "50_privacy: privacy.controls.arm = 'gan' is not an arm; choose one of ddpm, ldm, fm" in found
