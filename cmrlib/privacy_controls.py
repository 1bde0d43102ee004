"""The privacy axis's calibration controls: what the attacks give when the answer is known (``docs/protocol.md#privacy``).

Two controls train nothing and run on every arm (:mod:`cmrlib.privacy`): the ``never seen`` protocol (holdout against
test patients, two sets the generators never saw: nothing to find) and the :data:`~cmrlib.privacy.COPIER` (the training
images released as the synthetic set: every member must be found). The controls here train a copy of an arm
(``privacy.controls.run``; checkpoints ``checkpoints/<arm>_control-<name>/``, resumed like any training):

- ``canary`` (positive): ``privacy.controls.arm`` trained on the members with ``canary_patients`` of them repeated
  ``canary_repeats`` times; the canaries against the holdout patients must be found (AUC above 0.5, TPR at 1% FPR
  reported), and the other members are attacked beside them;
- ``no-signature`` (phantom runs only): the same arm trained on the same patients rendered without their appearance
  signature (``data.phantom.signature`` 0); members against holdout patients of that rendering, where a patient is its
  anatomy and its noise alone: near 0.5 if the attack found only the signature (on the default recipe it does not:
  the DDPM reproduces the slices themselves, ``docs/protocol.md#privacy``);
- ``autoencoder-elsewhere`` (the latent arms' confound): each arm with an autoencoder retrained with the autoencoder
  fitted on patients that are neither members nor holdout (the validation and test patients), its latent network on the
  members as before; its white-box and autoencoder attacks beside the arm's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from . import data, generation, params as params_mod, privacy, registry
from .data.preprocess import concat
from .data.records import SliceSet
from .data.splits import assign
from .parallel import map_jobs
from .params import StudyParams
from .paths import RunPaths
from .seeds import seed_for
from .stats import holm

NOT_PHANTOM = "not applicable: the run's data are not the phantom, whose per-patient signature this control removes"


def canaries(params: StudyParams, train: SliceSet) -> list[str]:
    """The training patients made canaries (a seeded choice of ``privacy.controls.canary_patients``)."""
    patients = sorted(train.meta["patient"].unique())
    n = params.privacy.controls.canary_patients
    if n > len(patients) - 2:
        raise ValueError(f"privacy.controls.canary_patients = {n}, but the run has {len(patients)} training patients: "
                         "choose fewer canaries, so that at least 2 members are not canaries (the calibrated attack "
                         "deals them to 2 folds)")
    rng = np.random.default_rng(seed_for(params.seed, "privacy", "canaries"))
    return sorted(rng.choice(patients, n, replace=False).tolist())


def with_canaries(params: StudyParams, train: SliceSet, chosen: list[str]) -> SliceSet:
    """The members' slices with each canary's slices ``canary_repeats`` times."""
    canary = train.select(train.meta["patient"].isin(chosen).to_numpy())
    return concat([train] + [canary] * (params.privacy.controls.canary_repeats - 1))


def without_signature(params: StudyParams, splits: dict) -> SliceSet | None:
    """The run's phantom rendered with ``data.phantom.signature`` 0 (same patients, anatomy, noise and splits), or
    None when a source is not the phantom."""
    if any(s.source != "phantom" for s in params.data.source_list().values()):
        return None
    plain = params_mod.validate(params_mod.overlay(params.model_dump(mode="json"), {"data": {"phantom": {"signature": 0.0}}}))
    slices = data.build_slices(plain)
    slices.meta["split"] = assign(slices.meta, splits)
    return slices


def _rows(control: str, arm: str, expected: str, rows: list[dict], **extra) -> list[dict]:
    return [{"control": control, "arm": arm, "expected": expected, **extra, **r} for r in rows]


def white_box(params: StudyParams, model, positive: SliceSet, negative: SliceSet, name: str) -> list[dict]:
    """The loss and calibrated attacks (aggregated over the levels) of ``model``, ``positive`` against ``negative``."""
    err = {k: privacy.model_errors(params, model, s.images, s.masks, f"{name} errors on {k}") for k, s in
           (("positive", positive), ("negative", negative))}
    rows, _ = privacy.attack(params, err["positive"], err["negative"], positive.meta["patient"], negative.meta["patient"], name,
                             per_level=False)
    return rows


@dataclass
class _Control:
    """One trained control: the copy of ``arm`` that control ``name`` trains (on ``train``; its autoencoder on
    ``autoencoder_train`` when given) and the rows it gives once trained (``attack(model)``). ``train`` None: the
    control does not apply to the run, nothing is trained, and ``attack(None)`` says why."""

    name: str
    arm: str
    train: SliceSet | None
    autoencoder_train: SliceSet | None
    attack: Callable[[object], list[dict]]


def _controls(params: StudyParams, slices: SliceSet, splits: dict, ref: privacy.Reference) -> list[_Control]:
    """The controls of ``privacy.controls.run``, in the order of their rows (``no-signature`` trains only on a phantom
    run; elsewhere its record trains nothing and says why)."""
    c = params.privacy.controls
    out = []
    if "canary" in c.run:
        chosen = canaries(params, ref.train)
        is_canary = ref.train.meta["patient"].isin(chosen).to_numpy()
        n_seen = len(ref.train) + (c.canary_repeats - 1) * int(is_canary.sum())

        def canary_rows(model) -> list[dict]:
            rows = []
            for members, keep, expected in (("canaries", is_canary, "found: AUC above 0.5"),
                                            ("other members", ~is_canary, "above 0.5 if the attack finds members seen once per epoch")):
                rows += _rows("canary", c.arm, expected, white_box(params, model, ref.train.select(keep), ref.holdout,
                                                                   f"{c.arm}/control-canary/{members}"),
                              members=members, epochs=privacy.epochs(params, c.arm, n_seen))
            return rows

        out.append(_Control("canary", c.arm, with_canaries(params, ref.train, chosen), None, canary_rows))
    plain = without_signature(params, splits) if "no-signature" in c.run else None
    if "no-signature" in c.run and plain is None:
        out.append(_Control("no-signature", c.arm, None, None, lambda _: [{"control": "no-signature", "arm": c.arm, "expected": NOT_PHANTOM}]))
    if plain is not None:
        train, holdout = plain.split("train"), plain.split("holdout")
        out.append(_Control("no-signature", c.arm, train, None, lambda model: _rows(
            "no-signature", c.arm, "near 0.5 if the attack found the signature alone (a patient is then its anatomy and its noise)",
            white_box(params, model, train, holdout, f"{c.arm}/control-no-signature"),
            members="members", epochs=privacy.epochs(params, c.arm, len(train)))))
    if "autoencoder-elsewhere" in c.run:
        others = slices.select(slices.meta["split"].isin(["val", "test"]).to_numpy())
        for arm in [a for a in registry.names() if registry.get(a).autoencoder]:
            def elsewhere_rows(model, arm=arm) -> list[dict]:
                return (_rows("autoencoder-elsewhere", arm, "the arm's own attack without the autoencoder's share",
                              white_box(params, model, ref.train, ref.holdout, f"{arm}/control-autoencoder-elsewhere"),
                              members="members", epochs=privacy.epochs(params, arm, len(ref.train)))
                        + _rows("autoencoder-elsewhere", arm, "near 0.5: the autoencoder never saw the members",
                                [r for r in privacy.autoencoder_attack(params, ref, arm, model) if r["protocol"] == "ours"],
                                members="members"))

            out.append(_Control("autoencoder-elsewhere", arm, ref.train, others, elsewhere_rows))
    return out


def trained(params: StudyParams, paths: RunPaths, slices: SliceSet, splits: dict, ref: privacy.Reference) -> pd.DataFrame:
    """Train (or resume) the controls of ``privacy.controls.run``, ``privacy.controls.workers`` at once (the longest
    first), and attack them; one row per (control, arm, attack set, attack, unit), with what a sound attack should give
    (``expected``) and the training's epochs."""
    c, e = params.privacy.controls, params.executor
    controls = _controls(params, slices, splits, ref)
    map_jobs(_train_control, [(k.name, k.arm, k.train, k.autoencoder_train) for k in controls if k.train is not None],
             c.workers, (params, paths), "privacy controls", engine=e.engine, address=e.address,
             cost=lambda job: _steps(params, job[1]))
    rows = []
    for k in controls:  # each trained one loaded as the attacks load every arm (its sampling weights)
        model = None if k.train is None else generation.load_arm(params, paths, k.arm, replica=generation.Replica(control=k.name))[0]
        rows += k.attack(model)
    return pd.DataFrame(rows)


def _steps(params: StudyParams, arm: str) -> int:
    """An arm's optimisation steps, its autoencoder's included: the controls' cost, so that the longest starts first
    (the LDM's, of two trainings, else it starts after a DDPM's and runs alone at the end)."""
    p = registry.get(arm).params(params)
    return p.train.steps + (p.autoencoder.train.steps if registry.get(arm).autoencoder else 0)


def _train_control(params: StudyParams, paths: RunPaths, job: tuple) -> None:
    """Train (or resume) one control's copy of an arm: a job of :func:`cmrlib.parallel.map_jobs`."""
    control, arm, train, autoencoder_train = job
    generation.train_arm(params, paths, arm, train, generation.Replica(control=control), autoencoder_train)


def untrained(mia: pd.DataFrame, released: pd.DataFrame) -> pd.DataFrame:
    """The controls that train nothing, from the privacy tables: every arm's ``never seen`` protocol (white-box and
    released-set attacks, and the autoencoder's own), and the :data:`~cmrlib.privacy.COPIER` released-set attack."""
    never = mia[(mia.protocol == "never seen") & (mia.level == "all")]
    rows = [{"control": "never seen", "expected": "near 0.5: neither set was trained on", "members": "holdout (as members) vs test",
             **{k: v for k, v in r.items() if k not in ("protocol", "cross_set", "primary", "level", "snr", "noise_step", "data_snr")}}
            for r in never.to_dict(orient="records")]
    for r in released.to_dict(orient="records"):
        if r["protocol"] == "never seen" and r["arm"] != privacy.COPIER:
            rows.append({"control": "never seen", "expected": "near 0.5: neither set was trained on",
                         "members": "holdout (as members) vs test", **_released(r)})
        elif r["protocol"] == "ours" and r["arm"] == privacy.COPIER:
            rows.append({"control": "copier", "expected": "every member found: TPR 1 at 1% FPR", "members": "members", **_released(r)})
    return pd.DataFrame(rows)


def _released(r: dict) -> dict:
    return {**{k: v for k, v in r.items() if k not in ("protocol", "space")}, "attack": f"released set ({r['space']})"}


def table(untrained_rows: pd.DataFrame, trained_rows: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Every control in one table. ``p_chance_holm``: the permutation p-values (attacks that fit nothing) Holm-adjusted
    within each control, whose rows are one family. ``passed``: a negative control's AUC is not told from chance
    (``p_chance_holm`` at least ``alpha``); a positive one's is, above 0.5 (the copier's also at TPR 1 at 1% FPR); NaN
    where the row has no permutation test (a fitted attack), or only reports. ``interval_contains_chance`` beside it."""
    out = pd.concat([untrained_rows, trained_rows], ignore_index=True)
    if out.empty:
        return out
    out["p_chance_holm"] = np.nan
    for _, rows in out.groupby("control").groups.items():
        out.loc[rows, "p_chance_holm"] = holm(out.loc[rows, "p_chance"].to_numpy(dtype=float))

    def passed(r) -> float:
        if math.isnan(r["p_chance_holm"]):
            return math.nan
        if r["expected"].startswith("near 0.5"):
            return float(r["p_chance_holm"] >= alpha)
        if r["expected"].startswith(("found", "every member")):
            copier = r["expected"].startswith("every member")
            return float(r["p_chance_holm"] < alpha and r["auc"] > 0.5 and (not copier or r["tpr_at_1fpr"] == 1))
        return math.nan

    out["passed"] = out.apply(passed, axis=1)
    out["interval_contains_chance"] = ((out["auc_low"] <= 0.5) & (0.5 <= out["auc_high"])).where(out["auc"].notna())
    first = ["control", "arm", "members", "attack", "unit", "expected", "passed", "auc", "auc_low", "auc_high", "p_chance",
             "p_chance_holm", "interval_contains_chance", "auc_from_chance", "tpr_at_1fpr", "tpr_at_1fpr_low", "tpr_at_1fpr_high"]
    return out[[c for c in first if c in out] + [c for c in out.columns if c not in first]]


__all__ = ["NOT_PHANTOM", "canaries", "with_canaries", "without_signature", "white_box", "trained", "untrained", "table"]
