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
import warnings
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
from .seeds import initial_weights, seed_for

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
    cfg = train_config(params.generators.mask_prior.train, params.seed, "mask_prior", *replica.seed_names)
    with initial_weights(cfg.seed):
        model = build_mask_prior(params)
    x = masks_tensor(train.masks) * 2 - 1
    return model, training.train(model, x, None, cfg, paths.checkpoints / replica.folder(MASK_PRIOR),
                                 desc=replica.folder("mask prior"))


def _mask_batches(model: torch.nn.Module, sampling, seed: int):
    """Batches of ``sampling.batch_size`` label maps (the argmax over the generated one-hot channels), without end."""
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    while True:
        x = model.sample(None, sampler=sampling.sampler, steps=sampling.steps, generator=g, n=sampling.batch_size)
        yield x.argmax(1).to(torch.uint8).cpu().numpy()


def sample_masks(model: torch.nn.Module, n: int, sampling, seed: int) -> np.ndarray:
    """``n`` label maps drawn from the prior, as drawn."""
    batches = _mask_batches(model, sampling, seed)
    out = [next(batches) for _ in tqdm(range(0, n, sampling.batch_size), desc="sampling masks", unit="batch")]
    return np.concatenate(out)[:n]


@dataclass
class FilteredMasks:
    masks: np.ndarray  # (n, H, W): the conditioning set, the valid masks first
    valid: np.ndarray  # (n,) bool: each conditioning mask meets every criterion
    drawn: np.ndarray  # (n, H, W): the first n draws as drawn (unrepaired): the unfiltered set
    n_drawn: int  # draws it took
    n_accepted: int  # of them, valid after repair


def filtered_masks(model: torch.nn.Module, n: int, sampling, seed: int, ranges: dict[int, tuple[int, int]],
                   max_draws: int) -> FilteredMasks:
    """Draw until ``n`` masks are valid after repair (:func:`cmrlib.data.anatomy.repair`, every criterion of
    :func:`cmrlib.data.anatomy.check_masks`, class areas within the real ``ranges``) or ``max_draws`` x ``n`` draws
    are spent; then the set is topped up with the first invalid (repaired) draws, with a warning."""
    batches = _mask_batches(model, sampling, seed)
    drawn, accepted, rejected = [], [], []
    n_accepted = 0
    with tqdm(total=n, desc="valid stage-1 masks", unit="mask") as bar:
        while n_accepted < n and sum(map(len, drawn)) < max_draws * n:
            batch = next(batches)
            repaired = anatomy.repair(batch)
            ok = anatomy.check_masks(repaired, ranges=ranges)["valid"]
            drawn.append(batch)
            accepted.append(repaired[ok])
            rejected.append(repaired[~ok])
            n_accepted += int(ok.sum())
            bar.update(min(int(ok.sum()), n - bar.n))
            bar.set_postfix(drawn=sum(map(len, drawn)), refresh=False)
    n_drawn = sum(map(len, drawn))
    good = np.concatenate(accepted)[:n]
    if len(good) < n:
        warnings.warn(f"the mask prior gave {len(good)} valid masks of the {n} needed in {n_drawn} draws "
                      f"(generators.mask_max_draws={max_draws}); the set is topped up with {n - len(good)} invalid ones. "
                      "Train the prior longer, or raise generators.mask_max_draws", stacklevel=2)
    masks = np.concatenate([good, np.concatenate(rejected)[: n - len(good)]])
    return FilteredMasks(masks, np.arange(n) < len(good), np.concatenate(drawn)[:n], n_drawn, n_accepted)


def stage1_masks(model: torch.nn.Module, n: int, seed: int, ranges: dict[int, tuple[int, int]], *, sampling,
                 mask_filter: str, max_draws: int) -> FilteredMasks:
    """``n`` masks from the prior ``model``, filtered as ``mask_filter`` (``generators.mask_filter``) says, class
    areas judged against the real ``ranges`` (with ``all``: every draw, its validity flagged all the same)."""
    if mask_filter == "valid":
        return filtered_masks(model, n, sampling, seed, ranges, max_draws)
    drawn = sample_masks(model, n, sampling, seed)
    valid = anatomy.check_masks(drawn, ranges=ranges)["valid"]
    return FilteredMasks(drawn, valid, drawn, len(drawn), int(valid.sum()))


def stage1_settings(params: StudyParams) -> dict:
    """The keyword arguments of :func:`stage1_masks` that the params give (sampler, filter, draws)."""
    g = params.generators
    return {"sampling": g.mask_prior.sample, "mask_filter": g.mask_filter, "max_draws": g.mask_max_draws}


def sample_mask_prior(params: StudyParams, paths: RunPaths, train: SliceSet, replica: Replica = PRIMARY) -> np.ndarray:
    """Generate the ``generators.n_synthetic`` stage-1 masks that condition the synthetic sets with the trained prior
    (:func:`stage1_masks`, judged against the real ``train`` masks); save them to ``samples/mask_prior/masks.npz``
    (the replica's folder) with their validity flags (``valid``) and the unfiltered draws (``drawn``)."""
    g = params.generators
    model, ckpt = load_arm(params, paths, MASK_PRIOR, replica=replica)
    seed = seed_for(params.seed, "masks", *replica.seed_names)
    start = time.perf_counter()
    f = stage1_masks(model, g.n_synthetic, seed, anatomy.area_ranges(train.masks), **stage1_settings(params))
    record = sample_record("stage1", seed, g.mask_prior.sample, ckpt, start) | dict(
        mask_filter=g.mask_filter, drawn=f.n_drawn, accepted=f.n_accepted, valid_share=round(float(f.valid.mean()), 4))
    save_samples(paths, replica.folder(MASK_PRIOR), "masks", record=record, masks=f.masks, valid=f.valid, drawn=f.drawn)
    return f.masks


def oracle_masks(params: StudyParams, train: SliceSet) -> np.ndarray:
    """``generators.n_synthetic`` real training masks (a seeded draw, without replacement where there are enough):
    the oracle control's conditioning, stage 2 judged without stage 1."""
    n = params.generators.n_synthetic
    rng = np.random.default_rng(seed_for(params.seed, "oracle masks"))
    return train.masks[rng.choice(len(train), size=n, replace=n > len(train))]


def mask_sources(params: StudyParams, paths: RunPaths, train: SliceSet) -> dict[str, np.ndarray]:
    """The primary replica's other conditioning sets, by the name of their synthetic set ``synthetic_<name>``:
    ``oracle`` (:func:`oracle_masks`) and, when the stage-1 masks were filtered, ``all`` (the unfiltered draws)."""
    out = {"oracle": oracle_masks(params, train)}
    if params.generators.mask_filter == "valid":
        out["all"] = mask_sets(paths)["drawn"]
    return out


def mask_validity(sets: dict[str, np.ndarray], reference: np.ndarray) -> pd.DataFrame:
    """Share of maps meeting each anatomical criterion (:data:`cmrlib.data.anatomy.CRITERIA`) and all of them
    (``valid``), per set (name -> maps), the class areas judged against the ``reference`` maps' range; ``n`` maps."""
    rows = {name: {k: float(v.mean()) for k, v in anatomy.check_masks(m, reference).items()} | {"n": len(m)}
            for name, m in sets.items()}
    return pd.DataFrame(rows).T.rename_axis("set")


def mask_distances(sets: dict[str, np.ndarray], reference: np.ndarray) -> pd.DataFrame:
    """KS statistic and 1-Wasserstein distance to the ``reference`` maps of each shape statistic
    (:func:`cmrlib.data.anatomy.distribution_distances`), per set: one row per (set, statistic)."""
    return pd.concat({name: anatomy.distribution_distances(reference, m) for name, m in sets.items()}, names=["set"]).reset_index()


def mask_sets(paths: RunPaths, replica: Replica = PRIMARY) -> dict[str, np.ndarray]:
    """The stage-1 sets of a replica: the masks that condition the synthetic sets (``conditioning``) and the
    unfiltered draws (``drawn``)."""
    sample = load_samples(paths, replica.folder(MASK_PRIOR), "masks")
    return {"conditioning": sample["masks"], "drawn": sample.get("drawn", sample["masks"])}


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
    cfg = train_config(spec.params(params).autoencoder.train, params.seed, spec.autoencoder_dir, *replica.seed_names)
    with initial_weights(cfg.seed):
        ae = models.Autoencoder(**{k: v for k, v in model.autoencoder.config.items() if k != "family"})
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
    cfg = train_config(spec.params(params).train, params.seed, arm, *replica.seed_names)
    with initial_weights(cfg.seed):
        model = build_arm(params, arm)
    if spec.autoencoder:
        train_autoencoder(params, paths, arm, train if autoencoder_train is None else autoencoder_train, model, replica)
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


def sample_arm(params: StudyParams, paths: RunPaths, arm: str, slices: SliceSet, stage1: np.ndarray,
               replica: Replica = PRIMARY, sources: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """The paired set (one image per real test mask) at every kept checkpoint, and the synthetic set (from the
    ``stage1`` masks) with the final weights; returns the samples table. Another replica than the primary one: the
    final paired and synthetic sets only (the compute axis reads the primary replica). ``sources`` (name -> masks,
    :func:`mask_sources`): one more set ``synthetic_<name>`` each, with the final weights."""
    p = registry.get(arm).params(params)
    name = replica.folder(arm)
    test_rows = np.flatnonzero(slices.meta["split"].to_numpy() == "test")
    test_masks = slices.masks[test_rows]
    kept = training.kept_checkpoints(paths.checkpoints / name)
    final = max(kept)
    few = stage1[: params.generators.n_synthetic_per_checkpoint]
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
    images = generate(model, stage1, p.sample, seed, desc=f"{name} synthetic set")
    save_samples(paths, name, "synthetic", record=sample_record("synthetic", seed, p.sample, ckpt, start), images=images, masks=stage1)
    for source, masks in (sources or {}).items():
        seed = seed_for(params.seed, "synthetic", arm, source, *replica.seed_names)
        start = time.perf_counter()
        images = generate(model, masks, p.sample, seed, desc=f"{name} synthetic set from {source} masks")
        save_samples(paths, name, f"synthetic_{source}", record=sample_record(f"synthetic ({source} masks)", seed, p.sample, ckpt, start),
                     images=images, masks=masks)
    return samples_table(paths, name)


__all__ = ["MASK_PRIOR", "PRIMARY", "Replica", "replicas", "seed_replicas", "same_patients", "training_slices", "made_by", "build_arm", "build_mask_prior", "train_arm", "train_mask_prior", "train_autoencoder",
           "load_arm", "sampling_of", "autoencoder_report", "generate", "sample_masks", "filtered_masks", "stage1_masks", "stage1_settings", "sample_mask_prior", "oracle_masks", "mask_sources", "mask_validity",
           "mask_distances", "mask_sets", "FilteredMasks",
           "sample_arm", "sample_record", "save_samples", "load_samples", "samples_table", "synthetic_by_step"]
