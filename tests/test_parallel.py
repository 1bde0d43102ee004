import pytest
import torch

from cmrlib.parallel import map_jobs


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
