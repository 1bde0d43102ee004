"""Synthetic data a user can take away: new samples from a trained run, and export behind a privacy gate.

- :func:`generate` makes ``n`` new image/mask pairs with a run's trained mask prior and arm (stage 1, then stage 2),
  saved as ``samples/<arm>/generated_n<N>_seed<S>.npz`` with a row in ``samples/<arm>/samples.csv``.
- :func:`export` writes a sample set as NIfTI pairs, an nnU-Net raw data set (``imagesTr/``, ``labelsTr/``,
  ``dataset.json``) or one ``.npz``, with a data card (``data_card.json`` and ``data_card.md``: the model, its
  training patients, the sampler, the run's fidelity and privacy results).
- The **privacy gate** (:func:`privacy_gate`) refuses an arm whose share of copies or released-set attack AUC (from
  ``metrics/privacy.json``, the notebook ``50_privacy``) exceeds ``export.max_copy_share`` / ``export.max_released_auc``
  of the run's params, naming the numbers; an explicit override reason lets it through and is written into the card.

NIfTI convention: a slice ``(rows, cols)`` is stored as voxel array ``(cols, rows, 1)`` (voxel axis 0 = image columns,
as the ACDC files, so ``nibabel.load(f).get_fdata()[:, :, 0].T`` gives the slice back), float32 images in [-1, 1],
uint8 labels (0 background, 1 LV, 2 MYO, 3 RV). The in-plane spacing is the processed pixel's size
(:func:`cmrlib.data.preprocess.pixel_size_mm`: the crop of ``data.crop_mm`` resized to ``data.image_size``, 2.8125 mm
by default), and the through-plane spacing :data:`THROUGH_PLANE_MM`, nnU-Net's convention for a 2D image stored as
NIfTI (its planner then never takes the fake third axis for a slicing axis).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__, data, generation, registry
from .jsonio import write_json
from .data import anatomy
from .data.preprocess import pixel_size_mm
from .labels import CLASSES
from .params import StudyParams
from .params import load as load_params
from .paths import RunPaths, current_umask
from .seeds import seed_for
from .stats import format_interval

FORMATS = ("nifti", "nnunet", "npz")
CHANCE_KEYS = ("released_auc",)  # gate numbers that are AUCs: read by their distance from 0.5


class PrivacyGateError(RuntimeError):
    """An arm whose privacy results exceed the run's thresholds (the message names the numbers and the override)."""


def open_run(run: str | Path) -> tuple[StudyParams, RunPaths]:
    """A run folder (a path holding ``params.yaml``) or a run name under ``runs/``."""
    path = Path(run)
    is_folder = (path / "params.yaml").is_file() or path.name != str(run)  # a path, not a bare run name
    paths = RunPaths(path.resolve()) if is_folder else RunPaths.for_run(str(run))
    if not paths.params.is_file():
        raise FileNotFoundError(f"run {run!r}: no params.yaml at {paths.params}; give a run folder written by "
                                "`python -m cmrlib.study run` or the name of one under runs/")
    return load_params(paths.params), paths


def _check_arm(arm: str) -> None:
    registry.get(arm)  # an unknown arm is a ValueError naming the registered ones


def generate(run: str | Path, arm: str, n: int, seed: int | None = None) -> Path:
    """``n`` new pairs: masks from the run's mask prior, images from its ``arm`` (final weights, the params' sampler)."""
    _check_arm(arm)
    params, paths = open_run(run)
    seed = params.seed if seed is None else seed
    prior, _ = generation.load_arm(params, paths, "mask_prior")
    train = data.load(paths)[0].split("train")
    masks = generation.stage1_masks(params, prior, n, seed_for(seed, "generate", "masks"), train.masks).masks
    model, ckpt = generation.load_arm(params, paths, arm)
    sampling = registry.get(arm).params(params).sample
    image_seed = seed_for(seed, "generate", arm)
    start = time.perf_counter()
    images = generation.generate(model, masks, sampling, image_seed, desc=f"{arm} generate")
    record = generation.sample_record("generated", image_seed, sampling, ckpt, start)
    return generation.save_samples(paths, arm, f"generated_n{n}_seed{seed}", record=record, images=images, masks=masks)


def privacy_results(paths: RunPaths, arm: str) -> dict:
    """The arm's record of ``metrics/privacy.json`` (written by ``50_privacy``)."""
    path = paths.metrics / "privacy.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the privacy gate needs the results of the notebook 50_privacy; "
                                "run the study (or `--only 50_privacy`) first")
    for record in json.loads(path.read_text())["summary"]:
        if record["arm"] == arm:
            return record
    raise KeyError(f"{path} has no privacy results for arm {arm!r}")


def privacy_gate(params: StudyParams, results: dict, override: str | None = None) -> dict:
    """Compare an arm's copy share and the AUC of the attack on its released set (per patient, pixel space; by its
    distance from 0.5, as an AUC far below 0.5 reveals members too) with ``export.max_copy_share`` and
    ``export.max_released_auc``.
    Returns the decision (recorded in the data card); raises :class:`PrivacyGateError` when a number exceeds its
    threshold and no ``override`` reason is given."""
    limits = {"copy_share": params.export.max_copy_share, "released_auc": params.export.max_released_auc}
    failures = []
    for key, limit in limits.items():
        value = results.get(key)
        if value is None or not np.isfinite(value):
            failures.append(f"{key} is missing from the privacy results")
        elif key in CHANCE_KEYS and abs(value - 0.5) > limit - 0.5:  # an AUC far below 0.5 reveals members too
            failures.append(f"{key} = {value:.3f} is {abs(value - 0.5):.3f} from chance, beyond export.max_{key} = {limit} "
                            f"({limit - 0.5:.2f} from chance)")
        elif key not in CHANCE_KEYS and value > limit:
            failures.append(f"{key} = {value:.3f} exceeds export.max_{key} = {limit}")
    decision = {"limits": limits, "values": {k: results.get(k) for k in limits}, "passed": not failures,
                "failures": failures, "override": override}
    if failures and not override:
        raise PrivacyGateError(f"privacy gate: arm {results.get('arm')!r} refused: " + "; ".join(failures) +
                               ". Raise the thresholds in the params' `export` section, or pass --override-privacy-gate "
                               "REASON to export anyway (the reason is written into the data card).")
    return decision


THROUGH_PLANE_MM = 999.0  # a 2D slice has no through-plane extent: nnU-Net's value for its fake third axis


def _nifti(array: np.ndarray, spacing: float, dtype) -> "nibabel.Nifti1Image":  # noqa: F821
    import nibabel as nib

    affine = np.diag([spacing, spacing, THROUGH_PLANE_MM, 1.0])
    image = nib.Nifti1Image(np.ascontiguousarray(array.T[:, :, None]).astype(dtype), affine)
    image.header.set_xyzt_units("mm")
    return image


def _write_pairs(images: np.ndarray, masks: np.ndarray, out: Path, spacing: float, layout: str, prefix: str) -> list[str]:
    import nibabel as nib

    cases = [f"{prefix}_{i:05d}" for i in range(len(images))]
    image_dir, label_dir = (out / "imagesTr", out / "labelsTr") if layout == "nnunet" else (out / "images", out / "labels")
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    image_name = "{}_0000.nii.gz" if layout == "nnunet" else "{}.nii.gz"  # nnU-Net: _0000 is the channel index
    for case, image, mask in zip(cases, images, masks):
        nib.save(_nifti(image, spacing, np.float32), image_dir / image_name.format(case))
        nib.save(_nifti(mask, spacing, np.uint8), label_dir / f"{case}.nii.gz")
    return cases


def _training_data_sets(params: StudyParams, paths: RunPaths) -> list[str]:
    """The data sets of the generators' training domains (a test-only source is not training data)."""
    datasets = json.loads(paths.splits.read_text()).get("datasets", {}) if paths.splits.is_file() else {}
    return sorted({datasets.get(d, d) for d in params.data.train_domains})


def _mask_origin(params: StudyParams, samples: str) -> str:
    """Where the conditioning masks of a sample set come from, as the data card says it."""
    stage1 = (f"stage-1 masks of the run's mask prior, {'only anatomically valid ones kept' if params.generators.mask_filter == 'valid' else 'unfiltered'}"
              f" (generators.mask_filter: {params.generators.mask_filter})")
    return {"paired": "real test masks", "synthetic_oracle": "real training masks (the oracle control: they are the "
            "training patients' own label maps)", "synthetic_all": "stage-1 masks of the run's mask prior, unfiltered"
            }.get(samples, stage1)


def data_card(params: StudyParams, paths: RunPaths, arm: str, samples: str, masks: np.ndarray, gate: dict) -> dict:
    """What the exported set is and what the run measured about it, the anatomical validity of its masks too."""
    table = generation.samples_table(paths, arm)
    rows = table[table["file"] == f"{samples}.npz"]
    if rows.empty:
        raise KeyError(f"{paths.samples / arm / 'samples.csv'} has no row for {samples}.npz, so how it was made is "
                       f"unknown and no data card can be written; make the set again (`python -m cmrlib generate`)")
    row = rows.iloc[-1].to_dict()
    fidelity = {}
    fid_path = paths.metrics / "fidelity.json"
    if fid_path.is_file():
        for r in json.loads(fid_path.read_text())["metrics"]:
            if r["set"] == arm and r["metric"] in ("dice_mean", "fid", "kid"):
                fidelity[r["metric"]] = {k: r[k] for k in ("estimate", "low", "high")}
    privacy = privacy_results(paths, arm) if (paths.metrics / "privacy.json").is_file() else {}
    reference = data.load(paths)[0].split("train").masks if paths.splits.is_file() else None  # the real area range
    flags = anatomy.check_masks(masks, reference)
    return {
        "arm": arm, "samples": samples, "n": len(masks), "cmrlib_version": __version__,
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": {"name": params.run_name, "folder": str(paths.root), "params_digest": params.digest(), "seed": params.seed},
        "training_data": {"data_sets": _training_data_sets(params, paths), "train_patients": params.data.n_train_patients,
                          "domains": params.data.train_domains, "image_size": params.data.image_size,
                          "pixel_size_mm": pixel_size_mm(params.data), "resampled_to_mm": params.data.spacing_mm,
                          "crop_mm": params.data.crop_mm},
        "generation": {k: row.get(k) for k in ("seed", "sampler", "steps", "weights", "checkpoint_step")},
        "masks": _mask_origin(params, samples),
        "mask_validity": {"criteria": "cmrlib.data.anatomy: " + ", ".join(k for k in flags if k != "valid") + (
                          " (areas against the real training masks' range)" if reference is not None else
                          " (no real masks in the run folder: class areas not judged)"),
                          **{k: round(float(v.mean()), 4) for k, v in flags.items()}},
        "fidelity": fidelity, "privacy": privacy, "privacy_gate": gate,
        "labels": {str(k): v for k, v in CLASSES.items()},
    }


def _card_markdown(card: dict) -> str:
    gate = card["privacy_gate"]
    verdict = "passed" if gate["passed"] else f"FAILED, exported by override: {gate['override']}"
    lines = [f"# Synthetic cardiac MRI: {registry.label(card['arm'])}, {card['n']} image/mask pairs", "",
             f"- run `{card['run']['name']}` (params digest {card['run']['params_digest']}), cmrlib {card['cmrlib_version']}",
             f"- trained on {card['training_data']['train_patients']} patients ({', '.join(card['training_data']['data_sets'])}, "
             f"domains {', '.join(card['training_data']['domains'])}), {card['training_data']['image_size']} px",
             f"- sampler {card['generation']['sampler']}, {card['generation']['steps']} steps, {card['generation']['weights']} "
             f"weights of step {card['generation']['checkpoint_step']}; masks: {card['masks']}",
             f"- anatomically valid masks: {card['mask_validity']['valid']:.1%} (LV enclosed by a myocardial ring with one "
             "hole, one component per structure, the RV against the septum, class areas within the real range)",
             f"- privacy gate: {verdict} ({'; '.join(gate['failures']) or 'all numbers within the thresholds'})", "",
             "## Fidelity", ""]
    lines += [f"- {k}: {format_interval(v['estimate'], v.get('low'), v.get('high'))}" for k, v in card["fidelity"].items()] or ["- not measured (run 30_fidelity)"]
    lines += ["", "## Privacy", ""]
    lines += [f"- {k}: {v:.3f}" for k, v in card["privacy"].items() if isinstance(v, float)] or ["- not measured"]
    return "\n".join(lines) + "\n"


def export(run: str | Path, arm: str, fmt: str, out: str | Path, samples: str = "synthetic", override: str | None = None) -> Path:
    """Write the sample set ``samples`` of ``arm`` to ``out`` in ``fmt`` (nifti, nnunet or npz) with its data card,
    after the privacy gate. Refuses a non-empty ``out`` so that nothing already there is overwritten."""
    _check_arm(arm)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file: give a folder to export into (new or empty)")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: export into a new folder")
    params, paths = open_run(run)
    gate = privacy_gate(params, privacy_results(paths, arm), override)
    sample = generation.load_samples(paths, arm, samples)
    images, masks = sample["images"], sample["masks"]
    card = data_card(params, paths, arm, samples, masks, gate)  # before any data: a set never lacks its card
    out.parent.mkdir(parents=True, exist_ok=True)
    # everything goes to a hidden folder beside `out`, moved into place whole: a failure leaves no half-export
    partial = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        partial.chmod(0o777 & ~current_umask())
        write_json(partial / "data_card.json", card)
        (partial / "data_card.md").write_text(_card_markdown(card))
        if fmt == "npz":
            np.savez_compressed(partial / f"{arm}_{samples}.npz", images=images, masks=masks)
        else:
            cases = _write_pairs(images, masks, partial, pixel_size_mm(params.data), fmt, f"{arm}")
            if fmt == "nnunet":
                write_json(partial / "dataset.json", {
                    "channel_names": {"0": "MRI"}, "labels": {name: value for value, name in CLASSES.items()},
                    "numTraining": len(cases), "file_ending": ".nii.gz",
                    "name": f"synthetic_cmr_{arm}", "description": f"synthetic short-axis CMR from the {registry.label(arm)} arm of run {params.run_name}"})
        os.replace(partial, out)  # an empty `out` is replaced; POSIX renames a folder onto an empty one
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    return out


__all__ = ["FORMATS", "PrivacyGateError", "open_run", "generate", "privacy_results", "privacy_gate", "data_card", "export"]
