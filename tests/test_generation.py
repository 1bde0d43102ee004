"""Generation helpers: seeds, the samples table, clear errors for missing artefacts."""

import numpy as np
import pandas as pd
import pytest

from cmrlib import generation, params
from cmrlib.paths import RunPaths


def test_seed_for_is_stable_and_distinct_per_purpose():
    assert generation.seed_for(0, "paired", "ddpm") == generation.seed_for(0, "paired", "ddpm")
    seeds = {generation.seed_for(s, p, a) for s in (0, 1) for p in ("paired", "synthetic") for a in ("ddpm", "ldm", "fm")}
    assert len(seeds) == 12


def test_save_samples_replaces_its_row_and_round_trips(tmp_path):
    paths = RunPaths(tmp_path)
    images, masks = np.zeros((3, 8, 8), np.float32), np.ones((3, 8, 8), np.uint8)
    generation.save_samples(paths, "fm", "paired", record={"seed": 1}, images=images, masks=masks)
    generation.save_samples(paths, "fm", "synthetic", record={"seed": 2}, images=images[:2], masks=masks[:2])
    generation.save_samples(paths, "fm", "paired", record={"seed": 3}, images=images + 1, masks=masks)
    table = pd.read_csv(tmp_path / "samples/fm/samples.csv")
    assert sorted(table["file"]) == ["paired.npz", "synthetic.npz"]
    assert table.set_index("file").loc["paired.npz", "seed"] == 3 and table.set_index("file").loc["synthetic.npz", "n"] == 2
    loaded = generation.load_samples(paths, "fm", "paired")
    np.testing.assert_array_equal(loaded["images"], images + 1)


def test_missing_samples_and_checkpoints_name_the_notebook(tmp_path):
    paths = RunPaths(tmp_path)
    with pytest.raises(FileNotFoundError, match="10_mask_prior"):
        generation.load_samples(paths, "mask_prior", "masks")
    p = params.load(params.project_root() / "params/smoke.yaml")
    with pytest.raises(FileNotFoundError, match="22_flow_matching"):
        generation.load_arm(p, paths, "fm")


def test_unknown_arm_is_an_error():
    p = params.load(params.project_root() / "params/smoke.yaml")
    with pytest.raises(ValueError, match="ddpm, ldm, fm"):
        generation.build_arm(p, "gan")
