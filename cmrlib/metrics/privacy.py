"""Privacy metrics: exact nearest neighbours, copy flags, distance to closest record and
membership-inference scores. Pure functions of arrays; :mod:`cmrlib.privacy` applies them to a run.

Conventions:

- images are compared as flattened vectors; a set is (N, ...) and is flattened to (N, D);
- nearest-neighbour search is exact: the query set is cut into chunks and each chunk's (chunk, M) score matrix is one
  matrix product (``|a|^2 + |b|^2 - 2 a.b`` for L2, a product of standardised rows for Pearson correlation), from
  which only the k best columns are kept; the k distances are then recomputed directly in float64, so cancellation
  in the expanded form cannot blur a near-copy;
- attack and closeness scores are oriented so that a *higher* score means "more likely a member" (or "closer to the
  training set"); an AUC of 0.5 is chance and 1 is a perfect attack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy.stats import rankdata

from ..labels import FOREGROUND

CHUNK = 2048  # query rows per matrix product: (2048 x 10,000) float32 scores = 80 MB


@dataclass(frozen=True)
class Neighbours:
    """The k nearest reference rows of every query row: ``value`` (N, k) (L2 distance ascending, or correlation /
    Dice descending) and ``index`` (N, k) into the reference set."""

    value: np.ndarray
    index: np.ndarray


def _flat(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    return t.reshape(len(t), -1)


def _top_k(query: torch.Tensor, reference: torch.Tensor, k: int, score: Callable[[torch.Tensor, slice], torch.Tensor],
           largest: bool, chunk: int, refine: Callable[[slice, torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best reference columns per query row, a chunk of rows scored by ``score(q_chunk, rows)``; ``refine(rows,
    index)`` may recompute the kept values exactly (they are then re-sorted)."""
    if len(reference) < k:
        raise ValueError(f"nearest-neighbour search for k={k} needs at least {k} reference rows, got {len(reference)}")
    values, indices = [], []
    for start in range(0, len(query), chunk):
        rows = slice(start, start + chunk)
        v, i = torch.topk(score(query[rows], rows), k, dim=1, largest=largest)
        if refine is not None:
            v = refine(rows, i)
            order = torch.argsort(v, dim=1, descending=largest, stable=True)
            v, i = torch.gather(v, 1, order), torch.gather(i, 1, order)
        values.append(v)
        indices.append(i)
    if not values:
        return torch.zeros((0, k), dtype=torch.float64), torch.zeros((0, k), dtype=torch.long)
    return torch.cat(values), torch.cat(indices)


def nearest_l2(query, reference, k: int = 2, chunk: int = CHUNK) -> Neighbours:
    """Exact k nearest neighbours by Euclidean distance; ``value`` holds the distances, ascending."""
    q, r = _flat(query), _flat(reference)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"query rows have {q.shape[1]} values, reference rows {r.shape[1]}")
    r_sq = r.pow(2).sum(1)

    def exact(rows: slice, index: torch.Tensor) -> torch.Tensor:  # float64 distances of the kept pairs
        return (q[rows, None].double() - r[index].double()).norm(dim=2)

    value, index = _top_k(q, r, k, lambda qc, _: r_sq[None, :] - 2 * qc @ r.T, largest=False, chunk=chunk, refine=exact)
    return Neighbours(value.numpy(), index.numpy())  # |q|^2 is constant per row: left out of the ranking


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Rows centred and scaled to unit norm (a constant row becomes zeros: correlation 0 with everything)."""
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def nearest_correlation(query, reference, k: int = 1, chunk: int = CHUNK) -> Neighbours:
    """The k reference rows of highest Pearson correlation with each query row; ``value`` descending."""
    q, r = _standardise(_flat(query)), _standardise(_flat(reference))
    value, index = _top_k(q, r, k, lambda qc, _: qc @ r.T, largest=True, chunk=chunk)
    return Neighbours(value.clamp(-1, 1).double().numpy(), index.numpy())


def _mask_channels(masks, keep: torch.Tensor) -> torch.Tensor:
    """(N, H, W) label maps -> (N, C*P) float one-hot of the foreground structures (LV, MYO, RV) at the P pixel
    positions ``keep`` (those where some map of either set has foreground: the others add nothing to any Dice)."""
    m = torch.as_tensor(np.asarray(masks)).reshape(len(masks), -1)[:, keep]
    return torch.stack([(m == label) for label in FOREGROUND], 1).reshape(len(m), -1).float()


def nearest_mask_dice(query_masks, reference_masks, k: int = 1, chunk: int = CHUNK) -> Neighbours:
    """The reference label maps of highest Dice with each query map; ``value`` descending.

    Dice of two label maps here is ``2 sum_c |A_c & B_c| / sum_c (|A_c| + |B_c|)`` over the foreground structures c
    (label-matched, pooled): 1 only when every structure coincides. A query without foreground gets NaN (an empty map
    identifies nobody) and index -1."""
    keep = torch.as_tensor(np.concatenate([np.asarray(query_masks).reshape(len(query_masks), -1),
                                           np.asarray(reference_masks).reshape(len(reference_masks), -1)]).any(0))
    q, r = _mask_channels(query_masks, keep), _mask_channels(reference_masks, keep)
    q_size, r_size = q.sum(1), r.sum(1)

    def dice(qc: torch.Tensor, rows: slice) -> torch.Tensor:
        denominator = q_size[rows, None] + r_size[None, :]
        return torch.where(denominator > 0, 2 * (qc @ r.T) / denominator.clamp_min(1), torch.zeros(()))

    value, index = _top_k(q, r, k, dice, largest=True, chunk=chunk)
    value, index = value.double().numpy(), index.numpy()
    empty = (q_size == 0).numpy()
    value[empty], index[empty] = np.nan, -1
    return Neighbours(value, index)


def distance_ratio(neighbours: Neighbours) -> np.ndarray:
    """Nearest / second-nearest L2 distance (the reference's memorisation ratio): near 0 when a sample sits on one
    training image far closer than on any other. 0/0 (two exact duplicates) counts as 0."""
    d = neighbours.value
    if d.shape[1] < 2:
        raise ValueError("the distance ratio needs k >= 2 neighbours")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d[:, 1] > 0, d[:, 0] / d[:, 1], 0.0)


def copy_flags(ratio: np.ndarray, correlation: np.ndarray, *, max_ratio: float, min_correlation: float,
               lpips: np.ndarray | None = None, max_lpips: float | None = None) -> dict[str, np.ndarray]:
    """Boolean flags per sample: ``ratio`` (nearest/second-nearest < max_ratio), ``correlation`` (max Pearson >
    min_correlation), ``lpips`` (LPIPS to the nearest < max_lpips; only when LPIPS values are given, never a stand-in
    value), and ``copy``: any of them."""
    flags = {"ratio": np.asarray(ratio) < max_ratio, "correlation": np.asarray(correlation) > min_correlation}
    if lpips is not None:
        if max_lpips is None:
            raise ValueError("LPIPS values given without a max_lpips threshold")
        flags["lpips"] = np.asarray(lpips) < max_lpips
    flags["copy"] = np.logical_or.reduce(list(flags.values()))
    return flags


# -- scores of two groups: AUC, TPR at a fixed FPR -------------------------------------------------------------------
def _check_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    if scores.shape != labels.shape:
        raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
    return scores, labels


def _undefined(scores: np.ndarray, labels: np.ndarray) -> bool:
    """A class is empty or a score is missing: the statistic is NaN."""
    return bool(labels.all() or not labels.any() or np.isnan(scores).any())


def auc(scores, labels) -> float:
    """ROC AUC of ``scores`` (higher: positive) for boolean ``labels``: P(score_pos > score_neg) + P(tie) / 2, the
    Mann-Whitney U statistic over n_pos * n_neg. NaN when a class is empty or a score is NaN."""
    scores, labels = _check_labels(scores, labels)
    if _undefined(scores, labels):
        return float("nan")
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def tpr_at_fpr(scores, labels, fpr: float = 0.01) -> float:
    """The highest true-positive rate of a threshold attack whose false-positive rate is at most ``fpr``
    (Carlini et al. 2022): positives scoring strictly above the (floor(fpr * n_neg) + 1)-th highest negative score."""
    scores, labels = _check_labels(scores, labels)
    if _undefined(scores, labels):
        return float("nan")
    pos, neg = scores[labels], np.sort(scores[~labels])[::-1]
    allowed = int(np.floor(fpr * len(neg) + 1e-9))
    if allowed >= len(neg):
        return 1.0
    return float(np.mean(pos > neg[allowed]))


def roc_points(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) of the ROC curve (sklearn, all thresholds kept)."""
    from sklearn.metrics import roc_curve

    scores, labels = _check_labels(scores, labels)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return fpr, tpr


def dcr_closer_to_train(synthetic, train, holdout, seed: int, n_subsamples: int = 5) -> np.ndarray:
    """SDMetrics' DCROverfittingProtection, per synthetic sample: 1 when its nearest training row is closer than its
    nearest holdout row, 0 when farther, 1/2 on a tie. The larger of the two reference sets is subsampled (seeded) to
    the size of the smaller, so that neither is closer by being bigger; the outcome is averaged over ``n_subsamples``
    such draws (one when the sets are of equal size). The mean is the share of synthetic samples closer to the training
    set: 1/2 for a generator that learnt the distribution (training and holdout rows are exchangeable to it), 1 for one
    that copies its training rows when the sets are of equal size (a copy of a training row left out of a subsample
    counts as an ordinary sample, so a copier of a training set twice the holdout's scores about 3/4); read
    two-sided, by its distance from 1/2. Unlike the closeness of synthetic to holdout distances, a noisy or
    off-manifold generator is far from both sets alike and scores 1/2, so a fidelity failure does not read as privacy."""
    train, holdout = np.asarray(train), np.asarray(holdout)
    n = min(len(train), len(holdout))
    rng = np.random.default_rng(seed)
    draws = 1 if len(train) == len(holdout) else n_subsamples
    total = np.zeros(len(synthetic))
    for _ in range(draws):
        t, h = (x[np.sort(rng.choice(len(x), n, replace=False))] if len(x) > n else x for x in (train, holdout))
        d_train, d_holdout = (nearest_l2(synthetic, x, k=1).value[:, 0] for x in (t, h))
        total += np.where(d_train < d_holdout, 1.0, np.where(d_train == d_holdout, 0.5, 0.0))
    return total / draws


def released_scores(real, released) -> np.ndarray:
    """The attack on a released synthetic set (the black-box attack of Chen et al. 2020, GAN-Leaks, and Hayes et al.
    2019): each real image's score is minus its L2 distance to the nearest released image, so a candidate whose images
    the set reproduces scores high. It needs nothing of the model, only the released images and the candidate's."""
    return -nearest_l2(real, released, k=1).value[:, 0]


def per_patient(scores, groups, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slice scores -> one score per patient (the mean of its slices), with its label: the attacker's question is
    whether a *patient* trained the generator. Returns (scores, labels, patients); a patient with both labels is an
    error."""
    scores, labels, groups = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool), np.asarray(groups).astype(str)
    patients, index = np.unique(groups, return_inverse=True)
    mixed = np.bincount(index, labels) % np.bincount(index) != 0
    if mixed.any():
        raise ValueError(f"patient {patients[mixed][0]} has member and non-member slices: the sets overlap")
    means = np.bincount(index, scores) / np.bincount(index)
    return means, np.bincount(index, labels) > 0, patients


# -- membership inference ------------------------------------------------------------------------------------------
MID_BAND = (1 / 16, 1 / 4)  # cycles per pixel: the mid frequencies of the reference's band-pass error


def band_error(residual, band: tuple[float, float] = MID_BAND) -> np.ndarray:
    """(N,) mean power of each residual image (N, H, W) in the radial frequency band ``band`` (cycles per pixel):
    the reference study's band-pass error, which ignores the smooth offsets and the pixel noise a one-step estimate
    leaves, and keeps the structure a memorising model restores."""
    r = np.asarray(residual, dtype=np.float64)
    fy, fx = np.meshgrid(np.fft.fftfreq(r.shape[1]), np.fft.fftfreq(r.shape[2]), indexing="ij")
    keep = (np.hypot(fy, fx) >= band[0]) & (np.hypot(fy, fx) < band[1])
    power = np.abs(np.fft.fft2(r)) ** 2 / (r.shape[1] * r.shape[2])
    return (power * keep).sum((1, 2)) / keep.sum()



def loss_scores(errors: np.ndarray) -> np.ndarray:
    """Loss-threshold attack (Yeom et al. 2018) on errors (N,) or (N, L levels): minus the mean log error over the
    levels (a geometric mean, so every level counts whatever its scale); low error -> high membership score."""
    e = np.asarray(errors, dtype=np.float64)
    e = e[:, None] if e.ndim == 1 else e
    return -np.log(np.clip(e, 1e-12, None)).mean(1)


def patient_folds(groups, labels, seed: int, n_folds: int = 2) -> np.ndarray:
    """Fold number per row: patients (``groups``) shuffled and dealt to folds separately among members and
    non-members, so every fold holds both classes and no patient is in two folds."""
    groups, labels = np.asarray(groups), np.asarray(labels).astype(bool)
    rng = np.random.default_rng(seed)
    fold = np.full(len(groups), -1)
    for cls in (True, False):
        patients = np.unique(groups[labels == cls])
        if len(patients) < n_folds:
            raise ValueError(f"the calibrated attack needs at least {n_folds} {'member' if cls else 'non-member'} "
                             f"patients (one per fold), got {len(patients)}")
        for i, patient in enumerate(rng.permutation(patients)):
            fold[(groups == patient) & (labels == cls)] = i % n_folds
    if len(set(zip(groups.tolist(), fold.tolist()))) != len(np.unique(groups)):
        raise ValueError("a patient is both a member and a non-member: the sets overlap")
    return fold


class LogisticAttack:
    """L2-penalised logistic regression on standardised features (the objective of sklearn's ``LogisticRegression``
    with ``C``, intercept unpenalised), fitted by Newton's method: a few features and a few hundred rows take well under
    a millisecond."""

    classes_ = np.array([False, True])

    def __init__(self, C: float = 1.0, max_iter: int = 50, tol: float = 1e-10):
        self.C, self.max_iter, self.tol = C, max_iter, tol

    def _design(self, x: np.ndarray) -> np.ndarray:
        return np.column_stack([np.ones(len(x)), (x - self.mean_) / self.scale_])

    def fit(self, x, y) -> "LogisticAttack":
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        self.mean_, self.scale_ = x.mean(0), x.std(0)
        self.scale_[self.scale_ == 0] = 1.0
        X = self._design(x)
        penalty = np.eye(X.shape[1]) / self.C
        penalty[0, 0] = 0.0
        w = np.zeros(X.shape[1])
        for _ in range(self.max_iter):
            prob = 1 / (1 + np.exp(-X @ w))
            step = np.linalg.solve(X.T @ (X * (prob * (1 - prob))[:, None]) + penalty + 1e-12 * np.eye(len(w)),
                                   X.T @ (prob - y) + penalty @ w)
            w -= step
            if np.abs(step).max() < self.tol:
                break
        self.coef_ = w
        return self

    def predict_proba(self, x) -> np.ndarray:
        prob = 1 / (1 + np.exp(-self._design(np.asarray(x, dtype=np.float64)) @ self.coef_))
        return np.column_stack([1 - prob, prob])


def default_attack_model() -> LogisticAttack:
    return LogisticAttack(C=1.0)


def calibrated_scores(errors: np.ndarray, labels, groups, seed: int, n_folds: int = 2,
                      make_model: Callable[[], object] = default_attack_model) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated attack: a classifier on the per-level log errors (N, L), cross-fitted over patients: fitted on the
    other folds' patients, it scores each fold's slices, so every slice is scored once by a model that never saw its
    patient. Returns (scores: the member probability, folds)."""
    x = np.log(np.clip(np.asarray(errors, dtype=np.float64), 1e-12, None))
    x = x[:, None] if x.ndim == 1 else x
    labels = np.asarray(labels).astype(bool)
    folds = patient_folds(groups, labels, seed, n_folds)
    scores = np.full(len(x), np.nan)
    for f in range(n_folds):
        model = make_model()
        model.fit(x[folds != f], labels[folds != f])
        scores[folds == f] = model.predict_proba(x[folds == f])[:, list(model.classes_).index(True)]
    return scores, folds


__all__ = ["CHUNK", "Neighbours", "nearest_l2", "nearest_correlation", "nearest_mask_dice", "distance_ratio", "copy_flags",
           "auc", "tpr_at_fpr", "roc_points", "dcr_closer_to_train", "released_scores", "per_patient", "MID_BAND", "band_error", "loss_scores", "patient_folds", "LogisticAttack", "default_attack_model",
           "calibrated_scores"]
