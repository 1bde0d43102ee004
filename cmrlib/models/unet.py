"""The one denoiser backbone family of every arm: a diffusers ``UNet2DModel`` sized by params."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import Tensor


def build_unet(
    *,
    in_channels: int,
    out_channels: int,
    sample_size: int,
    widths: list[int] | tuple[int, ...] = (16, 32, 64, 128),
    attention: list[bool] | tuple[bool, ...] = (False, False, False, True),
    layers_per_block: int = 1,
    norm_groups: int = 8,
    head_dim: int = 32,
    num_class_embeds: int | None = None,
) -> UNet2DModel:
    """A UNet whose level ``i`` has ``widths[i]`` channels and self-attention where ``attention[i]``."""
    if len(widths) != len(attention):
        raise ValueError(f"unet.widths {list(widths)} and unet.attention {list(attention)} must have the same length")
    if any(w % norm_groups for w in widths):
        raise ValueError(f"unet.widths {list(widths)} must be multiples of unet.norm_groups={norm_groups}")
    attended = [w for w, a in zip(widths, attention) if a] + [widths[-1]]  # the middle block always attends
    if any(w % head_dim for w in attended):
        raise ValueError(f"unet.head_dim={head_dim} must divide the widths of the levels with attention and the last width {attended}")
    if sample_size % 2 ** (len(widths) - 1):
        raise ValueError(f"sample size {sample_size} is not divisible by 2^{len(widths) - 1} (one halving per UNet level)")
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=tuple(widths),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        layers_per_block=layers_per_block,
        norm_num_groups=norm_groups,
        attention_head_dim=head_dim,
        num_class_embeds=num_class_embeds,
    )


def concat_condition(x: Tensor, cond: Tensor | None) -> Tensor:
    """The shared conditioning of every arm: the one-hot mask joined to the network input as channels, resized
    to x's grid by area averaging (class fractions per cell) when the grids differ (the LDM's latents)."""
    if cond is None:
        return x
    if cond.shape[-2:] != x.shape[-2:]:
        cond = F.interpolate(cond, size=x.shape[-2:], mode="area")
    return torch.cat([x, cond.to(x.dtype)], dim=1)
