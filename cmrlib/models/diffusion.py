"""Denoising diffusion (DDPM, Ho et al. 2020), mask-conditioned (by concatenation unless ``conditioning`` says otherwise).

One class serves the DDPM arm (images), the stage-1 mask prior (one-hot masks) and the LDM's latent model
(autoencoder latents). The network predicts the noise (``epsilon``) or the velocity (``v_prediction``, Salimans & Ho
2022); sampling goes through the diffusers schedulers (ancestral DDPM, DDIM, DPM-Solver++), a fresh scheduler per run
so that no state survives between runs.
"""

from __future__ import annotations

import math

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch import Tensor, nn

from .unet import build_denoiser

SAMPLERS = {
    # name -> (scheduler class, extra scheduler kwargs)
    "ancestral": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
}

PREDICTIONS = ("epsilon", "v_prediction")


def betas_for(schedule: str, steps: int, beta_start: float, beta_end: float) -> Tensor:
    """Noise schedule in float64: ``linear`` (Ho et al. 2020) or ``cosine`` (Nichol & Dhariwal 2021)."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
    if schedule == "cosine":
        s = 0.008
        t = torch.linspace(0, steps, steps + 1, dtype=torch.float64) / steps
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown beta schedule {schedule!r}; choose one of: linear, cosine")


class DiffusionModel(nn.Module):
    """x (B, C, H, W), cond (B, K, h, w) or None; ``cond`` enters the network as ``conditioning`` says
    (concatenated to the input by default)."""

    family = "diffusion"

    def __init__(
        self,
        *,
        data_channels: int,
        cond_channels: int,
        sample_size: int,
        unet: dict,
        conditioning: str = "concat",  # how the mask enters the network (cmrlib.models.unet.CONDITIONINGS)
        num_train_timesteps: int = 1000,  # Ho et al. 2020
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        clip_sample: bool = True,  # samplers clip the predicted x0 to [-1, 1] (never for latents; see ScheduleParams)
        min_snr_gamma: float | None = 5.0,  # Min-SNR-gamma loss weighting (Hang et al. 2023); None: the simple loss
        prediction_type: str = "epsilon",  # what the network predicts: the noise, or the velocity (v_prediction)
    ):
        super().__init__()
        if prediction_type not in PREDICTIONS:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of: {', '.join(PREDICTIONS)}")
        self.config = dict(
            family=self.family, data_channels=data_channels, cond_channels=cond_channels, sample_size=sample_size,
            unet=dict(unet), conditioning=conditioning, num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
            beta_start=beta_start, beta_end=beta_end, clip_sample=clip_sample, min_snr_gamma=min_snr_gamma,
            prediction_type=prediction_type,
        )
        self.net = build_denoiser(conditioning, data_channels=data_channels, cond_channels=cond_channels, sample_size=sample_size, unet=unet)
        betas = betas_for(beta_schedule, num_train_timesteps, beta_start, beta_end)
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.register_buffer("log_snr", torch.log(alphas_cumprod / (1 - alphas_cumprod)).float(), persistent=False)

    # -- the forward process and the network ---------------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise (Ho et al. 2020, eq. 4)."""
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def network_output(self, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """What the network predicts (``prediction_type``): the noise or the velocity."""
        return self.net(x_t, t, cond)

    def _target(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        if self.config["prediction_type"] == "epsilon":
            return noise
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return abar.sqrt() * noise - (1 - abar).sqrt() * x0  # v (Salimans & Ho 2022, eq. 10)

    def predict_noise(self, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        """The noise the network implies at (x_t, t): its output, or eps = sqrt(abar) v + sqrt(1 - abar) x_t."""
        out = self.network_output(x_t, t, cond)
        if self.config["prediction_type"] == "epsilon":
            return out
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return abar.sqrt() * out + (1 - abar).sqrt() * x_t

    # -- the common generator interface ---------------------------------------------------------------------
    def loss(self, x: Tensor, cond: Tensor | None, generator: torch.Generator) -> Tensor:
        """Prediction loss ||target - f_theta(x_t, t, c)||^2 with t ~ U{0..T-1} (Ho et al. 2020, eq. 14), the target
        being the noise or the velocity. With ``min_snr_gamma`` each sample is weighted by min(SNR_t, gamma) / SNR_t
        (noise) or min(SNR_t, gamma) / (SNR_t + 1) (velocity): in both forms the error of the implied clean image is
        weighted by min(SNR_t, gamma) (Min-SNR-gamma, Hang et al. 2023), so the many easy high-SNR steps do not
        dominate and the low-SNR steps that decide the layout are learnt within a short budget."""
        t = torch.randint(0, self.config["num_train_timesteps"], (x.shape[0],), generator=generator, device=x.device)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        out = self.network_output(self.q_sample(x, t, noise), t, cond)
        per_sample = (out - self._target(x, t, noise)).pow(2).flatten(1).mean(1)
        gamma = self.config["min_snr_gamma"]
        if gamma is None:
            return per_sample.mean()
        snr = self.log_snr[t].exp()
        scale = snr if self.config["prediction_type"] == "epsilon" else snr + 1
        return (per_sample * snr.clamp(max=gamma) / scale).mean()

    def timestep_for_snr(self, snr: float) -> int:
        """The training timestep whose signal-to-noise ratio abar/(1-abar) is closest to ``snr``."""
        return int(torch.argmin((self.log_snr - math.log(snr)).abs()))

    def noise_level(self, snr: float) -> float:
        """The noise level of this family at ``snr``: the timestep (see :meth:`timestep_for_snr`)."""
        return float(self.timestep_for_snr(snr))

    @property
    def denoiser(self) -> nn.Module:
        """The trained network (:func:`cmrlib.models.unet.build_denoiser`), called as ``net(x_t, t, cond)``."""
        return self.net

    @torch.no_grad()
    def error_at(self, x: Tensor, cond: Tensor | None, snr: float, generator: torch.Generator, draws: int = 1) -> Tensor:
        """Per-sample error of the implied noise at the timestep matching ``snr``, averaged over ``draws`` noise draws."""
        t = torch.full((x.shape[0],), self.timestep_for_snr(snr), device=x.device, dtype=torch.long)
        total = torch.zeros(x.shape[0], device=x.device)
        for _ in range(draws):
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            total += (self.predict_noise(self.q_sample(x, t, noise), t, cond) - noise).pow(2).flatten(1).mean(1)
        return total / draws

    @torch.no_grad()
    def one_step_estimate(self, x: Tensor, cond: Tensor | None, t: Tensor, generator: torch.Generator) -> Tensor:
        """The clean image the network implies in one step from ``x`` noised to the timesteps ``t`` (B,):
        (x_t - sqrt(1 - abar) eps) / sqrt(abar), the reference study's attack input."""
        t = t.to(device=x.device, dtype=torch.long)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_t = self.q_sample(x, t, noise)
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return (x_t - (1 - abar).sqrt() * self.predict_noise(x_t, t, cond)) / abar.sqrt()

    def scheduler(self, sampler: str, steps: int, **options):
        """A fresh diffusers scheduler with this model's schedule, its time grid set for ``steps`` steps. ``options``
        override scheduler settings (``clip_sample``, ``timestep_spacing``: the sampler diagnosis varies them)."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r} for a diffusion model; choose one of: {', '.join(SAMPLERS)}")
        cls, extra = SAMPLERS[sampler]
        c = self.config
        # "trailing" spacing starts few-step samplers at the last training step (Lin et al. 2024, table 2)
        kwargs = dict(num_train_timesteps=c["num_train_timesteps"], beta_schedule="linear", trained_betas=self.betas.double().cpu().numpy(),
                      prediction_type=c["prediction_type"], timestep_spacing="trailing", **extra)
        if cls is not DPMSolverMultistepScheduler:
            kwargs["clip_sample"] = c["clip_sample"]
        sched = cls(**{**kwargs, **options})
        sched.set_timesteps(steps)
        return sched

    @torch.no_grad()
    def sample(self, cond: Tensor | None, *, sampler: str = "ddim", steps: int = 50, generator: torch.Generator, n: int | None = None,
               scheduler_options: dict | None = None) -> Tensor:
        """Generate one sample per conditioning map (or ``n`` unconditional samples); ``scheduler_options`` as in
        :meth:`scheduler`."""
        batch = cond.shape[0] if cond is not None else n
        c = self.config
        x = torch.randn((batch, c["data_channels"], c["sample_size"], c["sample_size"]), generator=generator, device=self.betas.device)
        sched = self.scheduler(sampler, steps, **(scheduler_options or {}))
        for t in sched.timesteps:
            out = self.network_output(x, t.expand(batch).to(x.device), cond)
            x = sched.step(out, t, x, generator=generator).prev_sample
        return x
