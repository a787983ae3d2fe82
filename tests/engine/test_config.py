"""Configuration: precedence, recipes, YAML, validation and the poly learning rate."""

from __future__ import annotations

import pytest

from unetzoo.engine.config import RECIPES, load_yaml, poly_lr, resolve_config
from unetzoo.errors import ConfigError


def test_poly_lr_values():
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 99, 100) == pytest.approx(0.01 * 0.01**0.9)
    assert poly_lr(0.01, 100, 100) == 0.0
    assert poly_lr(0.02, 10, 40, power=2.0) == pytest.approx(0.02 * 0.75**2)


def test_recipes_hold_the_published_settings():
    syn = resolve_config("synapse")
    assert (syn["loss"], syn["loss_weights"], syn["optimizer"]) == ("ce_dice", [0.4, 0.6], "sgd")
    assert (syn["base_lr"], syn["momentum"], syn["weight_decay"], syn["img_size"]) == (
        0.01, 0.9, 1e-4, 224,
    )
    assert syn["lr_schedule"] == "poly" and syn["poly_power"] == 0.9
    acdc = resolve_config("acdc")
    assert (acdc["loss_weights"], acdc["optimizer"], acdc["base_lr"]) == ([0.3, 0.7], "adamw", 1e-4)
    drive = resolve_config("drive")
    assert (drive["loss"], drive["optimizer"]) == ("bce_dice", "adam")
    assert resolve_config("no-such-recipe")["optimizer"] == RECIPES["default"]["optimizer"]


def test_precedence_recipe_yaml_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("base-lr: 0.5\nbatch_size: 3\nmodel_options: {base_channels: 8}\n")
    cfg = resolve_config("synapse", load_yaml(f), {"batch_size": 7, "max_epochs": None})
    assert cfg["base_lr"] == 0.5  # YAML over recipe
    assert cfg["batch_size"] == 7  # flag over YAML
    assert cfg["max_epochs"] == RECIPES["synapse"]["max_epochs"]  # None = not given
    assert cfg["model_options"] == {"base_channels": 8}


def test_other_loss_drops_recipe_weights():
    assert resolve_config("synapse", None, {"loss": "ce"})["loss_weights"] is None
    kept = resolve_config("synapse", None, {"loss": "ce_dice", "loss_weights": [1, 1]})
    assert kept["loss_weights"] == [1, 1]


@pytest.mark.parametrize(
    "text, words",
    [
        ("learning_rate: 1\n", "unknown key"),
        ("- a\n- b\n", "mapping"),
        ("a: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_yaml(tmp_path, text, words):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_yaml(f)


def test_missing_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_yaml(tmp_path / "none.yaml")


@pytest.mark.parametrize(
    "flags, words",
    [
        ({"optimizer": "rmsprop"}, "unknown optimizer"),
        ({"batch_size": 0}, "batch-size must be a positive"),
        ({"base_lr": -1.0}, "base-lr must be a positive"),
        ({"img_size": 4}, "img-size must be at least"),
        ({"val_fraction": 1.0}, "val-fraction"),
        ({"protocol": "loose"}, "unknown protocol"),
        ({"distill_ifd": -0.1}, "distill-ifd"),
    ],
)
def test_bad_values_are_one_line(flags, words):
    with pytest.raises(ConfigError, match=words) as info:
        resolve_config("synapse", None, flags)
    assert "\n" not in str(info.value)


def test_yaml_distill_shorthand(tmp_path):
    f = tmp_path / "d.yaml"
    f.write_text("distill: 0.1\ndistill-scr: 0.2\n")
    cfg = resolve_config("phantom", load_yaml(f))
    assert (cfg["distill_ifd"], cfg["distill_scr"]) == (0.1, 0.2)


def test_recipe_model_options_stay_with_the_recipe_model():
    # The phantom recipe widens its own U-Net; another model must not inherit that option.
    assert resolve_config("phantom", {}, {})["model_options"] == RECIPES["phantom"]["model_options"]
    assert resolve_config("phantom", {}, {"model": "transunet"})["model_options"] == {}
    cfg = resolve_config("phantom", {}, {"model": "unet3p", "model_options": {"base_channels": 8}})
    assert cfg["model_options"] == {"base_channels": 8}
