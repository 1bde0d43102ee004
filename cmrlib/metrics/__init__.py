"""Fidelity metrics (DESIGN.md section 5), one module per concern; :mod:`cmrlib.fidelity` puts them together.

- :mod:`.features`: feature spaces by name (``seg``: the run's reference segmenter; ``inception``: the FID InceptionV3);
- :mod:`.distribution`: FID, KID, precision / recall / density / coverage between feature sets;
- :mod:`.paired`: PSNR, SSIM, MS-SSIM (MONAI) of paired images, the mean-image baseline, diversity;
- :mod:`.segmentation`: Dice per structure (background excluded, empty-vs-empty as NaN).
"""

from .distribution import fid, kid, mmd2_unbiased, prdc
from .features import INCEPTION_NAME, SPACES, FeatureSpace, default_inception_weights, feature_space, inception_features, seg_features
from .paired import DATA_RANGE, diversity, lpips_status, mean_image, ms_ssim, ms_ssim_config, paired_metrics, psnr, random_pairs, ssim
from .segmentation import dice_per_structure

__all__ = ["fid", "kid", "mmd2_unbiased", "prdc", "INCEPTION_NAME", "SPACES", "FeatureSpace", "default_inception_weights",
           "feature_space", "inception_features", "seg_features", "DATA_RANGE", "diversity", "lpips_status", "mean_image",
           "ms_ssim", "ms_ssim_config", "paired_metrics", "psnr", "random_pairs", "ssim", "dice_per_structure"]
