"""Overlap between label maps: Dice per structure, background excluded, an empty structure on both sides as NaN.

nnU-Net's convention (``evaluate_predictions.py``): a structure absent from both the reference and the prediction
is not a perfect score but undefined (NaN), and is left out of means; one present on one side only scores 0.
"""

from __future__ import annotations

import numpy as np

from ..labels import FOREGROUND


def dice_per_structure(pred: np.ndarray, target: np.ndarray, labels: dict[int, str] = FOREGROUND) -> np.ndarray:
    """(N, H, W) predicted and reference label maps -> (N, len(labels)) Dice, columns in ``labels`` order."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and reference {target.shape} differ in shape")
    pred = pred.reshape(len(pred), -1)
    target = target.reshape(len(target), -1)
    out = np.empty((len(pred), len(labels)))
    for j, value in enumerate(labels):
        p, t = pred == value, target == value
        inter = (p & t).sum(1)
        total = p.sum(1) + t.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, j] = np.where(total > 0, 2 * inter / np.maximum(total, 1), np.nan)
    return out


__all__ = ["dice_per_structure"]
