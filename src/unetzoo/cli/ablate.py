"""``unetzoo ablate --ladder resunet [--dataset D] [train flags]``: train a whole ladder.

Every rung is trained with the same recipe and seed through the training pipeline (the
flags are those of ``unetzoo train``, minus ``--model``/``--output``/``--resume``), then
tested; ``<output-dir>/ablation.md`` and ``ablation.csv`` compare the rungs. Running the
command again resumes: finished rungs are kept, a half-trained rung continues from its
last checkpoint.
"""

from __future__ import annotations

import argparse

from unetzoo.errors import ConfigError


class _Rename:
    """Lets ``unetzoo.cli.train.register`` build its flags on the ``ablate`` parser."""

    def __init__(self, subparsers) -> None:
        self._sub = subparsers

    def add_parser(self, name: str, **kwargs):
        return self._sub.add_parser(
            "ablate",
            help="train every rung of an ablation ladder and compare them in one table",
            description=__doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
        )


def register(subparsers) -> argparse.ArgumentParser:
    from unetzoo.cli import train as train_cli

    p = train_cli.register(_Rename(subparsers))
    for action in p._actions:  # train flags that ablate sets per rung
        if action.dest in ("model", "output", "resume"):
            action.help = argparse.SUPPRESS
    p.add_argument("--ladder", required=True, help="ladder name: resunet")
    p.add_argument(
        "--rungs", nargs="+", metavar="RUNG",
        help="train only these rungs (e.g. v0_1 v1_0, or 0.1,1.0); default: all",
    )
    p.add_argument(
        "--output-dir", help="ladder folder (default runs/ablate-<ladder>-<dataset>)"
    )
    for action in p._actions:  # train's --encoder-weights, with the ladder's meaning
        if action.dest == "encoder_weights":
            action.default, action.metavar = "default", "W"
            action.help = ("'default' (each rung's own: ImageNet for v0.2+), 'none' or a local "
                           "torchvision checkpoint for the rungs that default to pretrained weights")
    p.add_argument("--retrain", action="store_true", help="retrain finished rungs too")
    return p


def run(args: argparse.Namespace) -> int:
    from unetzoo.cli.train import flag_values
    from unetzoo.engine.ablation import run_ladder
    from unetzoo.engine.config import load_yaml

    for flag in ("model", "output", "resume"):
        if getattr(args, flag, None):
            raise ConfigError(
                f"ablate chooses --{flag} per rung; drop it (the ladder folder is "
                "--output-dir; re-running resumes)"
            )
    file_values = load_yaml(args.config) if args.config else {}
    for key in ("model", "output"):
        file_values.pop(key, None)
    weights, args.encoder_weights = args.encoder_weights, None  # per rung, not every rung
    flags = flag_values(args)
    rows = run_ladder(
        args.ladder,
        flags.pop("dataset", file_values.get("dataset")),
        data_root=flags.pop("data_root", file_values.get("data_root")),
        output=args.output_dir,
        rungs=args.rungs,
        file_values=file_values,
        flag_values=flags,
        encoder_weights=weights,
        retrain=args.retrain,
    )
    print(f"{len(rows)} rung(s) in the table")
    return 0
