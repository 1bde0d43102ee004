"""The one training loop of the study: every generator (DDPM, LDM, flow matching, the mask prior) trains here.

A model is an ``nn.Module`` with ``model.loss(x, cond, generator) -> scalar`` (all its randomness drawn from
``generator``) and ``model.config`` (a JSON-able dict that rebuilds it). A model whose input passes through a frozen,
deterministic map first (the LDM's encoder) defines ``model.training_inputs(x)``: the loop applies it to the whole set
once, and ``loss`` takes its output. The loop owns everything else, in four parts:
:class:`TrainingState` (AdamW, a linear warm-up then cosine decay to 0, gradient clipping, an EMA with warm-up, the
random generators, with its state dict), :class:`Checkpointer` (atomic saves, resume, the same-run check),
:class:`RunLog` (``loss.csv``, ``validation.csv``) and :func:`train`, the loop that ties them with a tqdm bar: automatic, bit-exact resume. Budgets are in optimisation steps, and copies of
the checkpoint are kept at fractions of the budget (``step_0000250.pt`` ...) so that evaluation can report every
axis against training compute.

Run folder written by :func:`train`::

    out_dir/last.pt           the latest checkpoint (every ``checkpoint_every`` steps, at kept steps and at the end)
    out_dir/step_{N:07d}.pt   kept copies at ``keep_fractions`` of the budget
    out_dir/loss.csv          step, loss (mean since the previous row), lr, ema_decay, grad_norm, elapsed_s
    out_dir/best.pt           with validation (``val_every``): the checkpoint of the best validation score so far
    out_dir/validation.csv    with validation: step, score (of the EMA weights), best_step, elapsed_s

Devices. The loop is built on :class:`accelerate.Accelerator`, which takes its setup from environment variables,
not from the file ``accelerate config`` writes (only ``accelerate launch`` reads that file). In a notebook kernel
(one process) it trains on the visible GPU, else the CPU; choose the GPU with ``CUDA_VISIBLE_DEVICES`` (set before anything uses
CUDA) and mixed precision with ``ACCELERATE_MIXED_PRECISION=bf16`` (set before :func:`train` is called). For several GPUs (or
machines), run ``accelerate config`` once, then start a script that builds the model and data and calls
:func:`train` with ``accelerate launch``, for example ``accelerate launch --num_processes 4 train_ddpm.py``
(``torchrun`` works too). From inside a notebook, ``accelerate.notebook_launcher(fn, args, num_processes=4)``
starts the processes, provided the kernel has not initialised CUDA before.

Each process draws its own batches (``batch_size`` per process, so the effective batch is ``batch_size`` times the
number of processes) and its own noise; the number of processes and the mixed precision are stored in the
checkpoint and a resume with other ones is refused, since they change the run. The checkpoint files are the same
in every case, so the sampling and evaluation notebooks read them unchanged.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import pickle
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import pandas as pd
import torch
from torch import Tensor, nn

from . import __version__
from .params import TrainParams
from .paths import atomic_path
from .seeds import process_seed

CHECKPOINT_FORMAT = "cmrlib.training/1"
LAST = "last.pt"
LOSS_CSV = "loss.csv"
LOSS_COLUMNS = ["step", "loss", "lr", "ema_decay", "grad_norm", "elapsed_s"]
BEST = "best.pt"
VALIDATION_CSV = "validation.csv"
VALIDATION_COLUMNS = ["step", "score", "best_step", "elapsed_s"]

# TrainConfig fields that do not change the trained weights, so a resume may change them
_RESUMABLE_KEYS = frozenset({"checkpoint_every", "keep_fractions", "log_every"})
_RECIPE = TrainParams()  # the default recipe's budget: the loop's defaults are the same values


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not belong to this run; the message names the file and the fix."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run. Everything except ``checkpoint_every``, ``keep_fractions`` and
    ``log_every`` defines the run: a resume with another value is refused.

    The defaults are the default recipe's (:class:`cmrlib.params.TrainParams`). EMA with warm-up
    (``diffusers.training_utils.EMAModel(use_ema_warmup=True)``): at optimisation step ``t`` the decay is
    ``min(ema_max_decay, 1 - (1 + (t - 1) / ema_inv_gamma) ** -ema_power)`` (0 at the first step, so the EMA starts
    as the raw weights). It averages over roughly the last ``t ** ema_power`` steps: about 83 of 750 steps (decay
    0.988), so a short run is not held back; ``ema_max_decay`` caps it (0.999: at most ~1000 steps).
    """

    steps: int = _RECIPE.steps
    batch_size: int = _RECIPE.batch_size
    lr: float = _RECIPE.lr
    weight_decay: float = _RECIPE.weight_decay
    warmup_steps: int = _RECIPE.warmup_steps
    grad_clip: float | None = _RECIPE.grad_clip
    ema_max_decay: float = _RECIPE.ema_max_decay
    ema_inv_gamma: float = 1.0
    ema_power: float = 2 / 3
    checkpoint_every: int = _RECIPE.checkpoint_every
    keep_fractions: tuple[float, ...] = tuple(_RECIPE.keep_fractions)
    seed: int = 0
    log_every: int = 10
    val_every: int = 0  # validate the EMA weights every this many steps and at the end, keeping the best (0: never)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_fractions", tuple(float(f) for f in self.keep_fractions))
        problems = []
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)!r} must be >= 1")
        if self.val_every < 0:
            problems.append(f"val_every={self.val_every!r} must be >= 0 (0: no validation)")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps={self.warmup_steps!r} must be >= 0")
        if self.lr <= 0:
            problems.append(f"lr={self.lr!r} must be > 0")
        if self.weight_decay < 0:
            problems.append(f"weight_decay={self.weight_decay!r} must be >= 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            problems.append(f"grad_clip={self.grad_clip!r} must be > 0 (or None for no clipping)")
        if not 0 <= self.ema_max_decay < 1:
            problems.append(f"ema_max_decay={self.ema_max_decay!r} must be in [0, 1)")
        if self.ema_inv_gamma <= 0 or self.ema_power <= 0:
            problems.append("ema_inv_gamma and ema_power must be > 0")
        if any(not 0 < f <= 1 for f in self.keep_fractions):
            problems.append(f"keep_fractions={self.keep_fractions!r} must lie in (0, 1]")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    @property
    def kept_steps(self) -> list[int]:
        """The steps whose checkpoints are kept: ``keep_fractions`` of ``steps``, rounded, at least 1."""
        return sorted({max(1, round(f * self.steps)) for f in self.keep_fractions})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (lists, not tuples), as stored in the checkpoint."""
        d = dataclasses.asdict(self)
        d["keep_fractions"] = list(self.keep_fractions)
        return d

    @classmethod
    def from_params(cls, p: TrainParams, seed: int) -> "TrainConfig":
        """The loop's config of a params budget (``generators.<model>.train``), with the run's seed for this model."""
        return cls(steps=p.steps, batch_size=p.batch_size, lr=p.lr, weight_decay=p.weight_decay,
                   warmup_steps=p.warmup_steps, grad_clip=p.grad_clip, ema_max_decay=p.ema_max_decay,
                   checkpoint_every=p.checkpoint_every, keep_fractions=tuple(p.keep_fractions), seed=seed)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; valid keys: {sorted(known)}")
        return cls(**d)


@dataclass
class TrainResult:
    step: int
    losses: pd.DataFrame  # the rows of loss.csv
    checkpoints: dict[int, Path]  # kept checkpoints, step -> path, ordered by step
    wall_time_s: float  # training wall time over all sessions (resumes included)
    last: Path = field(default=Path())  # out_dir/last.pt
    resumed_from: int = 0  # the step this call started at (0: a fresh run)
    validation: pd.DataFrame | None = None  # the rows of validation.csv (None: the run does not validate)
    best: Path | None = None  # out_dir/best.pt, the checkpoint of the best validation score (None: no validation)
    best_step: int | None = None
    best_score: float | None = None

    @property
    def chosen(self) -> Path:
        """The checkpoint to evaluate: the best on validation where the run validates, else the last."""
        return self.last if self.best is None else self.best

    @property
    def chosen_step(self) -> int:
        return self.step if self.best_step is None else self.best_step


# ----------------------------------------------------------------------------------------------------------------
# checkpoints


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: a killed run never leaves half a file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise CheckpointError(
                f"{path} holds objects other than tensors and plain values, so it cannot be loaded with "
                f"weights_only=True: it was not written by cmrlib.training. Delete it (or move it away) to restart "
                f"training from scratch."
            ) from exc
        raise CheckpointError(_corrupt_message(path, exc)) from exc
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as exc:  # truncated: OSError EINVAL
        raise CheckpointError(_corrupt_message(path, exc)) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a cmrlib.training checkpoint (no format {CHECKPOINT_FORMAT!r}). Delete it (or move it "
            f"away) to restart training from scratch."
        )
    return ckpt


def _corrupt_message(path: Path, exc: BaseException) -> str:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"{path} is corrupt or truncated and cannot be loaded ({type(exc).__name__}: {first_line}). Delete it to "
        f"restart training from scratch, or copy one of the kept step_*.pt files of the same folder to last.pt to "
        f"resume from that step."
    )


def load_checkpoint(
    path: str | Path,
    model: nn.Module | None = None,
    *,
    weights: Literal["ema", "raw"] = "ema",
    made_by: str | None = None,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`train` (``torch.load(..., weights_only=True)``, tensors on the CPU).

    With ``model``, its weights become the chosen ones: ``"ema"`` (the EMA weights, decay ``ckpt["ema_decay"]``) or
    ``"raw"`` (the optimiser's weights). The returned dict has ``config`` (``model.config``), ``train_config``,
    ``step``, ``elapsed_s``, ``cmrlib_version``, ``model`` and ``ema`` (state dicts), ``ema_decay``, and ``weights``
    (the choice made here, to report which weights were sampled). ``made_by`` names the notebook that writes the
    file, for the error when it is missing.
    """
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights={weights!r}: expected 'ema' or 'raw'")
    path = Path(path)
    if not path.exists():
        stage = f"the stage {made_by}" if made_by else "the training notebook of this model"
        raise FileNotFoundError(
            f"{path} does not exist: checkpoints are written by cmrlib.training.train, called from {stage}. Run that "
            f"training first (kept checkpoints of a run: {sorted(p.name for p in kept_checkpoints(path.parent).values())})."
            if path.parent.exists()
            else f"{path} does not exist (nor does its folder): checkpoints are written by cmrlib.training.train, "
            f"called from {stage}. Run that training first."
        )
    ckpt = _read_checkpoint(path)
    if model is not None:
        try:
            model.load_state_dict(ckpt["model" if weights == "raw" else "ema"])
        except RuntimeError as exc:
            raise CheckpointError(
                f"the weights in {path} do not fit the given model (checkpoint config: {ckpt.get('config')}): {exc}"
            ) from exc
    ckpt["weights"] = weights
    return ckpt


def kept_checkpoints(out_dir: str | Path) -> dict[int, Path]:
    """The kept checkpoints ``step_{N:07d}.pt`` of a training folder, step -> path, ordered by step."""
    out_dir = Path(out_dir)
    found = {}
    for p in out_dir.glob("step_*.pt"):
        try:
            found[int(p.stem.removeprefix("step_"))] = p
        except ValueError:
            continue
    return dict(sorted(found.items()))


def _kept_name(step: int) -> str:
    return f"step_{step:07d}.pt"


# ----------------------------------------------------------------------------------------------------------------
# the identity of a run, and the checkpointer that saves, loads and checks it


def _plain_config(config: Any, what: str) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(config)))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be a dict of JSON-able values (it is stored in the checkpoint): {exc}") from exc


def _data_fingerprint(x: Tensor, cond: Tensor | None) -> dict[str, Any]:
    h = hashlib.blake2b(digest_size=16)
    for t in (x, cond):
        if t is not None:
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return {
        "x_shape": list(x.shape),
        "cond_shape": None if cond is None else list(cond.shape),
        "hash": h.hexdigest(),
    }


def run_identity(model: nn.Module, config: TrainConfig, accelerator, x: Tensor, cond: Tensor | None) -> dict[str, Any]:
    """What makes a run the same run: the model's config and class, the loop's config, the data, and how it executes
    (processes, precision, device type). Stored in every checkpoint; a resume must match it."""
    return {
        "config": _plain_config(model.config, f"{type(model).__name__}.config"),
        "train_config": config.to_dict(),
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "num_processes": accelerator.num_processes,
        "mixed_precision": str(accelerator.mixed_precision),
        "device_type": accelerator.device.type,
        "data": _data_fingerprint(x, cond),
    }


def _diff_keys(stored: dict[str, Any], current: dict[str, Any], ignore=frozenset()) -> list[str]:
    keys = (set(stored) | set(current)) - ignore
    return sorted(k for k in keys if stored.get(k, "<missing>") != current.get(k, "<missing>"))


# TrainConfig fields added after checkpoints were written: a checkpoint without one ran with its default
_ADDED_KEYS = {"val_every": 0}


def _check_same_run(ckpt: dict[str, Any], path: Path, expected: dict[str, Any]) -> None:
    """Refuse to continue a checkpoint that belongs to a different run, naming the differing keys. How the run is
    executed (processes, precision, device type) matters only for continuing it, not for a finished run."""
    finished = ckpt.get("step", 0) >= expected["train_config"]["steps"]
    execution = () if finished else ("num_processes", "mixed_precision", "device_type")
    lines = []
    for section, ignore, added in (("config", frozenset(), {}), ("train_config", _RESUMABLE_KEYS, _ADDED_KEYS)):
        stored, current = {**added, **(ckpt.get(section) or {})}, expected[section]
        for k in _diff_keys(stored, current, ignore):
            lines.append(f"{section}.{k}: checkpoint {stored.get(k, '<missing>')!r}, now {current.get(k, '<missing>')!r}")
    for key in ("model_class", "data", *execution):
        if ckpt.get(key) != expected[key]:
            lines.append(f"{key}: checkpoint {ckpt.get(key)!r}, now {expected[key]!r}")
    if lines:
        raise CheckpointError(
            f"{path} belongs to a different run, so training does not continue it:\n  " + "\n  ".join(lines)
            + f"\nUse another out_dir for the new run, or delete {path.parent} (or its last.pt) to restart it."
        )


class Checkpointer:
    """The checkpoints of one run folder: ``last.pt`` (read on resume, checked against the run's identity) and the
    kept copies ``step_{N:07d}.pt`` at ``config.kept_steps``. Writes are atomic."""

    def __init__(self, out_dir: Path, identity: dict[str, Any], config: TrainConfig):
        self.out_dir, self.identity, self.config = out_dir, identity, config
        self.last_path = out_dir / LAST
        self.kept = set(config.kept_steps)

    def resume(self) -> dict[str, Any] | None:
        """The last checkpoint of this run, or None for a fresh one; a different run's is a :class:`CheckpointError`."""
        if not self.last_path.exists():
            return None
        ckpt = _read_checkpoint(self.last_path)
        _check_same_run(ckpt, self.last_path, self.identity)
        return ckpt

    def due(self, step: int, best: bool = False) -> list[Path]:
        """Where the checkpoint of ``step`` goes: best.pt first when it is the best on validation; a kept copy at a
        kept step; last.pt with either (so that a kept file never outlives the run it belongs to, and a resume never
        starts behind the best checkpoint on disk: a replay on a GPU need not reproduce its score), every
        ``checkpoint_every`` steps and at the end; [] otherwise."""
        paths = [self.out_dir / BEST] if best else []
        if step in self.kept:
            paths.append(self.out_dir / _kept_name(step))
        if paths or step % self.config.checkpoint_every == 0 or step == self.config.steps:
            paths.append(self.last_path)
        return paths

    def save(self, state: dict[str, Any], paths: list[Path]) -> None:
        payload = {"format": CHECKPOINT_FORMAT, "cmrlib_version": __version__, **self.identity, **state}
        for p in paths:
            _atomic_save(payload, p)


# ----------------------------------------------------------------------------------------------------------------
# the loss log


def _read_log(path: Path, columns: list[str] = LOSS_COLUMNS) -> pd.DataFrame:
    """A run's log (``loss.csv``, ``validation.csv``); a missing or empty file (a run killed before its header reached
    the disk) has no rows."""
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in columns}).astype({"step": "int64"})
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable log ({type(exc).__name__}: {exc}); delete it to "
                              f"resume without the earlier rows") from exc


def _truncate_log(path: Path, step: int, columns: list[str]) -> None:
    """Keep the rows up to ``step`` (a resume at ``step`` redoes the later ones), rewritten atomically with its
    header (so an empty log from a killed run becomes a header-only one)."""
    if not path.exists():
        return
    log = _read_log(path, columns)
    with atomic_path(path) as tmp:
        log[log["step"] <= step].to_csv(tmp, index=False)


class RunLog:
    """A log of a run (``loss.csv``, or ``validation.csv`` with its ``columns``), written by the main process only:
    cut back to the resumed step, its header on disk before the first row (so that a kill leaves a readable log),
    each row flushed as it is written."""

    def __init__(self, path: Path, step: int, main_process: bool, columns: list[str] = LOSS_COLUMNS):
        self.path, self.columns, self._file, self._writer = path, columns, None, None
        if not main_process:
            return
        if step == 0:
            path.unlink(missing_ok=True)  # the log of a run killed before its first checkpoint
        _truncate_log(path, step, columns)
        new = not path.exists()
        self._file = open(path, "a", newline="")
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(columns)
            self._file.flush()

    def write(self, row: list) -> None:
        if self._writer is not None:
            self._writer.writerow(row)
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def rows(self) -> pd.DataFrame:
        return _read_log(self.path, self.columns)


# ----------------------------------------------------------------------------------------------------------------
# the training state


class _LossModule(nn.Module):
    """Makes ``model.loss`` the ``forward`` so that DistributedDataParallel (which hooks ``forward``) syncs it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, cond: Tensor | None, generator: torch.Generator) -> Tensor:
        return self.model.loss(x, cond, generator)


def training_inputs(model: nn.Module, x: Tensor) -> Tensor:
    """What ``model.loss`` takes for the set ``x``: ``model.training_inputs(x)`` where the model defines it (a frozen,
    deterministic map applied once, as the LDM's encoder), else ``x``."""
    encode = getattr(model, "training_inputs", None)
    return encode(x) if callable(encode) else x


class TrainingState:
    """Everything a run's next step depends on: the model (wrapped for the accelerator), AdamW, the warm-up + cosine
    schedule, the EMA, the batch and loss generators, the step, the elapsed time and the loss accumulator of the
    next log row. :meth:`state_dict` / :meth:`load_state_dict` give and take the checkpoint's part of it."""

    def __init__(self, model: nn.Module, config: TrainConfig, accelerator):
        from diffusers.optimization import get_cosine_schedule_with_warmup
        from diffusers.training_utils import EMAModel

        self.config, self.accelerator = config, accelerator
        rank, world = accelerator.process_index, accelerator.num_processes
        # model first (DDP broadcasts rank 0's weights), then optimiser and schedule on its parameters
        wrapper = _LossModule(model)
        optimizer = torch.optim.AdamW(wrapper.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        # a prepared scheduler steps once per process per optimiser step unless batches are split (accelerate's
        # convention), so the schedule is laid out in those units; the lr still follows the budget in optimiser steps
        mult = 1 if getattr(accelerator, "split_batches", False) else world
        scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=config.warmup_steps * mult,
                                                    num_training_steps=config.steps * mult)
        self.wrapper, self.optimizer, self.scheduler = accelerator.prepare(wrapper, optimizer, scheduler)
        self.net = accelerator.unwrap_model(self.wrapper).model
        self.params = list(self.net.parameters())
        # foreach: one fused update of all tensors per step on a GPU instead of a kernel per tensor; the CPU keeps the
        # per-tensor update, whose rounding the committed CPU runs have
        self.ema = EMAModel(self.params, decay=config.ema_max_decay, use_ema_warmup=True, inv_gamma=config.ema_inv_gamma,
                            power=config.ema_power, foreach=accelerator.device.type == "cuda")
        self.device = accelerator.device
        self.batch_gen = torch.Generator().manual_seed(process_seed(config.seed, rank, 0))
        # on the accelerator's device, as the models draw with device=x.device (its state is a small CPU tensor)
        self.loss_gen = torch.Generator(device=self.device).manual_seed(process_seed(config.seed, rank, 1))
        self.log_sum = torch.zeros((), device=self.device)  # losses summed since the last log row
        self.log_count, self.step, self.elapsed0, self.ema_decay = 0, 0, 0.0, 0.0
        self.best_step, self.best_score = None, -math.inf  # the best validation so far (val_every > 0)
        self.last_score = math.nan

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint (the model's raw weights are loaded before this state is built)."""
        rank = self.accelerator.process_index
        self.step, self.elapsed0 = int(ckpt["step"]), float(ckpt["elapsed_s"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.accelerator.scaler is not None and ckpt.get("scaler") is not None:
            self.accelerator.scaler.load_state_dict(ckpt["scaler"])
        names = [n for n, _ in self.net.named_parameters()]
        self.ema.shadow_params = [ckpt["ema"][n].to(device=p.device, dtype=p.dtype) for n, p in zip(names, self.params)]
        self.ema.optimization_step = int(ckpt["ema_state"]["optimization_step"])
        self.ema_decay = float(ckpt["ema_decay"])
        self.batch_gen.set_state(ckpt["generators"]["batch"][rank].clone())
        self.loss_gen.set_state(ckpt["generators"]["loss"][rank].clone())
        self.log_sum = ckpt["log_accumulator"]["sum"].to(self.device)
        self.log_count = int(ckpt["log_accumulator"]["count"])
        best = ckpt.get("validation") or {}
        self.best_step, self.best_score = best.get("best_step"), float(best.get("best_score", -math.inf))

    def _gather(self, gen: torch.Generator) -> list[Tensor]:
        state = gen.get_state()
        if self.accelerator.num_processes == 1:
            return [state]
        # clone: a view into the gathered tensor is stored with an offset that Generator.set_state ignores
        return [s.cpu().clone() for s in self.accelerator.gather(state.to(self.device)[None]).unbind(0)]

    def state_dict(self, elapsed: float) -> dict[str, Any] | None:
        """The checkpoint's part of the state, on the main process (None on the others). Every process must call it
        at the same steps: it gathers the generators and the loss accumulator first."""
        accelerator, config = self.accelerator, self.config
        batch_states, loss_states = self._gather(self.batch_gen), self._gather(self.loss_gen)
        acc_sum = accelerator.reduce(self.log_sum.clone(), reduction="mean") if accelerator.num_processes > 1 else self.log_sum
        if not accelerator.is_main_process:
            return None
        raw = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        ema_sd = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
        self.ema.restore(self.params)
        return {
            "step": self.step,
            "elapsed_s": elapsed,
            "model": raw,
            "ema": ema_sd,
            "ema_decay": self.ema_decay,
            "ema_state": {
                "optimization_step": self.ema.optimization_step,
                "max_decay": config.ema_max_decay,
                "inv_gamma": config.ema_inv_gamma,
                "power": config.ema_power,
                "formula": "min(max_decay, 1 - (1 + (t - 1) / inv_gamma) ** -power), 0 at t = 1",
            },
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "generators": {"batch": batch_states, "loss": loss_states},
            "log_accumulator": {"sum": acc_sum.detach().cpu().clone(), "count": self.log_count},
            "validation": {"best_step": self.best_step, "best_score": self.best_score},
        }

    def validate(self, score: Callable[[nn.Module], float], desc: str) -> bool:
        """Score the EMA weights (in eval mode) with ``score`` (higher is better), on every process, the mean over
        processes taken; True when it beats the best so far, which it then becomes."""
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        self.net.eval()
        try:
            with torch.no_grad():
                value = score(self.net)
        finally:
            self.ema.restore(self.params)
            self.wrapper.train()
        if self.accelerator.num_processes > 1:  # one decision on every process, so they save (and gather) together
            value = self.accelerator.reduce(torch.tensor(float(value), device=self.device), reduction="mean").item()
        value = float(value)
        if not math.isfinite(value):
            raise FloatingPointError(f"{desc}: the validation score is {value} at step {self.step}; the validation "
                                     "set must give a finite score (a segmenter's: labelled validation slices)")
        self.last_score = value
        if value > self.best_score:
            self.best_step, self.best_score = self.step, value
            return True
        return False

    def optimise(self, x: Tensor, cond: Tensor | None) -> Tensor | None:
        """One optimisation step on a batch drawn from (x, cond); returns the gradient norm (None without clipping),
        left on the device (reading it would synchronise a GPU every step)."""
        accelerator, config = self.accelerator, self.config
        idx = torch.randperm(len(x), generator=self.batch_gen)[: config.batch_size].to(self.device)
        loss = self.wrapper(x[idx], None if cond is None else cond[idx], self.loss_gen)
        if loss.ndim != 0:
            raise ValueError(f"{type(self.net).__name__}.loss must return a scalar, got shape {tuple(loss.shape)}")
        accelerator.backward(loss)
        grad_norm = (accelerator.clip_grad_norm_(self.wrapper.parameters(), config.grad_clip)
                     if config.grad_clip is not None else None)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.params)
        self.ema_decay = float(self.ema.cur_decay_value)
        self.step += 1
        self.log_sum += loss.detach().float()
        self.log_count += 1
        return grad_norm

    def log_row(self, elapsed: float, grad_norm: Tensor | None, desc: str, last_path: Path) -> list:
        """The loss log's row of this step (the mean loss since the previous row, over processes); resets the sum."""
        accelerator = self.accelerator
        total = accelerator.reduce(self.log_sum, reduction="mean") if accelerator.num_processes > 1 else self.log_sum
        mean = total.item() / self.log_count
        if not math.isfinite(mean):
            raise FloatingPointError(f"{desc}: the training loss is {mean} at step {self.step}; lower lr or set "
                                     f"grad_clip. {last_path} holds the last good checkpoint.")
        lr = self.scheduler.get_last_lr()[0]
        self.log_sum, self.log_count = torch.zeros((), device=self.device), 0
        return [self.step, mean, lr, self.ema_decay, float("nan") if grad_norm is None else float(grad_norm), round(elapsed, 3)]


# ----------------------------------------------------------------------------------------------------------------
# the loop


def train(
    model: nn.Module,
    x: Tensor,
    cond: Tensor | None,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    validate: Callable[[nn.Module], float] | None = None,
    desc: str = "train",
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` on the in-memory batch ``x`` (and per-sample conditioning ``cond``) for ``config.steps``.

    Resumes from ``out_dir/last.pt`` if it exists (bit-exact on the CPU: weights, EMA, optimiser, schedule and both
    random generators are restored), returns at once if that checkpoint has reached the budget, and refuses one
    from a different run (another ``model.config``, budget, seed, data or process count). Each step draws
    ``batch_size`` distinct indices with a CPU generator of the loop and passes a second one, on the accelerator's
    device, to ``model.loss`` (draw with ``device=x.device``); the device type is part of the run, as the same seed
    gives other noise on a GPU than on the CPU. On return, ``model`` holds the raw (not EMA) weights, on the
    accelerator's device; :func:`load_checkpoint` gives either. ``progress``: show the per-step bar (``desc``).

    Validation (``config.val_every`` > 0, with ``validate``: the EMA weights in eval mode -> a score, higher is
    better): every ``val_every`` steps and at the last, the EMA weights are scored; the best checkpoint so far is
    ``out_dir/best.pt`` (a full checkpoint), each score a row of ``out_dir/validation.csv``. The schedule does not
    depend on the scores: the run always trains its whole budget, and ``TrainResult.chosen`` is the best checkpoint.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    if not callable(getattr(model, "loss", None)) or not isinstance(getattr(model, "config", None), dict):
        raise TypeError(f"{type(model).__name__} must have a loss(x, cond, generator) method and a dict config")
    if cond is not None and len(cond) != len(x):
        raise ValueError(f"cond has {len(cond)} samples but x has {len(x)}")
    if config.batch_size > len(x):
        raise ValueError(f"batch_size={config.batch_size} is larger than the data ({len(x)} samples)")
    if (validate is None) != (config.val_every == 0):
        raise ValueError(f"val_every={config.val_every} needs a validate function, and a validate function needs "
                         "val_every > 0")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator()
    checkpoints = Checkpointer(out_dir, run_identity(model, config, accelerator, x, cond), config)

    ckpt = checkpoints.resume()
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if ckpt["step"] >= config.steps:  # finished: nothing to train
            model.to(accelerator.device)  # where a training leaves it
            return _result(out_dir, config, ckpt["step"], ckpt["elapsed_s"], ckpt["step"], ckpt.get("validation"))
    state = TrainingState(model, config, accelerator)
    if ckpt is not None:
        state.load_state_dict(ckpt)
    resumed_from = state.step
    log = RunLog(out_dir / LOSS_CSV, state.step, accelerator.is_main_process)
    val_log = (RunLog(out_dir / VALIDATION_CSV, state.step, accelerator.is_main_process, VALIDATION_COLUMNS)
               if config.val_every else None)
    x, cond = x.to(state.device), None if cond is None else cond.to(state.device)
    x = training_inputs(state.net, x)

    t0 = time.perf_counter()
    bar = tqdm(total=config.steps, initial=state.step, desc=desc, dynamic_ncols=True,
               disable=not (progress and accelerator.is_local_main_process))
    postfix: dict[str, str] = {}
    try:
        state.wrapper.train()
        while state.step < config.steps:
            grad_norm = state.optimise(x, cond)
            if state.step % config.log_every == 0 or state.step == config.steps:
                row = state.log_row(state.elapsed0 + time.perf_counter() - t0, grad_norm, desc, checkpoints.last_path)
                log.write(row)
                postfix.update(loss=f"{row[1]:.4g}", lr=f"{row[2]:.2e}")
                bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            best = False
            if val_log is not None and (state.step % config.val_every == 0 or state.step == config.steps):
                best = state.validate(validate, desc)
                val_log.write([state.step, state.last_score, state.best_step,
                               round(state.elapsed0 + time.perf_counter() - t0, 3)])
                postfix["val"] = f"{state.last_score:.4g}"
                bar.set_postfix(postfix, refresh=False)
            if paths := checkpoints.due(state.step, best):
                saved = state.state_dict(state.elapsed0 + time.perf_counter() - t0)  # collectives on every process
                if saved is not None:
                    checkpoints.save(saved, paths)
                accelerator.wait_for_everyone()
    finally:
        bar.close()
        log.close()
        if val_log is not None:
            val_log.close()

    wall = state.elapsed0 + time.perf_counter() - t0
    accelerator.wait_for_everyone()
    return _result(out_dir, config, state.step, wall, resumed_from,
                   {"best_step": state.best_step, "best_score": state.best_score} if config.val_every else None)


def _result(out_dir: Path, config: TrainConfig, step: int, wall: float, resumed_from: int,
            validation: dict[str, Any] | None) -> TrainResult:
    """The :class:`TrainResult` of a run folder at ``step``, with its validation where the run validates."""
    result = TrainResult(step=step, losses=_read_log(out_dir / LOSS_CSV), checkpoints=kept_checkpoints(out_dir),
                         wall_time_s=wall, last=out_dir / LAST, resumed_from=resumed_from)
    if config.val_every and validation and validation.get("best_step") is not None:
        result.validation = _read_log(out_dir / VALIDATION_CSV, VALIDATION_COLUMNS)
        result.best, result.best_step = out_dir / BEST, int(validation["best_step"])
        result.best_score = float(validation["best_score"])
    return result


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
