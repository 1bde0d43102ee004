"""The privacy axis: what the notebook ``50_privacy`` calls (definitions: ``docs/protocol.md#privacy``).

Reads ``data/``, ``splits.json``, ``samples/<arm>/synthetic.npz``, ``samples/mask_prior/masks.npz``, the arms'
checkpoints and ``checkpoints/reference_segmenter/`` (trained here when notebook 30 has not). Writes
``metrics/privacy.json`` and the tables ``tables/privacy_*``.

What is measured (metrics in :mod:`cmrlib.metrics.privacy`):

- **memorisation** of each arm's synthetic set against the real training images (the members): exact nearest
  neighbour by pixel L2 (with the nearest/second-nearest ratio), by maximum Pearson correlation, and by L2 in the
  ``seg`` feature space; the share of samples flagged as copies (ratio < ``copy_ratio`` or correlation >
  ``copy_correlation``; LPIPS < ``copy_lpips`` only when LPIPS weights exist, otherwise reported as unavailable).
  The real holdout images go through the same analysis as the ``real unseen`` row: the flag rate of genuinely unseen
  patients of the same vendors, the floor a generator cannot be blamed for;
- **distance to closest record** (DCR): each synthetic image's L2 distance to its nearest training image against the
  same distance of the real holdout images; the DCR score P(DCR_syn < DCR_holdout) is 0.5 when the generator is no
  closer to its training patients than unseen patients are, 1 when it copies them;
- **membership inference** against each arm's own model: members are the training slices, non-members the holdout
  slices (same vendors, other patients), each conditioned on its own mask; the score is the model's denoising (DDPM,
  in latent space for the LDM) or velocity (FM) error at every ``mia_snr`` (the same SNR grid for every arm),
  averaged over ``mia_draws`` fixed-seed noise draws. Attacks: loss threshold per level and aggregated (mean log
  error), and a calibrated attack (logistic regression on the per-level log errors, cross-fitted over patients);
- the **reference protocol** of the reference study: the same attacks with cross-domain slices as non-members (a
  seeded choice of as many cross-domain patients as there are holdout patients, so both protocols have the same
  sample sizes), on every cross-domain set of the run (one row each in the table; the summary and the figure read
  the primary one, ``privacy.reference_protocol_domain``, and a set of fewer than 2 patients is skipped with the
  reason), and a
  **domain-shift control**: holdout slices (never trained on) against the same cross-domain slices. Both sets of
  that control are non-members, so its AUC is pure domain shift: where the reference protocol's AUC exceeds ours by
  about that much, it measured the vendor, not membership;
- the **compute axis** (:func:`against_training_step`): our membership AUC and the copy share at every kept
  checkpoint (the copy share on the checkpoint's ``generators.n_synthetic_per_checkpoint`` synthetic images);
- **stage-1 masks** against the training masks: Dice to the nearest training mask, share above ``mask_copy_dice``,
  with the holdout masks as the unseen-patient reference.

Intervals: percentile bootstrap over patients (``privacy.bootstrap`` draws at ``privacy.confidence``), stratified by
class for AUCs (members and non-members resampled separately) and the DCR score (synthetic samples, each its own
group, and holdout patients); copy shares of synthetic sets resample samples. The calibrated attack's scores are
refitted in every bootstrap draw (on that draw's patients, cross-fitted again), so its interval includes the
variance of fitting it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import claims, generation, metrics, registry, report
from .data.records import SliceSet
from .data.splits import in_cross_order
from .jsonio import write_json
from .metrics import privacy as mp
from .params import StudyParams
from .paths import RunPaths
from .seeds import seed_for
from .stats import Interval, bootstrap_mean, bootstrap_statistic

STAGE = "50_privacy"
UNSEEN = "real unseen (holdout)"
PROTOCOLS = {  # name -> (positive set, negative set, what it measures)
    "ours": ("train", "holdout", "members vs held-out patients of the same vendors: membership"),
    "reference": ("train", "cross", "members vs another vendor (the reference study): membership plus domain shift"),
    "domain shift": ("holdout", "cross", "two non-member sets, same vendors vs another vendor: domain shift only"),
}
ATTACKS = ("loss", "calibrated")
FPR = 0.01
NO_CROSS = ("not applicable: the run has no cross-domain set (data.cross_domains is empty, or the data have no domain "
            "besides the training ones), so the reference protocol's non-members do not exist")


MIN_PATIENTS = 2  # per class: the calibrated attack deals each class's patients to 2 folds


# -- the real sets ---------------------------------------------------------------------------------------------------
def reference_split(params: StudyParams, slices: SliceSet) -> str | None:
    """The primary cross-domain split, whose slices are the reference protocol's non-members in the summary: the one
    ``privacy.reference_protocol_domain`` names, else the first with enough patients to attack (else the first); None
    when the run has none (the protocols that need one are then not applicable, :func:`protocol_status`)."""
    cross = in_cross_order(slices.meta["split"], params.data.cross_domains)
    wanted = params.privacy.reference_protocol_domain
    if wanted is None:
        patients = slices.meta.groupby("split")["patient"].nunique()
        return next((c for c in cross if patients[c] >= MIN_PATIENTS), cross[0] if cross else None)
    if f"cross_{wanted}" not in cross:
        raise ValueError(f"privacy.reference_protocol_domain = {wanted!r}, but the run's cross-domain sets are {cross}: "
                         f"choose one of {[c.removeprefix('cross_') for c in cross]} or null (the first with at least {MIN_PATIENTS} patients)")
    return f"cross_{wanted}"


@dataclass
class Reference:
    """The real sets the privacy metrics compare with (built once by :func:`reference`)."""

    train: SliceSet  # the generators' training slices: the members
    holdout: SliceSet  # same vendors, never trained on: the non-members
    # the reference protocol's non-members per cross-domain set (cross_<domain> -> as many of its patients as holdout
    # patients), the primary one first; empty when the run has none
    cross: dict[str, SliceSet]
    cross_split: str | None  # the primary cross-domain set (privacy.reference_protocol_domain); None without one
    space: metrics.FeatureSpace
    train_features: np.ndarray  # the training images in the seg space
    holdout_nearest: pd.DataFrame = field(default_factory=pd.DataFrame)  # the holdout images' nearest-neighbour analysis

    @property
    def sets(self) -> dict[str, SliceSet]:
        """The real sets the attacks compare: ``train``, ``holdout`` and every ``cross_<domain>`` of :attr:`cross`."""
        return {"train": self.train, "holdout": self.holdout, **self.cross}

    def attacked_cross(self) -> dict[str, str | None]:
        """Each cross-domain set -> None when the reference protocol can attack it, else the reason it cannot."""
        return {name: None if (n := s.meta["patient"].nunique()) >= MIN_PATIENTS else
                f"{name} has {n} patient(s); the attack needs at least {MIN_PATIENTS}" for name, s in self.cross.items()}


def protocol_status(ref: Reference) -> dict[str, dict]:
    """Each protocol's sets, what it measures, and whether this run can serve it (a protocol with a cross-domain set
    is not applicable without one, :data:`NO_CROSS`, and skips a set too small to attack). The one place that
    decides which protocols run on which sets."""
    out, cross = {}, ref.attacked_cross()
    for name, (pos, neg, measures) in PROTOCOLS.items():
        uses_cross = "cross" in (pos, neg)
        applicable = not uses_cross or cross.get(ref.cross_split, NO_CROSS) is None
        out[name] = {"positive": pos, "negative": ref.cross_split if neg == "cross" else neg, "measures": measures,
                     "applicable": applicable, "reason": None if applicable else cross.get(ref.cross_split, NO_CROSS),
                     "cross_sets": [c for c, why in cross.items() if why is None] if uses_cross else [],
                     "skipped": {c: why for c, why in cross.items() if why is not None} if uses_cross else {}}
    return out


def reference(params: StudyParams, slices: SliceSet, segmenter: torch.nn.Module) -> Reference:
    """The members, the non-members of every protocol, the seg space, and the holdout images' own analysis."""
    space = metrics.seg_features(segmenter)
    train, holdout = slices.split("train"), slices.split("holdout")
    cross_split = reference_split(params, slices)
    names = in_cross_order(slices.meta["split"], params.data.cross_domains)
    cross = {}
    for name in sorted(names, key=lambda s: s != cross_split):  # the primary set first
        every = slices.split(name)
        patients = np.unique(every.meta["patient"].to_numpy())
        n = min(len(patients), holdout.meta["patient"].nunique())  # as many patients as our non-members: matched sizes
        chosen = np.random.default_rng(_seed(params, "cross patients", name)).choice(patients, n, replace=False)
        cross[name] = every.select(every.meta["patient"].isin(chosen).to_numpy())
    ref = Reference(train=train, holdout=holdout, cross=cross, cross_split=cross_split, space=space,
                    train_features=space(train.images))
    ref.holdout_nearest = nearest_to_train(params, ref, holdout.images)
    return ref


# -- memorisation: nearest neighbours, copies, distance to closest record ---------------------------------------------
def nearest_to_train(params: StudyParams, ref: Reference, images: np.ndarray) -> pd.DataFrame:
    """One row per image: its nearest training image by pixel L2 (and the second nearest), by correlation and in the
    seg space, the copy flags, and the training patient it is closest to."""
    p = params.privacy
    l2 = mp.nearest_l2(images, ref.train.images, k=2)
    corr = mp.nearest_correlation(images, ref.train.images, k=1)
    seg = mp.nearest_l2(ref.space(images), ref.train_features, k=2)
    ratio = mp.distance_ratio(l2)
    flags = mp.copy_flags(ratio, corr.value[:, 0], max_ratio=p.copy_ratio, min_correlation=p.copy_correlation)
    patients = ref.train.meta["patient"].to_numpy()
    return pd.DataFrame({
        "sample": np.arange(len(images)), "train_index": l2.index[:, 0], "train_patient": patients[l2.index[:, 0]],
        "l2": l2.value[:, 0], "l2_second": l2.value[:, 1], "ratio": ratio,
        "correlation": corr.value[:, 0], "correlation_index": corr.index[:, 0],
        "seg_l2": seg.value[:, 0], "seg_ratio": mp.distance_ratio(seg),
        **{f"flag_{k}": v for k, v in flags.items()},
    })


def _row(set_name: str, metric: str, value: float | Interval, interval: str = "", n: int | None = None) -> dict:
    if isinstance(value, Interval):
        return {"set": set_name, "metric": metric, "estimate": value.estimate, "low": value.low, "high": value.high,
                "interval": value.method, "n": n}
    return {"set": set_name, "metric": metric, "estimate": float(value), "low": math.nan, "high": math.nan, "interval": interval, "n": n}


def _seed(params: StudyParams, *names: str) -> int:
    return seed_for(params.seed, "privacy", *names)


def dcr_interval(params: StudyParams, dcr: np.ndarray, holdout_dcr: np.ndarray, holdout_patients: np.ndarray, name: str) -> Interval:
    """The DCR score with a bootstrap that resamples synthetic samples and holdout patients separately."""
    values = np.concatenate([dcr, holdout_dcr])
    synthetic = np.r_[np.ones(len(dcr), bool), np.zeros(len(holdout_dcr), bool)]
    groups = np.concatenate([np.arange(len(dcr)).astype(str), np.asarray(holdout_patients, dtype=str)])
    return bootstrap_statistic(lambda rows: mp.auc(-values[rows], synthetic[rows]), groups, strata=synthetic,
                               n_boot=params.privacy.bootstrap, level=params.privacy.confidence, seed=_seed(params, "dcr", name))


def nearest_rows(params: StudyParams, ref: Reference, set_name: str, table: pd.DataFrame, groups: np.ndarray | None = None) -> list[dict]:
    """Long-form rows of one set's nearest-neighbour table: copy share and flag shares with intervals (bootstrap over
    ``groups``: patients for real sets, samples when None), DCR scores against the holdout set, medians, LPIPS status."""
    p = params.privacy
    n = len(table)
    flag_cols = [c for c in table.columns if c.startswith("flag_")]
    shares = bootstrap_mean(table[flag_cols].to_numpy(float), groups, n_boot=p.bootstrap, level=p.confidence, seed=_seed(params, "copies", set_name))
    names = {"flag_copy": "copy_share", "flag_ratio": "ratio_flag_share", "flag_correlation": "correlation_flag_share", "flag_lpips": "lpips_flag_share"}
    out = [_row(set_name, names[c], iv, n=n) for c, iv in zip(flag_cols, shares)]
    if "flag_lpips" not in flag_cols:
        out.append(_row(set_name, "lpips_flag_share", math.nan, metrics.lpips_status() or "", n))
    holdout = ref.holdout_nearest
    patients = ref.holdout.meta["patient"].to_numpy()
    if set_name != UNSEEN:
        out.append(_row(set_name, "dcr_score", dcr_interval(params, table["l2"].to_numpy(), holdout["l2"].to_numpy(), patients, set_name), n=n))
        out.append(_row(set_name, "dcr_score_seg", dcr_interval(params, table["seg_l2"].to_numpy(), holdout["seg_l2"].to_numpy(), patients, set_name + "/seg"), n=n))
    for col in ("l2", "ratio", "correlation", "seg_l2"):
        out.append(_row(set_name, f"median_{col}", float(np.median(table[col])), "median over samples", n))
    out.append(_row(set_name, "min_l2", float(table["l2"].min()), "closest pair", n))
    out.append(_row(set_name, "max_correlation", float(table["correlation"].max()), "most correlated pair", n))
    return out


@dataclass
class Memorisation:
    """The nearest-neighbour analysis of every set: per-sample tables, long-form rows, and the images shown."""

    samples: dict[str, pd.DataFrame]  # set -> one row per image (:func:`nearest_to_train`)
    rows: pd.DataFrame  # long form: set, metric, estimate, low, high, interval, n
    images: dict[str, np.ndarray]  # set -> the images analysed


def memorisation(params: StudyParams, paths: RunPaths, ref: Reference, arms=None) -> Memorisation:
    """Nearest-neighbour analysis of each arm's synthetic set, then of the real holdout images (``real unseen``)."""
    arms = registry.names() if arms is None else arms
    samples, images, rows = {}, {}, []
    for arm in tqdm(list(arms), desc="nearest neighbours", unit="arm"):
        images[arm] = generation.load_samples(paths, arm, "synthetic")["images"]
        samples[arm] = nearest_to_train(params, ref, images[arm])
        rows += nearest_rows(params, ref, arm, samples[arm])
    images[UNSEEN], samples[UNSEEN] = ref.holdout.images, ref.holdout_nearest
    rows += nearest_rows(params, ref, UNSEEN, ref.holdout_nearest, ref.holdout.meta["patient"].to_numpy())
    return Memorisation(samples, pd.DataFrame(rows), images)


def most_similar(mem: Memorisation, n: int = 6) -> pd.DataFrame:
    """The ``n`` images of each set closest (pixel L2) to a training image: set, rank, sample, train_index, l2, ratio,
    correlation."""
    frames = [t.nsmallest(n, "l2").assign(set=name, rank=np.arange(min(n, len(t)))) for name, t in mem.samples.items()]
    cols = ["set", "rank", "sample", "train_index", "train_patient", "l2", "ratio", "correlation", "flag_copy"]
    return pd.concat(frames, ignore_index=True)[cols]


# -- stage-1 masks ---------------------------------------------------------------------------------------------------
def mask_copies(params: StudyParams, paths: RunPaths, ref: Reference) -> pd.DataFrame:
    """Dice of each stage-1 mask (and, as the unseen-patient reference, each holdout mask) to its nearest training
    mask; long form rows: set, metric, estimate, low, high, interval, n."""
    p = params.privacy
    masks = generation.load_samples(paths, "mask_prior", "masks")["masks"]
    rows = []
    for name, query, groups in (("mask_prior", masks, None), (UNSEEN, ref.holdout.masks, ref.holdout.meta["patient"].to_numpy())):
        dice = mp.nearest_mask_dice(query, ref.train.masks).value[:, 0]
        ok = ~np.isnan(dice)
        share, = bootstrap_mean((dice[ok] > p.mask_copy_dice).astype(float), None if groups is None else groups[ok],
                                n_boot=p.bootstrap, level=p.confidence, seed=_seed(params, "masks", name))
        rows += [_row(name, "copy_share", share, n=int(ok.sum())),
                 _row(name, "median_dice_to_nearest", float(np.median(dice[ok])) if ok.any() else math.nan, "median over masks", int(ok.sum())),
                 _row(name, "max_dice_to_nearest", float(np.max(dice[ok])) if ok.any() else math.nan, "", int(ok.sum())),
                 _row(name, "empty_masks", float((~ok).sum()), "masks without foreground (not scored)", len(dice))]
    return pd.DataFrame(rows)


# -- membership inference --------------------------------------------------------------------------------------------
def noise_step(model: torch.nn.Module, snr: float) -> float:
    """The noise level at which ``model`` is attacked for ``snr``, in its family's units (a diffusion timestep, a
    flow time): the model's own answer (``model.noise_level``), documenting the matched grid."""
    return float(model.noise_level(snr))


def model_errors(params: StudyParams, model: torch.nn.Module, images: np.ndarray, masks: np.ndarray, desc: str,
                 batch_size: int = 64) -> np.ndarray:
    """(N, L) errors of ``model`` on each slice (conditioned on its own mask) at each ``privacy.mia_snr``, each the
    mean over ``mia_draws`` draws. The noise of level l comes from one generator seeded by (run seed, level), consumed
    in batch order, so every arm sees the same draws for the same slices."""
    p = params.privacy
    dev = next(model.parameters()).device
    x_all = torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None]
    out = np.zeros((len(images), len(p.mia_snr)))
    bar = tqdm(total=len(p.mia_snr) * math.ceil(len(images) / batch_size), desc=desc, unit="batch")
    for level, snr in enumerate(p.mia_snr):
        g = torch.Generator(device=dev).manual_seed(_seed(params, "mia", f"{snr:g}"))
        for i in range(0, len(images), batch_size):
            cond = generation.masks_tensor(masks[i : i + batch_size]).to(dev)
            out[i : i + batch_size, level] = model.error_at(x_all[i : i + batch_size].to(dev), cond, snr, g, p.mia_draws).cpu().numpy()
            bar.update()
    bar.close()
    return out


def _intervals(params: StudyParams, scores_of, labels: np.ndarray, groups: np.ndarray, name: str) -> tuple[Interval, Interval]:
    """AUC and TPR at 1% FPR with bootstraps over patients, members and non-members resampled separately;
    ``scores_of(rows)`` gives the attack's scores of the drawn rows (a fitted attack refits on them)."""
    p = params.privacy
    kw = dict(groups=groups, strata=labels, n_boot=p.bootstrap, level=p.confidence, seed=_seed(params, "mia-boot", name))
    cache: dict[bytes, np.ndarray] = {}  # both statistics see the same draws (same seed): score each draw once

    def scores(rows: np.ndarray) -> np.ndarray:
        key = rows.tobytes()
        if key not in cache:
            cache[key] = scores_of(rows)
        return cache[key]

    return (bootstrap_statistic(lambda r: mp.auc(scores(r), labels[r]), **kw),
            bootstrap_statistic(lambda r: mp.tpr_at_fpr(scores(r), labels[r], FPR), **kw))


def attack(params: StudyParams, positive: np.ndarray, negative: np.ndarray, pos_groups, neg_groups, name: str) -> tuple[list[dict], list[dict]]:
    """Every attack on one (positive, negative) pair of error sets (N, L): the loss attack per level and aggregated,
    and the calibrated attack (refitted in every bootstrap draw, so its interval includes the fitting's variance).
    Returns long-form rows and ROC points."""
    errors = np.concatenate([positive, negative])
    labels = np.r_[np.ones(len(positive), bool), np.zeros(len(negative), bool)]
    groups = np.concatenate([np.asarray(pos_groups, dtype=str), np.asarray(neg_groups, dtype=str)])
    seed = _seed(params, "mia-folds", name)
    try:
        mp.patient_folds(groups, labels, seed)
    except ValueError as exc:
        raise ValueError(f"membership attack {name}: {exc}. Raise data.n_holdout_patients (non-members) or "
                         "data.n_cross_patients (the reference protocol's non-members) in the params") from None

    def calibrated(rows: np.ndarray) -> np.ndarray:
        try:
            return mp.calibrated_scores(errors[rows], labels[rows], groups[rows], seed)[0]
        except ValueError:  # a draw with fewer than two patients of a class: no cross-fit possible
            return np.full(len(rows), np.nan)

    runs = [("loss", snr, lambda r, lv=level: mp.loss_scores(errors[r, lv])) for level, snr in enumerate(params.privacy.mia_snr)]
    runs += [("loss", math.nan, lambda r: mp.loss_scores(errors[r])), ("calibrated", math.nan, calibrated)]
    rows, roc = [], []
    everything = np.arange(len(labels))
    for kind, snr, scores_of in runs:
        auc, tpr = _intervals(params, scores_of, labels, groups, f"{name}/{kind}/{snr}")
        rows.append({"attack": kind, "snr": snr, "level": "all" if math.isnan(snr) else f"{snr:g}",
                     "auc": auc.estimate, "auc_low": auc.low, "auc_high": auc.high,
                     "tpr_at_1fpr": tpr.estimate, "tpr_at_1fpr_low": tpr.low, "tpr_at_1fpr_high": tpr.high,
                     "n_positive": len(positive), "n_negative": len(negative),
                     "n_positive_patients": len(set(pos_groups)), "n_negative_patients": len(set(neg_groups)),
                     "interval": auc.method + (", attack refitted per draw" if kind == "calibrated" else "")})
        if math.isnan(snr):
            fpr, tpr_points = mp.roc_points(scores_of(everything), labels)
            roc.append({"attack": kind, "fpr": fpr.tolist(), "tpr": tpr_points.tolist()})
    return rows, roc


@dataclass
class Membership:
    table: pd.DataFrame  # arm, protocol, attack, snr, level, noise_step, auc (+ interval), tpr_at_1fpr (+ interval), counts
    roc: pd.DataFrame  # arm, protocol, attack, fpr (list), tpr (list)
    errors: dict[str, dict[str, np.ndarray]]  # arm -> set (train, holdout[, cross_<domain>...]) -> (N, L) errors
    seconds: dict[str, float]
    protocols: dict[str, dict] = field(default_factory=dict)  # protocol_status of the run; empty: all applicable


def attacks(params: StudyParams, ref: Reference, errors: dict[str, dict[str, np.ndarray]],
            context: dict[str, dict] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every protocol's attacks on every arm's errors (arm -> set ``train``/``holdout``/``cross_<domain>`` -> (N, L)),
    a protocol with a cross-domain set once per attackable set (:func:`protocol_status`); ``context`` (arm -> extra
    columns, e.g. the noise step per level and the checkpoint) joins the rows. Returns the long table (arm, protocol,
    cross_set, primary, attack, level, snr, noise_step, auc with interval, tpr_at_1fpr with interval, counts; ``primary``
    marks the rows the summary and figures read) and ROC points."""
    sets, status = ref.sets, protocol_status(ref)
    rows, roc = [], []
    for arm, by_set in errors.items():
        extra = dict((context or {}).get(arm, {}))
        steps = extra.pop("noise_steps", {})
        for protocol, (pos, neg, _) in PROTOCOLS.items():
            for cross in status[protocol]["cross_sets"] or ([""] if status[protocol]["applicable"] else []):
                p, n = (cross if s == "cross" else s for s in (pos, neg))
                tag = {"arm": arm, "protocol": protocol, "cross_set": cross, "primary": cross in ("", ref.cross_split)}
                r, c = attack(params, by_set[p], by_set[n], sets[p].meta["patient"], sets[n].meta["patient"],
                              f"{arm}/{protocol}" + (f"/{cross}" if cross else ""))
                rows += [{**tag, **x, "noise_step": steps.get(x["level"], math.nan), **extra} for x in r]
                roc += [{**tag, **x} for x in c]
    table = pd.DataFrame(rows)
    first = ["arm", "protocol", "cross_set", "primary", "attack", "level", "snr", "noise_step", "auc", "auc_low",
             "auc_high", "tpr_at_1fpr", "tpr_at_1fpr_low", "tpr_at_1fpr_high"]
    return table[first + [c for c in table.columns if c not in first]], pd.DataFrame(roc)


def loss_units(params: StudyParams, ref: Reference, arm: str, step: int | None, errors: dict[str, np.ndarray],
               seed: int = 0) -> pd.DataFrame:
    """The loss attack's score (mean log error over the levels) of every member and holdout slice, as units of
    :mod:`cmrlib.claims` (label 1 for members); ``step`` None for the final model, ``seed`` the generator seed."""
    sets = [("train", 1), ("holdout", 0)]
    return claims.units_frame(
        "mia_auc", arm, 1.0 if step is None else claims.fraction(params, arm, step), seed,
        np.concatenate([ref.sets[name].meta["patient"].to_numpy() for name, _ in sets]),
        np.concatenate([[f"{name}/{i}" for i in range(len(errors[name]))] for name, _ in sets]),
        mp.loss_scores(np.concatenate([errors[name] for name, _ in sets])),
        np.concatenate([np.full(len(errors[name]), label) for name, label in sets]))


def membership(params: StudyParams, paths: RunPaths, ref: Reference, arms=None) -> Membership:
    """Errors of every arm's model on the training, holdout and (where the run has one) cross-domain slices, and the
    attacks of every applicable protocol (the first generator seed's models). The loss attack's per-slice scores of
    every generator seed go to ``metrics/units/privacy.csv`` (:func:`loss_units`)."""
    arms = registry.names() if arms is None else arms
    errors, context, seconds = {}, {}, {}
    for arm in arms:
        start = time.perf_counter()
        model, ckpt = generation.load_arm(params, paths, arm)
        errors[arm] = {name: model_errors(params, model, s.images, s.masks, f"{arm} errors on {name}") for name, s in ref.sets.items()}
        context[arm] = {"noise_steps": {f"{snr:g}": noise_step(model, snr) for snr in params.privacy.mia_snr},
                        "checkpoint_step": ckpt["step"], "weights": ckpt["weights"]}
        seconds[arm] = time.perf_counter() - start
    table, roc = attacks(params, ref, errors, context)
    units = [loss_units(params, ref, arm, None, errors[arm]) for arm in arms]
    for replica in generation.seed_replicas(params)[1:]:  # the other generator seeds: the claims' seed variance
        for arm in arms:
            model, _ = generation.load_arm(params, paths, arm, replica=replica)
            units.append(loss_units(params, ref, arm, None, {name: model_errors(params, model, s.images, s.masks, f"{replica.folder(arm)} errors on {name}")
                                                            for name, s in (("train", ref.train), ("holdout", ref.holdout))}, replica.seed))
    claims.save_units(paths, "privacy", units)
    return Membership(table, roc, errors, seconds, protocol_status(ref))


def against_training_step(params: StudyParams, paths: RunPaths, ref: Reference, mia: Membership, arms=None) -> pd.DataFrame:
    """The compute axis: at every kept checkpoint of each arm, the membership AUC and TPR at 1% FPR of our protocol
    (calibrated attack, with intervals; the final checkpoint's errors are those of :func:`membership`) and the copy
    share of that checkpoint's synthetic subset (:func:`cmrlib.generation.synthetic_by_step`). One row per (arm, step).
    The loss attack's scores at every checkpoint before the last go to ``metrics/units/privacy_steps.csv``."""
    arms = registry.names() if arms is None else arms
    rows, units = [], []
    for arm in arms:
        subsets = generation.synthetic_by_step(params, paths, arm)
        for step, subset in subsets.items():
            if step == max(subsets):
                errors = mia.errors[arm]
            else:
                model, _ = generation.load_arm(params, paths, arm, step=step)
                errors = {name: model_errors(params, model, s.images, s.masks, f"{arm} step {step} errors on {name}")
                          for name, s in (("train", ref.train), ("holdout", ref.holdout))}
            if claims.fraction(params, arm, step) < 1:
                units.append(loss_units(params, ref, arm, step, errors))
            r, _ = attack(params, errors["train"], errors["holdout"], ref.train.meta["patient"], ref.holdout.meta["patient"],
                          f"{arm}/ours/step{step}")
            cal = next(x for x in r if x["attack"] == "calibrated")
            copy = _pick(pd.DataFrame(nearest_rows(params, ref, f"{arm}/step{step}", nearest_to_train(params, ref, subset["images"]))),
                         metric="copy_share")
            rows.append({"arm": arm, "step": int(step), "mia_auc": cal["auc"], "mia_auc_low": cal["auc_low"], "mia_auc_high": cal["auc_high"],
                         "mia_tpr_at_1fpr": cal["tpr_at_1fpr"], "copy_share": copy.estimate, "copy_share_low": copy.low,
                         "copy_share_high": copy.high, "n_synthetic": len(subset["images"])})
    claims.save_units(paths, "privacy_steps", units)
    return pd.DataFrame(rows)


# -- the summary and writing -----------------------------------------------------------------------------------------
def _pick(table: pd.DataFrame, **where) -> pd.Series:
    hit = table
    for k, v in where.items():
        hit = hit[hit[k] == v]
    if len(hit) != 1:
        raise KeyError(f"expected one row for {where}, found {len(hit)}")
    return hit.iloc[0]


def summary(mem: Memorisation, mia: Membership, arms=None) -> pd.DataFrame:
    """One record per arm with the keys the paper notebook and the export gate read (see ``metrics/privacy.json``);
    a protocol that is not applicable (``mia.protocols``) gives null values."""
    arms = registry.names() if arms is None else arms
    records = []
    for arm in arms:
        rec = {"arm": arm}
        for key, metric in (("copy_share", "copy_share"), ("dcr_score", "dcr_score")):
            r = _pick(mem.rows, set=arm, metric=metric)
            rec.update({key: r.estimate, f"{key}_low": r.low, f"{key}_high": r.high})
        for key, protocol, kind, col in (("mia_auc", "ours", "calibrated", "auc"), ("mia_tpr_at_1fpr", "ours", "calibrated", "tpr_at_1fpr"),
                                         ("mia_auc_loss", "ours", "loss", "auc"), ("reference_mia_auc", "reference", "calibrated", "auc"),
                                         ("domain_shift_auc", "domain shift", "calibrated", "auc")):
            if not mia.protocols.get(protocol, {}).get("applicable", True):
                rec.update({key: math.nan, f"{key}_low": math.nan, f"{key}_high": math.nan})
                continue
            r = _pick(mia.table, arm=arm, protocol=protocol, attack=kind, level="all", primary=True)
            rec.update({key: r[col], f"{key}_low": r[f"{col}_low"], f"{key}_high": r[f"{col}_high"]})
        ours = _pick(mia.table, arm=arm, protocol="ours", attack="calibrated", level="all")
        rec.update({"n_synthetic": int(len(mem.samples[arm])), "n_members": int(ours.n_positive), "n_nonmembers": int(ours.n_negative)})
        records.append(rec)
    return pd.DataFrame(records)


def unseen_record(mem: Memorisation) -> dict:
    """The ``real unseen`` row: the copy flags' rate on real holdout patients (false positives of the flags)."""
    r = _pick(mem.rows, set=UNSEEN, metric="copy_share")
    return {"set": UNSEEN, "copy_share": r.estimate, "copy_share_low": r.low, "copy_share_high": r.high, "n": int(r.n)}


def mask_record(masks: pd.DataFrame, params: StudyParams) -> dict:
    r = _pick(masks, set="mask_prior", metric="copy_share")
    u = _pick(masks, set=UNSEEN, metric="copy_share")
    return {"arm": "mask_prior", "copy_share": r.estimate, "copy_share_low": r.low, "copy_share_high": r.high,
            "median_dice_to_nearest": _pick(masks, set="mask_prior", metric="median_dice_to_nearest").estimate,
            "holdout_copy_share": u.estimate, "holdout_copy_share_low": u.low, "holdout_copy_share_high": u.high,
            "threshold_dice": params.privacy.mask_copy_dice, "n_masks": int(r.n),
            "n_empty": int(_pick(masks, set="mask_prior", metric="empty_masks").estimate)}


def per_level_auc(table: pd.DataFrame) -> dict:
    """{arm: {protocol: [{snr, noise_step, auc, auc_low, auc_high}]}} of the loss attack at each noise level (the
    primary cross-domain set's rows)."""
    levels = table[(table["attack"] == "loss") & (table["level"] != "all") & table["primary"]]
    return {arm: {protocol: d[["snr", "noise_step", "auc", "auc_low", "auc_high"]].to_dict(orient="records")
                  for protocol, d in a.groupby("protocol", sort=False)} for arm, a in levels.groupby("arm", sort=False)}


def settings(params: StudyParams, ref: Reference) -> dict:
    p = params.privacy
    return {"copy_flags": {"ratio_below": p.copy_ratio, "correlation_above": p.copy_correlation,
                           "lpips_below": p.copy_lpips, "lpips": metrics.lpips_status() or "available"},
            "mask_copy_dice_above": p.mask_copy_dice, "mia_snr": list(p.mia_snr), "mia_draws": p.mia_draws, "fpr": FPR,
            "protocols": protocol_status(ref),
            "feature_space": ref.space.description, "bootstrap": p.bootstrap, "confidence": p.confidence,
            "counts": {"train_slices": len(ref.train), "train_patients": int(ref.train.meta["patient"].nunique()),
                       "holdout_slices": len(ref.holdout), "holdout_patients": int(ref.holdout.meta["patient"].nunique()),
                       "cross": {name: {"slices": len(s), "patients": int(s.meta["patient"].nunique())}
                                 for name, s in ref.cross.items()}}}


def save(params: StudyParams, paths: RunPaths, ref: Reference, mem: Memorisation, masks: pd.DataFrame, mia: Membership,
         arms=None, budgets: pd.DataFrame | None = None) -> Path:
    """Write ``metrics/privacy.json`` and the tables ``privacy_summary``, ``privacy_nearest`` (long),
    ``privacy_mia`` (every protocol, attack and level), ``privacy_masks`` and ``privacy_pairs``."""
    arms = registry.names() if arms is None else arms
    table = summary(mem, mia, arms)
    report.save_table(table, paths.tables, "privacy_summary", index=False)
    report.save_table(mem.rows, paths.tables, "privacy_nearest", index=False)
    report.save_table(mia.table, paths.tables, "privacy_mia", index=False)
    report.save_table(masks, paths.tables, "privacy_masks", index=False)
    report.save_table(most_similar(mem), paths.tables, "privacy_pairs", index=False)
    budgets = pd.DataFrame() if budgets is None else budgets
    if len(budgets):
        report.save_table(budgets, paths.tables, "privacy_against_training_step", index=False)
    record = {
        "summary": table.to_dict(orient="records"),
        "mask_prior": mask_record(masks, params),
        "real_unseen": unseen_record(mem),
        "settings": settings(params, ref),
        "nearest": mem.rows.to_dict(orient="records"),
        "mia": mia.table.to_dict(orient="records"),
        "per_level_auc": per_level_auc(mia.table),
        "roc": mia.roc.to_dict(orient="records"),
        "masks": masks.to_dict(orient="records"),
        "most_similar": most_similar(mem).to_dict(orient="records"),
        "against_training_step": budgets.to_dict(orient="records"),
        "seconds": {"model_errors_per_arm": {k: round(v, 1) for k, v in mia.seconds.items()}},
    }
    return write_json(paths.metrics / "privacy.json", record)


__all__ = ["STAGE", "UNSEEN", "PROTOCOLS", "ATTACKS", "NO_CROSS", "Reference", "reference", "reference_split", "protocol_status", "nearest_to_train",
           "nearest_rows", "dcr_interval", "Memorisation", "memorisation", "most_similar", "mask_copies", "noise_step",
           "model_errors", "attack", "attacks", "Membership", "membership", "against_training_step", "summary", "unseen_record", "mask_record", "per_level_auc", "settings", "save"]
