"""The fidelity axis: what the notebook ``30_fidelity`` calls (definitions: ``docs/protocol.md#fidelity``).

Reads ``data/``, ``samples/<arm>/paired*.npz``, ``samples/<arm>/synthetic.npz`` and the arms' checkpoints. Writes
``checkpoints/reference_segmenter/`` (the reference segmenter, trained once per run on the real training patients
only), ``metrics/fidelity.json`` (every number, with the feature space, sample counts and intervals) and the tables
``tables/fidelity_*``.

Sets compared (rows of the tables):

- each arm: its *synthetic* set (images from stage-1 masks) against the real *test* images for the distribution
  metrics (held-out real images, so copying training patients is not rewarded), and its *paired* set (an image from
  each real test mask) against the real test image for the paired metrics and mask faithfulness;
- ``real``: the real training images against the real test images, the floor an ideal generator would reach with
  these sample sizes; for mask faithfulness, the reference segmenter on the real test images (the ceiling);
- ``mean image``: the pixel-wise mean of the real training images given for every test mask, the constant-image
  baseline of the paired metrics (they reward blur, so a generator must beat it).

Intervals: paired metrics and mask faithfulness by a percentile bootstrap over test patients
(:func:`cmrlib.stats.bootstrap_mean`); FID and KID by a bias-corrected bootstrap over the real set's patients and the
generated images (:func:`cmrlib.stats.bootstrap_two_sample`, ``fidelity.distance_bootstrap`` draws), KID's estimate
the mean over random subsets smaller than either set; diversity by a bootstrap over image pairs; precision, recall,
density and coverage are point values. Where the features outnumber the images of a set, its covariance is singular
and FID unreliable: a warning is raised and the row's interval text says so.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import claims, generation, metrics, registry, report, segmenters, training
from .data import anatomy
from .data.records import SliceSet
from .jsonio import write_json
from .labels import FOREGROUND
from .models import SegmentationModel
from .params import StudyParams
from .paths import RunPaths
from .seeds import seed_for
from .stats import bootstrap_mean, bootstrap_two_sample, format_interval

STAGE = "30_fidelity"
STRUCTURES = list(FOREGROUND.values())  # LV, MYO, RV
DICE = [f"dice_{s}" for s in STRUCTURES]
METRICS = ["fid", "fid_paired", "kid", "precision", "recall", "density", "coverage", "psnr", "ssim", "ms_ssim", "lpips",
           *DICE, "dice_mean", "diversity_ms_ssim"]
LOWER_IS_BETTER = {"fid", "fid_paired", "kid", "diversity_ms_ssim"}


def _with_mean(dice: np.ndarray) -> np.ndarray:
    """Append the per-slice mean over the structures present (NaN when none is)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice": no structure present
        mean = np.nanmean(dice, 1)
    return np.column_stack([dice, mean])


# -- the evaluation ------------------------------------------------------------------------------------------------
@dataclass
class Reference:
    """The real test set and what every arm is compared with (built once by :func:`reference`)."""

    images: np.ndarray
    masks: np.ndarray
    rows: np.ndarray
    patients: np.ndarray
    features: np.ndarray  # the real test images in the chosen feature space
    seg_features: np.ndarray  # ... and in the seg space (steps and checkpoint curves)
    train_images: np.ndarray
    train_masks: np.ndarray  # the real range of the masks' anatomical check
    train_patients: np.ndarray
    space: metrics.FeatureSpace
    seg_space: metrics.FeatureSpace
    counts: dict = field(default_factory=dict)


def feature_space(params: StudyParams, segmenter: SegmentationModel) -> metrics.FeatureSpace:
    """The feature space named by ``fidelity.feature_space``."""
    f = params.fidelity
    return metrics.feature_space(f.feature_space, segmenter=segmenter, inception_weights=f.inception_weights)


def reference(params: StudyParams, slices: SliceSet, segmenter: SegmentationModel, space: metrics.FeatureSpace | None = None) -> Reference:
    rows = np.flatnonzero(slices.meta["split"].to_numpy() == "test")
    seg_space = metrics.seg_features(segmenter)
    space = space or feature_space(params, segmenter)
    images = slices.images[rows]
    seg_feats = seg_space(images)
    feats = seg_feats if space.name == "seg" else space(images)
    train = slices.split("train")
    return Reference(images=images, masks=slices.masks[rows], rows=rows, patients=slices.meta["patient"].to_numpy()[rows],
                     features=feats, seg_features=seg_feats, train_images=train.images, train_masks=train.masks,
                     train_patients=train.meta["patient"].to_numpy(), space=space, seg_space=seg_space,
                     counts={"test_slices": len(rows), "test_patients": int(len(set(slices.meta["patient"].to_numpy()[rows]))),
                             "train_slices": len(train), "train_patients": int(train.meta["patient"].nunique())})


def _row(set_name: str, metric: str, estimate: float, low: float = math.nan, high: float = math.nan, interval: str = "",
         n: int | None = None) -> dict:
    return {"set": set_name, "metric": metric, "estimate": float(estimate), "low": float(low), "high": float(high),
            "interval": interval, "n": n}


def _boot_rows(set_name: str, names: list[str], values: np.ndarray, groups, params: StudyParams, seed_name: str, what: str) -> list[dict]:
    f = params.fidelity
    intervals = bootstrap_mean(values, groups, n_boot=f.bootstrap, level=f.confidence, seed=seed_for(params.seed, "bootstrap", seed_name))
    return [_row(set_name, name, iv.estimate, iv.low, iv.high, f"{iv.level:.0%} bootstrap over {iv.n_groups} {what}, {f.bootstrap} draws", len(values))
            for name, iv in zip(names, intervals)]


def distribution_rows(set_name: str, real: np.ndarray, fake: np.ndarray, params: StudyParams, real_groups: np.ndarray,
                      fake_groups: np.ndarray | None = None) -> list[dict]:
    """FID and KID with bootstrap intervals over ``real_groups`` (patients) and ``fake_groups`` (None: each generated
    image its own), and precision / recall / density / coverage of ``fake`` against ``real``."""
    f = params.fidelity
    fake_groups = np.arange(len(fake)) if fake_groups is None else fake_groups
    k = metrics.kid(real, fake, n_subsets=f.kid_subsets, subset_size=f.kid_subset_size, seed=seed_for(params.seed, "kid", set_name))
    note = ""
    if real.shape[1] >= min(len(real), len(fake)):
        note = f"; {real.shape[1]} features for {min(len(real), len(fake))} images: singular covariance, FID unreliable"
        warnings.warn(f"fidelity set {set_name}: {note[2:]} (use more images, or a feature space of fewer dimensions)", stacklevel=2)
    out = []
    for name, statistic, estimate in (("fid", lambda r, g: metrics.fid(real[r], fake[g]), None),
                                      ("kid", lambda r, g: metrics.mmd2(real[r], fake[g]), k["mean"])):
        iv = bootstrap_two_sample(statistic, real_groups, fake_groups, n_boot=f.distance_bootstrap, level=f.confidence,
                                  seed=seed_for(params.seed, "bootstrap", name, set_name))
        text = f"{iv.level:.0%} {iv.method}" + (f"; estimate: mean over {k['n_subsets']} subsets of {k['subset_size']}" if name == "kid" else "")
        shift = 0.0 if estimate is None else estimate - iv.estimate  # KID: the interval around the subsets' mean
        out.append(_row(set_name, name, iv.estimate + shift, iv.low + shift, iv.high + shift, text + note, len(fake)))
    if min(len(real), len(fake)) > f.k_nearest:
        out += [_row(set_name, name, value, n=len(fake)) for name, value in metrics.prdc(real, fake, k=f.k_nearest).items()]
    return out


def _diversity_rows(set_name: str, images: np.ndarray, params: StudyParams) -> list[dict]:
    f = params.fidelity
    values = metrics.diversity(images, f.diversity_pairs, seed_for(params.seed, "diversity", set_name), f.kernel_size)
    return _boot_rows(set_name, ["diversity_ms_ssim"], values, None, params, f"diversity/{set_name}", "image pairs")


def evaluate_arm(params: StudyParams, paths: RunPaths, arm: str, ref: Reference, segmenter: SegmentationModel,
                 step: int | None = None, units: list | None = None) -> list[dict]:
    """Every metric of one arm (long form: set, metric, estimate, low, high, interval, n); with ``step``, of its kept
    checkpoint at that step (set ``<arm>@<step>``: its paired set and its synthetic subset). ``units``: a list to
    which the per-slice mask faithfulness is appended (:func:`cmrlib.claims.units_frame`)."""
    f = params.fidelity
    name = arm if step is None else f"{arm}@{step}"
    paired = generation.load_samples(paths, arm, "paired" if step is None else f"paired_step{step}")
    synthetic = generation.load_samples(paths, arm, "synthetic") if step is None else generation.synthetic_by_step(params, paths, arm)[step]
    order = _align(paired["rows"], ref.rows)
    real, masks, patients = ref.images[order], ref.masks[order], ref.patients[order]
    images = paired["images"]
    out = distribution_rows(name, ref.features, ref.space(synthetic["images"]), params, ref.patients)
    out.append(_row(name, "fid_paired", metrics.fid(ref.features, ref.space(images)), n=len(images)))
    values = metrics.paired_metrics(images, real, f.kernel_size)
    out += _boot_rows(name, list(values), np.column_stack(list(values.values())), patients, params, f"paired/{name}", "test patients")
    out.append(_row(name, "lpips", math.nan, interval=metrics.lpips_status() or "", n=len(images)))
    dice = _with_mean(segmenters.mask_faithfulness(segmenter, images, masks))
    out += _boot_rows(name, DICE + ["dice_mean"], dice, patients, params, f"dice/{name}", "test patients")
    out += _diversity_rows(name, synthetic["images"], params)
    if units is not None:
        units.append(claims.units_frame("mask_dice", arm, 1.0 if step is None else claims.fraction(params, arm, step), 0,
                                        patients, paired["rows"], dice[:, -1]))
    return out


def _align(sample_rows: np.ndarray, ref_rows: np.ndarray) -> np.ndarray:
    """Positions in the reference test set of each paired sample's row of ``data/metadata.csv``."""
    where = {int(r): i for i, r in enumerate(ref_rows)}
    missing = [int(r) for r in sample_rows if int(r) not in where]
    if missing:
        raise ValueError(f"paired samples name rows {missing[:5]} that are not test slices of this run's data: were they "
                         "generated from another data preparation? Re-run the generator notebooks.")
    return np.array([where[int(r)] for r in sample_rows])


def evaluate_references(params: StudyParams, ref: Reference, segmenter: SegmentationModel) -> list[dict]:
    """The ``real`` rows (real train against real test; the segmenter on real test images) and the ``mean image``
    baseline rows of the paired metrics."""
    f = params.fidelity
    out = distribution_rows("real", ref.features, ref.space(ref.train_images), params, ref.patients, ref.train_patients)
    dice = _with_mean(segmenters.mask_faithfulness(segmenter, ref.images, ref.masks))
    out += _boot_rows("real", DICE + ["dice_mean"], dice, ref.patients, params, "dice/real", "test patients")
    out += _diversity_rows("real", ref.images, params)
    constant = np.broadcast_to(metrics.mean_image(ref.train_images), ref.images.shape)
    values = metrics.paired_metrics(constant, ref.images, f.kernel_size)
    out += _boot_rows("mean image", list(values), np.column_stack(list(values.values())), ref.patients, params, "paired/mean", "test patients")
    return out


def evaluate(params: StudyParams, paths: RunPaths, ref: Reference, segmenter: SegmentationModel, arms=None,
             degraded: bool = True) -> pd.DataFrame:
    """Every metric of every arm (default: every registered one), then (``degraded``) of each arm's earliest kept
    checkpoint (``<arm>@<step>``, the under-trained control every metric should rank below), then the ``real`` and
    ``mean image`` reference rows. The final models' per-slice mask faithfulness, every generator seed's, goes to
    ``metrics/units/fidelity.csv`` (:mod:`cmrlib.claims`); the tables describe the first seed."""
    arms = registry.names() if arms is None else arms
    rows, units = [], []
    for arm in arms:
        rows += evaluate_arm(params, paths, arm, ref, segmenter, units=units)
        for replica in generation.seed_replicas(params)[1:]:  # the other generator seeds: the claims' seed variance
            paired = generation.load_samples(paths, replica.folder(arm), "paired")
            order = _align(paired["rows"], ref.rows)
            dice = _with_mean(segmenters.mask_faithfulness(segmenter, paired["images"], ref.masks[order]))
            units.append(claims.units_frame("mask_dice", arm, 1.0, replica.seed, ref.patients[order], paired["rows"], dice[:, -1]))
    claims.save_units(paths, "fidelity", units)
    for arm in arms if degraded else ():
        kept = sorted(training.kept_checkpoints(paths.checkpoints / arm))
        if len(kept) > 1 and (paths.samples / arm / f"paired_step{kept[0]}.npz").exists():
            rows += evaluate_arm(params, paths, arm, ref, segmenter, step=kept[0])
    rows += evaluate_references(params, ref, segmenter)
    table = pd.DataFrame(rows)
    table["feature_space"] = np.where(table["metric"].isin(["fid", "fid_paired", "kid", "precision", "recall", "density", "coverage"]),
                                      ref.space.description, "")
    return table


MASK_SOURCES = {"stage-1": "synthetic", "all": "synthetic_all", "oracle": "synthetic_oracle"}  # source -> samples file


def mask_sources(params: StudyParams, paths: RunPaths, ref: Reference, segmenter: SegmentationModel, arms=None) -> pd.DataFrame:
    """Stage 2 alone beside the two-stage pipeline: per arm and mask source (``stage-1``: the masks of
    ``generators.mask_filter`` that condition the synthetic set; ``all``: the unfiltered stage-1 draws; ``oracle``:
    real training masks), the set's FID and KID against the real test images (intervals as the main table's), its
    mask faithfulness (the reference segmenter's Dice against the conditioning masks, bootstrap over images) and the
    share of its masks that are anatomically valid (:func:`cmrlib.data.anatomy.check_masks`, areas against the real
    training masks). Long form, as :func:`evaluate`; a source whose set was not generated is left out."""
    rows = []
    for arm in registry.names() if arms is None else arms:
        for source, file in MASK_SOURCES.items():
            if not (paths.samples / arm / f"{file}.npz").exists():
                continue
            sample = generation.load_samples(paths, arm, file)
            name = f"{arm} ({source} masks)"
            out = [r for r in distribution_rows(name, ref.features, ref.space(sample["images"]), params, ref.patients)
                   if r["metric"] in ("fid", "kid")]
            dice = _with_mean(segmenters.mask_faithfulness(segmenter, sample["images"], sample["masks"]))
            out += _boot_rows(name, DICE + ["dice_mean"], dice, None, params, f"dice/{name}", "images")
            valid = anatomy.check_masks(sample["masks"], ref.train_masks)["valid"]
            out.append(_row(name, "valid_masks", valid.mean(), n=len(valid)))
            rows += [r | {"arm": arm, "mask_source": source} for r in out]
    return pd.DataFrame(rows)


def mask_source_table(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`mask_sources` wide: one row per (arm, source), the estimates with their intervals."""
    if table.empty:
        return table
    cells = table.assign(cell=[format_interval(e, lo, hi) for e, lo, hi in zip(table.estimate, table.low, table.high)])
    wide = cells.pivot_table(index=["arm", "mask_source"], columns="metric", values="cell", aggfunc="first", sort=False)
    return wide[[c for c in ("valid_masks", "dice_mean", "fid", "kid") if c in wide]]


def summary(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Wide view: one row per metric, one column per set, ``estimate [low, high]`` where there is an interval."""
    cells = [format_interval(r.estimate, r.low, r.high, digits) for r in table.itertuples()]
    wide = table.assign(cell=cells).pivot(index="metric", columns="set", values="cell")
    order = [m for m in METRICS if m in wide.index]
    sets = [s for s in table["set"].unique()]
    return wide.loc[order, sets].fillna("")


def dice_table(table: pd.DataFrame) -> pd.DataFrame:
    """Mask faithfulness per structure (long: set, structure, estimate, low, high)."""
    d = table[table["metric"].isin(DICE)].copy()
    d["structure"] = d["metric"].str.removeprefix("dice_")
    return d[["set", "structure", "estimate", "low", "high", "n"]].reset_index(drop=True)


# -- steps against quality; quality against training step ----------------------------------------------------------
def _subset(params: StudyParams, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed_for(params.seed, "fidelity", "steps_subset"))
    return np.sort(rng.choice(n, size=min(params.fidelity.steps_n_images, n), replace=False))


def _quality(ref: Reference, images: np.ndarray, dice: np.ndarray) -> dict:
    """FID (seg space) of ``images`` and the means of ``dice`` (per image: each structure, then their mean)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(dice, 0)
    return {"fid_seg": metrics.fid(ref.seg_features, ref.seg_space(images)), **dict(zip(DICE + ["dice_mean"], means.tolist()))}


def sampling_grid(params: StudyParams, arm: str) -> list:
    """The sampling settings of the steps curve: the arm's sampler at each of ``fidelity.steps_grid``, then its
    1000-step reference (:meth:`cmrlib.registry.Arm.reference_sampling`) when ``fidelity.reference_sampling``."""
    spec = registry.get(arm)
    sample = spec.params(params).sample
    grid = [sample.model_copy(update={"steps": s}) for s in params.fidelity.steps_grid]
    if params.fidelity.reference_sampling:
        grid.append(spec.reference_sampling(params))
    return grid


def steps_against_quality(params: StudyParams, paths: RunPaths, ref: Reference, segmenter: SegmentationModel, arms=None) -> pd.DataFrame:
    """For each arm (final weights) and sampling setting: FID (seg space, against all real test images), mask
    faithfulness of ``fidelity.steps_n_images`` test masks regenerated with that setting (mean Dice with its bootstrap
    interval over their patients), and seconds per image. Every setting of an arm starts from the same noise.

    With ``fidelity.reference_sampling`` the last setting of each arm is its 1000-step reference (``reference``
    true), and each setting gets ``dice_vs_reference``: its mean Dice minus the reference's on the same masks, with a
    paired bootstrap interval over patients; ``reaches_reference`` when that interval reaches 0 or above (the setting
    is not measurably worse than the reference)."""
    arms = registry.names() if arms is None else arms
    idx = _subset(params, len(ref.masks))
    masks, patients = ref.masks[idx], ref.patients[idx]
    f = params.fidelity
    rows = []
    for arm in arms:
        model, ckpt = generation.load_arm(params, paths, arm)
        grid = sampling_grid(params, arm)
        dice = []
        for sampling in grid:
            seed = seed_for(params.seed, "fidelity", "steps", arm)
            start = time.perf_counter()
            images = generation.generate(model, masks, sampling, seed, desc=f"{arm} {sampling.sampler} {sampling.steps} steps")
            seconds = time.perf_counter() - start
            per_image = _with_mean(segmenters.mask_faithfulness(segmenter, images, masks))
            dice.append(per_image[:, -1])
            interval = _boot_rows(arm, ["dice_mean"], dice[-1], patients, params,
                                  f"steps/{arm}/{sampling.sampler}/{sampling.steps}", "test patients")[0]
            rows.append({"arm": arm, "sampler": sampling.sampler, "steps": sampling.steps, "weights": ckpt["weights"],
                         "checkpoint_step": ckpt["step"], "n": len(images), "seconds_per_image": seconds / len(images),
                         **_quality(ref, images, per_image), "dice_mean_low": interval["low"],
                         "dice_mean_high": interval["high"]})
        if f.reference_sampling:
            for row, d in zip(rows[-len(grid):], dice):
                diff = _boot_rows(arm, ["dice_vs_reference"], d - dice[-1], patients, params,
                                  f"steps/{arm}/vs_reference/{row['sampler']}/{row['steps']}", "test patients")[0]
                row.update(reference=row is rows[-1], dice_vs_reference=diff["estimate"],
                           dice_vs_reference_low=diff["low"], dice_vs_reference_high=diff["high"],
                           reaches_reference=bool(diff["high"] >= 0))
    return pd.DataFrame(rows)


def quality_against_training_step(params: StudyParams, paths: RunPaths, ref: Reference, segmenter: SegmentationModel, arms=None) -> pd.DataFrame:
    """FID (seg space) and mask faithfulness (with its bootstrap interval over test patients) of the paired set of every
    kept checkpoint (``paired_step<N>.npz``), with the training wall time the checkpoint had cost. The per-slice mask
    faithfulness of every checkpoint before the last goes to ``metrics/units/fidelity_steps.csv``."""
    arms = registry.names() if arms is None else arms
    rows, units = [], []
    for arm in arms:
        table = generation.samples_table(paths, arm).set_index("file")
        files = sorted((paths.samples / arm).glob("paired_step*.npz"), key=lambda p: int(p.stem.removeprefix("paired_step")))
        for path in files:
            with np.load(path) as npz:
                images, sample_rows = npz["images"], npz["rows"]
            order = _align(sample_rows, ref.rows)
            per_image = _with_mean(segmenters.mask_faithfulness(segmenter, images, ref.masks[order]))
            interval = _boot_rows(arm, ["dice_mean"], per_image[:, -1], ref.patients[order], params, f"checkpoint/{arm}/{path.stem}", "test patients")[0]
            step = int(path.stem.removeprefix("paired_step"))
            if claims.fraction(params, arm, step) < 1:
                units.append(claims.units_frame("mask_dice", arm, claims.fraction(params, arm, step), 0, ref.patients[order],
                                                sample_rows, per_image[:, -1]))
            rows.append({"arm": arm, "step": step, "n": len(images),
                         "train_elapsed_s": float(table.loc[path.name, "train_elapsed_s"]),
                         **_quality(ref, images, per_image),
                         "dice_mean_low": interval["low"], "dice_mean_high": interval["high"]})
    claims.save_units(paths, "fidelity_steps", units)
    return pd.DataFrame(rows)


def stage1_record(params: StudyParams, paths: RunPaths, ref: Reference) -> dict:
    """How valid the masks that condition the synthetic sets are, beside the real training masks, and what the
    filter cost (``generators.mask_filter``; the primary replica's stage-1 masks); empty without them."""
    if not (paths.samples / generation.MASK_PRIOR / "masks.npz").exists():
        return {}
    row = generation.samples_table(paths, generation.MASK_PRIOR).iloc[-1]
    sets = generation.mask_sets(paths)
    valid = lambda masks: float(anatomy.check_masks(masks, ref.train_masks)["valid"].mean())
    return {"mask_filter": params.generators.mask_filter, "real_valid": valid(ref.train_masks),
            "conditioning_valid": valid(sets["conditioning"]), "drawn_valid": valid(sets["drawn"]),
            "drawn": int(row.get("drawn", len(sets["drawn"]))), "accepted": int(row.get("accepted", -1)),
            "n": len(sets["conditioning"])}


# -- writing -------------------------------------------------------------------------------------------------------
def save(params: StudyParams, paths: RunPaths, ref: Reference, table: pd.DataFrame, steps: pd.DataFrame,
         checkpoints: pd.DataFrame, segmenter_result: training.TrainResult | None = None,
         sources: pd.DataFrame | None = None) -> Path:
    """Write ``metrics/fidelity.json`` and the tables ``fidelity_metrics`` (long), ``fidelity_summary`` (wide),
    ``fidelity_dice``, ``fidelity_steps``, ``fidelity_checkpoints`` and, given ``sources`` (:func:`mask_sources`),
    ``fidelity_mask_sources`` (CSV, Markdown, LaTeX)."""
    report.save_table(table, paths.tables, "fidelity_metrics", index=False)
    if sources is not None:
        report.save_table(mask_source_table(sources), paths.tables, "fidelity_mask_sources")
    report.save_table(summary(table), paths.tables, "fidelity_summary")
    report.save_table(dice_table(table), paths.tables, "fidelity_dice", index=False)
    report.save_table(steps, paths.tables, "fidelity_steps", index=False)
    report.save_table(checkpoints, paths.tables, "fidelity_checkpoints", index=False)
    counts = dict(ref.counts)
    for arm in table["set"].unique():
        if arm in registry.names():
            counts[f"{arm}_paired"] = int(table[(table.set == arm) & (table.metric == "psnr")]["n"].iloc[0])
            counts[f"{arm}_synthetic"] = int(table[(table.set == arm) & (table.metric == "fid")]["n"].iloc[0])
    f = params.fidelity
    record = {
        "feature_space": {"name": ref.space.name, "description": ref.space.description, "dim": int(ref.features.shape[1])},
        "steps_and_checkpoints_feature_space": {"name": "seg", "description": ref.seg_space.description},
        "counts": counts,
        "real_reference": "distribution metrics: synthetic set (arms) or real training images (real) against the real test images",
        "paired": {"data_range": metrics.DATA_RANGE, "ssim_kernel": f.kernel_size, "ms_ssim": metrics.ms_ssim_config(ref.images.shape[-1], f.kernel_size),
                   "psnr": "MONAI PSNRMetric; +inf for identical images (not capped)", "lpips": metrics.lpips_status() or "available",
                   "baseline": "mean image: pixel-wise mean of the real training images, given for every test mask"},
        "segmenter": {**f.segmenter.model_dump(), "trained_on": "real training patients (split train)", "weights": "ema",
                      **({} if segmenter_result is None else {
                          "chosen_step": segmenter_result.chosen_step, "val_dice": segmenter_result.best_score,
                          "stopping": segmenters.stopping(segmenter_result),
                          "train_wall_time_s": round(segmenter_result.wall_time_s, 1)})},
        "metrics": table.to_dict(orient="records"),
        "steps_against_quality": steps.to_dict(orient="records"),
        "quality_against_training_step": checkpoints.to_dict(orient="records"),
        "mask_sources": [] if sources is None else sources.to_dict(orient="records"),
        "stage1_masks": stage1_record(params, paths, ref),
    }
    return write_json(paths.metrics / "fidelity.json", record)


__all__ = ["STAGE", "METRICS", "STRUCTURES", "Reference", "feature_space", "reference", "distribution_rows", "evaluate_arm", "evaluate_references",
           "evaluate", "mask_sources", "mask_source_table", "MASK_SOURCES", "summary", "dice_table", "sampling_grid", "steps_against_quality", "quality_against_training_step", "save"]
