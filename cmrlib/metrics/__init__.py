"""Fidelity metrics, one module per concern; :mod:`cmrlib.fidelity` puts them together.

- :mod:`.features`: feature spaces by name (``seg``: the run's reference segmenter; ``inception``: the FID InceptionV3);
- :mod:`.distribution`: FID, KID, precision / recall / density / coverage between feature sets;
- :mod:`.paired`: PSNR, SSIM, MS-SSIM (MONAI) of paired images, the mean-image baseline, diversity;
- :mod:`.segmentation`: Dice per structure (background excluded, empty-vs-empty as NaN) per slice and per volume, HD95
  and ASD in 2D or 3D, the reference study's background-inclusive Dice;
- :mod:`.privacy`: exact nearest neighbours (L2, correlation, mask Dice), copy flags, distance to closest record,
  membership-attack scores (used as ``metrics.privacy.<name>``).
"""

from .distribution import fid, kid, mmd2, mmd2_unbiased, prdc
from . import privacy
from .features import INCEPTION_NAME, SPACES, FeatureSpace, default_inception_weights, feature_space, inception_features, seg_features
from .paired import DATA_RANGE, diversity, lpips_status, mean_image, ms_ssim, ms_ssim_config, paired_metrics, psnr, random_pairs, ssim
from .segmentation import (dice_per_structure, one_sided_empty, reference_protocol_dice, surface_distances, volume_dice, volume_rows,
                           volume_stack)

__all__ = ["fid", "kid", "mmd2", "mmd2_unbiased", "prdc", "INCEPTION_NAME", "SPACES", "FeatureSpace", "default_inception_weights",
           "feature_space", "inception_features", "seg_features", "DATA_RANGE", "diversity", "lpips_status", "mean_image",
           "ms_ssim", "ms_ssim_config", "paired_metrics", "psnr", "random_pairs", "ssim", "dice_per_structure",
           "surface_distances", "volume_stack", "one_sided_empty", "reference_protocol_dice", "volume_dice",
           "volume_rows", "privacy"]
