"""Standalone model folders: every arm and conditioning round-trips bit for bit, diffusers loads the networks it saved,
and a broken folder is a clear error."""

import json

import numpy as np
import pytest
import torch

from cmrlib import generation, models, params, registry, standalone

SMOKE = params.project_root() / "params/smoke.yaml"


def _built(arm: str, conditioning: str = "concat") -> torch.nn.Module:
    p = params.load(SMOKE, [f"generators.{arm}.conditioning={conditioning}"])
    torch.manual_seed(0)
    model = generation.build_arm(p, arm)
    with torch.no_grad():  # weights away from their initial values (zero-initialised layers included)
        for t in model.parameters():
            t.add_(0.01 * torch.randn_like(t))
    if hasattr(model, "latent_scale"):
        model.latent_scale.fill_(0.37)
    return model.eval()


def _sample(model, cond):
    sampling = registry.get("fm").params(params.load(SMOKE)).sample if model.config["family"] == "flow" else None
    kwargs = {"sampler": sampling.sampler, "steps": 2} if sampling else {"sampler": "ddim", "steps": 2}
    return model.sample(cond, generator=torch.Generator().manual_seed(3), **kwargs)


@pytest.mark.parametrize("arm, conditioning", [("ddpm", "concat"), ("ldm", "concat"), ("fm", "concat"), ("ldm", "spade"),
                                                ("fm", "controlnet")])
def test_a_saved_model_folder_loads_to_the_same_samples(arm, conditioning, tmp_path):
    model = _built(arm, conditioning)
    folder = standalone.save(model, tmp_path / arm, {"name": arm})
    config = json.loads((folder / standalone.CONFIG).read_text())
    assert config["model"] == model.config and set(config["networks"]) == ({"unet", "vae"} if arm == "ldm" else {"unet"})
    loaded, read = standalone.load(folder)
    assert read["name"] == arm
    size = model.config.get("sample_size") or model.config["diffusion"]["sample_size"] * 2 ** (len(model.config["autoencoder"]["widths"]) - 1)
    cond = models.one_hot(torch.randint(0, 4, (2, size, size))).float()
    torch.testing.assert_close(_sample(loaded, cond), _sample(model, cond), rtol=0, atol=0)


def test_diffusers_loads_the_networks_it_saved(tmp_path):
    from diffusers import AutoencoderKL, UNet2DModel

    model = _built("ldm")
    folder = standalone.save(model, tmp_path / "ldm", {"name": "ldm"})
    unet = UNet2DModel.from_pretrained(folder / "unet").eval()
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
    z = torch.randn(2, model.config["diffusion"]["data_channels"], model.config["diffusion"]["sample_size"], model.config["diffusion"]["sample_size"])
    cond = torch.rand(2, 4, *z.shape[-2:])
    t = torch.tensor([5, 500])
    with torch.no_grad():  # the input of diffusers' UNet: the data channels, then the one-hot mask's
        torch.testing.assert_close(unet(torch.cat([z, cond], 1), t).sample, model.denoiser(z, t, cond))
        torch.testing.assert_close(vae.decode(z).sample, model.autoencoder.decode(z))


def test_a_broken_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(standalone.ModelFolderError, match="has no cmrlib_model.json"):
        standalone.load(tmp_path)
    folder = standalone.save(_built("fm"), tmp_path / "fm", {"name": "fm"})
    (folder / "unet" / standalone.DIFFUSERS_WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(standalone.ModelFolderError, match=r"does not load into the unet of 'fm'.*copy the model folder again"):
        standalone.load(folder)
    (folder / "unet" / standalone.DIFFUSERS_WEIGHTS).unlink()
    with pytest.raises(standalone.ModelFolderError, match="is missing: the model folder .* was copied incompletely"):
        standalone.load(folder)
    config = json.loads((folder / standalone.CONFIG).read_text())
    (folder / standalone.CONFIG).write_text(json.dumps(config | {"format_version": 99}))
    with pytest.raises(standalone.ModelFolderError, match="version 99"):
        standalone.load(folder)
    with pytest.raises(FileExistsError, match="not empty"):
        standalone.save(_built("fm"), folder, {"name": "fm"})
