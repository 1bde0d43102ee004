"""Take-away data: the privacy gate, the export layouts (read back with nibabel), and generation from a trained run."""

import json

import nibabel as nib
import numpy as np
import pytest

from cmrlib import __main__ as cli
from cmrlib import export, generation
from cmrlib.data import LayoutError, SliceSet, terms
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


def _heart(size: int) -> np.ndarray:
    """A map with a known orientation: the LV in the middle, its ring, the RV to the image's left."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    mask = np.where(r < size / 8, 1, np.where(r < size / 5, 2, 0)).astype(np.uint8)
    mask[(np.hypot(yy - size / 2, xx - size / 2 + size / 3.2) < size / 7) & (mask == 0)] = 3
    return mask


def test_exported_labels_read_back_in_their_orientation_and_pixel_size(tmp_path):
    """The export's affine (radiological view) and spacing: cmrlib's own reader gives every map back unchanged."""
    from cmrlib.data import user_masks

    d = load(REPO / "params/smoke.yaml").data
    pixel = round(d.crop_mm / d.spacing_mm) * d.spacing_mm / d.image_size
    mask = _heart(d.image_size)
    mask[2, 3] = 3  # an asymmetric mark: any flip or transpose moves it
    (tmp_path / "labels").mkdir()
    nib.save(export._nifti(mask, pixel, np.uint8), tmp_path / "labels" / "case.nii.gz")
    read, where = user_masks.read_masks(tmp_path / "labels", image_size=d.image_size, crop_mm=d.crop_mm,
                                        spacing_mm=d.spacing_mm, pixel_size_mm=pixel)
    assert np.array_equal(read[0], mask) and list(where["file"]) == ["case.nii.gz"]


def test_nnunet_export_with_the_real_training_split_and_a_complete_data_card(smoke_run, tmp_path):
    from cmrlib.data.preprocess import pixel_size_mm

    _, run_dir, _ = smoke_run
    p = load(run_dir / "params.yaml")
    out = export.export(run_dir, "fm", "nnunet", tmp_path / "Dataset502_RealSynth", real="train",
                        override="phantom data: no patients")
    train = SliceSet.load(run_dir / "data").split("train")
    n_syn = len(generation.load_samples(RunPaths(run_dir), "fm", "synthetic")["masks"])
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["numTraining"] == n_syn + len(train) == len(list((out / "labelsTr").glob("*.nii.gz")))
    assert set(dataset) >= {"channel_names", "labels", "numTraining", "file_ending"}
    real = sorted((out / "labelsTr").glob("real_*.nii.gz"))
    assert len(real) == len(train)
    label = nib.load(real[0])
    assert np.allclose(label.header.get_zooms(), (pixel_size_mm(p.data), pixel_size_mm(p.data), 999.0))
    assert np.array_equal(np.asarray(label.dataobj)[:, :, 0].T, train.masks[0])
    card = json.loads((out / "data_card.json").read_text())
    assert card["real"] == {"split": "train", "n": len(train), "patients": int(train.meta["patient"].nunique())}
    assert card["preprocessing"]["pixel_size_mm"] == pixel_size_mm(p.data) and "centre of mass" in card["preprocessing"]["crop"]
    assert card["training_data"]["terms"] == [terms.TERMS["phantom"]] and "Not for clinical use" in card["intended_use"]
    assert "synthetic set" in card["metrics_describe"] and 0 <= card["mask_validity"]["valid"] <= 1
    text = (out / "data_card.md").read_text()
    for heading in ("Intended use", "## Preprocessing", "## Source data: terms and citations", "real slices of the train split"):
        assert heading in text


def _write_masks(folder, masks, pixel):
    """The run's masks as a user would bring them: one 3D NIfTI at half the pixel size, a PNG and an NPZ."""
    import torch
    from PIL import Image

    folder.mkdir()
    fine = torch.nn.functional.interpolate(torch.from_numpy(masks[:2, None].astype(np.float32)), scale_factor=2, mode="nearest")[:, 0].numpy()
    stack = fine.astype(np.uint8).transpose(2, 1, 0)  # (slices, rows, cols) -> NIfTI (X, Y, Z)
    nib.save(nib.Nifti1Image(stack, np.diag([-pixel / 2, -pixel / 2, 8.0, 1.0])), folder / "a_stack.nii.gz")
    Image.fromarray(masks[2]).save(folder / "b_map.png")
    np.savez(folder / "c_maps.npz", masks=masks[3:5])


def test_generate_from_a_folder_of_label_maps_and_from_a_copied_model_folder(smoke_run, tmp_path):
    import shutil

    from cmrlib.data.preprocess import pixel_size_mm

    _, run_dir, _ = smoke_run
    p = load(run_dir / "params.yaml")
    test = SliceSet.load(run_dir / "data").split("test")
    _write_masks(tmp_path / "maps", test.masks[:5], pixel_size_mm(p.data))
    from_run = export.generate_to(tmp_path / "from_run", "npz", run=run_dir, arm="fm", masks=tmp_path / "maps", seed=3,
                                  override="phantom data: no patients")
    with np.load(from_run / "fm_from_masks.npz") as f:
        images, masks = f["images"], f["masks"]
    assert images.shape == masks.shape == (5, p.data.image_size, p.data.image_size) and np.isfinite(images).all()
    assert np.array_equal(masks[2:], test.masks[2:5])  # the PNG and NPZ maps on the model's grid, as they are
    for got, want in zip(masks[:2], test.masks[:2]):  # the NIfTI stack, resampled and cropped: the same anatomy
        assert {int(v) for v in np.unique(got)} == {int(v) for v in np.unique(want)}
        assert abs(int((got > 0).sum()) - int((want > 0).sum())) <= 0.15 * (want > 0).sum()
    model_dir = shutil.copytree(run_dir / "models" / "fm", tmp_path / "elsewhere" / "fm")  # no run folder beside it
    from_model = export.generate_to(tmp_path / "from_model", "nifti", model=model_dir, masks=tmp_path / "maps", seed=3)
    pairs = sorted((from_model / "images").glob("*.nii.gz"))
    assert len(pairs) == 5
    again = np.stack([nib.load(f).get_fdata(dtype=np.float32)[:, :, 0].T for f in pairs])
    np.testing.assert_allclose(again, images, atol=1e-6)  # the same weights, sampler and seeds as the run's arm
    card = json.loads((from_model / "data_card.json").read_text())
    assert card["privacy_gate"]["passed"] is None and "no privacy results" in card["privacy_gate"]["note"]
    drawn = export.generate_to(tmp_path / "drawn", "npz", model=model_dir, n=4, seed=1)
    with np.load(drawn / "fm_generated_n4_seed1.npz") as f:
        assert f["images"].shape[0] == 4
    assert json.loads((drawn / "data_card.json").read_text())["mask_validity"]["criteria"].endswith("(areas against the real training masks' range)")
    assert cli.main(["generate", "--model", str(model_dir), "--n", "2", "--out", str(tmp_path / "cli")]) == 0
    assert len(list((tmp_path / "cli" / "labels").glob("*.nii.gz"))) == 2


def test_label_maps_that_cannot_condition_a_model_are_clear_errors(tmp_path):
    from PIL import Image

    from cmrlib.data import BadCaseError, user_masks

    size = dict(image_size=32, crop_mm=180.0, spacing_mm=1.5, pixel_size_mm=5.625)
    cases = {
        "values.npz": (lambda f: np.savez(f, masks=np.full((32, 32), 7, np.uint8)), r"label values \[7\] outside 0..3.*--label-map"),
        "empty.npz": (lambda f: np.savez(f, masks=np.zeros((2, 32, 32), np.uint8)), "the label map is empty"),
        "colour.png": (lambda f: Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(f), "one channel of integer labels"),
        "size.npz": (lambda f: np.savez(f, masks=_heart(40)), r"40 x 40 maps with no pixel size: give --pixel-mm"),
        "keys.npz": (lambda f: np.savez(f, a=_heart(32), b=_heart(32)), r"no array 'masks' among \['a', 'b'\]"),
    }
    for name, (write, message) in cases.items():
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        write(folder / name)
        with pytest.raises(BadCaseError, match=message) as err:
            user_masks.read_masks(folder, **size)
        assert name in str(err.value)
    other = np.where(_heart(32) == 1, 500, np.where(_heart(32) == 2, 200, np.where(_heart(32) == 3, 600, 0)))
    np.savez(tmp_path / "other.npz", masks=other)
    (tmp_path / "numbered").mkdir()
    (tmp_path / "other.npz").rename(tmp_path / "numbered" / "other.npz")
    read, _ = user_masks.read_masks(tmp_path / "numbered", label_map=user_masks.parse_label_map("500:LV,200:MYO,600:RV"), **size)
    assert np.array_equal(read[0], _heart(32))
    with pytest.raises(ValueError, match="must name a file value for each of LV, MYO and RV"):
        user_masks.parse_label_map("1:LV,2:MYO")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(LayoutError, match="holds no label maps"):
        user_masks.read_masks(tmp_path / "nothing", **size)
