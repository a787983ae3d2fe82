"""metrics.csv per epoch, PNG plots of the history, and label overlays (matplotlib Agg)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402


class MetricsLog:
    """Rows of per-epoch scalars, rewritten to ``metrics.csv`` after every epoch.

    Columns are the union of all keys seen so far (``epoch`` first), so terms that
    appear later (a distillation term, validation Dice) still get a column.
    """

    def __init__(self, path: str | Path, rows: list[dict[str, Any]] | None = None):
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = list(rows or [])

    @classmethod
    def read(cls, path: str | Path) -> MetricsLog:
        """Load an existing ``metrics.csv`` (empty when missing), numbers as floats."""
        p = Path(path)
        rows: list[dict[str, Any]] = []
        if p.is_file():
            with p.open(newline="") as fh:
                for row in csv.DictReader(fh):
                    rows.append({k: _num(v) for k, v in row.items() if v not in ("", None)})
        return cls(p, rows)

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


def _num(v: str) -> Any:
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f


def _fmt(v: Any) -> Any:
    return f"{v:.6g}" if isinstance(v, float) else v


def plot_history(rows: Sequence[dict[str, Any]], out_dir: str | Path) -> list[Path]:
    """Write ``loss.png`` (every loss term) and ``val_metrics.png`` (val Dice, HD95).

    Returns the written paths (only plots that have data).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    epochs = [r["epoch"] for r in rows]
    loss_keys = [k for k in _keys(rows) if k.startswith("loss")]
    if loss_keys and epochs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for k in loss_keys:
            xs, ys = _series(rows, k)
            ax.plot(xs, ys, marker="o", ms=3, label=k)
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax.set_yscale("log" if all(y > 0 for k in loss_keys for y in _series(rows, k)[1]) else "linear")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(_save(fig, out / "loss.png"))
    xs_d, dice = _series(rows, "val_dice")
    xs_h, hd = _series(rows, "val_hd95")
    if dice:
        fig, ax = plt.subplots(figsize=(6, 4))
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


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def class_colors(num_classes: int) -> np.ndarray:
    """``(num_classes, 3)`` RGB in [0, 1]; class 0 (background) is black."""
    cmap = plt.get_cmap("tab10" if num_classes <= 11 else "tab20")
    colors = np.array([cmap(i % cmap.N)[:3] for i in range(max(num_classes - 1, 1))])
    return np.vstack([np.zeros((1, 3)), colors])[:num_classes]


def _blend(image: np.ndarray, labels: np.ndarray, colors: np.ndarray, alpha: float) -> np.ndarray:
    lo, hi = np.percentile(image, [0.5, 99.5]) if image.size else (0.0, 1.0)
    gray = np.clip((image - lo) / (hi - lo + 1e-8), 0, 1)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    mask = labels > 0
    lab = np.clip(labels, 0, len(colors) - 1)
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colors[lab[mask]]
    return rgb


def overlay_png(
    path: str | Path,
    image: np.ndarray,
    pred: np.ndarray,
    class_names: Sequence[str],
    gt: np.ndarray | None = None,
    title: str = "",
    alpha: float = 0.5,
) -> Path:
    """Save image | ground truth | prediction panels with a class legend.

    Args:
        image: ``(H, W)`` intensities (first channel of the input).
        pred: ``(H, W)`` integer labels.
        gt: ``(H, W)`` labels or None (then only image and prediction).
    """
    colors = class_colors(len(class_names))
    panels = [("image", _blend(image, np.zeros_like(pred), colors, 0.0))]
    if gt is not None:
        panels.append(("ground truth", _blend(image, gt, colors, alpha)))
    panels.append(("prediction", _blend(image, pred, colors, alpha)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (name, rgb) in zip(np.atleast_1d(axes), panels):
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    handles = [Patch(color=colors[i], label=class_names[i]) for i in range(1, len(class_names))]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 1))
    return _save(fig, Path(path))


def pick_slices(labels: np.ndarray, count: int = 3) -> list[int]:
    """Indices of up to ``count`` slices of a ``(D, H, W)`` label volume worth showing.

    Slices with the most labelled pixels spread over the volume; the middle slice when
    nothing is labelled.
    """
    d = labels.shape[0]
    area = (labels.reshape(d, -1) > 0).sum(1)
    if area.max() == 0:
        return [d // 2]
    candidates = np.flatnonzero(area > 0)
    picks = np.unique(np.linspace(0, len(candidates) - 1, num=min(count, len(candidates))).round())
    return [int(candidates[int(i)]) for i in picks]
