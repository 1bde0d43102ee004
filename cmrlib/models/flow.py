"""Flow matching on the straight path (rectified flow; Liu et al. 2023, Lipman et al. 2023), mask-conditioned
(by concatenation unless ``conditioning`` says otherwise).

Path x_t = (1 - t) x_noise + t x_data for t in [0, 1] (t = 1 is data), target velocity u = x_data - x_noise.
The network sees the timestep t x 999, as in the reference study. Samplers integrate dx/dt = v(x, t) from t = 0
to 1 on a uniform grid with Euler, midpoint or Heun steps.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .unet import build_denoiser

Velocity = Callable[[Tensor, Tensor], Tensor]


def path(x_data: Tensor, x_noise: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(x_t, u_t) of the straight path at times ``t`` (B,)."""
    tt = t.view(-1, *([1] * (x_data.dim() - 1)))
    return (1 - tt) * x_noise + tt * x_data, x_data - x_noise


def time_for_snr(snr: float) -> float:
    """The time whose signal-to-noise ratio t^2 / (1 - t)^2 equals ``snr`` (matches a diffusion step's abar/(1-abar))."""
    s = math.sqrt(snr)
    return s / (1 + s)


# ODE steps: x at t -> x at t_next, with v the velocity field (one contract for every solver)
def euler_step(v: Velocity, x: Tensor, t: float, t_next: float) -> Tensor:
    return x + (t_next - t) * v(x, t)


def midpoint_step(v: Velocity, x: Tensor, t: float, t_next: float) -> Tensor:
    h = t_next - t
    return x + h * v(x + 0.5 * h * v(x, t), t + 0.5 * h)


def heun_step(v: Velocity, x: Tensor, t: float, t_next: float) -> Tensor:
    h = t_next - t
    k1 = v(x, t)
    k2 = v(x + h * k1, t_next)
    return x + 0.5 * h * (k1 + k2)


SAMPLERS = {"euler": euler_step, "midpoint": midpoint_step, "heun": heun_step}


def time_grid(steps: int) -> list[float]:
    """steps + 1 uniform times from 0 (noise) to 1 (data)."""
    if steps < 1:
        raise ValueError(f"sampling steps must be at least 1, got {steps}")
    return [i / steps for i in range(steps + 1)]


def integrate(v: Velocity, x: Tensor, sampler: str, steps: int) -> Tensor:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r} for flow matching; choose one of: {', '.join(SAMPLERS)}")
    step = SAMPLERS[sampler]
    grid = time_grid(steps)
    for t, t_next in zip(grid[:-1], grid[1:]):
        x = step(v, x, t, t_next)
    return x


class FlowMatchingModel(nn.Module):
    family = "flow"

    def __init__(
        self,
        *,
        data_channels: int,
        cond_channels: int,
        sample_size: int,
        unet: dict,
        conditioning: str = "concat",  # how the mask enters the network (cmrlib.models.unet.CONDITIONINGS)
        time_sampling: str = "uniform",  # or "logit_normal" (Esser et al. 2024, SD3)
    ):
        super().__init__()
        if time_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"unknown time_sampling {time_sampling!r}; choose one of: uniform, logit_normal")
        self.config = dict(family=self.family, data_channels=data_channels, cond_channels=cond_channels,
                           sample_size=sample_size, unet=dict(unet), conditioning=conditioning,
                           time_sampling=time_sampling)
        self.net = build_denoiser(conditioning, data_channels=data_channels, cond_channels=cond_channels, sample_size=sample_size, unet=unet)

    def velocity(self, x_t: Tensor, t: Tensor | float, cond: Tensor | None) -> Tensor:
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device).expand(x_t.shape[0])
        return self.net(x_t, t * 999, cond)

    def sample_time(self, n: int, generator: torch.Generator, device) -> Tensor:
        if self.config["time_sampling"] == "logit_normal":
            return torch.sigmoid(torch.randn(n, generator=generator, device=device))
        return torch.rand(n, generator=generator, device=device)

    def loss(self, x: Tensor, cond: Tensor | None, generator: torch.Generator) -> Tensor:
        """Conditional flow matching loss ||v_theta(x_t, t, c) - (x_data - x_noise)||^2."""
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        t = self.sample_time(x.shape[0], generator, x.device)
        x_t, u = path(x, noise, t)
        return F.mse_loss(self.velocity(x_t, t, cond), u)

    def noise_level(self, snr: float) -> float:
        """The noise level of this family at ``snr``: the time on the straight path (:func:`time_for_snr`)."""
        return time_for_snr(snr)

    @property
    def denoiser(self) -> nn.Module:
        """The trained network (:func:`cmrlib.models.unet.build_denoiser`), called as ``net(x_t, t, cond)``."""
        return self.net

    @torch.no_grad()
    def error_at(self, x: Tensor, cond: Tensor | None, snr: float, generator: torch.Generator, draws: int = 1) -> Tensor:
        """Per-sample velocity error at the time whose SNR equals ``snr``, averaged over ``draws`` noise draws."""
        t = torch.full((x.shape[0],), time_for_snr(snr), device=x.device, dtype=x.dtype)
        total = torch.zeros(x.shape[0], device=x.device)
        for _ in range(draws):
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_t, u = path(x, noise, t)
            total += (self.velocity(x_t, t, cond) - u).pow(2).flatten(1).mean(1)
        return total / draws

    @torch.no_grad()
    def one_step_estimate(self, x: Tensor, cond: Tensor | None, t: Tensor, generator: torch.Generator) -> Tensor:
        """The clean image the velocity implies in one step from ``x`` at the times ``t`` (B,): x_t + (1 - t) v."""
        t = t.to(device=x.device, dtype=x.dtype)
        x_t, _ = path(x, torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype), t)
        return x_t + (1 - t).view(-1, 1, 1, 1) * self.velocity(x_t, t, cond)

    @torch.no_grad()
    def sample(self, cond: Tensor | None, *, sampler: str = "euler", steps: int = 10, generator: torch.Generator, n: int | None = None) -> Tensor:
        batch = cond.shape[0] if cond is not None else n
        c = self.config
        device = next(self.parameters()).device
        x = torch.randn((batch, c["data_channels"], c["sample_size"], c["sample_size"]), generator=generator, device=device)
        return integrate(lambda x_t, t: self.velocity(x_t, t, cond), x, sampler, steps)
