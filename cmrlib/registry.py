"""The study's arms, registered in one place: what every other module asks about an arm.

An arm is a mask-conditioned image generator compared by the study. Its :class:`Arm` entry says:

- ``name``: the run folders ``checkpoints/<name>/`` and ``samples/<name>/``, and the runner's stage
  ``20_generator[<name>]`` (the generator notebook, run once per arm with ``arm`` as a papermill parameter);
- ``section``: its params section ``generators.<section>`` (a unet, a train budget, a sample setting, ...);
- ``build``: the untrained model from the params (an ``nn.Module`` with the interface of :mod:`cmrlib.models`);
- ``samplers``: the sampler names its ``sample.sampler`` accepts, and ``reference``: its 1000-step reference sampler
  (ancestral over the whole trained chain for diffusion, 1000 Euler steps for the flow ODE), against which the
  fidelity notebook judges a short sampler;
- ``label``: its name in tables, figures and the paper;
- ``autoencoder``: whether a frozen autoencoder is trained first (``checkpoints/<name>_autoencoder/``, section key
  ``autoencoder``), in the generator notebook.

How an arm maps a signal-to-noise ratio to its own noise level is the model's to answer (``model.noise_level(snr)``,
beside ``model.error_at``), so the membership attack needs no arm-specific code.

A new arm is one :func:`register` call (and, for a new params section, a field of
:class:`cmrlib.params.GeneratorsParams`); the runner's plan, the evaluation notebooks, the paper and the benchmark
take it from here. The order of registration is the order of tables and figures.
"""

from __future__ import annotations

import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .labels import NUM_CLASSES
from .params import DiffusionSampler, FlowSampler, StudyParams

GENERATOR_NOTEBOOK = "20_generator"
DIFFUSION_SAMPLERS = typing.get_args(DiffusionSampler)
FLOW_SAMPLERS = typing.get_args(FlowSampler)
REFERENCE_FLOW_STEPS = 1000  # the flow arms' reference: the ODE solved with this many Euler steps


def stage_name(notebook: str, arm: str) -> str:
    """The runner's name for the stage of a per-arm notebook (``20_generator``) run for ``arm``."""
    return f"{notebook}[{arm}]"


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    section: str
    build: Callable[[StudyParams], Any] = field(repr=False)
    samplers: tuple[str, ...]
    reference: Callable[[Any], tuple[str, int]] = field(repr=False)  # params section -> (sampler, steps)
    description: str = ""
    autoencoder: bool = False

    def params(self, params: StudyParams) -> Any:
        """The arm's params section, ``generators.<section>``."""
        return getattr(params.generators, self.section)

    @property
    def stage(self) -> str:
        """The runner's stage that trains and samples the arm."""
        return stage_name(GENERATOR_NOTEBOOK, self.name)

    @property
    def autoencoder_dir(self) -> str:
        """The checkpoint folder (under ``checkpoints/``) of the arm's autoencoder, for an arm that has one."""
        return f"{self.name}_autoencoder"

    def budgets(self, params: StudyParams) -> dict[str, Any]:
        """The arm's train budgets by their key in its section, in training order (an autoencoder's first)."""
        section = self.params(params)
        return ({"autoencoder.train": section.autoencoder.train} if self.autoencoder else {}) | {"train": section.train}

    @property
    def outputs(self) -> list[str]:
        """What the arm's stage leaves in the run folder (checked before the runner skips it)."""
        return [f"checkpoints/{self.name}/last.pt", f"samples/{self.name}/paired.npz", f"samples/{self.name}/synthetic.npz",
                f"samples/{self.name}/synthetic_oracle.npz", f"models/{self.name}/cmrlib_model.json"]

    def reference_sampling(self, params: StudyParams) -> Any:
        """The arm's ``sample`` settings with its 1000-step reference sampler."""
        section = self.params(params)
        sampler, steps = self.reference(section)
        return section.sample.model_copy(update={"sampler": sampler, "steps": steps})


_REGISTRY: dict[str, Arm] = {}


def register(arm: Arm) -> Arm:
    if arm.name in _REGISTRY:
        raise ValueError(f"an arm named {arm.name!r} is already registered")
    _REGISTRY[arm.name] = arm
    return arm


@contextmanager
def registered(arm: Arm) -> Iterator[Arm]:
    """Register ``arm`` for the duration of a ``with`` block (tests, experiments in a notebook)."""
    register(arm)
    try:
        yield arm
    finally:
        _REGISTRY.pop(arm.name, None)


def get(name: str) -> Arm:
    if name not in _REGISTRY:
        raise ValueError(f"unknown arm {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def names() -> list[str]:
    """The registered arms, in registration order (the order of every table and figure)."""
    return list(_REGISTRY)


def label(name: str) -> str:
    """The display label of an arm; any other name (``real only``, ...) unchanged."""
    return _REGISTRY[name].label if name in _REGISTRY else name


# -- the three arms of the study -------------------------------------------------------------------------------------
def _unet(section) -> dict:
    return section.unet.model_dump()


def _build_ddpm(params: StudyParams):
    from .models import DiffusionModel

    p = params.generators.ddpm
    return DiffusionModel(data_channels=1, cond_channels=NUM_CLASSES, sample_size=params.data.image_size, unet=_unet(p),
                          conditioning=p.conditioning, **p.schedule.model_dump())


def _build_ldm(params: StudyParams):
    """The LDM with an untrained autoencoder (the generator notebook trains it first, then freezes it)."""
    from .models import Autoencoder, LatentDiffusion

    p = params.generators.ldm
    ae = p.autoencoder
    autoencoder = Autoencoder(sample_size=params.data.image_size, widths=ae.widths, latent_channels=ae.latent_channels,
                              kl_weight=ae.kl_weight)
    diffusion = dict(data_channels=ae.latent_channels, cond_channels=NUM_CLASSES, sample_size=autoencoder.latent_size,
                     unet=_unet(p), conditioning=p.conditioning,
                     **{**p.schedule.model_dump(), "clip_sample": False})  # latents are not bounded
    return LatentDiffusion(autoencoder=autoencoder.config, diffusion=diffusion)


def _build_fm(params: StudyParams):
    from .models import FlowMatchingModel

    p = params.generators.fm
    return FlowMatchingModel(data_channels=1, cond_channels=NUM_CLASSES, sample_size=params.data.image_size, unet=_unet(p),
                             conditioning=p.conditioning, time_sampling=p.time_sampling)


def diffusion_reference(section) -> tuple[str, int]:
    """Ancestral sampling over the whole trained chain."""
    return "ancestral", section.schedule.num_train_timesteps


def flow_reference(section) -> tuple[str, int]:
    """The ODE solved with :data:`REFERENCE_FLOW_STEPS` Euler steps."""
    return "euler", REFERENCE_FLOW_STEPS


register(Arm("ddpm", "DDPM", "ddpm", _build_ddpm, DIFFUSION_SAMPLERS, diffusion_reference,
             "pixel-space denoising diffusion (velocity prediction, Min-SNR weighting)"))
register(Arm("ldm", "LDM", "ldm", _build_ldm, DIFFUSION_SAMPLERS, diffusion_reference,
             "latent diffusion: a frozen KL autoencoder, diffusion on its latents", autoencoder=True))
register(Arm("fm", "FM", "fm", _build_fm, FLOW_SAMPLERS, flow_reference,
             "flow matching on the straight path (rectified flow), velocity prediction"))
