"""``unetzoo plan``: fingerprint an nnU-Net raw folder and write its training plan.

The plan (:mod:`unetzoo.data.plan`, docs/planning.md) is what ``unetzoo train --data-root
D`` makes itself for a dataset without a source recipe; this command shows it and writes
``plans.json`` (the fingerprint included) without training.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "plan",
        help="fingerprint a dataset and write its training plan (plans.json)",
        description="Fingerprint an nnU-Net raw folder (shapes, spacings, foreground "
        "intensities, class shares) and plan its 2-D training as nnU-Net does: target "
        "spacing, patch and batch size, normalisation, model, augmentation, iterations.",
    )
    a = p.add_argument
    a("--data-root", required=True, help="the dataset folder (nnU-Net raw layout)")
    a("--dataset", help="reader (default: nnunet when the folder holds a dataset.json)")
    a("-o", "--output", default="plans.json",
      help="where to write the plan (default ./plans.json); an existing file is refused "
      "unless --overwrite")
    a("--overwrite", action="store_true", help="replace an existing --output file")
    a("--model", help="the model to plan for (default resnet34_unet)")
    a("--iterations", type=int, metavar="N", help="training iterations (default 1000)")
    a("--time-budget", type=float, metavar="MINUTES",
      help="as many iterations as fit in MINUTES at the step time measured here")
    a("--device", help="where to measure the step time (default: cuda when available)")
    a("--dataset-option", action="append", default=None, metavar="KEY=VALUE",
      help="reader option (repeatable), e.g. slice_axis=2")
    a("-q", "--quiet", action="store_true", help="print only the summary line")
    return p


def run(args: argparse.Namespace) -> int:
    from unetzoo.cli.train import _key_values
    from unetzoo.data.plan import DEFAULT_MODEL, plan_dataset
    from unetzoo.engine.distributed import resolve_device
    from unetzoo.errors import ConfigError
    from unetzoo.models import get_entry

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it or another --output")
    model = args.model or DEFAULT_MODEL
    get_entry(model)  # an unknown model: one line before any reading
    plan = plan_dataset(
        args.dataset, args.data_root, _key_values(args.dataset_option, "--dataset-option"),
        model=model, iterations=args.iterations, time_budget=args.time_budget,
        device=str(resolve_device(args.device)), verbose=not args.quiet,
    )
    plan.save(out)
    print(plan.summary())
    print(f"wrote {out}")
    return 0
