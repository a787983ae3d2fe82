"""``unetzoo postprocess``: decide largest-component post-processing on cross-validation.

nnU-Net's step after training the folds: every fold model predicts its own validation
cases, and removing all but the largest connected component (of the foreground, then of
each class) is kept only where it improves the mean Dice over those cases. The plan is
written as ``postprocessing.json`` beside every checkpoint, where ``unetzoo predict``
applies it.
"""

from __future__ import annotations

import argparse
import math


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "postprocess",
        help="decide largest-component post-processing on the folds' validation cases",
        description="Give the final.pt of every fold run (`unetzoo train --fold K`). Each "
        "model predicts its own validation cases; removing all but the largest connected "
        "component is kept where it improves the mean Dice (nnU-Net's rule). The plan is "
        "written as postprocessing.json beside each checkpoint; `unetzoo predict` applies it.",
    )
    a = p.add_argument
    a("--checkpoint", action="append", required=True, metavar="CKPT",
      help="a fold run's checkpoint; repeat once per fold")
    a("--batch-size", type=int, default=16, help="slices per forward pass")
    a("--device", help="cpu, cuda, cuda:N or mps (default: cuda when available)")
    a("--dry-run", action="store_true", help="print the decision, write nothing")
    a("--overwrite", action="store_true",
      help="replace a postprocessing.json beside a checkpoint that unetzoo did not write")
    return p


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def run(args: argparse.Namespace) -> int:
    from unetzoo.engine.distributed import check_device, resolve_device
    from unetzoo.engine.postprocess import PLAN_FILE, crossval_postprocessing
    from unetzoo.errors import ConfigError

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    resolve_device(args.device)
    plan = crossval_postprocessing(
        args.checkpoint, device=check_device(args.device), batch_size=args.batch_size,
        write=not args.dry_run, verbose=True, overwrite=args.overwrite,
    )
    print(f"{plan['cases']} validation case(s) of fold(s) {plan['folds']}")
    print(f"{'class':<16} {'Dice before':>12} {'Dice after':>12}")
    for name, before in plan["dice_before"].items():
        print(f"{name:<16} {_fmt(before):>12} {_fmt(plan['dice_after'][name]):>12}")
    names = plan.get("class_names") or []

    def name(c: int) -> str:
        return names[c] if c < len(names) else str(c)

    steps = ", ".join("+".join(name(c) for c in s["classes"]) for s in plan["steps"]) or "none"
    print(f"keep-largest-component steps: {steps}")
    if not args.dry_run:
        print(f"plan written as {PLAN_FILE} beside each checkpoint")
    return 0
