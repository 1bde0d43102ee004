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


def test_replicas_name_their_folders_and_train_on_their_patients():
    from cmrlib.data.records import SliceSet

    assert generation.PRIMARY.primary and generation.PRIMARY.folder("ddpm") == "ddpm" and generation.PRIMARY.seed_names == ()
    assert generation.Replica(1).folder("mask_prior") == "mask_prior_seed1"
    assert generation.Replica(0, 4).folder("ldm_autoencoder") == "ldm_autoencoder_n4_seed0"
    assert generation.made_by("mask_prior_n4_seed1") == "10_mask_prior" and generation.made_by("fm_seed2") == "20_generator[fm]"
    splits = {"sets": {"train": ["a", "b", "c", "d"]}}
    p = params.load(params.project_root() / "params/default.yaml", ["generators.n_seeds=2", "utility.n_real_patients=[2, null]"])
    assert generation.replicas(p, splits) == [generation.Replica(0), generation.Replica(1)]
    same = p.model_copy(update={"utility": p.utility.model_copy(update={"generators_from": "same"})})
    assert generation.replicas(same, splits) == [generation.Replica(0), generation.Replica(1), generation.Replica(0, 2), generation.Replica(1, 2)]
    meta = pd.DataFrame({"patient": list("aabbcd"), "split": "train"})
    slices = SliceSet(np.zeros((6, 4, 4), np.float32), np.zeros((6, 4, 4), np.uint8), meta)
    assert list(generation.training_slices(slices, splits, generation.Replica(1, 2)).meta["patient"]) == list("aabb")
    assert len(generation.training_slices(slices, splits, generation.Replica(1))) == 6


@pytest.mark.parametrize("arm,conditioning", [(a, c) for a in ("ddpm", "ldm", "fm") for c in ("spade", "controlnet")])
def test_every_conditioning_trains_and_samples_in_the_smoke_configuration(arm, conditioning, tmp_path):
    from cmrlib import data

    p = params.load(params.project_root() / "params/smoke.yaml", [f"generators.{arm}.conditioning={conditioning}"])
    paths = RunPaths(tmp_path)
    train = data.prepare(p, paths).split("train")
    model, result = generation.train_arm(p, paths, arm, train)
    loaded, ckpt = generation.load_arm(p, paths, arm)
    assert ckpt["step"] == result.step and ckpt["config"].get("conditioning", ckpt["config"].get("diffusion", {}).get("conditioning")) == conditioning
    images = generation.generate(loaded, train.masks[:3], registry.get(arm).params(p).sample, seed=0)
    assert images.shape == (3, *train.masks.shape[1:]) and np.isfinite(images).all()


def test_the_smoke_run_conditions_on_filtered_masks_and_generates_from_each_mask_source(smoke_run):
    import json

    _, run_dir, _ = smoke_run
    paths = RunPaths(run_dir)
    stage1 = generation.load_samples(paths, generation.MASK_PRIOR, "masks")
    assert {"masks", "valid", "drawn"} <= set(stage1) and len(stage1["masks"]) == len(stage1["drawn"]) == len(stage1["valid"])
    row = generation.samples_table(paths, generation.MASK_PRIOR).iloc[-1]
    assert row["mask_filter"] == "valid" and row["drawn"] >= row["n"] and 0 <= row["accepted"] <= row["drawn"]
    assert row["valid_share"] == pytest.approx(stage1["valid"].mean(), abs=1e-4)
    validity = pd.read_csv(run_dir / "tables/mask_prior_validity.csv", index_col=0)
    assert validity.loc["real (train)", "areas_in_range"] == 1.0 and "stage-1 drawn" in validity.index
    from cmrlib.data.records import SliceSet

    train_masks = {m.tobytes() for m in SliceSet.load(run_dir / "data").split("train").masks}
    for arm in registry.names():
        oracle = generation.load_samples(paths, arm, "synthetic_oracle")
        assert all(m.tobytes() in train_masks for m in oracle["masks"])  # real training masks
        np.testing.assert_array_equal(generation.load_samples(paths, arm, "synthetic_all")["masks"], stage1["drawn"])
    fidelity = json.loads((run_dir / "metrics/fidelity.json").read_text())
    assert {(r["arm"], r["mask_source"]) for r in fidelity["mask_sources"]} == {
        (a, s) for a in registry.names() for s in ("stage-1", "all", "oracle")}
    assert fidelity["stage1_masks"]["conditioning_valid"] == pytest.approx(stage1["valid"].mean())
    utility = json.loads((run_dir / "metrics/utility.json").read_text())
    assert {(r["arm"], r["mask_source"]) for r in utility["against_mask_source"]} == {
        (a, s) for a in registry.names() for s in ("stage-1", "all", "oracle")}
    for table in ("mask_sources", "conditioning_ablation"):
        assert (run_dir / "paper/tables" / f"{table}.csv").exists(), table
