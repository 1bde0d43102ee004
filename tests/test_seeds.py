"""One seed derivation for every random stream."""

from cmrlib.seeds import seed_for


def test_seed_for_is_stable_and_distinct_per_purpose():
    assert seed_for(0, "paired", "ddpm") == seed_for(0, "paired", "ddpm")
    seeds = {seed_for(s, p, a) for s in (0, 1) for p in ("paired", "synthetic") for a in ("ddpm", "ldm", "fm")}
    assert len(seeds) == 12


def test_process_seeds_differ_per_process_and_stream_and_span_63_bits():
    from cmrlib.seeds import process_seed

    seeds = {process_seed(s, rank, stream) for s in (0, 1) for rank in range(4) for stream in (0, 1)}
    assert len(seeds) == 16 and all(0 <= s < 2**63 for s in seeds) and max(seeds) >= 2**40
    assert process_seed(7, 0, 1) == process_seed(7, 0, 1)
