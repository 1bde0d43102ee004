"""Anatomical checks of 2D label maps: what an anatomist checks first on a short-axis slice. Shared by the data
tests, the data notebook and the stage-1 mask prior (its evaluation and its filter, :mod:`cmrlib.generation`).

The criteria (:data:`CRITERIA`), each a per-map flag:

- ``lv_enclosed``: the LV cavity, dilated by one pixel (4-connectivity), touches nothing but LV and MYO;
- ``myo_ring``: the myocardium is a ring with exactly one hole (4-connected background components of its
  complement that do not reach the border), and every LV pixel lies in that hole;
- ``single_lv``, ``single_myo``: one connected component (8-connectivity) each;
- ``single_rv``: at most one RV component (none is allowed: apical and basal slices may have no RV);
- ``rv_at_septum``: where there is an RV, it lies against the myocardium (within :data:`SEPTUM_GAP_PX` pixels, the
  interventricular septum) and touches no LV;
- ``areas_in_range`` (only when a real reference is given): each class present has an area within the range of
  the real training maps' areas of that class.

A map with no LV fails ``lv_enclosed`` and ``myo_ring`` (there is nothing to enclose); ``valid`` is every criterion.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage, stats

from ..labels import CLASSES, FOREGROUND, LV, MYO, RV

SHAPE_CRITERIA = ("lv_enclosed", "myo_ring", "single_lv", "single_myo", "single_rv", "rv_at_septum")
CRITERIA = SHAPE_CRITERIA + ("areas_in_range",)
SEPTUM_GAP_PX = 2  # the RV may sit this many pixels from the myocardium (a partial-volume gap at 64 px)
_EIGHT = np.ones((3, 3), bool)


def lv_enclosed_by_myo(mask: np.ndarray) -> bool:
    """True when the LV cavity, dilated by one pixel (4-connectivity), touches nothing but LV and MYO."""
    lv = mask == LV
    if not lv.any():
        return False
    ring = ndimage.binary_dilation(lv) & ~lv
    return bool(np.isin(mask[ring], (LV, MYO)).all())


def myo_is_ring_around_lv(mask: np.ndarray) -> bool:
    """True when MYO has exactly one hole (a 4-connected region of non-MYO pixels cut off from the border) and
    every LV pixel lies in it."""
    myo, lv = mask == MYO, mask == LV
    if not lv.any() or not myo.any():
        return False
    holes, n = ndimage.label(ndimage.binary_fill_holes(myo) & ~myo)  # 4-connected, as binary_fill_holes fills
    return n == 1 and bool(holes[lv].all())


def n_components(mask: np.ndarray, label: int) -> int:
    """Connected components (8-connectivity) of one class in a 2D label map."""
    return int(ndimage.label(mask == label, structure=_EIGHT)[1])


def rv_at_septum(mask: np.ndarray) -> bool:
    """True when there is no RV, or the RV lies within :data:`SEPTUM_GAP_PX` pixels of the MYO and touches no LV."""
    rv = mask == RV
    if not rv.any():
        return True
    near = ndimage.binary_dilation(rv, structure=_EIGHT, iterations=SEPTUM_GAP_PX)
    touching = ndimage.binary_dilation(rv)
    return bool((mask[near] == MYO).any() and not (mask[touching] == LV).any())


def class_areas(masks: np.ndarray) -> dict[str, np.ndarray]:
    """Pixels per class for each 2D map of a (N, H, W) stack."""
    flat = masks.reshape(len(masks), -1)
    return {name: (flat == value).sum(axis=1) for value, name in CLASSES.items()}


def area_ranges(masks: np.ndarray) -> dict[int, tuple[int, int]]:
    """Per foreground class, the (min, max) area of the maps where it is present: the real range."""
    flat = masks.reshape(len(masks), -1)
    out = {}
    for c in FOREGROUND:
        areas = (flat == c).sum(1)
        areas = areas[areas > 0]
        if len(areas):
            out[c] = (int(areas.min()), int(areas.max()))
    return out


def _in_range(mask: np.ndarray, ranges: dict[int, tuple[int, int]]) -> bool:
    for c in FOREGROUND:
        area = int((mask == c).sum())
        if area and not (c in ranges and ranges[c][0] <= area <= ranges[c][1]):
            return False
    return True


def check_masks(masks: np.ndarray, reference: np.ndarray | None = None, *,
                ranges: dict[int, tuple[int, int]] | None = None) -> dict[str, np.ndarray]:
    """Per-map flags of a (N, H, W) stack for every criterion of :data:`SHAPE_CRITERIA`, and with ``reference``
    (real training maps) or their class-area ``ranges`` (:func:`area_ranges`) ``areas_in_range`` too; ``valid`` is
    all of them."""
    flags = {
        "lv_enclosed": np.array([lv_enclosed_by_myo(m) for m in masks], bool),
        "myo_ring": np.array([myo_is_ring_around_lv(m) for m in masks], bool),
        "single_lv": np.array([n_components(m, LV) == 1 for m in masks], bool),
        "single_myo": np.array([n_components(m, MYO) == 1 for m in masks], bool),
        "single_rv": np.array([n_components(m, RV) <= 1 for m in masks], bool),
        "rv_at_septum": np.array([rv_at_septum(m) for m in masks], bool),
    }
    if ranges is None and reference is not None:
        ranges = area_ranges(reference)
    if ranges is not None:
        flags["areas_in_range"] = np.array([_in_range(m, ranges) for m in masks], bool)
    flags["valid"] = np.logical_and.reduce(list(flags.values())) if len(masks) else np.zeros(0, bool)
    return flags


def repair(masks: np.ndarray) -> np.ndarray:
    """Each foreground class reduced to its largest connected component (8-connectivity), the rest set to
    background: the one repair that cannot invent anatomy (stray islands of a class are argmax noise)."""
    out = np.array(masks, copy=True)
    for m in out:
        for c in FOREGROUND:
            labels, n = ndimage.label(m == c, structure=_EIGHT)
            if n > 1:
                sizes = np.bincount(labels.ravel())[1:]
                m[(labels > 0) & (labels != 1 + int(np.argmax(sizes)))] = 0
    return out


def shape_statistics(masks: np.ndarray) -> pd.DataFrame:
    """Per map: each class's area (pixels), its connected components, and the myocardium's mean thickness (MYO area
    over half the perimeter of its outer and inner contours, in pixels; NaN without MYO)."""
    areas = class_areas(masks)
    out = {f"{name}_area": areas[name] for c, name in CLASSES.items() if c in FOREGROUND}
    for c in FOREGROUND:
        out[f"{CLASSES[c]}_components"] = np.array([n_components(m, c) for m in masks])
    myo = masks == MYO
    edge = myo & ~ndimage.binary_erosion(myo, structure=np.ones((1, 3, 3), bool))
    perimeter = edge.reshape(len(masks), -1).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["myo_thickness"] = np.where(perimeter > 0, areas[CLASSES[MYO]] / (perimeter / 2), np.nan)
    return pd.DataFrame(out)


def distribution_distances(real: np.ndarray, generated: np.ndarray) -> pd.DataFrame:
    """Per statistic of :func:`shape_statistics`: the two-sample Kolmogorov-Smirnov statistic and the 1-Wasserstein
    distance (in the statistic's own unit) between real and generated maps, with both means."""
    a, b = shape_statistics(real), shape_statistics(generated)
    rows = {}
    for col in a.columns:
        x, y = a[col].dropna().to_numpy(float), b[col].dropna().to_numpy(float)
        if not len(x) or not len(y):
            rows[col] = dict(real_mean=np.nan, generated_mean=np.nan, ks=np.nan, ks_p=np.nan, wasserstein=np.nan)
            continue
        ks = stats.ks_2samp(x, y)
        rows[col] = dict(real_mean=x.mean(), generated_mean=y.mean(), ks=ks.statistic, ks_p=ks.pvalue,
                         wasserstein=stats.wasserstein_distance(x, y))
    return pd.DataFrame(rows).T.rename_axis("statistic")
