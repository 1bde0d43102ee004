"""The training loop: loss falls, fixed seed is exact, resume is bit-exact, checkpoints are safe to load."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch
from torch import nn

import cmrlib
from cmrlib.training import CheckpointError, TrainConfig, kept_checkpoints, load_checkpoint, train


class TinyDenoiser(nn.Module):
    """A ~300-parameter noise predictor with the models' contract: ``loss(x, cond, generator)`` and ``config``."""

    def __init__(self, channels: int = 1, cond_channels: int = 2, hidden: int = 8):
        super().__init__()
        self.config = {"channels": channels, "cond_channels": cond_channels, "hidden": hidden}
        self.net = nn.Sequential(
            nn.Conv2d(channels + cond_channels + 1, hidden, 3, padding=1), nn.SiLU(), nn.Conv2d(hidden, channels, 3, padding=1)
        )

    def loss(self, x, cond, generator):
        t = torch.rand(len(x), 1, 1, 1, generator=generator, device=x.device)
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        x_t = (1 - t).sqrt() * x + t.sqrt() * noise
        inputs = torch.cat([x_t, cond, t.expand_as(x)], dim=1)
        return (self.net(inputs) - noise).pow(2).mean()


class Interrupted(Exception):
    pass


def dies_after(model: nn.Module, calls: int) -> nn.Module:
    """The model with a loss that raises after ``calls`` evaluations: a run killed mid-way."""
    loss, left = model.loss, [calls]

    def dying_loss(*args):
        left[0] -= 1
        if left[0] < 0:
            raise Interrupted
        return loss(*args)

    model.loss = dying_loss  # on the instance, so the class (stored in the checkpoint) stays the same
    return model


def make_model(**kw) -> nn.Module:
    torch.manual_seed(0)
    return TinyDenoiser(**kw)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    masks = (torch.rand(16, 1, 8, 8, generator=g) > 0.5).float()
    cond = torch.cat([masks, 1 - masks], dim=1)
    x = 0.8 * (2 * masks - 1) + 0.1 * torch.randn(16, 1, 8, 8, generator=g)
    return x, cond


def cfg(**overrides) -> TrainConfig:
    base = dict(steps=40, batch_size=8, lr=1e-2, warmup_steps=4, checkpoint_every=10, log_every=1, seed=3)
    return TrainConfig(**(base | overrides))


def weights(sd: dict) -> dict:
    return {k: v.clone() for k, v in sd.items()}


def assert_same(a: dict, b: dict) -> None:
    """Bit-identical tensors, wherever each lives (a checkpoint on the CPU, a trained model on the GPU)."""
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].cpu(), b[k].cpu()), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """An uninterrupted 40-step run, shared by the tests that compare against it."""
    out = tmp_path_factory.mktemp("reference")
    model = make_model()
    result = train(model, *data, cfg(), out, desc="reference")
    return out, model, result


def test_loss_falls(tmp_path, data):
    result = train(make_model(), *data, cfg(steps=80, lr=2e-2), tmp_path)
    loss = result.losses["loss"]
    assert loss.iloc[-10:].mean() < 0.7 * loss.iloc[:10].mean()
    assert list(result.losses.columns[:5]) == ["step", "loss", "lr", "ema_decay", "grad_norm"]
    assert result.losses["lr"].iloc[-1] == pytest.approx(0.0, abs=1e-12)  # cosine decay to 0 at the budget


def test_fixed_seed_is_exact(tmp_path, data, reference):
    _, ref_model, ref = reference
    model = make_model()
    result = train(model, *data, cfg(), tmp_path)
    assert_same(model.state_dict(), ref_model.state_dict())
    pd.testing.assert_series_equal(result.losses["loss"], ref.losses["loss"])
    other = make_model()
    train(other, *data, cfg(seed=4), tmp_path / "other_seed")
    assert not torch.equal(other.net[0].weight, model.net[0].weight)


def test_resume_after_kill_is_bit_exact(tmp_path, data, reference):
    ref_dir, ref_model, ref = reference
    with pytest.raises(Interrupted):
        train(dies_after(make_model(), 25), *data, cfg(), tmp_path)  # dies in step 26, last.pt is at step 20
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 20
    assert pd.read_csv(tmp_path / "loss.csv")["step"].max() == 25

    fresh = TinyDenoiser()  # other initial weights: they must come from the checkpoint
    result = train(fresh, *data, cfg(), tmp_path)
    assert result.resumed_from == 20 and result.step == 40
    assert_same(fresh.state_dict(), ref_model.state_dict())
    resumed, uninterrupted = load_checkpoint(tmp_path / "last.pt"), load_checkpoint(ref_dir / "last.pt")
    assert_same(resumed["ema"], uninterrupted["ema"])
    assert_same(resumed["model"], uninterrupted["model"])
    log = pd.read_csv(tmp_path / "loss.csv")
    assert log["step"].tolist() == list(range(1, 41))
    pd.testing.assert_series_equal(log["loss"], ref.losses["loss"])

    # a finished run returns at once, with the trained weights in the model
    again = TinyDenoiser()
    result = train(again, *data, cfg(), tmp_path)
    assert result.resumed_from == 40 and len(result.losses) == 40
    assert_same(again.state_dict(), ref_model.state_dict())


def test_a_kill_before_the_first_log_row_leaves_a_resumable_log(tmp_path, data, reference):
    """A SIGKILL runs no ``finally``: what is on disk at the moment of death is what a rerun finds."""
    _, ref_model, _ = reference
    on_disk = {}
    model = make_model()
    loss, left = model.loss, [5]

    def dying_loss(*args):
        left[0] -= 1
        if left[0] < 0:  # step 6: last.pt holds step 4, no loss row is logged yet (log_every 10)
            on_disk["log"] = (tmp_path / "loss.csv").read_text()
            raise Interrupted
        return loss(*args)

    model.loss = dying_loss
    with pytest.raises(Interrupted):
        train(model, *data, cfg(checkpoint_every=2, log_every=10), tmp_path)
    assert on_disk["log"].strip() == "step,loss,lr,ema_decay,grad_norm,elapsed_s"  # the header reached the disk

    (tmp_path / "loss.csv").write_text("")  # as a kill between creating and writing the file leaves it
    fresh = TinyDenoiser()
    result = train(fresh, *data, cfg(checkpoint_every=2, log_every=10), tmp_path)
    assert result.resumed_from == 4 and result.step == 40
    assert_same(fresh.state_dict(), ref_model.state_dict())
    assert pd.read_csv(tmp_path / "loss.csv")["step"].tolist() == [10, 20, 30, 40]


def test_resume_from_copied_checkpoint(tmp_path, data, reference):
    ref_dir, ref_model, _ = reference
    shutil.copy(ref_dir / "step_0000020.pt", tmp_path / "last.pt")
    model = TinyDenoiser()
    train(model, *data, cfg(), tmp_path)
    assert_same(model.state_dict(), ref_model.state_dict())
    assert_same(load_checkpoint(tmp_path / "last.pt")["ema"], load_checkpoint(ref_dir / "last.pt")["ema"])


def test_checkpoint_round_trip(reference):
    out, ref_model, result = reference
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["step"] == 40 and ckpt["cmrlib_version"] == cmrlib.__version__
    assert ckpt["config"] == ref_model.config
    assert TrainConfig.from_dict(ckpt["train_config"]) == cfg()
    assert ckpt["elapsed_s"] > 0 and result.wall_time_s >= ckpt["elapsed_s"]
    assert any(not torch.equal(ckpt["ema"][k], ckpt["model"][k]) for k in ckpt["model"])

    model = TinyDenoiser(hidden=8)
    loaded = load_checkpoint(out / "last.pt", model, weights="ema")
    assert loaded["weights"] == "ema"
    assert_same(model.state_dict(), ckpt["ema"])
    load_checkpoint(out / "last.pt", model, weights="raw")
    assert_same(model.state_dict(), ref_model.state_dict())

    decays = result.losses["ema_decay"]
    assert decays.iloc[0] == 0.0 and decays.is_monotonic_increasing and decays.iloc[-1] > decays.iloc[10]
    assert ckpt["ema_decay"] == pytest.approx(1 - 40 ** (-2 / 3))  # the warm-up formula with the defaults
    assert load_checkpoint(out / "step_0000010.pt")["ema_decay"] < ckpt["ema_decay"]


def test_kept_checkpoints(reference):
    out, _, result = reference
    kept = kept_checkpoints(out)
    assert list(kept) == [10, 20, 40] and result.checkpoints == kept
    assert [p.name for p in kept.values()] == ["step_0000010.pt", "step_0000020.pt", "step_0000040.pt"]
    loaded = {step: load_checkpoint(p) for step, p in kept.items()}
    assert [c["step"] for c in loaded.values()] == [10, 20, 40]
    w = [c["model"]["net.0.weight"] for c in loaded.values()]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    assert not list(out.glob("*.tmp"))  # atomic writes leave no temporary files


def test_truncated_checkpoint_names_file(tmp_path, data, reference):
    ref_dir, _, _ = reference
    blob = (ref_dir / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=r"last\.pt.*corrupt or truncated.*[Dd]elete it"):
        train(make_model(), *data, cfg(), tmp_path)
    with pytest.raises(CheckpointError, match="last.pt"):
        load_checkpoint(tmp_path / "last.pt")
    with pytest.raises(FileNotFoundError, match="written by cmrlib.training.train.*20_train"):
        load_checkpoint(tmp_path / "nope.pt", made_by="20_train")


def test_mismatch_on_resume_names_key(tmp_path, data, reference):
    ref_dir, _, _ = reference
    shutil.copy(ref_dir / "step_0000020.pt", tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=r"train_config\.lr"):
        train(make_model(), *data, cfg(lr=5e-3), tmp_path)
    with pytest.raises(CheckpointError, match=r"config\.hidden"):
        train(make_model(hidden=4), *data, cfg(), tmp_path)
    with pytest.raises(CheckpointError, match="data"):
        train(make_model(), data[0] + 1, data[1], cfg(), tmp_path)
    # how often to log or checkpoint does not change the run: resuming with other values is fine
    result = train(make_model(), *data, cfg(checkpoint_every=5, log_every=2), tmp_path)
    assert result.step == 40


def test_finished_run_is_not_retrained_elsewhere(tmp_path, data, reference):
    """A finished run returns at once even where it was not trained (another device or process count)."""
    ref_dir, ref_model, _ = reference
    shutil.copy(ref_dir / "last.pt", tmp_path / "last.pt")
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    here = "cuda" if torch.cuda.is_available() else "cpu"
    elsewhere = "cpu" if here == "cuda" else "cuda"
    ckpt |= {"device_type": elsewhere, "num_processes": 4}
    torch.save(ckpt, tmp_path / "last.pt")
    model = TinyDenoiser()
    assert train(model, *data, cfg(), tmp_path).step == 40
    assert_same(model.state_dict(), ref_model.state_dict())
    ckpt["step"] = 20  # not finished: continuing it here would not be the same run
    torch.save(ckpt, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=f"device_type: checkpoint '{elsewhere}', now '{here}'"):
        train(TinyDenoiser(), *data, cfg(), tmp_path)


class EncodedDenoiser(TinyDenoiser):
    """A TinyDenoiser behind a fixed input map, as the LDM behind its frozen encoder."""

    encoded_sets = 0

    def training_inputs(self, x):
        type(self).encoded_sets += 1
        return 0.5 * x.flip(-1)


def test_training_inputs_are_computed_once_and_trained_on(tmp_path, data):
    x, cond = data
    EncodedDenoiser.encoded_sets = 0
    torch.manual_seed(0)
    encoded = EncodedDenoiser()
    train(encoded, x, cond, cfg(steps=12), tmp_path / "encoded")
    assert EncodedDenoiser.encoded_sets == 1  # the whole set once, not every batch
    # the same run as a plain model trained on the mapped set
    plain = make_model()
    train(plain, 0.5 * x.flip(-1), cond, cfg(steps=12), tmp_path / "plain")
    assert_same(encoded.state_dict(), plain.state_dict())


# -- validation: the best checkpoint is kept, training itself is untouched ---------------------------------------
def weight_score(net: nn.Module) -> float:
    """A deterministic score of the weights that changes with every step: the first layer's mean."""
    return float(net.net[0].weight.double().mean())


def test_validation_keeps_the_best_checkpoint_and_leaves_training_alone(tmp_path, data, reference):
    _, ref_model, _ = reference
    model = make_model()
    result = train(model, *data, cfg(val_every=7), tmp_path, validate=weight_score)
    assert_same(model.state_dict(), ref_model.state_dict())  # validating changes nothing of the run
    log = result.validation
    assert log["step"].tolist() == [7, 14, 21, 28, 35, 40]  # every val_every steps and at the end
    best = int(log.loc[log["score"].idxmax(), "step"])
    assert result.best_step == best == log["best_step"].iloc[-1] and result.best_score == log["score"].max()
    assert result.chosen == tmp_path / "best.pt" and result.chosen_step == best
    # best.pt holds the EMA weights of that step: scored again they give the logged score
    scored = make_model()
    assert load_checkpoint(result.best, scored, weights="ema")["step"] == best
    assert weight_score(scored) == result.best_score
    # the last check scores the final EMA weights, not the raw ones
    load_checkpoint(result.last, scored, weights="ema")
    assert weight_score(scored) == log["score"].iloc[-1]


def test_validation_resumes_after_a_kill_with_the_same_log_and_best(tmp_path, data):
    whole = train(make_model(), *data, cfg(val_every=7), tmp_path / "whole", validate=weight_score)
    with pytest.raises(Interrupted):
        train(dies_after(make_model(), 25), *data, cfg(val_every=7), tmp_path / "killed", validate=weight_score)
    resumed = train(TinyDenoiser(), *data, cfg(val_every=7), tmp_path / "killed", validate=weight_score)
    # a new best at step 21 wrote last.pt with best.pt, so the resume starts there, not at step 20
    assert whole.validation.loc[whole.validation.step == 21, "best_step"].item() == 21 and resumed.resumed_from == 21
    pd.testing.assert_frame_equal(resumed.validation.drop(columns="elapsed_s"), whole.validation.drop(columns="elapsed_s"))
    assert resumed.best_step == whole.best_step
    assert_same(load_checkpoint(resumed.best)["ema"], load_checkpoint(whole.best)["ema"])
    done = train(TinyDenoiser(), *data, cfg(val_every=7), tmp_path / "killed", validate=weight_score)
    assert (done.resumed_from, done.best_step, done.best_score) == (40, whole.best_step, whole.best_score)


def test_validation_needs_both_a_score_and_a_schedule_and_a_finite_score(tmp_path, data):
    with pytest.raises(ValueError, match="val_every"):
        train(make_model(), *data, cfg(val_every=5), tmp_path / "a")
    with pytest.raises(ValueError, match="val_every"):
        train(make_model(), *data, cfg(), tmp_path / "b", validate=weight_score)
    with pytest.raises(FloatingPointError, match="validation score is nan at step 5"):
        train(make_model(), *data, cfg(val_every=5), tmp_path / "c", validate=lambda net: float("nan"))


def test_a_checkpoint_from_before_validation_existed_still_resumes(tmp_path, data, reference):
    _, ref_model, _ = reference
    with pytest.raises(Interrupted):
        train(dies_after(make_model(), 25), *data, cfg(), tmp_path)  # last.pt at step 20
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    del ckpt["train_config"]["val_every"], ckpt["validation"]  # as written before validation existed
    torch.save(ckpt, tmp_path / "last.pt")
    model = TinyDenoiser()
    result = train(model, *data, cfg(), tmp_path)
    assert result.resumed_from == 20 and result.best is None and result.chosen == result.last
    assert_same(model.state_dict(), ref_model.state_dict())
