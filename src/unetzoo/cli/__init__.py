"""Command-line interface: one module per subcommand, dispatched by :mod:`unetzoo.cli.main`."""

import argparse


def add_output_option(parser: argparse.ArgumentParser, *, required: bool = False,
                      default: str | None = None, help: str) -> None:
    """``-o/--output`` (dest ``output``), the one spelling across subcommands."""
    parser.add_argument("-o", "--output", dest="output", required=required, default=default,
                        metavar="PATH", help=help)


def add_postprocessing_options(parser: argparse.ArgumentParser) -> None:
    """``--postprocessing PLAN.json`` | ``--no-postprocessing``, shared by test and predict."""
    pp = parser.add_mutually_exclusive_group()
    pp.add_argument("--postprocessing", metavar="PLAN.json",
                    help="apply this post-processing plan (default: the plan stored beside "
                    "the (first) checkpoint by `unetzoo postprocess`, when there is one)")
    pp.add_argument("--no-postprocessing", action="store_true",
                    help="ignore a stored post-processing plan")
