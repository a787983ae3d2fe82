"""``unetzoo predict``: label maps for NIfTI volumes and 2-D images, from a checkpoint alone.

Inputs are normalised with the checkpoint's preprocessing spec
(:func:`unetzoo.data.preprocessing.normalize`). Volumes are segmented slice by slice in
the TransUNet protocol (resize to ``img_size`` and back) along the through-plane axis and
written back in the file's own axis order with its affine. 2-D images larger than the
training size use sliding-window inference with Gaussian blending at their own
resolution; smaller ones are resized like volume slices. Every input also gets an
overlay PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetzoo.engine.checkpoint import load_checkpoint, model_from_checkpoint
from unetzoo.engine.inference import predict_volume, sliding_window_probs
from unetzoo.engine.logging.plots import overlay_png, pick_slices
from unetzoo.errors import DataError

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
    """``(H, W)`` / ``(H, W, C)`` pixels -> ``(in_channels, H, W)`` float32."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise DataError(f"{where}: expected a 2-D image, got array shape {arr.shape}")
    c = arr.shape[-1]
    if c == 4 and in_channels in (1, 3):  # drop alpha
        arr, c = arr[..., :3], 3
    if c == in_channels:
        out = arr
    elif in_channels == 1 and c == 3:
        out = (arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    elif in_channels == 3 and c == 1:
        out = np.repeat(arr, 3, axis=-1)
    else:
        raise DataError(
            f"{where}: image has {c} channel(s) but the model takes {in_channels}; convert it"
        )
    return np.moveaxis(out.astype(np.float32), -1, 0)


def predict_array(
    model: torch.nn.Module,
    image: np.ndarray,
    img_size: int,
    device: str | torch.device,
    tta: bool = False,
    batch_size: int = 16,
    overlap: float = 0.5,
) -> np.ndarray:
    """Labels ``(D, H, W)`` for a normalised ``(C, D, H, W)`` array.

    2-D inputs (``D == 1``) larger than ``img_size`` in H or W use sliding windows of
    ``img_size`` with Gaussian blending; everything else uses :func:`predict_volume`.
    """
    c, d, h, w = image.shape
    if d == 1 and (h > img_size or w > img_size):
        x = torch.as_tensor(image[:, 0], dtype=torch.float32, device=device)
        probs = sliding_window_probs(model, x, img_size, overlap=overlap, batch_size=batch_size, tta=tta)
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
) -> list[dict[str, Any]]:
    """Segment every input file and write label maps plus overlay PNGs to ``out_dir``.

    Label maps keep the input's geometry: NIfTI in -> ``<stem>_seg.nii.gz`` with the same
    shape and affine; PNG/JPG/BMP in -> ``<stem>_seg.png``; TIF in -> ``<stem>_seg.tif``
    (class indices as uint8). Returns one record per input.
    """
    _check_inputs(inputs)
    ckpt = load_checkpoint(checkpoint)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model_from_checkpoint(ckpt, device=device)
    return predict_files_with_model(
        inputs, model, ckpt, out_dir, tta=tta, device=device, batch_size=batch_size,
        overlays=overlays, verbose=verbose,
    )


def _check_inputs(inputs: list[str | Path]) -> list[Path]:
    paths = [Path(p) for p in inputs]
    if not paths:
        raise DataError("no input files given; pass one or more NIfTI/PNG/TIF paths")
    for p in paths:
        _kind(p)
        if not p.is_file():
            raise DataError(f"input {p} does not exist")
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
) -> list[dict[str, Any]]:
    """:func:`predict_files` for a model already in hand (a torch module or an ONNX one).

    ``meta`` holds the checkpoint keys prediction needs: ``img_size``, ``in_channels``,
    ``class_names`` and ``preprocessing``.
    """
    from unetzoo.data.io import load_image, load_nifti, save_nifti
    from unetzoo.data.nnunet import reorient
    from unetzoo.data.preprocessing import normalize
    from unetzoo.engine.trainer import check_output_dir

    paths = _check_inputs(inputs)
    img_size = int(meta["img_size"])
    in_ch = int(meta["in_channels"])
    spec = meta.get("preprocessing") or {"kind": "none"}
    class_names = list(meta["class_names"])
    out = check_output_dir(out_dir)

    records = []
    for p in paths:
        stem = _stem(p)
        if _kind(p) == "nifti":
            arr, affine, zooms = load_nifti(p)
            if arr.ndim == 2:
                arr, zooms = arr[..., None], (*zooms[:2], 1.0)
            if arr.ndim not in (3, 4):
                raise DataError(f"{p}: expected a 3-D (or 3-D + channels) volume, got {arr.shape}")
            # A single-slice axis is the slicing axis; otherwise the through-plane one.
            flat = next((i for i in range(3) if arr.shape[i] == 1), None)
            vol, _, _, order = reorient(arr, affine, zooms, flat)  # (D, H, W[, C])
            vol = vol[None] if vol.ndim == 3 else np.moveaxis(vol, -1, 0)
            if vol.shape[0] != in_ch:
                raise DataError(f"{p}: volume has {vol.shape[0]} channel(s) but the model takes {in_ch}")
            image = normalize(vol.astype(np.float32), spec)
            labels = predict_array(model, image, img_size, device, tta=tta, batch_size=batch_size)
            # Undo the reorientation so the label map lies on the input grid.
            file_labels = np.transpose(labels, np.argsort(order)).astype(np.uint8)
            target = out / f"{stem}_seg.nii.gz"
            save_nifti(file_labels, affine, target)
        else:
            raw = load_image(p)
            image = normalize(_to_channels(raw, in_ch, p), spec)[:, None]  # (C, 1, H, W)
            labels = predict_array(model, image, img_size, device, tta=tta, batch_size=batch_size)
            suffix = ".tif" if p.suffix.lower() in (".tif", ".tiff") else ".png"
            target = out / f"{stem}_seg{suffix}"
            lab2d = labels[0].astype(np.uint8)
            if suffix == ".tif":
                import tifffile

                tifffile.imwrite(str(target), lab2d)
            else:
                from PIL import Image

                Image.fromarray(lab2d).save(target)
        shown = []
        if overlays:
            for z in pick_slices(labels, overlays):
                png = out / f"{stem}_overlay{'' if labels.shape[0] == 1 else f'_slice{z:03d}'}.png"
                overlay_png(png, image[0, z], labels[z], class_names, title=f"{p.name}")
                shown.append(str(png))
        counts = {class_names[k]: int((labels == k).sum()) for k in range(1, len(class_names))}
        records.append({"input": str(p), "output": str(target), "overlays": shown, "voxels": counts})
        if verbose:
            print(f"{p} -> {target}", flush=True)
    return records
