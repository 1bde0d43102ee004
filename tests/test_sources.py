"""Several data sources in one run, foreign label numberings and the layouts' own splits (``data.sources``,
``label_map``, ``test_split: layout``); the last tests run on the shared real data where it exists."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cmrlib import params as P
from cmrlib import study
from cmrlib.data import BadCaseError, DuplicateCaseError, LayoutError, build_slices, prepare
from cmrlib.labels import LV, MYO, RV
from cmrlib.paths import RunPaths, project_root

REPO = project_root()
from test_loaders import _real, acdc_folder, load_all, make_params, nifti_folder

DATA = {"image_size": 32, "crop_mm": 60.0, "spacing_mm": 1.25}


def multi(sources: dict, **data) -> P.StudyParams:
    return P.validate({"run_name": "t", "seed": 0, "data": {**DATA, "sources": sources, **data}})


def test_two_sources_one_run_with_a_test_only_source(tmp_path):
    acdc = acdc_folder(tmp_path / "acdc", patients=[f"patient{i:03d}" for i in range(1, 6)], testing=("patient005",))
    foreign = nifti_folder(tmp_path / "nifti", n=4, domains=("X", "Y"))
    params = multi({"acdc": {"root": str(acdc)}, "nifti": {"root": str(foreign)}}, train_domains=["ACDC"],
                   n_train_patients=2, n_holdout_patients=1, n_val_patients=1, n_test_patients=1)
    paths = RunPaths(tmp_path / "run")
    slices = prepare(params, paths)
    meta = slices.meta
    assert set(meta["dataset"]) == {"acdc", "nifti"} and set(meta["domain"]) == {"ACDC", "X", "Y"}
    assert set(meta.loc[meta["patient"] == "acdc_patient005", "layout_split"]) == {"test"}
    splits = json.loads(paths.splits.read_text())
    assert set(splits["sets"]) == {"train", "holdout", "val", "test", "cross_X", "cross_Y"}
    assert splits["datasets"] == {"ACDC": "acdc", "X": "nifti", "Y": "nifti"}
    assert splits["sets"]["cross_X"] == ["nifti_p0", "nifti_p2"]
    assert all(p.startswith("acdc_") for name in ("train", "holdout", "val", "test") for p in splits["sets"][name])
    manifest = json.loads((paths.data / "manifest.json").read_text())
    assert manifest["sources"] == {"acdc": "acdc", "nifti": "nifti"}


def test_layout_test_split_on_acdcs_testing_folder(tmp_path):
    root = acdc_folder(tmp_path / "acdc", patients=[f"patient{i:03d}" for i in range(1, 7)],
                       testing=("patient002", "patient006"))
    params = make_params("acdc", root, train_domains=["ACDC"], cross_domains=[], test_split="layout",
                         n_train_patients=2, n_holdout_patients=1, n_val_patients=1)
    prepare(params, paths := RunPaths(tmp_path / "run"))
    sets = json.loads(paths.splits.read_text())["sets"]
    assert sets["test"] == ["acdc_patient002", "acdc_patient006"]
    assert len(sets["train"]) == 2 and not {"acdc_patient002", "acdc_patient006"} & set(sets["train"] + sets["val"])


def _renumber(root, values: dict[int, int]) -> None:
    """Rewrite every label file of a nifti folder with another numbering (canonical value -> file value)."""
    lut = np.zeros(4, np.int16)
    for canonical, value in values.items():
        lut[canonical] = value
    for path in (root / "lab").glob("*.nii.gz"):
        img = nib.load(str(path))
        nib.save(nib.Nifti1Image(lut[np.asarray(img.dataobj).astype(int)], img.affine), str(path))


def test_label_map_reads_a_foreign_numbering_and_names_an_unknown_value(tmp_path):
    root = nifti_folder(tmp_path / "nifti", n=1)
    canonical = [v.mask for v in load_all(make_params("nifti", root))]
    _renumber(root, {LV: 500, MYO: 200, RV: 600})
    remapped = load_all(make_params("nifti", root, label_map={500: "LV", 200: "MYO", 600: "RV"}))
    for a, b in zip(canonical, remapped):
        np.testing.assert_array_equal(a, b.mask)
    with pytest.raises(BadCaseError, match=r"p0_ED.nii.gz: label value\(s\) \[600\] not in the source's label_map"):
        load_all(make_params("nifti", root, label_map={500: "LV", 200: "MYO", 601: "RV"}))
    with pytest.raises(P.ParamsError, match="label_map .* must name a file value for each of LV, MYO and RV"):
        make_params("nifti", root, label_map={500: "LV", 200: "MYO"})


def test_sources_params_name_the_key_and_the_fix(tmp_path):
    root = nifti_folder(tmp_path / "nifti", n=1)
    with pytest.raises(P.ParamsError, match=r"data.sources.mnms.root is required .* --set data.sources.mnms.root=PATH"):
        multi({"nifti": {"root": str(root)}, "mnms": {}})
    optional = multi({"nifti": {"root": str(root)}, "mnms": {"required": False}})
    assert list(optional.data.source_list()) == ["nifti"]  # an optional source without a root is left out
    with pytest.raises(P.ParamsError, match="data.sources is given, so data.source, data.root must stay at their defaults"):
        P.validate({"run_name": "t", "data": {"source": "nifti", "root": str(root), "sources": {"nifti": {"root": str(root)}}}})
    with pytest.raises(P.ParamsError, match="data.sources.nifti.root .* does not exist"):
        multi({"nifti": {"root": str(tmp_path / "nowhere")}})
    with_root = P.load(REPO / "params/acdc.yaml", [f"data.sources.acdc.root={tmp_path}", f"data.sources.mnms.root={root}"])
    assert [s.source for s in with_root.data.source_list().values()] == ["acdc", "mnms"]
    h5 = P.load(REPO / "params/acdc.yaml", ["data.sources.acdc.source=acdc_h5", f"data.sources.acdc.root={tmp_path}"])
    assert [(n, s.source) for n, s in h5.data.source_list().items()] == [("acdc", "acdc_h5")]  # M&Ms is optional
    with pytest.raises(P.ParamsError, match="data.sources.other: 'other' is not a source; name its loader"):
        multi({"other": {"root": str(root)}})
    other = nifti_folder(tmp_path / "other", n=1, domains=("B",))  # the same patient id p0 as root's
    two = multi({"ours": {"source": "nifti", "root": str(root)}, "theirs": {"source": "nifti", "root": str(other)}})
    assert list(two.data.source_list()) == ["ours", "theirs"]
    assert set(build_slices(two).meta["patient"]) == {"ours_nifti_p0", "theirs_nifti_p0"}


def test_every_source_optional_without_a_root_is_an_error():
    with pytest.raises(P.ParamsError, match=r"every source of data.sources \(acdc, mnms\) is optional and has no root"):
        multi({"acdc": {"required": False}, "mnms": {"required": False}})


def test_a_case_list_split_must_be_known(tmp_path):
    root = nifti_folder(tmp_path / "nifti", n=2)
    table = pd.read_csv(root / "cases.csv").assign(split=["train", "train", "test", "held"])
    table.to_csv(root / "cases.csv", index=False)
    with pytest.raises(LayoutError, match=r"cases.csv: split must be train, val, test or empty, found \['held'\]"):
        load_all(make_params("nifti", root))
    table.assign(split=["train", "train", "test", "test"]).to_csv(root / "cases.csv", index=False)
    assert [v.layout_split for v in load_all(make_params("nifti", root))] == ["train", "train", "test", "test"]


def test_a_domain_of_two_sources_is_an_error(tmp_path):
    root = nifti_folder(tmp_path / "nifti", n=1, domains=("A",))
    params = multi({"phantom": {}, "nifti": {"root": str(root)}}, phantom={"patients_per_domain": 1})
    with pytest.raises(DuplicateCaseError, match="domain 'A' of source nifti is also a domain of source phantom"):
        build_slices(params)


# ---------------------------------------------------------------- the shared real data (team machines only)

def test_every_shared_acdc_training_case_loads():
    root = _real("acdc_h5_train")
    params = P.validate({"run_name": "t", "data": {"source": "acdc_h5", "root": str(root)}})
    vols = load_all(params)
    assert len({v.patient for v in vols}) == 70 and len(vols) == 140
    assert {v.layout_split for v in vols} == {"train"}  # train.list names every case
    assert sum(len(v.image) for v in vols) == 1312
    for v in vols:
        assert set(np.unique(v.mask)) <= {0, LV, MYO, RV} and (v.mask == LV).any(), v.source


def test_real_multi_source_study_to_the_end_of_one_arm(tmp_path):
    """ACDC (HDF5 sample, its own test list) trains; M&Ms is test-only: a cross-domain set per vendor."""
    acdc, mnms = _real("acdc_h5_sample"), _real("mnms_sample")
    overrides = [f"data.sources.acdc_h5.root={acdc}", f"data.sources.mnms.root={mnms}", "data.train_domains=[ACDC]",
                 "data.test_split=layout", "data.n_train_patients=1", "data.n_holdout_patients=1",
                 "data.n_val_patients=1", "data.n_cross_patients=null", "utility.n_real_patients=[null]"]
    record = study.run(REPO / "params/smoke.yaml", overrides, only=["00_data", "10_mask_prior", "20_generator[fm]"],
                       runs_dir=tmp_path)
    run = tmp_path / "smoke"
    splits = json.loads((run / "splits.json").read_text())
    assert splits["sets"]["test"] == ["acdc_patient001"]  # exactly the layout's test.list
    assert set(splits["sets"]) == {"train", "holdout", "val", "test", "cross_A", "cross_C"}
    assert splits["datasets"] == {"ACDC": "acdc", "A": "mnms", "C": "mnms"}
    meta = pd.read_csv(run / "data" / "metadata.csv", dtype=str, keep_default_na=False)
    assert set(meta.loc[meta["split"] == "cross_C", "dataset"]) == {"mnms"}
    assert all(record["stages"][s]["status"] == "done" for s in ("00_data", "10_mask_prior", "20_generator[fm]"))
    assert (run / "samples" / "fm" / "synthetic.npz").exists()


def test_cross_domain_sets_keep_the_params_order_and_layout_errors_name_the_entry(tmp_path):
    from cmrlib.data.splits import in_cross_order

    assert in_cross_order(["cross_D", "test", "cross_ACDC", "cross_C"], ["C", "D", "ACDC"]) == ["cross_C", "cross_D", "cross_ACDC"]
    assert in_cross_order(["cross_D", "cross_ACDC", "cross_C"], None) == ["cross_ACDC", "cross_C", "cross_D"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LayoutError, match=r"^data.sources.acdc: ACDC: no patientNNN folders .* data.sources.acdc.<key>"):
        build_slices(multi({"acdc": {"root": str(empty)}}, train_domains=["ACDC"]))
    with pytest.raises(P.ParamsError, match="data.test_split is 'layout', but the phantom has no split of its own"):
        P.validate({"run_name": "t", "data": {"test_split": "layout"}})


def test_an_unknown_key_of_a_source_entry_lists_the_valid_keys():
    with pytest.raises(P.ParamsError, match=r"unknown key 'data.sources.acdc.rooot' \(valid keys here: assumed_slice_spacing_mm, assumed_spacing_mm, csv"):
        P.load(REPO / "params/smoke.yaml", ["data.sources.acdc.rooot=x"])


def test_the_shared_acdc_overlay_splits_its_70_patients_into_train_holdout_val_and_test(tmp_path):
    """params/acdc_shared.yaml on the 70 shared ACDC patients: 16 members, 16 held-out non-members, 8 validation
    patients and the other 30 as the test set, disjoint, with no cross-domain set."""
    root = _real("acdc_h5_train")
    params = P.load(project_root() / "params/acdc_shared.yaml", [f"data.root={root}"])
    slices = prepare(params, RunPaths(tmp_path / "run"))
    splits = json.loads((tmp_path / "run" / "splits.json").read_text())["sets"]
    assert {k: len(v) for k, v in splits.items()} == {"train": 16, "holdout": 16, "val": 8, "test": 30}
    assert len(set().union(*map(set, splits.values()))) == 70
    assert set(slices.meta["split"]) == {"train", "holdout", "val", "test"} and set(slices.meta["dataset"]) == {"acdc"}
