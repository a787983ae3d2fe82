"""Importing the report code must not switch the caller's matplotlib backend (issue 14)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

CHECK = """
import matplotlib
before = matplotlib.get_backend()
import unetzoo.engine.evaluation  # noqa: F401
import unetzoo.engine.logging.plots as plots
plots.overlay_png({png!r}, __import__("numpy").zeros((8, 8)), __import__("numpy").ones((8, 8), int),
                  ["bg", "fg"])
import sys
print(before, matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""


def test_import_and_drawing_keep_the_callers_backend(tmp_path):
    png = tmp_path / "o.png"
    env = {**os.environ, "MPLBACKEND": "svg", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHECK.format(png=str(png))], env=env,
                         capture_output=True, text=True, check=True, timeout=120)
    before, after, pyplot_loaded = out.stdout.split()
    assert before == after == "svg"
    assert pyplot_loaded == "False"  # no global pyplot state created either
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # drawn on its own Agg canvas


def test_plot_history_writes_pngs(tmp_path):
    from unetzoo.engine.logging.plots import plot_history

    rows = [{"epoch": 1, "loss": 1.0, "val_dice": 0.2, "val_hd95": 9.0},
            {"epoch": 2, "loss": 0.5, "val_dice": 0.4, "val_hd95": float(np.float64(7.0))}]
    written = plot_history(rows, tmp_path)
    assert [p.name for p in written] == ["loss.png", "val_metrics.png"]
    assert all(p.stat().st_size > 0 for p in written)
