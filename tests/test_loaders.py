"""Real-data loaders (ACDC NIfTI, ACDC HDF5, M&Ms 4D and per-frame, generic NIfTI folders) on files the tests write,
and on the real samples in ../shared/data when they are there."""

from __future__ import annotations

import gzip
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import cmrlib
from cmrlib import params as P
from cmrlib.data import SOURCES, BadCaseError, LayoutError, build_slices, prepare
from cmrlib.data.anatomy import lv_enclosed_by_myo
from cmrlib.data.io import Case, Orientation, orientation_from_affine
from cmrlib.data.preprocess import preprocess_volume, resample_inplane
from cmrlib.labels import LV, MYO, RV
from cmrlib.paths import RunPaths

SHARED = Path(cmrlib.__file__).resolve().parents[2] / "shared" / "data"
S, H, W = 4, 40, 48
# in-plane directions of a real M&Ms short-axis stack whose (Z, Y, X) view is already the standard one
SA_DIRECTIONS = np.array([[-0.90, -0.28, 0.34], [0.0, -0.77, -0.64], [0.44, -0.57, 0.69]])
SA_DIRECTIONS /= np.linalg.norm(SA_DIRECTIONS, axis=0, keepdims=True)


# ---------------------------------------------------------------- fabricated data

def heart(shift: int = 0, lv_r: float = 6.0) -> np.ndarray:
    """(S, H, W) canonical labels: LV disc in a MYO ring, an RV blob on the image's left of the LV."""
    y, x = np.mgrid[:H, :W]
    cy, cx = 20 + shift, 28
    r = np.hypot(y - cy, x - cx)
    mask = np.zeros((S, H, W), np.int16)
    for z in range(S):
        rv = (np.hypot(y - (cy - 2), x - (cx - 13)) < 6) & (r >= lv_r + 3)
        mask[z][rv] = RV
        mask[z][(r < lv_r + 3) & (r >= lv_r)] = MYO
        mask[z][r < lv_r] = LV
    return mask


def image_of(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    level = np.array([100.0, 400.0, 150.0, 380.0])
    return (level[mask] + rng.normal(0, 10, mask.shape)).astype(np.float32)


def affine(spacing=(1.25, 1.25, 8.0), directions=None) -> np.ndarray:
    """Affine of a NIfTI (X, Y, Z) array with the given zooms (X, Y, Z); default axis-aligned."""
    a = np.eye(4)
    d = np.eye(3) if directions is None else np.asarray(directions)
    a[:3, :3] = d * np.asarray(spacing)[None, :]
    a[:3, 3] = [10.0, -20.0, 5.0]
    return a


def save_nifti(path: Path, stack: np.ndarray, aff: np.ndarray) -> Path:
    """Write a (slices, rows, cols) stack (or (T, slices, rows, cols)) as NIfTI (X, Y, Z[, T])."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = stack.transpose(2, 1, 0) if stack.ndim == 3 else stack.transpose(3, 2, 1, 0)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), aff), str(path))
    return path


def make_params(source: str, root: Path, **data) -> P.StudyParams:
    raw = {"run_name": "t", "seed": 0, "data": {"source": source, "root": str(root), "image_size": 32, "crop_mm": 60.0,
                                                 "spacing_mm": 1.25, **data}}
    return P.validate(raw)


def load_all(params) -> list:
    return [item.load() if isinstance(item, Case) else item for item in SOURCES[params.data.source](params.data, params.seed)]


def acdc_folder(root: Path, patients=("patient001", "patient002"), spacing=(1.5, 1.5, 10.0), testing=()) -> Path:
    """ACDC's official layout: ``training/patientNNN/``, and ``testing/`` for the patients in ``testing``."""
    to_acdc = np.array([0, 3, 2, 1])  # canonical -> ACDC numbering (1 RV, 2 MYO, 3 LV)
    for k, patient in enumerate(patients):
        folder = root / ("testing" if patient in testing else "training") / patient
        folder.mkdir(parents=True)
        (folder / "Info.cfg").write_text("ED: 1\nES: 12\nGroup: DCM\nHeight: 180.0\nNbFrame: 30\nWeight: 80.0\n")
        for frame, lv_r in ((1, 6.0), (12, 4.0)):
            mask = heart(k, lv_r)
            save_nifti(folder / f"{patient}_frame{frame:02d}.nii.gz", image_of(mask, k), affine(spacing))
            save_nifti(folder / f"{patient}_frame{frame:02d}_gt.nii.gz", to_acdc[mask].astype(np.uint8), affine(spacing))
    return root


def nifti_folder(root: Path, n: int = 3, spacing=(1.25, 1.25, 8.0), domains=("A",)) -> Path:
    rows = []
    for i in range(n):
        for phase, lv_r in (("ED", 6.0), ("ES", 4.0)):
            mask = heart(i % 3, lv_r)
            aff = affine(spacing, SA_DIRECTIONS)
            save_nifti(root / "img" / f"p{i}_{phase}.nii.gz", image_of(mask, i), aff)
            save_nifti(root / "lab" / f"p{i}_{phase}.nii.gz", mask.astype(np.uint8), aff)
            rows.append({"patient": f"p{i}", "domain": domains[i % len(domains)], "phase": phase,
                         "image": f"img/p{i}_{phase}.nii.gz", "label": f"lab/p{i}_{phase}.nii.gz"})
    pd.DataFrame(rows).to_csv(root / "cases.csv", index=False)
    return root


# ---------------------------------------------------------------- ACDC

def test_acdc_layout_remaps_labels_and_reads_phases(tmp_path):
    params = make_params("acdc", acdc_folder(tmp_path))
    vols = load_all(params)
    assert [(v.patient, v.phase) for v in vols] == [("acdc_patient001", "ED"), ("acdc_patient001", "ES"),
                                                    ("acdc_patient002", "ED"), ("acdc_patient002", "ES")]
    ed, es = vols[0], vols[1]
    np.testing.assert_array_equal(ed.mask, heart(0, 6.0))  # ACDC 1 RV, 2 MYO, 3 LV -> canonical, orientation kept
    np.testing.assert_array_equal(es.mask, heart(0, 4.0))  # ES is frame 12 from Info.cfg
    assert ed.mask[0, 20, 28] == LV and ed.mask[0, 18, 15] == RV and ed.mask[0, 20, 35] == MYO
    assert ed.domain == "ACDC" and ed.dataset == "acdc" and ed.extra["group"] == "DCM" and ed.spacing == (1.5, 1.5)
    assert ed.source.endswith("patient001_frame01.nii.gz")


def test_acdc_missing_root_and_wrong_layout_say_what_is_expected(tmp_path):
    with pytest.raises(P.ParamsError, match=r"--set data.root=PATH"):
        P.validate({"run_name": "t", "data": {"source": "acdc"}})
    (tmp_path / "something").mkdir()
    with pytest.raises(LayoutError, match=r"patientNNN/patientNNN_frameMM.nii.gz.*challenge site"):
        load_all(make_params("acdc", tmp_path))
    with pytest.raises(LayoutError, match=r"data/patientNNN_frameMM.h5"):
        load_all(make_params("acdc_h5", tmp_path))
    with pytest.raises(LayoutError, match=r"<code>/<code>_sa.nii.gz"):
        load_all(make_params("mnms", tmp_path))
    with pytest.raises(LayoutError, match=r"cases.csv"):
        load_all(make_params("nifti", tmp_path))


def _write_h5(path: Path, image: np.ndarray, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image)
        f.create_dataset("label", data=label)


def test_acdc_h5_volumes_and_regrouped_slices(tmp_path):
    to_acdc = np.array([0, 3, 2, 1])
    for frame, lv_r in ((1, 6.0), (12, 4.0)):
        mask = heart(0, lv_r)
        _write_h5(tmp_path / "data" / f"patient001_frame{frame:02d}.h5", image_of(mask) / 400, to_acdc[mask].astype(np.uint8))
    for frame in (1, 9):  # 11 slices numbered 1..11: slice_10 and slice_11 sort after slice_9
        for k in range(1, 12):
            mask = heart(0, 6.0)[0]
            image = np.full((H, W), float(k), np.float32) + (mask > 0)
            _write_h5(tmp_path / "data" / "slices" / f"patient002_frame{frame:02d}_slice_{k}.h5", image, to_acdc[mask].astype(np.uint8))
    (tmp_path / "train.list").write_text("patient002_frame01\npatient002_frame09\n")
    (tmp_path / "test.list").write_text("patient001_frame01\npatient001_frame12\n")
    params = make_params("acdc_h5", tmp_path, assumed_spacing_mm=1.4)
    vols = {(v.patient, v.phase): v for v in load_all(params)}
    assert set(vols) == {("acdc_patient001", "ED"), ("acdc_patient001", "ES"), ("acdc_patient002", "ED"), ("acdc_patient002", "ES")}
    np.testing.assert_array_equal(vols["acdc_patient001", "ES"].mask, heart(0, 4.0))
    v = vols["acdc_patient002", "ES"]
    assert v.extra["frame"] == 9 and v.layout_split == "train" and v.spacing == (1.4, 1.4)
    assert v.image.shape == (11, H, W) and [float(v.image[i].min()) for i in range(11)] == list(range(1, 12))
    assert list(v.slice_indices) == list(range(11)) and v.slice_count == 11
    assert vols["acdc_patient001", "ED"].spacing == (1.4, 1.4)
    assert make_params("acdc_h5", tmp_path).data.assumed_spacing_mm is None
    assert load_all(make_params("acdc_h5", tmp_path))[0].spacing is None


def test_acdc_h5_corrupt_file_is_a_bad_case_naming_it(tmp_path):
    mask = heart()
    _write_h5(tmp_path / "data" / "patient001_frame01.h5", image_of(mask), mask.astype(np.uint8))
    bad = tmp_path / "data" / "patient001_frame12.h5"
    bad.write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.raises(BadCaseError, match=r"patient001_frame12\.h5.*cannot read the HDF5 file"):
        load_all(make_params("acdc_h5", tmp_path))


# ---------------------------------------------------------------- M&Ms

def test_mnms_official_4d_layout_reads_frames_and_vendor_from_csv(tmp_path):
    root = tmp_path / "mnms"
    aff = affine((1.25, 1.25, 9.0), SA_DIRECTIONS)
    for code, vendor in (("A1A1A1", "A"), ("C2C2C2", "C")):
        masks = np.stack([heart(0, r) for r in (6.0, 5.5, 5.0, 4.0, 5.0)])  # (T, S, H, W): ES (smallest) at t=3
        save_nifti(root / "Training" / "Labeled" / code / f"{code}_sa.nii.gz", image_of(masks), aff)
        save_nifti(root / "Training" / "Labeled" / code / f"{code}_sa_gt.nii.gz", masks.astype(np.uint8), aff)
    unlabelled = np.stack([image_of(heart())] * 2)
    save_nifti(root / "Training" / "Unlabeled" / "U9U9U9" / "U9U9U9_sa.nii.gz", unlabelled, aff)
    pd.DataFrame({"External code": ["A1A1A1", "C2C2C2", "U9U9U9"], "VendorName": ["Siemens", "GE", "Canon"],
                  "Vendor": ["A", "C", "D"], "Centre": [1, 4, 5], "ED": [0, 0, 0], "ES": [3, 3, 1]}).to_csv(
        root / "mnms_info.csv")
    vols = load_all(make_params("mnms", root))
    assert [(v.patient, v.domain, v.phase) for v in vols] == [("mnms_A1A1A1", "A", "ED"), ("mnms_A1A1A1", "A", "ES"),
                                                              ("mnms_C2C2C2", "C", "ED"), ("mnms_C2C2C2", "C", "ES")]
    np.testing.assert_array_equal(vols[0].mask, heart(0, 6.0))
    np.testing.assert_array_equal(vols[1].mask, heart(0, 4.0))
    assert vols[1].extra == {"centre": "1", "vendor_name": "Siemens", "frame": 3} and vols[0].spacing == (1.25, 1.25)


def test_mnms_per_frame_layout_with_manifest(tmp_path):
    aff = affine((1.25, 1.25, 9.0), SA_DIRECTIONS)
    rows = []
    for code, vendor in (("B5B5B5", "A"), ("D4D4D4", "D")):
        for phase, r in (("ED", 6.0), ("ES", 4.0)):
            mask = heart(0, r)
            save_nifti(tmp_path / "images" / f"{code}_sa_{phase}.nii.gz", image_of(mask).astype(np.float64), aff)
            save_nifti(tmp_path / "labels" / f"{code}_sa_{phase}_gt.nii.gz", mask.astype(np.float64), aff)
            rows.append({"subject": code, "phase": phase, "vendor": vendor, "centre": 1})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    vols = load_all(make_params("mnms", tmp_path, phases=["ES"]))
    assert [(v.patient, v.domain, v.phase) for v in vols] == [("mnms_B5B5B5", "A", "ES"), ("mnms_D4D4D4", "D", "ES")]
    np.testing.assert_array_equal(vols[0].mask, heart(0, 4.0))
    assert vols[0].mask.dtype.kind == "i"


# ---------------------------------------------------------------- orientation and spacing

def _restore(stack: np.ndarray, aff: np.ndarray, swap: bool, flip_x: bool, flip_y: bool):
    """The same physical image stored with other voxel axes: returns (X, Y, Z) data and its affine."""
    data = stack.transpose(2, 1, 0)
    m = np.eye(4)  # new voxel -> old voxel
    if swap:
        data = data.transpose(1, 0, 2)
        m[:, [0, 1]] = m[:, [1, 0]]
    for axis, flip in ((0, flip_x), (1, flip_y)):
        if flip:
            data = np.flip(data, axis)
            col = m[:, axis].copy()
            m[:, axis] = -col
            m[:3, 3] += col[:3] * (data.shape[axis] - 1)
    return np.ascontiguousarray(data), aff @ m


@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("flip_x", [False, True])
@pytest.mark.parametrize("flip_y", [False, True])
def test_any_storage_of_the_same_heart_loads_in_one_orientation(tmp_path, swap, flip_x, flip_y):
    mask = heart()
    aff = affine((1.25, 1.25, 8.0), SA_DIRECTIONS)
    assert orientation_from_affine(aff) == Orientation()  # the reference storage needs no transform
    data, new_aff = _restore(mask.astype(np.uint8), aff, swap, flip_x, flip_y)
    nib.save(nib.Nifti1Image(data, new_aff), str(tmp_path / "lab.nii.gz"))
    nib.save(nib.Nifti1Image(data.astype(np.float32) * 100 + 1, new_aff), str(tmp_path / "img.nii.gz"))
    pd.DataFrame([{"patient": "p", "domain": "A", "phase": "ED", "image": "img.nii.gz", "label": "lab.nii.gz"}]).to_csv(
        tmp_path / "cases.csv", index=False)
    (vol,) = load_all(make_params("nifti", tmp_path, phases=["ED"]))
    np.testing.assert_array_equal(vol.mask, mask)  # RV left of the LV whatever the storage


def test_spacing_from_header_and_resampling(tmp_path):
    nifti_folder(tmp_path, n=1, spacing=(1.0, 2.0, 8.0))  # X (columns) 1 mm, Y (rows) 2 mm
    vol = load_all(make_params("nifti", tmp_path, phases=["ED"]))[0]
    assert vol.spacing == (2.0, 1.0)
    image, mask = resample_inplane(vol, 1.0)
    assert image.shape == (S, 2 * H, W) and mask.shape == (S, 2 * H, W)
    (tmp_path / "cases.csv").unlink()
    nifti_folder(tmp_path, n=1, spacing=(2.0, 2.0, 8.0))
    vol = load_all(make_params("nifti", tmp_path, phases=["ED"]))[0]
    assert vol.spacing == (2.0, 2.0) and resample_inplane(vol, 1.0)[0].shape == (S, 2 * H, 2 * W)
    out = preprocess_volume(vol, image_size=32, crop_mm=50.0, spacing_mm=1.0)
    assert out.images.shape == (S, 32, 32) and set(np.unique(out.masks)) == {0, LV, MYO, RV}


# ---------------------------------------------------------------- bad cases

def _one_case(root: Path, image: np.ndarray, label: np.ndarray, img_aff=None, lab_aff=None) -> Path:
    aff = affine((1.25, 1.25, 8.0), SA_DIRECTIONS)
    save_nifti(root / "img.nii.gz", image, aff if img_aff is None else img_aff)
    save_nifti(root / "lab.nii.gz", label, aff if lab_aff is None else lab_aff)
    pd.DataFrame([{"patient": "p", "domain": "A", "phase": "ED", "image": "img.nii.gz", "label": "lab.nii.gz"}]).to_csv(
        root / "cases.csv", index=False)
    return root


def _corrupt(path: Path) -> None:
    path.write_bytes(b"\x00garbage" * 50)


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _gz_truncate(path: Path) -> None:  # a valid gzip stream whose NIfTI payload stops early
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))


@pytest.mark.parametrize(
    "case, file, problem",
    [
        ("corrupt", "img.nii.gz", r"cannot read the NIfTI file"),
        ("truncated", "img.nii.gz", r"cannot read the NIfTI file"),
        ("truncated_payload", "lab.nii.gz", r"cannot read the NIfTI file"),
        ("shape", "img.nii.gz", r"image shape .* and label shape .* differ"),
        ("affine", "img.nii.gz", r"affines differ"),
        ("labels", "img.nii.gz", r"labels \[7\] outside 0\.\.3"),
        ("empty", "img.nii.gz", r"label map is empty"),
        ("nan", "img.nii.gz", r"NaN"),
        ("constant", "img.nii.gz", r"image is constant"),
    ],
)
def test_bad_cases_name_the_file_and_the_problem(tmp_path, case, file, problem):
    mask = heart().astype(np.uint8)
    image = image_of(mask)
    if case == "shape":
        _one_case(tmp_path, image, mask[:, :, :-2])
    elif case == "affine":
        _one_case(tmp_path, image, mask, lab_aff=affine((1.25, 1.25, 8.0)))
    elif case == "labels":
        mask = mask.copy(); mask[0, 0, 0] = 7
        _one_case(tmp_path, image, mask)
    elif case == "empty":
        _one_case(tmp_path, image, np.zeros_like(mask))
    elif case == "nan":
        image = image.copy(); image[1, 5, 5] = np.nan
        _one_case(tmp_path, image, mask)
    elif case == "constant":
        _one_case(tmp_path, np.full_like(image, 3.0), mask)
    else:
        _one_case(tmp_path, image, mask)
        {"corrupt": _corrupt, "truncated": _truncate, "truncated_payload": _gz_truncate}[case](tmp_path / file)
    params = make_params("nifti", tmp_path, phases=["ED"])
    with pytest.raises(BadCaseError) as err:
        build_slices(params)
    assert str(tmp_path / file) in str(err.value)
    assert err.match(problem)


def test_skip_keeps_the_good_cases_and_lists_the_bad_ones(tmp_path):
    root = nifti_folder(tmp_path / "data_root", n=3)
    _corrupt(root / "img" / "p1_ES.nii.gz")
    lab = nib.load(str(root / "lab" / "p2_ED.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros(lab.shape, np.uint8), lab.affine), str(root / "lab" / "p2_ED.nii.gz"))
    with pytest.raises(BadCaseError):
        build_slices(make_params("nifti", root))
    params = make_params("nifti", root, on_bad_case="skip", train_domains=["A"], n_train_patients=1,
                         n_holdout_patients=1, n_val_patients=0, n_test_patients=1, cross_domains=[])
    paths = RunPaths(tmp_path / "run")
    slices = prepare(params, paths)
    kept = set(zip(slices.meta["patient"], slices.meta["phase"]))
    assert kept == {("nifti_p0", "ED"), ("nifti_p0", "ES"), ("nifti_p1", "ED"), ("nifti_p2", "ES")}
    report = pd.read_csv(paths.data / "skipped_cases.csv")
    assert list(report.columns) == ["file", "reason"] and len(report) == 2
    assert report["file"].str.endswith("p1_ES.nii.gz").any() and report["reason"].str.contains("cannot read").any()
    assert report["file"].str.endswith("p2_ED.nii.gz").any() and report["reason"].str.contains("empty").any()


# ---------------------------------------------------------------- params files

@pytest.mark.parametrize("name, key", [("acdc", "data.sources.acdc.root"), ("mnms", "data.root"),
                                       ("mnms_to_acdc", "data.sources.mnms.root"), ("paper", "data.sources.mnms.root")])
def test_shipped_params_need_a_root_and_validate_with_one(tmp_path, name, key):
    path = Path(cmrlib.__file__).resolve().parents[1] / "params" / f"{name}.yaml"
    with pytest.raises(P.ParamsError, match=f"--set {key}=PATH"):
        P.load(path)
    roots = [f"{key}={tmp_path}"] + (["data.sources.acdc.root=" + str(tmp_path)] if name == "mnms_to_acdc" else [])
    d = P.load(path, roots).data
    assert str(tmp_path) in [s.root for s in d.source_list().values()] and d.on_bad_case == "error"
    assert d.n_val_patients > 0
    if name == "paper":
        assert (d.image_size, d.n_train_patients, d.train_domains, d.cross_domains) == (128, 150, ["A", "B"], None)
        assert list(d.source_list()) == ["mnms"]  # ACDC is optional
    if name == "mnms_to_acdc":
        assert list(d.source_list()) == ["mnms", "acdc"] and d.cross_domains == ["C", "D", "ACDC"]
    if name == "acdc":
        assert d.train_domains == ["ACDC"] and list(d.source_list()) == ["acdc"]


def test_params_reject_unknown_choices():
    with pytest.raises(P.ParamsError, match="on_bad_case"):
        P.validate({"run_name": "t", "data": {"on_bad_case": "ignore"}})
    with pytest.raises(P.ParamsError, match="assumed_spacing_mm"):
        P.validate({"run_name": "t", "data": {"assumed_spacing_mm": 0.0}})


# ---------------------------------------------------------------- the real samples (team machines only)

def _real(name: str) -> Path:
    path = SHARED / name
    if not path.is_dir():
        pytest.skip(f"{path} absent (real samples exist only on the team's machines)")
    return path


def _rv_angle(mask: np.ndarray) -> float:
    d = np.argwhere(mask == RV).mean(0) - np.argwhere(mask == LV).mean(0)
    return float(np.degrees(np.arctan2(-d[0], d[1])) % 360)  # 0 right, 90 up, 180 left


@pytest.mark.parametrize("source, sample", [("acdc_h5", "acdc_h5_sample"), ("mnms", "mnms_sample")])
def test_real_samples_anatomy_orientation_and_crop(source, sample):
    params = P.validate({"run_name": "t", "data": {"source": source, "root": str(_real(sample))}})
    vols = load_all(params)
    assert len({v.patient for v in vols}) >= 2 and {v.phase for v in vols} == {"ED", "ES"}
    with_lv = [m for v in vols for m in v.mask if (m == LV).any()]
    assert np.mean([lv_enclosed_by_myo(m) for m in with_lv]) >= 0.8
    both = [m for v in vols for m in v.mask if (m == LV).any() and (m == RV).sum() > 20]
    angles = np.array([_rv_angle(m) for m in both])
    assert np.mean((angles > 100) & (angles < 260)) >= 0.9, angles  # RV on the image's left of the LV
    d = params.data
    for v in vols:
        out = preprocess_volume(v, image_size=d.image_size, crop_mm=d.crop_mm, spacing_mm=d.spacing_mm,
                                percentiles=d.intensity_percentiles)
        edges = np.concatenate([out.masks[:, 0], out.masks[:, -1], out.masks[:, :, 0], out.masks[:, :, -1]], axis=1)
        assert not (edges > 0).any(), f"{v.source}: the crop cuts the heart"
        assert out.images.min() >= -1 and out.images.max() <= 1


def test_real_mnms_sample_vendor_domains_and_spacing():
    vols = load_all(P.validate({"run_name": "t", "data": {"source": "mnms", "root": str(_real("mnms_sample"))}}))
    by = {(v.patient, v.phase): v for v in vols}
    assert by["mnms_B5F8L9", "ED"].domain == "A" and by["mnms_C8O0P2", "ES"].domain == "C"
    assert np.allclose(by["mnms_B5F8L9", "ED"].spacing, (1.1667, 1.1667), atol=1e-3)
    assert by["mnms_C8O0P2", "ED"].mask.shape == (10, 256, 256)
    assert int((by["mnms_B5F8L9", "ED"].mask == LV).sum()) == 11062  # voxels per class as in manifest.csv
