"""Params: shipped files validate; unknown keys, wrong types and bad overrides name the key and the file."""

from pathlib import Path

import pytest

from cmrlib import params
from cmrlib.params import ParamsError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["smoke", "default"])
def test_shipped_params_validate(name):
    p = params.load(REPO / "params" / f"{name}.yaml")
    assert p.run_name == name


def test_unknown_key_names_the_key_the_file_and_the_valid_keys(tmp_path):
    path = write(tmp_path, "run_name: x\ndata:\n  image_sise: 64\n")
    with pytest.raises(ParamsError) as err:
        params.load(path)
    message = str(err.value)
    assert str(path) in message and "data.image_sise" in message and "image_size" in message


def test_wrong_type_names_the_key(tmp_path):
    path = write(tmp_path, "run_name: x\ndata:\n  n_train_patients: ten\n")
    with pytest.raises(ParamsError, match=r"data\.n_train_patients"):
        params.load(path)


def test_missing_required_key(tmp_path):
    with pytest.raises(ParamsError, match="missing key 'run_name'"):
        params.load(write(tmp_path, "seed: 1\n"))


def test_missing_file_lists_shipped_configurations(tmp_path):
    with pytest.raises(ParamsError, match="smoke.yaml"):
        params.load(tmp_path / "nope.yaml")


def test_invalid_yaml(tmp_path):
    with pytest.raises(ParamsError, match="not valid YAML"):
        params.load(write(tmp_path, "run_name: [x\n"))


def test_overrides_parse_values_as_yaml_and_are_validated(tmp_path):
    path = write(tmp_path, "run_name: x\n")
    p = params.load(path, ["data.n_train_patients=10", "data.train_domains=[A]", "seed=7"])
    assert (p.data.n_train_patients, p.data.train_domains, p.seed) == (10, ["A"], 7)
    with pytest.raises(ParamsError, match=r"--set data\.n_train_patients=-1"):
        params.load(path, ["data.n_train_patients=-1"])
    with pytest.raises(ParamsError, match="unknown key 'data.nope'"):
        params.load(path, ["data.nope=1"])
    with pytest.raises(ParamsError, match="KEY=VALUE"):
        params.load(path, ["data.n_train_patients"])


def test_digest_changes_with_any_value(tmp_path):
    path = write(tmp_path, "run_name: x\n")
    assert params.load(path).digest() == params.load(path).digest()
    assert params.load(path).digest() != params.load(path, ["data.image_size=32"]).digest()


def test_resolved_params_round_trip(tmp_path):
    p = params.load(REPO / "params" / "default.yaml", ["seed=3"])
    again = params.load(p.to_yaml(tmp_path / "resolved.yaml"))
    assert again == p
