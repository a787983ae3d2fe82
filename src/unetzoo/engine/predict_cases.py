"""nnU-Net-style prediction: files and folders in, one label map per case out.

``unetzoo predict`` runs this. Inputs are files and folders (expanded in sorted order);
nnU-Net channel files ``CASE_0000``, ``CASE_0001`` ... form one case ``CASE``, any other
file is a one-channel case of its own name, a DICOM series folder is one case
(:func:`unetzoo.data.medio.group_cases`). Volumes (NIfTI, NRRD, MetaImage, DICOM) are read
by :func:`unetzoo.engine.inputs.read_volume_case` in one convention and segmented slice
by slice (:func:`predict_array`); the label map ``CASE<ending>`` keeps the input's shape
and geometry in the input's own format (NIfTI for DICOM). 2-D pictures are read by
:func:`unetzoo.engine.inputs.read_input` and written as ``CASE_seg.png`` / ``.tif``.
This is the one prediction path: ``unetzoo predict``, the Python API
(:func:`unetzoo.engine.predict.predict_files`, :class:`unetzoo.engine.predict.Predictor`)
and ONNX files all run it; the inference spec (:class:`unetzoo.engine.spec.InferenceSpec`)
says how. A label map that would overwrite an input is refused before any work, and so is
every target that exists in the output folder and that unetzoo did not write there (its
``.unetzoo-outputs.json``, :class:`unetzoo.engine.run_folder.OutputFolder`) unless
``overwrite``: re-running into the same folder replaces unetzoo's own files only, and
the files that manifest lists are never gathered as inputs (:func:`gather_inputs`), so
predicting a folder into itself twice predicts the same cases.

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

import dataclasses
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetzoo.data import medio
from unetzoo.data.geometry import Reorientation, file_to_array_affine, reorientation
from unetzoo.data.plan import view_spacing
from unetzoo.engine.inference import predict_volume, sliding_window_probs
from unetzoo.engine.inputs import (
    DEFAULT_MAX_PIXELS,
    Decoded,
    check_header,
    check_size,
    decode,
    intensity_warning,
    match_channels,
    model_input,
    progress_printer,
    write_output,
)
from unetzoo.engine.logging.plots import overlay_png, pick_slices
from unetzoo.engine.spec import InferenceSpec
from unetzoo.errors import DataError
from unetzoo.runs.outputs import OUTPUTS_MANIFEST, OutputFolder


def _is_picture(files: Sequence[Path]) -> bool:
    return medio.file_ending(files[0]) in medio.PICTURE_ENDINGS


def _output_name(case: str, files: Sequence[Path]) -> str:
    """``CASE<ending>`` for volumes (:func:`unetzoo.data.medio.output_ending`),
    ``CASE_seg.png`` / ``.tif`` for pictures (a picture's class map, not a photo)."""
    if _is_picture(files):
        tif = files[0].suffix.lower() in (".tif", ".tiff")
        return f"{case}_seg{'.tif' if tif else '.png'}"
    return f"{case}{medio.output_ending(files[0])}"


def gather_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], int]:
    """:func:`unetzoo.data.medio.expand_inputs`, less the files unetzoo wrote: a folder's
    files listed in its ``.unetzoo-outputs.json`` (:class:`OutputFolder`: an earlier
    ``predict`` into that folder) are outputs, never inputs, so a folder predicted into
    itself gives the same cases on a re-run. A file named on its own is always an input.
    Returns the inputs and how many files were skipped."""
    files: list[Path] = []
    skipped = 0
    for raw in inputs:
        p = Path(raw)
        found = medio.expand_inputs([p])
        if p.is_dir() and found != [p]:  # a folder of inputs, not one DICOM series
            written = OutputFolder(p)
            keep = [f for f in found if not written.is_ours(f.name)]
            if not keep:
                raise DataError(
                    f"{p}: every image file there was written by unetzoo (listed in its "
                    f"{OUTPUTS_MANIFEST}); give the folder of the input images"
                )
            skipped += len(found) - len(keep)
            found = keep
        files.extend(found)
    return files, skipped


def check_cases(
    inputs: Sequence[str | Path], max_pixels: int | None = None, *, say_skipped: bool = False,
) -> dict[str, list[Path]]:
    """Group ``inputs`` (:func:`gather_inputs`) into cases and check every file from its
    header (type, empty axes, slice size): a bad file among many stops the run before any
    model is loaded or anything is written. Returns
    :func:`unetzoo.data.medio.group_cases`'s mapping; with ``say_skipped``, one stderr line
    counts the files of unetzoo's that were not taken as inputs."""
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise DataError(f"max_pixels must be a whole number >= 1, got {max_pixels!r}")
    files, skipped = gather_inputs(inputs)
    if skipped and say_skipped:
        print(f"skipped {skipped} file(s) in the input folder(s) that unetzoo wrote there "
              f"(an earlier run's outputs, listed in {OUTPUTS_MANIFEST}); not inputs",
              file=sys.stderr, flush=True)
    cases = medio.group_cases(files)
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
                check_header(f, max_pixels)  # predict's own header rules
                continue
            shape = medio.image_shape(f)
            if len(shape) < 2 or len(shape) > 4:
                raise DataError(f"{f}: expected a 2-D or 3-D image, got shape {shape}")
            check_size(shape, f, max_pixels, volume=len(shape) > 2)
    return cases


@dataclass
class CaseImage:
    """One case read and normalised: ``image`` ``(C, D, H, W)`` float32; for volumes the
    ``affine``, ``order`` (file axis of each of ``D, H, W``) and ``file_ndim`` (2 for a
    single-slice 2-D file); pictures have ``affine = order = None``."""

    case: str
    files: list[Path]
    image: np.ndarray
    affine: np.ndarray | None
    order: tuple[int, int, int] | None
    file_ndim: int
    warning: str | None = None
    #: ``image`` is in the model's training orientation: this maps it back to ``order``
    view: Reorientation | None = None

    @property
    def picture(self) -> bool:
        return self.order is None

    @property
    def spacing(self) -> tuple[float, ...] | None:
        """Voxel size (mm) along ``D, H, W`` from the file's affine; None for pictures."""
        if self.order is None or self.affine is None:
            return None
        zooms = np.linalg.norm(np.asarray(self.affine, dtype=np.float64)[:3, :3], axis=0)
        return tuple(float(zooms[a]) for a in self.order)


def read_case(
    case: str, files: Sequence[Path], spec: InferenceSpec, max_pixels: int,
    strict_inputs: bool = False,
) -> CaseImage:
    """Read one case with the spec's channels and preprocessing; an input far outside
    the training intensities (:func:`~unetzoo.engine.inputs.intensity_warning`) is an
    error under ``strict_inputs``, else ``CaseImage.warning``."""
    prep = dict(spec.preprocessing)
    if _is_picture(files):
        check_header(files[0], max_pixels)
        dec = decode(files[0], max_pixels)
        image = model_input(dec, spec.in_channels, prep)
        warning = intensity_warning(image, True, spec, dec.where, strict_inputs)
        ci = CaseImage(case, list(files), image, None, None, 2)
    else:
        dec = decode(files, max_pixels, where=str(files[0]) if len(files) == 1 else f"case {case}")
        raw = match_channels(dec, spec.in_channels, case)
        warning = intensity_warning(raw, False, spec, dec.where, strict_inputs)
        view = training_orientation(dec, spec)
        if view is not None:  # before normalising: the same voxels in the same order
            dec = dataclasses.replace(dec, array=view.forward(dec.array))
        ci = CaseImage(case, list(files), model_input(dec, spec.in_channels, prep, case),
                       dec.affine, dec.order, dec.file_ndim, view=view)
    ci.warning = warning
    return ci


def training_orientation(dec: Decoded, spec: InferenceSpec) -> Reorientation | None:
    """The :class:`~unetzoo.data.geometry.Reorientation` of a decoded volume into the
    orientation the model was trained in (``spec.orientation``, from the affine, not the
    file's axis order); None for pictures, single slices, unknown orientations and older
    checkpoints (the file's own slicing rule)."""
    if dec.picture or dec.array.shape[1] == 1 or not dec.geometry_known:
        return None
    view = reorientation(file_to_array_affine(dec.affine, dec.order), spec.orientation)
    return None if view is None or view.identity else view


def predict_array(
    model: torch.nn.Module,
    image: np.ndarray,
    img_size: int,
    device: str | torch.device,
    tta: bool = False,
    batch_size: int = 16,
    overlap: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
    plan=None,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Labels ``(D, H, W)`` for a normalised ``(C, D, H, W)`` array.

    2-D inputs (``D == 1``) larger than ``img_size`` in H or W use sliding windows of
    ``img_size`` with Gaussian blending (``progress(done, total)`` after each batch of
    windows); everything else, and every input of a planned model (``plan``: resampled
    from ``spacing`` to the plan's), uses :func:`~unetzoo.engine.inference.predict_volume`.
    """
    c, d, h, w = image.shape
    if plan is not None:
        return predict_volume(model, image, img_size, batch_size=batch_size, tta=tta,
                              device=device, plan=plan, spacing=spacing)
    if d == 1 and (h > img_size or w > img_size):
        x = torch.as_tensor(image[:, 0], dtype=torch.float32, device=device)
        probs = sliding_window_probs(model, x, img_size, overlap=overlap, batch_size=batch_size,
                                     tta=tta, progress=progress)
        return probs.argmax(0).cpu().numpy()[None].astype(np.int64)
    return predict_volume(model, image, img_size, batch_size=batch_size, tta=tta, device=device)


def predict_probabilities(
    model: Any, image: np.ndarray, img_size: int, device: Any, tta: bool, batch_size: int,
    plan=None, spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """``(K, D, H, W)`` probabilities, with the same routing as :func:`predict_array`."""
    from unetzoo.engine.ensemble import predict_volume_probs

    c, d, h, w = image.shape
    if d == 1 and (h > img_size or w > img_size) and plan is None:
        x = torch.as_tensor(image[:, 0], dtype=torch.float32, device=device)
        p = sliding_window_probs(model, x, img_size, batch_size=batch_size, tta=tta)
        return p.cpu().numpy()[:, None].astype(np.float32)
    return predict_volume_probs(model, image, img_size, batch_size=batch_size, tta=tta,
                                device=device, plan=plan, spacing=spacing)


def _to_file_order(ci: CaseImage, labels: np.ndarray,
                   probs: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels in the file's own axis order and probabilities in nnU-Net's ``(K, z, y, x)``
    (the file's index order reversed)."""
    if ci.picture:
        return labels[0].astype(np.uint8), None if probs is None else probs[:, 0]
    from unetzoo.data.geometry import array_to_file

    file_labels = array_to_file(labels, None, ci.order)[0]  # back to the file's (i, j, k)
    fp = None
    if probs is not None:  # (K, D, H, W) -> (K, i, j, k)
        fp = np.moveaxis(array_to_file(np.moveaxis(probs, 0, -1), None, ci.order)[0], -1, 0)
    if ci.file_ndim == 2:
        file_labels = file_labels[:, :, 0]
        fp = None if fp is None else fp[..., 0]
    if fp is not None:
        fp = np.transpose(fp, (0, *range(fp.ndim - 1, 0, -1)))
    return file_labels, fp


def write_case(ci: CaseImage, labels: np.ndarray, probs: np.ndarray | None, target: Path,
               class_names: list[str]) -> str | None:
    """Write the label map to ``target`` (the input's geometry) and, with ``probs``,
    ``CASE.npz`` beside it; returns the ``.npz`` path or None."""
    file_labels, file_probs = _to_file_order(ci, labels, probs)
    if not ci.picture:
        write_output(target, medio.save_labels, file_labels, ci.affine, target)
    elif target.suffix == ".tif":
        import tifffile

        write_output(target, tifffile.imwrite, str(target), file_labels)
    else:
        from PIL import Image

        write_output(target, Image.fromarray(file_labels).save, target)
    if file_probs is None:
        return None
    npz = target.parent / f"{ci.case}.npz"
    write_output(npz, np.savez_compressed, npz,
                 probabilities=np.ascontiguousarray(file_probs, dtype=np.float32),
                 class_names=np.array(class_names))
    return str(npz)


def write_overlays(ci: CaseImage, labels: np.ndarray, out: Path, class_names: list[str],
                   count: int) -> list[str]:
    """Up to ``count`` overlay PNGs of the most informative slices, radiological display."""
    from unetzoo.engine.logging.display import file_to_array_affine

    shown = []
    for z in pick_slices(labels, count) if count else []:
        png = out / f"{ci.case}_overlay{'' if labels.shape[0] == 1 else f'_slice{z:03d}'}.png"
        write_output(png, overlay_png, png, ci.image[0, z], labels[z], class_names,
                     title=ci.case, affine=file_to_array_affine(ci.affine, ci.order))
        shown.append(str(png))
    return shown


def plan_targets(cases: dict[str, list[Path]], out_dir: str | Path) -> dict[str, Path]:
    """The label map path of every case; one that would overwrite an input is refused
    before any work."""
    out = Path(out_dir)
    targets = {case: out / _output_name(case, files) for case, files in cases.items()}
    inputs_resolved = {f.resolve() for files in cases.values() for f in files}
    for case, target in targets.items():
        if target.resolve() in inputs_resolved:
            raise DataError(
                f"the label map of case {case} would overwrite its input {target}; "
                "choose another --output folder"
            )
    return targets


def claim_targets(
    cases: dict[str, list[Path]], out_dir: str | Path, *, overwrite: bool = False,
    save_probabilities: bool = False, overlays: int = 3,
) -> tuple[dict[str, Path], OutputFolder]:
    """:func:`plan_targets`, then every file the run may write (label maps, ``CASE.npz``,
    the case's overlay PNGs, whose slice numbers are known only after the prediction, so
    every existing ``CASE_overlay*.png`` of ours) claimed in ``out_dir``: one that exists
    and that unetzoo did not write is refused (one line) unless ``overwrite``."""
    targets = plan_targets(cases, out_dir)
    folder = OutputFolder(out_dir, overwrite=overwrite)
    names: list[str] = []
    for case, target in targets.items():
        names.append(target.name)
        if save_probabilities:
            names.append(f"{case}.npz")
        if overlays:
            names += folder.existing(rf"{re.escape(case)}_overlay(_slice\d{{3,}})?\.png")
    folder.claim(names)
    return targets, folder


def as_spec(meta: InferenceSpec | Mapping[str, Any], source: str | Path,
            model: Any = None) -> InferenceSpec:
    """``meta`` as a spec: a spec as is, a spec's keys (:meth:`InferenceSpec.to_dict`) read
    and checked;
    a dict without ``model`` names the model in hand (its ``unetzoo_name``)."""
    if isinstance(meta, InferenceSpec):
        return meta
    if isinstance(meta, Mapping) and not meta.get("model"):
        meta = {**meta, "model": {"name": getattr(model, "unetzoo_name", None)
                                  or type(model).__name__, "options": {}}}
    return InferenceSpec.from_dict(meta, str(source))


def predict_cases(
    inputs: Sequence[str | Path],
    model: Any,
    meta: InferenceSpec | Mapping[str, Any],
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
    overwrite: bool = False,
    strict_inputs: bool = False,
) -> list[dict[str, Any]]:
    """Segment every case of ``inputs`` (see the module docstring); one record per case:
    ``case``, ``inputs``, ``input`` (the first file), ``output``, ``probabilities``,
    ``overlays``, ``voxels`` (per foreground class).

    ``meta`` is the model's :class:`~unetzoo.engine.spec.InferenceSpec` (or a dict of its
    keys; ``source`` names it in errors). A target that exists and that
    unetzoo did not write is refused before any work unless ``overwrite``
    (:func:`claim_targets`). Volumes are predicted in the orientation the model was
    trained in (:func:`training_orientation`) and the labels mapped back to the input's
    grid; an input far outside the training intensities is one warning line, an error
    under ``strict_inputs``.
    """
    from unetzoo.engine.postprocess import apply_postprocessing, check_plan
    from unetzoo.engine.run_folder import check_output_dir

    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    cases = check_cases(inputs, max_pixels, say_skipped=True)  # once, even when quiet
    spec = as_spec(meta, source, model)
    if postprocessing is not None:
        check_plan(postprocessing)
    class_names = list(spec.class_names)
    targets, folder = claim_targets(cases, out_dir, overwrite=overwrite,
                                    save_probabilities=save_probabilities, overlays=overlays)
    out = check_output_dir(out_dir)
    records = []
    for case, files in cases.items():
        ci = read_case(case, files, spec, max_pixels, strict_inputs)
        for warning in (ci.warning, spec.spacing_warning(ci.spacing, str(files[0]))):
            if warning:  # even when quiet: it is about the result
                print(warning, file=sys.stderr, flush=True)
        probs = None
        if save_probabilities:
            probs = predict_probabilities(model, ci.image, spec.img_size, device, tta, batch_size,
                                          plan=spec.plan, spacing=view_spacing(ci.spacing, ci.view))
            labels = probs.argmax(0).astype(np.int64)
        else:
            labels = predict_array(model, ci.image, spec.img_size, device, tta=tta,
                                   batch_size=batch_size,
                                   progress=progress_printer(files[0].name) if verbose else None,
                                   plan=spec.plan, spacing=view_spacing(ci.spacing, ci.view))
        if ci.view is not None:  # back onto the input's grid (exact: a transpose and flips)
            labels, probs = ci.view.back(labels), None if probs is None else ci.view.back(probs, 1)
            ci = dataclasses.replace(ci, image=ci.view.back(ci.image, lead=1), view=None)
        if postprocessing is not None:
            labels = apply_postprocessing(labels, postprocessing)
        npz = write_case(ci, labels, probs, targets[case], class_names)
        shown = write_overlays(ci, labels, out, class_names, overlays)
        folder.record(Path(f).name for f in (targets[case], npz, *shown) if f)
        records.append({
            "case": case, "inputs": [str(f) for f in files], "input": str(files[0]),
            "output": str(targets[case]), "probabilities": npz, "overlays": shown,
            "voxels": {class_names[k]: int((labels == k).sum()) for k in range(1, len(class_names))},
        })
        if verbose:
            print(f"{case} ({len(files)} file(s)) -> {targets[case]}", flush=True)
    return records
