"""The denoiser of every arm, one call ``net(x, t, cond)`` whatever the conditioning: a UNet sized by params.

- ``concat`` (the default of every arm): diffusers' ``UNet2DModel`` with the one-hot mask joined to its input as
  channels, resized to x's grid by area averaging (class fractions per cell) when the grids differ (the LDM's
  latents);
- ``spade``: MONAI's ``SPADEDiffusionModelUNet``, the mask injected by SPADE normalisation (Park et al. 2019) in every
  residual block (resized by nearest neighbour to each block's grid): the reference study's LDM;
- ``controlnet``: MONAI's ``DiffusionModelUNet``, which never sees the mask, plus MONAI's ``ControlNet`` (Zhang et
  al. 2023), a trainable copy of its encoder fed the mask, whose zero-initialised outputs are added to the UNet's
  skip connections: the reference study's FM. Both are trained together from scratch within the arm's one budget.

MONAI's UNet at the same widths, attention and blocks per level has the parameter count of diffusers' (2.69M at the
default sizes); SPADE and the ControlNet add their own parameters on top (``docs/protocol.md#conditioning``).
"""

from __future__ import annotations

import typing

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import Tensor, nn

from ..params import Conditioning

CONDITIONINGS = typing.get_args(Conditioning)
SPADE_HIDDEN = 32  # channels of SPADE's shared convolution on the mask (MONAI's default, 128, would add 4M parameters)


def check_unet(widths, attention, norm_groups: int, head_dim: int, sample_size: int) -> None:
    """The sizes a UNet of either library accepts, checked with a message that names the params key."""
    if len(widths) != len(attention):
        raise ValueError(f"unet.widths {list(widths)} and unet.attention {list(attention)} must have the same length")
    if any(w % norm_groups for w in widths):
        raise ValueError(f"unet.widths {list(widths)} must be multiples of unet.norm_groups={norm_groups}")
    attended = [w for w, a in zip(widths, attention) if a] + [widths[-1]]  # the middle block always attends
    if any(w % head_dim for w in attended):
        raise ValueError(f"unet.head_dim={head_dim} must divide the widths of the levels with attention and the last width {attended}")
    if sample_size % 2 ** (len(widths) - 1):
        raise ValueError(f"sample size {sample_size} is not divisible by 2^{len(widths) - 1} (one halving per UNet level)")


def concat_condition(x: Tensor, cond: Tensor | None) -> Tensor:
    """The mask joined to x as channels, resized to x's grid by area averaging when the grids differ."""
    if cond is None:
        return x
    return torch.cat([x, resized(cond, x).to(x.dtype)], dim=1)


def resized(cond: Tensor, x: Tensor) -> Tensor:
    """``cond`` on x's grid: class fractions per cell (area averaging) where the grids differ."""
    return cond if cond.shape[-2:] == x.shape[-2:] else F.interpolate(cond, size=x.shape[-2:], mode="area")


class ConcatUNet(UNet2DModel):
    """diffusers' UNet2DModel called as ``net(x, t, cond)``, the mask concatenated to its input."""

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:  # type: ignore[override]
        return super().forward(concat_condition(x, cond), t).sample


def _monai_sizes(unet: dict) -> dict:
    return dict(spatial_dims=2, num_res_blocks=unet.get("layers_per_block", 1), channels=tuple(unet["widths"]),
                attention_levels=tuple(unet["attention"]), norm_num_groups=unet.get("norm_groups", 8),
                num_head_channels=unet.get("head_dim", 32))


class SpadeUNet(nn.Module):
    """MONAI's SPADE UNet called as ``net(x, t, cond)``."""

    def __init__(self, data_channels: int, cond_channels: int, unet: dict):
        super().__init__()
        from monai.networks.nets import SPADEDiffusionModelUNet

        self.unet = SPADEDiffusionModelUNet(in_channels=data_channels, out_channels=data_channels, label_nc=cond_channels,
                                            spade_intermediate_channels=SPADE_HIDDEN, **_monai_sizes(unet))

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self.unet(x, t, seg=cond.to(x.dtype))


class ControlNetUNet(nn.Module):
    """MONAI's UNet plus a ControlNet fed the mask (on x's grid), called as ``net(x, t, cond)``."""

    def __init__(self, data_channels: int, cond_channels: int, unet: dict):
        super().__init__()
        from monai.networks.nets import ControlNet, DiffusionModelUNet

        sizes = _monai_sizes(unet)
        self.unet = DiffusionModelUNet(in_channels=data_channels, out_channels=data_channels, **sizes)
        self.controlnet = ControlNet(in_channels=data_channels, conditioning_embedding_in_channels=cond_channels,
                                     conditioning_embedding_num_channels=(sizes["channels"][0],), **sizes)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        down, mid = self.controlnet(x, t, controlnet_cond=resized(cond, x).to(x.dtype))
        return self.unet(x, t, down_block_additional_residuals=down, mid_block_additional_residual=mid)


def build_denoiser(conditioning: str, *, data_channels: int, cond_channels: int, sample_size: int, unet: dict) -> nn.Module:
    """The network of a generator: ``net(x, t, cond)`` -> the prediction, shaped like x."""
    if conditioning not in CONDITIONINGS:
        raise ValueError(f"unknown conditioning {conditioning!r}; choose one of: {', '.join(CONDITIONINGS)}")
    widths, attention = unet["widths"], unet["attention"]
    norm_groups, head_dim, layers = unet.get("norm_groups", 8), unet.get("head_dim", 32), unet.get("layers_per_block", 1)
    check_unet(widths, attention, norm_groups, head_dim, sample_size)
    if conditioning == "concat":
        return ConcatUNet(
            sample_size=sample_size, in_channels=data_channels + cond_channels, out_channels=data_channels,
            block_out_channels=tuple(widths), layers_per_block=layers, norm_num_groups=norm_groups, attention_head_dim=head_dim,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)))
    if not cond_channels:
        raise ValueError(f"conditioning {conditioning!r} needs a mask to condition on; an unconditional model is 'concat'")
    return (SpadeUNet if conditioning == "spade" else ControlNetUNet)(data_channels, cond_channels, unet)
