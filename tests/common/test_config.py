"""Config layering, strict keys, type checks and round-trip through config.yaml."""

from pathlib import Path

import pytest
import yaml

from common.config import ConfigError, load_config, parse_override, save_config

DEFAULTS = {
    "stage": "toy",
    "seed": 0,
    "device": "auto",
    "data": {"root": "data/x", "num_workers": 2},
    "train": {"max_steps": None, "batch_size": 8, "lr": 0.001, "use_amp": False},
    "model": {"arch": "vit_tiny", "layers": [1, 2]},
}


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "default.yaml").write_text(yaml.safe_dump(DEFAULTS))
    (tmp_path / "toy" / "small.yaml").write_text("base: default.yaml\ntrain:\n  batch_size: 4\n")
    (tmp_path / "toy" / "smaller.yaml").write_text("base: small\ntrain:\n  lr: 0.01\n")
    return tmp_path


def test_defaults_only(root):
    cfg = load_config("toy", config_root=root)
    assert cfg.train.batch_size == 8 and cfg.data.root == "data/x"


def test_layers_and_overrides_apply_in_order(root):
    cfg = load_config("toy", "smaller", ["train.lr=0.5", "seed=3"], config_root=root)
    assert cfg.train.batch_size == 4  # from small.yaml, the base of smaller.yaml
    assert cfg.train.lr == 0.5  # command line wins over the file
    assert cfg.seed == 3


def test_int_accepted_for_float_and_null_default_accepts_value(root):
    cfg = load_config("toy", None, ["train.lr=1", "train.max_steps=10"], config_root=root)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.max_steps == 10


def test_unknown_key_names_key_source_and_closest(root):
    with pytest.raises(ConfigError) as err:
        load_config("toy", None, ["train.batchsize=3"], config_root=root)
    msg = str(err.value)
    assert "train.batchsize" in msg and "train.batch_size" in msg and "command-line" in msg


def test_unknown_key_in_file_names_the_file(root, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: " + str(root / "toy" / "default.yaml") + "\nmodel:\n  archh: x\n")
    with pytest.raises(ConfigError) as err:
        load_config("toy", bad, config_root=root)
    assert "model.archh" in str(err.value) and str(bad) in str(err.value)
    assert "model.arch" in str(err.value)


@pytest.mark.parametrize(
    "override,expected",
    [("train.batch_size=abc", "int"), ("train.use_amp=1", "bool"), ("model.layers=3", "list")],
)
def test_wrong_type_names_key_and_expected_type(root, override, expected):
    with pytest.raises(ConfigError) as err:
        load_config("toy", None, [override], config_root=root)
    key = override.split("=")[0]
    assert key in str(err.value) and f"expects {expected}" in str(err.value)


def test_config_for_another_stage_is_refused(root, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("stage: pretrain\nseed: 1\n")
    with pytest.raises(ConfigError, match="stage 'pretrain'"):
        load_config("toy", other, config_root=root)


def test_saved_config_reloads_identically(root, tmp_path):
    cfg = load_config("toy", "smaller", ["model.layers=[3, 4]"], config_root=root)
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config("toy", tmp_path / "config.yaml", config_root=root)
    assert again == cfg


def test_missing_preset_lists_available(root):
    with pytest.raises(ConfigError, match="small"):
        load_config("toy", "nope", config_root=root)


def test_base_cycle_detected(root):
    (root / "toy" / "a.yaml").write_text("base: b.yaml\n")
    (root / "toy" / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config("toy", "a", config_root=root)


def test_parse_override_yaml_values():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("x=null") == ("x", None)
    assert parse_override("x=1e-3") == ("x", 1e-3)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("novalue")


def test_every_stage_default_has_the_shared_keys():
    from common.config import CONFIG_ROOT

    stages = ("pretrain", "distill", "distill/segment", "fewshot", "fewshot/probe")
    for stage in stages:
        path = CONFIG_ROOT / stage / "default.yaml"
        data = yaml.safe_load(path.read_text())
        assert data.get("stage") == stage, path
        for key in ("seed", "device"):
            assert key in data, f"{path} lacks {key}"
        assert {"max_steps", "batch_size"} <= set(data["train"]), path
        assert "root" in data["data"], path


def test_scientific_notation_in_files_is_a_float(root, tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"base: {root / 'toy' / 'default.yaml'}\ntrain:\n  lr: 5e-4\n")
    assert load_config("toy", exp, config_root=root).train.lr == 5e-4


def _null_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in tree.items():
        if isinstance(v, dict):
            keys.extend(_null_keys(v, f"{prefix}{k}."))
        elif v is None:
            keys.append(f"{prefix}{k}")
    return keys


@pytest.mark.parametrize(
    "stage", ["pretrain", "distill", "distill/segment", "fewshot", "fewshot/probe", "launch"]
)
def test_every_null_default_declares_its_type(stage):
    from common.config import CONFIG_ROOT, TYPES_KEY

    data = yaml.safe_load((CONFIG_ROOT / stage / "default.yaml").read_text())
    types = data.pop(TYPES_KEY)
    assert sorted(types) == sorted(_null_keys(data)), stage


def test_a_null_default_takes_only_its_declared_type():
    with pytest.raises(ConfigError, match=r"'train.max_steps'.*expects int or null.*'abc'"):
        load_config("pretrain", None, ["train.max_steps=abc"])
    with pytest.raises(ConfigError, match="expects int | list"):
        load_config("distill", None, ["data.image_size=big"])
    cfg = load_config("distill", None, ["data.image_size=[32, 48]", "attention.image_size=64"])
    assert cfg.data.image_size == [32, 48] and cfg.attention.image_size == 64
    assert load_config("pretrain", None, ["train.max_steps=null"]).train.max_steps is None
    assert "_types" not in load_config("pretrain")
