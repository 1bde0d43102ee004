"""Distances between two sets of feature vectors (real ``(N, D)``, generated ``(M, D)``), in any feature space.

- FID: MONAI's :func:`monai.metrics.fid.get_fid_score` (Frechet distance of Gaussians fitted to each set, scipy
  ``sqrtm``), used as is.
- KID (Binkowski et al. 2018): written here because MONAI has none; the unbiased MMD^2 estimate with the polynomial
  kernel ``k(x, y) = (x.y / D + 1)^3``, averaged over random subsets of ``min(subset_size, N // 2, M // 2)`` from
  each set (torch-fidelity's and the reference study's protocol, with subsets smaller than either set so that they
  differ), reported as mean and standard deviation over subsets (the spread of subsets, not a confidence interval).
- Precision, recall, density and coverage (Naeem et al. 2020, "Reliable fidelity and diversity metrics for generative
  models"): written here (no MONAI equivalent) with exact Euclidean distances (``torch.cdist``) and ``k`` nearest
  neighbours; a sample's own distance 0 is excluded from its neighbour radius.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics.fid import get_fid_score


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet inception distance in the given feature space (0 for identical sets; biased upwards for small sets)."""
    return float(get_fid_score(_t(fake), _t(real)))


def _poly_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    m, n = len(x), len(y)
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    return float((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
                 - 2 * kxy.mean())


def mmd2(real: np.ndarray, fake: np.ndarray) -> float:
    """The unbiased MMD^2 (KID's kernel) between two whole sets of feature vectors."""
    return mmd2_unbiased(_t(real), _t(fake))


def kid(real: np.ndarray, fake: np.ndarray, n_subsets: int = 100, subset_size: int = 500, seed: int = 0) -> dict:
    """Kernel inception distance: mean and standard deviation of the unbiased MMD^2 over ``n_subsets`` subsets of
    ``min(subset_size, N // 2, M // 2)`` drawn without replacement from each set; also every subset's value."""
    x, y = _t(real), _t(fake)
    size = min(subset_size, len(x) // 2, len(y) // 2)
    if size < 2:
        raise ValueError(f"KID needs at least 4 samples in each set (subsets of at most half of each), got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    values = np.array([mmd2_unbiased(x[rng.choice(len(x), size, replace=False)], y[rng.choice(len(y), size, replace=False)])
                       for _ in range(n_subsets)])
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if n_subsets > 1 else float("nan"),
            "subset_size": size, "n_subsets": n_subsets, "values": values}


def _kth_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each sample to its k-th nearest neighbour within its own set (itself excluded)."""
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values  # the 1st smallest is the sample itself (0)


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage with ``k`` nearest neighbours (Naeem et al. 2020).

    precision: share of generated samples inside some real sample's k-NN ball; recall: share of real samples inside
    some generated sample's k-NN ball; density: mean number of real balls holding a generated sample, over k (can
    exceed 1); coverage: share of real samples whose ball holds at least one generated sample.
    """
    x, y = _t(real), _t(fake)
    if min(len(x), len(y)) <= k:
        raise ValueError(f"precision/recall need more than k={k} samples per set (got {len(x)} real, {len(y)} generated)")
    r_real, r_fake = _kth_radius(x, k), _kth_radius(y, k)
    d = torch.cdist(x, y)  # (N real, M generated)
    inside_real = d <= r_real[:, None]  # generated j inside real i's ball
    return {
        "precision": float(inside_real.any(0).double().mean()),
        "recall": float((d <= r_fake[None, :]).any(1).double().mean()),
        "density": float(inside_real.sum(0).double().mean() / k),
        "coverage": float((d.min(1).values <= r_real).double().mean()),
    }


__all__ = ["fid", "kid", "mmd2", "mmd2_unbiased", "prdc"]
