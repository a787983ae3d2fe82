"""``unetzoo list-models [PATTERN]`` and ``unetzoo list-models --info NAME``.

The table shows, per registered model, its parameter count at the default configuration
(``in_channels=1``, ``num_classes=2``, counted on the meta device: nothing is allocated),
the first published figure with the configuration it refers to, and a one-line
description. ``PATTERN`` takes shell wildcards (``"resnet*"``); a plain name that is not
registered gives one error line naming the closest names.
"""

from __future__ import annotations

import argparse
import fnmatch
from typing import Any

import torch

from unetzoo.errors import ModelError
from unetzoo.models import create_model, get_entry, list_models, parameter_count
from unetzoo.models.registry import ModelEntry, PublishedParams


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``list-models`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "list-models",
        help="list registered models with parameter counts",
        description="List registered models: parameters at the default configuration "
        "(1 input channel, 2 classes), the published figure and a description.",
    )
    p.add_argument("pattern", nargs="?", help="name or wildcard pattern, e.g. 'resnet*'")
    p.add_argument("--info", metavar="NAME", help="show everything known about one model")
    return p


def _count(name: str) -> str:
    try:
        return f"{parameter_count(name):,}"
    except Exception:  # a broken entry must not hide the rest of the table
        return "?"


def _config_text(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in config.items())


def _published_cell(pub: tuple[PublishedParams, ...]) -> str:
    if not pub:
        return "-"
    first = pub[0]
    cfg = first.config
    short = f"{cfg.get('in_channels', '?')}in/{cfg.get('num_classes', '?')}cls"
    extra = {k: v for k, v in cfg.items() if k not in ("in_channels", "num_classes")}
    if extra:
        short += ", " + _config_text(extra)
    more = f" (+{len(pub) - 1})" if len(pub) > 1 else ""
    return f"{first.count:,} ({short}){more}"


def format_table(names: list[str]) -> str:
    """The model table as text: name | params | published | description."""
    header = ("name", "params (1in/2cls)", "published", "description")
    rows = [header]
    for name in names:
        entry = get_entry(name)
        rows.append((name, _count(name), _published_cell(entry.published), entry.description))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].rjust(widths[1]), row[2].ljust(widths[2])]
        lines.append("  ".join([*cells, row[3]]).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * len(header[3]))
    return "\n".join(lines)


def format_info(entry: ModelEntry) -> str:
    """Everything the registry knows about one model, as text."""
    lines = [f"name:        {entry.name}"]
    if entry.aliases:
        lines.append(f"aliases:     {', '.join(entry.aliases)}")
    lines += [
        f"family:      {entry.family}",
        f"description: {entry.description}",
        f"source:      {entry.source}",
        f"parameters:  {_count(entry.name)} (default options, in_channels=1, num_classes=2)",
    ]
    for pub in entry.published:
        lines.append(f"published:   {pub.count:,} with {_config_text(pub.config)}")
        lines.append(f"             source: {pub.source}")
    for src in entry.pretrained:  # registry data: where each encoder_weights value comes from
        lines.append(f"pretrained:  encoder_weights={src.tag!r} <- {src.url}")
        if src.note:
            lines.append(f"             {src.note}")
    lines.append("options (defaults):")
    for key, value in entry.default_options().items():
        lines.append(f"  {key} = {value!r}")
    taps = None
    if entry.taps is not None:
        try:
            with torch.device("meta"):
                taps = entry.taps_for(create_model(entry.name))
        except Exception:
            taps = None
    if taps is not None:
        lines.append(f"taps:        encoder {', '.join(taps.encoder)}")
        lines.append(f"             decoder {', '.join(taps.decoder)}; final {taps.final}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the table (or one model's info); 0 on success, errors raise ModelError."""
    if args.info:
        print(format_info(get_entry(args.info)))
        return 0
    pattern = args.pattern
    if pattern and not any(ch in pattern for ch in "*?["):
        names = [get_entry(pattern).name]  # unknown name -> ModelError with suggestions
    else:
        names = list_models(pattern)
        if not names:
            all_names = list_models()
            close = [n for n in all_names if fnmatch.fnmatch(n, f"*{pattern.strip('*')}*")]
            hint = f"; similar: {', '.join(close[:5])}" if close else ""
            raise ModelError(f"no registered model matches {pattern!r}{hint}")
    print(format_table(names))
    return 0
