"""Data: sources (the embedded phantom, real data sets), one preprocessing path, patient-level splits.

``prepare(params, paths)`` is what ``00_data`` calls: it builds the processed slice set from params (or reuses the
cached one when the data params are unchanged), assigns the splits, and writes ``data/slices.npz``,
``data/metadata.csv``, ``data/manifest.json`` and ``splits.json`` in the run folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Callable, Iterator

from tqdm.auto import tqdm

from ..paths import RunPaths
from . import phantom
from .preprocess import concat, preprocess_volume
from .records import BadCaseError, SliceSet, Volume, write_json
from .splits import assign, load_splits, make_splits, save_splits

__all__ = ["BadCaseError", "SliceSet", "Volume", "prepare", "load", "build_slices", "SOURCES"]

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def _phantom_volumes(data, seed: int) -> Iterator[Volume]:
    p = data.phantom
    return phantom.generate_volumes(
        seed=seed, domains=p.domains, patients_per_domain=p.patients_per_domain, slices_per_volume=p.slices_per_volume,
        phases=data.phases, fov_mm=p.field_of_view_mm, spacing_mm=data.spacing_mm,
    )


# data.source -> function(data params, seed) yielding Volumes in the canonical label convention
SOURCES: dict[str, Callable[..., Iterator[Volume]]] = {"phantom": _phantom_volumes}


def _data_digest(params) -> str:
    payload = {"data": params.data.model_dump(mode="json"), "seed": params.seed}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def build_slices(params) -> SliceSet:
    """Read every volume of ``params.data.source`` and run it through the one preprocessing path."""
    data = params.data
    volumes = SOURCES[data.source](data, params.seed)
    parts = [
        preprocess_volume(v, image_size=data.image_size, crop_mm=data.crop_mm, spacing_mm=data.spacing_mm,
                          percentiles=data.intensity_percentiles)
        for v in tqdm(volumes, desc=f"preprocessing {data.source} volumes", unit="vol")
    ]
    return concat(parts)


def prepare(params, paths: RunPaths, *, force: bool = False) -> SliceSet:
    """Build (or reuse) the processed slices and the splits for a run; returns the slices with their split."""
    digest = _data_digest(params)
    manifest_path = paths.data / MANIFEST
    if not force and manifest_path.exists() and json.loads(manifest_path.read_text()).get("digest") == digest and paths.splits.exists():
        log.info("reusing the processed data in %s (data params unchanged)", paths.data)
        return SliceSet.load(paths.data)
    slices = build_slices(params)
    d = params.data
    splits = make_splits(
        slices.meta, seed=params.seed, train_domains=d.train_domains, n_train=d.n_train_patients,
        n_holdout=d.n_holdout_patients, n_test=d.n_test_patients, cross_domains=d.cross_domains, n_cross=d.n_cross_patients,
    )
    slices.meta["split"] = assign(slices.meta, splits)
    slices.save(paths.data)
    save_splits(paths.splits, splits)
    write_json(manifest_path, {"digest": digest, "source": d.source, "n_slices": len(slices),
                               "n_patients": int(slices.meta["patient"].nunique()), "image_size": d.image_size})
    return slices


def load(paths: RunPaths) -> tuple[SliceSet, dict]:
    """The processed slices and splits of a run, as written by ``00_data``."""
    return SliceSet.load(paths.data), load_splits(paths.splits)
