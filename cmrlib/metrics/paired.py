"""Image-to-image similarity for the paired sets (an image generated from each real test mask against the real
image) and for diversity (random pairs within one set). Images are float (N, H, W) in [-1, 1], so the data range is 2.

All three come from ``monai.metrics`` (``PSNRMetric``, ``SSIMMetric``, ``compute_ms_ssim``):

- PSNR: ``20 log10(2) - 10 log10(MSE)`` per image; identical images give +inf (not capped).
- SSIM: Gaussian window of ``kernel_size`` (5, the reference study's choice; sigma 1.5), k1 0.01, k2 0.03.
- MS-SSIM: the standard 5 scales with kernel 5 need images larger than 64 pixels (MONAI checks
  ``size // (scales - 1) ** 2 > kernel - 1``). We keep the reference study's kernel and use the largest number of
  scales (at most 5) that the image size allows, with the first weights of Wang et al. (2003) renormalised to sum
  to 1: 4 scales at 64 px, 3 at 32 px, 5 at 128 px (the standard). :func:`ms_ssim_config` says which.

LPIPS needs pretrained VGG/AlexNet weights that cannot be downloaded here; :func:`lpips_status` reports it as
unavailable rather than substituting another network.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch
from monai.metrics import PSNRMetric, SSIMMetric
from monai.metrics.regression import compute_ms_ssim

DATA_RANGE = 2.0  # images in [-1, 1]
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli and Bovik (2003)


def _t(x: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.array(x, dtype=np.float32))  # a copy: inputs may be read-only views
    return x[:, None] if x.ndim == 3 else x


def psnr(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB for [-1, 1] images; +inf where the images are identical."""
    return PSNRMetric(max_val=DATA_RANGE, reduction="none")(_t(pred), _t(target)).numpy().ravel().astype(np.float64)


def ssim(pred: np.ndarray, target: np.ndarray, kernel_size: int = 5, batch_size: int = 256) -> np.ndarray:
    metric = SSIMMetric(spatial_dims=2, data_range=DATA_RANGE, win_size=kernel_size, reduction="none")
    p, t = _t(pred), _t(target)
    return torch.cat([metric(p[i : i + batch_size], t[i : i + batch_size]).ravel() for i in range(0, len(p), batch_size)]).numpy().astype(np.float64)


def ms_ssim_config(image_size: int, kernel_size: int = 5) -> dict:
    """The scales and weights MS-SSIM uses at this image size (the most of the standard 5 that MONAI accepts)."""
    for scales in range(5, 1, -1):
        if image_size // max(1, scales - 1) ** 2 > kernel_size - 1:
            w = np.array(MS_SSIM_WEIGHTS[:scales])
            return {"kernel_size": kernel_size, "scales": scales, "weights": (w / w.sum()).round(6).tolist()}
    raise ValueError(f"images of {image_size} pixels are too small for MS-SSIM with kernel {kernel_size}")


def ms_ssim(pred: np.ndarray, target: np.ndarray, kernel_size: int = 5, batch_size: int = 256) -> np.ndarray:
    p, t = _t(pred), _t(target)
    cfg = ms_ssim_config(p.shape[-1], kernel_size)
    out = [compute_ms_ssim(p[i : i + batch_size], t[i : i + batch_size], spatial_dims=2, data_range=DATA_RANGE,
                           kernel_size=kernel_size, weights=cfg["weights"]).ravel() for i in range(0, len(p), batch_size)]
    return torch.cat(out).numpy().astype(np.float64)


PAIRED = {"psnr": psnr, "ssim": ssim, "ms_ssim": ms_ssim}


def paired_metrics(pred: np.ndarray, target: np.ndarray, kernel_size: int = 5) -> dict[str, np.ndarray]:
    """Per-image PSNR, SSIM and MS-SSIM of ``pred`` against ``target``."""
    return {"psnr": psnr(pred, target), "ssim": ssim(pred, target, kernel_size), "ms_ssim": ms_ssim(pred, target, kernel_size)}


def mean_image(images: np.ndarray) -> np.ndarray:
    """The pixel-wise mean of a set of images: the constant-image baseline of the paired metrics (paired PSNR/SSIM reward blur, so a generator must beat the same mean image given for every mask)."""
    return np.asarray(images, dtype=np.float64).mean(0).astype(np.float32)


def random_pairs(n: int, n_pairs: int, seed: int) -> np.ndarray:
    """``n_pairs`` pairs (i, j) of distinct indices below ``n``, drawn uniformly."""
    if n < 2:
        raise ValueError("diversity needs at least 2 images")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, n_pairs)
    j = (i + rng.integers(1, n, n_pairs)) % n  # never equal to i
    return np.stack([i, j], 1)


def diversity(images: np.ndarray, n_pairs: int = 500, seed: int = 0, kernel_size: int = 5) -> np.ndarray:
    """MS-SSIM between random pairs of distinct images of one set (lower: more diverse); one value per pair."""
    pairs = random_pairs(len(images), n_pairs, seed)
    return ms_ssim(images[pairs[:, 0]], images[pairs[:, 1]], kernel_size)


def lpips_status() -> str | None:
    """None when LPIPS can be computed offline, else why not (it is then reported as unavailable)."""
    if importlib.util.find_spec("lpips") is None:
        return "unavailable: the lpips package and its pretrained backbone weights are not installed (no download at run time)"
    return "unavailable: the lpips package is installed but cmrlib does not load its backbone weights offline"


__all__ = ["DATA_RANGE", "PAIRED", "psnr", "ssim", "ms_ssim", "ms_ssim_config", "paired_metrics", "mean_image",
           "random_pairs", "diversity", "lpips_status"]
