"""``unetzoo train``: train a model (the embedded phantom when no dataset is named).

Every field of the training configuration (:class:`unetzoo.engine.config.TrainConfig`)
is one flag here, derived from the field, and one key of a YAML file (``--config``);
flags given on the command line win over the file, the file over the dataset's recipe.
The command parses its flags and calls :func:`unetzoo.engine.launch.train_from_flags`.
``torchrun --nproc-per-node N -m unetzoo train ...`` trains with DistributedDataParallel.
"""

from __future__ import annotations

import argparse
from typing import Any

from unetzoo.errors import ConfigError


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train a model; with no --dataset, the embedded phantom demo",
        description="Train a segmentation model (validating on a split carved from the "
        "training cases), then test the final checkpoint (or --select best) and write the "
        "report.",
    )
    add_config_flags(p)
    a = p.add_argument
    a("--config", help="YAML file with any of these options (flag names, - or _)")
    a("--iterations", type=int, metavar="N",
      help="a planned run (nnU-Net folder, default recipe): train about N iterations "
      "(whole epochs; default 1000)")
    a("--time-budget", type=float, metavar="MINUTES",
      help="a planned run: as many iterations as fit in MINUTES at the measured step time")
    a("--overwrite", action="store_true",
      help="replace the run already in --output (deletes only that run's own files; files "
      "you put there stay)")
    a("--resume", nargs="?", const="latest", metavar="CKPT",
      help="continue a run exactly; bare --resume uses <output>/checkpoints/latest.pt")
    a("--distill", type=float, nargs="?", const=0.015, metavar="LAMBDA",
      help="SelfReg feature distillation; LAMBDA weights both terms (default 0.015)")
    a("--encoder-weights", metavar="PATH|imagenet|none",
      help="pretrained encoder: a local weight file, 'imagenet' (the release file in the "
      "torch hub cache, hash-checked; downloaded when absent) or 'none' (random init); "
      "same as --model-option encoder_weights=...")
    return p


def add_config_flags(parser: argparse.ArgumentParser, cls: type | None = None) -> None:
    """One flag per field of the training configuration (``TrainConfig``, or ``cls``),
    derived from its type and :class:`~unetzoo.engine.config.Option`. Every default is
    None ("not given"); the configuration checks the values, in one line each."""
    from unetzoo.engine.config import TrainConfig, config_fields

    for f in config_fields(cls or TrainConfig):
        names = [f.option.short, f.flag] if f.option.short else [f.flag]
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": f.option.help}
        if f.kind == "bool":
            kw["action"] = "store_false" if f.option.default is True else "store_true"
        elif f.kind == "mapping":
            kw.update(action="append", metavar=f.option.metavar)
        elif f.kind == "weights":
            kw.update(type=float, nargs="+", metavar=f.option.metavar or "W")
        elif f.kind == "choice":
            kw.update(metavar=f.option.metavar or "{" + ",".join(f.choices) + "}")
        else:
            kw.update(type={"int": int, "float": float, "str": str}[f.kind],
                      metavar=f.option.metavar)
        parser.add_argument(*names, **kw)


def _key_values(items: list[str] | None, flag: str) -> dict[str, Any] | None:
    from unetzoo.engine.config import parse_yaml

    if not items:
        return None
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r} must look like KEY=VALUE")
        out[key.strip()] = parse_yaml(value, f"{flag} {item!r}")
    return out


def flag_values(args: argparse.Namespace, cls: type | None = None) -> dict[str, Any]:
    """Config keys given explicitly on the command line (one per configuration field,
    ``KEY=VALUE`` lists read as YAML values), with ``--encoder-weights`` and
    ``--distill`` folded in."""
    from unetzoo.engine.config import TrainConfig, config_fields

    flags: dict[str, Any] = {}
    for f in config_fields(cls or TrainConfig):
        value = getattr(args, f.name, None)
        if f.kind == "mapping":
            value = _key_values(value, f.flag)
        if value is not None:
            flags[f.name] = value
    weights = getattr(args, "encoder_weights", None)
    if weights is not None:
        given = flags.get("model_options", {})
        if "encoder_weights" in given and str(given["encoder_weights"]).lower() not in (
            weights.lower(), *(("none", "null") if weights.lower() == "none" else ())
        ):
            raise ConfigError("--encoder-weights and --model-option encoder_weights disagree; "
                              "pass one of them")
        flags["model_options"] = {**given, "encoder_weights": weights}
    if getattr(args, "distill", None) is not None:
        flags.setdefault("distill_ifd", args.distill)
        flags.setdefault("distill_scr", args.distill)
    return flags


def run(args: argparse.Namespace) -> int:
    from unetzoo.engine.launch import train_from_flags

    summary = train_from_flags(
        flag_values(args), config_file=args.config, resume=args.resume,
        overwrite=bool(getattr(args, "overwrite", False)),
        iterations=getattr(args, "iterations", None),
        time_budget=getattr(args, "time_budget", None),
    )
    if summary.get("test"):
        t = summary["test"]
        scored = t.get("scored") or {}
        print(
            f"done: test mean Dice {t['mean_dice']:.4f}, mean HD95 {t['mean_hd95']:.2f} "
            f"{t['hd95_unit']} ({t['cases']} cases) of {scored.get('file')}, epoch "
            f"{scored.get('epoch')}; run folder {summary['run_dir']}"
        )
    else:
        print(f"done: run folder {summary['run_dir']}")
    return 0
