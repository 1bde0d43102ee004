"""The paper, regenerated from a run's metrics files: what the notebook ``90_paper`` calls (the verdict rules:
``docs/protocol.md#verdicts``).

Reads ``metrics/fidelity.json``, ``metrics/utility.json`` and ``metrics/privacy.json`` (and, for the sample figure,
``samples/<arm>/paired.npz`` with the real test images of ``data/``). Writes ``paper/`` of the run:

- ``paper/tables/``: the trade-off table and the verdicts on the reference study's claims (CSV, Markdown, LaTeX);
- ``paper/figures/``: the trade-off, samples, utility and privacy figures (PNG, PDF);
- ``paper/numbers.json`` and ``paper/numbers.tex`` (LaTeX macros): every number the text quotes, and nothing else;
- ``paper/paper.md`` and ``paper/main.tex``: the manuscript, rendered from one list of blocks whose numbers all come
  from the numbers file (methods from the run's params, results from the metrics).

With ``paper.publish_dir`` set (the default run: ``paper/`` of the repository) the runner copies the folder there
once every stage is done (:func:`cmrlib.study.publish`).

Verdicts on claims come from paired differences between arms on the same units (:mod:`cmrlib.claims`); the trade-off
table shows each arm's own estimate and interval beside them.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from . import registry
from .claims import fraction
from .data import terms
from .data.preprocess import pixel_size_mm
from .jsonio import write_json
from .params import StudyParams
from .privacy import REFERENCE_TEST_SHARE
from .stats import format_interval
from .paths import RunPaths

STAGE = "90_paper"
MADE_BY = {"fidelity": "30_fidelity", "utility": "40_utility", "privacy": "50_privacy"}

CONDITIONING_WORDS = {"concat": "concatenation", "spade": "SPADE normalisation", "controlnet": "a ControlNet"}
MASK_SOURCE_WORDS = {"stage1": "stage-1", "all": "all", "oracle": "oracle"}
CONDITIONING_ABLATION_RUN = "reference_conditioning"  # the run of params/reference_conditioning.yaml, beside this one

# the trade-off's metrics: (axis, key, label, better), better = "higher", "lower" or "nearer 0.5"
AXES = [
    ("fidelity", "mask_dice", "mask faithfulness (mean Dice)", "higher"),
    ("fidelity", "fid_seg", "FID (seg space)", "lower"),
    ("utility", "utility_dice", "Dice, real + synthetic, fewest real patients", "higher"),
    ("utility", "utility_delta", "change vs real only (Dice)", "higher"),
    ("utility", "cross_dice", "Dice, real + synthetic, cross-domain", "higher"),
    ("privacy", "released_auc", "released-set attack AUC (per patient)", "nearer 0.5"),
    ("privacy", "mia_auc", "membership AUC (white box, loss attack)", "nearer 0.5"),
    ("privacy", "copy_share", "share flagged as copies", "lower"),
    ("privacy", "dcr_train_share", "DCR share closer to training (0.5: no overfitting)", "nearer 0.5"),
]


# -- reading ---------------------------------------------------------------------------------------------------------
def load_results(paths: RunPaths) -> dict[str, dict]:
    """The three metrics files of the run; a missing one names the notebook that writes it."""
    out = {}
    for axis, notebook in MADE_BY.items():
        path = paths.metrics / f"{axis}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: it is written by the notebook {notebook}; run the study first")
        out[axis] = json.loads(path.read_text())
    return out


def _num(value) -> float:
    return math.nan if value is None else float(value)


def _utility_rows(utility: dict) -> pd.DataFrame:
    table = pd.DataFrame(utility["summary"])
    for col in ("dice_mean", "dice_mean_low", "dice_mean_high", "delta_vs_real", "delta_low", "delta_high", "p_holm"):
        if col not in table:
            table[col] = math.nan
        table[col] = pd.to_numeric(table[col], errors="coerce")
    return table


def smallest_n(utility: dict) -> int:
    """The fewest real patients of the real + synthetic regimes (the limited-data setting of the claims)."""
    t = _utility_rows(utility)
    return int(t.loc[t.regime == "real+synthetic", "n_real_patients"].min())


def cross_sets(utility: dict) -> list[str]:
    """The utility axis's cross-domain evaluation sets (``cross_<domain>``, in the order of ``data.cross_domains``);
    empty for a single-domain run."""
    return [s for s in _utility_rows(utility).eval_set.unique() if s != "test"]


def _reference_status(privacy: dict) -> dict:
    """The reference privacy protocol's status in the privacy settings (``cmrlib.privacy.protocol_status``)."""
    return privacy.get("settings", {}).get("protocols", {}).get("reference", {})


def reference_protocol_applies(privacy: dict) -> bool:
    """Whether the run could serve the reference privacy protocol (it needs a cross-domain set; privacy settings)."""
    return bool(_reference_status(privacy).get("applicable", True))


def trade_off(results: dict[str, dict], arms=None) -> pd.DataFrame:
    """Long table: arm, axis, metric, label, better, estimate, low, high (NaN where the metric has no interval).
    Utility rows add the real-only baseline as arm ``real only``."""
    arms = registry.names() if arms is None else arms
    fid = {(r["set"], r["metric"]): r for r in results["fidelity"]["metrics"]}
    util = _utility_rows(results["utility"])
    n = smallest_n(results["utility"])
    crosses = cross_sets(results["utility"])
    privacy = {r["arm"]: r for r in results["privacy"]["summary"]}
    labels = {key: (axis, label, better) for axis, key, label, better in AXES}
    rows = []

    def add(arm, key, estimate, low=math.nan, high=math.nan):
        axis, label, better = labels[key]
        rows.append({"arm": arm, "axis": axis, "metric": key, "label": label, "better": better,
                     "estimate": _num(estimate), "low": _num(low), "high": _num(high)})

    def utility_row(regime, arm, eval_set):
        sel = util[(util.regime == regime) & (util.arm == arm) & (util.n_real_patients == n) & (util.eval_set == eval_set)]
        return sel.iloc[0] if len(sel) else None

    for arm in list(arms) + ["real only"]:
        if arm in arms:
            r = fid.get((arm, "dice_mean"))
            if r:
                add(arm, "mask_dice", r["estimate"], r["low"], r["high"])
            fid_row = fid.get((arm, "fid"))
            if fid_row:
                add(arm, "fid_seg", fid_row["estimate"])
        regime, name = ("real", "none") if arm == "real only" else ("real+synthetic", arm)
        u = utility_row(regime, name, "test")
        if u is not None:
            add(arm, "utility_dice", u.dice_mean, u.dice_mean_low, u.dice_mean_high)
            if arm in arms:
                add(arm, "utility_delta", u.delta_vs_real, u.delta_low, u.delta_high)
        if crosses:
            c = utility_row(regime, name, crosses[0])
            if c is not None:
                add(arm, "cross_dice", c.dice_mean, c.dice_mean_low, c.dice_mean_high)
        p = privacy.get(arm)
        if p:
            for key in ("released_auc", "mia_auc", "copy_share", "dcr_train_share"):
                add(arm, key, p.get(key), p.get(f"{key}_low"), p.get(f"{key}_high"))
    return pd.DataFrame(rows)


BUDGET_METRICS = {"mask_dice": ("fidelity", "dice_mean"), "utility_dice": ("utility", "dice_mean"), "mia_auc": ("privacy", "mia_auc"),
                  "released_auc": ("privacy", "released_auc"), "copy_share": ("privacy", "copy_share")}


def budget_curves(results: dict[str, dict], params: StudyParams) -> pd.DataFrame:
    """Each axis at every kept checkpoint (the compute axis), one row per (arm, step): ``fraction`` of the arm's step
    budget, ``train_elapsed_s``, and per metric of :data:`BUDGET_METRICS` its estimate with ``_low`` / ``_high`` where
    the axis notebook gave an interval. Read from the ``*_against_training_step`` records of the metrics files."""
    fid = results["fidelity"].get("quality_against_training_step", [])
    frame = pd.DataFrame(fid)
    if frame.empty:
        return pd.DataFrame(columns=["arm", "step", "fraction", "train_elapsed_s", *BUDGET_METRICS])
    keep = ["arm", "step"] + [c for c in ("train_elapsed_s", "fid_seg") if c in frame]
    curves = frame[keep].copy()
    for name, (axis, key) in BUDGET_METRICS.items():
        source = pd.DataFrame(results[axis].get("against_training_step", []) if axis != "fidelity" else fid)
        if source.empty or key not in source:
            continue
        cols = {key: name, f"{key}_low": f"{name}_low", f"{key}_high": f"{name}_high"}
        part = source[["arm", "step", *[c for c in cols if c in source]]].rename(columns=cols)
        curves = curves.merge(part, on=["arm", "step"], how="left")
    curves["fraction"] = [fraction(params, r.arm, r.step) for r in curves.itertuples()]
    return curves.sort_values(["fraction", "arm"]).reset_index(drop=True)


# -- numbers ---------------------------------------------------------------------------------------------------------
def fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _macro(name: str) -> str:
    words = re.split(r"[^A-Za-z0-9]+", name)
    digits = dict(zip("0123456789", ["Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine"]))
    return "".join(digits.get(ch, ch) for ch in "".join(w[:1].upper() + w[1:] for w in words if w))


def numbers(params: StudyParams, results: dict[str, dict], table: pd.DataFrame, claims: pd.DataFrame,
            by_budget: pd.DataFrame | None = None, ablation: pd.DataFrame | None = None) -> dict[str, str]:
    """Every number the manuscript quotes, formatted as it is printed (name -> text); ``claims``: the verdicts at the
    whole budget, ``by_budget``: at every fraction of it (:func:`cmrlib.claims.verdicts`); ``ablation``: the
    conditioning ablation (:func:`conditioning_ablation`)."""
    d, g = params.data, params.generators
    out = {
        "image_size": str(d.image_size), "spacing_mm": fmt(d.spacing_mm, 1), "crop_mm": fmt(d.crop_mm, 0),
        "pixel_mm": fmt(pixel_size_mm(d), 2), "n_train": str(d.n_train_patients),
        "n_holdout": str(d.n_holdout_patients), "n_val": str(d.n_val_patients),
        "n_test": str(results["fidelity"]["counts"]["test_patients"]), "n_synthetic": str(g.n_synthetic),
        "seed": str(params.seed), "n_train_slices": str(results["fidelity"]["counts"]["train_slices"]),
        "n_test_slices": str(results["fidelity"]["counts"]["test_slices"]),
        "n_real_smallest": str(smallest_n(results["utility"])), "utility_steps": str(params.utility.segmenter.steps),
        "segmenter_steps": str(params.fidelity.segmenter.steps), "confidence": f"{params.fidelity.confidence:.0%}".rstrip("%"),
        "mask_prior_steps": str(g.mask_prior.train.steps), "mask_prior_sampler_steps": str(g.mask_prior.sample.steps),
        "ae_steps": str(g.ldm.autoencoder.train.steps), "n_snr": str(len(params.privacy.mia_snr)),
        "ddpm_prediction": {"epsilon": "noise", "v_prediction": "velocity"}[g.ddpm.schedule.prediction_type] + " prediction",
        "mia_draws": str(params.privacy.mia_draws), "max_copy_share": fmt(params.export.max_copy_share, 2),
        "max_released_auc": fmt(params.export.max_released_auc, 2), "chance": "0.5",
        "reference_fit_percent": f"{(1 - REFERENCE_TEST_SHARE) * 100:.0f}",
        "n_cross_sets": str(len(cross_sets(results["utility"]))),
        "first_cross_set": next(iter(cross_sets(results["utility"])), "none").removeprefix("cross_"),
        "reference_protocol": "applicable" if reference_protocol_applies(results["privacy"]) else "not applicable",
        "reference_protocol_reason": str(_reference_status(results["privacy"]).get("reason") or "").removeprefix(
            "not applicable: "),
        "alpha": fmt(params.paper.alpha, 2), "claims_bootstrap": str(params.paper.bootstrap),
        "margin_mask_dice": fmt(params.paper.margins.mask_dice, 3), "margin_utility_dice": fmt(params.paper.margins.utility_dice, 3),
        "margin_mia_auc": fmt(params.paper.margins.mia_auc, 3), "margin_released_auc": fmt(params.paper.margins.released_auc, 3),
        "n_utility_seeds": str(len(params.utility.seeds)),
        "n_generator_seeds": str(params.generators.n_seeds),
        "utility_seeds": ", ".join(map(str, params.utility.seeds)),
        "generator_seeds": ", ".join(map(str, range(params.generators.n_seeds))),
        "params_digest": params.digest(),
        **({"data_credit": credit} if (credit := terms.figure_credit(params.data)) else {}),
    }
    for arm in registry.names():
        p = registry.get(arm).params(params)
        out[f"{arm}_train_steps"] = str(p.train.steps)
        out[f"{arm}_batch"] = str(p.train.batch_size)
        out[f"{arm}_sampler_steps"] = str(p.sample.steps)
    for r in table.itertuples():
        name = f"{r.arm.replace(' ', '_')}_{r.metric}"
        out[name] = fmt(r.estimate)
        if np.isfinite(r.low):
            out[f"{name}_low"], out[f"{name}_high"] = fmt(r.low), fmt(r.high)
    for r in claims.itertuples():
        out[f"claim_{r.key}"] = r.verdict
    if by_budget is not None:
        for r in by_budget.itertuples():
            percent = f"{r.fraction * 100:.0f}"
            out[f"budget_{percent}pct"] = percent
            out[f"budget_{percent}pct_{r.key}"] = r.verdict
    privacy = {r["arm"]: r for r in results["privacy"]["summary"]}
    for arm, r in privacy.items():
        out[f"{arm}_reference_mia_auc"] = fmt(_num(r.get("reference_mia_auc")))
        out[f"{arm}_domain_shift_auc"] = fmt(_num(r.get("domain_shift_auc")))
        out[f"{arm}_mia_tpr"] = fmt(_num(r.get("mia_tpr_at_1fpr")))
        out[f"{arm}_released_tpr"] = fmt(_num(r.get("released_tpr_at_1fpr")))
        out[f"{arm}_never_seen_auc"] = fmt(_num(r.get("never_seen_auc")))
        for key in ("reference_attack_auc", "reference_attack_auc_matched", "reference_attack_auc_ours"):
            out[f"{arm}_{key}"] = fmt(_num(r.get(key)))
    real = {r["metric"]: r for r in results["fidelity"]["metrics"] if r["set"] == "real"}
    if "dice_mean" in real:
        out["real_mask_dice"] = fmt(real["dice_mean"]["estimate"])
    if "fid" in real:
        out["real_fid_seg"] = fmt(real["fid"]["estimate"])
    stage1 = results["fidelity"].get("stage1_masks") or {}
    if stage1:
        out |= {"mask_filter": stage1["mask_filter"], "stage1_valid": f"{stage1['conditioning_valid']:.0%}",
                "stage1_drawn_valid": f"{stage1['drawn_valid']:.0%}", "real_masks_valid": f"{stage1['real_valid']:.0%}",
                "stage1_draws": str(stage1["drawn"]), "stage1_n": str(stage1["n"])}
    for r in results["utility"].get("against_mask_source", []):
        name = f"{r['arm']}_masks_{r['mask_source'].replace('-', '')}_delta"
        out[name], out[f"{name}_low"], out[f"{name}_high"] = fmt(r["delta_vs_real"]), fmt(r["delta_low"]), fmt(r["delta_high"])
    for arm in registry.names():
        out[f"{arm}_conditioning"] = registry.get(arm).params(params).conditioning
    if ablation is not None:
        out["conditioning_ablation_runs"] = str(ablation.index.get_level_values(0).nunique() if "run" in ablation.index.names else 1)
    seg = results["fidelity"].get("segmenter", {})
    out["segmenter_stopping"] = (f"the checkpoint of best validation Dice used, {fmt(seg['val_dice'])} at step "
                                 f"{seg['chosen_step']}" if seg.get("val_dice") is not None else "its last weights used")
    chosen = results["utility"].get("segmenter", {}).get("chosen_on")
    out["utility_stopping"] = ("the checkpoint of best validation Dice" if chosen == "val" else "the last weights")
    for r in results["utility"].get("against_segmenter_budget", []):
        if r["regime"] == "real+synthetic":
            name = f"segmenter_budget_{r['budget_fraction'] * 100:g}pct_{r['arm']}_delta".replace(".", "_")
            out[name], out[f"{name}_low"], out[f"{name}_high"] = fmt(r["delta_vs_real"]), fmt(r["delta_low"]), fmt(r["delta_high"])
    return out


def save_numbers(values: dict[str, str], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    tex = "\n".join(f"\\newcommand{{\\num{_macro(k)}}}{{{v}}}" for k, v in values.items())
    (folder / "numbers.tex").write_text("% every number the paper quotes (written by 90_paper)\n" + tex + "\n")
    return [write_json(folder / "numbers.json", values), folder / "numbers.tex"]


# -- the manuscript --------------------------------------------------------------------------------------------------
def _interval(n: dict[str, str], name: str) -> str:
    low, high = n.get(f"{name}_low"), n.get(f"{name}_high")
    return f"{n.get(name, 'n/a')} [{low}, {high}]" if low is not None else n.get(name, "n/a")


_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


def blocks(params: StudyParams, n: dict[str, str], claims: pd.DataFrame) -> list[tuple]:
    """The manuscript as blocks: ("h1"|"h2", text), ("p", text), ("fig", name, caption), ("table", name, caption).
    Every number in the text is a value of ``n``."""
    real_data = params.data.real
    n_vendors = len(params.data.phantom.domains)
    sources = list(params.data.source_list())
    data_text = (f"the {' and '.join(sources)} data set{'s' if len(sources) > 1 else ''}" if real_data else
                 "the embedded cardiac phantom (per-patient anatomy from base to apex and from end-diastole to end-systole, "
                 f"{_WORDS.get(n_vendors, n_vendors)} vendor{'s' if n_vendors != 1 else ''} with "
                 f"{'their' if n_vendors != 1 else 'its'} own contrast, noise, bias field and blur)")
    crossing = n.get("n_cross_sets", "1") != "0"
    cross_split_text = ("the patients of the other domains (vendors or data sets) as cross-domain sets" if crossing else
                        "no cross-domain set (the run has no domain besides the training ones)")
    tested_on = "the in-domain and cross-domain sets" if crossing else "the in-domain test set"
    test_list = ", the data's own test list" if params.data.test_split == "layout" else ""
    val_text = (f"{n['n_val']} validation patients of the same vendors (never trained on by a generator; reserved for "
                "the recipe's choices), " if params.data.n_val_patients else "")
    cross_utility = (f" Cross-domain (the first cross-domain set, {n['first_cross_set']}): real only "
                     f"{_interval(n, 'real_only_cross_dice')}." if crossing
                     else " No cross-domain set: generalisation to other vendors is not measured by this run.")
    arms = ", ".join(f"{registry.label(a)} {_interval(n, f'{a}_mask_dice')}" for a in registry.names())
    utility = ", ".join(f"{registry.label(a)} {_interval(n, f'{a}_utility_dice')}" for a in registry.names())
    released_auc = ", ".join(f"{registry.label(a)} {_interval(n, f'{a}_released_auc')} (TPR at 1% FPR {n.get(f'{a}_released_tpr', 'n/a')})"
                             for a in registry.names())
    privacy = ", ".join(f"{registry.label(a)} {_interval(n, f'{a}_mia_auc')}" for a in registry.names())
    never_seen = ", ".join(f"{registry.label(a)} {n.get(f'{a}_never_seen_auc', 'n/a')}" for a in registry.names())
    reference_auc = ", ".join(f"{registry.label(a)} {n.get(f'{a}_reference_mia_auc', 'n/a')}" for a in registry.names())
    copies = ", ".join(f"{registry.label(a)} {_interval(n, f'{a}_copy_share')}" for a in registry.names())
    dcr = ", ".join(f"{registry.label(a)} {_interval(n, f'{a}_dcr_train_share')}" for a in registry.names())
    shift = ", ".join(f"{registry.label(a)} {n.get(f'{a}_domain_shift_auc', 'n/a')}" for a in registry.names())
    reference_attack = "; ".join(
        f"{registry.label(a)} {n.get(f'{a}_reference_attack_auc', 'n/a')} (matched noise levels "
        f"{n.get(f'{a}_reference_attack_auc_matched', 'n/a')}; held-out non-members {n.get(f'{a}_reference_attack_auc_ours', 'n/a')})"
        for a in registry.names())
    reference_text = (
        f"With the reference protocol (non-members from another vendor): {reference_auc}; a control that pits two "
        f"non-member sets against each other (held-out patients against the other vendor) reaches {shift}: the part of "
        "the reference protocol's AUC that this control also reaches is vendor shift, not membership. The reference's "
        "own attack (logistic regression on the band-pass error and 1 - SSIM of a one-step estimate, at its noise "
        f"levels, fitted on {n['reference_fit_percent']}% of the slices): {reference_attack}."
        if n.get("reference_protocol", "applicable") == "applicable" else
        "The reference protocol (non-members from another vendor) and its domain-shift control are not applicable: "
        f"{n['reference_protocol_reason'] or 'the run has no cross-domain set'}.")
    deltas = ", ".join(f"{registry.label(a)} {_interval(n, f'{a}_utility_delta')}" for a in registry.names())
    conditionings = {a: n.get(f"{a}_conditioning", "concat") for a in registry.names()}
    conditioning_text = ("concatenated to the network input, for every arm" if set(conditionings.values()) == {"concat"} else
                         "given to each arm's network by " + ", ".join(f"{registry.label(a)} {CONDITIONING_WORDS[c]}"
                                                                       for a, c in conditionings.items()))
    mask_text = (f" The stage-1 masks are filtered (generators.mask_filter: {n['mask_filter']}): "
                 + (f"{n['stage1_draws']} draws, each reduced to its largest component per structure, gave the "
                    f"{n['stage1_n']} anatomically valid masks that condition the synthetic sets ({n['stage1_valid']} valid "
                    f"by every criterion: LV enclosed by a myocardial ring with one hole, one component per structure, the RV "
                    f"against the septum, class areas within the real range; the prior's draws as drawn: "
                    f"{n['stage1_drawn_valid']}; the real training masks: {n['real_masks_valid']})."
                    if n.get("mask_filter") == "valid" else
                    f"every draw conditions the synthetic sets, {n.get('stage1_valid', 'n/a')} of them anatomically valid "
                    f"(the real training masks: {n.get('real_masks_valid', 'n/a')}).")
                 if "mask_filter" in n else "")
    sources = [(a, m) for a in registry.names() for m in ("stage1", "all", "oracle") if f"{a}_masks_{m}_delta" in n]
    mask_source_text = (" Stage 2 alone: real + synthetic minus real only with the synthetic set generated from the "
                        "stage-1 masks, the unfiltered draws (all) or real training masks (oracle): " + "; ".join(
                            f"{registry.label(a)} {MASK_SOURCE_WORDS[m]} {_interval(n, f'{a}_masks_{m}_delta')}"
                            for a, m in sources) + " (table mask_sources)." if sources else "")
    verdict_text = ("; ".join(f"*{r.claim}*: **{n[f'claim_{r.key}']}**" for r in claims.itertuples())
                    or "no paired comparisons: the axis notebooks wrote no units (metrics/units/)")
    seg_budgets = sorted({k.split("pct_")[0].removeprefix("segmenter_budget_") + "pct" for k in n
                          if re.fullmatch(r"segmenter_budget_[\d_]+pct_.+_delta", k)},
                         key=lambda v: float(v[:-3].replace("_", ".")))
    seg_budget_text = (" Against the segmenter's own budget (each fraction trained with its own schedule, chosen on the "
                       "validation patients), real + synthetic minus real only: " + "; ".join(
                           f"{b[:-3].replace('_', '.')}%: " + ", ".join(f"{registry.label(a)} {_interval(n, f'segmenter_budget_{b}_{a}_delta')}"
                                                     for a in registry.names() if f"segmenter_budget_{b}_{a}_delta" in n)
                           for b in seg_budgets) + "." if seg_budgets else "")
    budgets = sorted({k.split("_")[1] for k in n if re.fullmatch(r"budget_\d+pct", k)}, key=lambda v: int(v[:-3]))
    budget_text = "; ".join(
        f"*{r.claim}*: " + ", ".join(f"{n[f'budget_{b}_{r.key}']} at {n[f'budget_{b}']}%" for b in budgets if f"budget_{b}_{r.key}" in n)
        for r in claims.itertuples()) if budgets else "no earlier checkpoints were evaluated"
    out = [
        ("h1", "Fidelity, utility and privacy of synthetic cardiac MRI: DDPM, latent diffusion and flow matching under limited data"),
        ("p", "*Generated by the notebook `90_paper` from the metrics of run `" + params.run_name + "`; every number below is "
              "in `numbers.json`.*"),
        ("h2", "Introduction"),
        ("p", "Synthetic cardiac MR images are proposed as a way to share and augment scarce, sensitive training data. A recent "
              "comparative study reported that a pixel-space DDPM gives the best balance of fidelity, utility and privacy with "
              "limited data, and that flow matching (FM) shows promising privacy with slightly lower segmentation performance. "
              "We re-examine these claims with one conditioning interface for all arms, membership inference against held-out "
              "patients of the same vendors at matched noise levels, per-patient Dice without background, and intervals."),
        ("h2", "Methods"),
        ("p", f"**Data.** Short-axis slices of {data_text}, ED and ES frames, resampled to {n['spacing_mm']} mm, cropped to "
              f"{n['crop_mm']} mm around the heart and resized to {n['image_size']} x {n['image_size']} pixels of "
              f"{n['pixel_mm']} mm, and scaled to [-1, 1]. Patients are split once (seed {n['seed']}): "
              f"{n['n_train']} training patients ({n['n_train_slices']} slices; the generators' members), {n['n_holdout']} "
              f"held-out patients of the same vendors (non-members), {val_text}{n['n_test']} in-domain test patients "
              f"({n['n_test_slices']} slices{test_list}) "
              f"and {cross_split_text}. Params digest {n['params_digest']}; generator seeds {n['generator_seeds']}, "
              f"segmenter seeds {n['utility_seeds']}." + (f" {n['data_credit']}." if "data_credit" in n else "")),
        ("p", f"**Generators.** Stage 1 draws a label map from a mask prior ({n['mask_prior_steps']} training steps, "
              f"{n['mask_prior_sampler_steps']} sampling steps); stage 2 generates an image conditioned on the one-hot map "
              f"{conditioning_text}.{mask_text} DDPM: {n['ddpm_prediction']}, {n['ddpm_train_steps']} steps of batch "
              f"{n['ddpm_batch']}, {n['ddpm_sampler_steps']} sampling steps. LDM: a KL autoencoder ({n['ae_steps']} steps) frozen, "
              f"then diffusion in its latent space ({n['ldm_train_steps']} steps, {n['ldm_sampler_steps']} sampling steps). FM: "
              f"rectified flow ({n['fm_train_steps']} steps, {n['fm_sampler_steps']} sampling steps). Each arm generates "
              f"{n['n_synthetic']} synthetic images from stage-1 masks and one image from each real test mask (the paired set). "
              + (f"Every generator, the mask prior included, is trained with {n['n_generator_seeds']} seeds; the tables show the "
                 "first, the claims aggregate over all." if n["n_generator_seeds"] != "1" else
                 "Every generator is trained with one seed: its training variance is not in the intervals.")
              + (f" With {n['n_real_smallest']} real patients, real + synthetic uses generators (and a mask prior) trained on those "
                 "same patients only." if params.utility.generators_from == "same" else
                 f" Real + synthetic at {n['n_real_smallest']} real patients uses the generators trained on all "
                 f"{n['n_train']} training patients, so information from the others reaches that regime.")),
        ("p", f"**Evaluation.** Fidelity: mask faithfulness (Dice between the conditioning mask and a reference segmenter's "
              f"prediction, the segmenter trained {n['segmenter_steps']} steps on the real training patients; {n['segmenter_stopping']}) "
              f"and FID in that segmenter's feature space. Utility: a DynUNet trained {n['utility_steps']} steps on real, "
              f"synthetic, or real + synthetic data ({n['utility_stopping']} evaluated), tested per patient on {tested_on}. Privacy: nearest-neighbour copy "
              f"flags, distance to closest record against held-out patients, and membership inference from each model's own "
              f"error at {n['n_snr']} matched signal-to-noise ratios ({n['mia_draws']} noise draw{'s' if n['mia_draws'] != 1 else ''} each), members = training "
              f"slices, non-members = held-out slices. Intervals: {n['confidence']}% percentile bootstrap over patients."),
        ("p", f"**Claims.** Every arm is scored on the same units (test slices for mask faithfulness; test patients and "
              f"{n['n_utility_seeds']} segmenter seed{'s' if n['n_utility_seeds'] != '1' else ''} for utility; member and held-out "
              f"slices for membership; each of the {n['n_generator_seeds']} generator seed{'s' if n['n_generator_seeds'] != '1' else ''}), so arms are compared by their paired difference, bootstrapped over seeds and then "
              f"patients ({n['claims_bootstrap']} draws). Each table of claims (one per fraction of the training budget) is one "
              f"family: its p-values are Holm-adjusted at a family-wise error rate of {n['alpha']}. A difference is *equivalent* when "
              f"two one-sided tests place it within the margin ({n['margin_mask_dice']} Dice for mask faithfulness, "
              f"{n['margin_utility_dice']} Dice for utility, {n['margin_mia_auc']} for the white-box membership AUC and "
              f"{n['margin_released_auc']} for the released-set AUC), else *better* or *worse* when it "
              "differs from 0, else unclear. Privacy claims read an attack's AUC by its distance from 0.5, so an AUC below "
              "chance is no better privacy than the same distance above it. A claim that an arm is best is *confirmed* when it "
              "is better than every other arm, *refuted* when it is worse than one, *equivalent* when it ties within the margin "
              "with some and beats the rest, and *inconclusive* otherwise. An arm gives the *best balance* when it is not worse "
              "than any other arm by more than the margin on fidelity, utility and privacy (the released-set attack; "
              "non-inferiority) and better than "
              "some arm on at least one of them."),
        ("h2", "Results"),
        ("fig", "paper_samples", "The paired set: real test masks, the image each arm generated from them, and the real image."),
        ("p", f"**Fidelity.** Mask faithfulness: {arms} (real images: {n.get('real_mask_dice', 'n/a')})."),
        ("p", f"**Utility.** With {n['n_real_smallest']} real patients plus synthetic data, in-domain Dice: {utility}; real "
              f"only: {_interval(n, 'real_only_utility_dice')}; change against real only: {deltas}.{cross_utility}{seg_budget_text}"
              f"{mask_source_text}"),
        ("table", "mask_sources", "Stage 2 alone beside the two-stage pipeline: each arm's synthetic set from the stage-1 "
                                  "masks, the unfiltered draws and real training masks (oracle): the share of valid "
                                  "conditioning masks, mask faithfulness, FID, and real + synthetic minus real only."),
        ("fig", "paper_utility", "Segmentation Dice against the number of real training patients, per regime and arm."),
        ("p", f"**Privacy.** The attack on the released synthetic set (an attacker with the synthetic images and a candidate "
              f"patient's real images; AUC per patient, members against held-out patients, {n['chance']}: chance): {released_auc}. "
              f"Membership AUC of the white-box loss attack (each model's own error): {privacy}; the same attack on two "
              f"never-trained-on sets (held-out against test patients, nothing to find): {never_seen}. {reference_text} "
              f"Share of synthetic images flagged as copies: {copies}; share of synthetic images closer to the training set "
              f"than to an equal-size held-out set (DCR, {n['chance']}: no overfitting; 1: copies, when the two sets are of "
              f"equal size): {dcr}. The calibration "
              "controls (canary patients, the phantom without its per-patient signature, the autoencoder trained elsewhere) "
              "are in the table privacy_controls."),
        ("fig", "paper_privacy", "Membership inference: AUC against noise level per arm (ours)."),
        ("fig", "paper_trade_off", "The trade-off: each arm on fidelity, utility and privacy, with intervals."),
        ("table", "trade_off", "Each arm on the three axes (estimate, interval)."),
        ("p", "**Conditioning.** " + (
            "The same recipe with the reference study's per-arm conditioning (the LDM by SPADE normalisation, FM by a "
            "ControlNet; params/reference_conditioning.yaml) beside ours: table conditioning_ablation."
            if n.get("conditioning_ablation_runs", "1") != "1" else
            "The reference study's per-arm conditioning (the LDM by SPADE normalisation, FM by a ControlNet) has not been "
            "run beside this recipe: `python -m cmrlib.study run params/reference_conditioning.yaml` (in the same runs "
            "folder) fills the table conditioning_ablation, which holds this run's rows alone until then.")),
        ("table", "conditioning_ablation", "Each arm by conditioning: this run and, when run, the reference study's "
                                           "per-arm conditioning (estimate, interval)."),
        ("p", f"**The reference study's claims.** {verdict_text}."),
        ("table", "claims", "The reference study's claims and each arm's balance claim, decided by paired differences "
                            "(the comparisons: tables/claims_comparisons)."),
        ("p", f"**Compute as an axis.** Each arm was also evaluated at its earlier kept checkpoints (fractions of its own "
              f"step budget); the claims judged again at each: {budget_text}."),
        ("fig", "paper_budgets", "Fidelity, utility and privacy against training steps per arm (intervals where measured)."),
        ("h2", "Limitations"),
        ("p", ("These results come from phantom data, not from patients: they test the pipeline and the metrics, not the "
               "clinical claims; run the study on ACDC or M&Ms (params/acdc.yaml, params/mnms.yaml) for those. " if not real_data else "")
              + "The step budgets fit a CPU and are far below the reference study's; which arm wins can depend on the budget "
              "(see the checkpoint curves of the fidelity notebook); the LDM's wall time on those curves excludes its "
              "autoencoder. With few held-out patients the membership intervals are wide. FID is computed in a segmentation network's feature space "
              "unless InceptionV3 weights are provided; LPIPS needs weights that are not shipped."),
    ]
    if "data_credit" in n:  # every figure derived from real data carries its attribution
        out = [(b[0], b[1], f"{b[2]} {n['data_credit']}.") if b[0] == "fig" else b for b in out]
    return out


def _md_inline_to_tex(text: str) -> str:
    text = text.replace("\\", "\\textbackslash{}")
    for ch in "%&#_$":
        text = text.replace(ch, "\\" + ch)
    text = re.sub(r"\*\*(.+?)\*\*", r"\\textbf{\1}", text)
    text = re.sub(r"\*(.+?)\*", r"\\emph{\1}", text)
    return re.sub(r"`(.+?)`", r"\\texttt{\1}", text)


def render_markdown(blocks_: list[tuple]) -> str:
    out = []
    for b in blocks_:
        if b[0] == "h1":
            out.append(f"# {b[1]}")
        elif b[0] == "h2":
            out.append(f"## {b[1]}")
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "fig":
            out.append(f"![{b[2]}](figures/{b[1]}.png)\n\n*Figure: {b[2]}*")
        elif b[0] == "table":
            out.append(f"*Table: {b[2]}* ([CSV](tables/{b[1]}.csv))\n\n" + "{{table:" + b[1] + "}}")
    return "\n\n".join(out) + "\n"


def render_latex(blocks_: list[tuple]) -> str:
    body = []
    for b in blocks_:
        if b[0] == "h1":
            title = _md_inline_to_tex(b[1])
        elif b[0] == "h2":
            body.append(f"\\section{{{_md_inline_to_tex(b[1])}}}")
        elif b[0] == "p":
            body.append(_md_inline_to_tex(b[1]))
        elif b[0] == "fig":
            body.append(f"\\begin{{figure}}[t]\\centering\\includegraphics[width=\\linewidth]{{figures/{b[1]}.pdf}}"
                        f"\\caption{{{_md_inline_to_tex(b[2])}}}\\end{{figure}}")
        elif b[0] == "table":
            body.append(f"\\begin{{table}}[t]\\centering\\caption{{{_md_inline_to_tex(b[2])}}}\\resizebox{{\\linewidth}}{{!}}"
                        f"{{\\input{{tables/{b[1]}.tex}}}}\\end{{table}}")
    return ("\\documentclass{article}\n\\usepackage{graphicx,booktabs}\n\\input{numbers.tex}\n"
            f"\\title{{{title}}}\n\\begin{{document}}\n\\maketitle\n" + "\n\n".join(body) + "\n\\end{document}\n")


def write_manuscript(blocks_: list[tuple], folder: Path) -> list[Path]:
    """``paper.md`` (tables inlined from their Markdown files) and ``main.tex``; builds ``main.pdf`` where pdflatex
    exists (its log says why when it fails)."""
    md = render_markdown(blocks_)
    md = re.sub(r"\{\{table:(\w+)\}\}", lambda m: (folder / "tables" / f"{m.group(1)}.md").read_text().strip(), md)
    (folder / "paper.md").write_text(md)
    (folder / "main.tex").write_text(render_latex(blocks_))
    written = [folder / "paper.md", folder / "main.tex"]
    if shutil.which("pdflatex"):
        for _ in range(2):
            subprocess.run(["pdflatex", "-interaction=nonstopmode", "main.tex"], cwd=folder, capture_output=True, timeout=120)
        if (folder / "main.pdf").exists():
            written.append(folder / "main.pdf")
    return written


def table_view(table: pd.DataFrame) -> pd.DataFrame:
    """The trade-off table as printed: one row per arm, one column per metric, ``estimate [low, high]``."""
    cells = table.assign(cell=[format_interval(r.estimate, r.low, r.high) for r in table.itertuples()])
    wide = cells.pivot(index="arm", columns="label", values="cell").fillna("")
    order = [label for _, _, label, _ in AXES if label in wide.columns]
    arms = [a for a in [*registry.names(), "real only"] if a in wide.index]
    return wide.loc[arms, order].rename(index=lambda a: registry.label(a))


def mask_sources(results: dict[str, dict]) -> pd.DataFrame:
    """Per arm and mask source (stage-1, all, oracle): the fidelity of its synthetic set (the share of valid
    conditioning masks, mask faithfulness, FID, KID) and its utility (real + synthetic minus real only at the fewest
    real patients), ``estimate [low, high]``; a source the run did not measure on an axis is empty there."""
    fid = pd.DataFrame(results["fidelity"].get("mask_sources", []))
    util = pd.DataFrame(results["utility"].get("against_mask_source", []))
    rows = {}
    for r in fid.itertuples():
        rows.setdefault((r.arm, r.mask_source), {})[r.metric] = format_interval(r.estimate, r.low, r.high)
    for r in util.itertuples():
        rows.setdefault((r.arm, r.mask_source), {})["utility_delta"] = format_interval(r.delta_vs_real, r.delta_low, r.delta_high)
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis(["arm", "masks"]).fillna("")
    table = table[[c for c in ("valid_masks", "dice_mean", "fid", "kid", "utility_delta") if c in table]]
    return table.rename(index=registry.label, level=0)


def conditioning_ablation(paths: RunPaths, table: pd.DataFrame) -> pd.DataFrame:
    """This run's trade-off (``table``, :func:`trade_off`) beside that of the run of
    ``params/reference_conditioning.yaml`` (:data:`CONDITIONING_ABLATION_RUN`, in the same runs folder): one row per
    (arm, conditioning) and one column per metric; this run's rows alone when the other has not been run."""
    def view(t: pd.DataFrame, params: StudyParams) -> pd.DataFrame:
        v = table_view(t)
        words = {registry.label(a): registry.get(a).params(params).conditioning for a in registry.names()}
        return v.set_index(pd.Index([words.get(a, "") for a in v.index], name="conditioning"), append=True)

    from .params import load as load_params

    own = view(table, load_params(paths.params))
    other = RunPaths(paths.root.parent / CONDITIONING_ABLATION_RUN)
    if other.root == paths.root or not all((other.metrics / f"{axis}.json").is_file() for axis in MADE_BY):
        return own
    theirs = view(trade_off(load_results(other)), load_params(other.params))
    return pd.concat({paths.root.name: own, other.root.name: theirs}, names=["run"])


RUN_FIGURES = ("data_examples",)  # figures of earlier notebooks that the paper shows as they are


def copy_run_figures(paths: RunPaths, names=RUN_FIGURES) -> list[Path]:
    """Copy figures of earlier notebooks (PNG and PDF) from the run's ``figures/`` into ``paper/figures/``."""
    out = []
    for name in names:
        for ext in ("png", "pdf"):
            source = paths.require(paths.figures / f"{name}.{ext}", "00_data")
            target = paths.paper / "figures" / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            out.append(target)
    return out


__all__ = ["STAGE", "AXES", "load_results", "trade_off", "budget_curves",
           "numbers", "save_numbers", "blocks", "render_markdown", "render_latex", "write_manuscript", "table_view",
           "copy_run_figures", "mask_sources", "conditioning_ablation"]
