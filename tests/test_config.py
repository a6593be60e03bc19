"""Config layering, overrides and validation."""

from __future__ import annotations

import pytest
import yaml

from xbench.coercion import check_builder_options
from xbench.config import Config, ConfigError, load_config, parse_override


def test_defaults_then_recipe_then_file_then_set(tmp_path, monkeypatch):
    recipes = tmp_path / "configs"
    (recipes / "models").mkdir(parents=True)
    (recipes / "datasets").mkdir()
    (recipes / "models" / "toy.yaml").write_text("model: {name: toy, width: 8}\ntrain: {epochs: 3, lr: 0.5}\n")
    (recipes / "datasets" / "pets.yaml").write_text("dataset: {image_size: 48}\n")
    monkeypatch.setenv("XBENCH_CONFIG_DIR", str(recipes))
    user = tmp_path / "user.yaml"
    user.write_text("model: {name: toy}\ndataset: {name: pets}\ntrain: {epochs: 5}\n")
    cfg = load_config([user], ["train.lr=0.01", "model.width=16", "evaluate.methods=[gradcam, intr]"])
    assert cfg.model.name == "toy" and cfg.model.options == {"width": 16}
    assert cfg.train.epochs == 5 and cfg.train.lr == 0.01  # file over recipe, --set over file
    assert cfg.dataset.image_size == 48 and cfg.dataset.name == "pets"
    assert cfg.evaluate.methods == ["gradcam", "intr"]
    assert cfg.run_dir().as_posix() == "runs/pets/toy"


def test_dataset_recipe_found_by_format_when_name_has_none(tmp_path, monkeypatch):
    (tmp_path / "datasets").mkdir()
    (tmp_path / "models").mkdir()  # a recipes folder holds both, or xbench refuses it as a broken install
    (tmp_path / "datasets" / "folder.yaml").write_text("dataset: {image_size: 200}\n")
    monkeypatch.setenv("XBENCH_CONFIG_DIR", str(tmp_path))
    cfg = load_config([], ["dataset.name=birds525", "dataset.format=folder"])
    assert cfg.dataset.image_size == 200 and cfg.dataset.loader == "folder"


def test_unknown_keys_name_the_key_and_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key train\.epoch; valid keys of train: .*epochs"):
        load_config([], ["train.epoch=3"], recipes=False)
    with pytest.raises(ConfigError, match=r"unknown key config\.trian"):
        load_config([], ["trian.epochs=3"], recipes=False)
    with pytest.raises(ConfigError, match=r"unknown key dataset\.synth\.clases; valid keys of dataset\.synth"):
        load_config([], ["dataset.synth.clases=3"], recipes=False)


def test_values_are_type_checked_and_converted():
    cfg = load_config([], ["train.lr=1", "dataset.mean=[0.5, 0.5, 0.5]", "train.clip_grad=null",
                           "evaluate.methods=gradcam,intr"], recipes=False)
    assert isinstance(cfg.train.lr, float) and cfg.dataset.mean == (0.5, 0.5, 0.5)
    assert cfg.train.clip_grad is None and cfg.evaluate.methods == ["gradcam", "intr"]
    with pytest.raises(ConfigError, match="train.epochs must be an integer, got 'many'"):
        load_config([], ["train.epochs=many"], recipes=False)
    with pytest.raises(ConfigError, match="train.compile must be true or false"):
        load_config([], ["train.compile=3"], recipes=False)
    with pytest.raises(ConfigError, match="dataset.mean must have 3 values"):
        load_config([], ["dataset.mean=[1, 2]"], recipes=False)
    with pytest.raises(ConfigError, match="not of the form"):
        parse_override("train.epochs")


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml does not exist"):
        load_config([tmp_path / "missing.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config([bad])
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config([scalar])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config([], ["model.name=cnn", "model.backbone=resnet18", "train.epochs=2", "seed=7"], recipes=False)
    path = cfg.save(tmp_path / "run" / "config.yaml")
    data = yaml.safe_load(path.read_text())
    assert data["model"] == {"name": "cnn", "backbone": "resnet18"} and data["seed"] == 7
    again = load_config([path], recipes=False)
    assert again == cfg and isinstance(again, Config)


def test_builder_options_are_checked_against_the_signature():
    def build_toy(num_classes, width=8, depth=2):
        return None

    check_builder_options(build_toy, {"width": 4})
    with pytest.raises(ConfigError, match=r"unknown key model\.widht; valid keys of model: depth, width"):
        check_builder_options(build_toy, {"widht": 4})


def test_a_resolved_config_is_frozen_and_commands_leave_it_as_it_was(tiny_run_setup):
    import copy
    import dataclasses

    from xbench.engine.evaluate import evaluate

    base, overrides = tiny_run_setup
    cfg = load_config([], overrides + ["evaluate.methods=random@cnn", "evaluate.metrics=sparseness",
                                       "dataset.mean=[0.4,0.4,0.4]"])
    before = copy.deepcopy(cfg)
    evaluate(cfg, out=base / "frozen_config", progress=False)
    assert cfg == before and cfg.explicit == before.explicit
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dataset.mean = (0.5, 0.5, 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1
