"""nnU-Net-style prediction: files and folders in, one label map per case out.

``unetzoo predict`` runs this. Inputs are files and folders (expanded in sorted order);
nnU-Net channel files ``CASE_0000``, ``CASE_0001`` ... form one case ``CASE``, any other
file is a one-channel case of its own name, a DICOM series folder is one case
(:func:`unetzoo.data.medio.group_cases`). Volumes (NIfTI, NRRD, MetaImage, DICOM) are read
by :mod:`unetzoo.data.medio` in one convention and segmented slice by slice as
:func:`unetzoo.engine.predict.predict_array` does; the label map ``CASE<ending>`` keeps the
input's shape and geometry in the input's own format (NIfTI for DICOM). 2-D pictures are
read by :func:`unetzoo.engine.predict.read_input` and written as ``CASE_seg.png`` /
``.tif`` as before. A label map that would overwrite an input is refused before any work.

Options beyond the single-checkpoint path:

* ``model`` may be an :class:`unetzoo.engine.ensemble.EnsembleModel` (several
  checkpoints: averaged softmax);
* ``postprocessing``: a plan of :mod:`unetzoo.engine.postprocess`, applied to every label
  map (the CLI finds the plan stored with the checkpoint);
* ``save_probabilities``: ``CASE.npz`` with ``probabilities`` float32 ``(K, z, y, x)``
  (nnU-Net's ``--save_probabilities`` layout: the file's index order reversed, before
  post-processing) and ``class_names``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetzoo.data import medio
from unetzoo.engine.logging.plots import overlay_png, pick_slices
from unetzoo.engine.predict import write_output
from unetzoo.errors import DataError


def _is_picture(files: Sequence[Path]) -> bool:
    return medio.file_ending(files[0]) in medio.PICTURE_ENDINGS


def _output_name(case: str, files: Sequence[Path]) -> str:
    """``CASE<ending>`` for volumes (:func:`unetzoo.data.medio.output_ending`),
    ``CASE_seg.png`` / ``.tif`` for pictures (a picture's class map, not a photo)."""
    if _is_picture(files):
        tif = files[0].suffix.lower() in (".tif", ".tiff")
        return f"{case}_seg{'.tif' if tif else '.png'}"
    return f"{case}{medio.output_ending(files[0])}"


def check_cases(
    inputs: Sequence[str | Path], max_pixels: int | None = None
) -> dict[str, list[Path]]:
    """Group ``inputs`` into cases and check every file from its header (type, empty axes,
    slice size): a bad file among many stops the run before any model is loaded or anything
    is written. Returns :func:`unetzoo.data.medio.group_cases`'s mapping."""
    from unetzoo.engine.predict import DEFAULT_MAX_PIXELS, _check_header, _check_size

    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise DataError(f"max_pixels must be a whole number >= 1, got {max_pixels!r}")
    cases = medio.group_cases(inputs)
    for case, files in cases.items():
        ending = medio.file_ending(files[0])
        if ending == "":
            raise DataError(
                f"{files[0]}: unsupported input type; give NIfTI (.nii, .nii.gz), NRRD, "
                f"MetaImage (.mha, .mhd), a DICOM series folder, or 2-D pictures "
                f"({', '.join(medio.PICTURE_ENDINGS)})"
            )
        if ending in medio.PICTURE_ENDINGS and len(files) > 1:
            raise DataError(
                f"case {case}: channels of a 2-D picture come in one file (RGB); got "
                f"{len(files)} files"
            )
        for f in files:
            if ending in medio.PICTURE_ENDINGS or ending in medio.NIFTI_ENDINGS:
                _check_header(f, max_pixels)  # predict's own header rules
                continue
            shape = medio.image_shape(f)
            if len(shape) < 2 or len(shape) > 4:
                raise DataError(f"{f}: expected a 2-D or 3-D image, got shape {shape}")
            _check_size(shape, f, max_pixels, volume=len(shape) > 2)
    return cases


def read_volume_case(
    case: str, files: Sequence[Path], in_channels: int, spec: dict[str, Any], max_pixels: int
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int], int]:
    """Read and normalise one volume case.

    Returns ``(image (C, D, H, W) float32, affine, order, file_ndim)``: ``order`` is the
    file axis of each of ``D, H, W`` (:func:`unetzoo.data.nnunet.reorient`), ``file_ndim``
    the number of spatial axes in the file (2 for a single-slice 2-D file).
    """
    from unetzoo.data.io import volume_to_cdhw
    from unetzoo.data.preprocessing import normalize

    arr, affine, zooms = medio.load_case_channels(files)
    multi = len(files) > 1 or arr.ndim == 4
    spatial = arr.shape[:-1] if multi else arr.shape
    if len(spatial) not in (2, 3):
        raise DataError(
            f"case {case}: expected a 2-D or 3-D image per channel file, got shape {arr.shape}"
        )
    file_ndim = len(spatial)
    if any(n == 0 for n in spatial):
        raise DataError(f"case {case}: the image has an empty axis (shape {arr.shape})")
    h, w = sorted(spatial, reverse=True)[:2]
    if h * w > max_pixels:
        raise DataError(
            f"case {case}: slices of {w} x {h} pixels are over predict's limit of "
            f"{max_pixels:,} pixels; crop or downsample it, or raise --max-pixels"
        )
    if file_ndim == 2:
        arr = arr[:, :, None] if not multi else arr[:, :, None, :]
        zooms = (*zooms[:2], 1.0)
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise DataError(
            f"case {case}: {bad} voxel(s) hold NaN or Inf; fix or mask them (e.g. set them to "
            "the background intensity) before predicting"
        )
    vol, order, _ = volume_to_cdhw(arr, affine, zooms)  # predict's and the demo's rule
    if vol.shape[0] != in_channels:
        names = ", ".join(f.name for f in files)
        raise DataError(
            f"case {case} has {vol.shape[0]} channel(s) ({names}) but the model takes "
            f"{in_channels}; give them as {case}_0000 ... {case}_{in_channels - 1:04d}"
        )
    return normalize(vol.astype(np.float32), spec), affine, tuple(order), file_ndim


def _probabilities(
    model: Any, image: np.ndarray, img_size: int, device: Any, tta: bool, batch_size: int
) -> np.ndarray:
    """``(K, D, H, W)`` probabilities, with the same routing as ``predict_array``."""
    from unetzoo.engine.ensemble import predict_volume_probs
    from unetzoo.engine.inference import sliding_window_probs

    c, d, h, w = image.shape
    if d == 1 and (h > img_size or w > img_size):
        x = torch.as_tensor(image[:, 0], dtype=torch.float32, device=device)
        p = sliding_window_probs(model, x, img_size, batch_size=batch_size, tta=tta)
        return p.cpu().numpy()[:, None].astype(np.float32)
    return predict_volume_probs(model, image, img_size, batch_size=batch_size, tta=tta,
                                device=device)


def predict_cases(
    inputs: Sequence[str | Path],
    model: Any,
    meta: dict[str, Any],
    out_dir: str | Path,
    *,
    tta: bool = False,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    overlays: int = 3,
    verbose: bool = True,
    save_probabilities: bool = False,
    postprocessing: dict[str, Any] | None = None,
    max_pixels: int | None = None,
    source: str | Path = "model metadata",
) -> list[dict[str, Any]]:
    """Segment every case of ``inputs`` (see the module docstring); one record per case.

    ``meta`` holds the checkpoint keys prediction needs (``img_size``, ``in_channels``,
    ``class_names``, ``preprocessing``), checked as
    :func:`unetzoo.engine.predict.check_inference_spec` does.
    """
    from unetzoo.engine.logging.display import file_to_array_affine
    from unetzoo.engine.postprocess import apply_postprocessing, check_plan
    from unetzoo.engine.predict import (
        DEFAULT_MAX_PIXELS,
        check_inference_spec,
        predict_array,
        read_input,
    )
    from unetzoo.engine.run_folder import check_output_dir

    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    cases = check_cases(inputs, max_pixels)
    meta = check_inference_spec(meta, source)
    if postprocessing is not None:
        check_plan(postprocessing)
    img_size, in_ch = meta["img_size"], meta["in_channels"]
    spec = meta.get("preprocessing") or {"kind": "none"}
    class_names = list(meta["class_names"])
    out = Path(out_dir)
    targets = {case: out / _output_name(case, files) for case, files in cases.items()}
    inputs_resolved = {f.resolve() for files in cases.values() for f in files}
    for case, target in targets.items():
        if target.resolve() in inputs_resolved:
            raise DataError(
                f"the label map of case {case} would overwrite its input {target}; "
                "choose another --output folder"
            )
    out = check_output_dir(out_dir)

    records = []
    for case, files in cases.items():
        picture = _is_picture(files)
        if picture:
            image = read_input(files[0], in_ch, spec, max_pixels).image
            affine, order, file_ndim = None, None, 2
        else:
            image, affine, order, file_ndim = read_volume_case(case, files, in_ch, spec,
                                                               max_pixels)
        probs = None
        if save_probabilities:
            probs = _probabilities(model, image, img_size, device, tta, batch_size)
            labels = probs.argmax(0).astype(np.int64)
        else:
            labels = predict_array(model, image, img_size, device, tta=tta,
                                   batch_size=batch_size)
        if postprocessing is not None:
            labels = apply_postprocessing(labels, postprocessing)
        target = targets[case]
        if picture:
            lab2d = labels[0].astype(np.uint8)
            if target.suffix == ".tif":
                import tifffile

                write_output(target, tifffile.imwrite, str(target), lab2d)
            else:
                from PIL import Image

                write_output(target, Image.fromarray(lab2d).save, target)
            file_probs = None if probs is None else probs[:, 0]  # (K, H, W) = (K, y, x)
        else:
            inv = tuple(np.argsort(order))
            file_labels = np.transpose(labels, inv)  # back to the file's (i, j, k)
            if file_ndim == 2:
                file_labels = file_labels[:, :, 0]
            write_output(target, medio.save_labels, file_labels, affine, target)
            file_probs = None
            if probs is not None:
                fp = np.transpose(probs, (0, *(1 + np.asarray(inv))))  # (K, i, j, k)
                if file_ndim == 2:
                    fp = fp[..., 0]
                # nnU-Net's layout: the file's index order reversed, (K, z, y, x).
                file_probs = np.transpose(fp, (0, *range(fp.ndim - 1, 0, -1)))
        npz = None
        if file_probs is not None:
            npz = out / f"{case}.npz"
            write_output(npz, np.savez_compressed, npz,
                   probabilities=np.ascontiguousarray(file_probs, dtype=np.float32),
                   class_names=np.array(class_names))
        shown = []
        if overlays:
            for z in pick_slices(labels, overlays):
                png = out / f"{case}_overlay{'' if labels.shape[0] == 1 else f'_slice{z:03d}'}.png"
                write_output(png, overlay_png, png, image[0, z], labels[z], class_names, title=case,
                       affine=file_to_array_affine(affine, order))  # radiological display
                shown.append(str(png))
        counts = {class_names[k]: int((labels == k).sum()) for k in range(1, len(class_names))}
        records.append({
            "case": case, "inputs": [str(f) for f in files], "output": str(target),
            "probabilities": None if npz is None else str(npz), "overlays": shown,
            "voxels": counts,
        })
        if verbose:
            print(f"{case} ({len(files)} file(s)) -> {target}", flush=True)
    return records
