"""These tests cover the rows of the catalogue in docs/bad_inputs.md that no other test triggers (error type and message)."""

from __future__ import annotations

import argparse
import json
import re

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cmrlib import __main__ as cli
from cmrlib import export, paths as paths_mod, study
from cmrlib.data import SOURCES, BadCaseError, LayoutError, SliceSet, acdc, acdc_h5, build_slices, mnms, nifti
from cmrlib.data.preprocess import check_volume, concat
from cmrlib.data.records import Volume
from cmrlib.data.splits import load_splits, make_splits, save_splits
from cmrlib.params import ParamsError, load
from cmrlib.paths import RunPaths
from cmrlib.training import CHECKPOINT_FORMAT, CheckpointError, TrainConfig, load_checkpoint, train

from conftest import REPO
from test_export import fake_run
from test_loaders import SA_DIRECTIONS, _write_h5, acdc_folder, affine, heart, image_of, load_all, make_params, save_nifti
from test_splits import fake_meta
from test_training import TinyDenoiser

SMOKE = REPO / "params/smoke.yaml"
AFF = affine((1.25, 1.25, 8.0), SA_DIRECTIONS)
MASK = heart().astype(np.uint8)  # (4, 40, 48)
IMAGE = image_of(MASK)
GOOD = (IMAGE, MASK)


# ---------------------------------------------------------------- params

@pytest.mark.parametrize("overrides, message", [
    pytest.param(["data..root=x"], r"--set 'data\.\.root=x': empty key part in 'data\.\.root'", id="empty_key_part"),
    pytest.param(["=3"], r"--set '=3': empty key part in ''", id="empty_key"),
    pytest.param(["seed.x=1"], r"--set 'seed\.x=1': 'seed' is not a section", id="not_a_section"),
    pytest.param(["run_name=../x"], r"run_name: String should match pattern", id="run_name"),
    pytest.param(["data.intensity_percentiles=[50.0, 10.0]"],
                 r"intensity_percentiles must satisfy 0 <= low < high <= 100, got \[50\.0, 10\.0\]", id="percentiles"),
    pytest.param(["data.source=nifti", "data.root=/nonexistent/cmr"],
                 r"data\.root /nonexistent/cmr does not exist \(source 'nifti', expected NIfTI", id="root_missing"),
    pytest.param(["data.source=mnms", "data.root=params", "data.info_csv=nope.csv"],
                 rf"data\.info_csv {re.escape(str(REPO / 'params/nope.csv'))} does not exist", id="info_csv_missing"),
    pytest.param(["data.cross_domains=[B, C]"], r"domains \['B'\] are in both train_domains and cross_domains", id="domain_overlap"),
    pytest.param(["generators.ddpm.unet.attention=[true]"],
                 r"widths \[8, 16\] and attention \[True\] must have the same length", id="unet_lengths"),
    pytest.param(["generators.ddpm.train.keep_fractions=[0.5, 0.25]"],
                 r"keep_fractions must be increasing values in \(0, 1\], got \[0\.5, 0\.25\]", id="keep_fractions_order"),
    pytest.param(["generators.fm.train.keep_fractions=[0.5, 1.5]"],
                 r"keep_fractions must be increasing values in \(0, 1\], got \[0\.5, 1\.5\]", id="keep_fractions_range"),
    pytest.param(["generators.mask_prior.family=diffusion"],
                 r"sample\.sampler 'midpoint' does not fit family 'diffusion'; choose one of ancestral, ddim, dpmsolver\+\+",
                 id="sampler_family"),
])
def test_params_overrides_are_checked(overrides, message):
    with pytest.raises(ParamsError, match=message) as err:
        load(SMOKE, overrides)
    assert overrides[0] in str(err.value)  # the override is named (validation errors also name the file)


def test_params_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- run_name: x\n")
    with pytest.raises(ParamsError, match=rf"{re.escape(str(path))}: expected a mapping of keys to values at the top level, "
                                          r"got list"):
        load(path)


# ---------------------------------------------------------------- loaders: fabricated files

def write_csv(path, rows=None):
    """A CSV of ``rows`` (dicts); None: an empty file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("") if rows is None else pd.DataFrame(rows).to_csv(path, index=False)


def touch(root, *names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()


def save_any(path, array, aff=AFF):
    """A NIfTI of any rank, its affine kept as given (stored as the sform only, so a degenerate one is written)."""
    img = nib.Nifti1Image(np.ascontiguousarray(np.asarray(array).T), None)
    img.set_qform(None, code=0)
    img.set_sform(aff, code=1)
    nib.save(img, str(path))


def case_list(root, image=None, label=None, aff=AFF, **row):
    """``cases.csv`` with one ED case img.nii.gz / lab.nii.gz (``row`` adds or replaces columns), and the files
    when ``image`` / ``label`` are given."""
    for name, array in (("img", image), ("lab", label)):
        if array is not None:
            save_any(root / f"{name}.nii.gz", array, aff)
    write_csv(root / "cases.csv", [{"patient": "p", "domain": "A", "phase": "ED", "image": "img.nii.gz",
                                   "label": "lab.nii.gz", **row}])


def h5_files(root, files):
    """``data/<name>`` HDF5 files from {name: (image, label)}; a label None leaves the dataset out."""
    for name, (image, label) in files.items():
        _write_h5(root / "data" / name, image, image if label is None else label)
        if label is None:
            with h5py.File(root / "data" / name, "a") as f:
                del f["label"]


def mnms_official(root, *csvs):
    """Subject B5 in the official 4D layout (empty files: the errors come before any read), and (name, rows) CSVs."""
    touch(root, "B5/B5_sa.nii.gz", "B5/B5_sa_gt.nii.gz")
    for name, rows in csvs:
        write_csv(root / name, rows)


def mnms_per_frame(root, rows=None, readable=False):
    """Subject B5's ED frame in the per-frame layout (real NIfTI files if ``readable``), with a manifest of ``rows``."""
    if readable:
        save_nifti(root / "images/B5_sa_ED.nii.gz", IMAGE, AFF)
        save_nifti(root / "labels/B5_sa_ED_gt.nii.gz", MASK, AFF)
    else:
        touch(root, "images/B5_sa_ED.nii.gz")
    if rows is not None:
        write_csv(root / "manifest.csv", rows)


def acdc_info(root, text=None):
    """One ACDC patient whose Info.cfg holds ``text`` (None: no Info.cfg)."""
    info = acdc_folder(root, patients=("patient001",)) / "training/patient001/Info.cfg"
    info.unlink() if text is None else info.write_text(text)


INFO = {"code": "B5", "vendor": "A", "ED": 0, "ES": 1}
SLICE1, SLICE2 = "slices/patient001_frame01_slice_1.h5", "slices/patient001_frame01_slice_2.h5"
ES_VOLUME = {"patient001_frame12.h5": GOOD}
GOOD_SLICE, SMALL_SLICE = (IMAGE[0], MASK[0]), (IMAGE[0, :-1], MASK[0, :-1])
IMAGE4, MASK4 = np.stack([IMAGE, IMAGE]), np.stack([MASK, MASK])  # 2 frames
DEGENERATE = affine((0.0, 1.25, 8.0))  # a zero in-plane axis


@pytest.mark.parametrize("source, setup, extra, error, file, message", [
    # ACDC
    pytest.param("acdc", lambda r: acdc_info(r), {}, BadCaseError, "training/patient001/Info.cfg",
                 r"Info\.cfg not found \(it gives the ED and ES frames\)", id="acdc_no_info_cfg"),
    pytest.param("acdc", lambda r: acdc_info(r, "ED: 1\n"), {}, BadCaseError, "training/patient001/Info.cfg",
                 r"cannot read the ED and ES frames from Info\.cfg \(KeyError: 'ES'\)", id="acdc_info_without_es"),
    pytest.param("acdc", lambda r: acdc_info(r, "ED: one\nES: 12\n"), {}, BadCaseError, "training/patient001/Info.cfg",
                 r"cannot read the ED and ES frames from Info\.cfg \(ValueError: invalid literal", id="acdc_info_not_integer"),
    # ACDC, HDF5
    pytest.param("acdc_h5", lambda r: h5_files(r, {"patient001_frame01.h5": (IMAGE, None)} | ES_VOLUME), {}, BadCaseError,
                 "data/patient001_frame01.h5", r"missing dataset\(s\) \['label'\]; the file has \['image'\]",
                 id="h5_missing_dataset"),
    pytest.param("acdc_h5", lambda r: h5_files(r, {"patient001_frame01.h5": GOOD}), {}, BadCaseError, "data/patient001_frame*.h5",
                 r"expected two labelled frames \(01 = ED and ES\), found frames \[1\]", id="h5_one_frame"),
    pytest.param("acdc_h5", lambda r: h5_files(r, {"patient001_frame01.h5": GOOD_SLICE} | ES_VOLUME), {}, BadCaseError,
                 "data/patient001_frame01.h5", r"expected a 3D volume \(slices, H, W\), got image shape \(40, 48\)",
                 id="h5_volume_not_3d"),
    pytest.param("acdc_h5", lambda r: h5_files(r, {"patient001_frame01.h5": (IMAGE, MASK[:, :-1])} | ES_VOLUME), {},
                 BadCaseError, "data/patient001_frame01.h5",
                 r"image shape \(4, 40, 48\) and label shape \(4, 39, 48\) differ", id="h5_volume_shapes"),
    pytest.param("acdc_h5", lambda r: h5_files(r, {SLICE1: GOOD} | ES_VOLUME), {}, BadCaseError, f"data/{SLICE1}",
                 r"expected a 2D slice with image and label of one shape, got \(4, 40, 48\) and \(4, 40, 48\)",
                 id="h5_slice_not_2d"),
    pytest.param("acdc_h5", lambda r: h5_files(r, {SLICE1: GOOD_SLICE, SLICE2: SMALL_SLICE} | ES_VOLUME), {}, BadCaseError,
                 f"data/{SLICE2}", r"slice shape \(39, 48\) differs from \(40, 48\) of .*slice_1\.h5", id="h5_slice_shapes"),
    # M&Ms
    pytest.param("mnms", lambda r: mnms_official(r), {}, LayoutError, "",
                 r"M&Ms: no information CSV \(code, vendor, ED, ES\) under .*; give it with --set data\.info_csv=PATH",
                 id="mnms_no_info_csv"),
    pytest.param("mnms", lambda r: mnms_official(r, ("a.csv", [INFO]), ("b.csv", [INFO])), {}, LayoutError, "a.csv",
                 r"M&Ms: several information CSVs under .*b\.csv.*; choose one with --set data\.info_csv=PATH",
                 id="mnms_several_info_csvs"),
    pytest.param("mnms", lambda r: mnms_official(r, ("info.csv", [{"code": "B5", "ED": 0, "ES": 1}])), {"info_csv": "info.csv"},
                 LayoutError, "info.csv", r"the M&Ms information CSV lacks column\(s\) \['vendor'\] \(has \['code', 'ED', 'ES'\]\)",
                 id="mnms_csv_columns"),
    pytest.param("mnms", lambda r: mnms_official(r, ("info.csv", None)), {"info_csv": "info.csv"}, LayoutError, "info.csv",
                 r"cannot read the M&Ms information CSV: EmptyDataError", id="mnms_unreadable_csv"),
    pytest.param("mnms", lambda r: mnms_per_frame(r), {}, LayoutError, "",
                 r"M&Ms: no manifest\.csv or information CSV with the vendors under", id="mnms_per_frame_no_manifest"),
    pytest.param("mnms", lambda r: mnms_per_frame(r, [{"subject": "X1", "phase": "ED", "vendor": "A"}]), {}, BadCaseError,
                 "images/B5_sa_ED.nii.gz", r"subject B5 is not in .*manifest\.csv", id="mnms_per_frame_unknown_subject"),
    pytest.param("mnms", lambda r: mnms_official(r, ("info.csv", [INFO | {"code": "X1"}])), {}, BadCaseError,
                 "B5/B5_sa.nii.gz", r"subject B5 is not in .*info\.csv", id="mnms_official_unknown_subject"),
    pytest.param("mnms", lambda r: mnms_per_frame(r, [{"subject": "B5", "phase": "ED", "vendor": ""}], readable=True), {},
                 BadCaseError, "images/B5_sa_ED.nii.gz", r"no vendor for subject B5 in the information CSV", id="mnms_no_vendor"),
    pytest.param("mnms", lambda r: mnms_official(r, ("info.csv", [INFO | {"ED": ""}])), {}, BadCaseError, "info.csv",
                 r"no ED frame index for subject B5", id="mnms_no_frame_index"),
    # NIfTI folder
    pytest.param("nifti", lambda r: write_csv(r / "cases.csv"), {}, LayoutError, "cases.csv",
                 r"cannot read the case list: EmptyDataError", id="nifti_unreadable_csv"),
    pytest.param("nifti", lambda r: write_csv(r / "cases.csv", [{"patient": "p", "domain": "A", "phase": "ED", "image": "i"}]), {},
                 LayoutError, "cases.csv", r"missing column\(s\) \['label'\]", id="nifti_csv_columns"),
    pytest.param("nifti", lambda r: case_list(r, phase="XX"), {}, LayoutError, "cases.csv",
                 r"phase must be ED or ES, found \['XX'\]", id="nifti_phase"),
    pytest.param("nifti", lambda r: case_list(r, frame="x"), {}, BadCaseError, "cases.csv",
                 r"line 2: frame 'x' is not an integer", id="nifti_frame_not_integer"),
    pytest.param("nifti", lambda r: case_list(r), {}, BadCaseError, "img.nii.gz", r"img\.nii\.gz: file not found",
                 id="nifti_file_missing"),
    pytest.param("nifti", lambda r: case_list(r, IMAGE4, MASK4), {}, BadCaseError, "img.nii.gz",
                 r"4D file \(48, 40, 4, 2\) but no frame given", id="nifti_4d_without_frame"),
    pytest.param("nifti", lambda r: case_list(r, IMAGE4, MASK4, frame=5), {}, BadCaseError, "img.nii.gz",
                 r"frame 5 outside the file's 2 frames", id="nifti_frame_outside"),
    pytest.param("nifti", lambda r: case_list(r, IMAGE, MASK, frame=1), {}, BadCaseError, "img.nii.gz",
                 r"3D file \(48, 40, 4\) but frame 1 requested", id="nifti_3d_with_frame"),
    pytest.param("nifti", lambda r: case_list(r, IMAGE[0], MASK[0]), {}, BadCaseError, "img.nii.gz",
                 r"expected a 3D or 4D image, got shape \(48, 40\)", id="nifti_not_3d_or_4d"),
    pytest.param("nifti", lambda r: case_list(r, IMAGE, MASK, aff=DEGENERATE), {}, BadCaseError, "img.nii.gz",
                 r"img\.nii\.gz: degenerate affine \[\[0\.0, 0\.0, 0\.0, 10\.0\]", id="nifti_degenerate_affine"),
])
def test_loader_errors_name_the_file(tmp_path, source, setup, extra, error, file, message):
    setup(tmp_path)
    with pytest.raises(error, match=message) as err:
        load_all(make_params(source, tmp_path, **extra))
    assert str(tmp_path / file) in str(err.value)


@pytest.mark.parametrize("root", ["unset", "file"])
@pytest.mark.parametrize("module", [acdc, acdc_h5, mnms, nifti], ids=["acdc", "acdc_h5", "mnms", "nifti"])
def test_loader_root_must_be_a_folder(tmp_path, module, root):
    """The params check that the root exists; a loader given other data params (a model_copy skips validation, a
    file passes exists()) still says what is wrong and which layout it expects."""
    (tmp_path / "file.txt").touch()
    data = make_params("nifti", tmp_path / "file.txt").data
    if root == "unset":
        data, problem = data.model_copy(update={"root": None}), r"data\.root is not set; give it with --set data\.root=PATH\."
    else:
        problem = rf"data\.root {re.escape(str(tmp_path / 'file.txt'))} is not a folder\."
    with pytest.raises(LayoutError, match=problem) as err:
        list(module.volumes(data))
    assert module.LAYOUT in str(err.value)


def test_no_slices_when_every_case_is_skipped(tmp_path):
    case_list(tmp_path)  # its files are missing: a bad case
    with pytest.raises(ValueError, match=r"no slices from the source\(s\) nifti: every case was empty or skipped "
                                         rf"\(see {re.escape(str(tmp_path / 'data/skipped_cases.csv'))}\)"):
        build_slices(make_params("nifti", tmp_path, on_bad_case="skip"), tmp_path / "data")
    with pytest.raises(ValueError, match="no slices: every case was empty or skipped"):
        concat([])


def test_unknown_phantom_domain():
    data = load(SMOKE, ["data.phantom.domains=[A, E]"]).data
    with pytest.raises(ValueError, match=r"data\.phantom\.domains: unknown domains \['E'\]; the phantom has \['A', 'B', 'C', 'D'\]"):
        list(SOURCES["phantom"](data, 0))


@pytest.mark.parametrize("volume, message", [
    pytest.param(dict(image=IMAGE[0], mask=MASK[0]), r"expected a 3D stack \(slices, H, W\), got shape \(40, 48\)", id="not_3d"),
    pytest.param(dict(image=IMAGE, mask=MASK[:, :-1]), r"image shape \(4, 40, 48\) and label shape \(4, 39, 48\) differ",
                 id="shapes"),
])
def test_check_volume_of_a_hand_made_volume(volume, message):
    """Every loader checks these earlier; a Volume made by hand (a new source, a notebook) reaches check_volume."""
    vol = Volume(**volume, dataset="x", patient="x1", domain="A", phase="ED", source="mine.nii.gz")
    with pytest.raises(BadCaseError, match=r"mine\.nii\.gz \(patient x1, ED\): " + message):
        check_volume(vol)


def _slices(n_images=2, n_masks=2, splits=("train", "train")):
    meta = pd.DataFrame({"split": list(splits)})
    return SliceSet(np.zeros((n_images, 4, 4), np.float32), np.zeros((n_masks, 4, 4), np.uint8), meta)


@pytest.mark.parametrize("call, error, message", [
    pytest.param(lambda tmp: SliceSet.load(tmp), FileNotFoundError,
                 r"slices\.npz does not exist: it is written by the notebook 00_data; run it first", id="load_missing"),
    pytest.param(lambda tmp: _slices(n_masks=3), ValueError, r"SliceSet: 2 images, 3 masks, 2 metadata rows", id="lengths"),
    pytest.param(lambda tmp: _slices().split("valid"), KeyError, r"no split 'valid'; this set has \['train'\]", id="unknown_split"),
])
def test_slice_set_errors(tmp_path, call, error, message):
    with pytest.raises(error, match=message):
        call(tmp_path)


# ---------------------------------------------------------------- splits

OVERLAP = {"sets": {"train": ["p1"], "test": ["p1"]}}


def _edited_splits(path):
    path.write_text(json.dumps(OVERLAP))
    return load_splits(path)


@pytest.mark.parametrize("call, error, message", [
    pytest.param(lambda p: make_splits(fake_meta(domains="AB"), seed=0, train_domains=["A"], n_train=1, n_holdout=0,
                                       n_test=0, cross_domains=["Z"]), ValueError,
                 r"data\.cross_domains \['Z'\] not in the data \(domains present: \['A', 'B'\]\)", id="cross_domains"),
    pytest.param(lambda p: save_splits(p, OVERLAP), ValueError, r"patient p1 is in both 'train' and 'test'", id="overlap_on_save"),
    pytest.param(_edited_splits, ValueError, r"patient p1 is in both 'train' and 'test'", id="overlap_on_load"),
    pytest.param(load_splits, FileNotFoundError, r"splits\.json does not exist: it is written by the notebook 00_data; run it first",
                 id="missing"),
])
def test_splits_errors(tmp_path, call, error, message):
    with pytest.raises(error, match=message):
        call(tmp_path / "splits.json")


# ---------------------------------------------------------------- runner

def test_unknown_stage_in_from():
    with pytest.raises(study.StageFailed, match=r"no stage 'nope'; stages: 00_data, "):
        study.run(SMOKE, start="nope", echo=lambda *_: None)


def test_missing_kernel_says_how_to_install_it(tmp_path):
    with pytest.raises(study.StageFailed, match=r"Jupyter kernel 'no-such-kernel' is not installed: run `make install`"):
        study.run(SMOKE, runs_dir=tmp_path, kernel="no-such-kernel", echo=lambda *_: None)
    assert not (tmp_path / "smoke").exists()


def test_notebook_that_fails_outside_a_cell(tmp_path):
    notebook = tmp_path / "00_unreadable.ipynb"
    notebook.write_text("{}")  # JSON, but no notebook: papermill fails before any cell runs
    with pytest.raises(study.StageFailed, match=r"(?s)^stage 00_unreadable failed: ValidationError: .*full traceback in the executed "
                                                r"notebook .*00_unreadable\.ipynb$") as err:
        study.execute_stage(study.Stage("00_unreadable", notebook), RunPaths(tmp_path / "run"))
    assert "in cell" not in str(err.value)


def test_require_names_the_stage(tmp_path):
    paths = RunPaths(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(paths.splits))} does not exist: it is written by the notebook "
                                                r"00_data\. Run it first, e\.g\. `python -m cmrlib\.study run "
                                                r".*params\.yaml --only 00_data`"):
        paths.require(paths.splits, "00_data")


def test_project_root_outside_the_repository(tmp_path, monkeypatch):
    monkeypatch.setattr(paths_mod, "__file__", str(tmp_path / "cmrlib" / "paths.py"))
    with pytest.raises(RuntimeError, match=rf"cmrlib is not imported from its repository \({re.escape(str(tmp_path))} has no "
                                           r"pyproject\.toml\); install it with `pip install -e \.`.*CMRLIB_RUNS_DIR"):
        paths_mod.project_root()


# ---------------------------------------------------------------- training

@pytest.mark.parametrize("make, message", [
    pytest.param(lambda: TrainConfig(steps=0, lr=-1.0), r"invalid TrainConfig: steps=0 must be >= 1; lr=-1\.0 must be > 0",
                 id="values"),
    pytest.param(lambda: TrainConfig.from_dict({"step": 3}), r"unknown TrainConfig keys \['step'\]; valid keys: \[.*'steps'",
                 id="unknown_keys"),
])
def test_train_config_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("payload, weights, error, message", [
    pytest.param({"obj": argparse.Namespace(a=1)}, "ema", CheckpointError,
                 r"holds objects other than tensors and plain values.*not written by cmrlib\.training", id="pickled_objects"),
    pytest.param({"model": {}}, "ema", CheckpointError, r"is not a cmrlib\.training checkpoint \(no format 'cmrlib\.training/1'\)",
                 id="not_cmrlib"),
    pytest.param({"format": CHECKPOINT_FORMAT, "config": {"hidden": 4}, "ema": TinyDenoiser(hidden=4).state_dict()}, "ema",
                 CheckpointError, r"the weights in .* do not fit the given model \(checkpoint config: \{'hidden': 4\}\)",
                 id="other_model"),
    pytest.param({}, "x", ValueError, r"weights='x': expected 'ema' or 'raw'", id="weights"),
])
def test_load_checkpoint_errors(tmp_path, payload, weights, error, message):
    path = tmp_path / "last.pt"
    torch.save(payload, path)
    with pytest.raises(error, match=message) as err:
        load_checkpoint(path, TinyDenoiser(), weights=weights)
    assert error is ValueError or str(path) in str(err.value)


def tiny(loss=None, **attributes) -> nn.Module:
    """A TinyDenoiser whose loss is passed through ``loss`` and with other attributes set."""
    model = TinyDenoiser()
    if loss is not None:
        base = model.loss
        model.loss = lambda *args: loss(base(*args))
    for name, value in attributes.items():
        setattr(model, name, value)
    return model


@pytest.mark.parametrize("make, n_cond, batch_size, error, message", [
    pytest.param(lambda: nn.Linear(1, 1), 8, 4, TypeError,
                 r"Linear must have a loss\(x, cond, generator\) method and a dict config", id="no_loss"),
    pytest.param(tiny, 7, 4, ValueError, r"cond has 7 samples but x has 8", id="cond_length"),
    pytest.param(tiny, 8, 16, ValueError, r"batch_size=16 is larger than the data \(8 samples\)", id="batch_size"),
    pytest.param(lambda: tiny(config={"hidden": {8}}), 8, 4, TypeError,
                 r"TinyDenoiser\.config must be a dict of JSON-able values \(it is stored in the checkpoint\)", id="config"),
    pytest.param(lambda: tiny(lambda loss: loss.expand(2)), 8, 4, ValueError,
                 r"TinyDenoiser\.loss must return a scalar, got shape \(2,\)", id="loss_shape"),
    pytest.param(lambda: tiny(lambda loss: loss * float("nan")), 8, 4, FloatingPointError,
                 r"tiny: the training loss is nan at step 1; lower lr or set grad_clip\. .*last\.pt holds the last good checkpoint",
                 id="loss_nan"),
])
def test_train_refuses_bad_inputs(tmp_path, make, n_cond, batch_size, error, message):
    x, cond = torch.zeros(8, 1, 8, 8), torch.zeros(n_cond, 2, 8, 8)
    config = TrainConfig(steps=1, batch_size=batch_size, warmup_steps=0, log_every=1)
    with pytest.raises(error, match=message):
        train(make(), x, cond, config, tmp_path, desc="tiny", progress=False)


# ---------------------------------------------------------------- export

@pytest.mark.parametrize("call", [
    pytest.param(lambda tmp: export.export(tmp, "gan", "npz", tmp / "out"), id="export"),
    pytest.param(lambda tmp: export.generate(tmp, "gan", 1), id="generate"),
])
def test_unknown_arm(tmp_path, call):
    with pytest.raises(ValueError, match=r"unknown arm 'gan'; choose one of: ddpm, ldm, fm"):
        call(tmp_path)


@pytest.mark.parametrize("copy_share", [pytest.param(None, id="missing"), pytest.param(float("nan"), id="nan")])
def test_privacy_gate_needs_both_numbers(copy_share):
    results = {"arm": "ddpm", "released_auc": 0.5} | ({} if copy_share is None else {"copy_share": copy_share})
    with pytest.raises(export.PrivacyGateError, match=r"arm 'ddpm' refused: copy_share is missing from the privacy results\. Raise"):
        export.privacy_gate(load(SMOKE), results)


@pytest.mark.parametrize("arm, remove, error, message", [
    pytest.param("ddpm", "metrics/privacy.json", FileNotFoundError,
                 r"privacy\.json does not exist: the privacy gate needs the results of the notebook 50_privacy",
                 id="no_privacy_json"),
    pytest.param("ldm", None, KeyError, r"privacy\.json has no privacy results for arm 'ldm'", id="no_privacy_row"),
    pytest.param("ddpm", "samples/ddpm/samples.csv", FileNotFoundError,
                 r"samples/ddpm/samples\.csv does not exist: it is written by the stage 20_generator\[ddpm\]; run it first",
                 id="no_samples_csv"),
])
def test_export_missing_inputs(tmp_path, arm, remove, error, message):
    paths = fake_run(tmp_path)
    if remove:
        (paths.root / remove).unlink()
    with pytest.raises(error, match=message):
        export.export(paths.root, arm, "npz", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [
    pytest.param(["generate", "run", "--arm", "fm", "--n", "0"], r"error: --n must be at least 1", id="n_zero"),
    pytest.param(["generate", "run", "--arm", "gan", "--n", "1"], r"argument --arm: invalid choice: 'gan'", id="arm"),
    pytest.param(["export", "run", "--arm", "ddpm", "--format", "dicom", "--out", "o"], r"argument --format: invalid choice: 'dicom'",
                 id="format"),
    pytest.param(["generate", "run", "--model", "m", "--n", "1", "--out", "o"], r"error: give a RUN \(with --arm\) or --model DIR",
                 id="run_and_model"),
    pytest.param(["generate", "run", "--n", "1"], r"error: --arm is required with a RUN", id="run_without_arm"),
    pytest.param(["generate", "run", "--arm", "fm", "--masks", "m"], r"error: --out DIR is required with --model or --masks",
                 id="masks_without_out"),
    pytest.param(["generate", "run", "--arm", "fm", "--n", "1", "--masks", "m"], r"argument --masks: not allowed with argument --n",
                 id="n_and_masks"),
    pytest.param(["generate", "--model", "m", "--out", "o"], r"one of the arguments --n --masks is required", id="no_masks"),
])
def test_cli_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)
