"""Bad inputs that used to lose work or give a wrong answer silently: each test reproduces one defect of the
catalogue in docs/bad_inputs.md (the data cache, run names, duplicated cases, NaN labels, half-written exports,
skipping of unsound stages, raw tracebacks at the edges, paths that escape the data root, duplicate YAML keys).
The empty loss log of a killed run is tested with the training loop (tests/test_training.py)."""

from __future__ import annotations

import json
import os
import shutil
import stat

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cmrlib import __main__ as cli
from cmrlib import export, params as P, study
from cmrlib.data import BadCaseError, DuplicateCaseError, LayoutError, build_slices, prepare
from cmrlib.paths import RunPaths, atomic_path

from conftest import REPO
from test_export import fake_run
from test_loaders import acdc_folder, heart, image_of, make_params, nifti_folder, save_nifti, affine, SA_DIRECTIONS
from test_study import make_notebook


def single_domain(root, **data):
    return make_params("nifti", root, train_domains=["A"], n_train_patients=1, n_holdout_patients=1,
                       n_val_patients=0, n_test_patients=1, cross_domains=[], **data)


# ---------------------------------------------------------------- the data cache


def test_data_cache_follows_the_source_files_and_force_rebuilds(tmp_path):
    root = nifti_folder(tmp_path / "root", n=3)
    paths = RunPaths(tmp_path / "run")
    params = single_domain(root)
    first = prepare(params, paths)
    assert len(prepare(params, paths)) == len(first)  # unchanged: reused

    # an edited label file: LV-only slices of p0 ED now lose their RV; the set must be rebuilt, not reused
    lab = root / "lab" / "p0_ED.nii.gz"
    img = nib.load(str(lab))
    data = np.asarray(img.dataobj).copy()
    data[:, :, :2] = 0  # two slices without labels: dropped by preprocessing
    nib.save(nib.Nifti1Image(data, img.affine), str(lab))
    edited = prepare(params, paths)
    assert len(edited) == len(first) - 2

    # a deleted slices.npz is rebuilt, not reported as missing forever
    (paths.data / "slices.npz").unlink()
    assert len(prepare(params, paths)) == len(edited)

    # force rebuilds although nothing changed
    before = (paths.data / "slices.npz").stat().st_mtime_ns
    prepare(params, paths, force=True)
    assert (paths.data / "slices.npz").stat().st_mtime_ns != before


def test_the_runner_passes_force_to_the_notebooks_that_declare_it(tmp_path):
    folder = tmp_path / "nbs"
    nb = make_notebook(folder, "00_takes_force", "open(run_dir + '/force.txt', 'w').write(str(force))")
    source = json.loads(nb.read_text())
    source["cells"][0]["source"] += "\nforce = False"
    nb.write_text(json.dumps(source))
    make_notebook(folder, "10_plain", "x = 1")  # no force declared: not passed (papermill would warn)
    run = dict(runs_dir=tmp_path / "runs", stages=study.discover_stages(folder), echo=lambda *_: None)
    study.run(REPO / "params/smoke.yaml", **run)
    assert (tmp_path / "runs/smoke/force.txt").read_text() == "False"
    study.run(REPO / "params/smoke.yaml", force=True, **run)
    assert (tmp_path / "runs/smoke/force.txt").read_text() == "True"
    executed = json.loads((tmp_path / "runs/smoke/notebooks/10_plain.ipynb").read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert "force =" not in "".join(injected[0]["source"])


# ---------------------------------------------------------------- run names


@pytest.mark.parametrize("name", ["..", ".", ".hidden"])
def test_run_names_cannot_leave_the_runs_folder(name):
    with pytest.raises(P.ParamsError, match="run_name"):
        P.load(REPO / "params/smoke.yaml", [f"run_name={name}"])
    if name in (".", ".."):
        with pytest.raises(ValueError, match="inside"):
            RunPaths.for_run(name)


# ---------------------------------------------------------------- duplicated cases


def test_a_repeated_case_list_row_names_the_file_and_lines(tmp_path):
    root = nifti_folder(tmp_path, n=2)
    table = pd.read_csv(root / "cases.csv")
    pd.concat([table, table.iloc[[1]]]).to_csv(root / "cases.csv", index=False)
    with pytest.raises(DuplicateCaseError, match=r"cases\.csv: line 6 repeats patient p0 \(ES\) of line 3"):
        build_slices(make_params("nifti", root))


def test_an_acdc_patient_at_two_depths_is_refused(tmp_path):
    acdc_folder(tmp_path, patients=("patient001",))
    shutil.copytree(tmp_path / "training" / "patient001", tmp_path / "patient001")
    with pytest.raises(DuplicateCaseError, match=r"patient acdc_patient001 \(ED\) is given twice") as err:
        build_slices(make_params("acdc", tmp_path))
    assert str(tmp_path / "patient001") in str(err.value) and str(tmp_path / "training" / "patient001") in str(err.value)


def test_an_mnms_subject_listed_twice_is_refused(tmp_path):
    aff = affine((1.25, 1.25, 9.0), SA_DIRECTIONS)
    for phase, r in (("ED", 6.0), ("ES", 4.0)):
        mask = heart(0, r)
        save_nifti(tmp_path / "images" / f"B5B5B5_sa_{phase}.nii.gz", image_of(mask), aff)
        save_nifti(tmp_path / "labels" / f"B5B5B5_sa_{phase}_gt.nii.gz", mask.astype(np.uint8), aff)
    def manifest(*rows):
        pd.DataFrame(rows, columns=["subject", "phase", "vendor"]).to_csv(tmp_path / "manifest.csv", index=False)

    manifest(("B5B5B5", "ED", "A"), ("B5B5B5", "ES", "A"), ("B5B5B5", "ED", "B"))
    with pytest.raises(DuplicateCaseError, match=r"manifest\.csv: line 4 lists subject B5B5B5 ED again \(first on line 2\)"):
        build_slices(make_params("mnms", tmp_path))
    manifest(("B5B5B5", "ED", "A"), ("B5B5B5", "ES", "B"))  # a row per phase is the layout; two vendors are not
    with pytest.raises(DuplicateCaseError, match=r"line 3 gives subject B5B5B5 vendor 'B', line 2 vendor 'A'"):
        build_slices(make_params("mnms", tmp_path))
    manifest(("B5B5B5", "ED", "A"), ("B5B5B5", "ES", "A"))
    assert len(build_slices(make_params("mnms", tmp_path))) > 0


# ---------------------------------------------------------------- NaN labels


def test_nan_in_a_float_label_map_is_a_bad_case_that_can_be_skipped(tmp_path):
    root = nifti_folder(tmp_path / "root", n=3)
    lab = root / "lab" / "p1_ED.nii.gz"
    img = nib.load(str(lab))
    data = np.asarray(img.dataobj).astype(np.float32)
    data[3, 3, 0] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(lab))
    with pytest.raises(BadCaseError, match=r"p1_ED\.nii\.gz.*label map contains NaN"):
        build_slices(make_params("nifti", root))
    slices = build_slices(make_params("nifti", root, on_bad_case="skip"), tmp_path / "report")
    assert ("nifti_p1", "ED") not in set(zip(slices.meta["patient"], slices.meta["phase"]))
    assert pd.read_csv(tmp_path / "report/skipped_cases.csv")["reason"].str.contains("NaN").all()


# ---------------------------------------------------------------- half-written outputs


def test_an_export_that_fails_leaves_nothing_and_a_rerun_works(tmp_path):
    paths = fake_run(tmp_path)
    table = paths.samples / "ddpm" / "samples.csv"
    good = table.read_text()
    table.write_text(good.splitlines()[0] + "\n")  # the samples file without its row
    out = tmp_path / "out"
    with pytest.raises(KeyError, match=r"no row for synthetic\.npz"):
        export.export(paths.root, "ddpm", "nifti", out)
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))
    table.write_text(good)
    export.export(paths.root, "ddpm", "nifti", out)
    assert (out / "data_card.json").is_file() and len(list((out / "images").glob("*.nii.gz"))) == 5


def test_a_refused_invocation_leaves_the_run_params_alone(tmp_path):
    runs = tmp_path / "runs"
    folder = tmp_path / "nbs"
    make_notebook(folder, "00_ok", "x = 1")
    study.run(REPO / "params/smoke.yaml", runs_dir=runs, stages=study.discover_stages(folder), echo=lambda *_: None)
    before = (runs / "smoke/params.yaml").read_text()
    with pytest.raises(study.StageFailed, match="kernel 'no-such-kernel' is not installed"):
        study.run(REPO / "params/smoke.yaml", ["data.n_train_patients=5"], runs_dir=runs, kernel="no-such-kernel",
                  stages=study.discover_stages(folder), echo=lambda *_: None)
    assert (runs / "smoke/params.yaml").read_text() == before


def test_written_files_are_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("{}")
        out = export.export(fake_run(tmp_path).root, "ddpm", "npz", tmp_path / "out")
    finally:
        os.umask(old)
    for path in (tmp_path / "a.json", out / "data_card.json", out / "ddpm_synthetic.npz"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE(out.stat().st_mode) == 0o755


# ---------------------------------------------------------------- skipping trusts soundness, not existence


def test_a_stage_whose_output_does_not_load_is_run_again(tmp_path):
    folder = tmp_path / "nbs"
    make_notebook(folder, "00_ok", "x = 1")
    log: list[str] = []
    run = dict(runs_dir=tmp_path / "runs", stages=study.discover_stages(folder), echo=log.append)
    study.run(REPO / "params/smoke.yaml", **run)
    executed = tmp_path / "runs/smoke/notebooks/00_ok.ipynb"
    executed.write_text(executed.read_text()[:100])  # truncated
    log.clear()
    study.run(REPO / "params/smoke.yaml", **run)
    assert any("re-running, as its outputs are not sound: notebooks/00_ok.ipynb does not load" in line for line in log)
    assert any("00_ok: done" in line for line in log)


def test_output_problem_sees_truncated_checkpoints_and_arrays(tmp_path):
    import torch

    from cmrlib.training import TrainConfig, train
    from test_training import TinyDenoiser

    x = torch.randn(4, 1, 8, 8)
    result = train(TinyDenoiser(), x, torch.zeros(4, 2, 8, 8), TrainConfig(steps=2, batch_size=2), tmp_path / "t",
                   progress=False)
    assert study.output_problem(result.last) is None
    blob = result.last.read_bytes()
    result.last.write_bytes(blob[: len(blob) // 2])
    assert "does not load" in study.output_problem(result.last)
    np.savez_compressed(tmp_path / "a.npz", images=np.zeros((4, 8, 8)))
    assert study.output_problem(tmp_path / "a.npz") is None
    raw = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "a.npz").write_bytes(raw[:-30])
    assert "does not load" in study.output_problem(tmp_path / "a.npz")
    assert study.output_problem(tmp_path / "missing.json") == "missing"


# ---------------------------------------------------------------- one clear line at the edges


def test_cli_errors_are_one_line(tmp_path, capsys):
    paths = fake_run(tmp_path)
    (paths.checkpoints / "ddpm").mkdir(parents=True)
    (paths.checkpoints / "ddpm" / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    assert cli.main(["generate", str(paths.root), "--arm", "ddpm", "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "last.pt is corrupt or truncated" in err and "Traceback" not in err
    (tmp_path / "a_file").write_text("")
    assert cli.main(["export", str(paths.root), "--arm", "ddpm", "--format", "npz", "--out", str(tmp_path / "a_file")]) == 2
    assert "is a file: give a folder" in capsys.readouterr().err


def test_a_bad_set_value_names_the_override():
    with pytest.raises(P.ParamsError, match=r"--set 'data\.phases=\[ED': the value is not valid YAML"):
        P.load(REPO / "params/smoke.yaml", ["data.phases=[ED"])


def test_ctrl_c_is_one_line_and_the_stage_is_recorded_as_interrupted(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "nbs"
    make_notebook(folder, "00_ok", "x = 1")
    discover = study.discover_stages
    monkeypatch.setattr(study, "discover_stages", lambda: discover(folder))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "_start", interrupted)
    assert study.main(["run", str(REPO / "params/smoke.yaml"), "--runs-dir", str(tmp_path / "runs")]) == 130
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "interrupted in stage 00_ok" in err and "again to resume" in err
    record = json.loads((tmp_path / "runs/smoke/run.json").read_text())
    assert record["stages"]["00_ok"]["status"] == "interrupted"


# ---------------------------------------------------------------- paths and keys


def test_a_case_list_path_that_escapes_the_root_is_refused(tmp_path):
    root = nifti_folder(tmp_path / "root", n=2)
    table = pd.read_csv(root / "cases.csv")
    table.loc[1, "label"] = "../../../etc/passwd"
    table.to_csv(root / "cases.csv", index=False)
    with pytest.raises(LayoutError, match=r"cases\.csv: line 3: label '\.\./\.\./\.\./etc/passwd' leads outside data\.root"):
        build_slices(make_params("nifti", root))


def test_duplicate_yaml_keys_are_an_error(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("run_name: x\ndata:\n  n_train_patients: 4\n  n_train_patients: 6\n")
    with pytest.raises(P.ParamsError, match=r"duplicate key 'n_train_patients' \(first on line 3, again on line 4\)"):
        P.load(path)


def test_an_unreadable_loss_log_names_the_file(tmp_path):
    import torch

    from cmrlib.training import CheckpointError, TrainConfig, train
    from test_training import TinyDenoiser

    x, cond, config = torch.randn(4, 1, 8, 8), torch.zeros(4, 2, 8, 8), TrainConfig(steps=2, batch_size=2)
    train(TinyDenoiser(), x, cond, config, tmp_path, progress=False)
    (tmp_path / "loss.csv").write_text('step,loss\n1,"unclosed\n')
    with pytest.raises(CheckpointError, match=r"loss\.csv is not a readable log .*delete it"):
        train(TinyDenoiser(), x, cond, config, tmp_path, progress=False)
