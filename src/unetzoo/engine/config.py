"""Training configuration: one typed table of options, per-dataset recipes, YAML files, flags.

:class:`TrainConfig` is the single source: each field's type (``Literal`` for a choice),
and its :class:`Option` metadata (the default before the recipe, help, flag, range) give
the defaults (:func:`defaults`), the validation (:func:`check_value`), the YAML keys (the
field names, ``-`` or ``_``) and the ``unetzoo train`` flags (:func:`config_fields`, read
by :mod:`unetzoo.cli.train`). Adding a field adds its key, its check and its flag.

Precedence, lowest first: the defaults, the recipe (:data:`RECIPES`: the one named by
``--recipe`` / ``recipe:``, else the dataset's ``SegDataset.recipe``), a YAML file
(``--config``), then flags given on the command line. ``--paper-protocol`` then fixes the
evaluation protocol of the published tables (:func:`apply_paper_protocol`).

:func:`resolve_config` returns a frozen :class:`TrainConfig`; a run changes it only with
``dataclasses.replace``. Its :meth:`TrainConfig.to_dict` (plain values) is what the run
folder stores as ``config.yaml`` and what every checkpoint carries under ``"config"``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from unetzoo.data.folds import N_FOLDS
from unetzoo.errors import ConfigError

OptimizerName = Literal["sgd", "adam", "adamw"]
LrSchedule = Literal["poly", "constant"]  # "poly": per iteration
Protocol = Literal["strict", "transunet"]  # the empty-mask metric protocol
# "auto": the model's source (sum: UNet++, UNet 3+; mutation: EMCAD; else weighted), then
# unetzoo.losses.DEEP_SUPERVISION_LOSSES
DeepSupervisionLoss = Literal["auto", "sum", "weighted", "mutation"]
LrBatchRule = Literal["batch24"]  # base_lr * batch / 24 (Swin-Unet, SelfReg scripts)
Selection = Literal["final", "best"]  # the checkpoint a run scores (engine/selection.py)
Precision = Literal["fp32", "bf16"]

SELECTIONS: tuple[str, ...] = get_args(Selection)


@dataclass(frozen=True)
class Option:
    """How one :class:`TrainConfig` field is set, beside its type.

    Attributes:
        default: the value before the recipe; ``None`` on a field the recipe fills means
            "the recipe decides".
        help: the flag's help text.
        flag: the flag (default ``--field-name``; ``--no-field-name`` for a bool that
            defaults to true); ``short`` an extra spelling (``-o``).
        lo, hi: the range of a number; ``open_lo`` / ``open_hi`` exclude the bound.
    """

    default: Any = None
    help: str | None = None
    flag: str | None = None
    short: str | None = None
    metavar: str | None = None
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False


def option(default: Any = None, help: str | None = None, **kw: Any) -> Any:
    """A :class:`TrainConfig` field described by an :class:`Option` (``kw``: its other
    attributes). The field has no dataclass default: a resolved configuration names
    every value; ``default`` is where :func:`resolve_config` starts."""
    return dataclasses.field(metadata={"option": Option(default, help, **kw)})


#: The training settings of the published code, named for their source. Each one is what
#: that repository's own Synapse training script does (checked line by line; docs/unets.md
#: "Recipes" gives the files); ``--recipe NAME`` picks one, else the dataset's recipe.
SOURCE_RECIPES: dict[str, dict[str, Any]] = {
    # Beckschen/TransUNet train.py + trainer.py (trainer_synapse): 0.5 CE + 0.5 Dice, SGD
    # 0.01, momentum 0.9, wd 1e-4, poly 0.9 per iteration, batch 24, 150 epochs, 224 px.
    "transunet": {
        "model": "transunet",
        "loss": "ce_dice",
        "loss_weights": [0.5, 0.5],
        "optimizer": "sgd",
        "base_lr": 0.01,
        "weight_decay": 1e-4,
        "img_size": 224,
        "batch_size": 24,
        "max_epochs": 150,
        "eval_interval": 10,
    },
    # HuCaoFighting/Swin-Unet at commit 1c8b3e8 (the 2021 code the paper ran): trainer.py
    # (0.4 CE + 0.6 Dice, SGD, poly, last epoch saved), train.py (lr * batch / 24 when the
    # batch is a multiple of 6 other than 24) and the README command (--base_lr 0.05
    # --batch_size 24 --max_epochs 150 --img_size 224).
    "swin_unet": {
        "model": "swin_unet",
        "loss": "ce_dice",
        "loss_weights": [0.4, 0.6],
        "optimizer": "sgd",
        "base_lr": 0.05,
        "weight_decay": 1e-4,
        "img_size": 224,
        "batch_size": 24,
        "max_epochs": 150,
        "eval_interval": 10,
        "lr_batch_rule": "batch24",
    },
    # ChongQingNoSubway/SelfReg-UNet (commit dab81c3) src/train_synase/train_unetKD.py
    # defaults + trainer_unet.py: UNet_hd (bilinear), 0.4 CE + 0.6 Dice + KD loss with
    # lambda_x 0.015, SGD 0.01 (lr * batch / 24 rule), poly, batch 24, 150 epochs, 224 px.
    # test_unet.py scores the checkpoints of epochs 82, 84, ..., 150 (35) on the test set;
    # unetzoo validates those epochs on a validation split instead (never the test set).
    "selfreg": {
        "model": "unet_selfreg",
        "loss": "ce_dice",
        "loss_weights": [0.4, 0.6],
        "optimizer": "sgd",
        "base_lr": 0.01,
        "weight_decay": 1e-4,
        "img_size": 224,
        "batch_size": 24,
        "max_epochs": 150,
        "eval_interval": 2,
        "eval_from_epoch": 82,
        "select": "best",  # the best of those epochs (test_unet.py's sweep, on validation)
        "lr_batch_rule": "batch24",
        "distill_ifd": 0.015,
        "distill_scr": 0.015,
    },
    # SLDGroup/EMCAD train_synapse.py + trainer.py: deep supervision with the "mutation"
    # loss (every non-empty subset of the 4 heads), 0.3 CE + 0.7 Dice, AdamW 1e-4, wd 1e-4,
    # no learning-rate decay ("we did not use this"), batch 6, 300 epochs, 224 px.
    "emcad": {
        "model": "emcad",
        "loss": "ce_dice",
        "loss_weights": [0.3, 0.7],
        "optimizer": "adamw",
        "base_lr": 1e-4,
        "weight_decay": 1e-4,
        "lr_schedule": "constant",
        "img_size": 224,
        "batch_size": 6,
        "max_epochs": 300,
        "eval_interval": 25,
        "deep_supervision": True,
        "deep_supervision_loss": "mutation",
    },
    # The ResUnet seed (Pipaup/ResUnet README "Training details"): 0.4 CE + 0.6 Dice (0.3 /
    # 0.7 on ACDC), SGD 0.02, momentum 0.9, wd 1e-4, poly, batch 8, 200 epochs, eval
    # every 25 epochs, 224 px.
    "resunet": {
        "model": "resunet_v1_0",
        "loss": "ce_dice",
        "loss_weights": [0.4, 0.6],
        "optimizer": "sgd",
        "base_lr": 0.02,
        "weight_decay": 1e-4,
        "img_size": 224,
        "batch_size": 8,
        "max_epochs": 200,
        "eval_interval": 25,
    },
}

#: Every recipe: the source recipes above and the per-dataset ones (keyed by
#: ``SegDataset.recipe``). ``--recipe NAME`` accepts any key.
RECIPES: dict[str, dict[str, Any]] = {
    **SOURCE_RECIPES,
    # Synapse (and AVT) train as TransUNet's trainer does, with the plain U-Net.
    "synapse": {**SOURCE_RECIPES["transunet"], "model": "unet"},
    "acdc": {
        "model": "unet",
        "loss": "ce_dice",
        "loss_weights": [0.3, 0.7],
        "optimizer": "adamw",
        "base_lr": 1e-4,
        "weight_decay": 1e-4,
        "img_size": 224,
        "batch_size": 12,
        "max_epochs": 150,
        "eval_interval": 10,
    },
    "drive": {
        "model": "unet",
        "loss": "bce_dice",
        "loss_weights": [0.5, 0.5],
        "optimizer": "adam",
        "base_lr": 1e-3,
        "weight_decay": 0.0,
        "img_size": 512,
        "batch_size": 4,
        "max_epochs": 100,
        "eval_interval": 5,
    },
    # The embedded demo (`make demo`): a 16-wide U-Net on the native 128 px phantom slices
    # (no resize). Measured: test mean Dice 0.965 after 8 epochs in 196 s of CPU time on
    # one thread (0.983 after 14 epochs). Rotations only: the TransUNet rot90/flip branch
    # swaps the sides of the left/right kidney classes and slowed convergence (val Dice
    # 0.63 vs 0.94 after 6 epochs).
    "phantom": {
        "model": "unet",
        "model_options": {"base_channels": 16},
        "loss": "ce_dice",
        "loss_weights": [0.4, 0.6],
        "optimizer": "adamw",
        "base_lr": 2e-3,
        "weight_decay": 1e-4,
        "img_size": 128,
        "batch_size": 8,
        "max_epochs": 8,
        "eval_interval": 2,
        "augment_options": {"p_rot_flip": 0.0, "p_rotate": 0.3, "max_angle": 10},
    },
    "default": {
        "model": "unet",
        "loss": "ce_dice",
        "loss_weights": [0.5, 0.5],
        "optimizer": "adamw",
        "base_lr": 1e-3,
        "weight_decay": 1e-4,
        "img_size": 224,
        "batch_size": 8,
        "max_epochs": 100,
        "eval_interval": 5,
    },
}

@dataclass(frozen=True)
class DistillConfig:
    """SelfReg's feature distillation weights (``--distill``): IFD and SCR terms."""

    ifd: float
    scr: float


@dataclass(frozen=True)
class TrainConfig:
    """A resolved, validated training configuration. Frozen: derive a changed copy with
    ``dataclasses.replace``; the option mappings are read-only views; ``to_dict()`` gives
    the plain dict. Each field is one YAML key and one ``unetzoo train`` flag."""

    recipe: str | None = option(
        None, "training recipe: transunet, swin_unet, selfreg, resunet (the published "
        "scripts') or a dataset's (synapse, acdc, drive, phantom, default); default: the "
        "dataset's", metavar="NAME")
    paper_protocol: bool = option(
        False, "as the published tables: train on all training cases, select no "
        "checkpoint, test the last epoch with the transunet metric protocol")
    model: str | None = option(
        None, "registered model name (`unetzoo list-models`); default: the recipe's")
    model_options: Mapping[str, Any] = option(
        {}, "architecture option (repeatable), e.g. base_channels=16",
        flag="--model-option", metavar="KEY=VALUE")
    dataset: str | None = option(
        None, "dataset name (default: nnunet when --data-root holds a dataset.json, else "
        "the embedded phantom)")
    data_root: str | None = option(None, "dataset folder")
    dataset_options: Mapping[str, Any] = option(
        {}, "dataset reader option (repeatable), e.g. n_train=4 for the phantom",
        flag="--dataset-option", metavar="KEY=VALUE")
    max_cases: int | None = option(None, "use only the first N training cases", lo=1)
    max_epochs: int = option(None, "training epochs (default: the recipe's)", lo=1)
    max_iterations: int | None = option(
        None, "an exact iteration budget: the epochs follow from it and the last one "
        "stops part-way (a planned run's --iterations sets it)", lo=1, metavar="N")
    batch_size: int = option(None, "slices per step (default: the recipe's)", lo=1)
    base_lr: float = option(
        None, "initial learning rate (poly decay per iteration)", lo=0, open_lo=True)
    img_size: int = option(None, "training and inference slice size in pixels", lo=8)
    eval_interval: int = option(None, "validate every N epochs (and after the last)", lo=1)
    eval_from_epoch: int | None = option(
        None, "validate from epoch E on (SelfReg's checkpoint sweep: 82, every 2)",
        lo=1, metavar="E")
    seed: int = option(1234, "random seed of the split, the loader and the weights",
                     lo=0, hi=2**32 - 1)  # numpy's seed range; others end in a traceback
    num_workers: int = option(0, "DataLoader worker processes", lo=0)
    output: str | None = option(
        None, "run folder (default runs/<model>-<dataset>); a non-empty folder is refused "
        "unless --resume or --overwrite", short="-o")
    loss: str | None = option(None, "ce_dice, bce_dice, ce or dice")
    loss_weights: list[float] | Mapping[str, float] | None = option(
        None, "weights of the loss terms")
    optimizer: OptimizerName = option(None, "the optimizer (default: the recipe's)")
    momentum: float = option(0.9, "SGD momentum", lo=0, hi=1, open_hi=True)
    weight_decay: float = option(None, "weight decay (default: the recipe's)", lo=0)
    lr_schedule: LrSchedule = option("poly", "poly (per iteration, default) or constant")
    poly_power: float = option(0.9, "exponent of the poly schedule", lo=0)
    lr_batch_rule: LrBatchRule | None = option(
        None, "scale --base-lr by batch/24 when the batch is a multiple of 6 other than 24 "
        "(Swin-Unet, SelfReg scripts; their recipes set it)")
    amp: bool = option(False, "mixed precision (CUDA only)")
    precision: Precision = option(
        "fp32", "fp32 (default) or bf16 autocast, on CPUs with AMX or AVX512-BF16 and on "
        "bf16 GPUs only (refused elsewhere); the test after training runs in fp32")
    channels_last: bool = option(True, "keep the channels_last memory format (CUDA only)")
    deep_supervision: bool = option(
        False, "train every decoder head (UNet++, UNet3+; see --deep-supervision-loss)")
    deep_supervision_weights: list[float] | None = option(
        None, "weights of the heads (default: equal, final head included)")
    deep_supervision_loss: DeepSupervisionLoss = option(
        "auto", "combine the heads: auto (default: the model's source; sum for UNet++/UNet "
        "3+, mutation for EMCAD), sum, weighted (mean) or mutation (EMCAD: every subset)")
    distill_ifd: float = option(0.0, "weight of internal feature distillation", lo=0,
                              metavar="L")
    distill_scr: float = option(0.0, "weight of semantic consistency", lo=0, metavar="L")
    augment: str | None = option(
        None, "augmentation recipe (default: the dataset's; 'none' resizes only)",
        metavar="RECIPE")
    augment_options: Mapping[str, Any] = option(
        {}, "augmentation option (repeatable), e.g. p_rot_flip=0.0",
        flag="--augment-option", metavar="KEY=VALUE")
    val_fraction: float = option(
        0.1, "share of training cases held out (default 0.1)", lo=0, hi=1, open_hi=True)
    val_cases: int | None = option(None, "evaluate at most N validation cases per epoch", lo=1)
    fold: int | None = option(
        None, "train fold K (0-4) of nnU-Net's 5-fold cross-validation: a seeded split of "
        "the training cases, stored once in the user cache and copied to the run folder; "
        "the fold's validation cases are its validation set (default run folder "
        ".../fold_K)", lo=0, hi=N_FOLDS - 1, metavar="K")
    test: bool = option(True, "skip the test run after training")
    select: Selection = option(
        "final", "checkpoint the test after training scores: final (default: the last "
        "epoch, checkpoints/final.pt, as nnU-Net) or best (the best validation epoch, "
        "best.pt)")
    test_max_cases: int | None = option(None, "test on at most N cases", lo=1)
    protocol: Protocol = option("strict", "empty-mask metric protocol")
    progress: bool = option(True, "no progress bars")
    device: str | None = option(None, "cpu or cuda (default: cuda when available)")

    def __post_init__(self) -> None:
        # Read-only views over private copies: `cfg.model_options["x"] = 1` fails too.
        for key in MAPPING_KEYS:
            object.__setattr__(self, key, MappingProxyType(dict(getattr(self, key) or {})))
        if isinstance(self.loss_weights, Mapping):
            object.__setattr__(self, "loss_weights", MappingProxyType(dict(self.loss_weights)))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Validate a configuration mapping (missing keys take :func:`defaults`).

        Raises:
            ConfigError: an unknown key or a bad value, in one line.
        """
        _check_known(values, "unknown configuration key(s)")
        cfg = {**defaults(), **_plain(dict(values))}
        validate_config(cfg)
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (dicts, lists, str, numbers): what ``config.yaml`` and the
        checkpoint's ``"config"`` hold (checkpoints are read with ``weights_only=True``)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @property
    def distill(self) -> DistillConfig | None:
        """The distillation weights, None when both are 0 (no distillation)."""
        if self.distill_ifd > 0 or self.distill_scr > 0:
            return DistillConfig(self.distill_ifd, self.distill_scr)
        return None


@dataclass(frozen=True)
class ConfigField:
    """One :class:`TrainConfig` field as the rest of the code reads it.

    ``kind`` is ``bool``, ``int``, ``float``, ``str``, ``choice`` (a ``Literal``: the
    values in ``choices``), ``mapping`` or ``weights`` (a list of numbers).
    """

    name: str
    kind: str
    optional: bool
    choices: tuple[str, ...]
    option: Option

    @property
    def label(self) -> str:
        """The name in messages: ``img-size``."""
        return self.name.replace("_", "-")

    @property
    def flag(self) -> str:
        """The command-line flag: ``--img-size``, ``--no-test``, ``--model-option``."""
        if self.option.flag:
            return self.option.flag
        invert = self.kind == "bool" and self.option.default is True
        return f"--{'no-' if invert else ''}{self.label}"


def _kind(hint: Any) -> tuple[str, bool, tuple[str, ...]]:
    """``(kind, None allowed, choices)`` of a field's type."""
    union = get_origin(hint) in (Union, types.UnionType)
    members = [a for a in get_args(hint) if a is not type(None)] if union else [hint]
    optional = union and len(members) < len(get_args(hint))
    base = members[0]  # list[float] | Mapping[str, float]: a list on the command line
    if get_origin(base) is Literal:
        return "choice", optional, tuple(get_args(base))
    if get_origin(base) is list:
        return "weights", optional, ()
    if get_origin(base) is Mapping:
        return "mapping", optional, ()
    if base in (bool, int, float, str):
        return base.__name__, optional, ()
    raise TypeError(f"TrainConfig field of unsupported type {hint!r}")


@functools.cache
def config_fields(cls: type = TrainConfig) -> tuple[ConfigField, ...]:
    """Every field of ``cls`` (:class:`TrainConfig` or a subclass) with its kind and option."""
    hints = get_type_hints(cls)
    return tuple(ConfigField(f.name, *_kind(hints[f.name]), f.metadata["option"])
                 for f in dataclasses.fields(cls))


#: The configuration keys (the field names), in order.
KEYS: tuple[str, ...] = tuple(f.name for f in config_fields())
MAPPING_KEYS = tuple(f.name for f in config_fields() if f.kind == "mapping")
_FIELDS = {f.name: f for f in config_fields()}


def defaults() -> dict[str, Any]:
    """Every key with its default before the recipe (a fresh copy; None: the recipe's)."""
    return {f.name: copy.deepcopy(f.option.default) for f in config_fields()}


def _check_known(values: Mapping[str, Any], what: str, extra: tuple[str, ...] = ()) -> None:
    unknown = sorted(set(values) - set(KEYS) - set(extra))
    if unknown:
        raise ConfigError(f"{what} {', '.join(unknown)}; valid keys: {', '.join(sorted(KEYS))}")


#: Values (with repeats: an alias counts each time it is used) a YAML text may expand
#: to; more is an alias bomb that would exhaust memory when the values are copied.
MAX_YAML_VALUES = 100_000


def parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)`` with every failure one :class:`ConfigError` naming
    ``where``: bad syntax, tags, nesting too deep, or more than :data:`MAX_YAML_VALUES`
    values once aliases are expanded."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" (line {line + 1})" if line is not None else ""
        problem = getattr(exc, "problem", None) or "bad syntax"
        raise ConfigError(f"{where} is not valid YAML{at}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{where} nests too deeply to be a configuration") from None
    stack, count = [data], 0
    while stack:
        value = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise ConfigError(f"{where} expands to more than {MAX_YAML_VALUES:,} values "
                              "(repeated aliases?); write the values out")
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of configuration keys (flag names, ``-`` or ``_``)."""
    p = Path(path)
    from unetzoo.data.io import special_file

    if special_file(p):  # reading a FIFO or /dev/zero never ends
        raise ConfigError(f"config file {p} is {special_file(p)}, not a file; pass a YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {p} is not UTF-8 text (byte {exc.start}); save it "
                          "as UTF-8 YAML") from None
    data = parse_yaml(text, f"config file {p}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of option: value")
    out = {str(k).replace("-", "_"): v for k, v in data.items()}
    try:
        _check_mappings(out)
    except ConfigError as exc:
        raise ConfigError(f"config file {p}: {exc}") from None
    _check_known(out, f"config file {p} has unknown key(s)", ("resume", "config", "distill"))
    distill = out.pop("distill", None)
    if distill is not None:  # `distill: 0.015` sets both SelfReg weights, like the flag
        lam = 0.015 if distill is True else distill
        out.setdefault("distill_ifd", lam)
        out.setdefault("distill_scr", lam)
    out.pop("config", None)
    return out


def resolve_config(
    recipe: str | None,
    file_values: dict[str, Any] | None = None,
    flag_values: dict[str, Any] | None = None,
) -> TrainConfig:
    """Merge defaults < recipe < YAML values < flags and validate the result.

    Args:
        recipe: a key of :data:`RECIPES` (``SegDataset.recipe``); unknown keys use
            ``"default"``.
        file_values: values from a YAML file (see :func:`load_yaml`).
        flag_values: values given explicitly on the command line (``None`` = not given).

    Returns:
        A frozen :class:`TrainConfig` with every key filled in.
    """
    for source in (file_values or {}, flag_values or {}):
        _check_mappings(source)
    cfg = defaults()
    recipe = pick_recipe(recipe, file_values, flag_values)
    rec = RECIPES.get(recipe or "default", RECIPES["default"])
    cfg.update(copy.deepcopy(rec))
    cfg["recipe"] = recipe if recipe in RECIPES else "default"
    for source in (file_values or {}, flag_values or {}):
        if source.get("loss") is not None and source.get("loss_weights") is None:
            cfg["loss_weights"] = None  # another loss: its own default weights
        for key, value in source.items():
            if value is None or key not in KEYS:
                continue
            if key in MAPPING_KEYS:
                merged = dict(cfg.get(key) or {})
                merged.update(value or {})
                value = merged
            cfg[key] = value
    if cfg["model"] != rec.get("model"):
        # The recipe's model options (e.g. the demo U-Net's width) belong to the recipe's
        # own model; another model keeps only the options the user gave.
        user_options: dict[str, Any] = {}
        for source in (file_values or {}, flag_values or {}):
            user_options.update(source.get("model_options") or {})
        cfg["model_options"] = user_options
    apply_paper_protocol(cfg, file_values, flag_values)
    validate_config(cfg)
    return TrainConfig(**cfg)


def pick_recipe(
    dataset_recipe: str | None,
    file_values: dict[str, Any] | None = None,
    flag_values: dict[str, Any] | None = None,
) -> str | None:
    """The recipe a run uses: ``--recipe`` (flag), else ``recipe:`` (YAML), else the dataset's.

    A named recipe must exist (one clear line listing them); a dataset's unknown recipe
    key falls back to ``"default"`` as before.
    """
    for source in (flag_values or {}, file_values or {}):
        name = source.get("recipe")
        if name is None:
            continue
        if not isinstance(name, str) or name not in RECIPES:
            raise ConfigError(
                f"unknown recipe {name!r}; choose one of {', '.join(sorted(RECIPES))}"
            )
        return name
    return dataset_recipe


def apply_paper_protocol(
    cfg: dict[str, Any],
    file_values: dict[str, Any] | None = None,
    flag_values: dict[str, Any] | None = None,
) -> None:
    """``paper_protocol: true`` -> the evaluation protocol of the published tables, in place.

    TransUNet, Swin-Unet and SelfReg train on every training case (Synapse: all 18), select
    no checkpoint on any split, and test the weights of the last epoch with TransUNet's
    empty-mask rule (SelfReg's ``test_unet.py`` scores 35 late checkpoints on the test set
    instead; the ``selfreg`` recipe without this flag sweeps them on a validation split).
    So: ``val_fraction = 0``, the dataset's own validation split is not used either (the
    trainer reads ``paper_protocol``), every epoch's checkpoint is the "best" one,
    ``protocol = "transunet"`` and ``select = "final"``. Asking for a validation share or
    another metric protocol at the same time is a contradiction, reported in one line.
    """
    flag = cfg.get("paper_protocol")
    if flag in (None, False):
        cfg["paper_protocol"] = False
        return
    if flag is not True:
        raise ConfigError(f"paper-protocol must be true or false, got {flag!r}")
    for source in (file_values or {}, flag_values or {}):
        vf = source.get("val_fraction")
        if vf is not None and vf != 0:
            raise ConfigError(
                f"--paper-protocol trains on all training cases; drop --val-fraction {vf}"
            )
        if source.get("select") not in (None, "final"):
            raise ConfigError("--paper-protocol tests the last epoch; drop --select "
                              f"{source['select']}")
        proto = source.get("protocol")
        if proto is not None and proto != "transunet":
            raise ConfigError(
                f"--paper-protocol scores with the 'transunet' protocol; drop --protocol {proto}"
            )
    cfg["val_fraction"] = 0.0
    cfg["val_cases"] = None
    cfg["protocol"] = "transunet"
    cfg["select"] = "final"


def require_pretrained_encoder(cfg: TrainConfig) -> TrainConfig:
    """A source recipe (``--recipe transunet``...) or ``--paper-protocol`` on a model whose
    official script always loads a pretrained encoder (TransUNet, Swin-Unet, EMCAD) starts
    from that file: ``encoder_weights`` the user did not set becomes ``"imagenet"`` when
    the file is in the torch hub cache (its hash is checked when the model is built);
    otherwise one line names the file and where to put it. An explicit value, ``none``
    included, is kept (``unetzoo test`` then notes a from-scratch encoder in its report).
    """
    from unetzoo.errors import ModelError
    from unetzoo.models import get_entry
    from unetzoo.models.weights_maps import hub_checkpoint, missing_weights_line

    if cfg.model is None or not (cfg.recipe in SOURCE_RECIPES or cfg.paper_protocol):
        return cfg
    try:
        source = get_entry(cfg.model).paper_weights()
    except ModelError:
        return cfg  # an unknown model is reported when it is built
    if source is None or "encoder_weights" in cfg.model_options:
        return cfg
    if not hub_checkpoint(source).is_file():
        why = f"--recipe {cfg.recipe}" if cfg.recipe in SOURCE_RECIPES else "--paper-protocol"
        raise ConfigError(
            f"{why} trains {cfg.model} from the pretrained encoder its official script "
            f"loads, and {missing_weights_line(source)}; --encoder-weights "
            f"{source.tag} downloads it, --encoder-weights none trains from scratch"
        )
    options = {**cfg.model_options, "encoder_weights": source.tag}
    return dataclasses.replace(cfg, model_options=options)


def _check_mappings(values: Mapping[str, Any]) -> None:
    # Checked before merging: `model_options: 5` in a YAML file used to reach dict.update.
    for key in MAPPING_KEYS:
        if values.get(key) is not None:
            check_value(key, values[key])


def _whole(value: Any) -> int | None:
    """``value`` as an int when it is a whole number (not a bool), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _number(value: Any) -> float | None:
    """``value`` as a finite float (YAML 1.1 reads ``1e-3`` as text), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        out = float(value)
    except (ValueError, OverflowError):
        return None
    return out if math.isfinite(out) else None


def _in_range(value: float, opt: Option) -> bool:
    lo_ok = opt.lo is None or (value > opt.lo if opt.open_lo else value >= opt.lo)
    hi_ok = opt.hi is None or (value < opt.hi if opt.open_hi else value <= opt.hi)
    return lo_ok and hi_ok


def _range_text(opt: Option, whole: bool) -> str:
    lo, hi = (f"{v:.0f}" if float(v).is_integer() else f"{v:g}" for v in (opt.lo, opt.hi or 0))
    if opt.hi is None:
        return f"{'>' if opt.open_lo else '>='} {lo}"
    if whole:
        return f"in {lo}..{hi}"
    return f"in {'(' if opt.open_lo else '['}{lo}, {hi}{')' if opt.open_hi else ']'}"


def _weights(f: ConfigField, value: Any) -> Any:
    """A list of numbers >= 0, not all 0 (``loss_weights`` may also map term -> weight,
    as ``build_loss`` takes); ``"abc"`` used to reach the loss as a traceback."""
    mapping = f.name == "loss_weights" and isinstance(value, Mapping)
    items = list(value.values()) if mapping else value
    ok = isinstance(items, (list, tuple)) and len(items) > 0 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        for v in items
    ) and sum(items) > 0
    if not ok:
        what = "a list (or term: weight mapping)" if f.name == "loss_weights" else "a list"
        raise ConfigError(f"{f.label} must be {what} of numbers >= 0, not all 0; got {value!r}")
    return {str(k): float(v) for k, v in value.items()} if mapping else [float(v) for v in items]


def check_value(key: str, value: Any) -> Any:
    """One field's value, checked against its type and range and normalised (ints from
    whole floats, choices lower-cased, mappings as dicts).

    Raises:
        ConfigError: one line naming the key; for a choice, the choices.
    """
    f = _FIELDS[key]
    if value is None and (f.optional or f.kind == "mapping"):
        return {} if f.kind == "mapping" else None
    if f.kind == "choice":
        if isinstance(value, str) and value.lower() in f.choices:
            return value.lower()
        unset = " or leave it unset" if f.optional else ""
        raise ConfigError(f"unknown {f.label} {value!r}; choose one of "
                          f"{', '.join(f.choices)}{unset}")
    if f.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{f.label} must be true or false, got {value!r}")
        return value
    if f.kind in ("int", "float"):
        whole = f.kind == "int"
        number = _whole(value) if whole else _number(value)
        if number is None or not _in_range(number, f.option):
            what = "a whole number" if whole else "a number"
            raise ConfigError(f"{f.label} must be {what} {_range_text(f.option, whole)}, "
                              f"got {value!r}")
        return number
    if f.kind == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{f.label} must be a string, got {value!r}")
        return value
    if f.kind == "mapping":
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping of option: value (e.g. "
                              f"{{base_channels: 16}}), got {value!r}")
        return dict(value)
    return _weights(f, value)


def check_values(values: Mapping[str, Any]) -> None:
    """The given (not None) values of a partial configuration, e.g. the flags, checked
    before any work; unknown keys are refused."""
    _check_known(values, "unknown configuration key(s)")
    for key, value in values.items():
        if value is not None:
            check_value(key, value)


def validate_config(cfg: dict[str, Any]) -> None:
    """Check and normalise every value in place (field by field, then the combinations);
    one clear line for the first bad value."""
    for key in KEYS:
        cfg[key] = check_value(key, cfg[key])
    if cfg["precision"] == "bf16" and cfg["amp"]:
        raise ConfigError("--amp (fp16) and --precision bf16 exclude each other; pick one")
    reserved = sorted({"in_channels", "num_classes"} & set(cfg["model_options"]))
    if reserved:
        raise ConfigError(f"model option {reserved[0]} comes from the dataset (its channels "
                          "and classes); drop that --model-option")
    if cfg["fold"] is not None and cfg["paper_protocol"]:
        raise ConfigError("--fold holds out validation cases; --paper-protocol trains on "
                          "all of them: drop one of the two")
    from unetzoo.engine.distributed import check_device

    cfg["device"] = check_device(cfg["device"])


def check_resume_options(saved: dict[str, Any], current: dict[str, Any], where: Any) -> None:
    """Refuse to resume ``where`` when the model options differ from the checkpoint's.

    ``saved`` is the checkpoint's ``model.options``, ``current`` the options the run would
    build with (``deep_supervision`` aside: checkpoints store it off). Different widths
    used to end in a ``load_state_dict`` traceback, and options that keep the shapes
    (``bilinear``) would have resumed a different model silently.
    """
    skip = {"deep_supervision", "encoder_weights"}
    keys = sorted((set(saved) | set(current)) - skip)
    changed = [k for k in keys if _plain(saved.get(k)) != _plain(current.get(k))]
    if changed:
        diff = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ConfigError(
            f"--resume {where}: the model options differ from the checkpoint's ({diff}); "
            "drop the --model-option flags to continue that run, or start a new run folder"
        )


def effective_base_lr(cfg: TrainConfig) -> float:
    """``base_lr`` after the recipe's batch rule: ``"batch24"`` (Swin-Unet ``train.py`` at
    1c8b3e8, SelfReg ``train_unetKD.py``: ``if batch_size != 24 and batch_size % 6 == 0:
    base_lr *= batch_size / 24``); unchanged without a rule. Applied when the optimizer
    is built, so the stored ``base_lr`` stays the value asked for."""
    lr, batch = float(cfg.base_lr), int(cfg.batch_size)
    if cfg.lr_batch_rule == "batch24" and batch != 24 and batch % 6 == 0:
        return lr * batch / 24
    return lr


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """Polynomial decay ``base_lr * (1 - iteration / max_iterations) ** power``.

    ``iteration`` counts optimizer steps already taken (0 for the first step); the value
    is clamped at 0 past ``max_iterations``.
    """
    if max_iterations <= 0:
        return base_lr
    frac = min(max(iteration / max_iterations, 0.0), 1.0)
    return base_lr * (1.0 - frac) ** power


def dump_yaml(cfg: TrainConfig | Mapping[str, Any], path: str | Path) -> None:
    """Write the resolved configuration (plain YAML, keys sorted)."""
    plain = cfg.to_dict() if isinstance(cfg, TrainConfig) else _plain(cfg)
    from unetzoo.data.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(plain, sort_keys=True))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
