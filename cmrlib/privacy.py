"""The privacy axis: what the notebook ``50_privacy`` calls (definitions: ``docs/protocol.md#privacy``).

Reads ``data/``, ``splits.json``, ``samples/<arm>/synthetic.npz``, ``samples/mask_prior/masks.npz``, the arms'
checkpoints and ``checkpoints/reference_segmenter/`` (trained here when notebook 30 has not). Writes
``metrics/privacy.json`` and the tables ``tables/privacy_*``.

What is measured (metrics in :mod:`cmrlib.metrics.privacy`; the calibration controls in :mod:`cmrlib.privacy_controls`):

- the **attack on the released set** (:func:`released`), the threat of the use case and the number the export gate and
  the paper lead with: an attacker holding only the synthetic set and a candidate patient's real images scores each
  image by minus its distance to the nearest synthetic image (pixel L2, and L2 in the ``seg`` feature space), averaged
  over the patient's slices; members against holdout patients, AUC and TPR at 1% FPR per patient and per slice;
- **memorisation** of each arm's synthetic set against the real training images (the members): exact nearest
  neighbour by pixel L2 (with the nearest/second-nearest ratio), by maximum Pearson correlation, and by L2 in the
  ``seg`` feature space; the share of samples flagged as copies (ratio < ``copy_ratio`` or correlation >
  ``copy_correlation``; LPIPS < ``copy_lpips`` only when LPIPS weights exist, otherwise reported as unavailable).
  The real holdout images go through the same analysis as the ``real unseen`` row: the flag rate of genuinely unseen
  patients of the same vendors, the floor a generator cannot be blamed for;
- the **DCR share** as SDMetrics defines it (DCROverfittingProtection): the share of synthetic samples closer to the
  training set than to an equal-size holdout set; 0.5 no overfitting, read by its distance from 0.5 (a copier
  reaches 1 with sets of equal size, less when the training set is larger: the copier's row gives the ceiling);
- **membership inference** against each arm's own model (white box): members are the training slices, non-members
  the holdout slices (same vendors, other patients), each conditioned on its own mask; the score is the model's
  denoising (DDPM, in latent space for the LDM) or velocity (FM) error at every ``mia_snr`` (the same SNR grid for
  every arm; the table gives each level's noise step and the data's own SNR, which differs between pixels and
  latents), averaged over ``mia_draws`` fixed-seed noise draws. Attacks: the loss threshold per level and aggregated
  (mean log error; the pre-registered primary: it fits nothing), and a calibrated attack (logistic regression on the
  per-level log errors, cross-fitted once over patients); each per slice and per patient. An arm with an autoencoder
  also gets the autoencoder's own attack (its reconstruction error);
- the **reference protocol** of the reference study: the same attacks with cross-domain slices as non-members (a
  seeded choice of as many cross-domain patients as there are holdout patients, so both protocols have the same
  sample sizes), on every cross-domain set of the run (one row each in the table; the summary and the figure read
  the primary one, ``privacy.reference_protocol_domain``, and a set of fewer than 2 patients is skipped with the
  reason), and a **domain-shift control**: holdout slices (never trained on) against the same cross-domain slices.
  Both sets of that control are non-members, so its AUC is pure domain shift: where the reference protocol's AUC
  exceeds ours by about that much, it measured the vendor, not membership. The **reference's own attack**
  (:func:`reference_attack`: logistic regression on the band-pass error and 1 - SSIM of a one-step clean estimate,
  at its noise levels and at matched ones, fitted on 80% of the slices and scored on the rest) runs on both protocols,
  so each of its flaws shows in numbers;
- the **never-seen control** (protocol ``never seen``): holdout against test patients, both never trained on, by
  every attack: nothing to find, so no attack should tell them from chance (``p_chance``); and the **copier**
  (:data:`COPIER`): the
  training images as the released set, which every released-set attack and copy flag must find;
- the **compute axis** (:func:`against_training_step`): our membership AUC, the released-set AUC and the copy share
  at every kept checkpoint (on the checkpoint's ``generators.n_synthetic_per_checkpoint`` synthetic images);
- **stage-1 masks** against the training masks: Dice to the nearest training mask, share above ``mask_copy_dice``,
  with the holdout masks as the unseen-patient reference.

Intervals: percentile bootstrap over patients (``privacy.bootstrap`` draws at ``privacy.confidence``), stratified by
class for AUCs (members and non-members resampled separately); copy and DCR shares of synthetic sets resample samples.
A fitted attack is fitted once and its scores held fixed in the bootstrap, so its interval is the evaluation's; every
AUC is also given by its distance from 0.5 (``auc_from_chance``), as an attack that ranks members low also reveals them,
and by ``p_chance``, a permutation test of the member labels between patients: with a handful of patients per class
the bootstrap interval is too narrow (the never-seen control shows it), the permutation test is not.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata
from tqdm.auto import tqdm

from . import claims, generation, metrics, registry, report
from .data.records import SliceSet
from .data.splits import in_cross_order
from .jsonio import write_json
from .metrics import privacy as mp
from .params import StudyParams
from .paths import RunPaths
from .seeds import seed_for
from .stats import Interval, bootstrap_draws, bootstrap_mean, percentile_bounds

STAGE = "50_privacy"
UNSEEN = "real unseen (holdout)"
PROTOCOLS = {  # name -> (positive set, negative set, what it measures)
    "ours": ("train", "holdout", "members vs held-out patients of the same vendors: membership"),
    "reference": ("train", "cross", "members vs another vendor (the reference study): membership plus domain shift"),
    "domain shift": ("holdout", "cross", "two non-member sets, same vendors vs another vendor: domain shift only"),
    "never seen": ("holdout", "unseen", "two non-member sets of the same vendors (holdout vs test patients): the negative "
                   "control, nothing to find (no attack should tell them from chance)"),
}
COPIER = "copier (control)"  # the released-set attack's positive control: a "generator" that releases its training images
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
    unseen: SliceSet  # the test patients: never trained on, the negative control's second non-member set
    space: metrics.FeatureSpace
    train_features: np.ndarray  # the training images in the seg space
    holdout_features: np.ndarray
    unseen_features: np.ndarray
    holdout_nearest: pd.DataFrame = field(default_factory=pd.DataFrame)  # the holdout images' nearest-neighbour analysis

    @property
    def sets(self) -> dict[str, SliceSet]:
        """The real sets the attacks compare: ``train``, ``holdout``, ``unseen`` and every ``cross_<domain>`` of
        :attr:`cross`."""
        return {"train": self.train, "holdout": self.holdout, "unseen": self.unseen, **self.cross}

    def features(self, name: str) -> np.ndarray:
        """The seg-space features of set ``train``, ``holdout`` or ``unseen``."""
        return {"train": self.train_features, "holdout": self.holdout_features, "unseen": self.unseen_features}[name]

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
    unseen = slices.split("test")
    ref = Reference(train=train, holdout=holdout, cross=cross, cross_split=cross_split, unseen=unseen, space=space,
                    train_features=space(train.images), holdout_features=space(holdout.images), unseen_features=space(unseen.images))
    ref.holdout_nearest = nearest_to_train(params, ref, holdout.images, ref.holdout_features)
    return ref


# -- memorisation: nearest neighbours, copies, distance to closest record ---------------------------------------------
def nearest_to_train(params: StudyParams, ref: Reference, images: np.ndarray, features: np.ndarray | None = None) -> pd.DataFrame:
    """One row per image: its nearest training image by pixel L2 (and the second nearest), by correlation and in the
    seg space (``features``: the images' seg features, computed when not given), the copy flags, and the training
    patient it is closest to."""
    p = params.privacy
    l2 = mp.nearest_l2(images, ref.train.images, k=2)
    corr = mp.nearest_correlation(images, ref.train.images, k=1)
    seg = mp.nearest_l2(ref.space(images) if features is None else features, ref.train_features, k=2)
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


def dcr_rows(params: StudyParams, ref: Reference, set_name: str, images: np.ndarray, features: np.ndarray) -> list[dict]:
    """SDMetrics' DCR overfitting share of a synthetic set (:func:`cmrlib.metrics.privacy.dcr_closer_to_train`), in
    pixel space and in the seg space (``features``: the set's seg features), with a bootstrap over the synthetic
    samples: 0.5 no overfitting; a copier reaches the :data:`COPIER` row's share."""
    p = params.privacy
    out = []
    for metric, synthetic, train, holdout in (("dcr_train_share", images, ref.train.images, ref.holdout.images),
                                              ("dcr_train_share_seg", features, ref.train_features, ref.holdout_features)):
        closer = mp.dcr_closer_to_train(synthetic, train, holdout, _seed(params, "dcr reference", metric))
        share, = bootstrap_mean(closer, None, n_boot=p.bootstrap, level=p.confidence, seed=_seed(params, "dcr", set_name, metric))
        out.append(_row(set_name, metric, share, n=len(images)))
    return out


def nearest_rows(params: StudyParams, ref: Reference, set_name: str, table: pd.DataFrame, groups: np.ndarray | None = None) -> list[dict]:
    """Long-form rows of one set's nearest-neighbour table: copy share and flag shares with intervals (bootstrap over
    ``groups``: patients for real sets, samples when None), medians, LPIPS status."""
    p = params.privacy
    n = len(table)
    flag_cols = [c for c in table.columns if c.startswith("flag_")]
    shares = bootstrap_mean(table[flag_cols].to_numpy(float), groups, n_boot=p.bootstrap, level=p.confidence, seed=_seed(params, "copies", set_name))
    names = {"flag_copy": "copy_share", "flag_ratio": "ratio_flag_share", "flag_correlation": "correlation_flag_share", "flag_lpips": "lpips_flag_share"}
    out = [_row(set_name, names[c], iv, n=n) for c, iv in zip(flag_cols, shares)]
    if "flag_lpips" not in flag_cols:
        out.append(_row(set_name, "lpips_flag_share", math.nan, metrics.lpips_status() or "", n))
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
    features: dict[str, np.ndarray] = field(default_factory=dict)  # arm -> its synthetic images' seg features


def memorisation(params: StudyParams, paths: RunPaths, ref: Reference, arms=None) -> Memorisation:
    """Nearest-neighbour analysis of each arm's synthetic set, then of the real holdout images (``real unseen``: the
    flags' false-positive floor) and of the training images themselves (:data:`COPIER`, rows only: every one must be
    flagged, and its DCR share is the ceiling a copier reaches with this run's set sizes)."""
    arms = registry.names() if arms is None else arms
    samples, images, features, rows = {}, {}, {}, []
    for arm in tqdm(list(arms), desc="nearest neighbours", unit="arm"):
        images[arm] = generation.load_samples(paths, arm, "synthetic")["images"]
        features[arm] = ref.space(images[arm])
        samples[arm] = nearest_to_train(params, ref, images[arm], features[arm])
        rows += nearest_rows(params, ref, arm, samples[arm]) + dcr_rows(params, ref, arm, images[arm], features[arm])
    images[UNSEEN], samples[UNSEEN] = ref.holdout.images, ref.holdout_nearest
    rows += nearest_rows(params, ref, UNSEEN, ref.holdout_nearest, ref.holdout.meta["patient"].to_numpy())
    copier = ref.train.images  # the positive control: flagged, and closer to its training set, by construction
    rows += (nearest_rows(params, ref, COPIER, nearest_to_train(params, ref, copier, ref.train_features))
             + dcr_rows(params, ref, COPIER, copier, ref.train_features))
    return Memorisation(samples, pd.DataFrame(rows), images, features)


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


# the reference study's attack: its noise levels (diffusion timesteps in [300, 600) of 1000, flow times t ~ U[0, 1]),
# the band of signal-to-noise ratios those diffusion steps span (its linear schedule), and its 80/20 split of slices
REFERENCE_STEPS = (0.3, 0.6)
REFERENCE_SNR = (0.08, 0.67)
REFERENCE_TEST_SHARE = 0.2


def reference_levels(model: torch.nn.Module, n: int, generator: torch.Generator, matched: bool) -> torch.Tensor:
    """One noise level per slice for the reference's attack, in the model's own units: its own rule (a diffusion
    timestep in [300, 600) of a 1000-step schedule, a flow time t ~ U[0, 1]), or ``matched``: one SNR per slice drawn
    log-uniformly in :data:`REFERENCE_SNR`, taken at each family's level of that SNR (the same grid for every arm)."""
    if matched:
        log_snr = torch.empty(n).uniform_(math.log(REFERENCE_SNR[0]), math.log(REFERENCE_SNR[1]), generator=generator)
        return torch.tensor([model.noise_level(float(v)) for v in log_snr.exp()])
    if model.family == "flow":
        return torch.rand(n, generator=generator)
    steps = getattr(model, "diffusion", model).config["num_train_timesteps"]
    return torch.randint(int(REFERENCE_STEPS[0] * steps), int(REFERENCE_STEPS[1] * steps), (n,), generator=generator).float()


@torch.no_grad()
def reference_features(params: StudyParams, model: torch.nn.Module, images: np.ndarray, masks: np.ndarray, matched: bool,
                       desc: str, batch_size: int = 64) -> np.ndarray:
    """(N, 2) features of the reference's attack per slice: the log band-pass error
    (:func:`cmrlib.metrics.privacy.band_error`) and 1 - SSIM of the model's one-step clean estimate against the image,
    each the mean over ``mia_draws`` draws of a noise level (:func:`reference_levels`) and a noise."""
    p = params.privacy
    dev = next(model.parameters()).device
    g_levels = torch.Generator().manual_seed(_seed(params, "reference attack levels", str(matched)))
    g_noise = torch.Generator(device=dev).manual_seed(_seed(params, "reference attack noise", str(matched)))
    x_all = torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None]
    band, dissimilarity = np.zeros(len(images)), np.zeros(len(images))
    for _ in tqdm(range(p.mia_draws), desc=desc, unit="draw"):
        levels = reference_levels(model, len(images), g_levels, matched)
        for i in range(0, len(images), batch_size):
            x = x_all[i : i + batch_size].to(dev)
            cond = generation.masks_tensor(masks[i : i + batch_size]).to(dev)
            estimate = model.one_step_estimate(x, cond, levels[i : i + batch_size].to(dev), g_noise).clamp(-1, 1).cpu().numpy()[:, 0]
            band[i : i + batch_size] += mp.band_error(estimate - images[i : i + batch_size])
            dissimilarity[i : i + batch_size] += 1 - metrics.ssim(estimate, images[i : i + batch_size])
    return np.column_stack([np.log(np.clip(band / p.mia_draws, 1e-12, None)), dissimilarity / p.mia_draws])


def pair(pos_groups, neg_groups) -> tuple[np.ndarray, np.ndarray]:
    """(labels, groups) of a positive set followed by a negative one: True for the positives, and each row's patient."""
    pos_groups, neg_groups = np.asarray(pos_groups, dtype=str), np.asarray(neg_groups, dtype=str)
    return np.r_[np.ones(len(pos_groups), bool), np.zeros(len(neg_groups), bool)], np.concatenate([pos_groups, neg_groups])


def reference_attack(params: StudyParams, positive: np.ndarray, negative: np.ndarray, pos_groups, neg_groups, name: str) -> list[dict]:
    """The reference's classifier: logistic regression on the features of :func:`reference_features`, fitted on a
    random 80% of the *slices* (a patient's other slices can be in the 20% it is scored on) and scored on the rest.
    ``name`` seeds the split: give the same one to attacks that should be scored on the same slices."""
    x = np.concatenate([positive, negative])
    labels, groups = pair(pos_groups, neg_groups)
    rng = np.random.default_rng(_seed(params, "reference split", name))
    test = np.zeros(len(x), bool)
    for cls in (True, False):  # stratified, so both classes are scored
        rows = np.flatnonzero(labels == cls)
        test[rng.choice(rows, max(1, round(REFERENCE_TEST_SHARE * len(rows))), replace=False)] = True
    model = mp.default_attack_model().fit(x[~test], labels[~test])
    scores = model.predict_proba(x[test])[:, 1]
    return score_rows(params, scores, labels[test], groups[test], name, fitted=True)


def _bounds(key: str, draws: np.ndarray, level: float) -> dict:
    low, high = percentile_bounds(draws, level)
    return {f"{key}_low": low, f"{key}_high": high}


def permutation_p(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, n: int, seed: int) -> float:
    """The p-value of "nothing to find" for the AUC of scores that were not fitted to these labels: the member labels
    permuted between *patients* (all of a patient's slices keep one label, the number of member patients is kept),
    the share of ``n`` permutations whose AUC is at least as far from 0.5 as the observed one, (count + 1) / (n + 1).
    Valid however alike a patient's slices are, where a bootstrap over a handful of patients is too narrow; NaN when
    the AUC is."""
    labels = np.asarray(labels).astype(bool)
    observed = mp.auc(scores, labels)
    if np.isnan(observed):
        return math.nan
    patients, index = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    member = np.zeros(len(patients), bool)
    member[index[labels]] = True
    ranks = rankdata(scores)  # the ranks do not change with the labels: the AUC of a permutation is a sum of ranks
    rng = np.random.default_rng(seed)
    far = 0
    for _ in range(n):
        positive = rng.permutation(member)[index]
        k = int(positive.sum())
        auc = (ranks[positive].sum() - k * (k + 1) / 2) / (k * (len(positive) - k))
        far += abs(auc - 0.5) >= abs(observed - 0.5) - 1e-12
    return (far + 1) / (n + 1)


def _from_chance(auc: float, low: float, high: float) -> dict:
    """The AUC's distance from 0.5 with the interval its interval implies (0 at the low end when it spans 0.5)."""
    near, far = sorted([abs(low - 0.5), abs(high - 0.5)])
    return {"auc_from_chance": abs(auc - 0.5), "auc_from_chance_low": 0.0 if low <= 0.5 <= high else near,
            "auc_from_chance_high": far}


def score_rows(params: StudyParams, scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, name: str,
               fitted: bool = False) -> list[dict]:
    """One attack's AUC, its distance from 0.5 and its TPR at 1% FPR, per slice and per patient (the mean of a
    patient's slice scores, :func:`cmrlib.metrics.privacy.per_patient`), each with a percentile bootstrap over patients
    (members and non-members resampled apart), and for an attack that fits nothing the patient-permutation p-value
    of chance (:func:`permutation_p`; NaN for a ``fitted`` attack, whose out-of-fold scores are not exchangeable under
    relabelling). The scores are fixed: a fitted attack is fitted once, so the interval is the evaluation's."""
    p = params.privacy
    rows = []
    for unit, (s, y, g) in {"slice": (np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool), groups),
                            "patient": mp.per_patient(scores, groups, labels)}.items():
        kw = dict(groups=g, strata=y, n_boot=p.bootstrap, seed=_seed(params, "mia-boot", name, unit))
        auc, auc_draws = bootstrap_draws(lambda _, r: mp.auc(s[r], y[r]), **kw)
        tpr, tpr_draws = bootstrap_draws(lambda _, r: mp.tpr_at_fpr(s[r], y[r], FPR), **kw)
        bounds = _bounds("auc", auc_draws, p.confidence)
        n_patients = len(set(zip(np.asarray(g).tolist(), y.tolist())))
        rows.append({"unit": unit, "auc": auc, **bounds, **_from_chance(auc, bounds["auc_low"], bounds["auc_high"]),
                     "p_chance": math.nan if fitted else permutation_p(s, y, g, p.permutations, _seed(params, "mia-permutation", name, unit)),
                     "tpr_at_1fpr": tpr, **_bounds("tpr_at_1fpr", tpr_draws, p.confidence),
                     "n_positive": int(y.sum()), "n_negative": int((~y).sum()),
                     "n_positive_patients": len(set(np.asarray(g)[y])), "n_negative_patients": len(set(np.asarray(g)[~y])),
                     "interval": f"percentile bootstrap over {n_patients} patients (members and non-members apart), {p.bootstrap} draws"})
    return rows


def attack(params: StudyParams, positive: np.ndarray, negative: np.ndarray, pos_groups, neg_groups, name: str,
           per_level: bool = True) -> tuple[list[dict], list[dict]]:
    """Every attack on one (positive, negative) pair of error sets (N, L): the loss attack per level (unless not
    ``per_level``) and aggregated (the pre-registered primary: it fits nothing), and the calibrated attack
    (cross-fitted once over patients, then evaluated like the loss attack), each per slice and per patient
    (:func:`score_rows`). Returns long-form rows and the slice-level ROC points."""
    errors = np.concatenate([positive, negative])
    labels, groups = pair(pos_groups, neg_groups)
    try:
        calibrated, _ = mp.calibrated_scores(errors, labels, groups, _seed(params, "mia-folds", name))
    except ValueError as exc:
        raise ValueError(f"membership attack {name}: {exc}. Raise data.n_holdout_patients (non-members) or "
                         "data.n_cross_patients (the reference protocol's non-members) in the params") from None
    runs = [("loss", snr, mp.loss_scores(errors[:, level])) for level, snr in enumerate(params.privacy.mia_snr) if per_level]
    runs += [("loss", math.nan, mp.loss_scores(errors)), ("calibrated", math.nan, calibrated)]
    rows, roc = [], []
    for kind, snr, scores in runs:
        for r in score_rows(params, scores, labels, groups, f"{name}/{kind}/{snr}", fitted=kind == "calibrated"):
            fitted = ", cross-fitted once over patients (2 folds)" if kind == "calibrated" else ""
            rows.append({"attack": kind, "snr": snr, "level": "all" if math.isnan(snr) else f"{snr:g}", **r,
                         "interval": r["interval"] + fitted})
        if math.isnan(snr):
            fpr, tpr_points = mp.roc_points(scores, labels)
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
    cross_set, primary, attack, unit, level, snr, noise_step, data_snr, auc with interval and distance from 0.5,
    tpr_at_1fpr with interval, counts; ``primary`` marks the rows the summary and figures read) and ROC points."""
    sets, status = ref.sets, protocol_status(ref)
    rows, roc = [], []
    for arm, by_set in errors.items():
        extra = dict((context or {}).get(arm, {}))
        steps, data_snr = extra.pop("noise_steps", {}), extra.pop("data_snr", {})
        for protocol, (pos, neg, _) in PROTOCOLS.items():
            for cross in status[protocol]["cross_sets"] or ([""] if status[protocol]["applicable"] else []):
                p, n = (cross if s == "cross" else s for s in (pos, neg))
                tag = {"arm": arm, "protocol": protocol, "cross_set": cross, "primary": cross in ("", ref.cross_split)}
                r, c = attack(params, by_set[p], by_set[n], sets[p].meta["patient"], sets[n].meta["patient"],
                              f"{arm}/{protocol}" + (f"/{cross}" if cross else ""))
                rows += [{**tag, **x, "noise_step": steps.get(x["level"], math.nan), "data_snr": data_snr.get(x["level"], math.nan),
                          **extra} for x in r]
                roc += [{**tag, **x} for x in c]
    table = pd.DataFrame(rows)
    first = ["arm", "protocol", "cross_set", "primary", "attack", "unit", "level", "snr", "noise_step", "data_snr", "auc", "auc_low",
             "auc_high", "auc_from_chance", "tpr_at_1fpr", "tpr_at_1fpr_low", "tpr_at_1fpr_high"]
    return table[first + [c for c in table.columns if c not in first]], pd.DataFrame(roc)


def member_units(params: StudyParams, ref: Reference, metric: str, arm: str, step: int | None, scores: dict[str, np.ndarray],
                 seed: int = 0, per_patient: bool = False) -> pd.DataFrame:
    """An attack's scores of the member (``train``) and holdout slices as units of :mod:`cmrlib.claims` (label 1 for
    members): one per slice, or ``per_patient`` one per patient (the mean of its slices); ``step`` None for the final
    model, ``seed`` the generator seed."""
    labels, groups = pair(ref.train.meta["patient"], ref.holdout.meta["patient"])
    values = np.concatenate([scores["train"], scores["holdout"]])
    units = np.concatenate([[f"{name}/{i}" for i in range(len(scores[name]))] for name in ("train", "holdout")])
    if per_patient:
        values, labels, groups = mp.per_patient(values, groups, labels)
        units = groups
    return claims.units_frame(metric, arm, 1.0 if step is None else claims.fraction(params, arm, step), seed, groups, units,
                              values, labels)


def loss_units(params: StudyParams, ref: Reference, arm: str, step: int | None, errors: dict[str, np.ndarray],
               seed: int = 0) -> pd.DataFrame:
    """The loss attack's score (mean log error over the levels) of every member and holdout slice (:func:`member_units`)."""
    return member_units(params, ref, "mia_auc", arm, step, {k: mp.loss_scores(errors[k]) for k in ("train", "holdout")}, seed)


def data_power(model: torch.nn.Module, images: np.ndarray, batch_size: int = 64) -> float:
    """Mean square of what the model diffuses: its latents for a latent model, the [-1, 1] images otherwise. At a
    schedule SNR s the data's own signal-to-noise ratio is s times this, which differs between pixel and latent arms."""
    dev = next(model.parameters()).device
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None]
    encode = getattr(model, "to_latent", None)
    with torch.no_grad():
        parts = [(encode(b.to(dev)) if encode else b).pow(2).flatten(1).mean(1) for b in x.split(batch_size)]
    return float(torch.cat(parts).mean())


@torch.no_grad()
def autoencoder_errors(model: torch.nn.Module, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N,) reconstruction MSE of a latent model's autoencoder per image: the input of the autoencoder's own attack."""
    dev = next(model.parameters()).device
    x = torch.from_numpy(np.asarray(images, dtype=np.float32))[:, None]
    return torch.cat([(model.autoencoder.reconstruct(b.to(dev)).clamp(-1, 1) - b.to(dev)).pow(2).flatten(1).mean(1)
                      for b in x.split(batch_size)]).cpu().numpy()


def epochs(params: StudyParams, arm: str, n_slices: int, steps: int | None = None, autoencoder: bool = False) -> float:
    """The passes over ``n_slices`` training slices that ``steps`` (default: the budget) of the arm's network (or its
    autoencoder) make."""
    p = registry.get(arm).params(params)
    train = p.autoencoder.train if autoencoder else p.train
    return (train.steps if steps is None else steps) * train.batch_size / n_slices


def training_context(params: StudyParams, ref: Reference, arm: str, model: torch.nn.Module, ckpt: dict) -> dict:
    """The columns of the attack table that say what an arm's attack meets: the noise step and the data SNR at each
    level, the checkpoint, and the epochs over the members its network (and its autoencoder) trained."""
    power = data_power(model, ref.train.images)
    out = {"noise_steps": {f"{snr:g}": noise_step(model, snr) for snr in params.privacy.mia_snr},
           "data_snr": {f"{snr:g}": snr * power for snr in params.privacy.mia_snr},
           "checkpoint_step": ckpt["step"], "weights": ckpt["weights"], "data_mean_square": power,
           "epochs": epochs(params, arm, len(ref.train), ckpt["step"])}
    if registry.get(arm).autoencoder:
        out["autoencoder_epochs"] = epochs(params, arm, len(ref.train), autoencoder=True)
    return out


def autoencoder_attack(params: StudyParams, ref: Reference, arm: str, model: torch.nn.Module) -> list[dict]:
    """The autoencoder's own attack (loss attack on its reconstruction error) of an arm that has one, members vs holdout
    (``ours``) and holdout vs test (``never seen``): what the latent arm's attack inherits from the autoencoder alone."""
    errors = {name: autoencoder_errors(model, ref.sets[name].images) for name in ("train", "holdout", "unseen")}
    rows = []
    for protocol in ("ours", "never seen"):
        pos, neg, _ = PROTOCOLS[protocol]
        labels, groups = pair(ref.sets[pos].meta["patient"], ref.sets[neg].meta["patient"])
        scores = mp.loss_scores(np.concatenate([errors[pos], errors[neg]]))
        rows += [{"arm": arm, "protocol": protocol, "cross_set": "", "primary": True, "attack": "autoencoder", "level": "all",
                  "snr": math.nan, **r} for r in score_rows(params, scores, labels, groups, f"{arm}/{protocol}/autoencoder")]
    return rows


def reference_attack_rows(params: StudyParams, ref: Reference, arm: str, model: torch.nn.Module) -> list[dict]:
    """The reference's attack (:func:`reference_attack`) on one arm, with its own noise levels and with matched ones,
    on our protocol and (where the run has one) the reference protocol's primary cross-domain set: each of its two
    flaws (vendor-shifted non-members, unmatched noise levels) shows as a difference between these rows."""
    status = protocol_status(ref)
    protocols = [q for q in ("ours", "reference") if status[q]["applicable"]]
    sets = {q: (PROTOCOLS[q][0], ref.cross_split if PROTOCOLS[q][1] == "cross" else PROTOCOLS[q][1]) for q in protocols}
    rows = []
    for matched in (False, True):
        noise = "matched" if matched else "reference"
        features = {n: reference_features(params, model, ref.sets[n].images, ref.sets[n].masks, matched,
                                          f"{arm} reference attack ({noise} noise levels) on {n}")
                    for n in sorted({n for pair_of_sets in sets.values() for n in pair_of_sets})}
        for q, (pos, neg) in sets.items():
            rows += [{"arm": arm, "protocol": q, "cross_set": ref.cross_split if q == "reference" else "", "primary": True,
                      "attack": "reference attack", "noise_levels": noise, "level": "all", "snr": math.nan, **r}
                     for r in reference_attack(params, features[pos], features[neg], ref.sets[pos].meta["patient"],
                                               ref.sets[neg].meta["patient"], f"{arm}/{q}/reference attack")]
    return rows


def membership(params: StudyParams, paths: RunPaths, ref: Reference, arms=None) -> Membership:
    """Errors of every arm's model on the training, holdout, test and (where the run has one) cross-domain slices, the
    attacks of every applicable protocol (the first generator seed's models), the reference's own attack
    (:func:`reference_attack_rows`) and, for an arm with an autoencoder, the autoencoder's own attack. The loss
    attack's per-slice scores of every generator seed go to ``metrics/units/privacy.csv`` (:func:`loss_units`)."""
    arms = registry.names() if arms is None else arms
    errors, context, seconds, extra_rows = {}, {}, {}, []
    for arm in arms:
        start = time.perf_counter()
        model, ckpt = generation.load_arm(params, paths, arm)
        errors[arm] = {name: model_errors(params, model, s.images, s.masks, f"{arm} errors on {name}") for name, s in ref.sets.items()}
        context[arm] = training_context(params, ref, arm, model, ckpt)
        if registry.get(arm).autoencoder:
            extra_rows += autoencoder_attack(params, ref, arm, model)
        extra_rows += reference_attack_rows(params, ref, arm, model)
        seconds[arm] = time.perf_counter() - start
    table, roc = attacks(params, ref, errors, context)
    table = pd.concat([table, pd.DataFrame(extra_rows, columns=None if extra_rows else table.columns)], ignore_index=True)
    units = [loss_units(params, ref, arm, None, errors[arm]) for arm in arms]
    for replica in generation.seed_replicas(params)[1:]:  # the other generator seeds: the claims' seed variance
        for arm in arms:
            model, _ = generation.load_arm(params, paths, arm, replica=replica)
            units.append(loss_units(params, ref, arm, None, {name: model_errors(params, model, s.images, s.masks, f"{replica.folder(arm)} errors on {name}")
                                                            for name, s in (("train", ref.train), ("holdout", ref.holdout))}, replica.seed))
    claims.save_units(paths, "privacy", units)
    return Membership(table, roc, errors, seconds, protocol_status(ref))


# -- the attack on the released synthetic set -------------------------------------------------------------------------
def released_pair(params: StudyParams, ref: Reference, target: np.ndarray, space: str, pos: str, neg: str,
                  name: str) -> list[dict]:
    """The released-set attack (:func:`cmrlib.metrics.privacy.released_scores`) of one set of real candidates, ``pos``
    (label 1) against ``neg``, in ``space``: ``pixel`` (``target``: the released images) or ``seg`` (``target``: their
    seg features), per slice and patient."""
    query = (lambda n: ref.sets[n].images) if space == "pixel" else ref.features
    scores = np.concatenate([mp.released_scores(query(pos), target), mp.released_scores(query(neg), target)])
    return score_rows(params, scores, *pair(ref.sets[pos].meta["patient"], ref.sets[neg].meta["patient"]), name)


def released(params: StudyParams, ref: Reference, images: dict[str, np.ndarray],
             features: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """The attack on each released synthetic set (``images``: arm -> synthetic images; ``features``: their seg
    features where already computed), in pixel and seg space:
    members vs holdout patients (``ours``: the privacy number the export gate and the paper lead with), and holdout vs
    test patients (``never seen``: nothing to find). The training images themselves as the released set
    (:data:`COPIER`) are the positive control: every member must be found. One row per (arm, protocol, space, unit)."""
    features = {**(features or {}), COPIER: ref.train_features}
    rows = []
    for arm, synthetic in {**images, COPIER: ref.train.images}.items():
        targets = {"pixel": synthetic, "seg": features[arm] if arm in features else ref.space(synthetic)}
        for protocol in ("ours", "never seen"):
            pos, neg, _ = PROTOCOLS[protocol]
            for space, target in targets.items():
                rows += [{"arm": arm, "protocol": protocol, "space": space, **r, "n_released": len(synthetic)}
                         for r in released_pair(params, ref, target, space, pos, neg, f"{arm}/{protocol}/{space}/released")]
    return pd.DataFrame(rows)


def released_units(params: StudyParams, ref: Reference, arm: str, step: int | None, synthetic: np.ndarray, seed: int = 0) -> pd.DataFrame:
    """The released-set attack's pixel-space score of every member and holdout patient (:func:`member_units`), per
    patient as the summary and the export gate read it."""
    return member_units(params, ref, "released_auc", arm, step,
                        {k: mp.released_scores(ref.sets[k].images, synthetic) for k in ("train", "holdout")}, seed, per_patient=True)


def released_attack(params: StudyParams, paths: RunPaths, ref: Reference, mem: Memorisation, arms=None) -> pd.DataFrame:
    """:func:`released` on every arm's synthetic set (the first generator seed's), and the per-slice scores of every
    generator seed's set to ``metrics/units/released.csv``."""
    arms = registry.names() if arms is None else arms
    table = released(params, ref, {arm: mem.images[arm] for arm in arms}, mem.features)
    units = [released_units(params, ref, arm, None, mem.images[arm]) for arm in arms]
    for replica in generation.seed_replicas(params)[1:]:
        units += [released_units(params, ref, arm, None, generation.load_samples(paths, replica.folder(arm), "synthetic")["images"],
                                 replica.seed) for arm in arms]
    claims.save_units(paths, "released", units)
    return table


def against_training_step(params: StudyParams, paths: RunPaths, ref: Reference, mia: Membership, arms=None) -> pd.DataFrame:
    """The compute axis: at every kept checkpoint of each arm, the membership AUC and TPR at 1% FPR of our protocol
    (loss attack, with intervals; the final checkpoint's errors are those of :func:`membership`) and the copy
    share and the released-set attack (pixel space, per patient) of that checkpoint's synthetic subset
    (:func:`cmrlib.generation.synthetic_by_step`; the final checkpoint's too, so that every step's attack meets a
    released set of the same size: the summary's ``released_auc`` reads the whole synthetic set). One row per (arm, step). The loss attack's and the released-set
    attack's scores at every checkpoint before the last go to ``metrics/units/privacy_steps.csv`` and
    ``released_steps.csv``."""
    arms = registry.names() if arms is None else arms
    rows, units, released_steps = [], [], []
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
                released_steps.append(released_units(params, ref, arm, step, subset["images"]))
            r, _ = attack(params, errors["train"], errors["holdout"], ref.train.meta["patient"], ref.holdout.meta["patient"],
                          f"{arm}/ours/step{step}", per_level=False)
            loss = next(x for x in r if x["attack"] == "loss" and x["level"] == "all" and x["unit"] == "slice")
            rel = next(x for x in released_pair(params, ref, subset["images"], "pixel", "train", "holdout", f"{arm}/step{step}/released")
                       if x["unit"] == "patient")
            copy = _pick(pd.DataFrame(nearest_rows(params, ref, f"{arm}/step{step}", nearest_to_train(params, ref, subset["images"]))),
                         metric="copy_share")
            rows.append({"arm": arm, "step": int(step), "mia_auc": loss["auc"], "mia_auc_low": loss["auc_low"], "mia_auc_high": loss["auc_high"],
                         "mia_tpr_at_1fpr": loss["tpr_at_1fpr"], "released_auc": rel["auc"], "released_auc_low": rel["auc_low"],
                         "released_auc_high": rel["auc_high"], "copy_share": copy.estimate, "copy_share_low": copy.low,
                         "copy_share_high": copy.high, "n_synthetic": len(subset["images"])})
    claims.save_units(paths, "privacy_steps", units)
    claims.save_units(paths, "released_steps", released_steps)
    return pd.DataFrame(rows)


# -- the summary and writing -----------------------------------------------------------------------------------------
def _pick(table: pd.DataFrame, **where) -> pd.Series:
    hit = table
    for k, v in where.items():
        hit = hit[hit[k] == v]
    if len(hit) != 1:
        raise KeyError(f"expected one row for {where}, found {len(hit)}")
    return hit.iloc[0]


SUMMARY_ATTACKS = (  # key -> (protocol, attack, unit, column) of the white-box rows the summary reads
    ("mia_auc", "ours", "loss", "slice", "auc"), ("mia_tpr_at_1fpr", "ours", "loss", "slice", "tpr_at_1fpr"),
    ("mia_auc_patient", "ours", "loss", "patient", "auc"), ("mia_auc_calibrated", "ours", "calibrated", "slice", "auc"),
    ("reference_mia_auc", "reference", "loss", "slice", "auc"), ("domain_shift_auc", "domain shift", "loss", "slice", "auc"),
    ("never_seen_auc", "never seen", "loss", "slice", "auc"))
SUMMARY_REFERENCE = (  # key -> (protocol, noise levels) of the reference's own attack (per slice) the summary reads
    ("reference_attack_auc", "reference", "reference"), ("reference_attack_auc_matched", "reference", "matched"),
    ("reference_attack_auc_ours", "ours", "reference"))
SUMMARY_RELEASED = (  # key -> (space, unit, column) of the released-set rows (protocol ours) the summary reads
    ("released_auc", "pixel", "patient", "auc"), ("released_tpr_at_1fpr", "pixel", "patient", "tpr_at_1fpr"),
    ("released_auc_slice", "pixel", "slice", "auc"), ("released_auc_seg", "seg", "patient", "auc"))


def summary(mem: Memorisation, mia: Membership, released_table: pd.DataFrame, arms=None) -> pd.DataFrame:
    """One record per arm with the keys the paper notebook and the export gate read (see ``metrics/privacy.json``):
    the attack on the released set first (``released_auc``: per patient, pixel space), the copy share and the DCR
    share, then the white-box attacks (``mia_auc``: the loss attack, the pre-registered primary); a protocol that is
    not applicable (``mia.protocols``) gives null values."""
    arms = registry.names() if arms is None else arms
    reference = mia.table[(mia.table["attack"] == "reference attack") & (mia.table["unit"] == "slice")]
    reference = reference if "noise_levels" in reference else reference.assign(noise_levels=None)
    records = []
    for arm in arms:
        rec = {"arm": arm}
        for key, space, unit, col in SUMMARY_RELEASED:
            r = _pick(released_table, arm=arm, protocol="ours", space=space, unit=unit)
            rec.update({key: r[col], f"{key}_low": r[f"{col}_low"], f"{key}_high": r[f"{col}_high"]})
        for key in ("copy_share", "dcr_train_share", "dcr_train_share_seg"):
            r = _pick(mem.rows, set=arm, metric=key)
            rec.update({key: r.estimate, f"{key}_low": r.low, f"{key}_high": r.high})
        for key, protocol, kind, unit, col in SUMMARY_ATTACKS:
            if not mia.protocols.get(protocol, {}).get("applicable", True):
                rec.update({key: math.nan, f"{key}_low": math.nan, f"{key}_high": math.nan})
                continue
            r = _pick(mia.table, arm=arm, protocol=protocol, attack=kind, unit=unit, level="all", primary=True)
            rec.update({key: r[col], f"{key}_low": r[f"{col}_low"], f"{key}_high": r[f"{col}_high"]})
        for key, protocol, noise in SUMMARY_REFERENCE:  # absent where the protocol is not applicable
            hit = reference[(reference.arm == arm) & (reference.protocol == protocol) & (reference.noise_levels == noise)]
            r = hit.iloc[0] if len(hit) else {}
            rec.update({key: r.get("auc", math.nan), f"{key}_low": r.get("auc_low", math.nan), f"{key}_high": r.get("auc_high", math.nan)})
        ours = _pick(mia.table, arm=arm, protocol="ours", attack="loss", unit="slice", level="all", primary=True)
        rec.update({"n_synthetic": int(len(mem.samples[arm])), "n_members": int(ours.n_positive), "n_nonmembers": int(ours.n_negative),
                    "n_member_patients": int(ours.n_positive_patients), "n_nonmember_patients": int(ours.n_negative_patients)})
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
    """{arm: {protocol: [{snr, noise_step, data_snr, auc, auc_low, auc_high}]}} of the slice-level loss attack at each
    noise level (the primary cross-domain set's rows)."""
    levels = table[(table["attack"] == "loss") & (table["level"] != "all") & table["primary"] & (table["unit"] == "slice")]
    return {arm: {protocol: d[["snr", "noise_step", "data_snr", "auc", "auc_low", "auc_high"]].to_dict(orient="records")
                  for protocol, d in a.groupby("protocol", sort=False)} for arm, a in levels.groupby("arm", sort=False)}


def settings(params: StudyParams, ref: Reference) -> dict:
    p = params.privacy
    return {"copy_flags": {"ratio_below": p.copy_ratio, "correlation_above": p.copy_correlation,
                           "lpips_below": p.copy_lpips, "lpips": metrics.lpips_status() or "available"},
            "mask_copy_dice_above": p.mask_copy_dice, "mia_snr": list(p.mia_snr), "mia_draws": p.mia_draws, "fpr": FPR,
            "primary_attacks": {"released set": "per patient, pixel space", "white box": "loss attack, per slice"},
            "controls": p.controls.model_dump(mode="json"),
            "protocols": protocol_status(ref),
            "feature_space": ref.space.description, "bootstrap": p.bootstrap, "confidence": p.confidence,
            "counts": {"train_slices": len(ref.train), "train_patients": int(ref.train.meta["patient"].nunique()),
                       "holdout_slices": len(ref.holdout), "holdout_patients": int(ref.holdout.meta["patient"].nunique()),
                       "unseen_slices": len(ref.unseen), "unseen_patients": int(ref.unseen.meta["patient"].nunique()),
                       "cross": {name: {"slices": len(s), "patients": int(s.meta["patient"].nunique())}
                                 for name, s in ref.cross.items()}}}


def save(params: StudyParams, paths: RunPaths, ref: Reference, mem: Memorisation, masks: pd.DataFrame, mia: Membership,
         released_table: pd.DataFrame, controls: pd.DataFrame, arms=None, budgets: pd.DataFrame | None = None) -> Path:
    """Write ``metrics/privacy.json`` and the tables ``privacy_summary``, ``privacy_released`` (the attack on the
    released sets), ``privacy_controls``, ``privacy_nearest`` (long), ``privacy_mia`` (every protocol, attack, unit and
    level), ``privacy_masks`` and ``privacy_pairs``."""
    arms = registry.names() if arms is None else arms
    table = summary(mem, mia, released_table, arms)
    for frame, name in ((table, "privacy_summary"), (released_table, "privacy_released"), (controls, "privacy_controls"),
                        (mem.rows, "privacy_nearest"), (mia.table, "privacy_mia"), (masks, "privacy_masks"),
                        (most_similar(mem), "privacy_pairs")):
        report.save_table(frame, paths.tables, name, index=False)
    budgets = pd.DataFrame() if budgets is None else budgets
    if len(budgets):
        report.save_table(budgets, paths.tables, "privacy_against_training_step", index=False)
    record = {
        "summary": table.to_dict(orient="records"),
        "mask_prior": mask_record(masks, params),
        "real_unseen": unseen_record(mem),
        "settings": settings(params, ref),
        "released": released_table.to_dict(orient="records"),
        "controls": controls.to_dict(orient="records"),
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
           "nearest_rows", "dcr_rows", "Memorisation", "memorisation", "most_similar", "mask_copies", "noise_step",
           "model_errors", "pair", "member_units", "epochs", "REFERENCE_STEPS", "REFERENCE_SNR", "reference_levels", "reference_features", "reference_attack",
           "reference_attack_rows", "permutation_p", "score_rows", "attack", "attacks", "data_power", "autoencoder_errors", "training_context", "autoencoder_attack",
           "released_pair", "released", "released_units", "released_attack", "COPIER", "SUMMARY_ATTACKS", "SUMMARY_REFERENCE", "SUMMARY_RELEASED", "Membership", "membership", "against_training_step", "summary", "unseen_record", "mask_record", "per_level_auc", "settings", "save"]
