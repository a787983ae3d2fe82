"""The phantom demo model: the checkpoint ``make demo`` trains, or a tiny one trained here.

``make demo`` runs ``unetzoo train --output runs/demo`` and leaves
``runs/demo/checkpoints/final.pt``. When that is missing, :func:`train_demo_model` runs
``unetzoo train`` (a subprocess: the pipeline's own trainer, so the checkpoint is an
ordinary one) on the phantom with a narrow U-Net for a few epochs, and yields its log
lines so the web app can show progress.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from unetzoo.engine.selection import find_run_checkpoint
from unetzoo.errors import ConfigError

MAKE_DEMO_RUN = Path("runs") / "demo"
# The phantom recipe (native 128 px slices, AdamW) at half width and half the epochs:
# a couple of minutes on two CPU cores.
TINY_TRAIN_ARGS = (
    "--max-epochs", "6", "--model-option", "base_channels=8", "--num-workers", "0",
    "--no-test", "--no-progress",
)


def demo_cache_dir() -> Path:
    """Where the tiny demo model lives: ``$UNETZOO_CACHE/demo-model`` (or ~/.cache/unetzoo)."""
    root = os.environ.get("UNETZOO_CACHE") or str(Path.home() / ".cache" / "unetzoo")
    return Path(root) / "demo-model"


def find_demo_checkpoint(extra_dirs: tuple[Path, ...] = ()) -> Path | None:
    """The first phantom demo checkpoint found: ``runs/demo``, the tiny model, ``extra_dirs``."""
    for run_dir in (MAKE_DEMO_RUN, demo_cache_dir(), *extra_dirs):
        ck = find_run_checkpoint(run_dir)
        if ck is not None:
            return ck
    return None


def train_demo_model(out_dir: Path | None = None, extra_args: tuple[str, ...] = ()) -> Iterator[str]:
    """Train the tiny phantom model with ``unetzoo train``; yield its output line by line.

    The last line yielded is ``"checkpoint: <path>"``. Raises :class:`ConfigError` when
    training fails (with the trainer's last line).
    """
    out = Path(out_dir) if out_dir else demo_cache_dir()
    if find_run_checkpoint(out) is not None:
        yield f"checkpoint: {find_run_checkpoint(out)}"
        return
    # A previous attempt that died half way is started over: --overwrite replaces that
    # run's own files and nothing else (never rmtree a folder the user may have used).
    cmd = [sys.executable, "-m", "unetzoo", "train", "--output", str(out), "--overwrite",
           *TINY_TRAIN_ARGS, *extra_args]
    yield "training the phantom demo model: " + " ".join(cmd[2:])
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    last = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            last = line
            yield line
    if proc.wait() != 0 or find_run_checkpoint(out) is None:
        raise ConfigError(f"training the demo model failed: {last or 'no output'}")
    yield f"checkpoint: {find_run_checkpoint(out)}"
