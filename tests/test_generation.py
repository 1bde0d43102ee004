"""Generation helpers: the samples table, kept checkpoints, clear errors for missing artefacts."""

import numpy as np
import pandas as pd
import pytest

from cmrlib import generation, params, registry
from cmrlib.paths import RunPaths


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
    with pytest.raises(FileNotFoundError, match=r"20_generator\[fm\]"):
        generation.load_arm(p, paths, "fm")


def test_unknown_arm_is_an_error():
    p = params.load(params.project_root() / "params/smoke.yaml")
    with pytest.raises(ValueError, match="ddpm, ldm, fm"):
        generation.build_arm(p, "gan")


def test_kept_checkpoints_are_ordered_distinct_loadable_and_sampled(smoke_run):
    """The compute axis: every arm keeps checkpoints at fractions of its budget, each with its own weights and samples."""
    import torch

    from cmrlib import training

    _, run_dir, _ = smoke_run
    paths = RunPaths(run_dir)
    p = params.load(run_dir / "params.yaml")
    for arm in registry.names():
        kept = training.kept_checkpoints(paths.checkpoints / arm)
        steps = list(kept)
        assert steps == sorted(steps) and len(steps) >= 3 and steps[-1] == registry.get(arm).params(p).train.steps
        weights = []
        for step in steps:
            model, ckpt = generation.load_arm(p, paths, arm, step=step)
            assert ckpt["step"] == step
            weights.append(torch.cat([t.flatten() for t in model.state_dict().values() if t.is_floating_point()]))
        assert all(not torch.equal(a, b) for a, b in zip(weights, weights[1:])), f"{arm}: identical weights at two kept steps"
        by_step = generation.synthetic_by_step(p, paths, arm)
        assert list(by_step) == steps
        first = by_step[steps[0]]["masks"]
        assert all(np.array_equal(s["masks"], first) for s in by_step.values())  # the same masks at every budget
        assert not np.array_equal(by_step[steps[0]]["images"], by_step[steps[-1]]["images"])
