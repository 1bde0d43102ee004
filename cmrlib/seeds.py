"""Seeds: every random stream of the study is fixed by the run seed and a name for its purpose.

``seed_for(seed, "train", "ddpm")`` gives the DDPM's training seed, ``seed_for(seed, "bootstrap", ...)`` a bootstrap's,
and so on: adding a stream never shifts another, and the same params give the same numbers.
"""

from __future__ import annotations

import zlib


def seed_for(seed: int, *names: str) -> int:
    """A stable seed in [0, 2**31) per (run seed, purpose)."""
    return (seed * 1_000_003 + zlib.crc32("/".join(names).encode())) % 2**31
