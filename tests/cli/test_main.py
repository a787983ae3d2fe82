"""The dispatcher: every subcommand module is listed, imported and registered."""

from __future__ import annotations

import argparse
from pathlib import Path

import unetzoo.cli
from unetzoo.cli.main import COMMAND_MODULES, build_parser


def test_every_subcommand_module_is_listed_and_registered():
    # No "not written yet" guard: a listed module that fails to import fails the parser.
    files = {p.stem for p in Path(unetzoo.cli.__file__).parent.glob("*.py")}
    assert set(COMMAND_MODULES) == files - {"__init__", "main"}
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(sub.choices) == len(COMMAND_MODULES)
    assert all(callable(p.get_default("_run")) for p in sub.choices.values())
