"""Standalone model folders: a trained generator that loads on another machine without its run folder.

The stage ``20_generator[<arm>]`` writes ``models/<arm>/`` into the run folder (:func:`save_arm`)::

    models/<arm>/
      cmrlib_model.json   what the folder is: the arm, its conditioning, the model's full config (noise schedule
                          included), the sampler, the preprocessing its images follow, the labels, the training run
                          (name, params digest, patients, data sets), cmrlib's version
      unet/               the denoiser. The default (concatenation) UNet is diffusers' own: ``save_pretrained``
                          (config.json, diffusion_pytorch_model.safetensors), loadable with
                          ``diffusers.UNet2DModel.from_pretrained`` (its input: the image channels, then the one-hot
                          mask's 4); MONAI's SPADE and ControlNet UNets as model.safetensors
      vae/                the LDM's autoencoder (diffusers ``AutoencoderKL``, ``save_pretrained``)
      mask_prior/         the stage-1 mask prior in the same layout, with the real masks' class-area range that the
                          anatomical filter judges against (per class, the smallest and largest area in pixels)

:func:`load` rebuilds the cmrlib model from the config and reads every network's safetensors file (weights only: no
pickle is loaded); ``python -m cmrlib generate --model DIR`` samples from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__, models, registry
from .data.preprocess import pixel_size_mm
from .labels import CLASSES
from .paths import RunPaths, atomic_folder

FORMAT = "cmrlib-model"
FORMAT_VERSION = 1
CONFIG = "cmrlib_model.json"
MASK_PRIOR = "mask_prior"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"  # the file diffusers' save_pretrained writes
WEIGHTS = "model.safetensors"  # a network diffusers cannot save (MONAI's)
ORIENTATION = ("short-axis view from the apex: anterior up, the RV on the image's left of the LV "
               "(the radiological convention, as cmrlib's loaders orient every source)")


class ModelFolderError(ValueError):
    """A folder that is not a complete standalone model (the message names the folder, the file and the fix)."""


def networks(model: nn.Module) -> dict[str, nn.Module]:
    """The trained networks of a generator by their folder name (diffusers' pipeline names: unet, vae)."""
    autoencoder = getattr(model, "autoencoder", None)  # a latent model's frozen autoencoder
    return {"unet": model.denoiser, **({"vae": autoencoder.net} if autoencoder is not None else {})}


def _buffers(model: nn.Module) -> dict[str, list | float]:
    """The model's stored state outside its networks (the LDM's latent scale), as JSON values."""
    ids = {id(net) for net in networks(model).values()}
    inside = tuple(f"{name}." for name, module in model.named_modules() if id(module) in ids)
    return {k: v.tolist() for k, v in model.state_dict().items() if not k.startswith(inside)}


def save(model: nn.Module, out: str | Path, info: dict[str, Any], mask_prior: tuple[nn.Module, dict] | None = None) -> Path:
    """Write ``model`` (and optionally a mask prior with its own ``info``) as a standalone folder ``out`` (new or
    empty); ``info`` is what :data:`CONFIG` says beside the model's config."""
    from diffusers import ModelMixin
    from safetensors.torch import save_model

    with atomic_folder(out) as folder:
        described = {}
        for name, net in networks(model).items():
            if isinstance(net, ModelMixin):
                net.save_pretrained(folder / name, safe_serialization=True)
                base = next(c for c in type(net).__mro__ if c.__module__.startswith("diffusers"))  # UNet2DModel, ...
                described[name] = {"library": "diffusers", "class": base.__name__, "weights": f"{name}/{DIFFUSERS_WEIGHTS}"}
            else:
                (folder / name).mkdir()
                save_model(net, str(folder / name / WEIGHTS))
                described[name] = {"library": "monai", "class": type(net).__name__, "weights": f"{name}/{WEIGHTS}"}
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, "cmrlib_version": __version__, **info,
                  "model": model.config, "networks": described, "buffers": _buffers(model)}
        if mask_prior is not None:
            save(mask_prior[0], folder / MASK_PRIOR, mask_prior[1])
            config["mask_prior"] = MASK_PRIOR
        (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return Path(out)


def read_config(folder: str | Path) -> dict[str, Any]:
    """The folder's :data:`CONFIG`, checked to be a model folder this cmrlib reads."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise ModelFolderError(f"{folder} is not a cmrlib model folder: it has no {CONFIG}. Give a folder written by "
                               "the stage 20_generator (runs/<run>/models/<arm>/) and copied whole")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelFolderError(f"{path} is not valid JSON ({exc}); copy the model folder again") from exc
    if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise ModelFolderError(f"{path}: format {config.get('format')!r} version {config.get('format_version')!r}; this "
                               f"cmrlib ({__version__}) reads {FORMAT!r} version {FORMAT_VERSION}")
    return config


def load(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a standalone folder (on :func:`cmrlib.models.device`, in eval mode) and its config."""
    from safetensors.torch import load_model

    folder = Path(folder)
    config = read_config(folder)
    model = models.build(config["model"])
    nets = networks(model)
    if set(nets) != set(config["networks"]):
        raise ModelFolderError(f"{folder / CONFIG}: networks {sorted(config['networks'])}, but its model config builds "
                               f"{sorted(nets)}; the folder is inconsistent, copy it again")
    for name, net in nets.items():
        path = folder / config["networks"][name]["weights"]
        if not path.is_file():
            raise ModelFolderError(f"{path} is missing: the model folder {folder} was copied incompletely")
        try:
            load_model(net, str(path), strict=True)
        except Exception as exc:  # safetensors and torch raise several types for a corrupt or foreign file
            raise ModelFolderError(f"{path} does not load into the {name} of {config.get('name')!r} "
                                   f"({type(exc).__name__}: {exc}); copy the model folder again") from exc
    for key, value in config["buffers"].items():
        model.get_buffer(key).copy_(torch.tensor(value))
    return model.to(models.device()).eval(), config


def training_record(params, paths: RunPaths) -> dict[str, Any]:
    """The run and the real data a model was trained on (data sets of the training domains: a test-only source is
    not training data)."""
    splits = json.loads(paths.splits.read_text()) if paths.splits.is_file() else {}
    datasets = splits.get("datasets", {})
    return {"run": params.run_name, "params_digest": params.digest(), "seed": params.seed,
            "train_patients": len(splits.get("sets", {}).get("train", [])) or params.data.n_train_patients,
            "data_sets": sorted({datasets.get(d, d) for d in params.data.train_domains}), "domains": params.data.train_domains}


def preprocessing(data) -> dict[str, Any]:
    """How real images were prepared for training, so that a user's masks and images can be brought to the same grid."""
    return {"image_size": data.image_size, "pixel_size_mm": pixel_size_mm(data), "resampled_to_mm": data.spacing_mm,
            "crop_mm": data.crop_mm, "crop": "square, centred on the centre of mass of the volume's labels, padded with the image minimum",
            "intensity": f"per volume, percentiles {data.intensity_percentiles} mapped to -1 and 1, clipped",
            "orientation": ORIENTATION}


def save_arm(params, paths: RunPaths, arm: str, train_masks) -> Path:
    """``models/<arm>/`` of a run: the arm's final weights (those its sampler uses) and the run's mask prior, with
    the real training masks' class-area range (replaced if it exists: the run's weights may have changed)."""
    import shutil

    from . import generation
    from .data import anatomy

    def info(name: str, ckpt: dict) -> dict[str, Any]:
        sampling = generation.sampling_of(params, name)
        return {"name": name, "label": registry.label(name) if name != MASK_PRIOR else "mask prior",
                "sampling": sampling.model_dump(), "checkpoint": {k: ckpt[k] for k in ("step", "weights", "elapsed_s")},
                "preprocessing": preprocessing(params.data), "labels": {str(k): v for k, v in CLASSES.items()},
                "training": training_record(params, paths)}

    model, ckpt = generation.load_arm(params, paths, arm)
    arm_info = info(arm, ckpt) | {"conditioning": registry.get(arm).params(params).conditioning}
    prior, prior_ckpt = generation.load_arm(params, paths, generation.MASK_PRIOR)
    prior_info = info(MASK_PRIOR, prior_ckpt) | {"mask_filter": {
        "filter": params.generators.mask_filter, "max_draws": params.generators.mask_max_draws,
        "area_ranges": {CLASSES[c]: list(r) for c, r in anatomy.area_ranges(train_masks).items()}}}
    out = paths.models / arm
    if out.exists():
        shutil.rmtree(out)
    return save(model, out, arm_info, mask_prior=(prior, prior_info))


__all__ = ["FORMAT", "CONFIG", "ModelFolderError", "networks", "save", "read_config", "load", "preprocessing", "training_record", "save_arm"]
