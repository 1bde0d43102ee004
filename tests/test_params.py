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
def test_shipped_phantom_params_validate(name):
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


def test_segmenter_budgets_are_increasing_fractions_below_one_and_augment_lives_with_the_segmenter(tmp_path):
    path = write(tmp_path, "run_name: x\n")
    assert params.load(path, ["utility.segmenter_budgets=[0.2, 0.6]"]).utility.segmenter_budgets == [0.2, 0.6]
    for bad in ("[0.5, 0.25]", "[1.0]", "[0]"):
        with pytest.raises(ParamsError, match="segmenter_budgets must be increasing fractions in \\(0, 1\\)"):
            params.load(path, [f"utility.segmenter_budgets={bad}"])
    with pytest.raises(ParamsError, match="unknown key 'utility.augment'"):
        params.load(path, ["utility.augment=true"])
    assert params.load(path, ["fidelity.segmenter.augment=flips"]).fidelity.segmenter.augment == "flips"


def test_digest_changes_with_any_value(tmp_path):
    path = write(tmp_path, "run_name: x\n")
    assert params.load(path).digest() == params.load(path).digest()
    assert params.load(path).digest() != params.load(path, ["data.image_size=32"]).digest()


def test_resolved_params_round_trip(tmp_path):
    p = params.load(REPO / "params" / "default.yaml", ["seed=3"])
    again = params.load(p.to_yaml(tmp_path / "resolved.yaml"))
    assert again == p


# -- one source of defaults: every shipped file is an overlay on the default recipe ------------------------------
def _leaves(tree, prefix=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, (*prefix, key))
    else:
        yield prefix, tree


def _at(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _stated(raw, path) -> bool:
    """Whether the file states the value at ``path`` (itself or a section above it that is not a mapping)."""
    node = raw
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return not isinstance(node, dict)
        node = node[key]
    return True


def with_roots(name: str, root) -> list[str]:
    """Overrides giving every real source of a shipped params file the folder ``root``."""
    data = params._parse_yaml((REPO / "params" / f"{name}.yaml").read_text()).get("data", {})
    if "sources" in data:
        return [f"data.sources.{source}.root={root}" for source in data["sources"]]
    return [f"data.root={root}"] if data.get("source", "phantom") != "phantom" else []


@pytest.mark.parametrize("name", ["default", "smoke", "acdc", "acdc_shared", "mnms", "mnms_to_acdc", "paper", "reference_conditioning"])
def test_what_a_shipped_file_does_not_state_is_the_default_recipe(name, tmp_path):
    path = REPO / "params" / f"{name}.yaml"
    raw = params._parse_yaml(path.read_text())
    loaded = params.load(path, with_roots(name, tmp_path))
    resolved, recipe = loaded.model_dump(mode="json"), params.recipe()
    unstated = [p for p, _ in _leaves(recipe) if not _stated(raw, p) and p != ("data", "root")]
    assert unstated, "the test must compare something"
    for p in unstated:
        assert _at(resolved, p) == _at(recipe, p), f"{name}.yaml: {'.'.join(p)} differs from the default recipe"


def test_the_real_data_files_get_the_default_recipes_generators_samplers_and_evaluation(tmp_path):
    """Only the segmenters' budget and the seeds differ: patients need more steps than the phantom, and the real-data
    claims aggregate over three generator and segmenter seeds, the fewest-patient regime with its own generators."""
    recipe = params.StudyParams(run_name="x")
    budget = {"steps": 2000, "batch_size": 16, "warmup_steps": 100}
    for name in ("acdc", "mnms", "mnms_to_acdc"):
        p = params.load(REPO / "params" / f"{name}.yaml", with_roots(name, tmp_path))
        for section in ("generators", "fidelity", "utility", "privacy"):
            ours, default = getattr(p, section), getattr(recipe, section)
            if hasattr(ours, "segmenter"):
                assert ours.segmenter == default.segmenter.model_copy(update=budget), f"{name}.yaml: {section}.segmenter"
                ours, default = ours.model_copy(update={"segmenter": None}), default.model_copy(update={"segmenter": None})
            if section == "utility":
                assert ours.seeds == [0, 1, 2] and ours.generators_from == "same", f"{name}.yaml: utility.seeds"
                drop = {"seeds": None, "generators_from": None}
                ours, default = ours.model_copy(update=drop), default.model_copy(update=drop)
            if section == "generators":
                assert ours.n_seeds == 3, f"{name}.yaml: generators.n_seeds"
                ours, default = ours.model_copy(update={"n_seeds": 1}), default
            assert ours == default, f"{name}.yaml: {section} is not the default recipe's"


def test_the_default_file_is_the_recipe_and_the_smoke_run_uses_its_families():
    default, recipe = params.load(REPO / "params/default.yaml"), params.StudyParams(run_name="default")
    assert default.generators == recipe.generators and default.data == recipe.data
    smoke = params.load(REPO / "params/smoke.yaml")
    assert smoke.generators.mask_prior.family == default.generators.mask_prior.family == "flow"
    for arm in ("mask_prior", "ddpm", "ldm", "fm"):
        assert getattr(smoke.generators, arm).sample.sampler == getattr(default.generators, arm).sample.sampler


def test_a_partial_section_keeps_the_rest_of_the_recipe(tmp_path):
    path = write(tmp_path, "run_name: x\ngenerators:\n  ldm:\n    train: {batch_size: 8}\n")
    p, recipe = params.load(path), params.StudyParams(run_name="x")
    assert p.generators.ldm.train.batch_size == 8
    assert p.generators.ldm.train.steps == recipe.generators.ldm.train.steps == 2000  # not TrainParams' own 800
    assert p.generators.ddpm == recipe.generators.ddpm


def test_the_loops_defaults_agree_with_the_recipe():
    from cmrlib.training import TrainConfig

    budget, config = params.TrainParams(), TrainConfig()
    for key in ("steps", "batch_size", "lr", "weight_decay", "warmup_steps", "grad_clip", "ema_max_decay",
                "checkpoint_every"):
        assert getattr(config, key) == getattr(budget, key), key
    assert list(config.keep_fractions) == budget.keep_fractions


def test_the_resolved_params_print(capsys):
    assert params.main([str(REPO / "params/smoke.yaml"), "--set", "seed=4"]) == 0
    printed = params._parse_yaml(capsys.readouterr().out)
    assert printed["seed"] == 4 and printed["generators"]["ldm"]["train"]["lr"] == params.TrainParams().lr


def test_a_file_that_is_not_a_mapping_is_refused_with_or_without_overrides(tmp_path):
    path = write(tmp_path, "- run_name: x\n- seed: 1\n")
    for overrides in ([], ["seed=2"]):
        with pytest.raises(ParamsError, match=r"expected a mapping of keys to values at the top level, got list"):
            params.load(path, overrides)
