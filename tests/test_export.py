"""Take-away data: the privacy gate, the export layouts (read back with nibabel), and generation from a trained run."""

import json

import nibabel as nib
import numpy as np
import pytest

from cmrlib import __main__ as cli
from cmrlib import export, generation
from cmrlib.params import load
from cmrlib.paths import RunPaths

from conftest import REPO


def fake_run(tmp_path, *, copy_share=0.0, released_auc=0.52, n=5, size=16) -> RunPaths:
    """A run folder holding what export reads: params, a synthetic set of the DDPM arm, and privacy results."""
    params = load(REPO / "params/smoke.yaml")
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir(parents=True)
    params.to_yaml(paths.params)
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (n, size, size + 2)).astype(np.float32)  # not square: catches a transposed layout
    masks = rng.integers(0, 4, (n, size, size + 2)).astype(np.uint8)
    record = {"set": "synthetic", "seed": 1, "sampler": "ddim", "steps": 4, "weights": "ema", "checkpoint_step": 8,
              "train_elapsed_s": 1.0, "seconds": 0.1}
    generation.save_samples(paths, "ddpm", "synthetic", record=record, images=images, masks=masks)
    summary = [{"arm": "ddpm", "copy_share": copy_share, "released_auc": released_auc}]
    (paths.metrics / "privacy.json").write_text(json.dumps({"summary": summary}))
    return paths


def test_gate_refuses_a_leaking_arm_and_names_the_numbers(tmp_path):
    paths = fake_run(tmp_path, copy_share=0.2, released_auc=0.9)
    with pytest.raises(export.PrivacyGateError, match=r"copy_share = 0.200 exceeds export.max_copy_share.*released_auc = 0.900 is 0.400 from chance, beyond export.max_released_auc = 0.6"):
        export.export(paths.root, "ddpm", "npz", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written when refused
    assert cli.main(["export", str(paths.root), "--arm", "ddpm", "--format", "npz", "--out", str(tmp_path / "out")]) == 2


def test_gate_reads_the_released_set_attack_by_its_distance_from_chance(tmp_path):
    paths = fake_run(tmp_path, released_auc=0.1)  # an attack that ranks members low reveals them as well
    with pytest.raises(export.PrivacyGateError, match=r"released_auc = 0.100 is 0.400 from chance"):
        export.export(paths.root, "ddpm", "npz", tmp_path / "out")
    assert export.privacy_gate(load(REPO / "params/smoke.yaml"), {"arm": "ddpm", "copy_share": 0.0, "released_auc": 0.45})["passed"]


def test_override_is_recorded_in_the_data_card(tmp_path):
    paths = fake_run(tmp_path, released_auc=0.9)
    out = export.export(paths.root, "ddpm", "npz", tmp_path / "out", override="internal use only")
    card = json.loads((out / "data_card.json").read_text())
    assert card["privacy_gate"]["passed"] is False and card["privacy_gate"]["override"] == "internal use only"
    assert "override" in (out / "data_card.md").read_text()
    with np.load(out / "ddpm_synthetic.npz") as f:
        assert f["images"].shape == (5, 16, 18)


def test_nnunet_layout_is_valid_and_reads_back(tmp_path):
    paths = fake_run(tmp_path)
    out = export.export(paths.root, "ddpm", "nnunet", tmp_path / "Dataset501_SynthCMR")
    data = generation.load_samples(paths, "ddpm", "synthetic")
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "LV": 1, "MYO": 2, "RV": 3}
    assert dataset["numTraining"] == 5 and dataset["file_ending"] == ".nii.gz" and dataset["channel_names"] == {"0": "MRI"}
    images = sorted((out / "imagesTr").glob("*.nii.gz"))
    labels = sorted((out / "labelsTr").glob("*.nii.gz"))
    assert [p.name for p in images] == [f"ddpm_{i:05d}_0000.nii.gz" for i in range(5)]
    assert [p.name for p in labels] == [f"ddpm_{i:05d}.nii.gz" for i in range(5)]
    d = load(paths.params).data
    pixel = round(d.crop_mm / d.spacing_mm) * d.spacing_mm / d.image_size  # the crop in mm over the pixels it became
    assert pixel != d.spacing_mm
    for i, (ip, lp) in enumerate(zip(images, labels)):
        img, lab = nib.load(ip), nib.load(lp)
        assert img.shape == lab.shape == (18, 16, 1)
        assert np.allclose(img.header.get_zooms(), (pixel, pixel, 999.0))  # nnU-Net's 2D convention
        assert np.allclose(lab.affine, img.affine)
        assert np.array_equal(img.get_fdata(dtype=np.float32)[:, :, 0].T, data["images"][i])
        assert np.array_equal(np.asarray(lab.dataobj)[:, :, 0].T, data["masks"][i])
    card = json.loads((out / "data_card.json").read_text())
    assert card["privacy_gate"]["passed"] and card["generation"]["sampler"] == "ddim" and card["n"] == 5


def test_export_refuses_a_non_empty_folder_and_unknown_names(tmp_path):
    paths = fake_run(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        export.export(paths.root, "ddpm", "nifti", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="unknown format 'dicom'"):
        export.export(paths.root, "ddpm", "dicom", tmp_path / "o2")
    with pytest.raises(FileNotFoundError, match="no params.yaml"):
        export.open_run(tmp_path / "nowhere")


def test_generate_from_a_trained_run_is_reproducible(smoke_run):
    _, run_dir, _ = smoke_run
    path = export.generate(run_dir, "fm", 3, seed=5)
    first = generation.load_samples(RunPaths(run_dir), "fm", path.stem)
    assert first["images"].shape[0] == first["masks"].shape[0] == 3
    assert np.isfinite(first["images"]).all() and first["images"].min() >= -1 and first["images"].max() <= 1
    export.generate(run_dir, "fm", 3, seed=5)
    again = generation.load_samples(RunPaths(run_dir), "fm", path.stem)
    assert np.array_equal(first["images"], again["images"]) and np.array_equal(first["masks"], again["masks"])
    table = generation.samples_table(RunPaths(run_dir), "fm")
    assert (table["file"] == path.name).sum() == 1
