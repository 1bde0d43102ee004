"""Latent diffusion (Rombach et al. 2022): a KL autoencoder trained on the training patients, then frozen, and
the mask-conditioned :class:`DiffusionModel` in its latent space (the mask resized to the latent grid, or fed to
SPADE or a ControlNet: ``conditioning``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import Tensor, nn

from .diffusion import DiffusionModel


class Autoencoder(nn.Module):
    """A small diffusers ``AutoencoderKL``: one halving per extra level of ``widths``; loss L1 + kl_weight x KL."""

    family = "autoencoder"

    def __init__(self, *, channels: int = 1, sample_size: int, widths: list[int], latent_channels: int = 4,
                 layers_per_block: int = 1, norm_groups: int = 8, kl_weight: float = 1e-4):
        super().__init__()
        self.config = dict(family=self.family, channels=channels, sample_size=sample_size, widths=list(widths),
                           latent_channels=latent_channels, layers_per_block=layers_per_block, norm_groups=norm_groups, kl_weight=kl_weight)
        self.net = AutoencoderKL(
            in_channels=channels, out_channels=channels, down_block_types=("DownEncoderBlock2D",) * len(widths),
            up_block_types=("UpDecoderBlock2D",) * len(widths), block_out_channels=tuple(widths), latent_channels=latent_channels,
            layers_per_block=layers_per_block, norm_num_groups=norm_groups, sample_size=sample_size,
        )

    @property
    def latent_size(self) -> int:
        return self.config["sample_size"] // 2 ** (len(self.config["widths"]) - 1)

    def loss(self, x: Tensor, cond: Tensor | None, generator: torch.Generator) -> Tensor:
        posterior = self.net.encode(x).latent_dist
        recon = self.net.decode(posterior.sample(generator=generator)).sample
        return F.l1_loss(recon, x) + self.config["kl_weight"] * posterior.kl().mean() / x[0].numel()

    def encode(self, x: Tensor) -> Tensor:
        """The posterior mean (deterministic latents)."""
        return self.net.encode(x).latent_dist.mean

    def decode(self, z: Tensor) -> Tensor:
        return self.net.decode(z).sample

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


class LatentDiffusion(nn.Module):
    """Frozen autoencoder + diffusion on latents scaled to unit variance (``latent_scale``, as Rombach et al.)."""

    family = "latent_diffusion"

    def __init__(self, *, autoencoder: dict, diffusion: dict):
        super().__init__()
        self.autoencoder = Autoencoder(**{k: v for k, v in autoencoder.items() if k != "family"})
        self.autoencoder.requires_grad_(False)
        self.diffusion = DiffusionModel(**{k: v for k, v in diffusion.items() if k != "family"})
        self.register_buffer("latent_scale", torch.tensor(1.0))
        self.config = dict(family=self.family, autoencoder=self.autoencoder.config, diffusion=self.diffusion.config)

    def train(self, mode: bool = True) -> "LatentDiffusion":
        super().train(mode)
        self.autoencoder.eval()  # frozen: never in training mode
        return self

    @torch.no_grad()
    def set_latent_scale(self, images: Tensor) -> float:
        """Scale latents to unit standard deviation over ``images`` (the training set)."""
        self.latent_scale.fill_(1.0)  # training_inputs applies the current scale: measure the raw latents
        self.latent_scale.fill_(1.0 / float(self.training_inputs(images).std()))
        return float(self.latent_scale)

    @torch.no_grad()
    def to_latent(self, x: Tensor) -> Tensor:
        return self.autoencoder.encode(x) * self.latent_scale

    @torch.no_grad()
    def training_inputs(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """What :meth:`loss` takes: the scaled latents of ``images``. The encoder is frozen and deterministic (the
        posterior mean), so the training loop encodes its whole set once instead of every batch."""
        return torch.cat([self.to_latent(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])

    def loss(self, z: Tensor, cond: Tensor | None, generator: torch.Generator) -> Tensor:
        """The latent UNet's noise-prediction loss on latents ``z = training_inputs(images)``."""
        return self.diffusion.loss(z, cond, generator)

    def noise_level(self, snr: float) -> float:
        """The latent model's timestep at ``snr`` (the attack runs in latent space)."""
        return self.diffusion.noise_level(snr)

    @property
    def denoiser(self) -> nn.Module:
        """The trained network: the latent UNet."""
        return self.diffusion.net

    @torch.no_grad()
    def error_at(self, x: Tensor, cond: Tensor | None, snr: float, generator: torch.Generator, draws: int = 1) -> Tensor:
        """The latent model's noise-prediction error (the membership attack runs in latent space)."""
        return self.diffusion.error_at(self.to_latent(x), cond, snr, generator, draws)

    @torch.no_grad()
    def one_step_estimate(self, x: Tensor, cond: Tensor | None, t: Tensor, generator: torch.Generator) -> Tensor:
        """The latent model's one-step clean estimate at the timesteps ``t`` (B,), decoded to an image."""
        z0 = self.diffusion.one_step_estimate(self.to_latent(x), cond, t, generator)
        return self.autoencoder.decode(z0 / self.latent_scale)

    @torch.no_grad()
    def sample(self, cond: Tensor | None, *, sampler: str = "ddim", steps: int = 50, generator: torch.Generator, n: int | None = None) -> Tensor:
        z = self.diffusion.sample(cond, sampler=sampler, steps=steps, generator=generator, n=n)
        return self.autoencoder.decode(z / self.latent_scale).clamp(-1, 1)
