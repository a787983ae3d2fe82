"""The ``unetzoo demo`` web app (Gradio): upload, segment, look, measure, download.

:class:`DemoBackend` holds everything that is not UI (model loading, validation,
inference, rendering, metrics) so tests can call it directly; :func:`build_app` wires it
to Gradio components with stable ``elem_id`` s that the browser test drives:
``upload``, ``gt-upload``, ``roi-upload``, ``model-choice``, ``slice``, ``run-btn``, ``overlay``,
``legend``, ``status``, ``download``, ``train-btn``, ``train-log``.
"""

from __future__ import annotations

import html
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unetzoo.deploy import uploads
from unetzoo.engine.logging import display
from unetzoo.engine.logging.display import ALPHA, PALETTE, class_color  # noqa: F401 (API)
from unetzoo.errors import DataError, UnetzooError
from unetzoo.metrics import Reference, ScoringRules, score_case

if TYPE_CHECKING:
    from unetzoo.data.imageio import Decoded
    from unetzoo.engine.predict import Predictor

DEMO_CHOICE = "phantom demo model"
DISPLAY_SIZE = 384  # small slices are shown enlarged to at least this many pixels
#: Seconds one request may spend predicting: a 1,000,000-slice upload must not hold the
#: server (and every other user) for 49 CPU-minutes.
MAX_REQUEST_SECONDS = 120.0
CSS = """
#legend table {border-collapse: collapse; font-size: 0.9em}
#legend td, #legend th {padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: left}
#legend .swatch {display: inline-block; width: 14px; height: 14px; border-radius: 3px}
"""


@dataclass
class Segmentation:
    """One segmented upload: display image, labels, measurements, download file."""

    display: np.ndarray  # (D, H, W) uint8 grey
    labels: np.ndarray  # (D, H, W) int64
    class_names: list[str]
    spacing: tuple[float, float, float]
    is_volume: bool
    download: Path
    gt: np.ndarray | None = None
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    #: unit of the HD95 in ``metrics``: "mm" with a known spacing, else "voxels"
    distance_unit: str = "mm"
    #: maps ``(d, h, w)`` of ``labels`` to RAS+ world mm (NIfTI uploads), else None
    affine: np.ndarray | None = None


def to_display(image: np.ndarray) -> np.ndarray:
    """``(D, H, W)`` floats -> uint8 grey through the project's window over the volume
    (:func:`unetzoo.engine.logging.display.display_window`)."""
    return display.to_grey(image)


def render_overlay(
    grey: np.ndarray,
    labels: np.ndarray,
    alpha: float = ALPHA,
    min_size: int = 1,
    orientation: display.SliceOrientation | None = None,
    errors_against: np.ndarray | None = None,
) -> np.ndarray:
    """RGB uint8: ``grey`` ``(H, W)`` with labels > 0 blended in their colours (or, with
    ``errors_against`` a reference, the error map of ``labels`` against it).

    ``orientation`` turns the slice to radiological display and draws its L/R/A/P/S/I
    markers. Images smaller than ``min_size`` are enlarged by a whole factor (nearest
    neighbour, so every pixel stays a visible block): ``(k H, k W, 3)``.
    """
    if errors_against is None:
        out = display.blend(grey, labels, alpha)
    else:
        out = display.error_map(grey, labels, errors_against)
    if orientation is not None:
        out = orientation.apply(out)
    factor = max(1, -(-int(min_size) // max(out.shape[:2])))
    if factor > 1:
        out = np.repeat(np.repeat(out, factor, axis=0), factor, axis=1)
    return out if orientation is None else display.draw_markers(out, orientation)


def render_view(seg: Segmentation, z: int, min_size: int = 1) -> np.ndarray:
    """The picture the demo shows for slice ``z``: the prediction overlay in radiological
    orientation with markers and, when a ground truth was given, the ground truth on its
    left and the error map (false positive / negative, wrong class) on its right."""
    o = display.slice_orientation(seg.affine)
    pred = render_overlay(seg.display[z], seg.labels[z], min_size=min_size, orientation=o)
    if seg.gt is None:
        return pred
    ref = render_overlay(seg.display[z], seg.gt[z], min_size=min_size, orientation=o)
    err = render_overlay(seg.display[z], seg.labels[z], min_size=min_size, orientation=o,
                         errors_against=seg.gt[z])
    return display.side_by_side([ref, pred, err])


def _fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def legend_html(seg: Segmentation, z: int) -> str:
    """The class legend with per-class areas (2-D) or volumes (3-D) and, with a ground
    truth, Dice and HD95 per class."""
    sz, sy, sx = seg.spacing
    px_area = sy * sx
    head = ["", "class"]
    if seg.is_volume:
        head += ["voxels", "volume (mL)", f"area in slice {z} (mm²)"]
    else:
        head += ["pixels", "area (mm²)" if px_area != 1.0 else "area (px²)"]
    if seg.metrics:
        unit = "mm" if seg.distance_unit == "mm" else "voxels" if seg.is_volume else "px"
        head += ["Dice", f"HD95 ({unit})"]
    rows = []
    for k, name in enumerate(seg.class_names):
        if k == 0:
            continue
        r, g, b = class_color(k)
        n = int((seg.labels == k).sum())
        cells = [f'<span class="swatch" style="background:rgb({r},{g},{b})"></span>',
                 html.escape(str(name))]
        if seg.is_volume:
            n_slice = int((seg.labels[z] == k).sum())
            cells += [str(n), f"{n * sz * px_area / 1000.0:.2f}", f"{n_slice * px_area:.1f}"]
        else:
            cells += [str(n), f"{n * px_area:.1f}"]
        if seg.metrics:
            m = seg.metrics.get(k, {})
            cells += [_fmt(m.get("dice")), _fmt(m.get("hd95"), 2)]
        cells_html = "".join(f"<td>{c}</td>" for c in cells)
        rows.append(f'<tr class="legend-row" data-class="{html.escape(str(name))}">{cells_html}</tr>')
    head_html = "".join(f"<th>{h}</th>" for h in head)
    note = ""
    if seg.metrics:
        from unetzoo.metrics import scored_mean

        # strict rule: a class absent from both maps is NaN (not scored), left out
        mean, n = scored_mean([m["dice"] for m in seg.metrics.values()])
        note = (f"<p>mean Dice over the {n} scored class(es): {_fmt(mean)} "
                "(empty-mask protocol: strict)</p>")
    return (
        f'<div class="unetzoo-legend"><table><tr>{head_html}</tr>{"".join(rows)}</table>'
        f"{note}</div>"
    )


class DemoBackend:
    """Everything the demo does, without the UI.

    Args:
        checkpoints: checkpoint (``.pt``) or exported ``.onnx`` files offered in the
            model list; the phantom demo model is always offered too.
        max_bytes: upload size limit.
        device: torch device for checkpoints (default CPU: the demo is for laptops).
    """

    def __init__(
        self,
        checkpoints: list[str | Path] | None = None,
        max_bytes: int = uploads.MAX_UPLOAD_BYTES,
        device: str = "cpu",
        max_seconds: float = MAX_REQUEST_SECONDS,
    ) -> None:
        self.paths: dict[str, Path] = {}
        self.max_seconds = float(max_seconds)
        for p in checkpoints or []:
            p = Path(p)
            if not p.is_file():
                raise DataError(f"checkpoint {p} does not exist")
            check_model_file(p)  # refuse a bad file at start-up, not in the first request
            self.paths[f"{p.parent.name}/{p.name}" if p.parent.name else p.name] = p
        self.max_bytes = int(max_bytes)
        self.device = device
        self._cache: dict[str, Predictor] = {}
        self._lock = threading.Lock()
        self.download_root = uploads.download_dir()

    # ------------------------------------------------------------------ models
    def choices(self) -> list[str]:
        """Labels of the offered models (user checkpoints first, then the demo model)."""
        return [*self.paths, DEMO_CHOICE]

    def demo_checkpoint(self) -> Path | None:
        from unetzoo.deploy.demo_model import find_demo_checkpoint

        return find_demo_checkpoint()

    def load(self, label: str) -> Predictor:
        """Load (once) the model behind a choice label; one clear error otherwise."""
        with self._lock:
            if label in self._cache:
                return self._cache[label]
            if label == DEMO_CHOICE:
                path = self.demo_checkpoint()
                if path is None:
                    raise DataError(
                        "the phantom demo model is not trained yet: press 'Train demo "
                        "model' (about a minute) or run `make demo`"
                    )
            elif label in self.paths:
                path = self.paths[label]
            else:  # only server-side paths are ever loaded, never one sent by the client
                raise DataError(f"unknown model {label!r}; pick one from the list")
            loaded = self._load_path(label, path)
            self._cache[label] = loaded
            return loaded

    def _load_path(self, label: str, path: Path) -> Predictor:
        # Checked again here: the file may have changed since start-up. The one loader
        # is safe on hostile files (ONNX protobuf by content; torch.load weights_only=True).
        from unetzoo.engine.predict import load_predictor

        return load_predictor(path, device=self.device)

    # ------------------------------------------------------------------ inference
    def segment(
        self,
        upload_path: str | Path,
        choice: str,
        gt_path: str | Path | None = None,
        pixel_spacing: float | None = None,
        roi_path: str | Path | None = None,
    ) -> Segmentation:
        """Validate and segment an upload; score it against an optional ground truth.

        ``pixel_spacing`` (mm) applies to 2-D images, whose files carry none. The score
        is ``unetzoo test``'s (:func:`unetzoo.metrics.score_case`, strict protocol) under
        the upload's own rules: HD95 in mm when its spacing is known (a volume's header,
        or ``pixel_spacing``), else in voxels; only the pixels of the ``roi_path`` mask
        (e.g. a field of view) are scored when one is given.
        """
        if roi_path and not gt_path:
            raise DataError("a region-of-interest mask says which pixels are scored: upload "
                            "the ground-truth mask too")
        up = uploads.read_upload(upload_path, name=Path(upload_path).name, max_bytes=self.max_bytes)
        lm = self.load(choice)
        x = uploads.to_model_input(up, lm.in_channels, lm.preprocessing)
        labels = self._predict_in_time(lm, x)
        spacing = up.spacing
        known = not up.picture and up.geometry_known
        if up.picture and pixel_spacing:
            # Bounds keep areas and distances finite (1e308 mm overflowed them).
            if not 1e-6 <= pixel_spacing <= 1e4:
                raise DataError(f"pixel spacing must be 1e-06..10000 mm, got {pixel_spacing}")
            spacing, known = (1.0, float(pixel_spacing), float(pixel_spacing)), True
        folder = uploads.download_dir_under(self.download_root)
        seg = Segmentation(
            display=to_display(x[0]),
            labels=labels,
            class_names=lm.class_names,
            spacing=spacing,
            is_volume=not up.picture,
            download=uploads.write_label_map(labels, up, folder),
            affine=display.file_to_array_affine(up.affine, up.order),
        )
        if gt_path:
            seg.gt = self._mask(gt_path, labels.shape, len(lm.class_names), up)
            roi = None if not roi_path else self._mask(roi_path, labels.shape, 2, up) > 0
            case = Reference(seg.gt, spacing if known else None, roi,
                             class_names=tuple(lm.class_names))
            score = score_case(labels, case, ScoringRules(len(lm.class_names)))
            seg.metrics, seg.distance_unit = score.by_class(), score.distance_unit
        return seg

    def _mask(self, path: str | Path, shape: tuple[int, ...], num_classes: int,
              up: Decoded) -> np.ndarray:
        return uploads.read_mask(path, shape, num_classes, name=Path(path).name,
                                 max_bytes=self.max_bytes, axes=up.order)


    def _predict_in_time(self, lm: Predictor, x: np.ndarray) -> np.ndarray:
        """``lm.predict_volume(x)`` a batch of slices at a time (slices are predicted
        independently, so the labels are the same), stopped with one line once the
        request has run :attr:`max_seconds`: one upload never holds the server."""
        start = time.monotonic()
        step = max(1, int(lm.batch_size))
        parts = []
        for z in range(0, x.shape[1], step):
            if time.monotonic() - start > self.max_seconds:
                raise DataError(
                    f"the prediction stopped after {self.max_seconds:g} s (the demo's limit "
                    f"per request) at slice {z} of {x.shape[1]}; upload fewer slices, or run "
                    "`unetzoo predict` on your machine"
                )
            parts.append(lm.predict_volume(x[:, z : z + step]))
        return np.concatenate(parts, axis=0)


def check_model_file(path: Path) -> None:
    """Refuse, with one line, a file the demo cannot serve safely.

    ``.onnx`` files must be ONNX protobuf (a zip such as a ``torch.export`` program is
    refused); anything else must be a unetzoo checkpoint readable with
    ``torch.load(weights_only=True)``. Nothing here runs code from the file.
    """
    if path.suffix == ".onnx":
        from unetzoo.engine.onnx import load_onnx

        load_onnx(path)
    else:
        from unetzoo.engine.checkpoint import read_checkpoint

        read_checkpoint(path)


def _slice_update(seg: Segmentation | None):
    import gradio as gr

    if seg is None or seg.labels.shape[0] <= 1:
        return gr.update(visible=False, minimum=0, maximum=1, value=0)
    d = seg.labels.shape[0]
    # Start on the slice with the most foreground: the informative one.
    z = int(np.argmax((seg.labels > 0).reshape(d, -1).sum(1)))
    return gr.update(visible=True, minimum=0, maximum=d - 1, value=z, step=1)


def build_app(backend: DemoBackend) -> Any:
    """The Gradio ``Blocks`` app around ``backend``."""
    import gradio as gr

    def view(seg: Segmentation | None, z: float | None):
        if seg is None:
            return None, ""
        z = int(np.clip(int(z or 0), 0, seg.labels.shape[0] - 1))
        return render_view(seg, z, min_size=DISPLAY_SIZE), legend_html(seg, z)

    def run(file, gt, choice, spacing, roi=None):
        if file is None:
            return (None, None, "", gr.update(visible=False), _slice_update(None),
                    "**Upload an image or a volume first.**")
        path = file if isinstance(file, str) else getattr(file, "name", file)
        gt_path = None if gt is None else (gt if isinstance(gt, str) else gt.name)
        roi_path = None if roi is None else (roi if isinstance(roi, str) else roi.name)
        try:
            seg = backend.segment(path, choice, gt_path, float(spacing) if spacing else None,
                                  roi_path)
        except UnetzooError as exc:
            return (None, None, "", gr.update(visible=False), _slice_update(None),
                    f"**Error:** {html.escape(str(exc))}")
        upd = _slice_update(seg)
        z = upd.get("value", 0) or 0
        overlay, legend = view(seg, z)
        d = seg.labels.shape[0]
        kind = f"volume, {d} slices, spacing {seg.spacing} mm" if seg.is_volume else "2-D image"
        msg = f"Segmented {html.escape(Path(path).name)} ({kind}) with **{html.escape(choice)}**."
        return (seg, overlay, legend, gr.update(value=str(seg.download), visible=True), upd, msg)

    def train():
        from unetzoo.deploy.demo_model import train_demo_model

        lines: list[str] = []
        try:
            for line in train_demo_model():
                lines.append(line)
                yield "\n".join(lines[-30:])
        except UnetzooError as exc:
            lines.append(f"error: {exc}")
            yield "\n".join(lines[-30:])
            return
        with backend._lock:
            backend._cache.pop(DEMO_CHOICE, None)

    with gr.Blocks(title="unetzoo demo") as app:
        gr.Markdown(
            "# unetzoo: segmentation demo\nUpload a PNG / JPEG / TIFF image or a NIfTI, "
            "NRRD or MetaImage (.mha) volume, pick a model and press **Segment**. Add a ground-truth mask to get "
            "Dice, HD95 and, beside the prediction, the ground truth and an error map "
            "(red: false positive, blue: false negative, yellow: wrong class). Volumes are "
            "shown in radiological convention (patient's left on the image's right)."
        )
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                up = gr.File(label="Image or volume (PNG, JPEG, TIFF, NIfTI, NRRD, .mha)", elem_id="upload")
                gt = gr.File(label="Ground-truth mask (optional)", elem_id="gt-upload")
                roi = gr.File(label="Region of interest, the scored pixels (optional, e.g. a "
                              "field of view)", elem_id="roi-upload")
                choice = gr.Dropdown(backend.choices(), value=backend.choices()[0],
                                     label="Model", elem_id="model-choice")
                spacing = gr.Number(label="Pixel spacing of 2-D images in mm (0 = unknown)",
                                    value=0, minimum=0, elem_id="spacing")
                btn = gr.Button("Segment", variant="primary", elem_id="run-btn")
                with gr.Accordion("Phantom demo model", open=backend.demo_checkpoint() is None):
                    gr.Markdown("Without a checkpoint the demo uses a U-Net trained on the "
                                "embedded phantom (`make demo`, or train a tiny one here).")
                    tbtn = gr.Button("Train demo model", elem_id="train-btn")
                    tlog = gr.Textbox(label="Training log", lines=6, elem_id="train-log")
            with gr.Column(scale=2):
                status = gr.Markdown("", elem_id="status")
                overlay = gr.Image(label="Segmentation overlay", type="numpy", format="png",
                                   interactive=False, elem_id="overlay")
                zslider = gr.Slider(0, 1, value=0, step=1, label="Slice", visible=False,
                                    elem_id="slice")
                legend = gr.HTML("", elem_id="legend")
                dl = gr.DownloadButton("Download label map", visible=False, elem_id="download")

        btn.click(run, [up, gt, choice, spacing, roi], [state, overlay, legend, dl, zslider, status])
        zslider.change(view, [state, zslider], [overlay, legend])
        tbtn.click(train, None, tlog)
    return app


def launch(
    checkpoints: list[str | Path] | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    max_bytes: int = uploads.MAX_UPLOAD_BYTES,
    block: bool = True,
) -> Any:
    """Start the demo server on ``host:port`` (default 127.0.0.1, Gradio picks the port).

    Returns the Gradio app (its ``local_url`` attribute holds the address); with
    ``block`` the call serves until interrupted.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    backend = DemoBackend(checkpoints, max_bytes=max_bytes)
    app = build_app(backend)
    app.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        max_file_size=max_bytes,
        allowed_paths=[str(backend.download_root)],
        quiet=True,
        css=CSS,
        show_error=True,
        ssr_mode=False,
    )
    return app
