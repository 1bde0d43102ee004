"""The sampler diagnosis (cmrlib.diagnosis): its estimators on cases with a known answer, and the DDPM recipe's DDIM
on a small trained model: its quality must not fall as its steps grow."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

from cmrlib import diagnosis, models, plots, registry, training
from cmrlib.params import DDPMParams, ScheduleParams
from tests.builders import tiny_params

SIZE = 16
LEVELS = torch.tensor([-0.8, 0.8, 0.0, 0.4])  # the toy data's intensity of each label
TINY = dict(widths=[8, 16], attention=[False, False], head_dim=8)


def toy_set(n: int, seed: int, noise: float = 0.05):
    """Masks of a disc (label 1) in a ring (label 2) beside a block (label 3); each image is its mask's label
    intensities plus white noise, so a pixel's label is the level nearest to its intensity."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    centre = torch.randint(5, SIZE - 5, (n, 2), generator=g)
    radius = torch.randint(2, 4, (n, 1, 1), generator=g)
    d = ((yy - centre[:, :1, None]) ** 2 + (xx - centre[:, 1:, None]) ** 2).float().sqrt()
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    masks[d < radius + 2] = 2
    masks[d < radius] = 1
    masks[:, 10:, :3] = 3
    return LEVELS[masks][:, None] + noise * torch.randn(n, 1, SIZE, SIZE, generator=g), masks


class NearestLevel(nn.Module):
    """The perfect judge of the toy data: each pixel's label is the level nearest to its intensity."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # where it runs (cmrlib.segmenters.segment asks)

    def predict(self, x):
        return (x[:, 0, ..., None] - LEVELS).abs().argmin(-1)


class ExactToy(models.DiffusionModel):
    """The optimal prediction when each mask has one image (its label intensities, no noise)."""

    def network_output(self, x_t, t, cond):
        x0 = (cond * LEVELS.view(1, -1, 1, 1)).sum(1, keepdim=True)
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        eps = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
        return eps if self.config["prediction_type"] == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * x0


def test_the_error_by_timestep_vanishes_under_the_exact_model():
    x, masks = toy_set(8, 0, noise=0.0)
    m = ExactToy(data_channels=1, cond_channels=4, sample_size=SIZE, unet=TINY)
    table = diagnosis.error_by_timestep(m, x, models.one_hot(masks), timesteps=(0, 500, 999))
    assert list(table["timestep"]) == [0, 500, 999]
    assert table["log_snr"].is_monotonic_decreasing
    assert (table["eps_mse"] < 1e-6).all() and (table["x0_mse"] < 1e-6).all()


def test_the_sweep_scores_each_setting_against_the_reference_on_the_same_masks():
    """Under the exact model every setting regenerates the masks' images: Dice 1 each, 0 against the reference; a
    judge that sees a wrong image (raw weights of a model whose raw weights are zero) is scored below it."""
    _, masks = toy_set(6, 1)
    exact = ExactToy(data_channels=1, cond_channels=4, sample_size=SIZE, unet=TINY)
    blank = ExactToy(data_channels=1, cond_channels=4, sample_size=SIZE, unet=TINY)
    blank.network_output = lambda x_t, t, cond: torch.zeros_like(x_t)  # predicts no noise: the sample stays noise
    sweep = [diagnosis.Setting("ddim", "ddim", 5), diagnosis.Setting("ddim", "ddim", 50),
             diagnosis.Setting("ddim raw weights", "ddim", 5, weights="raw"), diagnosis.Setting("ancestral", "ancestral", 100)]
    table = diagnosis.sampler_sweep({"ema": exact, "raw": blank}.__getitem__, masks.numpy(), np.arange(6) // 2, NearestLevel(),
                                    sweep, seed=0, n_boot=200)
    assert list(table["setting"]) == ["ddim", "ddim", "ddim raw weights", "ancestral"]
    good = table[table["weights"] == "ema"]
    assert np.allclose(good["dice_mean"], 1.0, atol=0.02) and np.allclose(good["vs_reference"], 0.0, atol=0.02)
    raw = table[table["weights"] == "raw"].iloc[0]
    assert raw["vs_reference_high"] < -0.2
    summary = diagnosis.summary(table.assign(variant="exact"))
    assert list(summary.index) == [("exact", "ddim"), ("exact", "ddim raw weights")]
    assert summary.loc[("exact", "ddim raw weights"), "50 steps"] == ""  # not measured there
    assert summary.loc[("exact", "ddim"), "ancestral 100: mean Dice"] == f"{good['dice_mean'].iloc[-1]:.3f}"
    errors = diagnosis.error_by_timestep(exact, torch.zeros(2, 1, SIZE, SIZE), models.one_hot(masks[:2]), timesteps=(0, 999))
    fig = plots.sampler_diagnosis(table.assign(variant="exact"), errors.assign(variant="exact"))
    assert len(fig.axes) == 3 and fig.axes[0].lines
    plt.close(fig)


def test_a_variant_changes_only_the_arms_schedule():
    p = tiny_params()
    v = diagnosis.variant_params(p, "ddpm", "eps_min_snr")
    assert v.generators.ddpm.schedule.prediction_type == "epsilon" and v.generators.ddpm.schedule.clip_sample
    assert p.generators.ddpm.schedule.prediction_type == "v_prediction"  # the recipe
    assert v.generators.ddpm.model_copy(update={"schedule": p.generators.ddpm.schedule}) == p.generators.ddpm
    assert v.model_copy(update={"generators": p.generators}) == p
    assert v.generators.ldm == p.generators.ldm and v.generators.mask_prior == p.generators.mask_prior
    assert diagnosis.variant_params(p, "ddpm", "eps_simple").generators.ddpm.schedule.min_snr_gamma is None
    with pytest.raises(ValueError, match="eps_min_snr, eps_simple, v_min_snr"):
        diagnosis.variant_params(p, "ddpm", "bigger")
    assert diagnosis.checkpoint_folder("ddpm", "v_min_snr") != registry.get("ddpm").name  # never the study's own


@pytest.mark.parametrize("variant", ["eps_min_snr", "recipe"])
def test_ddim_of_a_small_trained_model_does_not_lose_quality_with_more_steps(variant, tmp_path):
    """The failure the diagnosis found on the phantom (docs/benchmarks.md#ddim-against-its-steps), reproduced on toy
    data: a noise-predicting model's implied clean image is far off at high noise, where 1 / sqrt(SNR) multiplies
    its error by up to 158; clipping it rescues few-step DDIM only, and many-step DDIM follows the error. The
    recipe (velocity prediction, no clipping) keeps DDIM's quality as the steps grow."""
    schedule = ScheduleParams(**diagnosis.VARIANTS[variant]) if variant != "recipe" else DDPMParams().schedule
    x, masks = toy_set(256, 0)
    torch.manual_seed(0)
    model = models.DiffusionModel(data_channels=1, cond_channels=4, sample_size=SIZE, unet=dict(TINY, widths=[16, 32]),
                                  **schedule.model_dump())
    config = training.TrainConfig(steps=300, batch_size=16, lr=1e-3, warmup_steps=20, ema_max_decay=0.999,
                                  checkpoint_every=300, keep_fractions=(1.0,), seed=0)
    result = training.train(model, x, models.one_hot(masks), config, tmp_path, desc="toy", progress=False)
    training.load_checkpoint(result.last, model, weights="ema")
    model.eval()
    _, test_masks = toy_set(32, 1)
    sweep = [diagnosis.Setting("ddim", "ddim", s) for s in (10, 50, 200)]
    table = diagnosis.sampler_sweep(lambda w: model, test_masks.numpy(), np.arange(32) // 4, NearestLevel(), sweep + sweep[:1],
                                    seed=0, n_boot=200)
    dice = table["dice_mean"].to_numpy()[:3]  # 10, 50, 200 steps; measured: 0.767, 0.417, 0.432 (eps_min_snr) and
    # 0.985, 0.976, 0.968 (recipe), the same from run to run on one machine
    if variant == "eps_min_snr":  # the failure, kept as evidence that the test can fail
        assert dice[1] < dice[0] - 0.2 and dice[2] < dice[0] - 0.2
    else:
        assert dice[1] > dice[0] - 0.03 and dice[2] > dice[0] - 0.03
