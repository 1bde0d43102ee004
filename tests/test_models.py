"""Generators: schedules and paths against their closed forms, samplers on an analytic case, one interface."""

import math
import typing

import pytest
import torch

from cmrlib import models, params, training
from cmrlib.models import diffusion, flow, unet

TINY = dict(widths=[8, 16], attention=[False, False], head_dim=8)
SIZE = 16


def onehot_masks(n=3, size=SIZE, seed=0):
    g = torch.Generator().manual_seed(seed)
    return models.one_hot(torch.randint(0, 4, (n, size, size), generator=g))


def tiny_diffusion(**kw):
    return models.DiffusionModel(data_channels=1, cond_channels=4, sample_size=SIZE, unet=TINY, **kw)


def tiny_flow(**kw):
    return models.FlowMatchingModel(data_channels=1, cond_channels=4, sample_size=SIZE, unet=TINY, **kw)


# -- closed forms ----------------------------------------------------------------------------------------------------
def test_linear_schedule_and_forward_process_match_closed_form():
    m = tiny_diffusion(beta_start=1e-4, beta_end=0.02)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(m.alphas_cumprod.double(), abar, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(m.log_snr.double(), torch.log(abar / (1 - abar)), rtol=1e-5, atol=1e-5)
    x0, noise, t = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4), torch.tensor([0, 999])
    expected = abar[t].sqrt().float().view(-1, 1, 1, 1) * x0 + (1 - abar[t]).sqrt().float().view(-1, 1, 1, 1) * noise
    torch.testing.assert_close(m.q_sample(x0, t, noise), expected)


def test_cosine_schedule_matches_nichol_dhariwal():
    betas = diffusion.betas_for("cosine", 1000, 0, 0)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    abar = torch.cumprod(1 - betas, 0)
    for t in (0, 250, 500, 900):
        assert abar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-6)
    with pytest.raises(ValueError, match="linear, cosine"):
        diffusion.betas_for("quadratic", 10, 0, 0)


def test_flow_path_and_matched_noise_levels():
    x, n, t = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4), torch.tensor([0.0, 0.3, 1.0])
    x_t, u = flow.path(x, n, t)
    torch.testing.assert_close(x_t[0], n[0])
    torch.testing.assert_close(x_t[2], x[2])
    torch.testing.assert_close(x_t[1], 0.7 * n[1] + 0.3 * x[1])
    torch.testing.assert_close(u, x - n)
    for snr in (0.01, 1.0, 25.0):
        t = flow.time_for_snr(snr)
        assert t**2 / (1 - t) ** 2 == pytest.approx(snr)
    m = tiny_diffusion()
    for snr in (0.01, 1.0, 25.0):  # the diffusion step matched to an SNR has (nearly) that SNR
        t = m.timestep_for_snr(snr)
        assert abs(m.log_snr[t].item() - math.log(snr)) < 0.05


# -- samplers on an analytic case: data concentrated on one image, whose optimal denoiser is known ----------------
TARGET = torch.linspace(-0.8, 0.8, SIZE * SIZE).view(1, 1, SIZE, SIZE)


class ExactDiffusion(models.DiffusionModel):
    """The optimal prediction for data concentrated on TARGET: the noise, or the velocity."""

    def network_output(self, x_t, t, cond):
        abar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        eps = (x_t - abar.sqrt() * TARGET) / (1 - abar).sqrt()
        return eps if self.config["prediction_type"] == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * TARGET


SIGMA = 0.1


class ExactFlow(models.FlowMatchingModel):
    """The optimal velocity E[x - n | x_t] for data x ~ N(TARGET, SIGMA^2 I) (jointly Gaussian, defined at t = 1)."""

    def velocity(self, x_t, t, cond):  # the samplers pass t as a float
        t = float(t)
        gain = (t * SIGMA**2 - (1 - t)) / (t**2 * SIGMA**2 + (1 - t) ** 2)
        return TARGET + gain * (x_t - t * TARGET)


@pytest.mark.parametrize("prediction", diffusion.PREDICTIONS)
@pytest.mark.parametrize("sampler,steps", [("ancestral", 1000), ("ancestral", 50), ("ddim", 10), ("ddim", 200), ("dpmsolver++", 10)])
def test_diffusion_samplers_land_on_the_data_under_the_exact_model(sampler, steps, prediction):
    m = ExactDiffusion(data_channels=1, cond_channels=4, sample_size=SIZE, unet=TINY, prediction_type=prediction)
    out = m.sample(onehot_masks(4), sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0))
    assert (out - TARGET).abs().max() < 0.02
    x0 = TARGET.expand(4, -1, -1, -1)
    t, noise = torch.tensor([0, 300, 600, 999]), torch.randn(4, 1, SIZE, SIZE)
    torch.testing.assert_close(m.predict_noise(m.q_sample(x0, t, noise), t, None), noise, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("prediction", diffusion.PREDICTIONS)
def test_min_snr_weights_the_clean_image_error_alike_for_noise_and_velocity(prediction, monkeypatch):
    """A prediction whose implied clean image is off by d everywhere costs min(SNR_t, gamma) d^2 under Min-SNR-gamma
    in both parametrisations, and SNR_t d^2 (noise) or (SNR_t + 1) d^2 (velocity) under the simple loss."""
    x0, d = torch.zeros(64, 1, 4, 4), 0.1
    for gamma in (5.0, None):
        m = models.DiffusionModel(data_channels=1, cond_channels=0, sample_size=4, unet=TINY, min_snr_gamma=gamma,
                                  prediction_type=prediction)

        def off_by_d(x_t, t, cond, m=m):
            abar = m.alphas_cumprod[t].view(-1, 1, 1, 1)
            eps = (x_t - abar.sqrt() * (x0 + d)) / (1 - abar).sqrt()
            return eps if prediction == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * (x0 + d)

        monkeypatch.setattr(m, "network_output", off_by_d)
        loss = m.loss(x0, None, torch.Generator().manual_seed(3))
        t = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(3))  # the loss's draw of t
        snr = m.log_snr[t].double().exp()
        weight = snr.clamp(max=gamma) if gamma else (snr if prediction == "epsilon" else snr + 1)
        assert float(loss) == pytest.approx(float((weight * d**2).mean()), rel=1e-3)


def test_an_unknown_prediction_type_names_the_choices():
    with pytest.raises(ValueError, match="epsilon, v_prediction"):
        tiny_diffusion(prediction_type="sample")


@pytest.mark.parametrize("sampler,steps,rel", [("euler", 50, 0.12), ("midpoint", 20, 0.03), ("heun", 20, 0.03)])
def test_flow_samplers_reach_the_data_distribution_under_the_exact_model(sampler, steps, rel):
    """Euler's first-order error shrinks the spread (0.061 at 10 steps, 0.091 at 50, for 0.1); the second-order
    solvers are within 3% at 20 steps."""
    m = ExactFlow(data_channels=1, cond_channels=4, sample_size=SIZE, unet=TINY)
    out = m.sample(onehot_masks(16), sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0))
    residual = out - TARGET
    assert abs(residual.mean().item()) < 0.01
    assert residual.std().item() == pytest.approx(SIGMA, rel=rel)


def test_ode_solvers_have_their_order_on_a_linear_field():
    """dx/dt = -x from t=0 to 1: Euler error O(h), midpoint and Heun O(h^2)."""
    v = lambda x, t: -x  # noqa: E731
    x0 = torch.ones(1)
    errors = {name: [abs(flow.integrate(v, x0, name, n).item() - math.exp(-1)) for n in (10, 20)] for name in flow.SAMPLERS}
    assert errors["euler"][0] / errors["euler"][1] == pytest.approx(2, rel=0.15)
    for name in ("midpoint", "heun"):
        assert errors[name][0] / errors[name][1] == pytest.approx(4, rel=0.15)


def test_unknown_sampler_names_the_choices():
    with pytest.raises(ValueError, match="ancestral, ddim, dpmsolver"):
        tiny_diffusion().sample(onehot_masks(1), sampler="euler", steps=2, generator=torch.Generator())
    with pytest.raises(ValueError, match="euler, midpoint, heun"):
        tiny_flow().sample(onehot_masks(1), sampler="ddim", steps=2, generator=torch.Generator())


def test_params_sampler_names_match_the_models():
    assert set(typing.get_args(params.DiffusionSampler)) == set(diffusion.SAMPLERS)
    assert set(typing.get_args(params.FlowSampler)) == set(flow.SAMPLERS)


def test_an_unknown_or_unconditional_spade_conditioning_is_refused():
    with pytest.raises(ValueError, match="choose one of: concat, spade, controlnet"):
        tiny_flow(conditioning="film")
    with pytest.raises(ValueError, match="needs a mask"):
        models.FlowMatchingModel(data_channels=4, cond_channels=0, sample_size=SIZE, unet=TINY, conditioning="spade")


# -- the common interface on real (tiny) networks ----------------------------------------------------------------
def tiny_ldm(**kw):
    ae = models.Autoencoder(sample_size=SIZE, widths=[8, 16], latent_channels=2)
    return models.LatentDiffusion(autoencoder=ae.config, diffusion=dict(
        data_channels=2, cond_channels=4, sample_size=ae.latent_size, unet=dict(widths=[8, 16], attention=[False, False], head_dim=8), clip_sample=False, **kw))


@pytest.mark.parametrize("conditioning", unet.CONDITIONINGS)
@pytest.mark.parametrize("make", [tiny_diffusion, tiny_flow, tiny_ldm], ids=["ddpm", "fm", "ldm"])
def test_interface_shapes_reproducibility_and_rebuild(make, conditioning):
    torch.manual_seed(0)
    m = make(conditioning=conditioning).eval()
    masks = onehot_masks(3)
    x = torch.rand(3, 1, SIZE, SIZE) * 2 - 1
    loss = m.loss(training.training_inputs(m, x), masks, torch.Generator().manual_seed(0))  # the LDM's loss takes latents
    assert loss.ndim == 0 and torch.isfinite(loss)
    sampler = "euler" if isinstance(m, models.FlowMatchingModel) else "ddim"
    a = m.sample(masks, sampler=sampler, steps=3, generator=torch.Generator().manual_seed(5))
    b = m.sample(masks, sampler=sampler, steps=3, generator=torch.Generator().manual_seed(5))
    c = m.sample(masks, sampler=sampler, steps=3, generator=torch.Generator().manual_seed(6))
    assert a.shape == (3, 1, SIZE, SIZE) and torch.equal(a, b) and not torch.equal(a, c)
    err = m.error_at(x, masks, snr=1.0, generator=torch.Generator().manual_seed(0), draws=2)
    assert err.shape == (3,) and (err > 0).all()
    rebuilt = models.build(m.config)
    rebuilt.load_state_dict(m.state_dict())
    torch.testing.assert_close(rebuilt.eval().sample(masks, sampler=sampler, steps=3, generator=torch.Generator().manual_seed(5)), a)


def _sample_from(m, label: int) -> torch.Tensor:
    mask = models.one_hot(torch.full((2, SIZE, SIZE), label))
    sampler = "euler" if isinstance(m, models.FlowMatchingModel) else "ddim"
    return m.eval().sample(mask, sampler=sampler, steps=4, generator=torch.Generator().manual_seed(0))


def plain_velocity_diffusion(**kw):
    """A diffusion model whose loss weighs the high-noise steps, where the mask decides the image, as much as the
    others (Min-SNR weighting would make these tests slow to learn the mask)."""
    return tiny_diffusion(prediction_type="v_prediction", min_snr_gamma=None, **kw)


@pytest.mark.parametrize("conditioning", unet.CONDITIONINGS)
@pytest.mark.parametrize("make", [plain_velocity_diffusion, tiny_flow], ids=["ddpm", "fm"])
def test_every_conditioning_learns_to_follow_the_mask(make, conditioning, tmp_path):
    """Trained on images bright where the mask is foreground, an image sampled from a full mask is brighter than one
    from an empty mask with the same noise. Untrained, the ControlNet's zero convolutions leave the mask unused."""
    torch.manual_seed(0)
    m = make(conditioning=conditioning)
    if conditioning == "controlnet":
        torch.testing.assert_close(_sample_from(m, 0), _sample_from(m, 2))
    labels = torch.randint(0, 2, (32, 1, 1)).expand(32, SIZE, SIZE) * 2  # half the maps empty, half all MYO
    x = (labels > 0).float()[:, None] * 2 - 1
    cfg = training.TrainConfig(steps=100, batch_size=8, lr=3e-3, warmup_steps=5, checkpoint_every=100, log_every=10)
    training.train(m, x, models.one_hot(labels), cfg, tmp_path)
    gap = float(_sample_from(m, 2).mean() - _sample_from(m, 0).mean())
    assert gap > 0.5, f"{conditioning}: full-mask minus empty-mask brightness {gap:.2f}"


def test_latent_scale_gives_unit_variance_latents():
    m = tiny_ldm()
    x = torch.rand(8, 1, SIZE, SIZE) * 2 - 1
    m.set_latent_scale(x)
    assert m.to_latent(x).std().item() == pytest.approx(1.0, rel=1e-4)
    assert m.to_latent(x).shape == (8, 2, SIZE // 2, SIZE // 2)
    # the set the training loop encodes once, in batches, is the latents of every image
    torch.testing.assert_close(m.training_inputs(x, batch_size=3), m.to_latent(x))


@pytest.mark.parametrize("make", [tiny_diffusion, tiny_flow], ids=["ddpm", "fm"])
def test_loss_falls_when_training_on_a_tiny_set(make, tmp_path):
    torch.manual_seed(0)
    m = make()
    x = (torch.rand(4, 1, SIZE, SIZE) > 0.5).float() * 2 - 1
    cfg = training.TrainConfig(steps=60, batch_size=4, lr=3e-3, warmup_steps=5, checkpoint_every=60, log_every=5)
    losses = training.train(m, x, onehot_masks(4), cfg, tmp_path).losses["loss"].to_numpy()
    assert losses[-3:].mean() < 0.7 * losses[:3].mean()


def test_checkpoint_round_trip_rebuilds_the_model(tmp_path):
    m = tiny_flow()
    cfg = training.TrainConfig(steps=4, batch_size=2, warmup_steps=1, checkpoint_every=2)
    result = training.train(m, torch.randn(4, 1, SIZE, SIZE), onehot_masks(4), cfg, tmp_path)
    ckpt = training.load_checkpoint(result.last)
    rebuilt = models.build(ckpt["config"])
    training.load_checkpoint(result.last, rebuilt, weights="raw")
    for (name, p), q in zip(m.state_dict().items(), rebuilt.state_dict().values()):
        torch.testing.assert_close(p.cpu(), q, msg=name)  # a trained model stays on the GPU


def test_unet_size_errors_name_the_param():
    with pytest.raises(ValueError, match="head_dim"):
        models.FlowMatchingModel(data_channels=1, cond_channels=4, sample_size=SIZE, unet=dict(widths=[8, 16], attention=[False, False], head_dim=32))
    with pytest.raises(ValueError, match="divisible"):
        models.FlowMatchingModel(data_channels=1, cond_channels=4, sample_size=18, unet=dict(widths=[8, 16, 16], attention=[False] * 3, head_dim=8))


@pytest.mark.parametrize("prediction", diffusion.PREDICTIONS)
def test_one_step_estimates_return_the_image_under_the_exact_model(prediction, monkeypatch):
    """The reference attack's input: at any noise level, a model that predicts the noise (or the velocity) exactly
    gives the clean image back in one step."""
    g = lambda: torch.Generator().manual_seed(5)
    x0 = TARGET.expand(4, -1, -1, -1)
    m = ExactDiffusion(data_channels=1, cond_channels=4, sample_size=SIZE, unet=TINY, prediction_type=prediction)
    out = m.one_step_estimate(x0, onehot_masks(4), torch.tensor([0, 300, 599, 900]), g())
    torch.testing.assert_close(out, x0, rtol=1e-3, atol=1e-3)
    f = tiny_flow()
    noise = torch.randn(x0.shape, generator=g())  # the draw one_step_estimate makes
    monkeypatch.setattr(f, "velocity", lambda x_t, t, cond: x0 - noise)  # the exact velocity of this pair
    torch.testing.assert_close(f.one_step_estimate(x0, None, torch.tensor([0.1, 0.4, 0.7, 0.95]), g()), x0)
