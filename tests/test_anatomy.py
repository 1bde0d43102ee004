"""The anatomical criteria on maps with a known answer, the repair, the distribution distances, and the stage-1 filter."""

import numpy as np
import pytest
import torch

from cmrlib import generation, models, params
from cmrlib.data import anatomy
from cmrlib.labels import LV, MYO, RV

SIZE = 32


def heart() -> np.ndarray:
    """An LV disc inside a MYO ring, and an RV crescent against the septum."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - 16, xx - 18)
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[r < 8] = MYO
    m[r < 4.5] = LV
    m[(np.hypot(yy - 16, xx - 8) < 5) & (r >= 8)] = RV
    return m


def test_a_drawn_heart_meets_every_criterion():
    flags = anatomy.check_masks(heart()[None], heart()[None])
    assert set(flags) == set(anatomy.CRITERIA) | {"valid"}
    assert all(v.all() for v in flags.values()), {k: bool(v[0]) for k, v in flags.items()}


def broken() -> dict[str, tuple[np.ndarray, set[str]]]:
    """Maps each broken one way, with the criteria that must fail."""
    open_ring = heart()
    open_ring[16, 23:] = 0  # a gap through the lateral wall: LV touches the background
    two_lv = heart()
    two_lv[2:4, 28:30] = LV
    two_holes = heart()
    two_holes[16, 24] = 0  # a pinhole in the myocardium: a second hole without LV
    island = heart()
    island[28:30, 28:30] = MYO
    far_rv = heart()
    far_rv[far_rv == RV] = 0
    far_rv[2:6, 2:6] = RV
    rv_in_lv = heart()
    rv_in_lv[16, 17] = RV
    two_rv = heart()
    two_rv[28:30, 2:4] = RV
    no_lv = heart()
    no_lv[no_lv == LV] = MYO
    return {"open ring": (open_ring, {"lv_enclosed", "myo_ring"}), "two LV": (two_lv, {"single_lv", "lv_enclosed", "myo_ring"}),
            "two holes": (two_holes, {"myo_ring"}), "MYO island": (island, {"single_myo"}),
            "RV away from the septum": (far_rv, {"rv_at_septum"}), "RV inside the LV": (rv_in_lv, {"rv_at_septum", "lv_enclosed", "single_rv"}),
            "two RV": (two_rv, {"single_rv"}), "no LV": (no_lv, {"lv_enclosed", "myo_ring", "single_lv"})}


@pytest.mark.parametrize("case", list(broken()))
def test_each_broken_map_fails_exactly_its_criteria(case):
    mask, failing = broken()[case]
    flags = anatomy.check_masks(mask[None])
    failed = {k for k, v in flags.items() if k != "valid" and not v[0]}
    assert failed == failing and not flags["valid"][0]


def test_areas_are_judged_against_the_real_range():
    huge = heart()
    yy, xx = np.mgrid[:SIZE, :SIZE]
    huge[(np.hypot(yy - 16, xx - 18) < 10) & (huge == 0)] = MYO  # a thicker ring: more MYO than any real map
    flags = anatomy.check_masks(np.stack([heart(), huge]), np.stack([heart()]))
    assert flags["areas_in_range"].tolist() == [True, False]
    assert flags["valid"].tolist() == [True, False]


def test_repair_keeps_the_largest_component_of_each_class():
    mask, _ = broken()["MYO island"]
    repaired = anatomy.repair(np.stack([mask, heart()]))
    np.testing.assert_array_equal(repaired[0], heart())
    np.testing.assert_array_equal(repaired[1], heart())
    assert anatomy.check_masks(repaired)["valid"].all()


def test_distances_are_zero_for_identical_sets_and_grow_with_a_shift():
    same = anatomy.distribution_distances(np.stack([heart()] * 4), np.stack([heart()] * 4))
    assert (same[["ks", "wasserstein"]].fillna(0).to_numpy() == 0).all()
    lv_only = np.stack([np.where(heart() == RV, 0, heart())] * 4)
    shifted = anatomy.distribution_distances(np.stack([heart()] * 4), lv_only)
    assert shifted.loc["RV_area", "ks"] == 1.0 and shifted.loc["RV_area", "wasserstein"] == (heart() == RV).sum()
    assert shifted.loc["LV_area", "wasserstein"] == 0


class CoinPrior(torch.nn.Module):
    """A stand-in mask prior: each draw is the drawn heart with probability ``p_valid``, else an open ring."""

    def __init__(self, p_valid: float):
        super().__init__()
        self.p_valid = p_valid
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def sample(self, cond, *, sampler, steps, generator, n):
        good, bad = torch.from_numpy(heart()), torch.from_numpy(broken()["open ring"][0])
        pick = torch.rand(n, generator=generator) < self.p_valid
        labels = torch.where(pick[:, None, None], good, bad).long()
        return models.one_hot(labels) * 2 - 1


def test_the_filter_keeps_valid_masks_reports_its_draws_and_tops_up_with_a_warning():
    sampling = params.FlowSampling(steps=1, batch_size=8)
    ref = np.stack([heart()])
    f = generation.filtered_masks(CoinPrior(0.3), 10, sampling, seed=0, ranges=anatomy.area_ranges(ref), max_draws=20)
    assert f.valid.all() and len(f.masks) == 10 and anatomy.check_masks(f.masks, ref)["valid"].all()
    assert f.n_drawn % 8 == 0 and f.n_accepted >= 10 and f.n_drawn >= 10 / 0.3 * 0.5
    assert not anatomy.check_masks(f.drawn, ref)["valid"].all()  # the unfiltered draws are kept as drawn
    again = generation.filtered_masks(CoinPrior(0.3), 10, sampling, seed=0, ranges=anatomy.area_ranges(ref), max_draws=20)
    np.testing.assert_array_equal(f.masks, again.masks)
    with pytest.warns(UserWarning, match="topped up with 10 invalid"):
        never = generation.filtered_masks(CoinPrior(0.0), 10, sampling, seed=0, ranges=anatomy.area_ranges(ref), max_draws=2)
    assert never.n_drawn == 24 and not never.valid.any() and len(never.masks) == 10
