"""The segmentation networks of the study: built, trained and used here, for every axis.

- the **reference segmenter** (:func:`reference_segmenter`): trained once per run on the real training patients
  only, in ``checkpoints/reference_segmenter/``; the fidelity axis's judge of mask faithfulness and the ``seg``
  feature space of its distribution metrics, and the privacy axis's feature space;
- the **utility segmenters** (``cmrlib.utility``): one per regime, arm, number of real patients and seed, built and
  trained by the same functions with ``utility.segmenter``.

Each is a :class:`~cmrlib.models.SegmentationModel` (MONAI DynUNet, Dice + cross-entropy) trained by the one loop
(:func:`cmrlib.training.train`) for its whole budget (``steps``: AdamW, warm-up then cosine decay, MONAI
augmentation); ``val_checks`` times over the budget its EMA weights are scored on the validation patients (split
``val``: mean over patients of the mean foreground 3D Dice, :func:`validation_dice`), and the checkpoint of the best
score is the one used (``best.pt``; the reference study keeps the best of 100 epochs the same way). Without
validation patients, the last EMA weights are used.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import training
from .data.records import SliceSet
from .models import SegmentationModel, device, one_hot
from .metrics import dice_per_structure, volume_dice, volume_rows
from .params import SegmenterParams, StudyParams
from .paths import RunPaths
from .seeds import initial_weights, seed_for

REFERENCE_DIR = "reference_segmenter"
EMA_MAX_DECAY = 0.999


def build(p: SegmenterParams) -> SegmentationModel:
    """An untrained network of ``p``'s widths and augmentation."""
    return SegmentationModel(widths=p.widths, augment=p.augment)


def train_config(p: SegmenterParams, seed: int, validates: bool, steps: int | None = None) -> training.TrainConfig:
    """The loop's settings for a segmenter budget ``p`` (or ``steps`` of it, the warm-up scaled alike): one kept
    checkpoint (the last), four saves per run, at most ``p.val_checks`` validations when ``validates``."""
    steps = p.steps if steps is None else steps
    warmup = p.warmup_steps if steps == p.steps else round(p.warmup_steps * steps / p.steps)
    val_every = math.ceil(steps / p.val_checks) if validates and p.val_checks else 0  # at most val_checks checks
    return training.TrainConfig(steps=steps, batch_size=p.batch_size, lr=p.lr, weight_decay=p.weight_decay,
                                warmup_steps=warmup, ema_max_decay=EMA_MAX_DECAY, checkpoint_every=max(1, steps // 4),
                                keep_fractions=(1.0,), seed=seed, val_every=val_every)


def validation_set(slices: SliceSet) -> SliceSet | None:
    """The validation patients' slices (split ``val``), or None when the run has none."""
    return slices.split("val") if (slices.meta["split"] == "val").any() else None


def validation_dice(model: SegmentationModel, val: SliceSet) -> float:
    """The score a segmenter is chosen by: the mean over patients of their mean foreground Dice (LV, MYO, RV of each
    3D volume, the mean of its ED and ES), the same statistic the utility axis reports on the test patients."""
    pred = segment(model, val.images)
    per_patient: dict[str, list[float]] = {}
    for (patient, _), idx in volume_rows(val.meta).items():
        dice = volume_dice(pred[idx], val.masks[idx])
        if np.isfinite(dice).any():
            per_patient.setdefault(patient, []).append(float(np.nanmean(dice)))
    return float(np.mean([np.mean(v) for v in per_patient.values()])) if per_patient else float("nan")


def train(model: SegmentationModel, images: np.ndarray, masks: np.ndarray, config: training.TrainConfig, folder,
          desc: str, val: SliceSet | None = None, progress: bool = True
          ) -> tuple[SegmentationModel, training.TrainResult]:
    """Train (or resume, or load when done) ``model`` on (N, H, W) images in [-1, 1] and label maps, validated on
    ``val`` when ``config.val_every`` > 0; returns it with the EMA weights of the chosen checkpoint (the best on
    ``val``, else the last), in eval mode, on the sampling device."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None]
    validate = None if not config.val_every else (lambda net: validation_dice(net, val))
    result = training.train(model, x, one_hot(torch.from_numpy(np.asarray(masks))), config, folder, validate=validate,
                            desc=desc, progress=progress)
    training.load_checkpoint(result.chosen, model, weights="ema")
    return model.to(device()).eval(), result


def stopping(result: training.TrainResult) -> str:
    """How a run's evaluated checkpoint was chosen, for the tables: ``best val <score> at <step>/<budget>`` or
    ``last <budget>``."""
    if result.best_step is None:
        return f"last {result.step}"
    return f"best val {result.best_score:.3f} at {result.best_step}/{result.step}"


def reference_segmenter(params: StudyParams, paths: RunPaths, slices: SliceSet) -> tuple[SegmentationModel, training.TrainResult]:
    """Train (or resume, or load when done) the reference segmenter (``fidelity.segmenter``) on the real training
    patients only (``slices.split("train")``), chosen on the validation patients."""
    train_set, val = slices.split("train"), validation_set(slices)
    p = params.fidelity.segmenter
    config = train_config(p, seed_for(params.seed, "train", REFERENCE_DIR), validates=val is not None)
    with initial_weights(config.seed):
        model = build(p)
    return train(model, train_set.images, train_set.masks, config, paths.checkpoints / REFERENCE_DIR,
                 desc="reference segmenter", val=val)


def segment(model: SegmentationModel, images: np.ndarray) -> np.ndarray:
    """(N, H, W) images in [-1, 1] -> (N, H, W) predicted labels."""
    dev = next(model.parameters()).device
    return model.predict(torch.as_tensor(np.asarray(images, dtype=np.float32))[:, None].to(dev)).cpu().numpy()


def mask_faithfulness(model: SegmentationModel, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Dice per structure (LV, MYO, RV) between the conditioning masks and the segmenter's prediction on the images;
    (N, 3), NaN where a structure is absent from both."""
    return dice_per_structure(segment(model, images), masks)


__all__ = ["REFERENCE_DIR", "build", "train_config", "validation_set", "validation_dice", "train", "stopping",
           "reference_segmenter", "segment", "mask_faithfulness"]
