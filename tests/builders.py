"""One builder of small study params for the tests: tiny phantom data and networks, overlaid with what a test needs."""

from __future__ import annotations

from typing import Any

from cmrlib import params

TINY_SEGMENTER = {"widths": [8, 16, 32], "steps": 30, "batch_size": 8, "lr": 3e-3, "warmup_steps": 3}
TINY_UNET = {"widths": [8, 16], "attention": [False, False], "head_dim": 8}
TINY_TRAIN = {"steps": 8, "batch_size": 4, "warmup_steps": 2, "checkpoint_every": 4}

TINY: dict[str, Any] = {
    "data": {"image_size": 32, "crop_mm": 150.0, "n_train_patients": 4, "n_holdout_patients": 1, "n_val_patients": 1,
             "n_test_patients": 3, "phantom": {"patients_per_domain": 5, "slices_per_volume": 6}},
    "generators": {"n_synthetic": 16, "mask_prior": {"unet": TINY_UNET, "train": TINY_TRAIN},
                   "ddpm": {"unet": TINY_UNET, "train": TINY_TRAIN},
                   "ldm": {"autoencoder": {"widths": [8, 16], "train": TINY_TRAIN}, "unet": TINY_UNET, "train": TINY_TRAIN},
                   "fm": {"unet": TINY_UNET, "train": TINY_TRAIN}},
    "fidelity": {"segmenter": TINY_SEGMENTER, "kid_subsets": 5, "diversity_pairs": 10, "bootstrap": 50},
    "utility": {"segmenter": TINY_SEGMENTER, "workers": 1, "bootstrap": 50},
    "privacy": {"bootstrap": 50},
}


def tiny_params(run_name: str = "test", seed: int = 0, **sections: dict) -> params.StudyParams:
    """The default recipe with :data:`TINY` over it, then ``sections`` (``data={...}``, ``fidelity={...}``, ...)
    merged key by key over that, as a params file is over the recipe."""
    raw = params.overlay(params.overlay(params.recipe(), TINY), {"run_name": run_name, "seed": seed, **sections})
    return params.validate(raw, f"tiny_params({run_name!r})")
