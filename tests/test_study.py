"""The study runner and the notebooks: hygiene, failure report, skipping, and the smoke run of every notebook."""

import json
import os
from pathlib import Path

import nbformat
import pytest

from cmrlib import registry, study
from cmrlib.data import SliceSet

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def make_notebook(folder: Path, name: str, body: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": study.KERNEL, "display_name": "Python (cmrlib)", "language": "python"}
    params = nbformat.v4.new_code_cell('params_path = ""\nrun_dir = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / f"{name}.ipynb")
    return folder / f"{name}.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_one_parameters_cell_and_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name in study.PARAMETERS:
        assert f"{name} =" in tagged[0].source
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    assert nb.metadata["kernelspec"]["name"] == study.KERNEL


def test_stages_are_the_numbered_notebooks_in_order_with_the_generator_once_per_arm():
    stages = study.discover_stages()
    notebooks = [s.notebook.stem for s in stages]
    assert notebooks == sorted(notebooks) and stages[0].name == "00_data"
    assert [s.name for s in stages if s.arm] == [f"20_generator[{a}]" for a in registry.names()]


def test_failure_report_names_stage_cell_and_error(tmp_path):
    folder = tmp_path / "nbs"
    make_notebook(folder, "00_ok", "x = 1")
    make_notebook(folder, "10_broken", "raise ValueError('the data root is wrong')")
    make_notebook(folder, "20_never", "open('should-not-run', 'w')")
    with pytest.raises(study.StageFailed) as err:
        study.run(REPO / "params/smoke.yaml", runs_dir=tmp_path / "runs", stages=study.discover_stages(folder), echo=lambda *_: None)
    message = str(err.value)
    assert "10_broken" in message and "ValueError: the data root is wrong" in message
    assert "cell [3]" in message  # execution count in the executed copy (after papermill's injected parameters)
    assert "raise ValueError('the data root is wrong')" in message
    record = json.loads((tmp_path / "runs/smoke/run.json").read_text())
    assert record["stages"]["00_ok"]["status"] == "done"
    assert record["stages"]["10_broken"]["status"] == "failed"
    assert "20_never" not in record["stages"]
    assert (tmp_path / "runs/smoke/notebooks/10_broken.ipynb").exists()  # the executed copy with the traceback


def test_a_notebooks_progress_streams_to_the_terminal_while_it_runs(tmp_path, capfd):
    folder = tmp_path / "nbs"
    make_notebook(folder, "00_bar", "import sys, os\nfrom tqdm import tqdm\nprint('stage output')\n"
                                    "print('interval', os.environ['TQDM_MININTERVAL'])\nfor _ in tqdm(range(3), desc='training'): pass")
    study.run(REPO / "params/smoke.yaml", runs_dir=tmp_path / "runs", stages=study.discover_stages(folder), echo=lambda *_: None)
    out, err = capfd.readouterr()
    assert "stage output" in out and f"interval {study.PROGRESS_INTERVAL_S}" in out
    assert "training: 100%" in err and "3/3" in err


def test_a_publishing_run_copies_its_paper_and_executed_notebooks_with_repository_paths_relative(tmp_path, capsys):
    folder = tmp_path / "nbs"
    make_notebook(folder, "00_one", "from cmrlib.paths import project_root\nprint(project_root() / 'paper')")
    make_notebook(folder, "10_two", "from pathlib import Path\nfrom cmrlib.paths import RunPaths\n(RunPaths(Path(run_dir)).paper / 'paper.md').write_text('the paper')")
    publish = tmp_path / "pub"
    (publish / "notebooks").mkdir(parents=True)
    (publish / "notebooks" / "05_gone.ipynb").write_text("{}")  # a stage the run no longer has
    stages = study.discover_stages(folder)
    study.run(REPO / "params/smoke.yaml", [f"paper.publish_dir={publish}"], runs_dir=tmp_path / "runs", stages=stages,
              only=["00_one"], echo=lambda *_: None)
    assert not (publish / "notebooks" / "00_one.ipynb").exists()  # not every stage done yet
    run_dir, elsewhere = tmp_path / "runs" / "smoke", tmp_path / "elsewhere"
    assert study.main(["publish", str(run_dir), "--to", str(elsewhere)]) == 1 and not elsewhere.exists()
    assert "is not complete (its last invocation ended before every stage was done)" in capsys.readouterr().err
    study.run(REPO / "params/smoke.yaml", [f"paper.publish_dir={publish}"], runs_dir=tmp_path / "runs", stages=stages, echo=lambda *_: None)
    assert sorted(p.name for p in (publish / "notebooks").iterdir()) == ["00_one.ipynb", "10_two.ipynb"]
    text = (publish / "notebooks" / "00_one.ipynb").read_text()
    nb = nbformat.reads(text, as_version=4)
    assert any("paper" in "".join(o.get("text", "")) for c in nb.cells for o in c.get("outputs", []))
    assert str(REPO) not in text
    assert (publish / "paper.md").read_text() == "the paper"  # the run's paper beside its notebooks
    assert study.main(["publish", str(run_dir), "--to", str(elsewhere)]) == 0
    assert (elsewhere / "paper.md").exists() and sorted(p.name for p in (elsewhere / "notebooks").iterdir()) == ["00_one.ipynb", "10_two.ipynb"]


def test_unknown_stage_is_an_error():
    with pytest.raises(study.StageFailed, match="no stage 'nope'"):
        study.run(REPO / "params/smoke.yaml", only=["nope"], echo=lambda *_: None)


def test_fingerprints_chain_changes_downstream(tmp_path):
    from cmrlib import params

    folder = tmp_path / "nbs"
    first = make_notebook(folder, "00_a", "x = 1")
    make_notebook(folder, "10_b", "y = 2")
    stages = study.discover_stages(folder)
    p = params.load(REPO / "params/smoke.yaml")
    before = study.fingerprints(stages, p)
    assert before == study.fingerprints(stages, p)
    make_notebook(folder, "00_a", "x = 3")
    after = study.fingerprints(stages, p)
    assert after["00_a"] != before["00_a"] and after["10_b"] != before["10_b"]
    assert study.fingerprints(stages, params.load(REPO / "params/smoke.yaml", ["seed=1"]))["00_a"] != before["00_a"]
    assert first.exists()


def test_a_stage_reruns_for_the_code_it_runs_and_not_for_other_code(tmp_path, monkeypatch):
    from cmrlib import params

    package = tmp_path / "cmrlib"
    (package / "sub").mkdir(parents=True)
    files = {"cmrlib": package / "__init__.py", "cmrlib.a": package / "a.py", "cmrlib.sub.b": package / "sub" / "b.py",
             "cmrlib.sub": package / "sub" / "__init__.py", "cmrlib.c": package / "c.py"}
    for name, text in {"cmrlib": "", "cmrlib.a": "def f():\n    from .sub import b\n", "cmrlib.sub.b": "B = 1\n",
                       "cmrlib.sub": "", "cmrlib.c": "import cmrlib.sub\n"}.items():
        files[name].write_text(text)
    monkeypatch.setattr(study, "_package_modules", lambda: files)
    folder = tmp_path / "nbs"
    make_notebook(folder, "00_a", "%matplotlib inline\nfrom cmrlib import a")
    make_notebook(folder, "10_c", "import numpy\nfrom cmrlib.c import *")
    stages = study.discover_stages(folder)
    assert study.stage_modules(stages[0].notebook) == ["cmrlib", "cmrlib.a", "cmrlib.sub", "cmrlib.sub.b"]
    assert study.stage_modules(stages[1].notebook) == ["cmrlib", "cmrlib.c", "cmrlib.sub"]
    p = params.load(REPO / "params/smoke.yaml")
    before = study.fingerprints(stages, p)
    files["cmrlib.c"].write_text("import cmrlib.sub\nC = 2\n")
    after_c = study.fingerprints(stages, p)
    assert after_c["00_a"] == before["00_a"] and after_c["10_c"] != before["10_c"]  # 00_a does not run cmrlib.c
    files["cmrlib.sub.b"].write_text("B = 2\n")  # imported inside a function of cmrlib.a
    after_b = study.fingerprints(stages, p)
    assert after_b["00_a"] != after_c["00_a"] and after_b["10_c"] != after_c["10_c"]  # and downstream by the chain


@pytest.mark.parametrize("at_once", [3, 1])
def test_the_arm_stages_run_at_once_each_on_its_share_of_the_cores(tmp_path, at_once):
    folder = tmp_path / "nbs"
    body = ("import json, os, time\nfrom pathlib import Path\nt0 = time.time(); time.sleep(3)\n"
            "Path(run_dir, f'{arm}.json').write_text(json.dumps([t0, time.time(), os.environ.get('OMP_NUM_THREADS')]))")
    notebook = make_notebook(folder, "20_arms", body)
    nb = nbformat.read(notebook, as_version=4)
    nb.cells[0].source += '\narm = "ddpm"'
    nbformat.write(nb, notebook)
    stages = study.discover_stages(folder)
    assert [s.arm for s in stages] == registry.names()
    record = study.run(REPO / "params/smoke.yaml", [f"executor.arm_stages={at_once}"], runs_dir=tmp_path / "runs",
                       stages=stages, echo=lambda *_: None)
    spans = {arm: json.loads((tmp_path / f"runs/smoke/{arm}.json").read_text()) for arm in registry.names()}
    starts, ends = [s[0] for s in spans.values()], [s[1] for s in spans.values()]
    overlap = max(starts) < min(ends)
    assert overlap == (at_once > 1)
    cores = len(os.sched_getaffinity(0))
    assert {s[2] for s in spans.values()} == ({str(max(1, cores // 3))} if at_once > 1 else {os.environ.get("OMP_NUM_THREADS")})
    assert all(e["status"] == "done" for e in record["stages"].values())
    assert record["invocations"][-1]["complete"] and len(record["invocations"][-1]["stages_run"]) == 3


def test_smoke_study_runs_every_notebook_then_skips_unchanged_stages(smoke_run):
    """The smoke run of all notebooks (the README's main command with params/smoke.yaml)."""
    record, run_dir, log = smoke_run
    runs = run_dir.parent
    stages = study.discover_stages()
    assert [s.name for s in stages] == list(record["stages"])
    for stage in stages:
        entry = record["stages"][stage.name]
        assert entry["status"] == "done", stage.name
        assert entry["wall_s"] > 0 and entry["peak_rss_mb"] > 50
        # the sum over the runner, the worker and the kernel is more than the kernel alone
        assert entry["peak_rss_total_mb"] > entry["peak_rss_mb"]
        assert entry["notebook"] == stage.executed and (run_dir / stage.executed).exists()
    assert record["params_digest"] and record["versions"]["torch"]
    first = record["invocations"][0]
    assert first["complete"] and first["stages_run"] == [s.name for s in stages]
    arms = [e["wall_s"] for name, e in record["stages"].items() if "[" in name]
    others = [e["wall_s"] for name, e in record["stages"].items() if "[" not in name]
    # the three arm stages ran at once (executor.arm_stages): the run took less than its stages' sum
    assert sum(others) + max(arms) <= first["wall_s"] < sum(others) + sum(arms)
    assert all(len(e["ran_with"]) == 3 for name, e in record["stages"].items() if "[" in name)
    assert first["peak_rss_total_mb"] >= max(e["peak_rss_total_mb"] for e in record["stages"].values())
    slices = SliceSet.load(run_dir / "data")
    assert len(slices) > 0 and (run_dir / "splits.json").exists()
    for fig in ("data_examples", "data_intensity_histograms"):
        assert (run_dir / "figures" / f"{fig}.png").exists() and (run_dir / "figures" / f"{fig}.pdf").exists()
    fidelity = json.loads((run_dir / "metrics/fidelity.json").read_text())
    sets = {r["set"] for r in fidelity["metrics"]}
    assert {"ddpm", "ldm", "fm", "real", "mean image", "ddpm@2", "ldm@2", "fm@2"} <= sets  # the under-trained controls
    for axis in ("utility", "privacy"):
        record = json.loads((run_dir / f"metrics/{axis}.json").read_text())
        assert record["summary"] and record["against_training_step"], axis
    numbers = json.loads((run_dir / "paper/numbers.json").read_text())
    assert (run_dir / "paper/paper.md").read_text().count(numbers["ddpm_mask_dice"]) >= 1
    for fig in ("paper_trade_off", "paper_samples", "paper_utility", "paper_privacy", "paper_budgets", "data_examples"):
        assert (run_dir / "paper/figures" / f"{fig}.pdf").exists(), fig

    log.clear()
    study.run(REPO / "params/smoke.yaml", runs_dir=runs, echo=log.append)
    assert all("skipped" in line for line in log if line.startswith("["))
    log.clear()
    study.run(REPO / "params/smoke.yaml", runs_dir=runs, only=["00_data"], force=True, echo=log.append)
    assert any("00_data: done" in line for line in log)


def test_cli_reports_params_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_name: x\ndata:\n  sauce: phantom\n")
    assert study.main(["run", str(bad)]) == 1
    assert "unknown key 'data.sauce'" in capsys.readouterr().err


def test_a_configuration_a_later_stage_cannot_serve_fails_before_the_first_stage(tmp_path, capsys):
    from cmrlib.preflight import PreflightError

    with pytest.raises(PreflightError, match=r"40_utility: utility\.n_real_patients \[9\] exceed data\.n_train_patients"):
        study.run(REPO / "params/smoke.yaml", ["utility.n_real_patients=[9]"], runs_dir=tmp_path, echo=lambda *_: None)
    assert not (tmp_path / "smoke").exists() or not list((tmp_path / "smoke").iterdir())  # nothing ran, nothing written
    args = ["run", str(REPO / "params/smoke.yaml"), "--runs-dir", str(tmp_path), "--set", "data.n_holdout_patients=1"]
    assert study.main(args) == 1
    assert "50_privacy: the calibrated membership attack" in capsys.readouterr().err


def test_a_study_without_a_cross_domain_set_runs_to_its_paper(smoke_run):
    """The common real-data case (one data set, one domain, ``cross_domains: []``) on the smoke run's data: the same
    training patients, so every training resumes from the copied finished checkpoints; every stage runs again."""
    import shutil

    _, run_dir, _ = smoke_run
    runs = run_dir.parent
    shutil.copytree(run_dir / "checkpoints", runs / "smoke_nocross" / "checkpoints")
    log: list[str] = []
    record = study.run(REPO / "params/smoke.yaml", ["run_name=smoke_nocross", "data.cross_domains=[]"], runs_dir=runs,
                       echo=log.append)
    assert all(entry["status"] == "done" for entry in record["stages"].values())
    out = runs / "smoke_nocross"
    assert not [s for s in json.loads((out / "splits.json").read_text())["sets"] if s.startswith("cross_")]
    privacy = json.loads((out / "metrics/privacy.json").read_text())
    assert privacy["settings"]["protocols"]["reference"]["applicable"] is False
    assert all(r["reference_mia_auc"] is None and r["mia_auc"] is not None for r in privacy["summary"])
    utility = json.loads((out / "metrics/utility.json").read_text())
    assert {r["eval_set"] for r in utility["summary"]} == {"test"}
    text = (out / "paper/paper.md").read_text()
    assert "not applicable" in text and "vendor shift" not in text
