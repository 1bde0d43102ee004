"""The study runner: executes the numbered notebooks in order with papermill.

    python -m cmrlib.study run params/default.yaml [--only NAME] [--from NAME] [--force] [--set key=value]

Each notebook gets two parameters, ``params_path`` (the resolved params written to ``runs/<run>/params.yaml``) and
``run_dir``; a notebook whose parameters cell declares ``arm`` runs once per arm of :mod:`cmrlib.registry`, as the
stages ``20_generator[ddpm]``, ... (``--only 20_generator`` selects them all). Executed copies go to
``runs/<run>/notebooks/`` (``20_generator_<arm>.ipynb`` for an arm's stage). ``runs/<run>/run.json`` records versions, the git
commit, the params digest, per stage its status, wall time, the kernel's peak memory and the peak of all the run's
processes together, and per invocation (``invocations``) its end-to-end wall time, the stages it ran, that peak,
and whether the run was complete at its end. A stage is skipped when its fingerprint (params, notebook, cmrlib
version, the source of the cmrlib modules the notebook runs, and the previous stage's fingerprint) is the one
recorded and its outputs exist and load (a truncated checkpoint is not "done"), unless ``--force``. While a
notebook runs, its own output (each training's and sampler's progress bar) streams to the terminal. The runner
stops at the first failing notebook and names it, the failing cell and the error; Ctrl-C stops the stage, records it
as interrupted, and says that a rerun resumes. A run with ``paper.publish_dir`` (the default) publishes its paper and
its executed notebooks there once every stage is done (``paper/``, ``paper/notebooks/``); ``publish`` does it for any
finished run:

    python -m cmrlib.study publish runs/acdc_shared --to paper/acdc
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata
import json
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import psutil

from . import __version__, params as params_mod, preflight, registry
from .data.records import METADATA_FILE
from .jsonio import write_json
from .paths import RunPaths, notebooks_dir, project_root

KERNEL = "cmrlib"
DATA_STAGE = "00_data"  # after it, the set sizes of a real data set are known and the needs of later stages checked
PARAMETERS = ("params_path", "run_dir")
# passed only to the notebooks whose parameters cell declares them
OPTIONAL_PARAMETERS = ("force",)
# a notebook whose parameters cell declares it runs once per registered arm, as stage <notebook>[<arm>]
ARM_PARAMETER = "arm"
PUBLISHED_NOTEBOOKS_MB = 20  # the size budget of the executed notebooks copied into the repository
PROGRESS_INTERVAL_S = 5  # the notebooks' progress bars: at most one update this often (terminal and executed copy)

# Outputs a stage must leave (relative to the run folder) besides its executed notebook; checked before skipping.
# An arm's stage leaves what its registry entry lists (cmrlib.registry.Arm.outputs).
STAGE_OUTPUTS: dict[str, list[str]] = {
    "00_data": ["splits.json", "data/slices.npz", "data/metadata.csv"],
    "10_mask_prior": ["checkpoints/mask_prior/last.pt", "samples/mask_prior/masks.npz"],
    "30_fidelity": ["checkpoints/reference_segmenter/last.pt", "metrics/fidelity.json", "tables/fidelity_metrics.csv"],
    "40_utility": ["metrics/utility.json"],
    "50_privacy": ["metrics/privacy.json"],
    "90_paper": ["paper/paper.md", "paper/numbers.json"],
}

VERSIONED = ("torch", "diffusers", "monai", "accelerate", "numpy", "pandas", "papermill", "scikit-learn", "scipy")


class StageFailed(RuntimeError):
    """A notebook failed; the message names the stage, the cell and the error."""


class StudyInterrupted(StageFailed):
    """Ctrl-C during a stage: the stage is recorded as interrupted, and a rerun resumes."""


@dataclass(frozen=True)
class Stage:
    name: str  # the notebook's stem, with [<arm>] for a notebook run once per arm
    notebook: Path
    arm: str | None = None
    declared: frozenset[str] = frozenset()  # the names its parameters cell assigns

    @property
    def executed(self) -> str:
        """The executed copy, relative to the run folder."""
        return f"notebooks/{self.notebook.stem}{'' if self.arm is None else '_' + self.arm}.ipynb"

    @property
    def outputs(self) -> list[str]:
        made = STAGE_OUTPUTS.get(self.name, []) if self.arm is None else registry.get(self.arm).outputs
        return made + [self.executed]


def discover_stages(folder: Path | None = None) -> list[Stage]:
    """The numbered notebooks (``NN_name.ipynb``) in order; a notebook that declares the parameter ``arm`` gives one
    stage per registered arm (``20_generator[ddpm]``, ...), in the registry's order."""
    folder = folder or notebooks_dir()
    stages = []
    for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        declared = frozenset(_declared_parameters(path))
        if ARM_PARAMETER in declared:
            stages += [Stage(registry.stage_name(path.stem, arm), path, arm, declared) for arm in registry.names()]
        else:
            stages.append(Stage(path.stem, path, declared=declared))
    return stages


def _sha(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _package_modules() -> dict[str, Path]:
    """Every module of cmrlib, dotted name -> file (a package's name for its ``__init__.py``)."""
    package = Path(__file__).resolve().parent
    out = {}
    for f in sorted(package.rglob("*.py")):
        parts = list(f.relative_to(package.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _imported(source: str, module: str, is_package: bool, modules: dict[str, Path]) -> set[str]:
    """The cmrlib modules that ``source`` (of ``module``) imports, anywhere in it (functions' imports included)."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            relative = here[: len(here) - node.level + 1] + ([node.module] if node.module else [])
            name = ".".join(relative) if node.level else node.module or ""
            found |= {name} | {f"{name}.{a.name}" for a in node.names}
    return found & set(modules)


def _import_graph() -> dict[str, set[str]]:
    """Each cmrlib module -> the cmrlib modules it imports (parsed once for all the stages)."""
    modules = _package_modules()
    return {name: _imported(f.read_text(), name, f.name == "__init__.py", modules) for name, f in modules.items()}


def stage_modules(notebook: Path, graph: dict[str, set[str]] | None = None) -> list[str]:
    """The cmrlib modules a notebook's code runs: those its cells import, what they import in turn (``graph``, else
    parsed now), and the packages that hold them; sorted."""
    graph = _import_graph() if graph is None else graph
    modules = _package_modules()
    cells = json.loads(notebook.read_text()).get("cells", [])
    code = "\n".join("".join(c.get("source", "")) for c in cells if c.get("cell_type") == "code")
    code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))  # IPython magics
    todo, seen = list(_imported(code, "", False, modules)), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += graph[name]
    return sorted(seen)


def source_digest(modules: Sequence[str]) -> str:
    """A hash of the source of cmrlib's ``modules``, so that a change to the code a stage runs re-runs it."""
    files = _package_modules()
    return _sha(*(name.encode() + b"\0" + files[name].read_bytes() for name in sorted(modules)))


def fingerprints(stages: list[Stage], params: params_mod.StudyParams) -> dict[str, str]:
    """Each stage's fingerprint: the params, cmrlib's version, the notebook, the source of the modules it runs
    (:func:`stage_modules`: a change to the paper's code re-runs the paper alone) and the previous stage's
    fingerprint, chained so that a change upstream re-runs everything after it."""
    out, previous, sources = {}, "", {}
    base, graph = _sha(params.digest(), __version__), _import_graph()
    for stage in stages:
        if stage.notebook not in sources:
            sources[stage.notebook] = source_digest(stage_modules(stage.notebook, graph))
        previous = out[stage.name] = _sha(base, stage.name, stage.notebook.read_bytes(), sources[stage.notebook], previous)
    return out


def _git_commit() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=project_root(), capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"commit": None, "dirty": None}


def _versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform(), "cmrlib": __version__}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _check_kernel(kernel: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(kernel)
    except NoSuchKernel:
        raise StageFailed(
            f"Jupyter kernel {kernel!r} is not installed: run `make install`, or in your environment "
            f"`python -m ipykernel install --sys-prefix --name {kernel}`"
        ) from None


def output_problem(path: Path) -> str | None:
    """Why a stage's output cannot be trusted (missing, or a checkpoint, array file or JSON that does not load);
    None when it is sound. A stage is skipped only when every output is sound."""
    if not path.exists():
        return "missing"
    try:
        if path.suffix == ".pt":
            from .training import load_checkpoint

            load_checkpoint(path)
        elif path.suffix == ".npz":
            import numpy as np

            with np.load(path) as arrays:
                for name in arrays.files:
                    arrays[name]  # reads the member and checks its CRC
        elif path.suffix in (".json", ".ipynb"):
            json.loads(path.read_text())
    except Exception as exc:  # a truncated or corrupt file raises many types
        return f"does not load ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
    return None


def _declared_parameters(notebook: Path) -> set[str]:
    """The names assigned in a notebook's ``parameters`` cell."""
    import re

    cells = json.loads(notebook.read_text()).get("cells", [])
    source = "".join("".join(c.get("source", "")) for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    return set(re.findall(r"^([A-Za-z_]\w*)\s*=", source, flags=re.M))


def _execute(notebook: str, output: str, parameters: dict, cwd: str, kernel: str, queue, threads: int | None = None) -> None:
    """Worker process: run one notebook (its kernel on ``threads`` threads; None: torch's default, every core);
    report the kernel's peak memory or the failing cell."""
    import signal

    import papermill
    from papermill.exceptions import PapermillExecutionError

    # Ctrl-C is the runner's to handle (it stops this worker, whose kernel then exits with it): no traceback here
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    # live progress: the notebook's own output (its training and sampling bars, a line at most every
    # TQDM_MININTERVAL seconds, which the kernel inherits) goes to the terminal as it comes, in place of the cell bar
    os.environ.setdefault("TQDM_MININTERVAL", str(PROGRESS_INTERVAL_S))
    if threads is not None:  # the kernel inherits them; torch reads OMP_NUM_THREADS when it starts
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    try:
        papermill.execute_notebook(notebook, output, parameters=parameters, kernel_name=kernel, cwd=cwd, progress_bar=False,
                                   stdout_file=sys.stdout, stderr_file=sys.stderr)
        result: dict = {"ok": True}
    except PapermillExecutionError as exc:
        result = {"ok": False, "cell": exc.exec_count, "source": exc.source, "error": f"{exc.ename}: {exc.evalue}"}
    except Exception as exc:  # the kernel died, the notebook is unreadable, ...
        result = {"ok": False, "cell": None, "source": "", "error": f"{type(exc).__name__}: {exc}"}
    # the kernel is this process's child: its peak resident memory (kB on Linux)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result["ended"] = time.time()  # the stage's own end, when the runner reads another stage's result first
    queue.put(result)


class MemorySampler:
    """The resident memory of this process and all its descendants (the stage's worker, its kernel, the kernel's
    job processes) summed, sampled every ``interval_s`` in a thread: ``peak_mb`` is the largest sum seen (what the
    machine needed at once), not the largest single process."""

    def __init__(self, interval_s: float = 1.0):
        self.interval_s, self.peak_mb, self.window_peak_mb = interval_s, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> float:
        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):  # a process that ended between the two calls
                pass
        self.peak_mb = max(self.peak_mb, total / 2**20)
        self.window_peak_mb = max(self.window_peak_mb, total / 2**20)
        return total / 2**20

    def new_window(self) -> None:
        """Start a new window (a stage): ``window_peak_mb`` is the largest sum seen since."""
        self.window_peak_mb = 0.0

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> "MemorySampler":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def execute_stage(stage: Stage, paths: RunPaths, kernel: str = KERNEL, *, force: bool = False) -> dict:
    """Run one notebook in a fresh process (so its memory is measured alone); raise StageFailed on error.
    Ctrl-C stops the notebook and raises KeyboardInterrupt (checkpoints already written stay)."""
    return _finish(_start(stage, paths, kernel, force))


def execute_stages(stages: Sequence[Stage], paths: RunPaths, kernel: str = KERNEL, *, force: bool = False) -> list[dict | StageFailed]:
    """Run several independent notebooks at once, each kernel on the machine's cores divided among them (at least
    one thread; one stage alone keeps them all); returns each stage's result, or its StageFailed, once all have
    ended. Ctrl-C stops them all."""
    threads = None if len(stages) == 1 else max(1, len(os.sched_getaffinity(0)) // len(stages))
    running: list[_Running] = []
    out: list[dict | StageFailed] = []
    try:
        for stage in stages:
            running.append(_start(stage, paths, kernel, force, threads))
        for r in running:
            try:
                out.append(_finish(r))
            except StageFailed as exc:
                out.append(exc)
    except KeyboardInterrupt:
        for r in running:
            r.worker.terminate()
            r.worker.join()
        raise
    return out


@dataclass
class _Running:
    stage: Stage
    worker: multiprocessing.Process
    queue: object
    output: Path
    start: float


def _start(stage: Stage, paths: RunPaths, kernel: str, force: bool, threads: int | None = None) -> _Running:
    output = paths.notebooks / Path(stage.executed).name  # paths.notebooks creates the folder
    parameters = {"params_path": str(paths.params), "run_dir": str(paths.root)}
    if stage.arm is not None:
        parameters[ARM_PARAMETER] = stage.arm
    optional = {"force": force}
    parameters |= {k: optional[k] for k in OPTIONAL_PARAMETERS if k in stage.declared}
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    start = time.time()
    worker = ctx.Process(target=_execute, args=(str(stage.notebook), str(output), parameters, str(stage.notebook.parent),
                                                kernel, queue, threads))
    worker.start()
    return _Running(stage, worker, queue, output, start)


def _finish(r: _Running) -> dict:
    """Wait for a started stage; its result, or StageFailed naming the cell and the error."""
    try:
        result = r.queue.get()
    except KeyboardInterrupt:
        r.worker.terminate()  # its kernel exits when its parent does
        r.worker.join()
        raise
    r.worker.join()
    result["wall_s"] = round(result.pop("ended") - r.start, 2)
    if not result["ok"]:
        cell = f" in cell [{result['cell']}] of the executed copy" if result["cell"] is not None else ""
        code = "\n".join("    " + line for line in (result["source"] or "").splitlines()[:8])
        raise StageFailed(
            f"stage {r.stage.name} failed{cell}: {result['error']}\n"
            + (f"  the cell:\n{code}\n" if code else "")
            + f"  full traceback in the executed notebook {r.output}"
        )
    return result


def _run_counts(paths: RunPaths) -> preflight.Counts | None:
    """The data stage's set sizes, when its files exist."""
    metadata = paths.root / "data" / METADATA_FILE  # not paths.data, which would create the folder
    return preflight.counts_from_run(paths.splits, metadata) if paths.splits.exists() and metadata.exists() else None


def _select(stages: list[Stage], only: Sequence[str], start: str | None) -> list[Stage]:
    """The stages named by ``--only`` (each a stage, or a notebook's stem for all its arms' stages) or from ``--from``."""
    names = [s.name for s in stages]

    def matches(stage: Stage, name: str) -> bool:
        return name in (stage.name, stage.notebook.stem)

    for name in [*only, *([start] if start else [])]:
        if not any(matches(s, name) for s in stages):
            raise StageFailed(f"no stage {name!r}; stages: {', '.join(names)} (a notebook's name selects all its arms)")
    if only:
        return [s for s in stages if any(matches(s, name) for name in only)]
    if start:
        return stages[next(i for i, s in enumerate(stages) if matches(s, start)):]
    return stages


def run(
    params_file: str | Path,
    overrides: Sequence[str] = (),
    *,
    only: Sequence[str] = (),
    start: str | None = None,
    force: bool = False,
    runs_dir: str | Path | None = None,
    kernel: str = KERNEL,
    stages: list[Stage] | None = None,
    echo=print,
) -> dict:
    """Run (or resume) the study; returns the content of run.json."""
    t0 = time.perf_counter()
    params = params_mod.load(params_file, overrides)
    stages = stages if stages is not None else discover_stages()
    selected = _select(stages, only, start)
    fps = fingerprints(stages, params)
    paths = RunPaths.for_run(params.run_name, runs_dir)
    _check_kernel(kernel)
    record = {}
    if paths.run_json.exists():
        record = json.loads(paths.run_json.read_text())
    data_done = record.get("stages", {}).get(DATA_STAGE, {}).get("fingerprint") == fps.get(DATA_STAGE)
    checked = {s.name for s in selected}  # a later stage's needs do not stop a run of earlier ones
    preflight.check(params, _run_counts(paths) if data_done else preflight.counts_from_params(params), stages=checked)
    record.update(
        run_name=params.run_name, params_file=str(Path(params_file).resolve()), overrides=list(overrides),
        params_digest=params.digest(), git=_git_commit(), versions=_versions(),
    )
    record.setdefault("stages", {})
    echo(f"study {params.run_name}: {len(selected)} stage(s) -> {paths.root}")
    invocation = {"started": _now(), "commit": record["git"]["commit"], "stages_run": [], "complete": False}
    record.setdefault("invocations", []).append(invocation)
    memory = MemorySampler()
    try:
        with memory:
            _run_stages(selected, stages, params, paths, record, fps, kernel, force, checked, invocation, memory, echo)
    finally:  # a failed or interrupted invocation is recorded too
        invocation.update(wall_s=round(time.perf_counter() - t0, 1), peak_rss_total_mb=round(memory.peak_mb, 1),
                          complete=all(record["stages"].get(s.name, {}).get("status") == "done" for s in stages))
        write_json(paths.run_json, record)
    total = sum(s.get("wall_s", 0.0) for s in record["stages"].values())
    echo(f"study {params.run_name}: finished in {invocation['wall_s']:.0f} s end to end (stage wall time in total "
         f"{total:.1f} s; peak memory of all processes together {memory.peak_mb:.0f} MB); record in {paths.run_json}")
    if invocation["complete"] and params.paper.publish_dir is not None:
        target = publish(paths, params_mod.resolve_path(params.paper.publish_dir))
        echo(f"study {params.run_name}: paper and executed notebooks published to {target}")
    return record


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _batches(selected: list[Stage], per_batch: int) -> list[list[Stage]]:
    """The selected stages in order, the consecutive arm stages of one notebook grouped ``per_batch`` at a time
    (they depend on earlier stages only, not on each other)."""
    out: list[list[Stage]] = []
    for stage in selected:
        last = out[-1] if out else []
        if (stage.arm is not None and last and last[0].arm is not None and last[0].notebook == stage.notebook
                and len(last) < per_batch):
            last.append(stage)
        else:
            out.append([stage])
    return out


def _run_stages(selected, stages, params, paths, record, fps, kernel, force, checked, invocation, memory, echo) -> None:
    """The loop of :func:`run`: each selected stage skipped when unchanged, else executed and recorded; the arm
    stages of a notebook ``executor.arm_stages`` at once."""
    number = {stage.name: i for i, stage in enumerate(selected, 1)}

    def tag(stage: Stage) -> str:
        return f"[{number[stage.name]}/{len(selected)}] {stage.name}"

    for batch in _batches(selected, params.executor.arm_stages):
        todo = []
        for stage in batch:
            previous = record["stages"].get(stage.name, {})
            unchanged = previous.get("status") == "done" and previous.get("fingerprint") == fps[stage.name]
            if unchanged and not force:
                problems = {o: p for o in stage.outputs if (p := output_problem(paths.root / o))}
                if not problems:
                    echo(f"{tag(stage)}: unchanged, skipped (use --force to re-run)")
                    continue
                echo(f"{tag(stage)}: re-running, as its outputs are not sound: "
                     + "; ".join(f"{o} {p}" for o, p in problems.items()))
            todo.append(stage)
        if not todo:
            continue
        echo(f"{' and '.join(tag(s) for s in todo)}: running" + (" at once" if len(todo) > 1 else ""))
        # the params are written only now that a stage starts with them, so a refused invocation changes nothing
        params.to_yaml(paths.params)
        memory.new_window()
        entries = []
        for stage in todo:
            entry = {"status": "running", "fingerprint": fps[stage.name], "started": _now(), "notebook": stage.executed,
                     "commit": record["git"]["commit"]}
            record["stages"][stage.name] = entry
            entries.append(entry)
            invocation["stages_run"].append(stage.name)
        if len(todo) > 1:
            for entry in entries:
                entry["ran_with"] = [s.name for s in todo]
        write_json(paths.run_json, record)
        try:
            results = execute_stages(todo, paths, kernel, force=force)
        except KeyboardInterrupt:
            for entry in entries:
                entry["status"] = "interrupted"
            write_json(paths.run_json, record)
            raise StudyInterrupted(
                f"interrupted in stage {' and '.join(s.name for s in todo)}; run the same command again to resume "
                f"(finished stages are skipped, trainings continue from their last checkpoint)") from None
        for stage, entry, result in zip(todo, entries, results):
            if isinstance(result, StageFailed):
                entry["status"] = "failed"
                continue
            entry.update(status="done", wall_s=result["wall_s"], peak_rss_mb=round(result["peak_rss_mb"], 1),
                         peak_rss_total_mb=round(memory.window_peak_mb, 1))
            echo(f"{tag(stage)}: done in {result['wall_s']:.1f} s, peak memory {result['peak_rss_mb']:.0f} MB "
                 f"(all processes together {memory.window_peak_mb:.0f} MB)")
        write_json(paths.run_json, record)
        failed = [r for r in results if isinstance(r, StageFailed)]
        if failed:
            raise failed[0]
        if todo[-1].name == DATA_STAGE and todo[-1] is not selected[-1]:  # the real counts are known now, before any training
            preflight.check(params, _run_counts(paths), done=f"{DATA_STAGE} ran; its outputs are kept", stages=checked)


def publish(paths: RunPaths, target: Path) -> Path:
    """Copy a finished run's paper and executed notebooks to ``target``: ``paper/`` of the run into it (files there
    that the run does not write, such as a README, stay) and the notebooks, with their outputs, into
    ``target/notebooks/`` (the repository's own path in them made relative, stale ones removed), so that a reader
    sees them without running anything; notebooks above :data:`PUBLISHED_NOTEBOOKS_MB` in all are left out with a
    warning. What a complete run with ``paper.publish_dir`` does at its end, and ``python -m cmrlib.study publish``."""
    target = Path(target)
    shutil.copytree(paths.paper, target, dirs_exist_ok=True)
    files = sorted(paths.notebooks.glob("*.ipynb"))
    size_mb = sum(f.stat().st_size for f in files) / 2**20
    if size_mb > PUBLISHED_NOTEBOOKS_MB:
        print(f"warning: the executed notebooks ({size_mb:.1f} MB) exceed {PUBLISHED_NOTEBOOKS_MB} MB and are not "
              f"published; they stay in {paths.notebooks}", file=sys.stderr)
        return target
    notebooks = target / "notebooks"
    notebooks.mkdir(parents=True, exist_ok=True)
    for stale in set(notebooks.glob("*.ipynb")) - {notebooks / f.name for f in files}:
        stale.unlink()
    root = f"{project_root()}/"
    for f in files:
        (notebooks / f.name).write_text(f.read_text().replace(root, ""))
    return target


def publish_run(run_dir: str | Path, target: str | Path) -> Path:
    """:func:`publish` for a run folder, refused unless its last invocation ended with every stage done."""
    paths = RunPaths(Path(run_dir))
    if not paths.run_json.exists():
        raise StageFailed(f"{paths.run_json} does not exist: {run_dir} is not a study run folder")
    record = json.loads(paths.run_json.read_text())
    undone = [name for name, stage in record.get("stages", {}).items() if stage.get("status") != "done"]
    if undone or not record.get("invocations", [{}])[-1].get("complete"):
        why = f"not done: {', '.join(undone)}" if undone else "its last invocation ended before every stage was done"
        raise StageFailed(f"{run_dir} is not complete ({why}); finish it with the same run command first")
    return publish(paths, Path(target))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmrlib.study", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="execute the notebooks with a params file")
    p.add_argument("params", help="params YAML file, e.g. params/default.yaml")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="run only this stage (repeatable)")
    p.add_argument("--from", dest="start", metavar="NAME", help="run this stage and every later one")
    p.add_argument("--force", action="store_true", help="re-run stages even when unchanged")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a params key (repeatable)")
    p.add_argument("--runs-dir", help="folder for run folders (default: $CMRLIB_RUNS_DIR or <repository>/runs)")
    p.add_argument("--kernel", default=KERNEL, help=f"Jupyter kernel that runs the notebooks (default {KERNEL})")
    q = sub.add_parser("publish", help="copy a finished run's paper and executed notebooks to a folder")
    q.add_argument("run_dir", help="the run folder, e.g. runs/acdc_shared")
    q.add_argument("--to", required=True, metavar="DIR", help="where to copy them, e.g. paper/acdc")
    args = parser.parse_args(argv)
    if args.command == "publish":
        try:
            print(f"published to {publish_run(args.run_dir, args.to)}")
        except StageFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        run(args.params, args.overrides, only=args.only, start=args.start, force=args.force, runs_dir=args.runs_dir, kernel=args.kernel)
    except StudyInterrupted as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        return 130
    except (StageFailed, params_mod.ParamsError, preflight.PreflightError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before or between stages: nothing is half-done
        print("stopped before a stage started; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
