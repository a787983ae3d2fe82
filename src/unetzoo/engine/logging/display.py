"""How unetzoo shows a slice: the one palette, the one intensity window, radiological
orientation with L/R/A/P/S/I markers, and the error map.

Every picture of the project (report overlays, ``predict`` PNGs, TensorBoard images, the
demo) goes through this module, so a class has the same colour and a scan the same
orientation everywhere.

Orientation: a case's ``affine`` maps ``(d, h, w)`` array indices to world mm in NIfTI's
RAS+ convention (``+x`` towards the patient's right, ``+y`` anterior, ``+z`` superior).
A slice ``array[d]`` is shown in the radiological convention (as radiology workstations,
ITK-SNAP's default and nnU-Net users expect): axial slices with anterior up and the
patient's left on the image's right; coronal slices with superior up and the patient's
left on the right; sagittal slices with superior up and anterior on the left. The plane
is the world axis closest to the slicing axis (``nibabel.orientations.aff2axcodes``), so
any voxel order or flip in the file is undone. Without an affine (PNG/TIFF images,
Synapse ``.npz``) the array is shown as stored and no markers are drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The affine of a file's (D, H, W) arrays lives in data.geometry; re-exported because
# the demo and predict call it as display.file_to_array_affine.
from unetzoo.data.geometry import file_to_array_affine as file_to_array_affine

#: Class colours 1..N (RGB 0..255; background is not painted): tab10, then tab20b.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207), (127, 127, 127),
    (57, 59, 121), (82, 84, 163), (140, 162, 82), (189, 158, 57), (173, 73, 74),
)
#: Unannotated voxels (nnU-Net's ignore label) in the ground-truth panel.
IGNORE_COLOR = (200, 200, 200)
#: Error map: correct foreground, false positive, false negative, wrong foreground class.
ERROR_COLORS: dict[str, tuple[int, int, int]] = {
    "tp": (60, 200, 60), "fp": (255, 40, 40), "fn": (40, 120, 255), "wrong": (255, 210, 0),
}
ALPHA = 0.45
#: Intensity window: these percentiles of the image (or volume) map to black and white.
WINDOW_PERCENTILES = (1.0, 99.0)


def class_color(k: int) -> tuple[int, int, int]:
    """RGB (0..255) colour of class ``k >= 1``."""
    return PALETTE[(int(k) - 1) % len(PALETTE)]


def class_colors(num_classes: int) -> np.ndarray:
    """``(num_classes, 3)`` RGB in [0, 1]; class 0 (background) is black."""
    rows = [(0, 0, 0)] + [class_color(k) for k in range(1, max(num_classes, 1))]
    return np.asarray(rows[:num_classes], dtype=np.float64) / 255.0


def display_window(image: np.ndarray) -> tuple[float, float]:
    """``(lo, hi)`` intensities shown black and white (:data:`WINDOW_PERCENTILES`)."""
    a = np.asarray(image, dtype=np.float64)
    a = a[np.isfinite(a)]
    if not a.size:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(a, WINDOW_PERCENTILES))
    if hi <= lo:  # a flat image or a mask: fall back to the full range
        lo, hi = float(a.min()), float(a.max())
        hi = hi if hi > lo else lo + 1.0
    return lo, hi


def to_grey(image: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Intensities -> uint8 grey through ``window`` (default :func:`display_window`)."""
    lo, hi = display_window(image) if window is None else window
    a = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=lo)
    return (np.clip((a - lo) / (hi - lo), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def blend(
    grey: np.ndarray, labels: np.ndarray, alpha: float = ALPHA, ignore_label: int | None = None
) -> np.ndarray:
    """RGB uint8 ``(H, W, 3)``: ``grey`` with labels > 0 blended in their colours."""
    rgb = np.repeat(np.asarray(grey)[..., None], 3, axis=2).astype(np.float32)
    labels = np.asarray(labels)
    for k in np.unique(labels):
        if k <= 0:
            continue
        color = IGNORE_COLOR if ignore_label is not None and k == ignore_label else class_color(int(k))
        m = labels == k
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(color, np.float32)
    return rgb.round().astype(np.uint8)


def error_map(
    grey: np.ndarray, pred: np.ndarray, gt: np.ndarray, alpha: float = 0.6,
    ignore_label: int | None = None,
) -> np.ndarray:
    """RGB uint8: where the prediction is right (foreground), a false positive, a false
    negative or the wrong foreground class (:data:`ERROR_COLORS`); ignored voxels are
    left unpainted."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    keep = np.ones(gt.shape, bool) if ignore_label is None else gt != ignore_label
    kinds = {
        "tp": keep & (gt > 0) & (pred == gt),
        "fp": keep & (gt == 0) & (pred > 0),
        "fn": keep & (gt > 0) & (pred == 0),
        "wrong": keep & (gt > 0) & (pred > 0) & (pred != gt),
    }
    rgb = np.repeat(np.asarray(grey)[..., None], 3, axis=2).astype(np.float32)
    for name, m in kinds.items():
        rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(ERROR_COLORS[name], np.float32)
    return rgb.round().astype(np.uint8)


# ----------------------------------------------------------------------- orientation
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
_CANON = {"L": "L", "R": "L", "A": "A", "P": "A", "S": "S", "I": "S"}
#: slicing-axis direction -> (plane, where rows point going down, where columns point
#: going right) in the radiological convention.
_PLANES = {"S": ("axial", "P", "L"), "A": ("coronal", "I", "L"), "L": ("sagittal", "I", "P")}


@dataclass(frozen=True)
class SliceOrientation:
    """How to turn an ``array[d]`` slice ``(H, W[, 3])`` for display, and its markers.

    ``apply`` transposes (when ``transpose``), then flips rows and columns. ``top``,
    ``bottom``, ``left``, ``right`` are the anatomical directions at the image edges
    (``"R"``, ``"L"``, ``"A"``, ``"P"``, ``"S"``, ``"I"``; empty when unknown).
    """

    plane: str | None = None
    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False
    top: str = ""
    bottom: str = ""
    left: str = ""
    right: str = ""

    @property
    def markers(self) -> dict[str, str]:
        """``{"top": .., "bottom": .., "left": .., "right": ..}`` (empty without an affine)."""
        if not self.plane:
            return {}
        return {"top": self.top, "bottom": self.bottom, "left": self.left, "right": self.right}

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The slice (``(H, W)`` or ``(H, W, C)``) as it is displayed."""
        out = np.asarray(array)
        if self.transpose:
            out = np.swapaxes(out, 0, 1)
        if self.flip_rows:
            out = out[::-1]
        if self.flip_cols:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)


def slice_orientation(affine: np.ndarray | None) -> SliceOrientation:
    """The radiological display of slices ``array[d]`` of a ``(D, H, W)`` array whose
    ``affine`` maps ``(d, h, w)`` to RAS+ world mm (``Case.affine``); identity (no
    markers) when ``affine`` is None or degenerate."""
    if affine is None:
        return SliceOrientation()
    from nibabel.orientations import aff2axcodes

    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        return SliceOrientation()
    try:
        codes = aff2axcodes(aff)
    except ValueError:  # a singular affine: no orientation to speak of
        return SliceOrientation()
    if any(c is None for c in codes):
        return SliceOrientation()
    plane, row_to, col_to = _PLANES[_CANON[codes[0]]]
    h_code, w_code = codes[1], codes[2]
    transpose = _CANON[h_code] != _CANON[row_to]
    row_code, col_code = (w_code, h_code) if transpose else (h_code, w_code)
    return SliceOrientation(
        plane=plane,
        transpose=transpose,
        flip_rows=row_code != row_to,
        flip_cols=col_code != col_to,
        top=_OPPOSITE[row_to], bottom=row_to, left=_OPPOSITE[col_to], right=col_to,
    )


# ----------------------------------------------------------------------- panels
def slice_panels(
    image: np.ndarray,
    pred: np.ndarray,
    gt: np.ndarray | None = None,
    *,
    orientation: SliceOrientation | None = None,
    window: tuple[float, float] | None = None,
    ignore_label: int | None = None,
    alpha: float = ALPHA,
) -> list[tuple[str, np.ndarray]]:
    """``[(title, RGB uint8 (H', W', 3))]`` in display orientation: image, ground truth
    (when given), prediction and, with a ground truth, the error map."""
    o = orientation or SliceOrientation()
    grey = to_grey(image, window)
    panels = [("image", blend(grey, np.zeros_like(pred), 0.0))]
    if gt is not None:
        panels.append(("ground truth", blend(grey, gt, alpha, ignore_label)))
    panels.append(("prediction", blend(grey, pred, alpha)))
    if gt is not None:
        panels.append(("errors", error_map(grey, pred, gt, ignore_label=ignore_label)))
    return [(name, o.apply(rgb)) for name, rgb in panels]


def draw_markers(rgb: np.ndarray, orientation: SliceOrientation) -> np.ndarray:
    """``rgb`` (uint8 ``(H, W, 3)``, already oriented) with the orientation letters drawn
    at the middle of each edge (white on a dark box); unchanged without markers."""
    markers = orientation.markers
    if not markers:
        return rgb
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    draw = ImageDraw.Draw(img)
    h, w = rgb.shape[:2]
    size = max(8, min(h, w) // 16)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size default font
        font = ImageFont.load_default()
    pad = max(1, size // 4)
    spots = {"top": (w / 2, pad), "bottom": (w / 2, h - pad), "left": (pad, h / 2),
             "right": (w - pad, h / 2)}
    anchors = {"top": "mt", "bottom": "mb", "left": "lm", "right": "rm"}
    for edge, letter in markers.items():
        xy = spots[edge]
        try:
            box = draw.textbbox(xy, letter, font=font, anchor=anchors[edge])
        except (TypeError, ValueError):  # bitmap font: no anchors
            box = draw.textbbox(xy, letter, font=font)
        draw.rectangle(box, fill=(0, 0, 0))
        try:
            draw.text(xy, letter, fill=(255, 255, 255), font=font, anchor=anchors[edge])
        except (TypeError, ValueError):
            draw.text(xy, letter, fill=(255, 255, 255), font=font)
    return np.asarray(img)


def side_by_side(images: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """RGB uint8 panels of one height joined left to right with a black gap."""
    h = max(im.shape[0] for im in images)
    parts: list[np.ndarray] = []
    for i, im in enumerate(images):
        if im.shape[0] < h:
            im = np.pad(im, ((0, h - im.shape[0]), (0, 0), (0, 0)))
        if i:
            parts.append(np.zeros((h, gap, 3), np.uint8))
        parts.append(im)
    return np.concatenate(parts, axis=1)


def overlay_image(
    image: np.ndarray,
    pred: np.ndarray,
    gt: np.ndarray | None = None,
    *,
    affine: np.ndarray | None = None,
    window: tuple[float, float] | None = None,
    ignore_label: int | None = None,
    min_size: int = 1,
) -> np.ndarray:
    """One RGB uint8 picture (TensorBoard, the demo): the oriented panels of
    :func:`slice_panels` side by side, each enlarged by a whole factor to at least
    ``min_size`` pixels and marked with its orientation letters."""
    o = slice_orientation(affine)
    panels = slice_panels(image, pred, gt, orientation=o, window=window,
                          ignore_label=ignore_label)
    out = []
    for _, rgb in panels:
        factor = max(1, -(-int(min_size) // max(rgb.shape[:2])))
        if factor > 1:
            rgb = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)
        out.append(draw_markers(rgb, o))
    return side_by_side(out)
