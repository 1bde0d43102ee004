"""The one training loop of the study: every generator (DDPM, LDM, flow matching, the mask prior) trains here.

A model is an ``nn.Module`` with ``model.loss(x, cond, generator) -> scalar`` (all its randomness drawn from
``generator``) and ``model.config`` (a JSON-able dict that rebuilds it). A model whose input passes through a frozen,
deterministic map first (the LDM's encoder) defines ``model.training_inputs(x)``: the loop applies it to the whole set
once, and ``loss`` takes its output. :func:`train` owns everything else:
AdamW, a linear warm-up then cosine decay to 0, gradient clipping, an EMA with warm-up, a tqdm bar, the loss log
``loss.csv``, atomic checkpoints and automatic, bit-exact resume. Budgets are in optimisation steps, and copies of
the checkpoint are kept at fractions of the budget (``step_0000250.pt`` ...) so that evaluation can report every
axis against training compute.

Run folder written by :func:`train`::

    out_dir/last.pt           the latest checkpoint (every ``checkpoint_every`` steps, at kept steps and at the end)
    out_dir/step_{N:07d}.pt   kept copies at ``keep_fractions`` of the budget
    out_dir/loss.csv          step, loss (mean since the previous row), lr, ema_decay, grad_norm, elapsed_s

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
from typing import Any, Literal

import pandas as pd
import torch
from torch import Tensor, nn

from . import __version__
from .paths import atomic_path

CHECKPOINT_FORMAT = "cmrlib.training/1"
LAST = "last.pt"
LOSS_CSV = "loss.csv"
LOSS_COLUMNS = ["step", "loss", "lr", "ema_decay", "grad_norm", "elapsed_s"]

# TrainConfig fields that do not change the trained weights, so a resume may change them
_RESUMABLE_KEYS = frozenset({"checkpoint_every", "keep_fractions", "log_every"})


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not belong to this run; the message names the file and the fix."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run. Everything except ``checkpoint_every``, ``keep_fractions`` and
    ``log_every`` defines the run: a resume with another value is refused.

    EMA with warm-up (``diffusers.training_utils.EMAModel(use_ema_warmup=True)``): at optimisation step ``t`` the
    decay is ``min(ema_max_decay, 1 - (1 + (t - 1) / ema_inv_gamma) ** -ema_power)`` (0 at the first step, so the EMA
    starts as the raw weights). It averages over roughly the last ``t ** ema_power`` steps: with the defaults about
    83 of 750 steps (decay 0.988) and 464 of 10k (0.998), so a short run is not held back.
    """

    steps: int = 10_000
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 500
    grad_clip: float | None = 1.0
    ema_max_decay: float = 0.9999
    ema_inv_gamma: float = 1.0
    ema_power: float = 2 / 3
    checkpoint_every: int = 1000
    keep_fractions: tuple[float, ...] = (0.25, 0.5, 1.0)
    seed: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep_fractions", tuple(float(f) for f in self.keep_fractions))
        problems = []
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)!r} must be >= 1")
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
        stage = f"the notebook {made_by}" if made_by else "the training notebook of this model"
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
# the loop


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


def _seed_for(seed: int, rank: int, stream: int) -> int:
    """A 63-bit seed for (run seed, process index, stream) so that processes and streams never share draws."""
    digest = hashlib.sha256(f"cmrlib.training:{seed}:{rank}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


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


def _diff_keys(stored: dict[str, Any], current: dict[str, Any], ignore=frozenset()) -> list[str]:
    keys = (set(stored) | set(current)) - ignore
    return sorted(k for k in keys if stored.get(k, "<missing>") != current.get(k, "<missing>"))


def _check_same_run(ckpt: dict[str, Any], path: Path, expected: dict[str, Any]) -> None:
    """Refuse to continue a checkpoint that belongs to a different run, naming the differing keys. How the run is
    executed (processes, precision, device type) matters only for continuing it, not for a finished run."""
    finished = ckpt.get("step", 0) >= expected["train_config"]["steps"]
    execution = () if finished else ("num_processes", "mixed_precision", "device_type")
    lines = []
    for section, ignore in (("config", frozenset()), ("train_config", _RESUMABLE_KEYS)):
        stored, current = ckpt.get(section) or {}, expected[section]
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


def _read_log(path: Path) -> pd.DataFrame:
    """The loss log; a missing or empty file (a run killed before its header reached the disk) has no rows."""
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame({c: pd.Series(dtype="float64") for c in LOSS_COLUMNS}).astype({"step": "int64"})
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable loss log ({type(exc).__name__}: {exc}); delete it to "
                              f"resume without the earlier rows") from exc


def _truncate_log(path: Path, step: int) -> None:
    """Keep the rows up to ``step`` (a resume at ``step`` redoes the later ones), rewritten atomically with its
    header (so an empty log from a killed run becomes a header-only one)."""
    if not path.exists():
        return
    log = _read_log(path)
    with atomic_path(path) as tmp:
        log[log["step"] <= step].to_csv(tmp, index=False)


def train(
    model: nn.Module,
    x: Tensor,
    cond: Tensor | None,
    config: TrainConfig,
    out_dir: str | Path,
    *,
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
    """
    from accelerate import Accelerator
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    if not callable(getattr(model, "loss", None)) or not isinstance(getattr(model, "config", None), dict):
        raise TypeError(f"{type(model).__name__} must have a loss(x, cond, generator) method and a dict config")
    if cond is not None and len(cond) != len(x):
        raise ValueError(f"cond has {len(cond)} samples but x has {len(x)}")
    if config.batch_size > len(x):
        raise ValueError(f"batch_size={config.batch_size} is larger than the data ({len(x)} samples)")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, log_path = out_dir / LAST, out_dir / LOSS_CSV

    accelerator = Accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    expected = {
        "config": _plain_config(model.config, f"{type(model).__name__}.config"),
        "train_config": config.to_dict(),
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "num_processes": world,
        "mixed_precision": str(accelerator.mixed_precision),
        "device_type": accelerator.device.type,
        "data": _data_fingerprint(x, cond),
    }

    ckpt = _read_checkpoint(last_path) if last_path.exists() else None
    if ckpt is not None:
        _check_same_run(ckpt, last_path, expected)
        if ckpt["step"] >= config.steps:  # finished: nothing to train
            model.load_state_dict(ckpt["model"])
            model.to(accelerator.device)  # where a training leaves it
            return TrainResult(
                step=ckpt["step"], losses=_read_log(log_path), checkpoints=kept_checkpoints(out_dir),
                wall_time_s=ckpt["elapsed_s"], last=last_path, resumed_from=ckpt["step"],
            )

    # --- build: model first (DDP broadcasts rank 0's weights), then optimiser and schedule on its parameters
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
    wrapper = _LossModule(model)
    optimizer = torch.optim.AdamW(wrapper.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # a prepared scheduler steps once per process per optimiser step unless batches are split (accelerate's
    # convention), so the schedule is laid out in those units; the lr still follows the budget in optimiser steps
    sched_mult = 1 if getattr(accelerator, "split_batches", False) else world
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, num_warmup_steps=config.warmup_steps * sched_mult, num_training_steps=config.steps * sched_mult
    )
    wrapper, optimizer, scheduler = accelerator.prepare(wrapper, optimizer, scheduler)
    net = accelerator.unwrap_model(wrapper).model
    params = list(net.parameters())
    # foreach: one fused update of all tensors per step on a GPU instead of a kernel per tensor; the CPU keeps the
    # per-tensor update, whose rounding the committed CPU runs have
    ema = EMAModel(
        params, decay=config.ema_max_decay, use_ema_warmup=True,
        inv_gamma=config.ema_inv_gamma, power=config.ema_power, foreach=accelerator.device.type == "cuda",
    )
    batch_gen = torch.Generator().manual_seed(_seed_for(config.seed, rank, 0))
    device = accelerator.device
    # on the accelerator's device, as the models draw with device=x.device (its state is a small CPU tensor)
    loss_gen = torch.Generator(device=device).manual_seed(_seed_for(config.seed, rank, 1))
    log_sum = torch.zeros((), device=device)  # losses summed since the last log row (mean over processes)
    log_count, step, elapsed0, ema_decay = 0, 0, 0.0, 0.0

    if ckpt is not None:
        step, elapsed0 = int(ckpt["step"]), float(ckpt["elapsed_s"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if accelerator.scaler is not None and ckpt.get("scaler") is not None:
            accelerator.scaler.load_state_dict(ckpt["scaler"])
        names = [n for n, _ in net.named_parameters()]
        ema.shadow_params = [ckpt["ema"][n].to(device=p.device, dtype=p.dtype) for n, p in zip(names, params)]
        ema.optimization_step = int(ckpt["ema_state"]["optimization_step"])
        ema_decay = float(ckpt["ema_decay"])
        batch_gen.set_state(ckpt["generators"]["batch"][rank].clone())
        loss_gen.set_state(ckpt["generators"]["loss"][rank].clone())
        log_sum = ckpt["log_accumulator"]["sum"].to(device)
        log_count = int(ckpt["log_accumulator"]["count"])
    if accelerator.is_main_process:
        if step == 0:
            log_path.unlink(missing_ok=True)  # the log of a run killed before its first checkpoint
        _truncate_log(log_path, step)
    resumed_from = step
    x, cond = x.to(device), None if cond is None else cond.to(device)
    x = training_inputs(net, x)
    n = len(x)

    def gather_states(gen: torch.Generator) -> list[Tensor]:
        state = gen.get_state()
        if world == 1:
            return [state]
        # clone: a view into the gathered tensor is stored with an offset that Generator.set_state ignores
        return [s.cpu().clone() for s in accelerator.gather(state.to(device)[None]).unbind(0)]

    def save(paths: list[Path], elapsed: float) -> None:
        # collectives first (every process reaches the same steps), then the main process writes
        batch_states, loss_states = gather_states(batch_gen), gather_states(loss_gen)
        acc_sum = accelerator.reduce(log_sum.clone(), reduction="mean") if world > 1 else log_sum
        if not accelerator.is_main_process:
            accelerator.wait_for_everyone()
            return
        raw = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        ema.store(params)
        ema.copy_to(params)
        ema_sd = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        ema.restore(params)
        payload = {
            "format": CHECKPOINT_FORMAT,
            "cmrlib_version": __version__,
            "step": step,
            "elapsed_s": elapsed,
            **expected,
            "model": raw,
            "ema": ema_sd,
            "ema_decay": ema_decay,
            "ema_state": {
                "optimization_step": ema.optimization_step,
                "max_decay": config.ema_max_decay,
                "inv_gamma": config.ema_inv_gamma,
                "power": config.ema_power,
                "formula": "min(max_decay, 1 - (1 + (t - 1) / inv_gamma) ** -power), 0 at t = 1",
            },
            "optimizer": _to_cpu(optimizer.state_dict()),
            "scheduler": scheduler.state_dict(),
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
            "generators": {"batch": batch_states, "loss": loss_states},
            "log_accumulator": {"sum": acc_sum.detach().cpu().clone(), "count": log_count},
        }
        for p in paths:
            _atomic_save(payload, p)
        accelerator.wait_for_everyone()

    kept = set(config.kept_steps)
    t0 = time.perf_counter()
    log_file = None
    if accelerator.is_main_process:
        new_log = not log_path.exists()
        log_file = open(log_path, "a", newline="")
        writer = csv.writer(log_file)
        if new_log:
            writer.writerow(LOSS_COLUMNS)
            log_file.flush()  # the header on disk with the first checkpoint, so that a kill leaves a readable log
    bar = tqdm(total=config.steps, initial=step, desc=desc, disable=not (progress and accelerator.is_local_main_process),
               dynamic_ncols=True)
    try:
        wrapper.train()
        while step < config.steps:
            idx = torch.randperm(n, generator=batch_gen)[: config.batch_size].to(device)
            xb, cb = x[idx], None if cond is None else cond[idx]
            loss = wrapper(xb, cb, loss_gen)
            if loss.ndim != 0:
                raise ValueError(f"{type(net).__name__}.loss must return a scalar, got shape {tuple(loss.shape)}")
            accelerator.backward(loss)
            grad_norm = (
                accelerator.clip_grad_norm_(wrapper.parameters(), config.grad_clip)
                if config.grad_clip is not None else None
            )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            ema.step(params)
            ema_decay = float(ema.cur_decay_value)
            step += 1
            log_sum += loss.detach().float()
            log_count += 1

            if step % config.log_every == 0 or step == config.steps:
                mean = (accelerator.reduce(log_sum, reduction="mean") if world > 1 else log_sum).item() / log_count
                if not math.isfinite(mean):
                    raise FloatingPointError(
                        f"{desc}: the training loss is {mean} at step {step}; lower lr or set grad_clip. "
                        f"{last_path} holds the last good checkpoint."
                    )
                lr = scheduler.get_last_lr()[0]
                gn = float(grad_norm) if grad_norm is not None else float("nan")
                if log_file is not None:
                    writer.writerow([step, mean, lr, ema_decay, gn, round(elapsed0 + time.perf_counter() - t0, 3)])
                    log_file.flush()
                bar.set_postfix(loss=f"{mean:.4g}", lr=f"{lr:.2e}", refresh=False)
                log_sum, log_count = torch.zeros((), device=device), 0
            bar.update(1)

            paths = []
            if step in kept:  # last.pt too, so that a kept file never outlives the run it belongs to
                paths.append(out_dir / _kept_name(step))
            if paths or step % config.checkpoint_every == 0 or step == config.steps:
                paths.append(last_path)
            if paths:
                save(paths, elapsed0 + time.perf_counter() - t0)
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()

    wall = elapsed0 + time.perf_counter() - t0
    accelerator.wait_for_everyone()
    return TrainResult(
        step=step, losses=_read_log(log_path), checkpoints=kept_checkpoints(out_dir), wall_time_s=wall,
        last=last_path, resumed_from=resumed_from,
    )


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
