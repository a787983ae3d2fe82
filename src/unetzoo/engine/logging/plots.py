"""metrics.csv per epoch, PNG plots of the history, and label overlays (matplotlib Agg).

Figures are drawn on their own Agg canvas (``Figure`` + ``FigureCanvasAgg``), never
through pyplot: importing this module (or the evaluation that uses it) leaves the
caller's matplotlib backend, e.g. a notebook's, untouched, and no figure is left open.

Colours, intensity window and orientation of the overlays come from
:mod:`unetzoo.engine.logging.display`, the one home of how slices are shown."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from unetzoo.engine.logging.display import (
    ALPHA,
    ERROR_COLORS,
    class_colors,
    slice_orientation,
    slice_panels,
)

# Axes-fraction position and alignment of each orientation marker.
_MARKER_SPOTS = {
    "top": (0.5, 0.98, "center", "top"), "bottom": (0.5, 0.02, "center", "bottom"),
    "left": (0.02, 0.5, "left", "center"), "right": (0.98, 0.5, "right", "center"),
}


class MetricsLog:
    """Rows of per-epoch scalars, rewritten to ``metrics.csv`` after every epoch.

    Columns are the union of all keys seen so far (``epoch`` first), so terms that
    appear later (a distillation term, validation Dice) still get a column.
    """

    def __init__(self, path: str | Path, rows: list[dict[str, Any]] | None = None):
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = list(rows or [])

    def append(self, row: dict[str, Any]) -> None:
        """Add (or replace, same epoch) a row and rewrite the file."""
        self.rows = [r for r in self.rows if r.get("epoch") != row.get("epoch")] + [row]
        self.write()

    def columns(self) -> list[str]:
        cols: list[str] = ["epoch"]
        for r in self.rows:
            for k in r:
                if k not in cols:
                    cols.append(k)
        return cols

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns())
            writer.writeheader()
            for r in self.rows:
                writer.writerow({k: _fmt(v) for k, v in r.items()})
        tmp.replace(self.path)


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def plot_history(rows: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write ``loss.png`` (every training loss term and the validation loss) and
    ``val_metrics.png`` (val Dice, HD95).

    Returns the written paths (only plots that have data).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    epochs = [r["epoch"] for r in rows]
    loss_keys = [k for k in _keys(rows) if k.startswith("loss") or k == "val_loss"]
    if loss_keys and epochs:
        fig, ax = _figure(1, 1, (6, 4))
        for k in loss_keys:
            xs, ys = _series(rows, k)
            ax.plot(xs, ys, marker="o", ms=3, label=k)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_yscale("log" if all(y > 0 for k in loss_keys for y in _series(rows, k)[1]) else "linear")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(_save(fig, out / "loss.png"))
    xs_d, dice = _series(rows, "val_dice")
    xs_h, hd = _series(rows, "val_hd95")
    if dice:
        fig, ax = _figure(1, 1, (6, 4))
        ax.plot(xs_d, dice, marker="o", color="tab:blue", label="val Dice")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean Dice (validation)", color="tab:blue")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        if hd:
            ax2 = ax.twinx()
            ax2.plot(xs_h, hd, marker="s", color="tab:red", label="val HD95")
            ax2.set_ylabel("mean HD95 (validation)", color="tab:red")
        fig.tight_layout()
        written.append(_save(fig, out / "val_metrics.png"))
    return written


def _keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    return keys


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(r["epoch"])
            ys.append(float(v))
    return xs, ys


def _figure(rows: int, cols: int, size: tuple[float, float]) -> tuple[Figure, Any]:
    """A figure on its own Agg canvas and its axes (as ``plt.subplots`` returns them)."""
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols)


def _save(fig: Figure, path: Path) -> Path:
    from unetzoo.data.io import atomic_path

    with atomic_path(path) as tmp:  # replaced, never rewritten in place
        fig.savefig(tmp, dpi=100, format=Path(path).suffix.lstrip(".") or "png")
    return path


def overlay_png(
    path: str | Path,
    image: np.ndarray,
    pred: np.ndarray,
    class_names: Sequence[str],
    gt: np.ndarray | None = None,
    title: str = "",
    alpha: float = ALPHA,
    *,
    affine: np.ndarray | None = None,
    window: tuple[float, float] | None = None,
    ignore_label: int | None = None,
) -> Path:
    """Save image | ground truth | prediction | error map panels with a class legend,
    in radiological orientation with L/R/A/P/S/I markers (:mod:`.display`).

    Args:
        image: ``(H, W)`` intensities (first channel of the input).
        pred: ``(H, W)`` integer labels.
        gt: ``(H, W)`` labels or None (then only image and prediction).
        affine: the case's ``(d, h, w)`` affine (``Case.affine``); None shows the slice
            as stored, without markers.
        window: ``(lo, hi)`` intensities (default: percentiles of this slice).
        ignore_label: gt value of unannotated pixels (grey, not errors).
    """
    orientation = slice_orientation(affine)
    panels = slice_panels(image, pred, gt, orientation=orientation, window=window,
                          ignore_label=ignore_label, alpha=alpha)
    fig, axes = _figure(1, len(panels), (3.2 * len(panels), 3.6))
    for ax, (name, rgb) in zip(np.atleast_1d(axes), panels):
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
        for edge, letter in orientation.markers.items():
            x, y, ha, va = _MARKER_SPOTS[edge]
            ax.text(x, y, letter, transform=ax.transAxes, ha=ha, va=va, fontsize=8,
                    color="white", fontweight="bold",
                    bbox={"facecolor": "black", "alpha": 0.6, "pad": 1, "linewidth": 0})
    colors = class_colors(len(class_names))
    handles = [Patch(color=colors[i], label=class_names[i]) for i in range(1, len(class_names))]
    if gt is not None:
        handles += [Patch(color=np.asarray(ERROR_COLORS[k]) / 255.0, label=label)
                    for k, label in (("tp", "correct"), ("fp", "false positive"), ("fn", "false negative"),
                                     ("wrong", "wrong class"))]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    legend_rows = -(-len(handles) // 6)  # keep the legend clear of the bottom markers
    fig.tight_layout(rect=(0, 0.02 + 0.06 * legend_rows, 1, 1))
    return _save(fig, Path(path))


def pick_slices(
    labels: np.ndarray, count: int = 3, ignore_label: int | None = None
) -> list[int]:
    """Indices of up to ``count`` slices of a ``(D, H, W)`` label volume worth showing.

    Slices with the most labelled pixels spread over the volume; the middle slice when
    nothing is labelled. ``ignore_label`` pixels (unannotated) do not count as labelled.
    """
    d = labels.shape[0]
    fg = labels > 0 if ignore_label is None else (labels > 0) & (labels != ignore_label)
    area = fg.reshape(d, -1).sum(1)
    if area.max() == 0:
        return [d // 2]
    candidates = np.flatnonzero(area > 0)
    picks = np.unique(np.linspace(0, len(candidates) - 1, num=min(count, len(candidates))).round())
    return [int(candidates[int(i)]) for i in picks]
