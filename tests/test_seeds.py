"""One seed derivation for every random stream."""

from cmrlib.seeds import seed_for


def test_seed_for_is_stable_and_distinct_per_purpose():
    assert seed_for(0, "paired", "ddpm") == seed_for(0, "paired", "ddpm")
    seeds = {seed_for(s, p, a) for s in (0, 1) for p in ("paired", "synthetic") for a in ("ddpm", "ldm", "fm")}
    assert len(seeds) == 12
