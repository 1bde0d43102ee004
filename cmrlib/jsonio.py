"""The one JSON writer of the study: every metrics file, split file, record and data card goes through it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .paths import atomic_path


def jsonable(value):
    """Plain JSON values: NaN as null, an infinity as the string "inf" / "-inf", numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) else (str(float(value)) if math.isinf(value) else float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: str | Path, obj: object) -> Path:
    """Write JSON atomically, as :func:`jsonable` values (valid JSON: no NaN)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(jsonable(obj), indent=2, sort_keys=False) + "\n")
    return path
