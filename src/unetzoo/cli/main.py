"""``unetzoo <command> ...``: the dispatcher.

Each subcommand lives in ``unetzoo/cli/<command>.py`` and exposes
``register(subparsers) -> argparse.ArgumentParser`` and ``run(args) -> int``.
User-fixable errors (:class:`unetzoo.errors.UnetzooError`) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Sequence

from unetzoo.errors import UnetzooError

# Module names under unetzoo.cli, in the order `unetzoo --help` lists them.
COMMAND_MODULES = (
    "list_models",
    "plan",
    "train",
    "test",
    "predict",
    "postprocess",
    "prepare",
    "ablate",
    "bench",
    "export",
    "demo",
)


class StrictParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that takes flags only as spelled (no ``--out`` for
    ``--output``): an abbreviation that works today would break when a flag is added.
    Sub-command parsers are of this class too (``add_subparsers`` uses the parent's)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from unetzoo import __version__

    parser = StrictParser(
        prog="unetzoo",
        description="Train, test, compare and deploy U-Net family models for medical "
        "image segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"unetzoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in COMMAND_MODULES:
        module = importlib.import_module(f"unetzoo.cli.{mod_name}")
        p = module.register(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 1
    try:
        return int(args._run(args) or 0)
    except UnetzooError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `unetzoo list-models | head`: the reader left
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # the machine's answer (disk full, not a folder, no permission)
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 2


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error that reached the CLI: what and where.

    Writers that know their file name say it themselves (``disk full at PATH``); this
    is the net for the rest, e.g. a report file on a full disk or ``--output`` naming a file.
    """
    where = exc.filename or "the output folder"
    if exc.errno == errno.ENOSPC:
        return f"disk full at {where}; free space and run again"
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{reason}: {where}"


if __name__ == "__main__":
    raise SystemExit(main())
