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

# augmentation while training (``SegmentationModel(augment=...)``):
#   flips: random horizontal and vertical flips (the model's default, so that older checkpoints load; the study's
#          segmenters take ``SegmenterParams.augment``, monai by default)
#   monai: MONAI random flips, small rotations (up to ``max_rotation_deg``), intensity scaling and shifting
#   none:  no augmentation
AUGMENTATIONS = ("flips", "monai", "none")


def one_hot(masks: Tensor, num_classes: int = NUM_CLASSES) -> Tensor:
    """(B, H, W) integer labels -> (B, C, H, W) float one-hot."""
    return F.one_hot(masks.long(), num_classes).permute(0, 3, 1, 2).float()


def monai_augmentation(max_rotation_deg: float = 15.0, intensity: float = 0.1):
    """MONAI dictionary transforms on one sample ``{"image": (1, H, W), "label": (C, H, W) one-hot}``: flips along
    each axis (p 0.5), a rotation up to ``max_rotation_deg`` (p 0.5; label nearest-neighbour, borders replicated so
    the one-hot stays valid), intensity scaled by 1 + U(-intensity, intensity) and shifted by U(-intensity, intensity)
    (p 0.5 each, image only)."""
    import math

    from monai.transforms import Compose, RandFlipd, RandRotated, RandScaleIntensityd, RandShiftIntensityd

    keys = ["image", "label"]
    angle = math.radians(max_rotation_deg)
    return Compose([
        RandFlipd(keys, prob=0.5, spatial_axis=0),
        RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandRotated(keys, range_x=angle, prob=0.5, mode=["bilinear", "nearest"], padding_mode="border", keep_size=True),
        RandScaleIntensityd("image", factors=intensity, prob=0.5),
        RandShiftIntensityd("image", offsets=intensity, prob=0.5),
    ], lazy=False)


class SegmentationModel(nn.Module):
    """DynUNet with Dice + cross-entropy. ``augment`` (one of :data:`AUGMENTATIONS`) is part of ``config`` only when
    it is not the default ``flips``, so that checkpoints written before the option existed still resume and load."""

    family = "segmentation"

    def __init__(self, *, widths: list[int] = (16, 32, 64, 128), in_channels: int = 1, num_classes: int = NUM_CLASSES,
                 augment: str = "flips"):
        super().__init__()
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment={augment!r}: choose one of {', '.join(AUGMENTATIONS)}")
        self.config = dict(family=self.family, widths=list(widths), in_channels=in_channels, num_classes=num_classes)
        if augment != "flips":
            self.config["augment"] = augment
        self.augment = augment
        self._augmentation = monai_augmentation() if augment == "monai" else None
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

    def augmented(self, x: Tensor, cond: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The batch after this model's augmentation, every random draw taken from ``generator`` (for ``monai``, one
        seed per batch seeds the transforms' NumPy state): the same generator state gives the same batch."""
        if self.augment == "flips":  # one draw per batch (as before the option existed, kept bit-exact)
            flip = torch.rand(2, generator=generator, device=x.device) < 0.5
            dims = [d for d, f in zip((-1, -2), flip.tolist()) if f]
            return (x.flip(dims), cond.flip(dims)) if dims else (x, cond)
        if self.augment == "none":
            return x, cond
        from monai.data import get_track_meta, set_track_meta

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=x.device))
        self._augmentation.set_random_state(seed=seed)
        tracking = get_track_meta()
        set_track_meta(False)  # plain tensors: no MetaTensor bookkeeping (3x faster; nothing here reads the metadata)
        try:
            out = [self._augmentation({"image": xi, "label": ci}) for xi, ci in zip(x, cond)]
        finally:
            set_track_meta(tracking)
        return torch.stack([o["image"] for o in out]).to(x.dtype), torch.stack([o["label"] for o in out]).to(cond.dtype)

    def loss(self, x: Tensor, cond: Tensor, generator: torch.Generator) -> Tensor:
        """``x`` images (B, 1, H, W), ``cond`` one-hot target masks (B, C, H, W); augmentation drawn from ``generator``."""
        x, cond = self.augmented(x, cond, generator)
        return self.criterion(self.net(x), cond)

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 64) -> Tensor:
        """(B, 1, H, W) images -> (B, H, W) integer labels."""
        was_training = self.training
        self.eval()
        out = torch.cat([self.net(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
        self.train(was_training)
        return out
