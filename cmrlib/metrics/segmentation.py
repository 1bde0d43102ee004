"""Overlap and boundary distance between label maps (nnU-Net's conventions for empty structures).

- Dice per structure, background excluded: a structure absent from both the reference and the prediction is not a
  perfect score but undefined (NaN) and is left out of means; present on one side only, it scores 0
  (``evaluate_predictions.py`` of nnU-Net). :func:`dice_per_structure` scores each 2D slice,
  :func:`volume_dice` one volume (slices stacked: overlaps and sizes summed over the slices before the ratio).
- HD95 and ASD per structure (:func:`surface_distances`): the 95th percentile and the mean of the symmetric surface
  distance (MONAI), in mm with the spacing of each axis, of 2D slices or 3D volumes (:func:`volume_stack`). A
  structure absent from either side has none (NaN, left out of means), as in nnU-Net's evaluation: a missed or a
  hallucinated structure is scored by its Dice of 0, and ``one_sided`` (:func:`one_sided_empty`) counts these cases
  so that a table can say how many there were.
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


def one_sided_empty(pred: np.ndarray, target: np.ndarray, labels: dict[int, str] = FOREGROUND) -> np.ndarray:
    """(N, ...) -> (N, len(labels)) booleans: the structure is present on exactly one side (HD95 and ASD undefined)."""
    pred, target = _check(pred, target)
    pred, target = pred.reshape(len(pred), -1), target.reshape(len(target), -1)
    return np.column_stack([(pred == v).any(1) != (target == v).any(1) for v in labels])


def surface_distances(pred: np.ndarray, target: np.ndarray, spacing: float | tuple[float, ...] = 1.0,
                      labels: dict[int, str] = FOREGROUND, batch_size: int = 256) -> dict[str, np.ndarray]:
    """(N, H, W) slices or (N, S, H, W) volumes of predicted and reference labels -> ``hd95`` and ``asd`` per image and
    structure, each (N, len(labels)) in mm (``spacing`` per spatial axis, or one value for all): MONAI's
    ``compute_hausdorff_distance(percentile=95)`` and symmetric ``compute_average_surface_distance``. NaN where a
    structure is absent from either side (nnU-Net's evaluation: such a case is scored by Dice alone); ``one_sided``
    marks those present on exactly one side, so that a table can say how many there were."""
    import torch
    from monai.data import get_track_meta, set_track_meta
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    pred, target = _check(pred, target)
    if pred.ndim not in (3, 4):
        raise ValueError(f"expected (N, H, W) slices or (N, S, H, W) volumes, got shape {pred.shape}")
    values = list(labels)
    hd, asd = np.empty((len(pred), len(values))), np.empty((len(pred), len(values)))
    onehot = lambda m: torch.from_numpy(np.stack([m == v for v in values], axis=1))  # (B, K, ...) bool
    tracking = get_track_meta()
    set_track_meta(False)  # plain tensors inside MONAI's cropping: 2x faster, same values
    try:
        for i in range(0, len(pred), batch_size):
            p, t = onehot(pred[i : i + batch_size]), onehot(target[i : i + batch_size])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "ground truth of class k is all 0": handled below
                warnings.simplefilter("ignore", FutureWarning)  # MONAI 1.5+ deprecation inside its own get_mask_edges
                hd[i : i + batch_size] = compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=spacing).double().numpy()
                asd[i : i + batch_size] = compute_average_surface_distance(p, t, include_background=True, symmetric=True,
                                                                           spacing=spacing).double().numpy()
    finally:
        set_track_meta(tracking)
    flat = lambda m: m.reshape(len(m), -1)
    present = [np.stack([(flat(m) == v).any(1) for v in values], axis=1) for m in (pred, target)]
    undefined = ~(present[0] & present[1])
    hd[undefined], asd[undefined] = np.nan, np.nan
    return {"hd95": hd, "asd": asd, "one_sided": present[0] != present[1]}


def volume_stack(slices: np.ndarray, slice_index: np.ndarray) -> np.ndarray:
    """A volume's kept slices (S, H, W) placed at their ``slice_index`` in a dense stack; slices without labels (dropped
    in preprocessing) are background, so that through-plane distances keep their true spacing."""
    index = np.asarray(slice_index, dtype=int) - int(np.min(slice_index))
    out = np.zeros((int(index.max()) + 1, *slices.shape[1:]), dtype=slices.dtype)
    out[index] = slices
    return out


__all__ = ["dice_per_structure", "volume_dice", "reference_protocol_dice", "surface_distances", "volume_stack", "one_sided_empty"]
