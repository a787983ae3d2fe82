"""Training configuration: defaults, per-dataset recipes, YAML files and flags.

Precedence, lowest first: :data:`BASE_DEFAULTS`, the recipe (:data:`RECIPES`: the one
named by ``--recipe`` / ``recipe:``, else the dataset's ``SegDataset.recipe``), a YAML file
(``--config``), then flags given on the command line. ``--paper-protocol`` then fixes the
evaluation protocol of the published tables (:func:`apply_paper_protocol`).

:func:`resolve_config` returns a frozen :class:`TrainConfig`; a run changes it only with
``dataclasses.replace``. Its :meth:`TrainConfig.to_dict` (plain values) is what the run
folder stores as ``config.yaml`` and what every checkpoint carries under ``"config"``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from unetzoo.errors import ConfigError

#: Every configuration key with its default. ``None`` means "let the recipe decide".
BASE_DEFAULTS: dict[str, Any] = {
    "recipe": None,  # None -> the dataset's recipe (SegDataset.recipe)
    "paper_protocol": False,  # train on all cases, no checkpoint selection, test the last epoch
    "model": None,  # None -> the recipe's model
    "model_options": {},
    "dataset": None,  # None -> the embedded phantom
    "data_root": None,
    "dataset_options": {},  # reader options, e.g. phantom {n_train: 3, shape: [8, 32, 32]}
    "max_cases": None,  # cap on training cases (quick runs)
    "max_epochs": None,
    # An exact iteration budget (a planned run's --iterations): the epochs follow from it
    # and the last one stops part-way; None -> max_epochs full passes.
    "max_iterations": None,
    "batch_size": None,
    "base_lr": None,
    "img_size": None,
    "eval_interval": None,
    "eval_from_epoch": None,  # first epoch (1-based) that validates; None -> from the start
    "seed": 1234,
    "num_workers": 0,
    "output": None,
    "loss": None,
    "loss_weights": None,
    "optimizer": None,
    "momentum": 0.9,
    "weight_decay": None,
    "lr_schedule": "poly",  # "poly" (per iteration) or "constant"
    "poly_power": 0.9,
    "lr_batch_rule": None,  # "batch24": base_lr * batch / 24 (Swin-Unet, SelfReg scripts)
    "amp": False,
    "precision": "fp32",  # or "bf16": autocast where the device has native bf16
    "channels_last": True,  # applied on CUDA only
    "deep_supervision": False,
    "deep_supervision_weights": None,  # None -> equal weights, final head included
    # "auto": the model's source (sum: UNet++, UNet 3+; mutation: EMCAD; else weighted)
    "deep_supervision_loss": "auto",
    "distill_ifd": 0.0,
    "distill_scr": 0.0,
    "augment": None,  # augmentation recipe (None -> the dataset's; "none" = resize only)
    "augment_options": {},  # passed to the recipe, e.g. {p_rot_flip: 0.0}
    "val_fraction": 0.1,  # share of training cases held out for model selection
    "val_cases": None,  # cap on validation cases evaluated per epoch
    "fold": None,  # fold K of the stored 5-fold split (data/folds.py) instead of val_fraction
    "test": True,  # run `unetzoo test` on the selected checkpoint after training
    "select": "final",  # the checkpoint that test scores: "final" (last epoch) or "best" (val)
    "test_max_cases": None,
    "protocol": "strict",
    "progress": True,
    "device": None,  # None -> CUDA when available, else CPU
}

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

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("poly", "constant")
PROTOCOLS = ("strict", "transunet")
# "auto" + unetzoo.losses.DEEP_SUPERVISION_LOSSES
DEEP_SUPERVISION_LOSSES = ("auto", "sum", "weighted", "mutation")
LR_BATCH_RULES = ("batch24",)
SELECTIONS = ("final", "best")  # the checkpoint a run scores (engine/selection.py)


@dataclass(frozen=True)
class DistillConfig:
    """SelfReg's feature distillation weights (``--distill``): IFD and SCR terms."""

    ifd: float
    scr: float


@dataclass(frozen=True)
class TrainConfig(Mapping):
    """A resolved, validated training configuration (one field per :data:`BASE_DEFAULTS`
    key; see there for what each means). Frozen: derive a changed copy with
    ``dataclasses.replace``. The option mappings are read-only views.

    It is also a read-only :class:`~collections.abc.Mapping` of its keys (``cfg["key"]``,
    ``cfg.get("key")``, ``dict(cfg)``), so code that only reads the configuration
    dictionary keeps working; there is no item assignment.
    """

    recipe: str | None
    paper_protocol: bool
    model: str | None
    model_options: Mapping[str, Any]
    dataset: str | None
    data_root: str | None
    dataset_options: Mapping[str, Any]
    max_cases: int | None
    max_epochs: int
    max_iterations: int | None
    batch_size: int
    base_lr: float
    img_size: int
    eval_interval: int
    eval_from_epoch: int | None
    seed: int
    num_workers: int
    output: str | None
    loss: str | None
    loss_weights: list[float] | Mapping[str, float] | None
    optimizer: str
    momentum: float
    weight_decay: float
    lr_schedule: str
    poly_power: float
    lr_batch_rule: str | None
    amp: bool
    precision: str
    channels_last: bool
    deep_supervision: bool
    deep_supervision_weights: list[float] | None
    deep_supervision_loss: str
    distill_ifd: float
    distill_scr: float
    augment: str | None
    augment_options: Mapping[str, Any]
    val_fraction: float
    val_cases: int | None
    fold: int | None
    test: bool
    select: str
    test_max_cases: int | None
    protocol: str
    progress: bool
    device: str | None

    def __post_init__(self) -> None:
        # Read-only views over private copies: `cfg["model_options"]["x"] = 1` fails too.
        for key in MAPPING_KEYS:
            object.__setattr__(self, key, MappingProxyType(dict(getattr(self, key) or {})))
        if isinstance(self.loss_weights, Mapping):
            object.__setattr__(self, "loss_weights", MappingProxyType(dict(self.loss_weights)))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Validate a configuration mapping (missing keys take :data:`BASE_DEFAULTS`).

        Raises:
            ConfigError: an unknown key or a bad value, in one line.
        """
        unknown = sorted(set(values) - set(BASE_DEFAULTS))
        if unknown:
            raise ConfigError(f"unknown configuration key(s) {', '.join(unknown)}; valid "
                              f"keys: {', '.join(sorted(BASE_DEFAULTS))}")
        cfg = {**copy.deepcopy(BASE_DEFAULTS), **_plain(dict(values))}
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

    def __getitem__(self, key: str) -> Any:
        if key not in BASE_DEFAULTS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return (f.name for f in dataclasses.fields(self))

    def __len__(self) -> int:
        return len(dataclasses.fields(self))


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
    unknown = sorted(set(out) - set(BASE_DEFAULTS) - {"resume", "config", "distill"})
    if unknown:
        raise ConfigError(
            f"config file {p} has unknown key(s) {', '.join(unknown)}; "
            f"valid keys: {', '.join(sorted(BASE_DEFAULTS))}"
        )
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
        A frozen :class:`TrainConfig` with every key of :data:`BASE_DEFAULTS` filled in.
    """
    for source in (file_values or {}, flag_values or {}):
        _check_mappings(source)
    cfg = copy.deepcopy(BASE_DEFAULTS)
    recipe = pick_recipe(recipe, file_values, flag_values)
    rec = RECIPES.get(recipe or "default", RECIPES["default"])
    cfg.update(copy.deepcopy(rec))
    cfg["recipe"] = recipe if recipe in RECIPES else "default"
    for source in (file_values or {}, flag_values or {}):
        if source.get("loss") is not None and source.get("loss_weights") is None:
            cfg["loss_weights"] = None  # another loss: its own default weights
        for key, value in source.items():
            if value is None or key not in BASE_DEFAULTS:
                continue
            if key in ("model_options", "dataset_options", "augment_options"):
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


MAPPING_KEYS = ("model_options", "dataset_options", "augment_options")
BOOL_KEYS = ("amp", "channels_last", "deep_supervision", "test", "progress")
STR_KEYS = ("model", "dataset", "data_root", "output", "loss", "augment")
OPTIONAL_INT_KEYS = ("max_cases", "val_cases", "test_max_cases", "eval_from_epoch")


def _check_mappings(values: dict[str, Any]) -> None:
    # Checked before merging: `model_options: 5` in a YAML file used to reach dict.update.
    for key in MAPPING_KEYS:
        if values.get(key) is not None and not isinstance(values[key], Mapping):
            raise ConfigError(
                f"{key} must be a mapping of option: value (e.g. {{base_channels: 16}}), "
                f"got {values[key]!r}"
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _weights(cfg: dict[str, Any], key: str) -> None:
    """A list of numbers >= 0, not all 0 (``loss_weights`` may also map term -> weight,
    as ``build_loss`` takes); ``"abc"`` used to reach the loss as a traceback."""
    value = cfg[key]
    if value is None:
        return
    mapping = key == "loss_weights" and isinstance(value, dict)
    items = list(value.values()) if mapping else value
    ok = isinstance(items, (list, tuple)) and len(items) > 0 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
        for v in items
    ) and sum(items) > 0
    if not ok:
        what = "a list (or term: weight mapping)" if key == "loss_weights" else "a list"
        raise ConfigError(
            f"{key.replace('_', '-')} must be {what} of numbers >= 0, not all 0; got {value!r}"
        )
    cfg[key] = {str(k): float(v) for k, v in value.items()} if mapping else [float(v) for v in items]


def _positive(cfg: dict[str, Any], key: str, kind: type = int) -> None:
    value = cfg[key]
    try:
        ok = kind(value) == value and value > 0 if kind is int else float(value) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok or isinstance(value, bool):
        raise ConfigError(f"{key.replace('_', '-')} must be a positive {kind.__name__}, got {value!r}")
    cfg[key] = kind(value)


def _choice(value: Any, key: str, choices: tuple[str, ...], tail: str = "") -> None:
    if value not in choices:
        raise ConfigError(f"unknown {key.replace('_', '-')} {value!r}; choose one of "
                          f"{', '.join(choices)}{tail}")


def _check_fold(cfg: dict[str, Any]) -> None:
    """``fold``: one of the cross-validation folds, never with ``--paper-protocol``."""
    if cfg.get("fold") is None:
        return
    from unetzoo.data.folds import N_FOLDS

    if not (_is_int(cfg["fold"]) and 0 <= cfg["fold"] < N_FOLDS):
        raise ConfigError(
            f"fold must be a whole number in 0..{N_FOLDS - 1} ({N_FOLDS}-fold "
            f"cross-validation), got {cfg['fold']!r}"
        )
    if cfg.get("paper_protocol"):
        raise ConfigError("--fold holds out validation cases; --paper-protocol trains on "
                          "all of them: drop one of the two")


def validate_config(cfg: dict[str, Any]) -> None:
    """Check types and ranges in place; one clear line for the first bad value."""
    for key in ("max_epochs", "batch_size", "img_size", "eval_interval"):
        _positive(cfg, key, int)
    if cfg.get("max_iterations") is not None:
        _positive(cfg, "max_iterations", int)
    _positive(cfg, "base_lr", float)
    if cfg["img_size"] < 8:
        raise ConfigError(f"img-size must be at least 8 pixels, got {cfg['img_size']}")
    if not _is_int(cfg["num_workers"]) or cfg["num_workers"] < 0:
        raise ConfigError(f"num-workers must be a whole number >= 0, got {cfg['num_workers']!r}")
    opt = str(cfg["optimizer"]).lower()
    if opt not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {cfg['optimizer']!r}; choose one of {', '.join(OPTIMIZERS)}")
    cfg["optimizer"] = opt
    for key, choices in (("lr_schedule", LR_SCHEDULES),
                         ("deep_supervision_loss", DEEP_SUPERVISION_LOSSES),
                         ("precision", ("fp32", "bf16")), ("select", SELECTIONS),
                         ("protocol", PROTOCOLS)):
        _choice(cfg.get(key), key, choices)
    if cfg.get("lr_batch_rule") is not None:
        _choice(cfg["lr_batch_rule"], "lr_batch_rule", LR_BATCH_RULES, " or leave it unset")
    if cfg["precision"] == "bf16" and cfg["amp"]:
        raise ConfigError("--amp (fp16) and --precision bf16 exclude each other; pick one")
    for key, lo, hi in (("val_fraction", 0.0, 1.0), ("poly_power", 0.0, math.inf)):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value < hi:
            raise ConfigError(f"{key.replace('_', '-')} must be a number in [{lo:g}, {hi:g}), got {value!r}")
    for key in ("distill_ifd", "distill_scr", "weight_decay", "momentum"):
        try:
            value = float(cfg[key] or 0.0)
        except (TypeError, ValueError):
            value = -1.0
        if value < 0 or not math.isfinite(value):
            raise ConfigError(f"{key.replace('_', '-')} must be a number >= 0, got {cfg[key]!r}")
        if key == "momentum" and value >= 1:  # SGD diverges at momentum >= 1
            raise ConfigError(f"momentum must be a number in [0, 1), got {cfg[key]!r}")
        cfg[key] = value
    _check_mappings(cfg)
    for key in MAPPING_KEYS:
        cfg[key] = dict(cfg[key] or {})
    for key in BOOL_KEYS:
        if not isinstance(cfg[key], bool):
            raise ConfigError(f"{key.replace('_', '-')} must be true or false, got {cfg[key]!r}")
    for key in STR_KEYS:
        if cfg[key] is not None and not isinstance(cfg[key], str):
            raise ConfigError(f"{key.replace('_', '-')} must be a string, got {cfg[key]!r}")
    for key in OPTIONAL_INT_KEYS:
        if cfg[key] is not None and not (_is_int(cfg[key]) and cfg[key] >= 1):
            raise ConfigError(f"{key.replace('_', '-')} must be a whole number >= 1, got {cfg[key]!r}")
    if not _is_int(cfg["seed"]) or not 0 <= cfg["seed"] < 2**32:
        # numpy seeds its generators with 0 .. 2**32 - 1; others end in a traceback.
        raise ConfigError(f"seed must be a whole number in 0..{2**32 - 1}, got {cfg['seed']!r}")
    reserved = sorted({"in_channels", "num_classes"} & set(cfg["model_options"]))
    if reserved:
        raise ConfigError(f"model option {reserved[0]} comes from the dataset (its channels "
                          "and classes); drop that --model-option")
    _check_fold(cfg)
    for key in ("loss_weights", "deep_supervision_weights"):
        _weights(cfg, key)
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


def effective_base_lr(cfg: TrainConfig | Mapping[str, Any]) -> float:
    """``base_lr`` after the recipe's batch rule: ``"batch24"`` (Swin-Unet ``train.py`` at
    1c8b3e8, SelfReg ``train_unetKD.py``: ``if batch_size != 24 and batch_size % 6 == 0:
    base_lr *= batch_size / 24``); unchanged without a rule. Applied when the optimizer
    is built, so the stored ``base_lr`` stays the value asked for."""
    lr, batch = float(cfg["base_lr"]), int(cfg["batch_size"])
    if cfg.get("lr_batch_rule") == "batch24" and batch != 24 and batch % 6 == 0:
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
