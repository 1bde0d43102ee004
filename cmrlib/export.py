"""Synthetic data a user can take away: new samples from a trained run or a standalone model folder, and export
behind a privacy gate.

- :func:`generate` makes ``n`` new image/mask pairs with a run's trained mask prior and arm (stage 1, then stage 2),
  saved as ``samples/<arm>/generated_n<N>_seed<S>.npz`` with a row in ``samples/<arm>/samples.csv``, for an export.
- :func:`generate_to` makes pairs from a run's arm or a standalone model folder (:mod:`cmrlib.standalone`), on the
  model's own stage-1 masks or on the user's label maps (:mod:`cmrlib.data.user_masks`), and writes them at once.
- :func:`export` writes a run's sample set, with the run's real slices of a split beside it if asked (a real +
  synthetic data set), as NIfTI pairs, an nnU-Net raw data set (``imagesTr/``, ``labelsTr/``, ``dataset.json``) or
  ``.npz`` files. Every export has a data card (``data_card.json``, ``data_card.md``): intended use, the model, its
  training patients, the source data's terms and citations, the preprocessing, the sampler, the masks' origin and
  anatomical validity, and the run's fidelity and privacy results with the sets they describe.
- The **privacy gate** (:func:`privacy_gate`) refuses an arm whose share of copies or released-set attack AUC (from
  ``metrics/privacy.json``, the notebook ``50_privacy``) exceeds ``export.max_copy_share`` / ``export.max_released_auc``
  of the run's params, naming the numbers; an explicit override reason lets it through and is written into the card.

NIfTI convention: a slice ``(rows, cols)`` is stored as voxel array ``(cols, rows, 1)`` (voxel axis 0 = image columns,
as the ACDC files, so ``nibabel.load(f).get_fdata()[:, :, 0].T`` gives the slice back), float32 images in [-1, 1],
uint8 labels (0 background, 1 LV, 2 MYO, 3 RV). The in-plane spacing is the processed pixel's size
(:func:`cmrlib.data.preprocess.pixel_size_mm`: the crop of ``data.crop_mm`` resized to ``data.image_size``, 2.8125 mm
by default), and the through-plane spacing :data:`THROUGH_PLANE_MM`, nnU-Net's convention for a 2D image stored as
NIfTI (its planner then never takes the fake third axis for a slicing axis). The affine points the columns to the
patient's left and the rows to posterior, the radiological view, so a viewer, cmrlib's ``nifti`` source and
``generate --masks`` read the slice back as it was (the RV on the left).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch

from . import __version__, data, generation, registry, standalone
from .data import anatomy, terms, user_masks
from .data.io import CODES
from .jsonio import write_json
from .labels import CLASSES
from .params import StudyParams
from .params import load as load_params
from .paths import RunPaths, atomic_folder, require_empty_folder
from .seeds import seed_for
from .stats import format_interval

FORMATS = ("nifti", "nnunet", "npz")
CHANCE_KEYS = ("released_auc",)  # gate numbers that are AUCs: read by their distance from 0.5


class PrivacyGateError(RuntimeError):
    """An arm whose privacy results exceed the run's thresholds (the message names the numbers and the override)."""


def _check_arm(arm: str) -> None:
    registry.get(arm)  # an unknown arm is a ValueError naming the registered ones


def open_run(run: str | Path) -> tuple[StudyParams, RunPaths]:
    """A run folder (a path holding ``params.yaml``) or a run name under ``runs/``."""
    path = Path(run)
    is_folder = (path / "params.yaml").is_file() or path.name != str(run)  # a path, not a bare run name
    paths = RunPaths(path.resolve()) if is_folder else RunPaths.for_run(str(run))
    if not paths.params.is_file():
        raise FileNotFoundError(f"run {run!r}: no params.yaml at {paths.params}; give a run folder written by "
                                "`python -m cmrlib.study run` or the name of one under runs/")
    return load_params(paths.params), paths


@dataclass
class Generator:
    """A trained arm ready to sample, from a run folder or a standalone model folder, with what a data card says of it."""

    arm: str
    net: torch.nn.Module
    sampling: Any  # sampler, steps, batch_size, weights
    checkpoint: dict  # step, weights, elapsed_s
    preprocessing: dict  # cmrlib.standalone.preprocessing
    training: dict  # cmrlib.standalone.training_record
    ranges: dict  # the real training masks' class-area range (label -> (min, max) pixels)
    prior: Callable[[], tuple[torch.nn.Module, dict]]  # the mask prior and its stage1_masks settings, loaded when needed
    seed: int  # the default seed
    source: str  # the run folder or the model folder

    def stage1(self, n: int, seed: int) -> np.ndarray:
        prior, settings = self.prior()
        return generation.stage1_masks(prior, n, seed_for(seed, "generate", "masks"), self.ranges, **settings).masks

    def images(self, masks: np.ndarray, seed: int) -> np.ndarray:
        return generation.generate(self.net, masks, self.sampling, seed_for(seed, "generate", self.arm), desc=f"{self.arm} generate")


def from_run(run: str | Path, arm: str) -> tuple[Generator, StudyParams, RunPaths]:
    """The run's ``arm`` with its final weights and the params' sampler; its mask prior on demand."""
    _check_arm(arm)
    params, paths = open_run(run)
    net, ckpt = generation.load_arm(params, paths, arm)
    train = data.load(paths)[0].split("train")
    prior = lambda: (generation.load_arm(params, paths, generation.MASK_PRIOR)[0], generation.stage1_settings(params))  # noqa: E731
    gen = Generator(arm, net, registry.get(arm).params(params).sample, {k: ckpt[k] for k in ("step", "weights", "elapsed_s")},
                    standalone.preprocessing(params.data), standalone.training_record(params, paths),
                    anatomy.area_ranges(train.masks), prior, params.seed, str(paths.root))
    return gen, params, paths


def from_model_folder(folder: str | Path) -> Generator:
    """A standalone model folder (:mod:`cmrlib.standalone`) and its ``mask_prior/``."""
    folder = Path(folder)
    net, config = standalone.load(folder)
    prior_folder = folder / config.get("mask_prior", standalone.MASK_PRIOR)
    prior_config = standalone.read_config(prior_folder) if (prior_folder / standalone.CONFIG).is_file() else {}
    filt = prior_config.get("mask_filter", {})

    def prior():
        if not prior_config:
            raise standalone.ModelFolderError(f"{folder} has no {standalone.MASK_PRIOR}/ folder, so it cannot draw its own "
                                              "masks; give --masks DIR (your label maps) instead of --n")
        return standalone.load(prior_folder)[0], {"sampling": SimpleNamespace(**prior_config["sampling"]),
                                                  "mask_filter": filt["filter"], "max_draws": filt["max_draws"]}

    ranges = {CODES[name]: tuple(r) for name, r in filt.get("area_ranges", {}).items()}
    return Generator(config["name"], net, SimpleNamespace(**config["sampling"]), config["checkpoint"], config["preprocessing"],
                     config["training"], ranges, prior, config["training"]["seed"], str(folder.resolve()))


def generate(run: str | Path, arm: str, n: int, seed: int | None = None) -> Path:
    """``n`` new pairs in the run: masks from its mask prior (filtered as the params say), images from its ``arm``;
    saved as ``samples/<arm>/generated_n<N>_seed<S>.npz`` for :func:`export`."""
    gen, _, paths = from_run(run, arm)
    seed = gen.seed if seed is None else seed
    start = time.perf_counter()
    masks = gen.stage1(n, seed)
    images = gen.images(masks, seed)
    record = generation.sample_record("generated", seed_for(seed, "generate", arm), gen.sampling, gen.checkpoint, start)
    return generation.save_samples(paths, arm, f"generated_n{n}_seed{seed}", record=record, images=images, masks=masks)


def generate_to(out: str | Path, fmt: str = "nifti", *, run: str | Path | None = None, arm: str | None = None,
                model: str | Path | None = None, n: int | None = None, masks: str | Path | None = None,
                seed: int | None = None, label_map: dict | None = None, pixel_mm: float | None = None,
                override: str | None = None) -> Path:
    """New image/mask pairs written to ``out`` in ``fmt`` with a data card, from a run's ``arm`` (behind the privacy
    gate) or a standalone ``model`` folder, conditioned on ``n`` of the model's own stage-1 masks or on the label maps
    of the folder ``masks`` (:func:`cmrlib.data.user_masks.read_masks`, with ``label_map`` and ``pixel_mm``)."""
    if (run is None) == (model is None):
        raise ValueError("give a run (with --arm) or --model DIR, one of them")
    if (n is None) == (masks is None):
        raise ValueError("give --n N (the model's own stage-1 masks) or --masks DIR (your label maps), one of them")
    _check_format(fmt)
    require_empty_folder(out)  # before any work
    if model is not None:
        gen = from_model_folder(model)
        gate = {"passed": None, "failures": [], "override": override, "note": "a standalone model folder carries no "
                "privacy results: read those of the run that trained it (its metrics/privacy.json) before sharing"}
        results = {}
    else:
        gen, params, paths = from_run(run, arm)
        privacy = privacy_results(paths, gen.arm)
        gate = privacy_gate(params, privacy, override)
        results = {"fidelity": _fidelity(paths, gen.arm), "privacy": privacy}
    seed = gen.seed if seed is None else seed
    if masks is not None:
        prep = gen.preprocessing
        maps, where = user_masks.read_masks(masks, image_size=prep["image_size"], crop_mm=prep["crop_mm"],
                                            spacing_mm=prep["resampled_to_mm"], pixel_size_mm=prep["pixel_size_mm"],
                                            label_map=label_map, pixel_mm=pixel_mm)
        origin = (f"the user's label maps of {Path(masks).resolve()} ({where['file'].nunique()} files, {len(maps)} maps), "
                  "brought to the model's grid")
        name = "from_masks"
    else:
        maps, name = gen.stage1(n, seed), f"generated_n{n}_seed{seed}"
        origin = "stage-1 masks of the model's mask prior"
    images = gen.images(maps, seed)
    generation_record = {"seed": seed, "sampler": gen.sampling.sampler, "steps": gen.sampling.steps,
                         "weights": gen.checkpoint["weights"], "checkpoint_step": gen.checkpoint["step"]}
    card = _card(gen.arm, name, maps, ranges=gen.ranges, training=gen.training, preprocessing=gen.preprocessing,
                 generation=generation_record, masks_origin=origin, gate=gate, source=gen.source, **results)
    return _write(out, fmt, card, {f"{gen.arm}_{name}": (images, maps)})


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
INTENDED_USE = ("Research only: training and evaluating cardiac MRI segmentation with synthetic data, and studying "
                "generative models. Not for clinical use, diagnosis or treatment decisions, and not evidence about any "
                "patient. The images are 2D short-axis slices with intensities scaled to [-1, 1] per volume (not MR "
                "units); the labels are the conditioning masks, not annotations of the images by a reader.")


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")


def _nifti(array: np.ndarray, spacing: float, dtype) -> "nibabel.Nifti1Image":  # noqa: F821
    import nibabel as nib

    # voxel axis 0 (image columns) towards the patient's left, axis 1 (rows) towards posterior: the radiological view,
    # which viewers and cmrlib's own readers (cmrlib.data.io.orientation_from_affine) show as the slice was
    affine = np.diag([-spacing, -spacing, THROUGH_PLANE_MM, 1.0])
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


def _write(out: str | Path, fmt: str, card: dict, sets: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """The data card, then each set (name -> images, masks; the name's first word prefixes its NIfTI cases) in
    ``fmt``, moved into place whole."""
    with atomic_folder(out) as folder:  # a failure leaves no half-export
        write_json(folder / "data_card.json", card)
        (folder / "data_card.md").write_text(_card_markdown(card))
        cases = []
        for name, (images, masks) in sets.items():
            prefix = name.split("_")[0]  # ddpm_synthetic -> ddpm_00000, real_train -> real_00000
            if fmt == "npz":
                np.savez_compressed(folder / f"{name}.npz", images=images, masks=masks)
            else:
                cases += _write_pairs(images, masks, folder, card["preprocessing"]["pixel_size_mm"], fmt, prefix)
        if fmt == "nnunet":  # nnU-Net v2's dataset.json (its dataset-format documentation)
            write_json(folder / "dataset.json", {
                "channel_names": {"0": "MRI"}, "labels": {name: value for value, name in CLASSES.items()},
                "numTraining": len(cases), "file_ending": ".nii.gz", "name": Path(out).name,
                "description": card["title"], "licence": "; ".join(card["training_data"]["terms"]),
                "reference": "cmrlib data card: data_card.md"})
    return Path(out)


def _fidelity(paths: RunPaths, arm: str) -> dict:
    """The arm's mask faithfulness, FID and KID from ``metrics/fidelity.json`` (empty before ``30_fidelity``)."""
    path = paths.metrics / "fidelity.json"
    if not path.is_file():
        return {}
    return {r["metric"]: {k: r[k] for k in ("estimate", "low", "high")} for r in json.loads(path.read_text())["metrics"]
            if r["set"] == arm and r["metric"] in ("dice_mean", "fid", "kid")}


def _mask_origin(params: StudyParams, samples: str) -> str:
    """Where the conditioning masks of a run's sample set come from, as the data card says it."""
    kept = ("anatomically valid ones kept (topped up with invalid ones where the prior gave too few: see the share "
            "below)" if params.generators.mask_filter == "valid" else "unfiltered")
    stage1 = f"stage-1 masks of the run's mask prior, {kept} (generators.mask_filter: {params.generators.mask_filter})"
    return {"paired": "real test masks", "synthetic_oracle": "real training masks (the oracle control: they are the "
            "training patients' own label maps)", "synthetic_all": "stage-1 masks of the run's mask prior, unfiltered"
            }.get(samples, stage1)


def _card(arm: str, samples: str, masks: np.ndarray, *, ranges: dict, training: dict, preprocessing: dict,
          generation: dict, masks_origin: str, gate: dict, source: str, fidelity: dict | None = None,
          privacy: dict | None = None, real: dict | None = None) -> dict:
    """What an exported set is, where it comes from, its terms and intended use, and what was measured about it."""
    flags = anatomy.check_masks(masks, ranges=ranges or None)
    described = ("the run's synthetic set (FID, KID: its images against the real test images) and its paired set "
                 "(mask faithfulness: one image per real test mask), not this export itself; this export's masks are "
                 "judged here by their anatomical validity")
    return {
        "title": f"Synthetic cardiac MRI: {registry.label(arm)}, {len(masks)} image/mask pairs", "arm": arm,
        "samples": samples, "n": len(masks), "cmrlib_version": __version__,
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"), "source": source,
        "intended_use": INTENDED_USE,
        "training_data": training | {"terms": [terms.terms(d) for d in training["data_sets"]]},
        "preprocessing": preprocessing, "generation": generation, "masks": masks_origin,
        "mask_validity": {"criteria": "cmrlib.data.anatomy: " + ", ".join(k for k in flags if k != "valid") + (
                          " (areas against the real training masks' range)" if ranges else
                          " (no real area range known: class areas not judged)"),
                          **{k: round(float(v.mean()), 4) for k, v in flags.items()}},
        "metrics_describe": described if fidelity or privacy else "no metrics: this model's run results are not at hand",
        "fidelity": fidelity or {}, "privacy": privacy or {}, "privacy_gate": gate,
        "labels": {str(k): v for k, v in CLASSES.items()}, **({"real": real} if real else {}),
    }


def _card_markdown(card: dict) -> str:
    gate, t, g, prep = card["privacy_gate"], card["training_data"], card["generation"], card["preprocessing"]
    verdict = ("not applied: " + gate["note"] if gate.get("passed") is None else "passed" if gate["passed"]
               else f"FAILED, exported by override: {gate['override']}")
    lines = [f"# {card['title']}", "", f"**Intended use.** {card['intended_use']}", "",
             f"- made from `{card['source']}`, cmrlib {card['cmrlib_version']}; training run `{t.get('run')}` (params "
             f"digest {t.get('params_digest')})",
             f"- trained on {t['train_patients']} patients ({', '.join(t['data_sets'])}, domains {', '.join(t['domains'])})",
             f"- sampler {g['sampler']}, {g['steps']} steps, {g['weights']} weights of step {g['checkpoint_step']}, seed {g['seed']}",
             f"- masks: {card['masks']}",
             f"- anatomically valid masks: {card['mask_validity']['valid']:.1%} (LV enclosed by a myocardial ring with one "
             "hole, one component per structure, the RV against the septum, class areas within the real range)",
             f"- privacy gate: {verdict}" + (f" ({'; '.join(gate['failures']) or 'all numbers within the thresholds'})"
                                              if gate.get("passed") is not None else ""), "",
             "## Preprocessing", "",
             f"- {prep['image_size']} x {prep['image_size']} pixels of {prep['pixel_size_mm']:g} mm (resampled to "
             f"{prep['resampled_to_mm']:g} mm, a {prep['crop_mm']:g} mm crop, {prep['crop']}, resized)",
             f"- intensities: {prep['intensity']}", f"- orientation: {prep['orientation']}",
             "- labels: " + ", ".join(f"{k} {v}" for k, v in card["labels"].items()), "",
             "## Source data: terms and citations", "", *[f"- {term}" for term in t["terms"]]]
    if "real" in card:
        r = card["real"]
        lines += [f"- this export also holds {r['n']} real slices of the {r['split']} split ({r['patients']} patients): "
                  "the source data's terms apply to them as they are"]
    lines += ["", "## Fidelity", "", f"Measured on {card['metrics_describe']}.", ""]
    lines += [f"- {k}: {format_interval(v['estimate'], v.get('low'), v.get('high'))}" for k, v in card["fidelity"].items()] or ["- not measured"]
    lines += ["", "## Privacy", ""]
    lines += [f"- {k}: {v:.3f}" for k, v in card["privacy"].items() if isinstance(v, float)] or ["- not measured"]
    return "\n".join(lines) + "\n"


def export(run: str | Path, arm: str, fmt: str, out: str | Path, samples: str = "synthetic", override: str | None = None,
           real: str | None = None) -> Path:
    """Write the sample set ``samples`` of ``arm`` to ``out`` in ``fmt`` (nifti, nnunet or npz) with its data card,
    after the privacy gate; with ``real`` (a split: train, val, test, ...), the run's real slices of that split
    beside them (case prefix ``real``: a real + synthetic nnU-Net data set in one folder). Refuses a non-empty ``out``
    so that nothing already there is overwritten."""
    _check_arm(arm)
    _check_format(fmt)
    require_empty_folder(out)  # before any work
    params, paths = open_run(run)
    privacy = privacy_results(paths, arm)
    gate = privacy_gate(params, privacy, override)
    sample = generation.load_samples(paths, arm, samples)
    table = generation.samples_table(paths, arm)
    rows = table[table["file"] == f"{samples}.npz"]
    if rows.empty:
        raise KeyError(f"{paths.samples / arm / 'samples.csv'} has no row for {samples}.npz, so how it was made is "
                       f"unknown and no data card can be written; make the set again (`python -m cmrlib generate`)")
    record = {k: rows.iloc[-1].to_dict().get(k) for k in ("seed", "sampler", "steps", "weights", "checkpoint_step")}
    sets = {f"{arm}_{samples}": (sample["images"], sample["masks"])}
    slices = data.load(paths)[0] if paths.splits.is_file() else None
    if real is not None:
        if slices is None:
            raise FileNotFoundError(f"{paths.splits} does not exist: --real needs the run's data (stage 00_data)")
        chosen = slices.split(real)
        sets[f"real_{real}"] = (chosen.images, chosen.masks)
        real = {"split": real, "n": len(chosen), "patients": int(chosen.meta["patient"].nunique())}
    ranges = anatomy.area_ranges(slices.split("train").masks) if slices is not None else {}
    card = _card(arm, samples, sample["masks"], ranges=ranges, training=standalone.training_record(params, paths),
                 preprocessing=standalone.preprocessing(params.data), generation=record,
                 masks_origin=_mask_origin(params, samples), gate=gate, source=str(paths.root),
                 fidelity=_fidelity(paths, arm), privacy=privacy, real=real)
    return _write(out, fmt, card, sets)


__all__ = ["FORMATS", "PrivacyGateError", "Generator", "open_run", "from_run", "from_model_folder", "generate", "generate_to",
           "privacy_results", "privacy_gate", "export"]
