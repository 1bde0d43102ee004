"""Data: sources (the embedded phantom, real data sets), one preprocessing path, patient-level splits.

``prepare(params, paths)`` is what ``00_data`` calls: it builds the processed slice set from params (or reuses the
cached one when the data params are unchanged) from every source of the run (``data.source``, or each of
``data.sources``), assigns the splits, and writes ``data/slices.npz``,
``data/metadata.csv``, ``data/manifest.json``, ``data/skipped_cases.csv`` (cases left out with
``data.on_bad_case: skip``; empty otherwise) and ``splits.json`` in the run folder.

Real sources (``acdc``, ``acdc_h5``, ``mnms``, ``nifti``) live in one small module each; their shared NIfTI reading,
label remap and short-axis orientation helpers are in :mod:`cmrlib.data.io`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Iterator

from tqdm.auto import tqdm

import pandas as pd

from ..paths import RunPaths
from . import acdc, acdc_h5, mnms, nifti, phantom
from .io import Case, DuplicateCaseError, LayoutError
from .preprocess import concat, preprocess_volume
from ..jsonio import write_json
from .records import METADATA_FILE, SLICES_FILE, BadCaseError, SliceSet, Volume
from .splits import assign, load_splits, make_splits, save_splits

__all__ = ["BadCaseError", "DuplicateCaseError", "LayoutError", "SliceSet", "Volume", "prepare", "load", "build_slices", "SOURCES"]

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
SKIPPED = "skipped_cases.csv"


def _phantom_volumes(data, seed: int) -> Iterator[Volume]:
    p = data.phantom
    return phantom.generate_volumes(
        seed=seed, domains=p.domains, patients_per_domain=p.patients_per_domain, slices_per_volume=p.slices_per_volume,
        phases=data.phases, fov_mm=p.field_of_view_mm, spacing_mm=data.spacing_mm, slice_spacing_mm=p.slice_spacing_mm,
        signature=p.signature,
    )


# data.source -> function(data params, seed) yielding Volumes in the canonical label convention, or Cases (lazy
# loaders that raise BadCaseError naming the file, so that a bad case can be skipped without stopping the source)
SOURCES: dict[str, Callable[..., Iterator[Volume | Case]]] = {
    "phantom": _phantom_volumes,
    "acdc": acdc.volumes,
    "acdc_h5": acdc_h5.volumes,
    "mnms": mnms.volumes,
    "nifti": nifti.volumes,
}


def source_files(data) -> list[Path]:
    """Every file the run's real sources may read: the files below each root and those its lists name outside it
    (the ``nifti`` case list's absolute paths, an absolute ``info_csv``); none for the phantom (made from params)."""
    files: set[Path] = set()
    for source in data.source_list().values():
        if source.source == "phantom":
            continue
        files.update(p for p in Path(source.root).rglob("*") if p.is_file())
        if source.info_csv is not None and Path(source.info_csv).is_absolute():
            files.add(Path(source.info_csv))
        if source.source == "nifti":
            files.update(nifti.listed_files(source))
    return sorted(files)


def files_digest(data) -> str:
    """A hash of the source files' names, sizes and modification times: an edited, added or removed file changes it."""
    h = hashlib.sha256()
    for path in source_files(data):
        stat = path.stat() if path.exists() else None
        h.update(f"{path}\0{stat.st_size if stat else -1}\0{stat.st_mtime_ns if stat else -1}\n".encode())
    return h.hexdigest()[:16]


def _data_digest(params) -> str:
    payload = {"data": params.data.model_dump(mode="json"), "seed": params.seed, "files": files_digest(params.data)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _cached(paths: RunPaths, digest: str) -> bool:
    """Whether the run folder holds a complete processed data set made from the same params and source files."""
    manifest = paths.data / MANIFEST
    if not manifest.exists() or json.loads(manifest.read_text()).get("digest") != digest:
        return False
    return all(p.exists() for p in (paths.data / SLICES_FILE, paths.data / METADATA_FILE, paths.splits))


def _items(data, seed: int) -> Iterator[tuple[str, Volume | Case]]:
    """(source name, case) of every source of the run, one progress bar per source. In a run with ``data.sources``
    a layout error says which entry it is about (the loaders name the one-source keys)."""
    for name, source in data.source_list().items():
        try:
            for item in tqdm(SOURCES[source.source](source, seed), desc=f"preprocessing {name} volumes", unit="vol"):
                yield name, item
        except LayoutError as exc:
            if data.sources is None:
                raise
            raise LayoutError(f"data.sources.{name}: {exc} (in a run with data.sources, a key named data.<key> "
                              f"here is data.sources.{name}.<key>)") from exc


def build_slices(params, data_dir: str | Path | None = None) -> SliceSet:
    """Read every volume of the run's sources and run it through the one preprocessing path.

    A case that raises :class:`BadCaseError` stops the build (``data.on_bad_case: error``) or is logged and left
    out (``skip``); with ``data_dir``, the left-out cases (file, reason) are listed in ``data_dir/skipped_cases.csv``
    (written, possibly empty, on every build so that it never describes an older one). A patient given twice, or a
    domain that two sources both have, is an error."""
    data = params.data
    parts: list[SliceSet] = []
    skipped: list[dict[str, str]] = []
    seen: dict[tuple[str, str], str] = {}  # (patient, phase) -> the file it came from
    domain_source: dict[str, str] = {}  # domain -> the source it came from
    renamed = {name for name, source in data.source_list().items() if name != source.source}
    for name, item in _items(data, params.seed):
        where = item.source
        try:
            vol = item.load() if isinstance(item, Case) else item
            where = vol.source
            if name in renamed:
                vol.patient = f"{name}_{vol.patient}"
            key = (vol.patient, vol.phase)
            if key in seen:
                raise DuplicateCaseError(f"{vol.source}: patient {vol.patient} ({vol.phase}) is given twice, also by "
                                         f"{seen[key]}; keep one copy below the data roots")
            seen[key] = vol.source
            if domain_source.setdefault(vol.domain, name) != name:
                raise DuplicateCaseError(f"{vol.source}: domain {vol.domain!r} of source {name} is also a domain of "
                                         f"source {domain_source[vol.domain]}; domains name one source each (rename "
                                         "one, for example the phantom's data.phantom.domains)")
            parts.append(preprocess_volume(vol, image_size=data.image_size, crop_mm=data.crop_mm,
                                           spacing_mm=data.spacing_mm, percentiles=data.intensity_percentiles))
        except BadCaseError as exc:
            if data.on_bad_case == "error":
                raise
            file = getattr(exc, "path", where)
            log.warning("skipping a bad case (data.on_bad_case=skip): %s", exc)
            skipped.append({"file": str(file), "reason": str(exc)})
    if skipped:
        log.warning("%d case(s) skipped; see %s", len(skipped), Path(data_dir) / SKIPPED if data_dir else "the log")
    if data_dir is not None:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        pd.DataFrame(skipped, columns=["file", "reason"]).to_csv(Path(data_dir) / SKIPPED, index=False)
    if not parts:
        raise ValueError(f"no slices from the source(s) {', '.join(data.source_list())}: every case was empty or skipped"
                         + (f" (see {Path(data_dir) / SKIPPED})" if data_dir is not None else ""))
    return concat(parts)


def prepare(params, paths: RunPaths, *, force: bool = False) -> SliceSet:
    """Build (or reuse) the processed slices and the splits for a run; returns the slices with their split.

    The processed set is reused when the data params, the seed and the source files (names, sizes, modification
    times) are those it was made from and all its files exist; ``force`` rebuilds it regardless."""
    digest = _data_digest(params)
    manifest_path = paths.data / MANIFEST
    if not force and _cached(paths, digest):
        log.info("reusing the processed data in %s (data params and source files unchanged)", paths.data)
        return SliceSet.load(paths.data)
    manifest_path.unlink(missing_ok=True)  # a build that fails half-way leaves no manifest that vouches for it
    slices = build_slices(params, paths.data)
    d = params.data
    splits = make_splits(
        slices.meta, seed=params.seed, train_domains=d.train_domains, n_train=d.n_train_patients,
        n_holdout=d.n_holdout_patients, n_val=d.n_val_patients, n_test=d.n_test_patients, test_split=d.test_split,
        cross_domains=d.cross_domains, n_cross=d.n_cross_patients,
    )
    slices.meta["split"] = assign(slices.meta, splits)
    slices.save(paths.data)
    save_splits(paths.splits, splits)
    write_json(manifest_path, {"digest": digest, "sources": {n: s.source for n, s in d.source_list().items()},
                               "n_slices": len(slices), "n_patients": int(slices.meta["patient"].nunique()),
                               "image_size": d.image_size})
    return slices


def load(paths: RunPaths) -> tuple[SliceSet, dict]:
    """The processed slices and splits of a run, as written by ``00_data``."""
    return SliceSet.load(paths.data), load_splits(paths.splits)
