"""The first call of every notebook: params, run folder, seeds and plotting defaults in one place."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from . import params as params_mod
from . import report
from .data import terms
from .paths import RunPaths


def setup(params_path: str, run_dir: str = "") -> tuple[params_mod.StudyParams, RunPaths]:
    """Load and validate the params, locate the run folder, seed every generator, set figure defaults (and the
    credit line of real data under every figure)."""
    params = params_mod.load(params_path)
    paths = RunPaths(Path(run_dir).resolve()) if run_dir else RunPaths.for_run(params.run_name)
    paths.root.mkdir(parents=True, exist_ok=True)
    seed_everything(params.seed)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "font.size": 9})
    report.set_figure_credit(terms.figure_credit(params.data))
    return params, paths


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
