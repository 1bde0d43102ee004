"""ACDC in the preprocessed HDF5 layout of semi-supervised segmentation repositories.

- ``data/patientNNN_frameMM.h5``: a volume, datasets ``image`` (slices, H, W) and ``label``;
- ``data/slices/patientNNN_frameMM_slice_K.h5``: 2D slices (``image`` (H, W), ``label``), regrouped into volumes
  in the order of K (a volume file wins over slice files of the same patient and frame);
- ``train.list`` / ``val.list`` / ``test.list``: that layout's splits, kept as each volume's ``layout_split``
  (the test patients with ``data.test_split: layout``; otherwise the study makes its own patient-level splits).

Frame 01 is ED and the other labelled frame ES. Labels are ACDC's (remapped). No spacing is stored: the volume's
spacing is ``data.assumed_spacing_mm`` when set, else unknown (pixels are then taken at ``data.spacing_mm``); the
through-plane spacing ``data.assumed_slice_spacing_mm``, else unknown.
The arrays are ACDC's ``(Z, Y, X)`` stacks and are used as stored (:data:`cmrlib.data.io.ACDC_ORIENTATION`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import numpy as np

from .acdc import ACDC_TO_CANONICAL, DATASET, DOMAIN
from .io import ACDC_ORIENTATION, Case, LayoutError, bad, map_labels, require_root
from .records import BadCaseError, Volume

LAYOUT = ("ACDC (HDF5): expected data/patientNNN_frameMM.h5 volumes (datasets image, label) and/or "
          "data/slices/patientNNN_frameMM_slice_K.h5 slices under data.root, as made by the preprocessing scripts "
          "of semi-supervised segmentation repositories from the ACDC challenge data "
          "(https://www.creatis.insa-lyon.fr/Challenge/acdc/); for the official NIfTI layout use data.source=acdc")
_VOLUME = re.compile(r"^(patient\d{3})_frame(\d{2})\.h5$")
_SLICE = re.compile(r"^(patient\d{3})_frame(\d{2})_slice_(\d+)\.h5$")


def read_h5(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``image`` and ``label`` of one file; unreadable files and missing datasets are bad cases."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("image", "label") if k not in f]
            if missing:
                raise bad(path, f"missing dataset(s) {missing}; the file has {sorted(f.keys())}")
            return np.asarray(f["image"][()], dtype=np.float32), np.asarray(f["label"][()])
    except BadCaseError:
        raise
    except Exception as exc:  # h5py raises OSError, KeyError, ... for corrupt or truncated files
        raise bad(path, f"cannot read the HDF5 file (corrupt or truncated?): {type(exc).__name__}: {exc}") from exc


def _lists(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in ("train", "val", "test"):
        path = root / f"{name}.list"
        if path.is_file():
            for line in path.read_text().split():
                out[line.strip().removesuffix(".h5")] = name
    return out


def _phases(frames: list[int], where: str) -> dict[str, int]:
    """Frame 01 is ED, the other labelled frame ES."""
    if len(frames) != 2:
        raise bad(where, f"expected two labelled frames (01 = ED and ES), found frames {sorted(frames)}")
    ed = 1 if 1 in frames else min(frames)
    return {"ED": ed, "ES": next(f for f in frames if f != ed)}


def _load_volume(path: Path) -> tuple[np.ndarray, np.ndarray, list[int] | None]:
    image, label = read_h5(path)
    if image.ndim != 3:
        raise bad(path, f"expected a 3D volume (slices, H, W), got image shape {image.shape}")
    if image.shape != label.shape:
        raise bad(path, f"image shape {image.shape} and label shape {label.shape} differ")
    return image, label, None


def _load_slices(paths: list[tuple[int, Path]]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    images, labels = [], []
    first = paths[0][1]
    for _, path in paths:
        image, label = read_h5(path)
        if image.ndim != 2 or image.shape != label.shape:
            raise bad(path, f"expected a 2D slice with image and label of one shape, got {image.shape} and {label.shape}")
        if images and image.shape != images[0].shape:
            raise bad(path, f"slice shape {image.shape} differs from {images[0].shape} of {first}")
        images.append(image)
        labels.append(label)
    ks = [k for k, _ in paths]
    return np.stack(images), np.stack(labels), ks


def _case(patient: str, phase: str, frame: int, files, data, split: str) -> Volume:
    if isinstance(files, Path):
        image, label, ks = _load_volume(files)
        source = str(files)
    else:
        image, label, ks = _load_slices(files)
        source = str(files[0][1].parent / f"{patient}_frame{frame:02d}_slice_*.h5")
    assumed = data.assumed_spacing_mm
    indices, count = None, None
    if ks is not None:  # slice files: K may start at 0 or 1; keep gaps
        indices = np.asarray(ks) - min(ks)
        count = int(indices.max()) + 1
    return Volume(
        image=ACDC_ORIENTATION.apply(image),
        mask=ACDC_ORIENTATION.apply(map_labels(label, data, source, ACDC_TO_CANONICAL)),
        dataset=DATASET, patient=f"{DATASET}_{patient}", domain=DOMAIN, phase=phase,
        spacing=(assumed, assumed) if assumed else None, slice_spacing=data.assumed_slice_spacing_mm, source=source, slice_indices=indices, slice_count=count,
        layout_split=split, extra={"frame": frame},
    )


def _raise(exc: Exception) -> Volume:
    raise exc


def volumes(data, seed: int = 0) -> Iterator[Case]:
    root = require_root(data.root, "ACDC (HDF5)", LAYOUT)
    folder = root / "data" if (root / "data").is_dir() else root
    vol_files: dict[tuple[str, int], Path] = {}
    for path in folder.glob("patient*.h5"):
        m = _VOLUME.match(path.name)
        if m:
            vol_files[(m.group(1), int(m.group(2)))] = path
    slice_files: dict[tuple[str, int], list[tuple[int, Path]]] = defaultdict(list)
    if (folder / "slices").is_dir():
        for path in (folder / "slices").glob("patient*_slice_*.h5"):
            m = _SLICE.match(path.name)
            if m:
                slice_files[(m.group(1), int(m.group(2)))].append((int(m.group(3)), path))
    cases: dict[tuple[str, int], object] = {key: sorted(paths) for key, paths in slice_files.items()}
    cases.update(vol_files)  # a volume file wins
    if not cases:
        raise LayoutError(f"ACDC (HDF5): no patientNNN_frameMM.h5 files under {folder} or {folder / 'slices'}. {LAYOUT}")
    lists = _lists(root)
    frames_of: dict[str, list[int]] = defaultdict(list)
    for patient, frame in cases:
        frames_of[patient].append(frame)
    for patient in sorted(frames_of):
        where = str(folder / f"{patient}_frame*.h5")
        try:
            phases = _phases(frames_of[patient], where)
        except BadCaseError as exc:
            yield Case(where, lambda exc=exc: _raise(exc))
            continue
        for phase in data.phases:
            frame = phases[phase]
            files = cases[(patient, frame)]
            split = lists.get(f"{patient}_frame{frame:02d}", "")
            source = str(files) if isinstance(files, Path) else str(files[0][1])
            yield Case(source, lambda p=patient, ph=phase, fr=frame, fi=files, s=split: _case(p, ph, fr, fi, data, s))
