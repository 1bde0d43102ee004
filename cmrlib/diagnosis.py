"""The sampler diagnosis of a diffusion arm: does DDIM converge as its steps grow, and if not, why
(``docs/benchmarks.md#ddim-against-its-steps``).

On one run's data and reference segmenter (the judge of mask faithfulness), it trains the arm with each of
:data:`VARIANTS` of its loss at the recipe's budget, then, for each model:

- the **error by timestep**: the mean squared error of the predicted noise and of the implied clean image on the
  training images, at timesteps across the schedule (does the error rise where many-step DDIM spends its steps?);
- the **sampler sweep**: mask faithfulness (mean Dice of the judge on images generated from real masks of the
  validation patients, seen by no model and not the test patients, as the sweep chooses the sampler) of DDIM
  at several step counts, with and without clipping the predicted clean image, with leading against trailing
  spacing, with EMA against raw weights, each minus the 1000-step ancestral sampler on the same masks (paired
  bootstrap over those patients). Every setting starts from the same noise.

    python -m cmrlib.diagnosis params/default.yaml --run diagnosis_phantom [--set KEY=VALUE ...]

writes ``<run>/diagnosis/{timestep_error,sampler_sweep}.csv``, ``diagnosis.json``, the table ``summary.{csv,md,tex}``
and the figure
``sampler_sweep.{png,pdf}``; checkpoints go to ``<run>/checkpoints/<arm>_<variant>/``. A variant measured before is
not measured again, and training resumes.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import data, generation, params as params_mod, plots, registry, segmenters, training
from .jsonio import write_json
from .models import device
from .params import StudyParams
from .paths import RunPaths
from .report import save_figure, save_table
from .seeds import initial_weights, seed_for
from .stats import bootstrap_mean, format_interval, format_number

# name -> the arm's ``schedule`` section for that model; each trains at the recipe's budget, with the recipe's seed
VARIANTS: dict[str, dict] = {
    # noise prediction with Min-SNR-5: the DDPM recipe before this diagnosis
    "eps_min_snr": {"prediction_type": "epsilon", "min_snr_gamma": 5.0, "clip_sample": True},
    # the unweighted noise-prediction loss of Ho et al. 2020
    "eps_simple": {"prediction_type": "epsilon", "min_snr_gamma": None, "clip_sample": True},
    # velocity prediction with Min-SNR's velocity form, unclipped: the DDPM recipe since
    "v_min_snr": {"prediction_type": "v_prediction", "min_snr_gamma": 5.0, "clip_sample": False},
}
STEPS = (5, 10, 20, 50, 200)
ABLATION_STEPS = (10, 50, 200)
ABLATED = "eps_min_snr"  # the variant whose spacing and weights are varied too
SPLIT = "val"  # whose masks the sweep regenerates: the sampler is chosen on them
TIMESTEPS = (0, 5, 10, 20, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)


@dataclass(frozen=True)
class Setting:
    """One way of sampling a trained model: a sampler, its steps, the weights, and scheduler overrides."""

    name: str
    sampler: str
    steps: int
    weights: str = "ema"
    options: dict = field(default_factory=dict)
    batch_size: int = 64


def settings(steps=STEPS, ablation_steps=ABLATION_STEPS, reference_steps: int = 1000, ablations: bool = True) -> list[Setting]:
    """The sweep: DDIM with and without clipping the predicted clean image at each of ``steps``; with ``ablations``,
    also with leading spacing and with raw weights (both clipped as the model is configured) at each of
    ``ablation_steps``; last, the reference: ancestral sampling over every training step, as configured."""
    out = [Setting("ddim clipped", "ddim", s, options={"clip_sample": True}) for s in steps]
    out += [Setting("ddim unclipped", "ddim", s, options={"clip_sample": False}) for s in steps]
    if ablations:
        out += [Setting("ddim leading", "ddim", s, options={"timestep_spacing": "leading", "steps_offset": 1}) for s in ablation_steps]
        out += [Setting("ddim raw weights", "ddim", s, weights="raw") for s in ablation_steps]
    return out + [Setting("ancestral", "ancestral", reference_steps)]


def variant_params(params: StudyParams, arm: str, variant: str) -> StudyParams:
    """``params`` with the arm's schedule set as ``VARIANTS[variant]`` says."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    section = registry.get(arm).section
    return params_mod.StudyParams.model_validate(
        params_mod.overlay(params.model_dump(), {"generators": {section: {"schedule": VARIANTS[variant]}}}))


def checkpoint_folder(arm: str, variant: str) -> str:
    """``checkpoints/<arm>_<variant>``, beside the study's own."""
    return f"{arm}_{variant}"


def train_variant(params: StudyParams, paths: RunPaths, arm: str, variant: str, train) -> training.TrainResult:
    """Train (or resume, or find done) one variant of a diffusion arm on the training slices."""
    spec = registry.get(arm)
    p = variant_params(params, arm, variant)
    with initial_weights(seed_for(params.seed, "diagnosis", "init", arm)):  # the variants differ in their loss only
        model = spec.build(p)
    folder = checkpoint_folder(arm, variant)
    cfg = generation.train_config(spec.params(p).train, params.seed, arm)
    return training.train(model, generation.images_tensor(train), generation.masks_tensor(train.masks), cfg,
                          paths.checkpoints / folder, desc=f"{spec.label} {variant}")


def load_variant(params: StudyParams, paths: RunPaths, arm: str, variant: str, weights: str) -> torch.nn.Module:
    spec = registry.get(arm)
    model = spec.build(variant_params(params, arm, variant))
    training.load_checkpoint(paths.checkpoints / checkpoint_folder(arm, variant) / "last.pt", model, weights=weights)
    return model.to(device()).eval()


@torch.no_grad()
def error_by_timestep(model, x: torch.Tensor, cond: torch.Tensor, timesteps=TIMESTEPS, seed: int = 0, draws: int = 2,
                      batch_size: int = 64) -> pd.DataFrame:
    """Per timestep t: log SNR, the noise-prediction MSE and the implied clean-image MSE (x0 = (x_t - sqrt(1 - abar)
    eps) / sqrt(abar), so its error is the noise error / SNR), over the images ``x`` with ``draws`` noise draws each."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    rows = []
    for t_value in tqdm(timesteps, desc="error by timestep", unit="timestep"):
        eps_err = []
        for i in range(0, len(x), batch_size):
            xb, cb = x[i : i + batch_size], cond[i : i + batch_size]
            t = torch.full((len(xb),), t_value, dtype=torch.long, device=x.device)
            for _ in range(draws):
                noise = torch.randn(xb.shape, generator=g, device=x.device)
                eps_err.append((model.predict_noise(model.q_sample(xb, t, noise), t, cb) - noise).pow(2).flatten(1).mean(1))
        eps_mse = float(torch.cat(eps_err).mean())
        log_snr = float(model.log_snr[t_value])
        rows.append({"timestep": t_value, "log_snr": log_snr, "eps_mse": eps_mse, "x0_mse": eps_mse / math.exp(log_snr)})
    return pd.DataFrame(rows)


def sampler_sweep(model_for, masks: np.ndarray, patients: np.ndarray, judge, sweep: list[Setting], seed: int,
                  n_boot: int = 1000, desc: str = "") -> pd.DataFrame:
    """Mask faithfulness of each setting (``model_for(weights)`` gives the model), the last setting being the
    reference: per setting the mean Dice over ``masks``, its difference from the reference on the same masks with a
    paired bootstrap interval over ``patients``, and seconds per image."""
    dice, rows = [], []
    for s in tqdm(sweep, desc=f"{desc} sampler sweep", unit="setting"):
        model = model_for(s.weights)
        start = time.perf_counter()  # the same noise for every setting: one seed
        images = generation.generate(model, masks, s, seed, desc=f"{s.name} {s.steps} steps", scheduler_options=s.options)
        seconds = (time.perf_counter() - start) / len(masks)
        per_image = np.nanmean(segmenters.mask_faithfulness(judge, images, masks), 1)
        dice.append(per_image)
        rows.append({"setting": s.name, "sampler": s.sampler, "steps": s.steps, "weights": s.weights,
                     "dice_mean": float(np.nanmean(per_image)), "seconds_per_image": seconds, "n": len(masks)})
        tqdm.write(f"{desc} {s.name} {s.steps}: mean Dice {rows[-1]['dice_mean']:.3f} ({seconds:.2f} s/image)")
    for k, (row, d) in enumerate(zip(rows, dice)):
        iv = bootstrap_mean(d - dice[-1], patients, n_boot=n_boot, seed=seed + k)[0]
        row.update(vs_reference=iv.estimate, vs_reference_low=iv.low, vs_reference_high=iv.high)
    return pd.DataFrame(rows)


def summary(sweep: pd.DataFrame) -> pd.DataFrame:
    """The sweep as a table: one row per variant and DDIM setting, one column per step count, each cell the change
    of mean Dice against that variant's reference with its interval; the reference's own Dice in its column."""
    rows = {}
    for (variant, setting), d in sweep[sweep["sampler"] != "ancestral"].groupby(["variant", "setting"], sort=False):
        ref = sweep[(sweep["variant"] == variant) & (sweep["sampler"] == "ancestral")].iloc[0]
        cells = {f"{int(r.steps)} steps": format_interval(r.vs_reference, r.vs_reference_low, r.vs_reference_high)
                 for r in d.itertuples()}
        rows[(variant, setting)] = {f"ancestral {int(ref.steps)}: mean Dice": format_number(ref.dice_mean), **cells}
    table = pd.DataFrame(rows).T
    table.index.names = ["variant", "setting"]
    return table.fillna("")


def diagnose(params: StudyParams, paths: RunPaths, arm: str = "ddpm", variants=tuple(VARIANTS), steps=STEPS,
             n_images: int = 16, reference_steps: int = 1000, ablations: bool = True) -> dict[str, pd.DataFrame]:
    """The whole diagnosis of ``arm`` on the run ``paths`` (its data prepared from ``params``); writes and returns the
    two tables. ``ablations``: vary the spacing and the weights of :data:`ABLATED` too."""
    spec = registry.get(arm)
    if spec.samplers is not registry.DIFFUSION_SAMPLERS or spec.autoencoder:
        raise ValueError(f"the sampler diagnosis is for a pixel-space diffusion arm; {arm!r} is not one")
    slices = data.prepare(params, paths)
    if not (slices.meta["split"] == SPLIT).any():
        raise ValueError("the sampler diagnosis chooses on the validation patients, and the run has none: set "
                         "data.n_val_patients >= 1")
    train, held = slices.split("train"), slices.split(SPLIT)
    judge, _ = segmenters.reference_segmenter(params, paths, slices)
    rng = np.random.default_rng(seed_for(params.seed, "diagnosis", "subset"))
    idx = np.sort(rng.choice(len(held), size=min(n_images, len(held)), replace=False))
    masks, patients = held.masks[idx], held.meta["patient"].to_numpy()[idx]
    x_train = generation.images_tensor(train).to(device())
    c_train = generation.masks_tensor(train.masks).to(device())
    out = paths.root / "diagnosis"
    out.mkdir(exist_ok=True)
    errors, sweeps = [], []
    for variant in variants:
        error_csv, sweep_csv = out / f"{variant}_timestep_error.csv", out / f"{variant}_sampler_sweep.csv"
        if not (error_csv.exists() and sweep_csv.exists()):  # a variant measured before is not measured again
            train_variant(params, paths, arm, variant, train)
            model_for = functools.cache(functools.partial(load_variant, params, paths, arm, variant))  # by weights
            error_by_timestep(model_for("ema"), x_train, c_train, seed=seed_for(params.seed, "diagnosis", "error")) \
                .assign(variant=variant).to_csv(error_csv, index=False)
            sweep = settings(steps, reference_steps=reference_steps, ablations=ablations and variant == ABLATED)
            sampler_sweep(model_for, masks, patients, judge, sweep, seed=seed_for(params.seed, "diagnosis", "sweep"),
                          desc=f"{arm} {variant}").assign(variant=variant).to_csv(sweep_csv, index=False)
        errors.append(pd.read_csv(error_csv))
        sweeps.append(pd.read_csv(sweep_csv))
    tables = {"timestep_error": pd.concat(errors, ignore_index=True), "sampler_sweep": pd.concat(sweeps, ignore_index=True)}
    for name, table in tables.items():
        table.to_csv(out / f"{name}.csv", index=False)
    write_json(out / "diagnosis.json", {"arm": arm, "variants": list(variants), "masks_of": SPLIT, "n_images": len(masks),
                                        "n_patients": int(len(set(patients))), "reference_steps": reference_steps,
                                        **{k: v.to_dict(orient="records") for k, v in tables.items()}})
    save_table(summary(tables["sampler_sweep"]), out, "summary")
    save_figure(plots.sampler_diagnosis(tables["sampler_sweep"], tables["timestep_error"]), out, "sampler_sweep")
    return tables


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmrlib.diagnosis", description=__doc__.split("\n\n")[0])
    parser.add_argument("params")
    parser.add_argument("--run", required=True, help="run folder name under the runs folder")
    parser.add_argument("--arm", default="ddpm")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--steps", nargs="+", type=int, default=list(STEPS))
    parser.add_argument("--n-images", type=int, default=16)
    parser.add_argument("--no-ablations", action="store_true", help="skip the spacing and weights ablations")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    p = params_mod.load(args.params, args.set)
    diagnose(p, RunPaths.for_run(args.run), args.arm, tuple(args.variants), tuple(args.steps), args.n_images,
             ablations=not args.no_ablations)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
