"""``unetzoo bench``: the zoo table (cost of every registered model).

The measurement itself (columns, one subprocess per model, fvcore MACs) lives in
:mod:`unetzoo.measure`; this module is its command line.
"""

from __future__ import annotations

import argparse
import json
import sys

from unetzoo.errors import ConfigError
from unetzoo.measure import format_rows, machine_text, select_models, zoo_rows


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "bench",
        help="zoo table: params, MACs, latency, training throughput, memory",
        description="Measure every registered model (or those matching --models): "
        "parameters, fvcore MACs, batch-1 forward latency, training images/s and peak "
        "memory, each model in a fresh subprocess. Prints a Markdown table.",
    )
    add_zoo_arguments(p)
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    p.add_argument("--tiny", action="store_true", help="size 32, batch 2, one repeat")
    return p


def add_zoo_arguments(p: argparse.ArgumentParser, repeats: bool = True) -> None:
    """The zoo-table options shared by ``unetzoo bench`` and benchmarks/bench_zoo.py."""
    p.add_argument("--models", default=None,
                   help="wildcard pattern(s), comma separated (default: every model)")
    p.add_argument("--size", type=int, default=224, help="image side (default 224)")
    p.add_argument("--batch", type=int, default=8, help="training batch (default 8)")
    p.add_argument("--classes", type=int, default=9, help="output classes (default 9)")
    if repeats:
        p.add_argument("--repeats", type=int, default=5, help="max timed repeats (default 5)")
    p.add_argument("--budget", type=float, default=20.0,
                   help="seconds of timing per measurement; fewer repeats for big models")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: cuda if available)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice); 1 helps on an "
                   "oversubscribed machine")
    p.add_argument("--in-process", action="store_true",
                   help="measure in this process (faster; memory figures not per model)")


def run(args: argparse.Namespace) -> int:
    """Measure the selected models and print the table (and write JSON with --json)."""
    if args.tiny:
        args.size, args.batch, args.repeats, args.budget = 32, 2, 1, 1.0
    if args.size < 8 or args.batch < 1 or args.repeats < 1:
        raise ConfigError("--size must be >= 8, --batch and --repeats >= 1")
    from unetzoo.engine.distributed import check_device, resolve_device

    resolve_device(args.device)  # `--device tpu9` / cuda without a GPU: one line
    args.device = check_device(args.device)
    names = select_models(args.models)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = zoo_rows(names, args.size, args.batch, args.classes, args.repeats, args.budget,
                    args.device, args.in_process,
                    progress=lambda s: print(s, file=sys.stderr, flush=True),
                    threads=args.threads)
    print(f"## Zoo table ({args.size}x{args.size}, 1 channel, {args.classes} classes)\n")
    print(machine_text() + "\n")
    print(format_rows(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"machine": machine_text(), "rows": rows}, fh, indent=2, default=str)
    return 0
