"""``python -m cmrlib.bench``: what the study costs on this machine, printed as tables and written as JSON.

    python -m cmrlib.bench [--params params/default.yaml] [--paper-params params/paper.yaml] [--run runs/default]
                           [--repeats 5] [--out runs/bench.json] [--mixed-precision no|bf16]
                           [--sections training,sampling,...] [--quick]

Everything runs where the study trains: the GPU if there is one, else the CPU (:func:`cmrlib.models.device`).
Sections (medians over ``--repeats``; peak memory of the process as it grows):

- ``peak``: this machine's float32 matrix-product rate (a 2048 x 2048 product), the ceiling for the rates below; on
  a GPU the float32, TF32 and bfloat16 rates of 8192 x 8192 products, and the ceiling is the bfloat16 one (the card's
  dense rate: float32 training reaches at most the TF32 share of it);
- ``training``: optimisation steps of each model through the study's own loop (:func:`cmrlib.training.train`: EMA,
  clipping, logging), images per second, FLOPs per step (``torch.utils.flop_counter``) and the achieved share of the
  peak (on the CPU the paper's sizes at batch 2, one timed step; on a GPU at their own batch sizes, in the mixed
  precision of ``--mixed-precision``); for the image arms, **in the same run**, the same network trained by the plain float32 loop of the reference
  study's code (diffusers scheduler ``add_noise``, MSE, AdamW, nothing else) and the ratio of the two;
- ``processes`` (CPU only): one training on every thread against two at once on half the threads each
  (``utility.workers``), for the segmentation network and a 64-px UNet: the throughput ratio;
- ``sampling``: seconds per image of each sampler at several step counts, beside the quality reached at that step
  count when the run given by ``--run`` has a fidelity notebook's steps table;
- ``metrics``: cost as the number of images grows (feature extraction, exact nearest neighbours at 1k, 5k and 10k,
  the membership attack's errors);
- ``stages``: wall time and peak memory of each stage of the last study run (``run.json`` of ``--run``).

Nothing here is a test: timings are noisy on a shared CPU; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from . import generation, registry, training
from .jsonio import write_json
from .labels import NUM_CLASSES
from .models import device, one_hot
from .parallel import map_jobs
from .params import StudyParams
from .params import load as load_params
from .paths import project_root, runs_root


DEVICE = device()
ON_GPU = DEVICE.type == "cuda"


def _sync() -> None:
    if ON_GPU:
        torch.cuda.synchronize()


def _median_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``fn()``; on a GPU each call is timed to the end of its kernels."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_gflops(repeats: int, n: int = 2048, dtype: torch.dtype = torch.float32, tf32: bool = False) -> float:
    """GFLOP/s of an n x n matrix product on :data:`DEVICE` (``tf32``: let float32 products use TF32 tensor cores)."""
    a, b = (torch.randn(n, n, device=DEVICE, dtype=dtype) for _ in range(2))
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        return 2 * n**3 / _median_time(lambda: a @ b, repeats) / 1e9
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


# -- training ----------------------------------------------------------------------------------------------------------
def _batch(params: StudyParams, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and masks of the params' size (timing does not depend on the content)."""
    size = params.data.image_size
    x = torch.rand(batch_size, 1, size, size, generator=generator) * 2 - 1
    masks = torch.randint(0, NUM_CLASSES, (batch_size, size, size), generator=generator)
    return x.to(DEVICE), one_hot(masks).to(DEVICE)


def _models(params: StudyParams) -> dict[str, tuple[torch.nn.Module, object]]:
    """name -> (untrained model, its TrainParams-like budget): the mask prior, each arm, the segmentation network."""
    from .utility import build_segmenter

    out = {"mask_prior": (generation.build_mask_prior(params), params.generators.mask_prior.train)}
    for arm in registry.names():
        out[arm] = (generation.build_arm(params, arm), registry.get(arm).params(params).train)
    out["segmentation"] = (build_segmenter(params), params.utility.segmenter)
    return out


def _our_step_seconds(model, x, cond, batch_size: int, repeats: int, folder: Path) -> float:
    """Median seconds per step of the study's training loop (from ``loss.csv`` written at every step)."""
    n = x.shape[0]
    cfg = training.TrainConfig(steps=repeats + 2, batch_size=batch_size, lr=1e-4, warmup_steps=1, checkpoint_every=10**6,
                               keep_fractions=(1.0,), log_every=1, seed=0)
    result = training.train(model, x[:n], None if cond is None else cond[:n], cfg, folder, desc="bench")
    elapsed = result.losses["elapsed_s"].to_numpy()
    return float(np.median(np.diff(elapsed)[1:]))


def _reference_step(unet: torch.nn.Module, x: torch.Tensor, cond: torch.Tensor | None):
    """One step of the reference study's plain float32 loop on the same network (diffusers scheduler, MSE, AdamW):
    the same cost for every arm's UNet, whatever its target (noise or velocity)."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)

    def step():
        noise = torch.randn_like(x)
        t = torch.randint(0, 1000, (x.shape[0],), device=x.device)
        noisy = scheduler.add_noise(x, noise, t)
        loss = F.mse_loss(unet(noisy, t, cond), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def _flops_per_step(model, x, cond) -> float:
    g = torch.Generator(device=x.device).manual_seed(0)
    with FlopCounterMode(display=False) as counter:
        model.loss(x, cond, g).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def training_table(params: StudyParams, repeats: int, peak: float, size_name: str, batch_cap: int | None = None) -> pd.DataFrame:
    rows = []
    g = torch.Generator().manual_seed(0)
    for name, (model, budget) in _models(params).items():
        model.to(DEVICE)
        batch_size = min(budget.batch_size, batch_cap) if batch_cap else budget.batch_size
        x, masks = _batch(params, max(batch_size, 2 * batch_size), g)
        cond = None if name == "mask_prior" else masks
        if name == "mask_prior":
            x = masks * 2 - 1
        arm = registry.get(name) if name in registry.names() else None
        if arm is not None and arm.autoencoder:  # the latent UNet trains on latents of the frozen autoencoder
            model.autoencoder.requires_grad_(False)
            model.set_latent_scale(x)
        with tempfile.TemporaryDirectory() as tmp:
            ours = _our_step_seconds(model, x, cond, batch_size, repeats, Path(tmp))
        bx, bc = training.training_inputs(model, x[:batch_size]), None if cond is None else cond[:batch_size]
        flops = _flops_per_step(model, bx, bc)
        row = {"size": size_name, "model": name, "params_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
               "batch": batch_size, "s_per_step": ours, "images_per_s": batch_size / ours, "gflop_per_step": flops / 1e9,
               "achieved_gflops": flops / ours / 1e9, "pct_of_peak": 100 * flops / ours / 1e9 / peak}
        if arm is not None:
            ref = _median_time(_reference_step(model.denoiser, bx, bc), repeats)
            row.update({"reference_s_per_step": ref, "ours_vs_reference": ref / ours})
        rows.append(row)
        print(f"  {size_name} {name}: {ours:.3f} s/step", flush=True)
    return pd.DataFrame(rows)


# -- processes ---------------------------------------------------------------------------------------------------------
def _plain_step_seconds(params: StudyParams, steps: int, name: str) -> float:
    """Median seconds of a plain training step (loss, backward, AdamW) of one network at its batch size, in this
    process with its threads (a module-level function: :func:`cmrlib.parallel.map_jobs` runs it in workers)."""
    from .utility import build_segmenter

    torch.manual_seed(0)
    model = (build_segmenter(params) if name == "segmentation" else generation.build_arm(params, name)).to(DEVICE)
    budget = params.utility.segmenter if name == "segmentation" else registry.get(name).params(params).train
    g = torch.Generator().manual_seed(0)
    x, masks = _batch(params, budget.batch_size, g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        loss = model.loss(x, masks, g)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return _median_time(step, steps)


def processes_table(params: StudyParams, steps: int, workers: int = 2) -> pd.DataFrame:
    """Training throughput of one process on every thread against ``workers`` processes at once, each on
    threads / workers (what ``utility.workers`` does): the segmentation network and the first arm's model."""
    rows = []
    for name in ("segmentation", registry.names()[0]):
        one = _plain_step_seconds(params, steps, name)
        together = map_jobs(_plain_step_seconds, [name] * workers, workers, (params, steps), f"bench {name}")
        rows.append({"model": name, "threads": torch.get_num_threads(), "s_per_step": one, "processes": workers,
                     "s_per_step_each": statistics.median(together), "throughput_ratio": one * sum(1 / t for t in together)})
        print(f"  {name}: one process {one:.3f} s/step, {workers} at once {statistics.median(together):.3f} s/step each", flush=True)
    return pd.DataFrame(rows)


# -- sampling ----------------------------------------------------------------------------------------------------------
def sampling_table(params: StudyParams, steps: list[int], n_images: int, run: Path | None) -> pd.DataFrame:
    g = torch.Generator().manual_seed(0)
    _, masks = _batch(params, n_images, g)
    quality = pd.DataFrame()
    if run is not None and (run / "tables" / "fidelity_steps.csv").is_file():
        quality = pd.read_csv(run / "tables" / "fidelity_steps.csv")
    rows = []
    for arm in registry.names():
        spec = registry.get(arm)
        model = generation.build_arm(params, arm).to(DEVICE).eval()
        if spec.autoencoder:
            model.set_latent_scale(torch.rand(4, 1, params.data.image_size, params.data.image_size, device=DEVICE))
        for sampler in spec.samplers:
            for n_steps in steps:
                gen = torch.Generator(device=DEVICE).manual_seed(0)
                seconds = _median_time(lambda: model.sample(masks, sampler=sampler, steps=n_steps, generator=gen), 1, warmup=0)
                row = {"arm": arm, "sampler": sampler, "steps": n_steps, "s_per_image": seconds / n_images}
                q = quality[(quality.get("arm") == arm) & (quality.get("sampler") == sampler) & (quality.get("steps") == n_steps)] if len(quality) else quality
                if len(q):  # with fidelity.reference_sampling also the change against the arm's 1000-step reference
                    row.update({c: float(q[c].iloc[0]) for c in ("fid_seg", "dice_mean", "dice_vs_reference") if c in q})
                rows.append(row)
        print(f"  sampling {arm} done", flush=True)
    return pd.DataFrame(rows)


# -- metrics -----------------------------------------------------------------------------------------------------------
def metrics_table(params: StudyParams, sizes: list[int], repeats: int) -> pd.DataFrame:
    from . import metrics
    from .metrics import privacy
    from .utility import build_segmenter

    size = params.data.image_size
    g = torch.Generator().manual_seed(0)
    rows = []
    space = metrics.seg_features(build_segmenter(params).to(DEVICE).eval())
    first = registry.names()[0]
    arm = generation.build_arm(params, first).to(DEVICE).eval()
    for n in sizes:
        images = (torch.rand(n, size, size, generator=g) * 2 - 1).numpy()
        rows.append({"what": "seg features", "n": n, "seconds": _median_time(lambda: space(images), 1, warmup=0)})
        rows.append({"what": "nearest neighbours (L2, n x n)", "n": n,
                     "seconds": _median_time(lambda: privacy.nearest_l2(images, images, k=2), max(1, repeats // 2), warmup=0)})
        if n <= 1000:
            x = torch.from_numpy(images)[:, None].to(DEVICE)
            cond = one_hot(torch.randint(0, NUM_CLASSES, (n, size, size), generator=g)).to(DEVICE)

            def errors():
                for i in range(0, n, 256):
                    arm.error_at(x[i : i + 256], cond[i : i + 256], 1.0, torch.Generator(device=DEVICE).manual_seed(0))

            rows.append({"what": f"membership errors ({registry.label(first)}, 1 level, 1 draw)", "n": n, "seconds": _median_time(errors, 1, warmup=0)})
        print(f"  metrics at {n} images done", flush=True)
    return pd.DataFrame(rows)


def stages_table(run: Path | None) -> pd.DataFrame:
    if run is None or not (run / "run.json").is_file():
        return pd.DataFrame(columns=["stage", "wall_s", "peak_rss_mb"])
    record = json.loads((run / "run.json").read_text())
    return pd.DataFrame([{"stage": k, "wall_s": v.get("wall_s"), "peak_rss_mb": v.get("peak_rss_mb")} for k, v in record["stages"].items()])


SECTIONS = ("training", "processes", "sampling", "metrics", "stages")


def peaks(repeats: int, quick: bool) -> dict[str, float]:
    """The rates the training table is measured against: ``peak_gflops`` (the ceiling) and, on a GPU, each precision's."""
    if not ON_GPU:
        return {"peak_gflops": peak_gflops(repeats, 512 if quick else 2048)}
    out = {"fp32_gflops": peak_gflops(repeats, 8192), "tf32_gflops": peak_gflops(repeats, 8192, tf32=True),
           "bf16_gflops": peak_gflops(repeats, 8192, torch.bfloat16)}
    return {"peak_gflops": out["bf16_gflops"], **out}


def machine() -> dict:
    out = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "device": DEVICE.type}
    if ON_GPU:
        out["gpu"] = torch.cuda.get_device_name()
    return out


def main(argv: list[str] | None = None) -> int:
    root = project_root()
    parser = argparse.ArgumentParser(prog="python -m cmrlib.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=str(root / "params/default.yaml"))
    parser.add_argument("--paper-params", default=str(root / "params/paper.yaml"))
    parser.add_argument("--run", default=str(root / "runs/default"), help="a study run whose run.json and fidelity steps table to read")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(runs_root() / "bench.json"))
    parser.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default=None,
                        help="the study loop's precision (ACCELERATE_MIXED_PRECISION); the reference loop stays float32")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that the benchmark runs (numbers meaningless)")
    args = parser.parse_args(argv)
    sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    if unknown := sorted(set(sections) - set(SECTIONS)):
        parser.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.mixed_precision:  # read by accelerate when the training loop builds its Accelerator
        os.environ["ACCELERATE_MIXED_PRECISION"] = args.mixed_precision
    params = load_params(args.params)
    run = Path(args.run) if Path(args.run).exists() else None
    torch.manual_seed(0)
    started = time.perf_counter()
    rates = peaks(args.repeats, args.quick)
    peak = rates["peak_gflops"]
    print("peak matrix product: " + ", ".join(f"{k} {v:.1f}" for k, v in rates.items()) + f" ({DEVICE.type}, {torch.get_num_threads()} threads)", flush=True)
    tables = {}
    if "training" in sections:
        tables["training"] = [training_table(params, args.repeats, peak, "default")]
        if not args.quick:
            paper = load_params(args.paper_params, ["data.sources=null"])  # its networks on phantom data
            # on 2 CPU cores the paper's networks cost up to 50 s per step of 8 (a GPU job): batch 2, one timed step,
            # so that the whole benchmark stays within 10 minutes; on a GPU their own batch sizes
            tables["training"].append(training_table(paper, args.repeats, peak, "paper") if ON_GPU else
                                      training_table(paper, 1, peak, "paper", batch_cap=2))
        tables["training"] = pd.concat(tables["training"], ignore_index=True)
    if "processes" in sections and not ON_GPU:  # processes share the CPU's threads; a GPU trains one model at a time
        tables["processes"] = processes_table(params, 2 if args.quick else args.repeats)
    if "sampling" in sections:  # 8 images per setting: 27 settings of 16 took 200 s of the 10 minutes
        tables["sampling"] = sampling_table(params, [5, 10] if args.quick else [10, 20, 50], 4 if args.quick else 8, run)
    if "metrics" in sections:
        tables["metrics"] = metrics_table(params, [200, 500] if args.quick else [1000, 5000, 10000], args.repeats)
    if "stages" in sections:
        tables["stages"] = stages_table(run)
    record = {"machine": machine(), **rates, "mixed_precision": os.environ.get("ACCELERATE_MIXED_PRECISION", "no"),
              "peak_rss_mb": peak_rss_mb(), "wall_s": time.perf_counter() - started, "quick": args.quick,
              **{k: v.to_dict(orient="records") for k, v in tables.items()}}
    if ON_GPU:
        record["gpu_peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    for name, table in tables.items():
        print(f"\n## {name}\n")
        print(table.to_markdown(index=False, floatfmt=".3g") if len(table) else "(none)")
    print(f"\npeak memory {record['peak_rss_mb']:.0f} MB" + (f", GPU {record['gpu_peak_memory_mb']:.0f} MB" if ON_GPU else "")
          + f", {record['wall_s']:.0f} s")
    write_json(args.out, record)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
