"""Independent jobs at once: the utility axis's segmenter trainings, on this machine or on a cluster.

:func:`map_jobs` runs ``fn(*context, job)`` for every job and returns the results in the order of the jobs, on the
engine the params' ``executor`` section names:

- ``local`` (the default): in this process when ``workers`` is 1, else on ``workers`` spawned processes of this
  machine, each with ``torch.get_num_threads() // workers`` threads (at least one). A small network does not keep two
  CPU threads busy: on 2 cores a DynUNet step of 8 images takes 0.175 s on 2 threads and 0.25 s on 1, so two
  single-threaded trainings side by side train 1.4x as many images per second (measured 2026-11-30; the 64-px
  generator UNets gain unsteadily, 1.04 to 1.43x between runs).
- ``dask``: the jobs as tasks of a Dask distributed cluster (``executor.address``, a scheduler's address, for example
  one started by dask-jobqueue on SLURM; null: a ``LocalCluster`` of ``workers`` processes on this machine, with the
  local engine's threads; on a cluster's worker, each task takes its cores divided by the tasks it runs at once).
  ``context`` is sent to the workers once; the jobs write into the run folder, which must be on a file system every
  worker sees. ``pip install "cmrlib[cluster]"`` installs it.

The thread count changes how float sums are split, so a run's numbers depend on ``workers`` (and, as always, on the
machine): the same params give the same numbers on the same machine, and a local Dask cluster gives the local
engine's numbers.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

ENGINES = ("local", "dask")
_worker: dict[str, Any] = {}  # in a worker process: the function and its context, set once by _start


def _start(fn: Callable, context: tuple, threads: int) -> None:
    torch.set_num_threads(threads)
    _worker.update(fn=fn, context=context)


def _call(job):
    return _worker["fn"](*_worker["context"], job)


def _dask_call(job, fn: Callable, context: tuple, threads: int | None):
    if threads is None:  # a cluster's worker: its cores shared by the tasks it runs at once
        from distributed import get_worker

        threads = max(1, len(os.sched_getaffinity(0)) // get_worker().state.nthreads)
    torch.set_num_threads(threads)
    return fn(*context, job)


def _failed(desc: str, job, exc: BaseException) -> RuntimeError:
    return RuntimeError(f"{desc}: job {job!r} failed: {exc}")


def longest_first(jobs: list, cost: Callable | None) -> list[int]:
    """The order jobs start in: by decreasing ``cost(job)`` (a job's expected duration, any unit), ties in their own
    order; without ``cost``, their own order. Longest first keeps every worker busy to the end: a long job started
    last would run alone while the others wait."""
    order = list(range(len(jobs)))
    return order if cost is None else sorted(order, key=lambda i: -cost(jobs[i]))


def map_jobs(fn: Callable, jobs: Sequence, workers: int, context: tuple = (), desc: str = "jobs", *,
             engine: str = "local", address: str | None = None, cost: Callable | None = None) -> list:
    """``[fn(*context, job) for job in jobs]``, in the order of ``jobs``, on ``engine`` (module docstring), started in
    the order of :func:`longest_first`; with more than one worker, ``fn`` must be a module-level function and
    ``context`` picklable. A job that fails stops the rest (queued jobs are cancelled; what finished jobs wrote stays)
    and raises an error naming it."""
    jobs = list(jobs)
    if engine not in ENGINES:
        raise ValueError(f"unknown executor engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    order = longest_first(jobs, cost)
    threads = max(1, torch.get_num_threads() // workers)
    if engine == "dask":
        return _map_dask(fn, jobs, order, workers, context, desc, address, None if address else threads)
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*context, job) for job in tqdm(jobs, desc=desc, unit="job")]  # one at a time: order is moot
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_start, initargs=(fn, context, threads)) as pool, \
            tqdm(total=len(jobs), desc=f"{desc} ({workers} processes x {threads} threads)", unit="job") as bar:
        futures = {pool.submit(_call, jobs[i]): i for i in order}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)  # the bar moves with every finished job
            bar.update(len(done))
            for future in done:
                if future.exception() is not None:
                    pool.shutdown(cancel_futures=True)
                    raise _failed(desc, jobs[futures[future]], future.exception()) from future.exception()
        return [future.result() for future in sorted(futures, key=futures.get)]


def _map_dask(fn: Callable, jobs: list, order: list[int], workers: int, context: tuple, desc: str, address: str | None,
              threads: int | None) -> list:
    """The jobs on a Dask cluster: the one at ``address``, or a local one of ``workers`` single-task processes."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as exc:
        raise ImportError("executor.engine: dask needs Dask distributed: pip install \"cmrlib[cluster]\" (or "
                          "pip install distributed)") from exc
    cluster = None if address else LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                dashboard_address=None, silence_logs=40)
    client = Client(address or cluster)
    try:
        [shared] = client.scatter([context], broadcast=True)  # sent once to every worker, not once per job
        started = {i: client.submit(_dask_call, jobs[i], fn=fn, context=shared, threads=threads, pure=False,
                                    priority=len(order) - rank) for rank, i in enumerate(order)}  # higher runs first
        futures = [started[i] for i in range(len(jobs))]
        index = {f.key: i for i, f in enumerate(futures)}
        where = address or f"a local cluster of {workers} processes x {threads} threads"
        with tqdm(total=len(jobs), desc=f"{desc} (Dask, {where})", unit="job") as bar:
            for future in as_completed(futures):
                bar.update(1)
                if future.status == "error":
                    exc = future.exception()
                    client.cancel(futures)
                    raise _failed(desc, jobs[index[future.key]], exc) from exc
        return client.gather(futures)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


__all__ = ["ENGINES", "longest_first", "map_jobs"]
