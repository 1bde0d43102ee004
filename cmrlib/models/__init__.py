"""Generative models behind one interface.

Every model is an ``nn.Module`` with ``config`` (every hyperparameter, stored in checkpoints), and:
- ``loss(x, cond, generator)``: the training loss of a batch; all randomness from ``generator``;
- ``sample(cond, *, sampler, steps, generator, n=None)``: one sample per conditioning map (or ``n`` unconditional);
- ``error_at(x, cond, snr, generator, draws)``: per-sample denoising (or velocity) error at the noise level whose
  signal-to-noise ratio is ``snr``, the same grid for every family (used by the membership attacks);
- ``noise_level(snr)``: that noise level in the family's own units (a diffusion timestep, a flow time);
- ``denoiser``: the trained network (the UNet), for benchmarks that time it alone.
``cond`` is the one-hot mask (B, 4, H, W), concatenated to the network input (resized to the latent grid for the LDM)
by default, or fed to SPADE or a ControlNet (``conditioning``, :mod:`cmrlib.models.unet`).
"""

from __future__ import annotations

import torch
from torch import nn

from .diffusion import SAMPLERS as DIFFUSION_SAMPLERS
from .diffusion import DiffusionModel
from .flow import SAMPLERS as FLOW_SAMPLERS
from .flow import FlowMatchingModel
from .latent import Autoencoder, LatentDiffusion
from .segmentation import SegmentationModel, one_hot

FAMILIES: dict[str, type[nn.Module]] = {
    cls.family: cls for cls in (DiffusionModel, FlowMatchingModel, Autoencoder, LatentDiffusion, SegmentationModel)
}


def device() -> torch.device:
    """Where models sample and are evaluated: the GPU if there is one, else the CPU (random streams differ between
    the two)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build(config: dict) -> nn.Module:
    """Rebuild a model from its stored ``config``."""
    family = config.get("family")
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[family](**{k: v for k, v in config.items() if k != "family"})


__all__ = ["SegmentationModel", "one_hot", "DiffusionModel", "FlowMatchingModel", "Autoencoder", "LatentDiffusion", "build", "device", "FAMILIES", "DIFFUSION_SAMPLERS", "FLOW_SAMPLERS"]
