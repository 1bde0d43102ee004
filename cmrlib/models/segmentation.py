"""The 2D segmentation network of the study (MONAI DynUNet, Dice + cross-entropy), behind the same model contract
as the generators (``loss(x, cond, generator)``, ``config``) so that the one training loop trains it too.

It serves the utility axis (trained on real, synthetic or both) and, trained on the real training patients only,
the fidelity axis (mask faithfulness of generated images, and the offline ``seg`` feature space).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.nets import DynUNet
from torch import Tensor, nn

from ..labels import NUM_CLASSES


def one_hot(masks: Tensor, num_classes: int = NUM_CLASSES) -> Tensor:
    """(B, H, W) integer labels -> (B, C, H, W) float one-hot."""
    return F.one_hot(masks.long(), num_classes).permute(0, 3, 1, 2).float()


class SegmentationModel(nn.Module):
    family = "segmentation"

    def __init__(self, *, widths: list[int] = (16, 32, 64, 128), in_channels: int = 1, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.config = dict(family=self.family, widths=list(widths), in_channels=in_channels, num_classes=num_classes)
        n = len(widths)
        self.net = DynUNet(
            spatial_dims=2, in_channels=in_channels, out_channels=num_classes, kernel_size=[3] * n,
            strides=[1] + [2] * (n - 1), upsample_kernel_size=[2] * (n - 1), filters=list(widths),
            norm_name="instance", act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        )
        # Dice + cross-entropy, equally weighted (the reference study's 0.5 / 0.5)
        self.criterion = DiceCELoss(softmax=True, lambda_dice=0.5, lambda_ce=0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def loss(self, x: Tensor, cond: Tensor, generator: torch.Generator) -> Tensor:
        """``x`` images (B, 1, H, W), ``cond`` one-hot target masks (B, C, H, W); flips drawn from ``generator``."""
        flip = torch.rand(2, generator=generator, device=x.device) < 0.5
        dims = [d for d, f in zip((-1, -2), flip.tolist()) if f]
        if dims:
            x, cond = x.flip(dims), cond.flip(dims)
        return self.criterion(self.net(x), cond)

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 64) -> Tensor:
        """(B, 1, H, W) images -> (B, H, W) integer labels."""
        was_training = self.training
        self.eval()
        out = torch.cat([self.net(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
        self.train(was_training)
        return out
