"""``unetzoo train``: train a model (the embedded phantom when no dataset is named).

Every flag can also live in a YAML file (``--config``); flags given on the command line
win over the file, the file over the dataset's recipe. ``torchrun --nproc-per-node N -m
unetzoo train ...`` trains with DistributedDataParallel.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from unetzoo.errors import ConfigError

# Flags whose value maps 1:1 onto a config key (dest == key).
_KEYS = (
    "model", "dataset", "data_root", "max_cases", "max_epochs", "batch_size", "base_lr",
    "img_size", "eval_interval", "seed", "num_workers", "output", "loss", "loss_weights",
    "optimizer", "momentum", "weight_decay", "lr_schedule", "amp", "precision", "deep_supervision",
    "deep_supervision_weights", "distill_ifd", "distill_scr", "val_fraction", "val_cases",
    "test_max_cases", "protocol", "device", "augment", "recipe", "paper_protocol",
    "deep_supervision_loss", "eval_from_epoch", "lr_batch_rule",
    "fold", "select",
)


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train a model; with no --dataset, the embedded phantom demo",
        description="Train a segmentation model (validating on a split carved from the "
        "training cases), then test the final checkpoint (or --select best) and write the "
        "report.",
    )
    a = p.add_argument
    a("--model", help="registered model name (`unetzoo list-models`); default: the recipe's")
    a("--dataset", help="dataset name (default: nnunet when --data-root holds a dataset.json, else the embedded phantom)")
    a("--data-root", help="dataset folder")
    a("--config", help="YAML file with any of these options (flag names, - or _)")
    a("--recipe", metavar="NAME",
      help="training recipe: transunet, swin_unet, selfreg, resunet (the published "
      "scripts') or a dataset's (synapse, acdc, drive, phantom, default); default: the "
      "dataset's")
    a("--paper-protocol", action="store_true", default=None,
      help="as the published tables: train on all training cases, select no checkpoint, "
      "test the last epoch with the transunet metric protocol")
    a("--iterations", type=int, metavar="N",
      help="a planned run (nnU-Net folder, default recipe): train about N iterations "
      "(whole epochs; default 1000)")
    a("--time-budget", type=float, metavar="MINUTES",
      help="a planned run: as many iterations as fit in MINUTES at the measured step time")
    a("--max-epochs", type=int)
    a("--batch-size", type=int)
    a("--base-lr", type=float, help="initial learning rate (poly decay per iteration)")
    a("--img-size", type=int, help="training and inference slice size in pixels")
    a("--eval-interval", type=int, help="validate every N epochs (and after the last)")
    a("--eval-from-epoch", type=int, metavar="E",
      help="validate from epoch E on (SelfReg's checkpoint sweep: 82, every 2)")
    a("--lr-batch-rule", choices=("batch24",),
      help="scale --base-lr by batch/24 when the batch is a multiple of 6 other than 24 "
      "(Swin-Unet, SelfReg scripts; their recipes set it)")
    a("--seed", type=int)
    a("--num-workers", type=int, help="DataLoader worker processes")
    a("-o", "--output", help="run folder (default runs/<model>-<dataset>); a non-empty folder is "
      "refused unless --resume or --overwrite")
    a("--overwrite", action="store_true",
      help="replace the run already in --output (deletes only that run's own files; files "
      "you put there stay)")
    a("--loss", help="ce_dice, bce_dice, ce or dice")
    a("--loss-weights", type=float, nargs="+", metavar="W", help="weights of the loss terms")
    a("--optimizer", help="sgd, adam or adamw")
    a("--momentum", type=float)
    a("--weight-decay", type=float)
    a("--lr-schedule", choices=("poly", "constant"))
    a("--amp", action="store_true", default=None, help="mixed precision (CUDA only)")
    a("--precision", metavar="{fp32,bf16}",
      help="fp32 (default) or bf16 autocast, on CPUs with AMX or AVX512-BF16 and on bf16 "
      "GPUs only (refused elsewhere); the test after training runs in fp32")
    a("--resume", nargs="?", const="latest", metavar="CKPT",
      help="continue a run exactly; bare --resume uses <output>/checkpoints/latest.pt")
    a("--deep-supervision", action="store_true", default=None,
      help="train every decoder head (UNet++, UNet3+; see --deep-supervision-loss)")
    a("--deep-supervision-weights", type=float, nargs="+", metavar="W")
    a("--deep-supervision-loss", choices=("auto", "sum", "weighted", "mutation"),
      help="combine the heads: auto (default: the model's source; sum for UNet++/UNet 3+, "
      "mutation for EMCAD), sum, weighted (mean) or mutation (EMCAD: every subset)")
    a("--distill", type=float, nargs="?", const=0.015, metavar="LAMBDA",
      help="SelfReg feature distillation; LAMBDA weights both terms (default 0.015)")
    a("--distill-ifd", type=float, metavar="L", help="weight of internal feature distillation")
    a("--distill-scr", type=float, metavar="L", help="weight of semantic consistency")
    a("--augment", metavar="RECIPE",
      help="augmentation recipe (default: the dataset's; 'none' resizes only)")
    a("--max-cases", type=int, help="use only the first N training cases")
    a("--val-fraction", type=float, help="share of training cases held out (default 0.1)")
    a("--val-cases", type=int, help="evaluate at most N validation cases per epoch")
    a("--fold", type=int, metavar="K",
      help="train fold K (0-4) of nnU-Net's 5-fold cross-validation: a seeded split of the "
      "training cases, stored once in the user cache and copied to the run folder; the "
      "fold's validation cases are its validation set (default run folder .../fold_K)")
    a("--model-option", action="append", default=None, metavar="KEY=VALUE",
      help="architecture option (repeatable), e.g. base_channels=16")
    a("--encoder-weights", metavar="PATH|imagenet|none",
      help="pretrained encoder: a local weight file, 'imagenet' (the release file in the "
      "torch hub cache, hash-checked; downloaded when absent) or 'none' (random init); "
      "same as --model-option encoder_weights=...")
    a("--dataset-option", action="append", default=None, metavar="KEY=VALUE",
      help="dataset reader option (repeatable), e.g. n_train=4 for the phantom")
    a("--no-test", dest="test", action="store_false", default=None,
      help="skip the test run after training")
    a("--select", choices=("final", "best"),
      help="checkpoint the test after training scores: final (default: the last epoch, "
      "checkpoints/final.pt, as nnU-Net) or best (the best validation epoch, best.pt)")
    a("--test-max-cases", type=int)
    a("--protocol", choices=("strict", "transunet"), help="empty-mask metric protocol")
    a("--device", help="cpu or cuda (default: cuda when available)")
    a("--no-progress", dest="progress", action="store_false", default=None)
    return p


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


def flag_values(args: argparse.Namespace) -> dict[str, Any]:
    """Config keys given explicitly on the command line."""
    flags = {k: getattr(args, k) for k in _KEYS if getattr(args, k, None) is not None}
    for key in ("test", "progress"):
        if getattr(args, key, None) is not None:
            flags[key] = getattr(args, key)
    for dest, key in (("model_option", "model_options"), ("dataset_option", "dataset_options")):
        opts = _key_values(getattr(args, dest, None), "--" + dest.replace("_", "-"))
        if opts:
            flags[key] = opts
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


def _plan(args, ds, name, root, ds_opts, file_values, flags, resumed):
    """A dataset without a source recipe gets a plan (:mod:`unetzoo.data.plan`); a
    resumed planned run keeps its checkpoint's."""
    from unetzoo.data.plan import plan_training, wants_plan

    budget = {"iterations": getattr(args, "iterations", None),
              "time_budget": getattr(args, "time_budget", None)}
    if resumed is not None:
        if resumed.spec.plan is not None:
            ds.plan = resumed.spec.plan
        return ds, file_values
    if wants_plan(ds, file_values, flags):
        from unetzoo.engine.distributed import resolve_device

        device = str(resolve_device(flags.get("device", file_values.get("device"))))
        return plan_training(name, root, ds_opts, file_values, flags, device=device, **budget)
    given = [f"--{k.replace('_', '-')}" for k, v in budget.items() if v is not None]
    if given:
        raise ConfigError(f"{' and '.join(given)} size(s) a planned run (an nnU-Net folder "
                          "on the default recipe); this run follows a recipe: use "
                          "--max-epochs")
    return ds, file_values


def run(args: argparse.Namespace) -> int:
    from unetzoo.data import get_dataset
    from unetzoo.engine.checkpoint import read_checkpoint
    from unetzoo.engine.config import load_yaml, require_pretrained_encoder, resolve_config
    from unetzoo.engine.trainer import train
    from unetzoo.models import get_entry

    file_values = load_yaml(args.config) if args.config else {}
    flags = flag_values(args)
    resume = None
    if args.resume and getattr(args, "overwrite", False):
        raise ConfigError("--resume continues the run in --output and --overwrite replaces it; "
                          "pass one of them")
    if args.resume:
        if args.resume == "latest":
            out = flags.get("output") or file_values.get("output")
            if not out:
                raise ConfigError("bare --resume needs --output (the run folder to continue)")
            from unetzoo.engine.run_folder import RunLayout

            resume = RunLayout(out).latest
        else:
            resume = Path(args.resume)
        ck = read_checkpoint(resume)
        file_values = {**ck.config, **file_values}
    if "model" in flags or "model" in file_values:
        get_entry(flags.get("model") or file_values["model"])  # unknown model: fail fast
    name = flags.get("dataset", file_values.get("dataset"))
    root = flags.get("data_root", file_values.get("data_root"))
    ds_opts = {**(file_values.get("dataset_options") or {}), **flags.get("dataset_options", {})}
    ds = get_dataset(name, root, **ds_opts)
    ds, file_values = _plan(args, ds, name, root, ds_opts, file_values, flags,
                            ck if resume else None)
    cfg = require_pretrained_encoder(resolve_config(ds.recipe, file_values, flags))
    if cfg.precision != "fp32":  # refused in one line before the run folder is made
        from unetzoo.engine.backends import check_precision
        from unetzoo.engine.distributed import resolve_device

        check_precision(cfg.precision, resolve_device(cfg.device))
    overwrite = bool(getattr(args, "overwrite", False))
    summary = train(cfg, dataset=ds, resume=resume, overwrite=overwrite)
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
