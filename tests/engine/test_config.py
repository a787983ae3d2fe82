"""Configuration: precedence, recipes, YAML, validation and the poly learning rate."""

from __future__ import annotations

import dataclasses
from pathlib import Path

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
    # Synapse trains as TransUNet's trainer_synapse: 0.5 CE + 0.5 Dice (not 0.4 / 0.6).
    assert (syn.loss, syn.loss_weights, syn.optimizer) == ("ce_dice", [0.5, 0.5], "sgd")
    assert (syn.base_lr, syn.momentum, syn.weight_decay, syn.img_size) == (
        0.01, 0.9, 1e-4, 224,
    )
    assert syn.lr_schedule == "poly" and syn.poly_power == 0.9
    acdc = resolve_config("acdc")
    assert (acdc.loss_weights, acdc.optimizer, acdc.base_lr) == ([0.3, 0.7], "adamw", 1e-4)
    drive = resolve_config("drive")
    assert (drive.loss, drive.optimizer) == ("bce_dice", "adam")
    assert resolve_config("no-such-recipe").optimizer == RECIPES["default"]["optimizer"]


def test_precedence_recipe_yaml_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("base-lr: 0.5\nbatch_size: 3\nmodel_options: {base_channels: 8}\n")
    cfg = resolve_config("synapse", load_yaml(f), {"batch_size": 7, "max_epochs": None})
    assert cfg.base_lr == 0.5  # YAML over recipe
    assert cfg.batch_size == 7  # flag over YAML
    assert cfg.max_epochs == RECIPES["synapse"]["max_epochs"]  # None = not given
    assert cfg.model_options == {"base_channels": 8}


def test_other_loss_drops_recipe_weights():
    assert resolve_config("synapse", None, {"loss": "ce"}).loss_weights is None
    kept = resolve_config("synapse", None, {"loss": "ce_dice", "loss_weights": [1, 1]})
    assert kept.loss_weights == [1, 1]


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
        ({"batch_size": 0}, "batch-size must be a whole number >= 1"),
        ({"base_lr": -1.0}, "base-lr must be a number > 0"),
        ({"img_size": 4}, "img-size must be a whole number >= 8"),
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
    assert (cfg.distill_ifd, cfg.distill_scr) == (0.1, 0.2)


def test_recipe_model_options_stay_with_the_recipe_model():
    # The phantom recipe widens its own U-Net; another model must not inherit that option.
    assert resolve_config("phantom", {}, {}).model_options == RECIPES["phantom"]["model_options"]
    assert resolve_config("phantom", {}, {"model": "transunet"}).model_options == {}
    cfg = resolve_config("phantom", {}, {"model": "unet3p", "model_options": {"base_channels": 8}})
    assert cfg.model_options == {"base_channels": 8}


@pytest.mark.parametrize(
    "name, model, weights, lr, batch, epochs",
    [
        # Beckschen/TransUNet trainer.py: loss = 0.5 * loss_ce + 0.5 * loss_dice.
        ("transunet", "transunet", [0.5, 0.5], 0.01, 24, 150),
        # HuCaoFighting/Swin-Unet trainer.py 0.4 / 0.6; README --base_lr 0.05.
        ("swin_unet", "swin_unet", [0.4, 0.6], 0.05, 24, 150),
        # SelfReg-UNet trainer_unet.py 0.4 / 0.6 + KD; train_unetKD.py defaults batch 24,
        # 150 epochs (dab81c3; the README has no such command).
        ("selfreg", "unet_selfreg", [0.4, 0.6], 0.01, 24, 150),
        # The ResUnet seed: SGD 0.02, batch 8, 200 epochs.
        ("resunet", "resunet_v1_0", [0.4, 0.6], 0.02, 8, 200),
    ],
)
def test_source_recipes_are_named_for_their_source(name, model, weights, lr, batch, epochs):
    cfg = resolve_config("default", None, {"recipe": name})
    assert cfg.recipe == name and cfg.model == model
    assert (cfg.loss, cfg.loss_weights, cfg.optimizer) == ("ce_dice", weights, "sgd")
    assert (cfg.base_lr, cfg.batch_size, cfg.max_epochs) == (lr, batch, epochs)
    assert (cfg.momentum, cfg.weight_decay, cfg.lr_schedule, cfg.img_size) == (
        0.9, 1e-4, "poly", 224,
    )
    lam = 0.015 if name == "selfreg" else 0.0  # SelfReg's lambda_x on both terms
    assert cfg.distill_ifd == cfg.distill_scr == lam


def test_synapse_default_is_transunets_recipe_with_the_plain_unet():
    syn, tu = resolve_config("synapse"), resolve_config("transunet")
    assert syn.model == "unet" and tu.model == "transunet"
    same = ("loss", "loss_weights", "optimizer", "base_lr", "batch_size", "max_epochs", "img_size")
    assert all(getattr(syn, k) == getattr(tu, k) for k in same)


def test_recipe_flag_beats_the_dataset_and_yaml_recipe(tmp_path):
    assert resolve_config("synapse").recipe == "synapse"
    assert resolve_config("synapse", None, {"recipe": "swin_unet"}).loss_weights == [0.4, 0.6]
    f = tmp_path / "c.yaml"
    f.write_text("recipe: resunet\n")
    assert resolve_config("acdc", load_yaml(f)).base_lr == 0.02  # YAML over dataset
    cfg = resolve_config("acdc", load_yaml(f), {"recipe": "transunet", "base_lr": 0.5})
    assert (cfg.recipe, cfg.loss_weights, cfg.base_lr) == ("transunet", [0.5, 0.5], 0.5)
    with pytest.raises(ConfigError, match="unknown recipe 'transunett'.*transunet"):
        resolve_config("synapse", None, {"recipe": "transunett"})


def test_paper_protocol_trains_on_everything_and_scores_as_transunet():
    plain = resolve_config("synapse", None, {"recipe": "transunet"})
    assert plain.paper_protocol is False and plain.val_fraction == 0.1
    assert plain.protocol == "strict"
    cfg = resolve_config("synapse", None, {"recipe": "transunet", "paper_protocol": True})
    assert cfg.paper_protocol is True
    assert (cfg.val_fraction, cfg.val_cases, cfg.protocol) == (0.0, None, "transunet")
    # Contradictions are one clear line each.
    with pytest.raises(ConfigError, match="drop --val-fraction"):
        resolve_config("synapse", None, {"paper_protocol": True, "val_fraction": 0.2})
    with pytest.raises(ConfigError, match="drop --protocol strict"):
        resolve_config("synapse", None, {"paper_protocol": True, "protocol": "strict"})
    with pytest.raises(ConfigError, match="paper-protocol must be true or false"):
        resolve_config("synapse", {"paper_protocol": "yes"})


def test_train_cli_parses_recipe_and_paper_protocol():
    import argparse

    from unetzoo.cli import train as train_cli

    parser = argparse.ArgumentParser()
    train_cli.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--recipe", "swin_unet", "--paper-protocol"])
    flags = train_cli.flag_values(args)
    assert flags["recipe"] == "swin_unet" and flags["paper_protocol"] is True
    assert "paper_protocol" not in train_cli.flag_values(parser.parse_args(["train"]))


def test_paper_protocol_run_selects_nothing_and_tests_the_last_epoch(
    tiny_cfg, tiny_root, monkeypatch
):
    from unetzoo.data import get_dataset
    from unetzoo.engine import trainer

    # A dataset with its own validation split: the paper protocol must ignore it too.
    ds = get_dataset("phantom", tiny_root, **tiny_cfg().dataset_options)
    cases = ds.cases
    monkeypatch.setattr(ds, "splits", lambda: ["train", "val", "test"])
    monkeypatch.setattr(ds, "cases", lambda split: cases("train")[:1] if split == "val" else cases(split))

    class Validated(Exception):
        pass

    def fake_validate(*args, **kwargs):
        raise Validated

    seen = {}

    def fake_test(checkpoint, **kwargs):
        from unetzoo.engine.checkpoint import read_checkpoint

        seen.update(epoch=read_checkpoint(checkpoint).epoch, protocol=kwargs["protocol"], file=Path(checkpoint).name,
                    select=kwargs["selection"].select)
        return {"mean_dice": 0.0, "mean_hd95": 0.0, "hd95_unit": "mm", "cases": 1}

    hooks = trainer.TrainHooks(validate=fake_validate, test=fake_test)
    with pytest.raises(Validated):  # control: without the switch the val split is used
        trainer.train(tiny_cfg(max_epochs=1), dataset=ds, hooks=hooks)
    cfg = tiny_cfg(paper_protocol=True, max_epochs=2, test=True, output=None)
    cfg = dataclasses.replace(cfg, output=str(tiny_root.parent / "paper-run"))
    summary = trainer.train(cfg, dataset=ds, hooks=hooks)
    assert summary["best_epoch"] == 2
    assert seen == {"epoch": 2, "protocol": "transunet", "file": "final.pt", "select": "final"}


def test_emcad_recipe_and_mutation_deep_supervision():
    # SLDGroup/EMCAD train_synapse.py: --supervision mutation, AdamW 1e-4, batch 6, 300
    # epochs, 0.3 CE + 0.7 Dice, no lr decay.
    cfg = resolve_config("synapse", None, {"recipe": "emcad"})
    assert (cfg.model, cfg.deep_supervision, cfg.deep_supervision_loss) == (
        "emcad", True, "mutation",
    )
    assert (cfg.optimizer, cfg.base_lr, cfg.batch_size, cfg.max_epochs) == (
        "adamw", 1e-4, 6, 300,
    )
    assert (cfg.loss_weights, cfg.lr_schedule) == ([0.3, 0.7], "constant")
    assert resolve_config("synapse").deep_supervision_loss == "auto"
    with pytest.raises(ConfigError, match="deep-supervision-loss 'powerset'"):
        resolve_config("synapse", None, {"deep_supervision_loss": "powerset"})


def test_trainer_combines_heads_with_the_configured_deep_supervision_loss():
    import torch

    from unetzoo.losses import build_loss, mutation_loss, supervised_loss

    def _supervised_loss(loss, outs, y, cfg):  # as the trainer calls it
        return supervised_loss(loss, outs, y, cfg.deep_supervision_loss,
                               cfg.deep_supervision_weights)

    loss = build_loss("ce_dice", 3)
    outs = [torch.randn(1, 3, 8, 8) for _ in range(4)]
    y = torch.randint(0, 3, (1, 8, 8))
    cfg = resolve_config("synapse", None, {"deep_supervision_loss": "mutation"})
    total, _ = _supervised_loss(loss, outs, y, cfg)
    assert torch.allclose(total, mutation_loss(loss, outs, y)[0])
    weighted, _ = _supervised_loss(
        loss, outs, y, resolve_config("synapse", None, {"deep_supervision_loss": "weighted"}))
    assert not torch.allclose(total, weighted)
    summed, _ = _supervised_loss(
        loss, outs, y, resolve_config("synapse", None, {"deep_supervision_loss": "sum"}))
    assert torch.allclose(summed, 4 * weighted)  # 4 equal heads: the sum is 4x the mean


def test_resolved_config_is_a_frozen_typed_object(tmp_path):
    from collections.abc import Mapping
    from types import MappingProxyType

    import yaml

    from unetzoo.engine.config import KEYS, DistillConfig, TrainConfig, defaults, dump_yaml

    cfg = resolve_config("phantom", None, {"distill_ifd": 0.5})
    assert isinstance(cfg, TrainConfig) and not isinstance(cfg, Mapping)  # attributes only
    assert [f.name for f in dataclasses.fields(cfg)] == list(KEYS) == list(defaults())
    assert cfg.img_size == 128
    with pytest.raises(TypeError):
        cfg["img_size"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.img_size = 64  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.model_options["base_channels"] = 4  # read-only view
    assert cfg.distill == DistillConfig(ifd=0.5, scr=0.0)
    assert resolve_config("phantom").distill is None
    # to_dict holds plain values only (checkpoints are read with weights_only=True) and
    # round-trips; config.yaml is that dict.
    plain = cfg.to_dict()
    assert type(plain["model_options"]) is dict and not isinstance(plain["model_options"],
                                                                   MappingProxyType)
    assert TrainConfig.from_dict(plain) == cfg
    dump_yaml(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == plain
    changed = dataclasses.replace(cfg, output="elsewhere")
    assert changed.output == "elsewhere" and cfg.output is None
    with pytest.raises(ConfigError, match="unknown configuration key"):
        TrainConfig.from_dict({**plain, "img_szie": 3})
    with pytest.raises(ConfigError, match="img-size"):
        TrainConfig.from_dict({**plain, "img_size": 0})


def _train_parser(cls=None):
    import argparse

    from unetzoo.cli.train import add_config_flags

    parser = argparse.ArgumentParser()
    add_config_flags(parser, cls)
    return parser


def test_every_field_is_one_flag_and_one_yaml_key(tmp_path):
    from unetzoo.cli.main import build_parser
    from unetzoo.engine.config import KEYS, config_fields

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    by_dest: dict[str, list] = {}
    for action in train._actions:
        by_dest.setdefault(action.dest, []).append(action)
    for f in config_fields():
        actions = by_dest.get(f.name, [])
        assert len(actions) == 1, f"{f.name}: {len(actions)} flags"
        assert actions[0].option_strings[-1] == f.flag and actions[0].default is None
        # the YAML key is the field's name, either spelling
        (tmp_path / "c.yaml").write_text(f"{f.label}: null\n")
        assert load_yaml(tmp_path / "c.yaml") == {f.name: None}
    flags = {a.dest for a in train._actions if a.option_strings}
    cli_only = {"help", "config", "iterations", "time_budget", "overwrite", "resume",
                "distill", "encoder_weights"}
    assert flags == set(KEYS) | cli_only  # no hand-written flag for a configuration key


def test_adding_a_field_adds_its_flag_check_and_default():
    from unetzoo.cli.train import flag_values
    from unetzoo.engine.config import TrainConfig, config_fields, option

    @dataclasses.dataclass(frozen=True)
    class Wider(TrainConfig):
        warmup_steps: int = option(5, "linear warm-up", lo=0)

    assert config_fields(Wider)[-1].flag == "--warmup-steps"
    args = _train_parser(Wider).parse_args(["--warmup-steps", "7", "--no-test"])
    assert flag_values(args, Wider) == {"warmup_steps": 7, "test": False}
    assert flag_values(_train_parser(Wider).parse_args([]), Wider) == {}


@pytest.mark.parametrize("key, value, choices", [
    ("optimizer", "lion", "sgd, adam, adamw"),
    ("lr_schedule", "cosine", "poly, constant"),
    ("protocol", "loose", "strict, transunet"),
    ("deep_supervision_loss", "powerset", "auto, sum, weighted, mutation"),
    ("select", "worst", "final, best"),
    ("precision", "fp16", "fp32, bf16"),
    ("lr_batch_rule", "batch32", "batch24 or leave it unset"),
])
def test_a_bad_choice_is_one_line_listing_the_choices(key, value, choices, capsys, tmp_path):
    from unetzoo.cli.main import main

    with pytest.raises(ConfigError) as info:
        resolve_config("synapse", None, {key: value})
    assert str(info.value) == (f"unknown {key.replace('_', '-')} {value!r}; choose one of "
                               f"{choices}")
    # the same line from the command line, before any dataset is read or folder made
    out = tmp_path / "run"
    assert main(["train", f"--{key.replace('_', '-')}", value, "--output", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {info.value}"
    assert not out.exists()


def test_choices_are_read_case_blind_and_stored_lower_case():
    cfg = resolve_config("synapse", None, {"optimizer": "AdamW", "select": "BEST"})
    assert (cfg.optimizer, cfg.select) == ("adamw", "best")


@pytest.mark.parametrize("flags, line", [
    ({"seed": -1}, "seed must be a whole number in 0..4294967295, got -1"),
    ({"momentum": 1.0}, "momentum must be a number in [0, 1), got 1.0"),
    ({"base_lr": 0}, "base-lr must be a number > 0, got 0"),
    ({"max_epochs": 2.5}, "max-epochs must be a whole number >= 1, got 2.5"),
    ({"num_workers": True}, "num-workers must be a whole number >= 0, got True"),
    ({"fold": 5}, "fold must be a whole number in 0..4, got 5"),
    ({"amp": "yes"}, "amp must be true or false, got 'yes'"),
    ({"model_options": 5}, "model_options must be a mapping of option: value (e.g. "
                           "{base_channels: 16}), got 5"),
])
def test_ranges_come_from_the_field(flags, line):
    with pytest.raises(ConfigError) as info:
        resolve_config("synapse", None, flags)
    assert str(info.value) == line


def test_whole_floats_and_yaml_text_numbers_are_normalised(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("base_lr: 1e-3\nmax_epochs: 3.0\n")  # YAML 1.1 reads 1e-3 as text
    cfg = resolve_config("synapse", load_yaml(f))
    assert cfg.base_lr == 1e-3 and cfg.max_epochs == 3 and type(cfg.max_epochs) is int


def test_new_flags_reach_the_config():
    from unetzoo.cli.train import flag_values

    args = _train_parser().parse_args([
        "--max-iterations", "50", "--poly-power", "1.0", "--no-channels-last",
        "--augment-option", "p_rotate=0.5"])
    cfg = resolve_config("synapse", None, flag_values(args))
    assert (cfg.max_iterations, cfg.poly_power, cfg.channels_last) == (50, 1.0, False)
    assert cfg.augment_options == {"p_rotate": 0.5}


@pytest.mark.parametrize(
    "recipe, batch, expected",
    [
        # Swin-Unet train.py (1c8b3e8), SelfReg train_unetKD.py: if batch_size != 24 and
        # batch_size % 6 == 0: base_lr *= batch_size / 24.
        ("swin_unet", 24, 0.05), ("swin_unet", 12, 0.025), ("swin_unet", 48, 0.1),
        ("swin_unet", 8, 0.05), ("selfreg", 6, 0.0025), ("selfreg", 32, 0.01),
        # TransUNet's train.py has no such rule.
        ("transunet", 12, 0.01),
    ],
)
def test_lr_batch_rule_where_the_sources_apply_it(recipe, batch, expected):
    from unetzoo.engine.config import effective_base_lr
    from unetzoo.engine.trainer import build_optimizer

    cfg = resolve_config("synapse", None, {"recipe": recipe, "batch_size": batch})
    assert effective_base_lr(cfg) == pytest.approx(expected)
    assert cfg.base_lr == RECIPES[recipe]["base_lr"]  # the stored value is the asked one
    import torch

    opt = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    assert opt.param_groups[0]["lr"] == pytest.approx(expected)
    off = resolve_config("synapse", None, {"recipe": "swin_unet", "batch_size": 12,
                                           "lr_batch_rule": None})
    assert effective_base_lr(off) == pytest.approx(0.025)  # None in flags = not given
    with pytest.raises(ConfigError, match="lr-batch-rule"):
        resolve_config("synapse", None, {"lr_batch_rule": "batch32"})


def test_selfreg_recipe_sweeps_the_official_test_epochs_on_validation():
    # test_unet.py: for epoch in reversed(range(81, 150)): if (epoch + 1) % 2 == 0 ->
    # epoch_81.pth .. epoch_149.pth (0-based), i.e. 1-based epochs 82, 84, ..., 150.
    cfg = resolve_config("synapse", None, {"recipe": "selfreg"})
    official = sorted(e + 1 for e in range(81, 150) if (e + 1) % 2 == 0)
    ours = [e for e in range(1, cfg.max_epochs + 1)
            if e == cfg.max_epochs or (e % cfg.eval_interval == 0
                                          and e >= cfg.eval_from_epoch)]
    assert ours == official and len(ours) == 35
    assert cfg.val_fraction > 0  # on a validation split carved from the training cases
    with pytest.raises(ConfigError, match="eval-from-epoch"):
        resolve_config("synapse", None, {"eval_from_epoch": 0})


@pytest.mark.parametrize("model, mode", [("unetpp", "sum"), ("unet3p", "sum"),
                                         ("emcad", "mutation"), ("unet", "weighted")])
def test_auto_deep_supervision_loss_follows_the_models_source(model, mode):
    from unetzoo.losses import source_deep_supervision_loss
    from unetzoo.models import get_entry

    assert source_deep_supervision_loss(get_entry(model).builder) == mode


def test_train_flags_reach_the_new_config_keys():
    from unetzoo.cli.main import build_parser
    from unetzoo.cli.train import flag_values

    args = build_parser().parse_args([
        "train", "--lr-batch-rule", "batch24", "--eval-from-epoch", "82",
        "--deep-supervision-loss", "sum",
    ])
    flags = flag_values(args)
    assert (flags["lr_batch_rule"], flags["eval_from_epoch"], flags["deep_supervision_loss"]) == (
        "batch24", 82, "sum")
    cfg = resolve_config("synapse", None, flags)
    assert (cfg.lr_batch_rule, cfg.eval_from_epoch, cfg.deep_supervision_loss) == (
        "batch24", 82, "sum")
