"""ACDC in its official layout: ``patientNNN/patientNNN_frameMM.nii.gz`` + ``_gt.nii.gz`` + ``Info.cfg``.

``Info.cfg`` gives the ED and ES frames and the group (NOR, MINF, DCM, HCM, RV; kept as metadata). ACDC labels
(1 RV, 2 MYO, 3 LV) are remapped to the canonical ones. ACDC is one domain, ``"ACDC"`` (the scanner, 1.5 T or 3 T,
is not in the files). Orientation: the fixed ACDC transform of :mod:`cmrlib.data.io` (the header's affine is not used).
A patient below a ``training`` or ``testing`` folder (the official ``database/training``, ``database/testing``) has
that layout split (``data.test_split: layout`` tests on the 50 testing patients).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

from ..labels import LV, MYO, RV
from .io import ACDC_ORIENTATION, Case, LayoutError, bad, layout_split, map_labels, read_pair, require_root
from .records import Volume

DATASET = "acdc"
DOMAIN = "ACDC"
ACDC_TO_CANONICAL = {0: 0, 1: RV, 2: MYO, 3: LV}
LAYOUT = ("ACDC: expected patientNNN/patientNNN_frameMM.nii.gz with patientNNN_frameMM_gt.nii.gz and Info.cfg "
          "(ED, ES, Group) under data.root (the official 'database/training' and 'database/testing' folders work); "
          "download ACDC from the challenge site https://www.creatis.insa-lyon.fr/Challenge/acdc/ "
          "(for the preprocessed HDF5 layout use data.source=acdc_h5)")
_PATIENT = re.compile(r"^patient\d{3}$")


def patient_folders(root: Path) -> list[Path]:
    """``patientNNN`` folders at most two levels below ``root`` (``root/``, ``root/training/``, ...)."""
    found = {p for pattern in ("patient*", "*/patient*", "*/*/patient*") for p in root.glob(pattern)
             if p.is_dir() and _PATIENT.match(p.name)}
    return sorted(found, key=lambda p: (p.name, str(p)))


def read_info(path: Path) -> dict[str, str]:
    """``Info.cfg`` as a dict (``ED``, ``ES``, ``Group``, ...)."""
    if not path.is_file():
        raise bad(path, "Info.cfg not found (it gives the ED and ES frames)")
    info: dict[str, str] = {}
    try:
        for line in path.read_text().splitlines():
            if ":" in line:
                key, value = line.split(":", 1)
                info[key.strip()] = value.strip()
        for key in ("ED", "ES"):
            int(info[key])
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise bad(path, f"cannot read the ED and ES frames from Info.cfg ({type(exc).__name__}: {exc})") from exc
    return info


def _load(folder: Path, phase: str, data, split: str) -> Volume:
    info = read_info(folder / "Info.cfg")
    frame = int(info[phase])
    stem = f"{folder.name}_frame{frame:02d}"
    image_path, label_path = folder / f"{stem}.nii.gz", folder / f"{stem}_gt.nii.gz"
    image, mask, spacing, slice_spacing = read_pair(image_path, label_path, orientation=ACDC_ORIENTATION)
    return Volume(
        image=image, mask=map_labels(mask, data, label_path, ACDC_TO_CANONICAL), dataset=DATASET, patient=f"{DATASET}_{folder.name}",
        domain=DOMAIN, phase=phase, spacing=spacing, slice_spacing=slice_spacing, source=str(image_path), layout_split=split,
        extra={"group": info.get("Group", ""), "frame": frame},
    )


def volumes(data, seed: int = 0) -> Iterator[Case]:
    """One lazy case per patient and phase in ``data.phases``."""
    root = require_root(data.root, "ACDC", LAYOUT)
    folders = patient_folders(root)
    if not folders:
        raise LayoutError(f"ACDC: no patientNNN folders under {root}. {LAYOUT}")
    for folder in folders:
        split = layout_split(folder.parent, root)
        for phase in data.phases:
            yield Case(str(folder / "Info.cfg"), lambda folder=folder, phase=phase, split=split: _load(folder, phase, data, split))
