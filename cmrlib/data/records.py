"""The records every data source produces and every notebook reads.

- :class:`Volume`: one short-axis stack (one patient, one phase) as a loader reads it, raw intensities, labels
  already in the canonical convention (``cmrlib.labels``), in-plane spacing where the files give it.
- :class:`SliceSet`: processed 2D slices (images in [-1, 1], integer masks) with one metadata row per slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..paths import atomic_path

META_COLUMNS = ["dataset", "patient", "domain", "phase", "slice_index", "slice_count", "slice_spacing_mm", "layout_split", "split"]
SLICES_FILE = "slices.npz"
METADATA_FILE = "metadata.csv"


class BadCaseError(ValueError):
    """A data case that cannot be used; the message names the file and the problem."""


@dataclass
class Volume:
    image: np.ndarray  # (slices, H, W) float, raw intensities
    mask: np.ndarray  # (slices, H, W) integer labels, canonical convention
    dataset: str
    patient: str  # unique across data sets
    domain: str  # vendor or site
    phase: str  # "ED" or "ES"
    spacing: tuple[float, float] | None = None  # in-plane (row, column) spacing in mm; None when unknown
    slice_spacing: float | None = None  # distance between adjacent slices in mm (3D HD95 and ASD); None when unknown
    source: str = "<memory>"  # file(s) it came from, named in errors
    slice_indices: np.ndarray | None = None  # index of each slice in its original volume (default 0..S-1)
    slice_count: int | None = None  # slices in the original volume (default S)
    layout_split: str = ""  # the data's own split of this patient (train, val, test) where its layout has one
    extra: dict = field(default_factory=dict)


@dataclass
class SliceSet:
    images: np.ndarray  # (N, H, W) float32 in [-1, 1]
    masks: np.ndarray  # (N, H, W) uint8 canonical labels
    meta: pd.DataFrame  # N rows, META_COLUMNS

    def __post_init__(self) -> None:
        if not (len(self.images) == len(self.masks) == len(self.meta)):
            raise ValueError(f"SliceSet: {len(self.images)} images, {len(self.masks)} masks, {len(self.meta)} metadata rows")
        self.meta = self.meta.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def select(self, rows: np.ndarray | pd.Series) -> "SliceSet":
        """A subset by boolean row mask or integer indices."""
        idx = np.flatnonzero(np.asarray(rows)) if np.asarray(rows).dtype == bool else np.asarray(rows, dtype=int)
        return SliceSet(self.images[idx], self.masks[idx], self.meta.iloc[idx])

    def split(self, name: str) -> "SliceSet":
        """The slices of one split (``train``, ``holdout``, ``test``, ``cross_<domain>``)."""
        if name not in set(self.meta["split"]):
            raise KeyError(f"no split {name!r}; this set has {sorted(set(self.meta['split']))}")
        return self.select(self.meta["split"].to_numpy() == name)

    def save(self, folder: str | Path) -> None:
        """Write ``slices.npz`` and ``metadata.csv`` atomically (a reader never sees half a file)."""
        folder = Path(folder)
        with atomic_path(folder / SLICES_FILE) as tmp:
            np.savez_compressed(tmp, images=self.images.astype(np.float32), masks=self.masks.astype(np.uint8))
        with atomic_path(folder / METADATA_FILE) as tmp:
            self.meta.to_csv(tmp, index=False)

    @classmethod
    def load(cls, folder: str | Path) -> "SliceSet":
        folder = Path(folder)
        for name in (SLICES_FILE, METADATA_FILE):
            if not (folder / name).exists():
                raise FileNotFoundError(f"{folder / name} does not exist: it is written by the notebook 00_data; run it first")
        with np.load(folder / SLICES_FILE) as arrays:
            images, masks = arrays["images"], arrays["masks"]
        text = ("patient", "domain", "dataset", "layout_split", "split")
        meta = pd.read_csv(folder / METADATA_FILE, dtype={c: str for c in text}, keep_default_na=False)
        if "slice_spacing_mm" not in meta:  # prepared before the through-plane spacing was kept: unknown
            meta["slice_spacing_mm"] = np.nan
        meta["slice_spacing_mm"] = pd.to_numeric(meta["slice_spacing_mm"], errors="coerce")
        return cls(images, masks, meta)
