"""Which checkpoint a finished run scores: the final epoch by default, ``--select best``
the best validation epoch.

nnU-Net predicts with ``checkpoint_final`` and the papers' protocols test the last epoch;
a best epoch chosen on a small validation split (often one case of other anatomy than the
test cases) is a noisy pick. So a finished run writes ``checkpoints/final.pt`` (a copy of
the last epoch's ``latest.pt``, :func:`write_final`) and scores it; ``best.pt`` is still
written every time validation improves, and ``select = "best"`` scores it instead.
:func:`choose_checkpoint` names the file and says why, for the report's ``summary.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unetzoo.engine.checkpoint import copy_checkpoint, read_train_state
from unetzoo.engine.config import SELECTIONS
from unetzoo.engine.run_folder import RunLayout
from unetzoo.errors import ConfigError


@dataclass(frozen=True)
class Selection:
    """The checkpoint a run's test scores: its path, the rule that chose it and why."""

    path: Path
    select: str | None  # "final", "best", or None (a checkpoint given to `unetzoo test`)
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"select": self.select, "reason": self.reason}


def write_final(layout: RunLayout, *,
                on_written: Callable[[Path], None] | None = None) -> Path | None:
    """Copy ``latest.pt`` to ``final.pt`` (atomically) at the end of training; returns
    ``final.pt``, or None when there is no ``latest.pt`` to copy.

    Called on every finished run, so a run resumed after it finished (or after a kill
    between the last ``latest.pt`` and ``final.pt``) gets its ``final.pt``; a ``final.pt``
    that already holds the same epoch and iteration is left as it is. ``on_written``: as
    for :func:`~unetzoo.engine.checkpoint.write_checkpoint`.
    """
    latest = read_train_state(layout.latest)
    if latest is None:
        return None
    final = read_train_state(layout.final)
    if final is not None and (final.epoch, final.iteration) == (latest.epoch, latest.iteration):
        return layout.final
    return copy_checkpoint(layout.latest, layout.final, on_written=on_written)


def choose_checkpoint(
    layout: RunLayout, select: str, *, paper_protocol: bool = False, validated: bool = True,
    best_metric: float = math.nan,
) -> Selection:
    """The checkpoint a finished run's test scores under ``select``, and why.

    Args:
        layout: the run folder.
        select: ``"final"`` (the last epoch, ``final.pt``) or ``"best"`` (``best.pt``).
        paper_protocol: the run follows the published protocol (always the last epoch).
        validated: the run had a validation split (without one ``best.pt`` is only the
            last epoch again, so ``"best"`` scores ``final.pt`` and says so).
        best_metric: the best mean validation Dice, for the reason (NaN or -inf: none).

    Raises:
        ConfigError: ``select`` is not one of :data:`SELECTIONS`.
    """
    if select not in SELECTIONS:
        raise ConfigError(f"unknown select {select!r}; choose one of {', '.join(SELECTIONS)}")
    if paper_protocol:
        return Selection(layout.final, "final", "final epoch (--paper-protocol: the "
                         "published protocol tests the last epoch)")
    if select == "best" and not validated:
        return Selection(layout.final, "final", "final epoch (--select best had no "
                         "validation split to choose on)")
    if select == "best":
        score = (f"mean validation Dice {best_metric:.4f}" if math.isfinite(best_metric)
                 else "no validation scored a class: the first validated epoch")
        return Selection(layout.best, "best", f"best validation epoch (--select best; {score})")
    return Selection(layout.final, "final",
                     "final epoch (default; --select best picks the best validation epoch)")


def find_run_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint of a run folder that its own test scored (``report/summary.json``
    names it), else ``final.pt``, else ``latest.pt`` (an unfinished run); None when the
    folder has none of them. Never ``best.pt`` unless the run's report scored it."""
    layout = RunLayout(run_dir)
    try:
        summary = json.loads(layout.report.summary_json.read_text())
        named = layout.checkpoints / Path(str(summary["scored"]["file"])).name
    except (OSError, ValueError, KeyError, TypeError):
        named = None
    return next((p for p in (named, layout.final, layout.latest)
                 if p is not None and p.is_file()), None)


def run_checkpoint(path: str | Path) -> Path:
    """``path`` itself when it is not a folder; for a run folder (``unetzoo train
    --output``) :func:`find_run_checkpoint`, so ``unetzoo test RUN``, ``predict
    --checkpoint RUN`` and ``export --checkpoint RUN`` use what the run's report used."""
    path = Path(path)
    if not path.is_dir():
        return path
    found = find_run_checkpoint(path)
    if found is None:
        raise ConfigError(f"{path} is a folder without checkpoints/final.pt or latest.pt; "
                          "pass a .pt file or a run folder written by `unetzoo train`")
    return found
