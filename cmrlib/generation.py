"""Training and sampling of the study's generators from params: what the notebooks ``10_mask_prior`` and
``20_generator`` (once per arm of :mod:`cmrlib.registry`) call.

Checkpoints go to ``checkpoints/<model>/`` (``mask_prior``, each arm's name, ``<arm>_autoencoder`` for an arm with
an autoencoder) and samples to ``samples/<arm>/``:

- ``samples/mask_prior/masks.npz``: stage-1 masks (``masks`` uint8, N x H x W);
- ``samples/<arm>/synthetic.npz``: images generated from the stage-1 masks (``images`` float32 in [-1, 1], ``masks``);
- ``samples/<arm>/synthetic_step<N>.npz``: images from the first ``generators.n_synthetic_per_checkpoint`` stage-1
  masks at each earlier kept checkpoint (step N; the compute axis);
- ``samples/<arm>/paired_step<N>.npz``: one image per real test mask (``images``, ``masks``, ``rows`` = row numbers of
  the test slices in ``data/metadata.csv``), for each kept checkpoint (step N), the last one also as ``paired.npz``;
- ``samples/<arm>/samples.csv``: one row per set: file, n, seed, sampler, steps, weights, checkpoint step, seconds.

**Replicas** (:class:`Replica`, :func:`replicas`): the generators are trained once per seed of ``generators.n_seeds``
and, with ``utility.generators_from: same``, once more per seed on the fewest-patient segmenter's own patients. The
primary replica (seed 0, every training patient) keeps the folders above and fills every table; each other replica
has its own folders ``<name>_seed<s>`` or ``<name>_n<k>_seed<s>`` (``mask_prior_seed1``, ``ddpm_n4_seed0``, ...) with
the final paired and synthetic sets only: the claims aggregate over the seeds, the utility axis trains on them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import models, registry, training
from .models import device, one_hot
from .data.records import SliceSet
from .data import anatomy
from .data.splits import first_patients, real_patient_counts
from .labels import NUM_CLASSES, RV
from .params import StudyParams, TrainParams
from .paths import RunPaths, atomic_path
from .seeds import seed_for

MASK_PRIOR = "mask_prior"
MASK_PRIOR_STAGE = "10_mask_prior"


@dataclass(frozen=True)
class Replica:
    """One trained copy of the generators (mask prior and arms): training seed ``seed`` of ``generators.n_seeds``, on
    every training patient (``n_patients`` None) or on the first ``n_patients`` of them; ``control`` names a privacy
    control's copy of an arm (:mod:`cmrlib.privacy_controls`), trained on data of its own."""

    seed: int = 0
    n_patients: int | None = None
    control: str = ""

    @property
    def primary(self) -> bool:
        return self.seed == 0 and self.n_patients is None and not self.control

    @property
    def suffix(self) -> str:
        """What the replica's folders add to the model's name: nothing for the primary one."""
        if self.control:
            return f"_control-{self.control}"
        return "" if self.primary else (f"_n{self.n_patients}" if self.n_patients else "") + f"_seed{self.seed}"

    def folder(self, name: str) -> str:
        """The checkpoint and samples folder name of model ``name`` (``mask_prior``, an arm) in this replica."""
        return name + self.suffix

    @property
    def seed_names(self) -> tuple[str, ...]:
        """What the replica's random streams derive from, beside the model's name (none for the primary replica, whose
        streams are those of a run with one seed)."""
        return () if self.primary else (self.suffix.lstrip("_"),)


PRIMARY = Replica()


def seed_replicas(params: StudyParams) -> list[Replica]:
    """One replica per seed of ``generators.n_seeds``, on every training patient; the primary one first."""
    return [Replica(s) for s in range(params.generators.n_seeds)]


def same_patients(params: StudyParams, splits: dict) -> int | None:
    """With ``utility.generators_from: same``, the fewest of ``utility.n_real_patients`` (the patients the
    same-patients generators learn from); None otherwise, or when that is every training patient."""
    if params.utility.generators_from != "same":
        return None
    k = real_patient_counts(params, splits)[0]
    return k if k < len(splits["sets"]["train"]) else None


def replicas(params: StudyParams, splits: dict) -> list[Replica]:
    """Every replica the params ask for: the primary one, the other seeds, and with ``utility.generators_from: same``
    one per seed on the first k training patients (k the fewest of ``utility.n_real_patients``)."""
    k = same_patients(params, splits)
    return seed_replicas(params) + ([Replica(s, k) for s in range(params.generators.n_seeds)] if k else [])


def training_slices(slices: SliceSet, splits: dict, replica: Replica = PRIMARY) -> SliceSet:
    """The training slices a replica's generators learn from: split ``train``, or its first ``n_patients`` patients."""
    train = slices.split("train")
    if replica.n_patients is None:
        return train
    return train.select(train.meta["patient"].isin(first_patients(splits, replica.n_patients)).to_numpy())


def made_by(name: str) -> str:
    """The runner's stage that writes the checkpoints and samples of ``name`` (the mask prior or an arm, in any
    replica)."""
    if re.search(r"_control-[a-z-]+$", name):
        return "50_privacy"  # the privacy controls train their own copies of an arm
    name = re.sub(r"(_n\d+)?_seed\d+$", "", name)
    if name == MASK_PRIOR:
        return MASK_PRIOR_STAGE
    return registry.get(name).stage if name in registry.names() else "the generator stages"


def train_config(p: TrainParams, seed: int, *names: str) -> training.TrainConfig:
    """The loop's config of the budget ``p`` of the model ``names`` (its seed derived from the run's)."""
    return training.TrainConfig.from_params(p, seed_for(seed, "train", *names))


def images_tensor(slices: SliceSet) -> torch.Tensor:
    return torch.from_numpy(slices.images)[:, None]


def masks_tensor(masks: np.ndarray) -> torch.Tensor:
    """(N, H, W) labels -> (N, 4, H, W) one-hot, the conditioning of every image arm."""
    return one_hot(torch.from_numpy(np.asarray(masks)))


# -- stage 1: the mask prior ----------------------------------------------------------------------------------------
def build_mask_prior(params: StudyParams) -> models.DiffusionModel | models.FlowMatchingModel:
    p = params.generators.mask_prior
    common = dict(data_channels=NUM_CLASSES, cond_channels=0, sample_size=params.data.image_size, unet=p.unet.model_dump())
    if p.family == "flow":
        return models.FlowMatchingModel(**common, time_sampling=p.time_sampling)
    return models.DiffusionModel(**common, **p.schedule.model_dump())


def train_mask_prior(params: StudyParams, paths: RunPaths, train: SliceSet, replica: Replica = PRIMARY
                     ) -> tuple[torch.nn.Module, training.TrainResult]:
    """One-hot masks scaled to [-1, 1] (as the reference study), unconditional."""
    model = build_mask_prior(params)
    x = masks_tensor(train.masks) * 2 - 1
    cfg = train_config(params.generators.mask_prior.train, params.seed, "mask_prior", *replica.seed_names)
    return model, training.train(model, x, None, cfg, paths.checkpoints / replica.folder(MASK_PRIOR),
                                 desc=replica.folder("mask prior"))


def sample_masks(model: torch.nn.Module, n: int, sampling, seed: int) -> np.ndarray:
    """``n`` label maps: the argmax over the generated one-hot channels."""
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    out = []
    for i in tqdm(range(0, n, sampling.batch_size), desc="sampling masks", unit="batch"):
        x = model.sample(None, sampler=sampling.sampler, steps=sampling.steps, generator=g, n=min(sampling.batch_size, n - i))
        out.append(x.argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


def sample_mask_prior(params: StudyParams, paths: RunPaths, replica: Replica = PRIMARY) -> np.ndarray:
    """Generate ``generators.n_synthetic`` stage-1 masks with the trained prior; save them to ``samples/mask_prior``
    (the replica's folder)."""
    p = params.generators.mask_prior
    model, ckpt = load_arm(params, paths, MASK_PRIOR, replica=replica)
    seed = seed_for(params.seed, "masks", *replica.seed_names)
    start = time.perf_counter()
    masks = sample_masks(model, params.generators.n_synthetic, p.sample, seed)
    save_samples(paths, replica.folder(MASK_PRIOR), "masks", record=sample_record("stage1", seed, p.sample, ckpt, start), masks=masks)
    return masks


def mask_validity(real: np.ndarray, generated: np.ndarray) -> pd.DataFrame:
    """Share of valid maps (LV enclosed by MYO, one LV, one MYO, at most one RV, RV present), real vs generated."""
    rows = {}
    for name, masks in (("real (train)", real), ("generated", generated)):
        flags = anatomy.check_masks(masks)
        flags["rv_present"] = (masks == RV).reshape(len(masks), -1).any(1)
        flags["all_valid"] = np.logical_and.reduce([flags[k] for k in ("lv_enclosed", "single_lv", "single_myo", "rv_at_most_one")])
        rows[name] = {k: float(v.mean()) for k, v in flags.items()}
    return pd.DataFrame(rows).T


# -- stage 2: the image arms ------------------------------------------------------------------------------------------
def build_arm(params: StudyParams, arm: str) -> torch.nn.Module:
    """The untrained model of an arm (:mod:`cmrlib.registry`; for an arm with an autoencoder, an untrained one)."""
    return registry.get(arm).build(params)


def train_autoencoder(params: StudyParams, paths: RunPaths, arm: str, train: SliceSet, model: torch.nn.Module,
                      replica: Replica = PRIMARY) -> training.TrainResult:
    """Train the autoencoder of ``arm`` (section key ``autoencoder``) on ``train`` (the training patients), put its
    EMA weights into ``model.autoencoder`` (frozen) and scale the latents."""
    spec = registry.get(arm)
    folder = replica.folder(spec.autoencoder_dir)
    ae = models.Autoencoder(**{k: v for k, v in model.autoencoder.config.items() if k != "family"})
    cfg = train_config(spec.params(params).autoencoder.train, params.seed, spec.autoencoder_dir, *replica.seed_names)
    result = training.train(ae, images_tensor(train), None, cfg, paths.checkpoints / folder, desc=f"{spec.label} autoencoder")
    training.load_checkpoint(result.last, model.autoencoder, weights="ema")
    model.autoencoder.requires_grad_(False)
    model.set_latent_scale(images_tensor(train))
    return result


@torch.no_grad()
def autoencoder_report(ldm: models.LatentDiffusion, *sets: SliceSet, names=("train", "test"), batch_size: int = 64) -> tuple[np.ndarray, pd.DataFrame]:
    """Reconstruction error of the frozen autoencoder per set (MSE, PSNR in dB for the [-1, 1] range, MAE); returns
    the reconstructions of the last set and the table."""
    rows = {}
    for name, s in zip(names, sets):
        x = images_tensor(s)
        recon = torch.cat([ldm.autoencoder.reconstruct(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).clamp(-1, 1)
        mse = (recon - x).pow(2).flatten(1).mean(1)
        rows[name] = {"mse": float(mse.mean()), "psnr_db": float((10 * torch.log10(4.0 / mse)).mean()),
                      "mae": float((recon - x).abs().mean()), "slices": len(x)}
    return recon[:, 0].numpy(), pd.DataFrame(rows).T


def train_arm(params: StudyParams, paths: RunPaths, arm: str, train: SliceSet, replica: Replica = PRIMARY,
              autoencoder_train: SliceSet | None = None) -> tuple[torch.nn.Module, training.TrainResult]:
    """Train (or resume) an arm on the training patients, its autoencoder first where it has one (on
    ``autoencoder_train`` when given, else on the same patients)."""
    spec = registry.get(arm)
    model = build_arm(params, arm)
    if spec.autoencoder:
        train_autoencoder(params, paths, arm, train if autoencoder_train is None else autoencoder_train, model, replica)
    cfg = train_config(spec.params(params).train, params.seed, arm, *replica.seed_names)
    result = training.train(model, images_tensor(train), masks_tensor(train.masks), cfg, paths.checkpoints / replica.folder(arm),
                            desc=replica.folder(spec.label))
    return model, result


def sampling_of(params: StudyParams, name: str):
    """The ``sample`` settings of the mask prior or of an arm."""
    return params.generators.mask_prior.sample if name == MASK_PRIOR else registry.get(name).params(params).sample


def load_arm(params: StudyParams, paths: RunPaths, arm: str, step: int | None = None, weights: str | None = None,
             replica: Replica = PRIMARY) -> tuple[torch.nn.Module, dict]:
    """A trained arm (or the mask prior) of a replica from its last checkpoint, or the kept one at ``step``."""
    model = build_mask_prior(params) if arm == MASK_PRIOR else build_arm(params, arm)
    folder = paths.checkpoints / replica.folder(arm)
    path = folder / "last.pt" if step is None else training.kept_checkpoints(folder).get(step, folder / f"step_{step:07d}.pt")
    ckpt = training.load_checkpoint(path, model, weights=weights or sampling_of(params, arm).weights, made_by=made_by(replica.folder(arm)))
    return model.to(device()).eval(), ckpt


def generate(model: torch.nn.Module, masks: np.ndarray, sampling, seed: int, desc: str = "sampling",
             scheduler_options: dict | None = None) -> np.ndarray:
    """One image per mask, in batches, reproducible from ``seed``; float32 (N, H, W) in [-1, 1]. ``scheduler_options``
    (diffusion models only) override the scheduler's settings, as in ``DiffusionModel.scheduler``."""
    dev = next(model.parameters()).device
    g = torch.Generator(device=dev).manual_seed(seed)
    extra = {"scheduler_options": scheduler_options} if scheduler_options else {}
    out = []
    for i in tqdm(range(0, len(masks), sampling.batch_size), desc=desc, unit="batch"):
        cond = masks_tensor(masks[i : i + sampling.batch_size]).to(dev)
        x = model.sample(cond, sampler=sampling.sampler, steps=sampling.steps, generator=g, **extra)
        out.append(x.clamp(-1, 1)[:, 0].cpu().numpy().astype(np.float32))
    return np.concatenate(out)


def sample_record(set_name: str, seed: int, sampling, ckpt: dict, start: float) -> dict:
    """The row of ``samples.csv`` for one generated set: how it was made, from which checkpoint, at what cost."""
    return dict(set=set_name, seed=seed, sampler=sampling.sampler, steps=sampling.steps, weights=ckpt["weights"],
                checkpoint_step=ckpt["step"], train_elapsed_s=round(ckpt["elapsed_s"], 1),
                seconds=round(time.perf_counter() - start, 1))


def save_samples(paths: RunPaths, arm: str, name: str, *, record: dict, **arrays: np.ndarray) -> Path:
    """Write ``samples/<arm>/<name>.npz`` and add (or replace) its row in ``samples/<arm>/samples.csv``."""
    folder = paths.samples / arm
    path = folder / f"{name}.npz"
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)
    table_path = folder / "samples.csv"
    table = pd.read_csv(table_path) if table_path.exists() else pd.DataFrame()
    row = {"file": path.name, "n": len(next(iter(arrays.values()))), **record}
    table = pd.concat([table[table.get("file", pd.Series(dtype=str)) != path.name], pd.DataFrame([row])], ignore_index=True)
    with atomic_path(table_path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def load_samples(paths: RunPaths, arm: str, name: str) -> dict[str, np.ndarray]:
    path = paths.samples / arm / f"{name}.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: it is written by the stage {made_by(arm)}; run it first")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def synthetic_by_step(params: StudyParams, paths: RunPaths, arm: str) -> dict[int, dict[str, np.ndarray]]:
    """The synthetic set at every kept checkpoint (step -> images, masks): ``synthetic_step<N>.npz`` for the earlier
    ones, and the first ``generators.n_synthetic_per_checkpoint`` images of ``synthetic.npz`` (same masks) for the last."""
    kept = training.kept_checkpoints(paths.checkpoints / arm)
    n = params.generators.n_synthetic_per_checkpoint
    out = {}
    for step in sorted(kept):
        name = "synthetic" if step == max(kept) else f"synthetic_step{step}"
        sample = load_samples(paths, arm, name)
        out[step] = {"images": sample["images"][:n], "masks": sample["masks"][:n]}
    return out


def samples_table(paths: RunPaths, arm: str) -> pd.DataFrame:
    """``samples/<arm>/samples.csv``: how each saved set of the arm was made."""
    path = paths.samples / arm / "samples.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: it is written by the stage {made_by(arm)}; run it first")
    return pd.read_csv(path)


def sample_arm(params: StudyParams, paths: RunPaths, arm: str, slices: SliceSet, stage1_masks: np.ndarray,
               replica: Replica = PRIMARY) -> pd.DataFrame:
    """The paired set (one image per real test mask) at every kept checkpoint, and the synthetic set (from the
    stage-1 masks) with the final weights; returns the samples table. Another replica than the primary one: the final
    paired and synthetic sets only (the compute axis reads the primary replica)."""
    p = registry.get(arm).params(params)
    name = replica.folder(arm)
    test_rows = np.flatnonzero(slices.meta["split"].to_numpy() == "test")
    test_masks = slices.masks[test_rows]
    kept = training.kept_checkpoints(paths.checkpoints / name)
    final = max(kept)
    few = stage1_masks[: params.generators.n_synthetic_per_checkpoint]
    for step in sorted(kept) if replica.primary else [final]:  # ascending: the loop ends with the final weights
        model, ckpt = load_arm(params, paths, arm, step=step, replica=replica)
        seed = seed_for(params.seed, "paired", arm, *replica.seed_names)
        start = time.perf_counter()
        images = generate(model, test_masks, p.sample, seed, desc=f"{name} paired set, step {step}")
        record = sample_record("paired", seed, p.sample, ckpt, start)
        for set_name in [f"paired_step{step}"] + (["paired"] if step == final else []):
            save_samples(paths, name, set_name, record=record, images=images, masks=test_masks, rows=test_rows)
        if step != final:
            seed = seed_for(params.seed, "synthetic", arm, str(step))
            start = time.perf_counter()
            images = generate(model, few, p.sample, seed, desc=f"{arm} synthetic subset, step {step}")
            save_samples(paths, arm, f"synthetic_step{step}", record=sample_record("synthetic", seed, p.sample, ckpt, start),
                         images=images, masks=few)
    seed = seed_for(params.seed, "synthetic", arm, *replica.seed_names)
    start = time.perf_counter()
    images = generate(model, stage1_masks, p.sample, seed, desc=f"{name} synthetic set")
    save_samples(paths, name, "synthetic", record=sample_record("synthetic", seed, p.sample, ckpt, start), images=images, masks=stage1_masks)
    return samples_table(paths, name)


__all__ = ["MASK_PRIOR", "PRIMARY", "Replica", "replicas", "seed_replicas", "same_patients", "training_slices", "made_by", "build_arm", "build_mask_prior", "train_arm", "train_mask_prior", "train_autoencoder",
           "load_arm", "sampling_of", "autoencoder_report", "generate", "sample_masks", "sample_mask_prior", "mask_validity",
           "sample_arm", "sample_record", "save_samples", "load_samples", "samples_table", "synthetic_by_step"]
