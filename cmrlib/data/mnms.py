"""M&Ms (multi-centre, multi-vendor): the vendor (A, B, C, D) is the domain. Labels are already canonical.

Two layouts under ``data.root``:

- official 4D: ``<code>/<code>_sa.nii.gz`` + ``<code>_sa_gt.nii.gz`` anywhere below the root (``Training/Labeled``,
  ``Validation``, ``Testing``); the ED and ES frame indices (0-based) and the vendor come from the information CSV
  (``data.info_csv``, else the one CSV below the root with code, vendor, ED and ES columns). Subjects without a
  ``_gt`` file (the unlabelled training subjects) are left out.
- per frame (ED and ES cut out of the 4D files): ``images/<code>_sa_{ED,ES}.nii.gz`` and
  ``labels/<code>_sa_{ED,ES}_gt.nii.gz`` with ``manifest.csv`` (subject, phase, vendor, centre).

The layout's own split (``data.test_split: layout``): the official folder a subject is in (``Training``,
``Validation``, ``Testing``), or a ``split`` column (train, val, test) of the information CSV or manifest.

Orientation from each file's affine (:func:`cmrlib.data.io.orientation_from_affine`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Iterator

from .io import SPLIT_VALUES, Case, DuplicateCaseError, LayoutError, bad, layout_split, map_labels, read_csv, read_pair, require_root
from .records import Volume

log = logging.getLogger(__name__)

DATASET = "mnms"
LAYOUT = ("M&Ms: expected <code>/<code>_sa.nii.gz with <code>_sa_gt.nii.gz (4D, official release) and the "
          "dataset information CSV (external code, vendor, centre, ED, ES; set data.info_csv if it is not below "
          "data.root), or images/<code>_sa_ED.nii.gz + labels/<code>_sa_ED_gt.nii.gz with manifest.csv; download "
          "M&Ms from https://www.ub.edu/mnms/")
# accepted spellings of the information CSV's columns (lower case, without spaces, '_' and '-')
_COLUMNS = {
    "code": ("externalcode", "subject", "code", "id", "subjectcode"),
    "vendor": ("vendor",),
    "vendor_name": ("vendorname",),
    "centre": ("centre", "center"),
    "ED": ("ed",),
    "ES": ("es",),
    "split": ("split",),
}
_FRAME_FILE = re.compile(r"^(.+)_sa_(ED|ES)\.nii\.gz$")


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", str(name)).lower()


def read_info(path: Path, need_frames: bool) -> dict[str, dict[str, str]]:
    """code -> {vendor, vendor_name, centre, ED, ES} from the information CSV (or the sample's manifest)."""
    table = read_csv(path, "M&Ms information CSV")
    keys = {_key(c): c for c in table.columns}
    cols = {name: next((keys[k] for k in spellings if k in keys), None) for name, spellings in _COLUMNS.items()}
    needed = ["code", "vendor"] + (["ED", "ES"] if need_frames else [])
    missing = [n for n in needed if cols[n] is None]
    if missing:
        raise LayoutError(f"{path}: the M&Ms information CSV lacks column(s) {missing} (has {list(table.columns)}). {LAYOUT}")
    phase_col = keys.get("phase")  # the per-frame manifest has a row per subject and phase
    info: dict[str, dict[str, str]] = {}
    lines: dict[tuple[str, str], int] = {}
    for i, row in table.iterrows():
        code, line = str(row[cols["code"]]).strip(), int(i) + 2  # the header is line 1
        if not code:
            continue
        key = (code, str(row[phase_col]).strip() if phase_col else "")
        if key in lines:
            raise DuplicateCaseError(f"{path}: line {line} lists subject {code}{' ' + key[1] if key[1] else ''} again "
                                     f"(first on line {lines[key]}); keep one row")
        record = {n: str(row[c]).strip() for n, c in cols.items() if c is not None and n != "code"}
        if code in info and info[code]["vendor"] != record["vendor"]:
            first = min(v for k, v in lines.items() if k[0] == code)
            raise DuplicateCaseError(f"{path}: line {line} gives subject {code} vendor {record['vendor']!r}, line "
                                     f"{first} vendor {info[code]['vendor']!r}; one subject has one vendor")
        lines[key] = line
        info.setdefault(code, record)
    return info


def _info_csv(root: Path, data, default: Path | None) -> Path | None:
    if data.info_csv is not None:
        path = Path(data.info_csv)
        return path if path.is_absolute() else root / path
    if default is not None and default.is_file():
        return default
    candidates = []
    for csv in sorted(list(root.glob("*.csv")) + list(root.glob("*/*.csv"))):
        try:
            header = {_key(c) for c in read_csv(csv, "CSV").columns}
        except LayoutError:
            continue
        if {"vendor", "ed", "es"} <= header:
            candidates.append(csv)
    if len(candidates) > 1:
        raise LayoutError(f"M&Ms: several information CSVs under {root} ({[str(c) for c in candidates]}); choose one with --set data.info_csv=PATH")
    return candidates[0] if candidates else None


def _volume(code: str, phase: str, meta: dict[str, str], image: Path, label: Path, frame: int | None, data,
            split: str) -> Volume:
    img, mask, spacing, slice_spacing = read_pair(image, label, frame=frame)
    split = meta.get("split", "").lower() or split
    if split not in SPLIT_VALUES:
        raise bad(image, f"split {split!r} of subject {code} in the information CSV is not train, val or test")
    vendor = meta.get("vendor", "")
    if not vendor:
        raise bad(image, f"no vendor for subject {code} in the information CSV")
    return Volume(
        image=img, mask=map_labels(mask, data, label), dataset=DATASET,
        patient=f"{DATASET}_{code}", domain=vendor, phase=phase, spacing=spacing, slice_spacing=slice_spacing, source=str(image), layout_split=split,
        extra={"centre": meta.get("centre", ""), "vendor_name": meta.get("vendor_name", ""), "frame": frame},
    )


def _frame(code: str, phase: str, meta: dict[str, str], info_path: Path | None) -> int:
    try:
        return int(float(meta[phase]))
    except (KeyError, ValueError) as exc:
        raise bad(info_path or "<no information CSV>", f"no {phase} frame index for subject {code}") from exc


def _per_frame_cases(root: Path, data) -> Iterator[Case]:
    info_path = _info_csv(root, data, root / "manifest.csv")
    info = read_info(info_path, need_frames=False) if info_path else {}
    if not info:
        raise LayoutError(f"M&Ms: no manifest.csv or information CSV with the vendors under {root}. {LAYOUT}")
    codes = sorted({m.group(1) for p in (root / "images").glob("*_sa_*.nii.gz") if (m := _FRAME_FILE.match(p.name))})
    for code in codes:
        for phase in data.phases:
            image = root / "images" / f"{code}_sa_{phase}.nii.gz"
            label = root / "labels" / f"{code}_sa_{phase}_gt.nii.gz"
            if code not in info:
                yield Case(str(image), lambda image=image, code=code: _raise(bad(image, f"subject {code} is not in {info_path}")))
                continue
            yield Case(str(image), lambda c=code, ph=phase, i=image, lb=label: _volume(c, ph, info[c], i, lb, None, data, ""))


def _raise(exc: Exception) -> Volume:
    raise exc


def _official_cases(root: Path, data) -> Iterator[Case]:
    images = sorted(p for p in root.rglob("*_sa.nii.gz") if p.name == f"{p.parent.name}_sa.nii.gz")
    if not images:
        raise LayoutError(f"M&Ms: no <code>/<code>_sa.nii.gz files (nor images/<code>_sa_ED.nii.gz) under {root}. {LAYOUT}")
    info_path = _info_csv(root, data, None)
    if info_path is None:
        raise LayoutError(f"M&Ms: no information CSV (code, vendor, ED, ES) under {root}; give it with --set data.info_csv=PATH. {LAYOUT}")
    info = read_info(info_path, need_frames=True)
    unlabelled = 0
    for image in images:
        code = image.parent.name
        label = image.with_name(f"{code}_sa_gt.nii.gz")
        if not label.exists():
            unlabelled += 1
            continue
        for phase in data.phases:
            if code not in info:
                yield Case(str(image), lambda image=image, code=code: _raise(bad(image, f"subject {code} is not in {info_path}")))
                continue
            yield Case(str(image), lambda c=code, ph=phase, i=image, lb=label, s=layout_split(image.parent, root):
                       _volume(c, ph, info[c], i, lb, _frame(c, ph, info[c], info_path), data, s))
    if unlabelled:
        log.info("M&Ms: left out %d subjects without a _sa_gt.nii.gz label file (unlabelled)", unlabelled)


def volumes(data, seed: int = 0) -> Iterator[Case]:
    root = require_root(data.root, "M&Ms", LAYOUT)
    if (root / "images").is_dir() and any((root / "images").glob("*_sa_E[DS].nii.gz")):
        yield from _per_frame_cases(root, data)
    else:
        yield from _official_cases(root, data)
