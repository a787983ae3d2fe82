"""``unetzoo predict``: label maps for NIfTI volumes and 2-D images, from a checkpoint alone.

Inputs are normalised with the checkpoint's preprocessing spec
(:func:`unetzoo.data.preprocessing.normalize`). Volumes are segmented slice by slice in
the TransUNet protocol (resize to ``img_size`` and back) along the through-plane axis and
written back in the file's own axis order with its affine. 2-D images larger than the
training size use sliding-window inference with Gaussian blending at their own
resolution; smaller ones are resized like volume slices. Every input also gets an
overlay PNG.

What is refused, in one line each, instead of a silent wrong map: NaN/Inf intensities (a
single NaN voxel used to wipe its slice; masking would invent tissue, so the user
decides), an inference spec that cannot be right (``img_size`` < 8, a zero-width
intensity window), non-finite weights, inputs with an empty axis, and 2-D inputs (or
volume slices) over ``max_pixels`` (default 4096 x 4096), read from the file header
before anything is decoded. 8-bit and 16-bit pictures get the demo's rule
(:func:`unetzoo.data.preprocessing.normalize_picture`).
"""

from __future__ import annotations

import errno
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetzoo.data.io import RGB_TO_GREY
from unetzoo.engine.checkpoint import load_checkpoint, model_from_checkpoint
from unetzoo.engine.inference import predict_volume, sliding_window_probs
from unetzoo.engine.logging.display import file_to_array_affine
from unetzoo.engine.logging.plots import overlay_png, pick_slices
from unetzoo.errors import CheckpointError, DataError

#: Largest 2-D image (or volume slice) ``predict`` takes, in pixels: 4096 x 4096. An
#: 8000 x 8000 PNG ran 8.5 minutes to a 12 GB peak on CPU (issue 13).
DEFAULT_MAX_PIXELS = 4096 * 4096
#: Largest ``img_size`` an inference spec may name (the zoo trains at 224-512).
MAX_IMG_SIZE = 4096

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    raise DataError(
        f"{path}: unsupported input type; give NIfTI (.nii, .nii.gz) or 2-D images "
        f"({', '.join(IMAGE_SUFFIXES)})"
    )


def _stem(path: Path) -> str:
    name = path.name
    for suf in (".nii.gz", *NIFTI_SUFFIXES, *IMAGE_SUFFIXES):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def _to_channels(arr: np.ndarray, in_channels: int, where: Path) -> np.ndarray:
    """``(H, W)`` / ``(H, W, C)`` pixels -> ``(in_channels, H, W)`` (dtype kept)."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise DataError(f"{where}: expected a 2-D image, got array shape {arr.shape}")
    c = arr.shape[-1]
    if c > 4 and c != in_channels:  # e.g. a multi-page TIFF read as (pages, H, W)
        raise DataError(
            f"{where}: array of shape {arr.shape} is not one 2-D image; predict takes one "
            "image per file (save a stack as a NIfTI volume)"
        )
    if c == 4 and in_channels in (1, 3):  # drop alpha
        arr, c = arr[..., :3], 3
    if c == in_channels:
        out = arr
    elif in_channels == 1 and c == 3:
        luma = arr.astype(np.float32) @ np.array(RGB_TO_GREY, dtype=np.float32)
        # Keep the integer type so the bit depth rule still applies to the grey image.
        out = (luma.round().astype(arr.dtype) if arr.dtype.kind == "u" else luma)[..., None]
    elif in_channels == 3 and c == 1:
        out = np.repeat(arr, 3, axis=-1)
    else:
        raise DataError(
            f"{where}: image has {c} channel(s) but the model takes {in_channels}; convert it"
        )
    return np.moveaxis(out, -1, 0)


def _check_finite(arr: np.ndarray, where: Path) -> None:
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise DataError(
            f"{where}: {bad} voxel(s) hold NaN or Inf; fix or mask them (e.g. set them to "
            "the background intensity) before predicting"
        )


def _check_size(shape: tuple[int, ...], where: Path, max_pixels: int, volume: bool) -> None:
    dims = [int(n) for n in shape[:3]]
    if any(n == 0 for n in dims):
        raise DataError(f"{where}: the {'volume' if volume else 'image'} has an empty axis "
                        f"(shape {tuple(shape)}); nothing to segment")
    # The plane of a volume is unknown before reorientation: the two largest axes.
    h, w = sorted(dims, reverse=True)[:2] if volume else dims[:2]
    if h * w > max_pixels:
        side = int(math.isqrt(max_pixels))
        raise DataError(
            f"{where}: {'a slice of ' if volume else ''}{w} x {h} pixels is over predict's limit "
            f"of {max_pixels:,} pixels (about {side} x {side}); crop or downsample it, or "
            "raise --max-pixels if the machine has the memory and time"
        )


def _check_header(p: Path, max_pixels: int) -> None:
    """Shape checks from the file header alone: nothing is decoded."""
    from unetzoo.data.io import nifti_shape, picture_shape

    if _kind(p) == "nifti":
        shape = nifti_shape(p)
        if len(shape) < 2 or len(shape) > 4:
            raise DataError(f"{p}: expected a 3-D (or 3-D + channels) volume, got shape {shape}")
        _check_size(shape, p, max_pixels, volume=len(shape) > 2)
    else:
        _check_size(picture_shape(p), p, max_pixels, volume=False)


def check_inference_spec(meta: dict[str, Any], where: str | Path) -> dict[str, Any]:
    """``meta`` with ``img_size`` / ``in_channels`` as ints, after checking the keys
    prediction needs (a checkpoint's, or an exported file's metadata).

    Raises:
        CheckpointError: ``img_size`` outside 8..4096, ``in_channels`` < 1, no class
            names, or a preprocessing spec that cannot be applied.
    """
    from unetzoo.data.preprocessing import check_spec

    out = dict(meta)
    for key, lo, hi in (("img_size", 8, MAX_IMG_SIZE), ("in_channels", 1, 64)):
        value = meta.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi
        ok = ok and float(value).is_integer()  # the range check above also rules out NaN
        if not ok:
            raise CheckpointError(
                f"{where}: {key} is {value!r}, expected a whole number in {lo}..{hi}; the "
                "file is damaged or was not written by unetzoo"
            )
        out[key] = int(value)
    names = meta.get("class_names")
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{where}: class_names must be a non-empty list of names, got {names!r}")
    try:
        check_spec(meta.get("preprocessing") or {"kind": "none"})
    except DataError as exc:
        raise CheckpointError(f"{where}: {exc}; the file is damaged") from None
    return out


def check_finite_weights(weights: torch.nn.Module | dict[str, Any], where: str | Path) -> None:
    """One line if any weight or buffer (of a model or a state dict) is NaN/Inf: such a
    model predicts background (argmax of NaN) everywhere, which looks like an answer."""
    if isinstance(weights, torch.nn.Module):
        items = [*weights.named_parameters(), *weights.named_buffers()]
    else:
        items = [(k, v) for k, v in weights.items() if torch.is_tensor(v)]
    for name, t in items:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"{where}: weight {name} holds NaN or Inf (a diverged or damaged training); "
                "use an earlier checkpoint"
            )


def check_rebuild_size(
    name: str, in_channels: int, num_classes: int, options: dict[str, Any], state: Any
) -> None:
    """Raise :class:`CheckpointError` unless the model that ``options`` describe holds as many
    values as ``state``; built on the meta device, so a checkpoint whose options say
    ``base_channels=10**6`` is refused without allocating its weights."""
    from unetzoo.models import create_model

    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError("checkpoint state_dict is not a mapping of names to tensors")
    with torch.device("meta"):
        shell = create_model(name, in_channels=in_channels, num_classes=num_classes, **options)
    want = sum(t.numel() for t in shell.state_dict().values())
    have = sum(t.numel() for t in state.values())
    if want != have:
        raise CheckpointError(
            f"checkpoint weights do not fit model {name!r}: its stored options describe "
            f"{want:,} weight values but the file holds {have:,}; the options or the "
            "weights are damaged"
        )


@dataclass
class Input:
    """A prediction input, read and normalised.

    Attributes:
        kind: ``"nifti"`` or ``"image"``.
        image: normalised ``(C, D, H, W)`` float32 (``D = 1`` for 2-D images).
        affine: the NIfTI affine (None for pictures).
        order: the file axis of each of ``D, H, W`` (NIfTI only).
    """

    kind: str
    image: np.ndarray
    affine: np.ndarray | None = None
    order: tuple[int, int, int] | None = None


def read_input(
    path: str | Path, in_channels: int, spec: dict[str, Any],
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Input:
    """Read a NIfTI volume or a 2-D picture and normalise it for a model.

    NIfTI intensities get ``spec``; 8/16-bit pictures the demo's bit-depth rule; float
    or signed pictures (raw intensities) get ``spec``. Size and emptiness are checked
    from the header before decoding, finiteness after.
    """
    from unetzoo.data.io import load_nifti, load_picture, volume_to_cdhw
    from unetzoo.data.preprocessing import display_bit_depth, normalize, normalize_picture

    p = Path(path)
    _check_header(p, max_pixels)
    if _kind(p) == "nifti":
        arr, affine, zooms = load_nifti(p)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_) or np.iscomplexobj(arr):
            raise DataError(f"{p}: voxels of type {arr.dtype} are not intensities; save real numbers")
        _check_finite(arr, p)
        vol, order, _ = volume_to_cdhw(arr, affine, zooms)  # the demo's rule too
        if vol.shape[0] != in_channels:
            raise DataError(f"{p}: volume has {vol.shape[0]} channel(s) but the model takes {in_channels}")
        return Input("nifti", normalize(vol.astype(np.float32), spec), affine, tuple(order))
    raw = load_picture(p)
    _check_finite(raw, p)
    chans = _to_channels(raw, in_channels, p)
    image = normalize_picture(chans, spec, display_bit_depth(raw))
    return Input("image", image[:, None])


def write_output(target: Path, write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """``write(*args, **kwargs)``; a full disk or an unwritable folder is one line naming
    ``target``, and no half-written file is left behind."""
    try:
        write(*args, **kwargs)
    except OSError as exc:
        target.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise DataError(f"disk full at {target}; free space or choose another --output") from None
        raise DataError(f"cannot write {target}: {exc.strerror or exc}") from None


def _progress(name: str) -> Callable[[int, int], None]:
    """Sliding-window progress on stderr: a line rewritten in place on a terminal, at
    most one line per 10 % in a log file."""
    tty = sys.stderr.isatty()
    shown = {"step": -1}

    def report(done: int, total: int) -> None:
        if total <= 1:
            return
        step = done * 10 // total
        if not tty and step == shown["step"]:
            return
        shown["step"] = step
        text = f"{name}: {done}/{total} windows ({100 * done // total} %)"
        if tty:
            print("\r" + text, end="\n" if done == total else "", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    return report


def predict_array(
    model: torch.nn.Module,
    image: np.ndarray,
    img_size: int,
    device: str | torch.device,
    tta: bool = False,
    batch_size: int = 16,
    overlap: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Labels ``(D, H, W)`` for a normalised ``(C, D, H, W)`` array.

    2-D inputs (``D == 1``) larger than ``img_size`` in H or W use sliding windows of
    ``img_size`` with Gaussian blending (``progress(done, total)`` after each batch of
    windows); everything else uses :func:`predict_volume`.
    """
    c, d, h, w = image.shape
    if d == 1 and (h > img_size or w > img_size):
        x = torch.as_tensor(image[:, 0], dtype=torch.float32, device=device)
        probs = sliding_window_probs(model, x, img_size, overlap=overlap, batch_size=batch_size,
                                     tta=tta, progress=progress)
        return probs.argmax(0).cpu().numpy()[None].astype(np.int64)
    return predict_volume(model, image, img_size, batch_size=batch_size, tta=tta, device=device)


def predict_files(
    inputs: list[str | Path],
    checkpoint: str | Path,
    out_dir: str | Path,
    tta: bool = False,
    device: str | torch.device | None = None,
    batch_size: int = 16,
    overlays: int = 3,
    verbose: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    backend: str = "torch",
) -> list[dict[str, Any]]:
    """Segment every input file and write label maps plus overlay PNGs to ``out_dir``.

    Label maps keep the input's geometry: NIfTI in -> ``<stem>_seg.nii.gz`` with the same
    shape and affine; PNG/JPG/BMP in -> ``<stem>_seg.png``; TIF in -> ``<stem>_seg.tif``
    (class indices as uint8). ``device`` is checked (``cpu``, ``cuda``, ``cuda:N``,
    ``mps``; default CUDA when available). ``backend`` (``torch``, ``onnxruntime``,
    ``auto``) picks the forward pass on CPU (:mod:`unetzoo.engine.backends`). Returns
    one record per input.
    """
    from unetzoo.engine.backends import check_backend, make_backend
    from unetzoo.engine.distributed import resolve_device

    check_backend(backend)
    dev = resolve_device(device)
    _check_inputs(inputs, max_pixels)
    ckpt = load_checkpoint(checkpoint)  # checks the inference spec and finite weights
    model = model_from_checkpoint(ckpt, device=dev)
    model = make_backend(model, backend, checkpoint=checkpoint, ckpt=ckpt, device=dev,
                         verbose=verbose)
    return predict_files_with_model(
        inputs, model, ckpt, out_dir, tta=tta, device=dev, batch_size=batch_size,
        overlays=overlays, verbose=verbose, max_pixels=max_pixels, source=checkpoint,
    )


def _check_inputs(inputs: list[str | Path], max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Path]:
    """Every input exists, has a known type and passes the header checks: a bad file
    among many stops the run before the model is loaded or anything is written."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise DataError(f"max_pixels must be a whole number >= 1, got {max_pixels!r}")
    paths = [Path(p) for p in inputs]
    if not paths:
        raise DataError("no input files given; pass one or more NIfTI/PNG/TIF paths")
    for p in paths:
        _kind(p)
        if not p.is_file():
            raise DataError(f"input {p} does not exist")
        _check_header(p, max_pixels)
    return paths


def predict_files_with_model(
    inputs: list[str | Path],
    model: Any,
    meta: dict[str, Any],
    out_dir: str | Path,
    tta: bool = False,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    overlays: int = 3,
    verbose: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    source: str | Path = "model metadata",
) -> list[dict[str, Any]]:
    """:func:`predict_files` for a model already in hand (a torch module or an ONNX one).

    ``meta`` holds the checkpoint keys prediction needs: ``img_size``, ``in_channels``,
    ``class_names`` and ``preprocessing`` (checked by :func:`check_inference_spec`;
    ``source`` names the file in its errors).
    """
    from unetzoo.data.io import save_case_nifti
    from unetzoo.engine.run_folder import check_output_dir

    paths = _check_inputs(inputs, max_pixels)
    meta = check_inference_spec(meta, source)
    img_size = meta["img_size"]
    in_ch = meta["in_channels"]
    spec = meta.get("preprocessing") or {"kind": "none"}
    class_names = list(meta["class_names"])
    out = check_output_dir(out_dir)

    records = []
    for p in paths:
        stem = _stem(p)
        inp = read_input(p, in_ch, spec, max_pixels)
        image = inp.image
        labels = predict_array(model, image, img_size, device, tta=tta, batch_size=batch_size,
                               progress=_progress(p.name) if verbose else None)
        if inp.kind == "nifti":
            # The one label writer puts it back on the input grid (shape, order, affine).
            target = out / f"{stem}_seg.nii.gz"
            write_output(target, save_case_nifti, labels, file_to_array_affine(inp.affine, inp.order),
                  target, inp.order)
        else:
            suffix = ".tif" if p.suffix.lower() in (".tif", ".tiff") else ".png"
            target = out / f"{stem}_seg{suffix}"
            lab2d = labels[0].astype(np.uint8)
            if suffix == ".tif":
                import tifffile

                write_output(target, tifffile.imwrite, str(target), lab2d)
            else:
                from PIL import Image

                write_output(target, Image.fromarray(lab2d).save, target)
        shown = []
        if overlays:
            for z in pick_slices(labels, overlays):
                png = out / f"{stem}_overlay{'' if labels.shape[0] == 1 else f'_slice{z:03d}'}.png"
                write_output(png, overlay_png, png, image[0, z], labels[z], class_names, title=p.name,
                      affine=file_to_array_affine(inp.affine, inp.order))  # radiological
                shown.append(str(png))
        counts = {class_names[k]: int((labels == k).sum()) for k in range(1, len(class_names))}
        records.append({"input": str(p), "output": str(target), "overlays": shown, "voxels": counts})
        if verbose:
            print(f"{p} -> {target}", flush=True)
    return records
