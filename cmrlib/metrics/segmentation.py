"""Overlap and boundary distance between label maps (nnU-Net's conventions for empty structures).

- Dice per structure, background excluded: a structure absent from both the reference and the prediction is not a
  perfect score but undefined (NaN) and is left out of means; present on one side only, it scores 0
  (``evaluate_predictions.py`` of nnU-Net). :func:`dice_per_structure` scores each 2D slice,
  :func:`volume_dice` one volume (slices stacked: overlaps and sizes summed over the slices before the ratio).
- HD95 per structure (:func:`hd95_per_structure`): the 95th percentile of the symmetric surface distance (MONAI
  ``compute_hausdorff_distance(percentile=95)``), in mm with the pixel spacing. Empty on both sides: NaN (left out,
  as Dice). **Empty on one side only** (a missed or a hallucinated structure): the largest distance the image allows,
  its diagonal in mm, so that a miss counts as the worst boundary error rather than vanishing from the mean;
  :func:`one_sided_empty` counts these cases so that a table can say how many there were.
- :func:`reference_protocol_dice`: the reference study's number, the mean Dice over the four classes *with*
  background, per slice (classes absent from both left out).
"""

from __future__ import annotations

import warnings

import numpy as np

from ..labels import CLASSES, FOREGROUND


def _check(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and reference {target.shape} differ in shape")
    return pred, target


def _dice(inter: np.ndarray, total: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * inter / np.maximum(total, 1), np.nan)


def dice_per_structure(pred: np.ndarray, target: np.ndarray, labels: dict[int, str] = FOREGROUND) -> np.ndarray:
    """(N, H, W) predicted and reference label maps -> (N, len(labels)) Dice per slice, columns in ``labels`` order."""
    pred, target = _check(pred, target)
    pred = pred.reshape(len(pred), -1)
    target = target.reshape(len(target), -1)
    out = np.empty((len(pred), len(labels)))
    for j, value in enumerate(labels):
        p, t = pred == value, target == value
        out[:, j] = _dice((p & t).sum(1), p.sum(1) + t.sum(1))
    return out


def volume_dice(pred: np.ndarray, target: np.ndarray, labels: dict[int, str] = FOREGROUND) -> np.ndarray:
    """One volume: (S, H, W) label maps (the slices of one patient and phase, stacked) -> (len(labels),) Dice of the
    3D structures (NaN for a structure absent from both)."""
    pred, target = _check(pred, target)
    p_all, t_all = pred.reshape(-1), target.reshape(-1)
    return np.array([_dice(np.sum((p_all == v) & (t_all == v)), np.sum(p_all == v) + np.sum(t_all == v)) for v in labels],
                    dtype=np.float64)


def volume_rows(meta) -> dict[tuple[str, str], np.ndarray]:
    """The volumes of a set of slices: (patient, phase) -> the rows of ``meta`` (a DataFrame with ``patient``,
    ``phase``, ``slice_index``) of its slices in slice order, sorted by patient and phase."""
    meta = meta.reset_index(drop=True)
    order = meta["slice_index"].to_numpy()
    return {key: idx[np.argsort(order[idx], kind="stable")]
            for key, idx in meta.groupby(["patient", "phase"], sort=True).indices.items()}


def reference_protocol_dice(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N,) the reference study's per-slice Dice: mean over all four classes, background included
    (classes absent from both left out)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a slice with no class at all cannot occur (background)
        return np.nanmean(dice_per_structure(pred, target, CLASSES), axis=1)


def image_diagonal_mm(shape: tuple[int, ...], spacing: float | tuple[float, ...]) -> float:
    """The largest distance between two pixels of an image of ``shape`` (H, W) at ``spacing`` mm: HD95's value when
    a structure is empty on one side only."""
    spacing = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (len(shape),))
    return float(np.sqrt(np.sum(((np.asarray(shape) - 1) * spacing) ** 2)))


def one_sided_empty(pred: np.ndarray, target: np.ndarray, labels: dict[int, str] = FOREGROUND) -> np.ndarray:
    """(N, H, W) -> (N, len(labels)) booleans: the structure is present on exactly one side (HD95 = the diagonal)."""
    pred, target = _check(pred, target)
    pred, target = pred.reshape(len(pred), -1), target.reshape(len(target), -1)
    return np.column_stack([(pred == v).any(1) != (target == v).any(1) for v in labels])


def hd95_per_structure(pred: np.ndarray, target: np.ndarray, spacing: float | tuple[float, float] = 1.0,
                       labels: dict[int, str] = FOREGROUND, batch_size: int = 256) -> np.ndarray:
    """(N, H, W) predicted and reference label maps -> (N, len(labels)) HD95 per 2D slice in mm (pixel ``spacing``
    in mm). NaN where a structure is absent from both; the image diagonal (:func:`image_diagonal_mm`) where it is
    absent from one side only."""
    import torch
    from monai.data import get_track_meta, set_track_meta
    from monai.metrics import compute_hausdorff_distance

    pred, target = _check(pred, target)
    if pred.ndim != 3:
        raise ValueError(f"expected (N, H, W) label maps, got shape {pred.shape}")
    values = list(labels)
    out = np.empty((len(pred), len(values)))
    onehot = lambda m: torch.from_numpy(np.stack([m == v for v in values], axis=1))  # (B, K, H, W) bool
    tracking = get_track_meta()
    set_track_meta(False)  # plain tensors inside MONAI's cropping: 2x faster, same values
    try:
        for i in range(0, len(pred), batch_size):
            p, t = pred[i : i + batch_size], target[i : i + batch_size]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "ground truth of class k is all 0": handled below
                warnings.simplefilter("ignore", FutureWarning)  # MONAI 1.5+ deprecation inside its own get_mask_edges
                d = compute_hausdorff_distance(onehot(p), onehot(t), include_background=True, percentile=95, spacing=spacing)
            out[i : i + batch_size] = d.double().numpy()
    finally:
        set_track_meta(tracking)
    present_p = np.stack([(pred == v).reshape(len(pred), -1).any(1) for v in values], axis=1)
    present_t = np.stack([(target == v).reshape(len(target), -1).any(1) for v in values], axis=1)
    out[~present_p & ~present_t] = np.nan
    out[present_p != present_t] = image_diagonal_mm(pred.shape[1:], spacing)
    return out


__all__ = ["dice_per_structure", "volume_dice", "reference_protocol_dice", "hd95_per_structure", "one_sided_empty",
           "image_diagonal_mm"]
