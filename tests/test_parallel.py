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


def test_a_failing_job_is_named_and_stops_the_map():
    with pytest.raises(RuntimeError, match=r"squares: job 3 failed: three is refused"):
        map_jobs(_power, [1, 3, 2], 2, context=(2,), desc="squares")
