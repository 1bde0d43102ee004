"""The arm registry: one place for what an arm is; a new arm reaches the runner, the paper and the benchmark."""

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cmrlib import bench, generation, paper, params, preflight, registry, study, utility
from cmrlib.models import flow

REPO = Path(__file__).resolve().parents[1]


def toy_arm() -> registry.Arm:
    """A flow arm under another name, trained from the FM section of the params: nothing else knows of it."""
    fm = registry.get("fm")
    return registry.Arm("toy", "Toy", "fm", fm.build, fm.samplers, fm.reference, "flow matching, registered by a test")


def test_the_study_registers_three_arms_in_the_papers_order():
    assert registry.names() == ["ddpm", "ldm", "fm"]
    assert [registry.label(a) for a in registry.names()] == ["DDPM", "LDM", "FM"]
    assert registry.label("real only") == "real only"
    assert [a for a in registry.names() if registry.get(a).autoencoder] == ["ldm"]
    with pytest.raises(ValueError, match=r"unknown arm 'gan'; choose one of: ddpm, ldm, fm"):
        registry.get("gan")


def test_a_registered_arm_reaches_the_runner_the_paper_the_benchmark_and_the_axes():
    smoke = params.load(REPO / "params/smoke.yaml")
    with registry.registered(toy_arm()):
        # the runner's plan: a stage of the generator notebook, with the arm's outputs
        stages = {s.name: s for s in study.discover_stages()}
        toy = stages["20_generator[toy]"]
        assert toy.arm == "toy" and toy.executed == "notebooks/20_generator_toy.ipynb"
        assert "checkpoints/toy/last.pt" in toy.outputs and "samples/toy/synthetic.npz" in toy.outputs
        assert list(stages).index("20_generator[toy]") < list(stages).index("30_fidelity")
        # the paper's labels and table
        table = pd.DataFrame([{"arm": a, "label": paper.AXES[0][2], "estimate": 0.5, "low": 0.4, "high": 0.6}
                              for a in registry.names()])
        assert "Toy" in paper.table_view(table).index
        # the benchmark's models and samplers
        models = bench._models(smoke)
        assert "toy" in models and type(models["toy"][0]).__name__ == "FlowMatchingModel"
        # the axes: a utility plan and the preflight's batch checks include it
        splits = {"sets": {"train": [f"p{i}" for i in range(smoke.data.n_train_patients)]}}
        assert {r.arm for r in utility.plan(smoke, splits)} >= {"toy"}
        too_big = smoke.model_copy(update={"generators": smoke.generators.model_copy(update={
            "fm": smoke.generators.fm.model_copy(update={"train": smoke.generators.fm.train.model_copy(update={"batch_size": 10**6})})})})
        messages = preflight.problems(too_big, preflight.Counts({"train": 6}, [10] * 6, "test"))
        assert any(m.startswith("20_generator[toy]: generators.fm.train.batch_size") for m in messages)
        assert generation.made_by("toy") == "20_generator[toy]"
    assert "toy" not in registry.names() and "20_generator[toy]" not in [s.name for s in study.discover_stages()]


def test_the_benchmark_samples_every_registered_arm_with_its_samplers(monkeypatch):
    smoke = params.load(REPO / "params/smoke.yaml")
    timed = []
    monkeypatch.setattr(bench, "_median_time", lambda fn, repeats, warmup=1: timed.append(1) or 0.01)
    with registry.registered(toy_arm()):
        table = bench.sampling_table(smoke, [2], n_images=2, run=None)
    assert set(table["arm"]) == {"ddpm", "ldm", "fm", "toy"}
    assert set(table.loc[table.arm == "toy", "sampler"]) == set(registry.FLOW_SAMPLERS)
    assert set(table.loc[table.arm == "ldm", "sampler"]) == set(registry.DIFFUSION_SAMPLERS)


def test_the_reference_sampler_of_each_arm():
    p = params.StudyParams(run_name="x")
    for arm, (sampler, steps) in {"ddpm": ("ancestral", 1000), "ldm": ("ancestral", 1000), "fm": ("euler", 1000)}.items():
        ref = registry.get(arm).reference_sampling(p)
        assert (ref.sampler, ref.steps) == (sampler, steps)
        assert ref.batch_size == registry.get(arm).params(p).sample.batch_size  # the rest of the arm's settings


def test_the_models_answer_their_own_noise_level_for_a_signal_to_noise_ratio():
    p = params.load(REPO / "params/smoke.yaml")
    for snr in (0.3, 1.0, 3.0):
        ddpm, ldm, fm = (generation.build_arm(p, a) for a in registry.names())
        t = ddpm.noise_level(snr)
        abar = float(ddpm.alphas_cumprod[int(t)])
        assert t == int(t) and abar / (1 - abar) == pytest.approx(snr, rel=0.1)
        assert ldm.noise_level(snr) == ldm.diffusion.noise_level(snr)
        s = fm.noise_level(snr)
        assert s == flow.time_for_snr(snr) and s**2 / (1 - s) ** 2 == pytest.approx(snr)
        assert not math.isnan(ddpm.noise_level(snr))


def test_no_module_outside_the_registry_tests_an_arm_by_name_or_model_class():
    pattern = re.compile(r'== *"(ddpm|ldm|fm)"|isinstance\(.*(DiffusionModel|LatentDiffusion|FlowMatchingModel)')
    found = [f"{path.relative_to(REPO)}:{i}" for path in sorted((REPO / "cmrlib").rglob("*.py")) if path.name != "registry.py"
             for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []
    assert [p.name for p in sorted((REPO / "notebooks").glob("2*.ipynb"))] == ["20_generator.ipynb"]


def test_runner_selects_a_notebooks_arms_together_or_one_by_one():
    stages = study.discover_stages()
    assert [s.name for s in study._select(stages, ["20_generator"], None)] == [f"20_generator[{a}]" for a in registry.names()]
    assert [s.name for s in study._select(stages, ["20_generator[fm]"], None)] == ["20_generator[fm]"]
    assert study._select(stages, [], "20_generator")[0].name == "20_generator[ddpm]"
    with pytest.raises(study.StageFailed, match=r"no stage '20_generator\[gan\]'"):
        study._select(stages, ["20_generator[gan]"], None)
    fps = study.fingerprints(stages, params.load(REPO / "params/smoke.yaml"))
    assert len({fps[f"20_generator[{a}]"] for a in registry.names()}) == 3  # one notebook, three fingerprints
    assert np.all([s.notebook.name == "20_generator.ipynb" for s in stages if s.arm])
