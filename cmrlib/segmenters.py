"""The segmentation networks of the study: built, trained and used here, for every axis.

- the **reference segmenter** (:func:`reference_segmenter`): trained once per run on the real training patients
  only, in ``checkpoints/reference_segmenter/``; the fidelity axis's judge of mask faithfulness and the ``seg``
  feature space of its distribution metrics, and the privacy axis's feature space;
- the **utility segmenters** (``cmrlib.utility``): one per regime, arm, number of real patients and seed, built and
  trained by the same functions with ``utility.segmenter``.

Each is a :class:`~cmrlib.models.SegmentationModel` (MONAI DynUNet, Dice + cross-entropy) trained by the one loop
(:func:`cmrlib.training.train`); its EMA weights are used.
"""

from __future__ import annotations

import numpy as np
import torch

from . import training
from .data.records import SliceSet
from .models import SegmentationModel, device, one_hot
from .metrics import dice_per_structure
from .params import SegmenterParams, StudyParams
from .paths import RunPaths
from .seeds import seed_for

REFERENCE_DIR = "reference_segmenter"
EMA_MAX_DECAY = 0.999


def build(p: SegmenterParams, augment: str = "flips") -> SegmentationModel:
    """An untrained network of ``p``'s widths; ``augment``: ``flips`` or ``monai`` (flips, rotations, intensity)."""
    return SegmentationModel(widths=p.widths, augment=augment)


def train_config(p: SegmenterParams, seed: int) -> training.TrainConfig:
    """The loop's settings for a segmenter budget ``p``: one kept checkpoint (the last), four saves per run."""
    return training.TrainConfig(steps=p.steps, batch_size=p.batch_size, lr=p.lr, weight_decay=p.weight_decay,
                                warmup_steps=p.warmup_steps, ema_max_decay=EMA_MAX_DECAY,
                                checkpoint_every=max(1, p.steps // 4), keep_fractions=(1.0,), seed=seed)


def train(model: SegmentationModel, images: np.ndarray, masks: np.ndarray, config: training.TrainConfig, folder,
          desc: str, progress: bool = True) -> tuple[SegmentationModel, training.TrainResult]:
    """Train (or resume, or load when done) ``model`` on (N, H, W) images in [-1, 1] and label maps; returns it with
    its EMA weights, in eval mode, on the sampling device."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None]
    result = training.train(model, x, one_hot(torch.from_numpy(np.asarray(masks))), config, folder, desc=desc,
                            progress=progress)
    training.load_checkpoint(result.last, model, weights="ema")
    return model.to(device()).eval(), result


def reference_segmenter(params: StudyParams, paths: RunPaths, slices: SliceSet) -> tuple[SegmentationModel, training.TrainResult]:
    """Train (or resume, or load when done) the reference segmenter (``fidelity.segmenter``) on the real training
    patients only (``slices.split("train")``), with random flips as its only augmentation."""
    train_set = slices.split("train")
    p = params.fidelity.segmenter
    return train(build(p), train_set.images, train_set.masks, train_config(p, seed_for(params.seed, "train", REFERENCE_DIR)),
                 paths.checkpoints / REFERENCE_DIR, desc="reference segmenter")


def segment(model: SegmentationModel, images: np.ndarray) -> np.ndarray:
    """(N, H, W) images in [-1, 1] -> (N, H, W) predicted labels."""
    dev = next(model.parameters()).device
    return model.predict(torch.as_tensor(np.asarray(images, dtype=np.float32))[:, None].to(dev)).cpu().numpy()


def mask_faithfulness(model: SegmentationModel, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Dice per structure (LV, MYO, RV) between the conditioning masks and the segmenter's prediction on the images;
    (N, 3), NaN where a structure is absent from both."""
    return dice_per_structure(segment(model, images), masks)


__all__ = ["REFERENCE_DIR", "build", "train_config", "train", "reference_segmenter", "segment", "mask_faithfulness"]
