import pytest
import torch

from cmrlib.parallel import longest_first, map_jobs


def _power(exponent, job):
    if job == 3:
        raise ValueError("three is refused")
    return job**exponent, torch.get_num_threads()


@pytest.mark.parametrize("workers", [1, 2])
def test_jobs_come_back_in_order_with_their_context(workers):
    out = map_jobs(_power, [5, 1, 4, 2], workers, context=(2,), desc="squares")
    assert [value for value, _ in out] == [25, 1, 16, 4]
    expected_threads = torch.get_num_threads() if workers == 1 else max(1, torch.get_num_threads() // workers)
    assert {threads for _, threads in out} == {expected_threads}


def _sleep(job):
    import time

    time.sleep(job)
    return job


def test_the_progress_bar_moves_when_each_job_finishes_not_when_all_have(capfd):
    assert map_jobs(_sleep, [0, 4], 2, desc="naps") == [0, 4]
    bar = capfd.readouterr().err
    assert "1/2" in bar and "2/2" in bar


def test_jobs_start_longest_first_and_ties_keep_their_order():
    assert longest_first([1, 3, 2, 3], cost=lambda job: job) == [1, 3, 2, 0]
    assert longest_first([1, 3, 2], cost=None) == [0, 1, 2]


def _nap_from(seconds):
    import time

    start = time.time()
    time.sleep(seconds)
    return seconds, start


@pytest.mark.parametrize("engine", ["local", "dask"])
def test_the_longest_job_starts_in_the_first_wave_and_results_keep_the_jobs_order(engine):
    if engine == "dask":
        pytest.importorskip("distributed")
    out = map_jobs(_nap_from, [1, 1, 3], 2, desc="naps", engine=engine, cost=lambda seconds: seconds)
    assert [seconds for seconds, _ in out] == [1, 1, 3]
    (_, short_a), (_, short_b), (_, long) = out
    assert long < max(short_a, short_b) - 0.5  # it did not wait for a short one to end: the makespan is 3 s, not 4


def test_a_failing_job_is_named_and_stops_the_map():
    with pytest.raises(RuntimeError, match=r"squares: job 3 failed: three is refused"):
        map_jobs(_power, [1, 3, 2], 2, context=(2,), desc="squares")


def _tiny_training(scale, seed):
    """A few optimiser steps of a small network: floats that depend on the thread count, as a real training's do."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x = torch.randn(512, 64) * scale
    for _ in range(5):
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()
    return float(sum(p.double().sum() for p in net.parameters())), torch.get_num_threads()


def test_a_local_dask_cluster_gives_the_local_engines_results():
    pytest.importorskip("distributed")
    local = map_jobs(_tiny_training, [3, 1, 2], 2, context=(0.5,), desc="tiny")
    dask = map_jobs(_tiny_training, [3, 1, 2], 2, context=(0.5,), desc="tiny", engine="dask")
    assert dask == local  # the same order, threads and floats
    with pytest.raises(RuntimeError, match=r"squares: job 3 failed: three is refused"):
        map_jobs(_power, [1, 3, 2], 2, context=(2,), desc="squares", engine="dask")


def test_an_unknown_engine_is_named():
    with pytest.raises(ValueError, match="unknown executor engine 'ray'; choose one of: local, dask"):
        map_jobs(_power, [1], 1, context=(2,), engine="ray")


def test_jobs_run_on_the_cluster_at_an_address_each_on_its_workers_cores():
    import os

    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        out = map_jobs(_power, [5, 1], 2, context=(2,), engine="dask", address=cluster.scheduler_address)
    assert [value for value, _ in out] == [25, 1] and {threads for _, threads in out} == {len(os.sched_getaffinity(0))}
