"""Training configuration: defaults, per-dataset recipes, YAML files and flags.

Precedence, lowest first: :data:`BASE_DEFAULTS`, the dataset's recipe (:data:`RECIPES`,
keyed by ``SegDataset.recipe``), a YAML file (``--config``), then flags given on the
command line. The resolved dictionary is what the run folder stores as ``config.yaml``
and what every checkpoint carries under ``"config"``.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import yaml

from unetzoo.errors import ConfigError

#: Every configuration key with its default. ``None`` means "let the recipe decide".
BASE_DEFAULTS: dict[str, Any] = {
    "model": None,  # None -> the recipe's model
    "model_options": {},
    "dataset": None,  # None -> the embedded phantom
    "data_root": None,
    "dataset_options": {},  # reader options, e.g. phantom {n_train: 3, shape: [8, 32, 32]}
    "max_cases": None,  # cap on training cases (quick runs)
    "max_epochs": None,
    "batch_size": None,
    "base_lr": None,
    "img_size": None,
    "eval_interval": None,
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
    "amp": False,
    "channels_last": True,  # applied on CUDA only
    "deep_supervision": False,
    "deep_supervision_weights": None,  # None -> equal weights, final head included
    "distill_ifd": 0.0,
    "distill_scr": 0.0,
    "augment": None,  # augmentation recipe (None -> the dataset's; "none" = resize only)
    "augment_options": {},  # passed to the recipe, e.g. {p_rot_flip: 0.0}
    "val_fraction": 0.1,  # share of training cases held out for model selection
    "val_cases": None,  # cap on validation cases evaluated per epoch
    "test": True,  # run `unetzoo test` on the best checkpoint after training
    "test_max_cases": None,
    "protocol": "strict",
    "progress": True,
    "device": None,  # None -> CUDA when available, else CPU
}

#: Per-dataset recipes (the published training settings), keyed by ``SegDataset.recipe``.
RECIPES: dict[str, dict[str, Any]] = {
    # TransUNet / ResUnet protocol on Synapse (and AVT): 0.4 CE + 0.6 Dice, SGD, poly.
    "synapse": {
        "model": "unet",
        "loss": "ce_dice",
        "loss_weights": [0.4, 0.6],
        "optimizer": "sgd",
        "base_lr": 0.01,
        "weight_decay": 1e-4,
        "img_size": 224,
        "batch_size": 24,
        "max_epochs": 150,
        "eval_interval": 10,
    },
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


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of configuration keys (flag names, ``-`` or ``_``)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"config file {p} is not valid YAML{where}; fix its syntax") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of option: value")
    out = {str(k).replace("-", "_"): v for k, v in data.items()}
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
) -> dict[str, Any]:
    """Merge defaults < recipe < YAML values < flags and validate the result.

    Args:
        recipe: a key of :data:`RECIPES` (``SegDataset.recipe``); unknown keys use
            ``"default"``.
        file_values: values from a YAML file (see :func:`load_yaml`).
        flag_values: values given explicitly on the command line (``None`` = not given).

    Returns:
        A new dictionary with every key of :data:`BASE_DEFAULTS` filled in.
    """
    cfg = copy.deepcopy(BASE_DEFAULTS)
    rec = RECIPES.get(recipe or "default", RECIPES["default"])
    cfg.update(copy.deepcopy(rec))
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
    validate_config(cfg)
    return cfg


def _positive(cfg: dict[str, Any], key: str, kind: type = int) -> None:
    value = cfg[key]
    try:
        ok = kind(value) == value and value > 0 if kind is int else float(value) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok or isinstance(value, bool):
        raise ConfigError(f"{key.replace('_', '-')} must be a positive {kind.__name__}, got {value!r}")
    cfg[key] = kind(value)


def validate_config(cfg: dict[str, Any]) -> None:
    """Check types and ranges in place; one clear line for the first bad value."""
    for key in ("max_epochs", "batch_size", "img_size", "eval_interval"):
        _positive(cfg, key, int)
    _positive(cfg, "base_lr", float)
    if cfg["img_size"] < 8:
        raise ConfigError(f"img-size must be at least 8 pixels, got {cfg['img_size']}")
    if int(cfg["num_workers"]) < 0:
        raise ConfigError(f"num-workers must be >= 0, got {cfg['num_workers']}")
    if cfg["max_cases"] is not None and int(cfg["max_cases"]) < 1:
        raise ConfigError(f"max-cases must be >= 1, got {cfg['max_cases']}")
    opt = str(cfg["optimizer"]).lower()
    if opt not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {cfg['optimizer']!r}; choose one of {', '.join(OPTIMIZERS)}")
    cfg["optimizer"] = opt
    if cfg["lr_schedule"] not in LR_SCHEDULES:
        raise ConfigError(
            f"unknown lr-schedule {cfg['lr_schedule']!r}; choose one of {', '.join(LR_SCHEDULES)}"
        )
    if cfg["protocol"] not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {cfg['protocol']!r}; choose one of {', '.join(PROTOCOLS)}")
    if not 0.0 <= float(cfg["val_fraction"]) < 1.0:
        raise ConfigError(f"val-fraction must be in [0, 1), got {cfg['val_fraction']}")
    for key in ("distill_ifd", "distill_scr", "weight_decay", "momentum"):
        try:
            value = float(cfg[key] or 0.0)
        except (TypeError, ValueError):
            value = -1.0
        if value < 0 or not math.isfinite(value):
            raise ConfigError(f"{key.replace('_', '-')} must be a number >= 0, got {cfg[key]!r}")
        cfg[key] = value
    for key in ("model_options", "dataset_options", "augment_options"):
        if not isinstance(cfg[key] or {}, dict):
            raise ConfigError(f"{key} must be a mapping of option: value")
        cfg[key] = dict(cfg[key] or {})


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """Polynomial decay ``base_lr * (1 - iteration / max_iterations) ** power``.

    ``iteration`` counts optimizer steps already taken (0 for the first step); the value
    is clamped at 0 past ``max_iterations``.
    """
    if max_iterations <= 0:
        return base_lr
    frac = min(max(iteration / max_iterations, 0.0), 1.0)
    return base_lr * (1.0 - frac) ** power


def dump_yaml(cfg: dict[str, Any], path: str | Path) -> None:
    """Write the resolved configuration (plain YAML, keys sorted)."""
    Path(path).write_text(yaml.safe_dump(_plain(cfg), sort_keys=True))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
