"""A generic folder of short-axis NIfTI image/label pairs listed in a CSV (``data.csv``, default ``cases.csv``).

CSV columns: ``patient``, ``domain``, ``phase`` (ED or ES), ``image``, ``label`` (paths relative to the CSV's
folder, or absolute), and optionally ``frame`` (0-based frame of a 4D file) and ``split`` (train, val or test: the
data's own split, used by ``data.test_split: layout``). Labels are canonical (0 background, 1 LV, 2 MYO, 3 RV)
unless ``data.label_map`` gives the files' numbering. Orientation from each image's affine; spacing from the header.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .io import SPLIT_VALUES, Case, DuplicateCaseError, LayoutError, bad, map_labels, read_csv, read_pair, require_root
from .records import Volume

DATASET = "nifti"
COLUMNS = ("patient", "domain", "phase", "image", "label")
LAYOUT = ("NIfTI folder: expected a CSV (data.csv, default cases.csv, in data.root) with columns patient, domain, "
          "phase, image, label (optional frame) listing NIfTI image/label pairs with canonical labels "
          "(1 LV, 2 MYO, 3 RV)")


def _load(row: dict[str, str], base: Path, line: int, csv: Path, data) -> Volume:
    image, label = (Path(row[k]) if Path(row[k]).is_absolute() else base / row[k] for k in ("image", "label"))
    frame_text = row.get("frame", "").strip()
    try:
        frame = int(frame_text) if frame_text else None
    except ValueError as exc:
        raise bad(csv, f"line {line}: frame {frame_text!r} is not an integer") from exc
    img, mask, spacing, slice_spacing = read_pair(image, label, frame=frame)
    return Volume(image=img, mask=map_labels(mask, data, label), dataset=DATASET,
                  patient=f"{DATASET}_{row['patient']}", domain=row["domain"], phase=row["phase"], spacing=spacing, slice_spacing=slice_spacing,
                  source=str(image), layout_split=row.get("split", ""), extra={"frame": frame})


def case_list(data) -> Path:
    """The case list ``data.csv``: as given when absolute, else below ``data.root``."""
    return Path(data.csv) if Path(data.csv).is_absolute() else Path(data.root) / data.csv


def listed_files(data) -> list[Path]:
    """The files the case list names by absolute path (outside ``data.root``); the list itself if it is outside."""
    csv = case_list(data)
    files = [] if csv.is_relative_to(data.root) else [csv]
    if csv.is_file():
        table = read_csv(csv, "case list")
        files += [Path(v) for col in ("image", "label") if col in table for v in table[col] if Path(v).is_absolute()]
    return files


def volumes(data, seed: int = 0) -> Iterator[Case]:
    root = require_root(data.root, "NIfTI folder", LAYOUT)
    csv = case_list(data)
    if not csv.is_file():
        raise LayoutError(f"NIfTI folder: {csv} not found. {LAYOUT}")
    table = read_csv(csv, "case list")
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise LayoutError(f"{csv}: missing column(s) {missing} (has {list(table.columns)}). {LAYOUT}")
    bad_phase = sorted(set(table["phase"]) - {"ED", "ES"})
    if bad_phase:
        raise LayoutError(f"{csv}: phase must be ED or ES, found {bad_phase}")
    bad_split = sorted(set(table["split"]) - set(SPLIT_VALUES)) if "split" in table.columns else []
    if bad_split:
        raise LayoutError(f"{csv}: split must be train, val, test or empty, found {bad_split}")
    rows = table.to_dict("records")
    first_line: dict[tuple[str, str], int] = {}
    for i, row in enumerate(rows):
        line = i + 2  # the header is line 1
        key = (row["patient"], row["phase"])
        if key in first_line:
            raise DuplicateCaseError(f"{csv}: line {line} repeats patient {row['patient']} ({row['phase']}) of line "
                                     f"{first_line[key]}; keep one row per patient and phase")
        first_line[key] = line
        for column in ("image", "label"):
            if not Path(row[column]).is_absolute() and not (csv.parent / row[column]).resolve().is_relative_to(root.resolve()):
                raise LayoutError(f"{csv}: line {line}: {column} {row[column]!r} leads outside data.root {root}; "
                                  "relative paths stay inside the root (give a file elsewhere by its absolute path)")
    for i, row in enumerate(rows):
        if row["phase"] in data.phases:
            yield Case(str(csv.parent / row["image"]), lambda row=row, i=i: _load(row, csv.parent, i + 2, csv, data))
