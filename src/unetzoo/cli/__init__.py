"""Command-line interface: one module per subcommand, dispatched by :mod:`unetzoo.cli.main`."""

import argparse


def add_output_option(parser: argparse.ArgumentParser, *, required: bool = False,
                      default: str | None = None, help: str) -> None:
    """``-o/--output`` (dest ``output``), the one spelling across subcommands, with the old
    ``--out`` kept as a hidden alias (not in ``--help``; scripts that use it still run)."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("-o", "--output", dest="output", default=default, metavar="PATH", help=help)
    group.add_argument("--out", dest="output", default=default, help=argparse.SUPPRESS)
