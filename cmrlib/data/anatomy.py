"""Anatomical checks of label maps, shared by the data tests and the stage-1 mask prior's evaluation."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..labels import CLASSES, LV, MYO, RV


def lv_enclosed_by_myo(mask: np.ndarray) -> bool:
    """True when the LV cavity, dilated by one pixel (4-connectivity), touches nothing but LV and MYO.

    A 2D label map without LV counts as not enclosed (there is nothing to enclose)."""
    lv = mask == LV
    if not lv.any():
        return False
    ring = ndimage.binary_dilation(lv) & ~lv
    return bool(np.isin(mask[ring], (LV, MYO)).all())


def class_areas(masks: np.ndarray) -> dict[str, np.ndarray]:
    """Pixels per class for each 2D map of a (N, H, W) stack."""
    flat = masks.reshape(len(masks), -1)
    return {name: (flat == value).sum(axis=1) for value, name in CLASSES.items()}


def n_components(mask: np.ndarray, label: int) -> int:
    """Connected components (8-connectivity) of one class in a 2D label map."""
    return int(ndimage.label(mask == label, structure=np.ones((3, 3)))[1])


def check_masks(masks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-map validity flags of a (N, H, W) stack: LV enclosed, one LV, one MYO, at most one RV."""
    return {
        "lv_enclosed": np.array([lv_enclosed_by_myo(m) for m in masks]),
        "single_lv": np.array([n_components(m, LV) == 1 for m in masks]),
        "single_myo": np.array([n_components(m, MYO) == 1 for m in masks]),
        "rv_at_most_one": np.array([n_components(m, RV) <= 1 for m in masks]),
    }
