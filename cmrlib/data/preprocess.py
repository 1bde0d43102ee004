"""One preprocessing path for every source (phantom, ACDC, M&Ms, NIfTI folders).

Volume -> checks -> in-plane resampling to ``spacing_mm`` -> square crop of ``crop_mm`` around the heart (centre of
mass of the volume's labels, padded with the image minimum) -> percentile scaling to [-1, 1] -> resize to
``image_size`` (area-averaged for images, nearest neighbour for labels) -> slices with any label, with metadata.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..labels import NUM_CLASSES
from .records import BadCaseError, SliceSet, Volume


def unknown_labels(mask: np.ndarray) -> list[int]:
    """The values of a label map outside the canonical 0..NUM_CLASSES-1 (or not whole numbers)."""
    return [int(v) for v in np.unique(mask) if v < 0 or v >= NUM_CLASSES or v != int(v)]


def check_volume(vol: Volume) -> None:
    """Raise :class:`BadCaseError` naming the file for every problem that would poison the data set."""
    where = f"{vol.source} (patient {vol.patient}, {vol.phase})"
    if vol.image.ndim != 3:
        raise BadCaseError(f"{where}: expected a 3D stack (slices, H, W), got shape {vol.image.shape}")
    if vol.image.shape != vol.mask.shape:
        raise BadCaseError(f"{where}: image shape {vol.image.shape} and label shape {vol.mask.shape} differ")
    if not np.isfinite(vol.image).all():
        raise BadCaseError(f"{where}: image contains NaN or infinite values")
    if float(vol.image.max()) == float(vol.image.min()):
        raise BadCaseError(f"{where}: image is constant ({float(vol.image.min())})")
    if vol.mask.dtype.kind == "f" and not np.isfinite(vol.mask).all():
        raise BadCaseError(f"{where}: the label map contains NaN or infinite values")
    unknown = unknown_labels(vol.mask)
    if unknown:
        raise BadCaseError(f"{where}: labels {unknown} outside 0..{NUM_CLASSES - 1} (is the label remap right for this source?)")
    if not (vol.mask > 0).any():
        raise BadCaseError(f"{where}: the label map is empty (no LV, MYO or RV anywhere)")


def _resize(stack: np.ndarray, size: tuple[int, int], labels: bool) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    if labels:
        out = F.interpolate(t, size=size, mode="nearest-exact")
    else:
        shrinking = size[0] < t.shape[-2] or size[1] < t.shape[-1]
        out = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
    return out[:, 0].numpy()


def resample_inplane(vol: Volume, spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask resampled to ``spacing_mm`` in plane (unchanged when the spacing is unknown or equal)."""
    size = _inplane_size(vol.image.shape[1:], vol.spacing, spacing_mm)
    if size == vol.image.shape[1:]:
        return vol.image.astype(np.float32), vol.mask
    return _resize(vol.image, size, labels=False), _resize(vol.mask, size, labels=True).astype(vol.mask.dtype)


def _inplane_size(shape: tuple[int, ...], spacing: tuple[float, float] | None, spacing_mm: float) -> tuple[int, ...]:
    """The (rows, cols) of a slice of ``shape`` at ``spacing`` once resampled to ``spacing_mm`` (unchanged if unknown)."""
    if spacing is None:
        return tuple(shape)
    return (max(1, round(shape[0] * spacing[0] / spacing_mm)), max(1, round(shape[1] * spacing[1] / spacing_mm)))


def crop_around_heart(image: np.ndarray, mask: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Square ``side`` x ``side`` crop centred on the labels' centre of mass, padded with the image minimum."""
    rows, cols = np.nonzero((mask > 0).any(axis=0))
    cy, cx = int(round(rows.mean())), int(round(cols.mean()))
    top, left = cy - side // 2, cx - side // 2
    pad = side  # enough for any centre
    image = np.pad(image, ((0, 0), (pad, pad), (pad, pad)), constant_values=float(image.min()))
    mask = np.pad(mask, ((0, 0), (pad, pad), (pad, pad)), constant_values=0)
    window = (slice(None), slice(top + pad, top + pad + side), slice(left + pad, left + pad + side))
    return image[window], mask[window]


def scale_intensities(image: np.ndarray, percentiles: tuple[float, float] | list[float]) -> np.ndarray:
    """Map the volume's ``percentiles`` (low, high) to -1 and 1 and clip."""
    low, high = np.percentile(image, list(percentiles))
    if high <= low:
        high = low + 1e-6
    return np.clip(2.0 * (image - low) / (high - low) - 1.0, -1.0, 1.0).astype(np.float32)


def crop_pixels(crop_mm: float, spacing_mm: float) -> int:
    """The side of the square crop in pixels at ``spacing_mm`` (at least 8)."""
    return max(8, round(crop_mm / spacing_mm))


def pixel_size_mm(data) -> float:
    """The in-plane size of a processed pixel of the data params ``data``: the crop of :func:`crop_pixels` pixels at
    ``spacing_mm``, resized to ``image_size`` (the default 180 mm crop at 1.5 mm, 120 pixels, resized to 64: 2.8125 mm)."""
    return crop_pixels(data.crop_mm, data.spacing_mm) * data.spacing_mm / data.image_size


def labels_to_grid(mask: np.ndarray, spacing: tuple[float, float] | None, *, image_size: int, crop_mm: float,
                   spacing_mm: float) -> np.ndarray:
    """A label stack ``(slices, rows, cols)`` brought to the processed grid as :func:`preprocess_volume` brings a
    case's labels (resampled to ``spacing_mm``, cropped around the labels' centre of mass, resized to ``image_size``)."""
    size = _inplane_size(mask.shape[1:], spacing, spacing_mm)
    if size != mask.shape[1:]:
        mask = _resize(mask, size, labels=True)
    _, mask = crop_around_heart(mask.astype(np.float32), mask, crop_pixels(crop_mm, spacing_mm))
    return _resize(mask, (image_size, image_size), labels=True).astype(np.uint8)


def preprocess_volume(
    vol: Volume,
    *,
    image_size: int,
    crop_mm: float,
    spacing_mm: float,
    percentiles: tuple[float, float] | list[float] = (1.0, 99.9),
) -> SliceSet:
    """Turn one volume into processed slices; slices without any label are dropped."""
    check_volume(vol)
    image, mask = resample_inplane(vol, spacing_mm)
    image, mask = crop_around_heart(image, mask, crop_pixels(crop_mm, spacing_mm))
    image = scale_intensities(image, percentiles)
    image = np.clip(_resize(image, (image_size, image_size), labels=False), -1.0, 1.0)
    mask = _resize(mask, (image_size, image_size), labels=True).astype(np.uint8)
    keep = (mask > 0).reshape(len(mask), -1).any(axis=1)
    index = np.arange(len(vol.image)) if vol.slice_indices is None else np.asarray(vol.slice_indices)
    meta = pd.DataFrame(
        {
            "dataset": vol.dataset,
            "patient": vol.patient,
            "domain": vol.domain,
            "phase": vol.phase,
            "slice_index": index[keep],
            "slice_count": vol.slice_count or len(vol.image),
            "slice_spacing_mm": np.nan if vol.slice_spacing is None else float(vol.slice_spacing),
            "layout_split": vol.layout_split,
            "split": "",
        }
    )
    return SliceSet(image[keep].astype(np.float32), mask[keep], meta)


def concat(sets: list[SliceSet]) -> SliceSet:
    if not sets:
        raise ValueError("no slices: every case was empty or skipped")
    return SliceSet(
        np.concatenate([s.images for s in sets]),
        np.concatenate([s.masks for s in sets]),
        pd.concat([s.meta for s in sets], ignore_index=True),
    )
