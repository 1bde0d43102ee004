"""The utility axis: does synthetic data help a segmentation network? What ``40_utility`` calls (definitions:
``docs/protocol.md#utility``).

Reads ``data/``, ``splits.json`` and ``samples/<arm>/synthetic.npz`` (images generated from stage-1 masks; a
replica's ``samples/<arm>_seed<g>/`` or ``samples/<arm>_n<k>_seed<g>/`` for the runs that train on it). Writes
``checkpoints/utility/<regime>_<arm>_n<k>_seed<s>[_generators_<replica>]/`` (one segmenter per training run; resumed,
or loaded when done),
``metrics/utility.json`` and the tables ``tables/utility_*``.

Training runs (:func:`plan`), for each seed of ``utility.seeds``:

- ``real`` (arm ``none``): the first k patients of ``splits["sets"]["train"]`` (balanced over vendors and nested), for
  each k of ``utility.n_real_patients`` (null: all training patients); the baseline;
- ``synthetic`` (k = 0): an arm's synthetic set alone, once per arm;
- ``real+synthetic``: the same k real patients plus the arm's synthetic set (all of it, or ``synthetic_ratio``
  synthetic slices per real slice, a seeded subset).

The compute axis (:func:`against_training_step`): real + synthetic at the fewest real patients, with the synthetic
subset of each kept generator checkpoint (``..._step<N>`` runs).

The segmenter's budget axis (:func:`against_segmenter_budget`): real-only and real + synthetic at the fewest real
patients, trained again at fractions of the budget (``..._budget<f>`` runs).

Each is a :class:`~cmrlib.models.SegmentationModel` (DynUNet, Dice + cross-entropy) trained by the one loop
(:func:`cmrlib.training.train`) for ``utility.segmenter.steps`` with its augmentation; the EMA weights of the
checkpoint of best validation Dice (``utility.segmenter.val_checks`` checks on the validation patients) are
evaluated, and every table names that step (:mod:`cmrlib.segmenters`).

Evaluation, on ``test`` (in-domain) and every ``cross_<domain>`` set, per patient:

- **Dice** per structure (LV, MYO, RV), background excluded, of each 3D volume (the patient's slices of one phase
  stacked in slice order: overlaps and sizes summed over slices), NaN when a structure is absent from both;
- **HD95 and ASD** in mm per structure, **in 3D** where the data give the through-plane spacing
  (``slice_spacing_mm`` of ``data/metadata.csv``: the NIfTI header's, the phantom's, or
  ``data.assumed_slice_spacing_mm``), the slices placed at their index so that dropped unlabelled slices keep their
  distance; else per 2D slice with the in-plane pixel spacing (:func:`pixel_spacing_mm`), averaged over the slices
  (the volume's ``distances`` says which). A structure absent from either side has no distance (NaN, left out of the
  means, as in nnU-Net's evaluation; its Dice of 0 counts the miss); the summary reports the share of such one-sided
  cases (:func:`cmrlib.metrics.surface_distances`);
- a patient's value is the mean of its ED and ES volumes; ``dice_mean`` / ``hd95_mean`` / ``asd_mean`` the mean over
  structures;
- beside them, the reference study's **per-slice Dice with background** (mean over the four classes), averaged
  over slices.

Statistics: one inference rule, the hierarchical bootstrap (:func:`cmrlib.stats.bootstrap_draws`): each draw
resamples the seeds, then the patients, so an interval holds both the patients' and the training seeds' variance; the
seed spread (standard deviation of the per-seed means) is reported beside it. Each regime is compared with real-only
on the same patients and seeds (``delta_vs_real``, its interval and the bootstrap p-value of a zero difference), the
real-only model at the same number of real patients; for ``synthetic`` (no real patients), the real-only model with
all training patients (``baseline_n``). p-values are Holm-corrected within each evaluation set (one family per set:
in-domain, each cross-domain set) (:func:`cmrlib.stats.holm`).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import claims, generation, metrics, registry, report, segmenters, training
from .data.preprocess import pixel_size_mm
from .data.records import SliceSet
from .jsonio import write_json
from .labels import FOREGROUND
from .models import SegmentationModel
from .parallel import map_jobs
from .params import StudyParams
from .paths import RunPaths
from .data.splits import first_patients as real_patients, real_patient_counts as n_real_grid
from .seeds import initial_weights, seed_for
from .segmenters import segment
from .stats import Interval, bootstrap_draws, bootstrap_mean, compare, format_interval, holm, mean_and_spread, percentile_bounds, seeded_mean

STAGE = "40_utility"
CHECKPOINT_DIR = "utility"
REGIMES = ("real", "synthetic", "real+synthetic")
NO_ARM = "none"
STRUCTURES = list(FOREGROUND.values())  # LV, MYO, RV
DICE = [f"dice_{s}" for s in STRUCTURES]
HD95 = [f"hd95_{s}" for s in STRUCTURES]
ASD = [f"asd_{s}" for s in STRUCTURES]
SUMMARY_KEYS = ["regime", "arm", "n_real_patients", "eval_set", "dice_mean", "dice_mean_low", "dice_mean_high", *DICE,
                "hd95_mean", "hd95_low", "hd95_high", "asd_mean", "dice_reference_protocol", "delta_vs_real", "p_value", "p_holm",
                "n_patients", "seeds"]


# -- what is trained -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One training run: regime, arm (``none`` for real-only), number of real patients (0 for synthetic-only), seed."""

    regime: str
    arm: str
    n_real: int
    seed: int
    step: int | None = None  # compute axis: the synthetic subset of the arm's checkpoint at this step (None: the final set)
    budget: float | None = None  # segmenter budget axis: this fraction of utility.segmenter.steps (None: all of it)
    generators: generation.Replica = generation.PRIMARY  # the generators whose synthetic set it trains on
    masks: str | None = None  # mask-source axis: the synthetic set from these masks (``all``, ``oracle``; None: stage-1)

    @property
    def name(self) -> str:
        """The checkpoint folder ``checkpoints/utility/<name>/``."""
        return self.seed_name + ("" if self.budget is None else f"_budget{self.budget:g}")

    @property
    def seed_name(self) -> str:
        """What the run's seed derives from: its name without the budget, so that a run at a fraction of the budget
        starts from the same weights and draws the same batches as the whole run (the budget axis compares schedules,
        not seeds)."""
        return (f"{self.regime}_{self.arm}_n{self.n_real}_seed{self.seed}" + ("" if self.step is None else f"_step{self.step}")
                + ("" if self.generators.primary else f"_generators{self.generators.suffix}")
                + ("" if self.masks is None else f"_masks-{self.masks}"))

    @property
    def generators_from(self) -> str:
        """Which patients its generators learned from, as the tables say it: ``all``, or ``same (k patients)``; empty
        for real-only."""
        if self.regime == "real":
            return ""
        return "all" if self.generators.n_patients is None else f"same ({self.generators.n_patients} patients)"


def generators_of(params: StudyParams, splits: dict, n_real: int, seed: int) -> generation.Replica:
    """The generator replica a real + synthetic or synthetic run of ``n_real`` patients and utility seed ``seed``
    trains on: generator seed (the seed's index in ``utility.seeds``) modulo ``generators.n_seeds``, on the same
    patients at the fewest real patients when ``utility.generators_from`` is ``same``, else on every patient."""
    g = params.utility.seeds.index(seed) % params.generators.n_seeds
    return generation.Replica(g, n_real if n_real == generation.same_patients(params, splits) else None)


def plan(params: StudyParams, splits: dict, arms=None) -> list[Run]:
    """Every training run the params ask for, seed by seed (default arms: every registered one)."""
    arms = registry.names() if arms is None else arms
    u = params.utility
    grid = n_real_grid(params, splits)
    runs = []
    for seed in u.seeds:
        if "real" in u.regimes:
            runs += [Run("real", NO_ARM, k, seed) for k in grid]
        if "synthetic" in u.regimes:
            runs += [Run("synthetic", arm, 0, seed, generators=generators_of(params, splits, 0, seed)) for arm in arms]
        if "real+synthetic" in u.regimes:
            runs += [Run("real+synthetic", arm, k, seed, generators=generators_of(params, splits, k, seed)) for arm in arms for k in grid]
    return runs


def step_runs(params: StudyParams, paths: RunPaths, splits: dict, arms=None) -> list[Run]:
    """The runs of :func:`against_training_step`: real + synthetic at the fewest real patients (first seed) on the
    synthetic subset of each kept checkpoint of each arm; none without real + synthetic."""
    arms = registry.names() if arms is None else arms
    if "real+synthetic" not in params.utility.regimes:
        return []
    n, seed = n_real_grid(params, splits)[0], params.utility.seeds[0]
    return [Run("real+synthetic", arm, n, seed, step) for arm in arms for step in training.kept_checkpoints(paths.checkpoints / arm)]


def budget_runs(params: StudyParams, splits: dict, arms=None) -> list[Run]:
    """The runs of :func:`against_segmenter_budget`: real-only and real + synthetic of every arm at the fewest real
    patients (first seed), at each fraction of ``utility.segmenter_budgets`` and at the whole budget (the latter
    runs of :func:`plan`); none without budgets or either regime."""
    arms = registry.names() if arms is None else arms
    u = params.utility
    kinds = ([("real", NO_ARM)] if "real" in u.regimes else []) + (
        [("real+synthetic", a) for a in arms] if "real+synthetic" in u.regimes else [])
    if not u.segmenter_budgets or not kinds:
        return []
    n, seed = n_real_grid(params, splits)[0], u.seeds[0]
    return [Run(regime, arm, n, seed, budget=f, generators=generators_of(params, splits, n, seed) if regime != "real" else generation.PRIMARY)
            for f in [*u.segmenter_budgets, None] for regime, arm in kinds]


def mask_source_runs(params: StudyParams, splits: dict, arms=None) -> list[Run]:
    """The runs of :func:`against_mask_source`: real-only at the fewest real patients (first seed), then real +
    synthetic of every arm from the stage-1 masks and from each source of ``utility.mask_sources``; none without
    sources or either regime (``all`` is left out when the stage-1 masks are the unfiltered draws)."""
    arms = registry.names() if arms is None else arms
    u = params.utility
    sources = [m for m in u.mask_sources if not (m == "all" and params.generators.mask_filter == "all")]
    if not sources or not {"real", "real+synthetic"} <= set(u.regimes):
        return []
    n, seed = n_real_grid(params, splits)[0], u.seeds[0]
    return [Run("real", NO_ARM, n, seed)] + [Run("real+synthetic", arm, n, seed, masks=m) for arm in arms for m in [None, *sources]]


def all_runs(params: StudyParams, paths: RunPaths, splits: dict, arms=None) -> list[Run]:
    """Every run of the stage, once by its checkpoint folder: those of :func:`plan` and of the three axes (a run two
    of them share, such as real-only at the fewest patients, is one run, and no two jobs train one folder)."""
    runs = (plan(params, splits, arms) + step_runs(params, paths, splits, arms) + budget_runs(params, splits, arms)
            + mask_source_runs(params, splits, arms))
    by_name: dict[str, Run] = {}
    for run in runs:
        by_name.setdefault(run.name, run)
    return list(by_name.values())


@dataclass
class TrainingSet:
    images: np.ndarray  # (N, H, W) in [-1, 1]: the real slices first, then the synthetic ones
    masks: np.ndarray  # (N, H, W) labels
    patients: list[str]  # the real patients
    n_real: int  # real slices
    n_synthetic: int  # synthetic slices


def training_set(params: StudyParams, paths: RunPaths, slices: SliceSet, splits: dict, run: Run) -> TrainingSet:
    """The slices a run trains on: the real training slices of its patients (rows of split ``train`` only), then the
    arm's synthetic set (or a seeded subset of ``synthetic_ratio`` per real slice)."""
    patients = real_patients(splits, run.n_real)
    meta = slices.meta
    rows = np.flatnonzero(meta["patient"].isin(patients).to_numpy() & (meta["split"].to_numpy() == "train"))
    missing = sorted(set(patients) - set(meta["patient"].to_numpy()[rows]))
    if missing:
        raise ValueError(f"training patients {missing[:5]} of splits.json have no slices of split 'train' in data/: the "
                         "data and the splits are out of step; re-run the notebook 00_data")
    images, masks = [slices.images[rows]], [slices.masks[rows]]
    n_syn = 0
    if run.regime != "real":
        name = "synthetic" if run.masks is None else f"synthetic_{run.masks}"
        syn = (generation.load_samples(paths, run.generators.folder(run.arm), name) if run.step is None
               else generation.synthetic_by_step(params, paths, run.arm)[run.step])
        take = np.arange(len(syn["images"]))
        ratio = params.utility.synthetic_ratio
        if run.regime == "real+synthetic" and ratio is not None:
            m = int(round(ratio * len(rows)))
            if m > len(take):
                raise ValueError(f"utility.synthetic_ratio={ratio} asks for {m} synthetic slices with {len(rows)} real "
                                 f"ones ({run.name}), but samples/{run.generators.folder(run.arm)}/synthetic.npz holds {len(take)}; lower the "
                                 "ratio, set it to null (the whole synthetic set) or raise generators.n_synthetic")
            rng = np.random.default_rng(seed_for(params.seed, "utility", "synthetic", run.arm, str(run.seed)))
            take = np.sort(rng.permutation(len(take))[:m])
        images.append(syn["images"][take])
        masks.append(syn["masks"][take])
        n_syn = len(take)
    return TrainingSet(np.concatenate(images).astype(np.float32), np.concatenate(masks).astype(np.uint8), patients,
                       len(rows), n_syn)


def build_segmenter(params: StudyParams) -> SegmentationModel:
    return segmenters.build(params.utility.segmenter)


def train_config(params: StudyParams, run: Run, validates: bool) -> training.TrainConfig:
    """A run's loop settings: ``utility.segmenter`` (``run.budget`` of its steps), validated when ``validates``."""
    p = params.utility.segmenter
    steps = None if run.budget is None else max(1, round(run.budget * p.steps))
    return segmenters.train_config(p, seed_for(params.seed, "train", CHECKPOINT_DIR, run.seed_name), validates, steps)


def train_run(params: StudyParams, paths: RunPaths, slices: SliceSet, splits: dict, run: Run, progress: bool = True
              ) -> tuple[SegmentationModel, training.TrainResult, TrainingSet]:
    """Train (or resume, or load when done) one run in ``checkpoints/utility/<run.name>/``; returns the model with
    the EMA weights of its chosen checkpoint (the best on the validation patients, else the last) in eval mode, the
    training result and the training set. ``progress``: the per-step bar."""
    data = training_set(params, paths, slices, splits, run)
    val = segmenters.validation_set(slices)
    cfg = train_config(params, run, validates=val is not None)
    with initial_weights(cfg.seed):
        model = build_segmenter(params)
    if cfg.batch_size > len(data.images):
        raise ValueError(f"utility.segmenter.batch_size={cfg.batch_size} exceeds the {len(data.images)} training slices "
                         f"of {run.name}; lower it or raise utility.n_real_patients")
    model, result = segmenters.train(model, data.images, data.masks, cfg, paths.checkpoints / CHECKPOINT_DIR / run.name,
                                     desc=run.name, val=val, progress=progress)
    return model, result, data


# -- scoring -------------------------------------------------------------------------------------------------------
def pixel_spacing_mm(params: StudyParams) -> float:
    """In-plane spacing of the processed slices (:func:`cmrlib.data.preprocess.pixel_size_mm`)."""
    return pixel_size_mm(params.data)


def eval_sets(splits: dict) -> list[str]:
    """``test`` and every ``cross_<domain>`` set of the splits, in the order of ``data.cross_domains``."""
    return ["test"] + [f"cross_{d}" for d in splits["cross_domains"]]


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # mean of empty slice: NaN, as wanted
        return np.nanmean(a, axis=axis)


def score_slices(pred: np.ndarray, target: np.ndarray) -> pd.DataFrame:
    """Per slice: 2D Dice per structure, the mean foreground Dice of the slice, and the reference study's
    background-inclusive Dice."""
    dice = metrics.dice_per_structure(pred, target)
    out = pd.DataFrame(dice, columns=[f"slice_{c}" for c in DICE])
    out["slice_dice_mean"] = _nanmean(dice, 1)
    out["dice_reference_protocol"] = metrics.reference_protocol_dice(pred, target)
    return out


def volume_distances(pred: np.ndarray, target: np.ndarray, slice_index: np.ndarray, spacing: float,
                     slice_spacing: float) -> dict[str, np.ndarray]:
    """HD95, ASD and the one-sided share of one volume's slices (S, H, W), per structure: in 3D (the slices at their
    index, ``slice_spacing`` mm apart) when the through-plane spacing is known, else per 2D slice and averaged over the
    slices (``one_sided``: the share of one-sided slices)."""
    if np.isfinite(slice_spacing):
        d = metrics.surface_distances(metrics.volume_stack(pred, slice_index)[None], metrics.volume_stack(target, slice_index)[None],
                                      (slice_spacing, spacing, spacing))
        return {k: v[0].astype(np.float64) for k, v in d.items()}
    d = metrics.surface_distances(pred, target, spacing)
    return {"hd95": _nanmean(d["hd95"], 0), "asd": _nanmean(d["asd"], 0), "one_sided": d["one_sided"].mean(0)}


def score_volumes(pred: np.ndarray, target: np.ndarray, meta: pd.DataFrame, spacing: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Slices (with ``meta``: patient, phase, slice_index, and ``slice_spacing_mm`` where known) -> (per-slice scores,
    per-volume scores). A volume is one patient and phase, its slices stacked in slice order: 3D Dice per structure;
    HD95 and ASD in 3D where the through-plane spacing is known, else per slice (:func:`volume_distances`)."""
    meta = meta.reset_index(drop=True)
    per_slice = pd.concat([meta[["patient", "phase", "slice_index"]], score_slices(pred, target)], axis=1)
    through = meta["slice_spacing_mm"].to_numpy(dtype=np.float64) if "slice_spacing_mm" in meta else np.full(len(meta), np.nan)
    rows = []
    for (patient, phase), idx in metrics.volume_rows(meta).items():
        dice = metrics.volume_dice(pred[idx], target[idx])
        d = volume_distances(pred[idx], target[idx], meta["slice_index"].to_numpy()[idx], spacing, float(through[idx[0]]))
        rows.append({"patient": patient, "phase": phase, "n_slices": len(idx), **dict(zip(DICE, dice)),
                     "dice_mean": float(_nanmean(dice[None], 1)[0]), **dict(zip(HD95, d["hd95"])),
                     "hd95_mean": float(_nanmean(d["hd95"][None], 1)[0]), **dict(zip(ASD, d["asd"])),
                     "asd_mean": float(_nanmean(d["asd"][None], 1)[0]),
                     **{f"hd95_one_sided_{s}": float(v) for s, v in zip(STRUCTURES, d["one_sided"])},
                     "distances": "3D" if np.isfinite(through[idx[0]]) else "2D"})
    return per_slice, pd.DataFrame(rows)


def per_patient(volumes: pd.DataFrame, by: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """Per-volume scores -> per patient: the mean of its volumes (ED and ES), NaN-ignoring, per group of ``by``."""
    cols = [c for c in [*DICE, "dice_mean", *HD95, "hd95_mean", *ASD, "asd_mean", *[f"hd95_one_sided_{s}" for s in STRUCTURES]]
            if c in volumes]
    keys = [*by, "patient"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = volumes.groupby(keys, sort=True)[cols].mean()  # pandas' mean skips NaN
    out["n_volumes"] = volumes.groupby(keys, sort=True).size()
    return out.reset_index()


# -- the whole axis ------------------------------------------------------------------------------------------------
@dataclass
class Results:
    """Everything :func:`run_all` measured: long tables over runs and evaluation sets, plus the predictions on the
    in-domain test slices (for the example figure)."""

    models: pd.DataFrame  # one row per run: regime, arm, n_real_patients, seed, data sizes, train wall time
    slices: pd.DataFrame  # one row per (run, eval set, slice)
    volumes: pd.DataFrame  # one row per (run, eval set, patient, phase)
    patients: pd.DataFrame  # one row per (run, eval set, patient)
    test_predictions: dict[str, np.ndarray] = field(default_factory=dict)  # run name -> (N test slices, H, W)
    test_rows: np.ndarray | None = None  # rows of data/metadata.csv of the test slices
    losses: dict[str, pd.DataFrame] = field(default_factory=dict)
    validation: dict[str, pd.DataFrame] = field(default_factory=dict)  # run name -> validation.csv (runs that validate)


def _run_columns(run: Run) -> dict:
    return {"regime": run.regime, "arm": run.arm, "n_real_patients": run.n_real, "seed": run.seed, "run": run.name,
            "generators_from": run.generators_from, "generator_seed": None if run.regime == "real" else run.generators.seed}


def _fingerprint(images: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(images).tobytes(), digest_size=8).hexdigest()


def _train_and_score(params: StudyParams, paths: RunPaths, slices: SliceSet, splits: dict, sets: dict[str, np.ndarray],
                     progress: bool, run: Run) -> dict:
    """One run of :func:`run_all` or :func:`against_training_step`, in a worker process when ``utility.workers`` > 1:
    train (or load) it and score it on every evaluation set of ``sets`` (name -> rows of ``slices``)."""
    model, result, data = train_run(params, paths, slices, splits, run, progress)
    out = {"model": {**_run_columns(run), "real_patients": " ".join(data.patients), "n_real_images": data.n_real,
                     "n_synthetic_images": data.n_synthetic, "steps": result.step, "chosen_step": result.chosen_step,
                     "val_dice": result.best_score, "stopping": segmenters.stopping(result),
                     "train_wall_time_s": round(result.wall_time_s, 1), "data_fingerprint": _fingerprint(data.images),
                     "checkpoint": str(result.chosen.relative_to(paths.root))},
           "losses": result.losses, "validation": result.validation, "slices": [], "volumes": []}
    for name, rows in sets.items():
        pred = segment(model, slices.images[rows])
        s, v = score_volumes(pred, slices.masks[rows], slices.meta.iloc[rows], pixel_spacing_mm(params))
        cols = {**_run_columns(run), "eval_set": name}
        out["slices"].append(s.assign(row=rows, **cols))
        out["volumes"].append(v.assign(**cols))
        if name == "test":
            out["test_prediction"] = pred.astype(np.uint8)
    return out


def _split_rows(slices: SliceSet, names: list[str]) -> dict[str, np.ndarray]:
    """The rows of ``slices`` of each split named (the evaluation sets of :func:`_train_and_score`)."""
    return {name: np.flatnonzero(slices.meta["split"].to_numpy() == name) for name in names}


def _train_and_score_all(params: StudyParams, paths: RunPaths, slices: SliceSet, splits: dict, runs: list[Run],
                         sets: dict[str, np.ndarray], desc: str) -> list[dict]:
    """:func:`_train_and_score` for every run, ``utility.workers`` at once (:func:`cmrlib.parallel.map_jobs`)."""
    workers, e = params.utility.workers, params.executor
    return map_jobs(_train_and_score, runs, workers, (params, paths, slices, splits, sets, workers == 1 and e.engine == "local"),
                    desc, engine=e.engine, address=e.address)


def _train(params: StudyParams, paths: RunPaths, slices: SliceSet, splits: dict, progress: bool, run: Run) -> None:
    train_run(params, paths, slices, splits, run, progress)


def train_all(params: StudyParams, paths: RunPaths, slices: SliceSet, splits: dict, arms=None) -> list[Run]:
    """Train (or resume) every run of :func:`all_runs` in one pool of ``utility.workers``, the longest budgets first,
    so that no worker idles at the end of each axis while the last run of a short list trains alone; the grid and
    the axes then load them. Returns the runs."""
    runs = all_runs(params, paths, splits, arms)
    workers, e = params.utility.workers, params.executor
    map_jobs(_train, runs, workers, (params, paths, slices, splits, workers == 1 and e.engine == "local"),
             "utility trainings", engine=e.engine, address=e.address, cost=lambda run: run.budget or 1.0)
    return runs


def run_all(params: StudyParams, paths: RunPaths, slices: SliceSet, splits: dict, arms=None) -> Results:
    """Train (or load) every run of :func:`plan` and score it on every evaluation set, ``utility.workers`` runs at
    once (:func:`cmrlib.parallel.map_jobs`). The per-patient in-domain test Dice of real + synthetic at the fewest real
    patients, every seed, goes to ``metrics/units/utility.csv`` (:mod:`cmrlib.claims`)."""
    sets = _split_rows(slices, eval_sets(splits))
    empty = [name for name, rows in sets.items() if len(rows) == 0]
    if empty:
        raise ValueError(f"evaluation sets {empty} of splits.json have no slices in data/: re-run the notebook 00_data")
    runs = plan(params, splits, arms)
    done = _train_and_score_all(params, paths, slices, splits, runs, sets, "utility runs")
    volumes = pd.concat([v for d in done for v in d["volumes"]], ignore_index=True)
    patients = per_patient(volumes, by=["regime", "arm", "n_real_patients", "seed", "run", "generators_from", "eval_set"])
    fewest = patients[(patients.regime == "real+synthetic") & (patients.n_real_patients == n_real_grid(params, splits)[0])
                      & (patients.eval_set == "test")]
    claims.save_units(paths, "utility", [claims.units_frame("utility_dice", arm, 1.0, seed, d.patient, d.patient, d.dice_mean)
                                         for (arm, seed), d in fewest.groupby(["arm", "seed"], sort=True)])
    models = pd.DataFrame([d["model"] for d in done]).astype({"generator_seed": "Int64"})  # none for real-only
    return Results(models, pd.concat([s for d in done for s in d["slices"]], ignore_index=True),
                   volumes, patients, {run.name: d["test_prediction"] for run, d in zip(runs, done)}, sets["test"],
                   {run.name: d["losses"] for run, d in zip(runs, done)},
                   {run.name: d["validation"] for run, d in zip(runs, done) if d["validation"] is not None})


def against_training_step(params: StudyParams, paths: RunPaths, slices: SliceSet, splits: dict, arms=None) -> pd.DataFrame:
    """The compute axis: real + synthetic at the fewest real patients (first seed), the synthetic part being the
    ``generators.n_synthetic_per_checkpoint`` images of each kept generator checkpoint
    (:func:`cmrlib.generation.synthetic_by_step`, the same stage-1 masks at every step); in-domain test mean foreground
    Dice per patient with its bootstrap interval. One row per (arm, step); ``utility.workers`` runs at once; empty
    when ``utility.regimes`` has no real + synthetic. The per-patient Dice of every checkpoint before the last goes to
    ``metrics/units/utility_steps.csv``."""
    arms = registry.names() if arms is None else arms
    u = params.utility
    if "real+synthetic" not in u.regimes:
        claims.save_units(paths, "utility_steps", [])  # no stale units of an earlier run
        return pd.DataFrame()
    n, seed = n_real_grid(params, splits)[0], u.seeds[0]
    runs = step_runs(params, paths, splits, arms)
    done = _train_and_score_all(params, paths, slices, splits, runs, _split_rows(slices, ["test"]),
                                "utility against training step")
    out, units = [], []
    for run, d in zip(runs, done):
        pp = per_patient(d["volumes"][0])
        if claims.fraction(params, run.arm, run.step) < 1:
            units.append(claims.units_frame("utility_dice", run.arm, claims.fraction(params, run.arm, run.step), seed,
                                            pp.patient, pp.patient, pp.dice_mean))
        iv = bootstrap_mean(pp["dice_mean"].to_numpy(), None, n_boot=u.bootstrap, level=u.confidence,
                            seed=seed_for(params.seed, "bootstrap", "utility", run.name))[0]
        out.append({"arm": run.arm, "step": int(run.step), "n_real_patients": n, "n_synthetic_images": d["model"]["n_synthetic_images"],
                    "seed": seed, "dice_mean": iv.estimate, "dice_mean_low": iv.low, "dice_mean_high": iv.high,
                    "n_patients": len(pp), "chosen_step": d["model"]["chosen_step"], "stopping": d["model"]["stopping"],
                    "train_wall_time_s": d["model"]["train_wall_time_s"]})
    claims.save_units(paths, "utility_steps", units)
    return pd.DataFrame(out)


def against_segmenter_budget(params: StudyParams, paths: RunPaths, slices: SliceSet, splits: dict, arms=None) -> pd.DataFrame:
    """The segmenter's budget axis: real-only and real + synthetic (every arm) at the fewest real patients (first
    seed), trained for each fraction of ``utility.segmenter_budgets`` of ``utility.segmenter.steps`` (each with its own
    warm-up and decay, chosen on the validation patients) and for the whole budget (the runs of :func:`run_all`,
    loaded). In-domain test mean foreground Dice per patient, and real + synthetic minus real-only at the same
    budget on the same patients, each with its bootstrap interval. One row per (regime, arm, budget) of the two
    regimes in ``utility.regimes`` (the delta needs both); empty without budgets or either regime."""
    u = params.utility
    runs = budget_runs(params, splits, arms)
    if not runs:
        return pd.DataFrame()
    n, seed = n_real_grid(params, splits)[0], u.seeds[0]
    done = _train_and_score_all(params, paths, slices, splits, runs, _split_rows(slices, ["test"]),
                                "utility against segmenter budget")
    dice = {run: per_patient(d["volumes"][0]).set_index("patient")["dice_mean"] for run, d in zip(runs, done)}
    boot = lambda values, what: bootstrap_mean(values, None, n_boot=u.bootstrap, level=u.confidence,
                                               seed=seed_for(params.seed, "bootstrap", "utility", "segmenter budget", what))[0]
    out = []
    for run, d in zip(runs, done):
        iv = boot(dice[run].to_numpy(), run.name)
        row = {"regime": run.regime, "arm": run.arm, "n_real_patients": n, "seed": seed,
               "budget_fraction": 1.0 if run.budget is None else run.budget, "steps": d["model"]["steps"],
               "chosen_step": d["model"]["chosen_step"], "stopping": d["model"]["stopping"],
               "dice_mean": iv.estimate, "dice_mean_low": iv.low, "dice_mean_high": iv.high,
               "delta_vs_real": np.nan, "delta_low": np.nan, "delta_high": np.nan, "n_patients": len(dice[run]),
               "train_wall_time_s": d["model"]["train_wall_time_s"]}
        base = dice.get(Run("real", NO_ARM, n, seed, budget=run.budget))
        if run.regime != "real" and base is not None:
            diff = boot((dice[run] - base.reindex(dice[run].index)).to_numpy(), f"delta {run.name}")
            row.update(delta_vs_real=diff.estimate, delta_low=diff.low, delta_high=diff.high)
        out.append(row)
    return pd.DataFrame(out)


def against_mask_source(params: StudyParams, paths: RunPaths, slices: SliceSet, splits: dict, arms=None) -> pd.DataFrame:
    """The mask-source axis: real + synthetic at the fewest real patients (first seed, the generators of every
    training patient), the synthetic set generated from the stage-1 masks (``stage-1``, as ``generators.mask_filter``
    says) and from each source of ``utility.mask_sources`` (``all``: the unfiltered stage-1 draws; ``oracle``: real
    training masks, stage 2 alone), beside real-only on the same patients. In-domain test mean foreground Dice per
    patient and its difference from real-only, each with its bootstrap interval; one row per (arm, source). Empty
    without sources, or without both regimes in ``utility.regimes``; ``all`` is skipped when the stage-1 masks were
    not filtered (they are the unfiltered draws)."""
    u = params.utility
    runs = mask_source_runs(params, splits, arms)
    if not runs:
        return pd.DataFrame()
    n, seed = n_real_grid(params, splits)[0], u.seeds[0]
    base_run = runs[0]
    done = _train_and_score_all(params, paths, slices, splits, runs, _split_rows(slices, ["test"]), "utility against mask source")
    dice = {run: per_patient(d["volumes"][0]).set_index("patient")["dice_mean"] for run, d in zip(runs, done)}
    boot = lambda values, what: bootstrap_mean(values, None, n_boot=u.bootstrap, level=u.confidence,
                                               seed=seed_for(params.seed, "bootstrap", "utility", "mask source", what))[0]
    out = []
    for run, d in zip(runs[1:], done[1:]):
        iv = boot(dice[run].to_numpy(), run.name)
        diff = boot((dice[run] - dice[base_run].reindex(dice[run].index)).to_numpy(), f"delta {run.name}")
        out.append({"arm": run.arm, "mask_source": run.masks or "stage-1", "n_real_patients": n, "seed": seed,
                    "n_synthetic_images": d["model"]["n_synthetic_images"], "dice_mean": iv.estimate,
                    "dice_mean_low": iv.low, "dice_mean_high": iv.high, "delta_vs_real": diff.estimate,
                    "delta_low": diff.low, "delta_high": diff.high, "n_patients": len(dice[run]),
                    "chosen_step": d["model"]["chosen_step"], "train_wall_time_s": d["model"]["train_wall_time_s"]})
    return pd.DataFrame(out)


def _groups(table: pd.DataFrame):
    return table.groupby(["regime", "arm", "n_real_patients", "eval_set"], sort=False)


def _by_seed(table: pd.DataFrame, col: str, patients: list[str] | None = None) -> pd.DataFrame:
    """(seeds, patients) matrix of ``col`` (patients sorted, or the given ones)."""
    wide = table.pivot_table(index="seed", columns="patient", values=col, aggfunc="mean")
    return wide.reindex(columns=sorted(wide.columns) if patients is None else patients)


def _hierarchical(values: pd.DataFrame, params: StudyParams, what: str) -> tuple[Interval, np.ndarray]:
    """Mean of a (seeds, patients) matrix with its hierarchical bootstrap interval, and the draws."""
    u = params.utility
    estimate, draws = bootstrap_draws(seeded_mean(values.to_numpy(dtype=np.float64)), np.arange(values.shape[1]),
                                      n_seeds=len(values), n_boot=u.bootstrap, seed=seed_for(params.seed, "bootstrap", "utility", what))
    method = f"hierarchical bootstrap over {len(values)} seeds and {values.shape[1]} patients, {u.bootstrap} draws"
    return Interval(estimate, *percentile_bounds(draws, u.confidence), u.confidence, values.shape[1], method), draws


def summary(params: StudyParams, results: Results) -> pd.DataFrame:
    """One row per (regime, arm, n_real_patients, eval set): the keys of :data:`SUMMARY_KEYS` plus HD95 per structure,
    the share of one-sided HD95 values, the delta's interval, the baseline's n, and the seed spread of mean Dice."""
    u = params.utility
    pat, sl = results.patients, results.slices
    chosen = results.models.set_index("run")["chosen_step"]
    full_n = int(pat.loc[pat.regime == "real", "n_real_patients"].max()) if (pat.regime == "real").any() else None
    rows = []
    for (regime, arm, n, eval_set), d in _groups(pat):
        key = f"{regime}/{arm}/{n}/{eval_set}"
        seeds = sorted(d["seed"].unique().tolist())
        dice, _ = _hierarchical(_by_seed(d, "dice_mean"), params, f"patients/{key}")
        hd, _ = _hierarchical(_by_seed(d, "hd95_mean"), params, f"hd95/{key}")
        one_sided = [f"hd95_one_sided_{x}" for x in STRUCTURES]
        means = {c: float(_nanmean(_by_seed(d, c).to_numpy().ravel(), 0)) for c in [*DICE, *HD95, "asd_mean", *one_sided]}
        s = sl[(sl.run.isin(d.run.unique())) & (sl.eval_set == eval_set)]
        ps = s.groupby("row", sort=True)[["dice_reference_protocol"]].mean()
        pat_of_row = s.drop_duplicates("row").set_index("row")["patient"].reindex(ps.index)
        ref = bootstrap_mean(ps[["dice_reference_protocol"]].to_numpy(), pat_of_row.to_numpy(), n_boot=u.bootstrap,
                             level=u.confidence, seed=seed_for(params.seed, "bootstrap", "utility", "slices", key))[0]
        row = {"regime": regime, "arm": arm, "n_real_patients": int(n), "eval_set": eval_set,
               "generators_from": " / ".join(sorted(set(d["generators_from"]))),
               "dice_mean": dice.estimate, "dice_mean_low": dice.low, "dice_mean_high": dice.high,
               **{c: means[c] for c in DICE},
               "hd95_mean": hd.estimate, "hd95_low": hd.low, "hd95_high": hd.high,
               **{c: means[c] for c in HD95}, "asd_mean": means["asd_mean"],
               "hd95_one_sided_share": float(np.mean([means[c] for c in one_sided])),
               "dice_reference_protocol": ref.estimate, "dice_reference_protocol_low": ref.low, "dice_reference_protocol_high": ref.high,
               "delta_vs_real": np.nan, "delta_low": np.nan, "delta_high": np.nan, "p_value": np.nan, "baseline_n": None,
               "n_patients": int(d["patient"].nunique()), "seeds": seeds,
               "chosen_steps": [int(chosen[r]) for r in d.drop_duplicates("seed").sort_values("seed")["run"]],
               "dice_mean_seed_std": mean_and_spread(d.groupby("seed")["dice_mean"].mean())["std"]}
        base_n = None if regime == "real" else (full_n if regime == "synthetic" else int(n))
        base = pat[(pat.regime == "real") & (pat.n_real_patients == base_n) & (pat.eval_set == eval_set) & pat.seed.isin(seeds)]
        if base_n is not None and len(base):
            common = sorted(set(seeds) & set(base["seed"]))
            a = _by_seed(d[d.seed.isin(common)], "dice_mean")
            b = _by_seed(base[base.seed.isin(common)], "dice_mean", list(a.columns))
            diff, draws = _hierarchical(a - b, params, f"delta/{key}")
            test = compare(diff.estimate, draws, params.paper.margins.utility_dice, u.confidence)
            row.update(delta_vs_real=diff.estimate, delta_low=diff.low, delta_high=diff.high, p_value=test.p_difference,
                       baseline_n=base_n)
        rows.append(row)
    table = pd.DataFrame(rows)
    table["p_holm"] = np.nan
    for _, part in table.groupby("eval_set", sort=False):  # one family per evaluation set
        table.loc[part.index, "p_holm"] = holm(part["p_value"].to_numpy(dtype=np.float64))
    sets = list(dict.fromkeys(["test", *sorted(table["eval_set"].unique())]))
    order = [table["regime"].map(REGIMES.index), table["arm"].map([NO_ARM, *registry.names()].index), table["n_real_patients"],
             table["eval_set"].map(sets.index)]
    return table.iloc[np.lexsort(order[::-1])].reset_index(drop=True)


def _join(values: list[int]) -> str:
    return " ".join(map(str, values))


def dice_table(table: pd.DataFrame, column: str = "dice_mean", low: str = "dice_mean_low", high: str = "dice_mean_high") -> pd.DataFrame:
    """Wide view: one row per (regime, arm, n real patients, the patients its generators learned from, chosen step of
    each seed), one column per evaluation set, ``estimate [low, high]``."""
    t = table.assign(cell=[format_interval(r[column], r[low], r[high]) for _, r in table.iterrows()],
                     chosen_step=table["chosen_steps"].map(_join))
    wide = t.pivot_table(index=["regime", "arm", "n_real_patients", "generators_from", "chosen_step"], columns="eval_set", values="cell",
                         aggfunc="first", sort=False)
    return wide[[c for c in t["eval_set"].unique()]]


def delta_table(table: pd.DataFrame) -> pd.DataFrame:
    """Change of mean foreground Dice against real-only, with its interval and the Holm-corrected p-value."""
    t = table[table.regime != "real"].copy()
    t["delta"] = [format_interval(r.delta_vs_real, r.delta_low, r.delta_high) for r in t.itertuples()]
    t["p_holm"] = t["p_holm"].map(lambda p: "n/a" if not np.isfinite(p) else f"{p:.3g}")
    t["chosen_step"] = t["chosen_steps"].map(_join)
    wide = t.pivot_table(index=["regime", "arm", "n_real_patients", "generators_from", "chosen_step", "baseline_n"], columns="eval_set",
                         values=["delta", "p_holm"],
                         aggfunc="first", sort=False)
    return wide


def examples(results: Results, slices: SliceSet) -> list[dict]:
    """Per (regime, arm), on the real test slices, with the largest n real patients and the first seed: the slice of
    highest mean foreground Dice (a success) and of lowest (a failure)."""
    out = []
    s = results.slices[results.slices.eval_set == "test"]
    runs = results.models.sort_values(["n_real_patients", "seed"], ascending=[False, True]).drop_duplicates(["regime", "arm"])
    runs = runs.assign(order=runs["regime"].map(REGIMES.index)).sort_values(["order", "arm"])
    position = {int(row): i for i, row in enumerate(results.test_rows)}
    for r in runs.itertuples():
        d = s[s.run == r.run].dropna(subset=["slice_dice_mean"])
        for kind, row in (("success", d.loc[d.slice_dice_mean.idxmax()]), ("failure", d.loc[d.slice_dice_mean.idxmin()])):
            i = int(row["row"])
            label = f"{r.regime}" + ("" if r.arm == NO_ARM else f" {r.arm}") + f", n={r.n_real_patients}"
            out.append({"label": label, "kind": kind, "image": slices.images[i], "mask": slices.masks[i],
                        "pred": results.test_predictions[r.run][position[i]], "dice": float(row["slice_dice_mean"]),
                        "patient": row["patient"], "phase": row["phase"], "slice_index": int(row["slice_index"])})
    return out


def save(params: StudyParams, paths: RunPaths, results: Results, table: pd.DataFrame, budgets: pd.DataFrame | None = None,
         segmenter_budgets: pd.DataFrame | None = None, mask_sources: pd.DataFrame | None = None) -> Path:
    """Write ``metrics/utility.json`` (``summary``: one record per regime, arm, n real patients and evaluation set with
    the keys of :data:`SUMMARY_KEYS` and more; ``models``: every run with its train wall time and chosen step;
    ``per_patient``; the compute axis and the segmenter's budget axis) and the tables ``utility_summary``,
    ``utility_dice``, ``utility_dice_reference_protocol``, ``utility_hd95``, ``utility_delta``, ``utility_models``,
    ``utility_per_patient``, ``utility_against_training_step``, ``utility_against_segmenter_budget`` and
    ``utility_against_mask_source`` (CSV, Markdown, LaTeX)."""
    report.save_table(table.assign(seeds=table["seeds"].map(_join), chosen_steps=table["chosen_steps"].map(_join)),
                      paths.tables, "utility_summary", index=False)
    report.save_table(dice_table(table), paths.tables, "utility_dice")
    report.save_table(dice_table(table, "dice_reference_protocol", "dice_reference_protocol_low", "dice_reference_protocol_high"),
                      paths.tables, "utility_dice_reference_protocol")
    report.save_table(dice_table(table, "hd95_mean", "hd95_low", "hd95_high"), paths.tables, "utility_hd95")
    if (table.regime != "real").any():
        report.save_table(delta_table(table), paths.tables, "utility_delta")
    report.save_table(results.models, paths.tables, "utility_models", index=False)
    report.save_table(results.patients, paths.tables, "utility_per_patient", index=False)
    budgets = pd.DataFrame() if budgets is None else budgets
    if len(budgets):
        report.save_table(budgets, paths.tables, "utility_against_training_step", index=False)
    segmenter_budgets = pd.DataFrame() if segmenter_budgets is None else segmenter_budgets
    if len(segmenter_budgets):
        report.save_table(segmenter_budgets, paths.tables, "utility_against_segmenter_budget", index=False)
    mask_sources = pd.DataFrame() if mask_sources is None else mask_sources
    if len(mask_sources):
        report.save_table(mask_sources, paths.tables, "utility_against_mask_source", index=False)
    u = params.utility
    record = {
        "summary": table.to_dict(orient="records"),
        "definitions": {
            "dice": "per structure (LV, MYO, RV), background excluded, of each 3D volume (a patient's slices of one phase "
                    "stacked); a patient's value is the mean of its ED and ES volumes; dice_mean over structures",
            "hd95": f"95th percentile of the symmetric surface distance in mm per structure and volume, in 3D where the data "
                    f"give the through-plane spacing, else per 2D slice (pixel spacing {pixel_spacing_mm(params):.4g} mm) and "
                    "averaged over the volume's slices; a structure absent from either side has none (NaN, nnU-Net's "
                    "evaluation; share of such one-sided cases in hd95_one_sided_share); asd_mean: the mean symmetric surface "
                    "distance, the same way",
            "dice_reference_protocol": "the reference study's per-slice Dice over the four classes, background included, "
                                       "mean over slices",
            "intervals": f"{u.confidence:.0%} percentile hierarchical bootstrap ({u.bootstrap} draws): seeds resampled, "
                         "then patients; dice_mean_seed_std: the standard deviation of the per-seed means",
            "delta_vs_real": "mean over patients of (regime - real-only) mean foreground Dice, same patients and seeds; "
                             "real-only at the same n real patients, or with all (baseline_n) for synthetic-only",
            "p_value": "bootstrap p-value of a zero delta_vs_real (the same hierarchical draws as its interval); p_holm: "
                       "Holm-corrected within each evaluation set",
            "chosen_step": "the step of the evaluated checkpoint: the best of the segmenter's validation checks (mean "
                           "foreground Dice of the validation patients), else the last step; chosen_steps per seed",
        },
        "segmenter": {**params.utility.segmenter.model_dump(), "weights": "ema", "synthetic_ratio": u.synthetic_ratio,
                      "chosen_on": "val" if results.validation else "last step (no validation patients)"},
        "pixel_spacing_mm": pixel_spacing_mm(params),
        "models": results.models.to_dict(orient="records"),
        "total_train_wall_time_s": float(results.models["train_wall_time_s"].sum()),
        "per_patient": results.patients.to_dict(orient="records"),
        "against_training_step": budgets.to_dict(orient="records"),
        "against_segmenter_budget": segmenter_budgets.to_dict(orient="records"),
        "against_mask_source": mask_sources.to_dict(orient="records"),
    }
    return write_json(paths.metrics / "utility.json", record)


__all__ = ["STAGE", "REGIMES", "STRUCTURES", "SUMMARY_KEYS", "Run", "TrainingSet", "Results", "n_real_grid", "plan",
           "step_runs", "budget_runs", "mask_source_runs", "all_runs", "train_all", "real_patients", "training_set",
           "build_segmenter", "train_config", "train_run", "pixel_spacing_mm", "eval_sets",
           "score_slices", "score_volumes", "per_patient", "run_all", "against_training_step",
           "against_segmenter_budget", "against_mask_source", "summary", "dice_table", "delta_table", "examples", "save"]
