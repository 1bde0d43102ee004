"""A user's own label maps, brought to a generator's grid: what ``python -m cmrlib generate --masks DIR`` conditions on.

Every ``.nii`` / ``.nii.gz``, ``.png`` and ``.npz`` file of a folder (sorted by name; not recursive):

- NIfTI: a 2D map or a 3D stack, oriented from its affine as the loaders orient a case (the short-axis view from the
  apex, the RV on the left) and resampled with its own pixel size;
- PNG: one single-channel map (integer values, not colours);
- NPZ: an array ``masks`` (or the file's only array), ``(H, W)`` or ``(N, H, W)``.

Labels are canonical (0 background, 1 LV, 2 MYO, 3 RV) unless ``label_map`` (file value -> LV, MYO, RV or background,
as a source's ``label_map``) says otherwise; a value outside both is an error naming the file. Maps with no label are
left out (an empty 3D slice, as the loaders do); a file with none at all is an error. A map already on the model's
grid (``image_size`` x ``image_size`` pixels of ``pixel_size_mm``, or of unknown size) is taken as it is, so an
exported set's labels condition the model again unchanged; any other map with a known pixel size (NIfTI, or every
file with ``pixel_mm``) is resampled to the model's ``spacing_mm``, cropped around the labels' centre of mass and
resized to ``image_size``, the loaders' path; one of unknown pixel size is an error that asks for ``pixel_mm``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Mapping

import numpy as np
import pandas as pd

from ..labels import NUM_CLASSES
from . import io
from .preprocess import labels_to_grid, unknown_labels

SUFFIXES = (".nii.gz", ".nii", ".png", ".npz")


def _suffix(path: Path) -> str | None:
    return next((s for s in SUFFIXES if path.name.lower().endswith(s)), None)


def _read(path: Path, pixel_mm: float | None) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The file's label stack ``(N, rows, cols)`` and its (row, col) pixel size (None: unknown)."""
    suffix = _suffix(path)
    spacing = None if pixel_mm is None else (pixel_mm, pixel_mm)
    if suffix in (".nii", ".nii.gz"):
        nifti = io.read_nifti(path, allow_2d=True)
        orientation = io.orientation_from_affine(nifti.affine)
        return io.to_stack(nifti.data, orientation), orientation.spacing(nifti.zooms)
    if suffix == ".png":
        from PIL import Image

        try:
            array = np.asarray(Image.open(path))
        except Exception as exc:  # PIL raises several types for a corrupt file
            raise io.bad(path, f"cannot read the PNG file: {type(exc).__name__}: {exc}") from exc
        if array.ndim != 2:
            raise io.bad(path, f"a label map must be one channel of integer labels, got an image of shape {array.shape} "
                               "(colours?); save the label values themselves as a greyscale PNG")
        return array[None], spacing
    try:
        with np.load(path) as f:
            key = "masks" if "masks" in f.files else (f.files[0] if len(f.files) == 1 else None)
            if key is None:
                raise io.bad(path, f"no array 'masks' among {f.files}; name the label maps' array 'masks'")
            array = f[key]
    except io.BadCaseError:
        raise
    except Exception as exc:
        raise io.bad(path, f"cannot read the NPZ file: {type(exc).__name__}: {exc}") from exc
    if array.ndim not in (2, 3):
        raise io.bad(path, f"array {key!r} has shape {array.shape}; give (H, W) or (N, H, W) label maps")
    return (array[None] if array.ndim == 2 else array), spacing


def read_masks(folder: str | Path, *, image_size: int, crop_mm: float, spacing_mm: float, pixel_size_mm: float,
               label_map: Mapping[int, str] | None = None, pixel_mm: float | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """The folder's label maps on the model's grid, uint8 ``(N, image_size, image_size)``, and where each comes from
    (a row per map: file, index of the map in the file)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise io.LayoutError(f"--masks {folder} is not a folder; give a folder of label maps ({', '.join(SUFFIXES)})")
    files = sorted(p for p in folder.iterdir() if p.is_file() and _suffix(p))
    if not files:
        raise io.LayoutError(f"--masks {folder} holds no label maps ({', '.join(SUFFIXES)} files)")
    source = SimpleNamespace(label_map=None if label_map is None else dict(label_map))
    out, rows = [], []
    for path in files:
        stack, spacing = _read(path, pixel_mm)
        stack = io.map_labels(stack, source, path)
        unknown = unknown_labels(stack)
        if unknown:
            raise io.bad(path, f"label values {unknown} outside 0..{NUM_CLASSES - 1} (0 background, 1 LV, 2 MYO, 3 RV); "
                               "give --label-map VALUE:NAME,... for another numbering")
        keep = np.flatnonzero((stack > 0).reshape(len(stack), -1).any(axis=1))
        if not len(keep):
            raise io.bad(path, "the label map is empty (no LV, MYO or RV anywhere)")
        stack = stack[keep]
        on_grid = stack.shape[1:] == (image_size, image_size) and (spacing is None or np.allclose(spacing, pixel_size_mm, rtol=1e-3))
        if spacing is not None and not on_grid:
            stack = labels_to_grid(stack, spacing, image_size=image_size, crop_mm=crop_mm, spacing_mm=spacing_mm)
        elif not on_grid:
            raise io.bad(path, f"{stack.shape[1]} x {stack.shape[2]} maps with no pixel size: give --pixel-mm (the size "
                               f"of their pixels in mm) to bring them to the model's grid, or maps of {image_size} x "
                               f"{image_size} pixels of {pixel_size_mm:g} mm already on it")
        out.append(stack.astype(np.uint8))
        rows += [{"file": path.name, "index": int(i)} for i in keep]
    return np.concatenate(out), pd.DataFrame(rows)


def parse_label_map(text: str) -> dict[int, str]:
    """``"500:LV,200:MYO,600:RV"`` -> {500: "LV", 200: "MYO", 600: "RV"} (the CLI's ``--label-map``)."""
    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        value, sep, name = item.partition(":")
        if not sep or not value.strip().lstrip("-").isdigit() or name.strip() not in io.CODES:
            raise ValueError(f"--label-map item {item!r}: write VALUE:NAME with NAME one of {', '.join(io.CODES)}")
        mapping[int(value)] = name.strip()
    if not {"LV", "MYO", "RV"} <= set(mapping.values()):
        raise ValueError(f"--label-map {text!r} must name a file value for each of LV, MYO and RV")
    return mapping


__all__ = ["SUFFIXES", "read_masks", "parse_label_map"]
