"""Shared reading helpers of the real-data loaders: NIfTI files, label remaps, short-axis orientation, lazy cases.

Every loader turns its files into :class:`~cmrlib.data.records.Volume` stacks ``(slices, rows, cols)`` in ONE display
orientation, the one of the embedded phantom and of the standard radiological short-axis view: the heart seen from
the apex, anterior towards the top, the RV on the image's left of the LV (slightly up), the lateral wall on the right.

A NIfTI array is ``(X, Y, Z[, T])`` (voxel axes 0, 1, 2). It becomes a stack by ``array.transpose(2, 1, 0)``
(rows along voxel axis 1, columns along voxel axis 0, which is also what SimpleITK's ``GetArrayFromImage`` gives),
followed by a dihedral in-plane transform (:class:`Orientation`: optional row/column swap, then flips):

- from the affine (:func:`orientation_from_affine`, M&Ms and generic NIfTI folders): the transform whose in-plane
  axes are viewed from the apex (the slice normal ``col x row`` points to the base, i.e. to the patient's right,
  posterior and superior) and which puts the typical direction from the LV to the RV (right, anterior, slightly
  inferior in patient coordinates) closest to the image's "left, slightly up";
- fixed (:data:`ACDC_ORIENTATION`, the identity): ACDC files carry no usable orientation in their header and the
  preprocessed HDF5 layout none at all; the stored ``(Z, Y, X)`` arrays already show the standard view (checked on
  real cases: RV left of the LV, liver below left, left lung above right).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from ..labels import CLASSES
from .records import BadCaseError, Volume

CODES = {name: value for value, name in CLASSES.items()}  # "LV" -> 1, ...
# folder names of the layouts' own splits (ACDC: training, testing; M&Ms: Training, Validation, Testing)
LAYOUT_SPLITS = {"training": "train", "validation": "val", "testing": "test"}
SPLIT_VALUES = ("", *LAYOUT_SPLITS.values())  # a layout split as a case list or CSV may state it ("": none)


# patient (RAS+) directions used to orient short-axis planes from the affine
_TO_BASE = np.array([1.0, -1.0, 1.0]) / np.sqrt(3.0)  # apex -> base: right, posterior, superior
_LV_TO_RV = np.array([1.0, 1.0, -0.3]) / np.linalg.norm([1.0, 1.0, -0.3])  # RV lies right, anterior of the LV
_RV_TARGET = np.array([-np.cos(np.radians(20.0)), -np.sin(np.radians(20.0))])  # (col, row): left, 20 degrees up


class LayoutError(FileNotFoundError):
    """A data root that is missing or does not hold the expected layout (the message says which and where from)."""


class DuplicateCaseError(ValueError):
    """One patient and phase given twice (a repeated case-list row, a patient at two depths of the root); the message
    names both places. Never skipped: which copy is right is the user's call."""


@dataclass(frozen=True)
class Orientation:
    """In-plane transform of a ``(slices, rows, cols)`` stack: swap rows/cols, then flip rows, then flip cols."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    def apply(self, stack: np.ndarray) -> np.ndarray:
        if self.transpose:
            stack = stack.transpose(0, 2, 1)
        if self.flip_rows:
            stack = stack[:, ::-1]
        if self.flip_cols:
            stack = stack[:, :, ::-1]
        return np.ascontiguousarray(stack)

    def spacing(self, zooms: tuple[float, ...]) -> tuple[float, float]:
        """(row, col) spacing of the transformed stack from the NIfTI zooms (X, Y, ...)."""
        row, col = float(zooms[1]), float(zooms[0])
        return (col, row) if self.transpose else (row, col)


ACDC_ORIENTATION = Orientation()
"""ACDC (NIfTI via ``transpose(2, 1, 0)``, and the HDF5 layout as stored): already the standard view."""


def orientation_from_affine(affine: np.ndarray) -> Orientation:
    """The dihedral transform that shows a short-axis stack viewed from the apex with the RV on the left."""
    axes = [np.asarray(affine, dtype=float)[:3, i] for i in range(2)]
    norms = [np.linalg.norm(a) for a in axes]
    if min(norms) == 0 or not np.isfinite(norms).all():
        raise ValueError(f"degenerate affine {np.asarray(affine).tolist()}")
    a0, a1 = (a / n for a, n in zip(axes, norms))
    best: tuple[float, Orientation] | None = None
    for transpose in (False, True):
        for flip_rows in (False, True):
            for flip_cols in (False, True):
                row, col = (a0, a1) if transpose else (a1, a0)  # patient direction of increasing row / column
                row, col = (-row if flip_rows else row), (-col if flip_cols else col)
                if np.cross(col, row) @ _TO_BASE <= 0:  # seen from the base: mirror image
                    continue
                score = float((_LV_TO_RV @ col) * _RV_TARGET[0] + (_LV_TO_RV @ row) * _RV_TARGET[1])
                if best is None or score > best[0]:
                    best = (score, Orientation(transpose, flip_rows, flip_cols))
    assert best is not None  # one of each mirror pair passes the handedness test
    return best[1]


def bad(path: str | Path, problem: str) -> BadCaseError:
    """A :class:`BadCaseError` whose message starts with the file; ``.path`` holds it for skip reports."""
    err = BadCaseError(f"{path}: {problem}")
    err.path = str(path)  # type: ignore[attr-defined]
    return err


@dataclass
class Case:
    """One case of a real source, loaded lazily so that a bad file can be skipped without stopping the source."""

    source: str  # the file(s) named in skip reports
    load: Callable[[], Volume]


@dataclass
class NiftiArray:
    data: np.ndarray  # (X, Y, Z) of the selected frame
    affine: np.ndarray
    zooms: tuple[float, ...]


def read_nifti(path: str | Path, frame: int | None = None, *, allow_2d: bool = False) -> NiftiArray:
    """Read a 3D NIfTI (or one ``frame`` of a 4D one; with ``allow_2d``, a 2D one as one slice); unreadable or
    truncated files raise :class:`BadCaseError`."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise bad(path, "file not found")
    try:
        img = nib.load(str(path))
        shape = img.shape
        if len(shape) == 4:
            if frame is None:
                raise bad(path, f"4D file {shape} but no frame given")
            if not 0 <= frame < shape[3]:
                raise bad(path, f"frame {frame} outside the file's {shape[3]} frames")
            data = np.asarray(img.dataobj[..., frame])
        elif len(shape) == 3 or (allow_2d and len(shape) == 2):
            if frame not in (None, 0):
                raise bad(path, f"{len(shape)}D file {shape} but frame {frame} requested")
            data = np.asarray(img.dataobj).reshape(shape + (1,) * (3 - len(shape)))  # a 2D map: one slice
        else:
            raise bad(path, f"expected a 3D or 4D image, got shape {shape}")
        affine = np.asarray(img.affine, dtype=float)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3]) + (1.0,) * (3 - min(3, len(shape)))
    except BadCaseError:
        raise
    except Exception as exc:  # nibabel, gzip, zlib and numpy raise many types for corrupt or truncated files
        raise bad(path, f"cannot read the NIfTI file (corrupt or truncated?): {type(exc).__name__}: {exc}") from exc
    return NiftiArray(data, affine, zooms)


def to_stack(data_xyz: np.ndarray, orientation: Orientation) -> np.ndarray:
    """NIfTI ``(X, Y, Z)`` -> ``(slices, rows, cols)`` in the display orientation."""
    return orientation.apply(np.asarray(data_xyz).transpose(2, 1, 0))


def label_array(mask: np.ndarray) -> np.ndarray:
    """Integer labels when the stored values are whole numbers (else unchanged, for ``check_volume`` to report)."""
    mask = np.asarray(mask)
    if mask.dtype.kind in "iub":
        return mask.astype(np.int16)
    if np.isfinite(mask).all() and np.array_equal(mask, np.rint(mask)) and np.abs(mask).max(initial=0) < 2**15:
        return mask.astype(np.int16)
    return mask


def remap_labels(mask: np.ndarray, mapping: Mapping[int, int]) -> np.ndarray:
    """Map source label values to canonical ones; values not in ``mapping`` are kept (``check_volume`` flags them)."""
    mask = label_array(mask)
    out = mask.copy()
    for src, dst in mapping.items():
        out[mask == src] = dst
    return out


def map_labels(mask: np.ndarray, data, where: str | Path, default: Mapping[int, int] | None = None) -> np.ndarray:
    """A label stack in the canonical convention. With the source's ``data.label_map`` (file value -> structure name;
    0 is background unless it says otherwise) a value it does not list is a :class:`BadCaseError` naming ``where``
    and the value; without, the source's own numbering ``default`` (None: the files are canonical)."""
    if data.label_map is None:
        return label_array(mask) if default is None else remap_labels(mask, default)
    mapping = {0: CODES["background"], **{value: CODES[name] for value, name in data.label_map.items()}}
    mask = label_array(mask)
    unknown = sorted(set(np.unique(mask).tolist()) - set(mapping))
    if unknown:
        raise bad(where, f"label value(s) {unknown} not in the source's label_map {dict(data.label_map)}; add them to it")
    return remap_labels(mask, mapping)


def layout_split(folder: Path, root: Path) -> str:
    """``train``, ``val`` or ``test`` when a folder between ``root`` and ``folder`` names the layout's own split
    (ACDC's ``training`` / ``testing``, M&Ms' ``Training`` / ``Validation`` / ``Testing``); else ""."""
    parts = [p.lower() for p in folder.relative_to(root).parts]  # both found below root by globbing
    found = {LAYOUT_SPLITS[p] for p in parts if p in LAYOUT_SPLITS}
    return found.pop() if len(found) == 1 else ""


def read_pair(
    image_path: str | Path,
    label_path: str | Path,
    *,
    orientation: Orientation | None = None,
    frame: int | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float], float | None]:
    """Image and label stacks ``(slices, rows, cols)``, in-plane (row, col) spacing and the through-plane spacing
    (the third zoom; None for a 2D file) of a NIfTI pair.

    ``orientation`` None: from the image's affine. Shape or affine differences between the files are bad cases."""
    image = read_nifti(image_path, frame)
    label = read_nifti(label_path, frame)
    if image.data.shape != label.data.shape:
        raise bad(image_path, f"image shape {image.data.shape} and label shape {label.data.shape} ({label_path}) differ")
    if not np.allclose(image.affine, label.affine, rtol=1e-4, atol=1e-3):
        raise bad(image_path, f"image and label ({label_path}) affines differ: the label map is not on the image grid "
                              f"({np.round(image.affine, 3).tolist()} vs {np.round(label.affine, 3).tolist()})")
    if orientation is None:
        try:
            orientation = orientation_from_affine(image.affine)
        except ValueError as exc:
            raise bad(image_path, str(exc)) from exc
    spacing = orientation.spacing(image.zooms)
    slice_spacing = float(image.zooms[2]) if len(image.zooms) > 2 and image.zooms[2] > 0 else None
    return (to_stack(image.data, orientation).astype(np.float32), to_stack(label_array(label.data), orientation), spacing,
            slice_spacing)


def read_csv(path: Path, what: str):
    """A small CSV as a DataFrame of strings; unreadable is a :class:`LayoutError` naming the file."""
    import pandas as pd

    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise LayoutError(f"{path}: cannot read the {what}: {type(exc).__name__}: {exc}") from exc


def require_root(root: str | None, source: str, layout: str) -> Path:
    """The data root as a Path, or a :class:`LayoutError` that says which layout is expected and where from."""
    if root is None:
        raise LayoutError(f"{source}: data.root is not set; give it with --set data.root=PATH. {layout}")
    path = Path(root)
    if not path.is_dir():
        raise LayoutError(f"{source}: data.root {path} is not a folder. {layout}")
    return path
