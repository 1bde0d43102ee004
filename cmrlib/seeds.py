"""Seeds: every random stream of the study is fixed by the run seed and a name for its purpose.

``seed_for(seed, "train", "ddpm")`` gives the DDPM's training seed, ``seed_for(seed, "bootstrap", ...)`` a bootstrap's,
and so on: adding a stream never shifts another, and the same params give the same numbers. Inside one training,
the loop splits its seed into one stream per process and purpose (batches, noise) with :func:`process_seed`; a model
built for training is built under :func:`initial_weights` of that training's seed.
"""

from __future__ import annotations

import hashlib
import zlib
from contextlib import contextmanager
from typing import Iterator


def seed_for(seed: int, *names: str) -> int:
    """A stable seed in [0, 2**31) per (run seed, purpose)."""
    return (seed * 1_000_003 + zlib.crc32("/".join(names).encode())) % 2**31


def process_seed(seed: int, rank: int, stream: int) -> int:
    """A 63-bit seed for (training seed, process index, stream) so that processes and streams never share draws."""
    digest = hashlib.sha256(f"cmrlib.training:{seed}:{rank}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@contextmanager
def initial_weights(seed: int) -> Iterator[None]:
    """Models built inside draw their initial weights from ``seed``, not from whatever used torch's global generator
    before (a test, a notebook cell); the global generator is restored afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
