"""nnU-Net-style prediction: files and folders in, one label map per case out.

``unetzoo predict`` runs this. Inputs are files and folders (expanded in sorted order);
nnU-Net channel files ``CASE_0000``, ``CASE_0001`` ... form one case ``CASE``, any other
file is a one-channel case of its own name, a DICOM series folder is one case
(:func:`unetzoo.data.imageio.group_cases`). Every file is read by the registry of
:mod:`unetzoo.data.imageio` (sizes checked once, from the headers, before any model is
loaded) and segmented slice by slice (:func:`predict_array`); the label map
``CASE<ending>`` keeps the input's shape and geometry in the input's own format (NIfTI
for DICOM, or a DICOM SEG with ``output_format="dicom-seg"``); 2-D pictures give
``CASE_seg.png`` / ``.tif``. One writer writes them all
(:func:`unetzoo.data.imageio.write_labels`).
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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetzoo.data import imageio
from unetzoo.data.geometry import Reorientation, file_to_array_affine, reorientation
from unetzoo.data.imageio import DEFAULT_MAX_PIXELS, Decoded
from unetzoo.data.plan import view_spacing
from unetzoo.engine.inference import predict_volume, sliding_window_probs
from unetzoo.engine.inputs import prepare, progress_printer, write_output
from unetzoo.engine.logging.plots import overlay_png, pick_slices
from unetzoo.engine.spec import InferenceSpec
from unetzoo.errors import DataError
from unetzoo.runs.outputs import OUTPUTS_MANIFEST, OutputFolder

#: ``--format``: ``auto`` writes each input's own format (NIfTI for DICOM series);
#: ``dicom-seg`` a DICOM SEG for DICOM series (:mod:`unetzoo.data.imageio.dicom_seg`).
OUTPUT_FORMATS = ("auto", "dicom-seg")


def gather_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], int]:
    """:func:`unetzoo.data.imageio.expand_inputs`, less the files unetzoo wrote: a folder's
    files listed in its ``.unetzoo-outputs.json`` (:class:`OutputFolder`: an earlier
    ``predict`` into that folder) are outputs, never inputs, so a folder predicted into
    itself gives the same cases on a re-run. A file named on its own is always an input.
    Returns the inputs and how many files were skipped."""
    files: list[Path] = []
    skipped = 0
    for raw in inputs:
        p = Path(raw)
        found = imageio.expand_inputs([p])
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
    header (type, empty axes, slice size: :func:`unetzoo.data.imageio.read_header`, the
    one size check): a bad file among many stops the run before any model is loaded or
    anything is written. Returns :func:`unetzoo.data.imageio.group_cases`'s mapping;
    with ``say_skipped``, one stderr line counts the files of unetzoo's that were not
    taken as inputs."""
    max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise DataError(f"max_pixels must be a whole number >= 1, got {max_pixels!r}")
    files, skipped = gather_inputs(inputs)
    if skipped and say_skipped:
        print(f"skipped {skipped} file(s) in the input folder(s) that unetzoo wrote there "
              f"(an earlier run's outputs, listed in {OUTPUTS_MANIFEST}); not inputs",
              file=sys.stderr, flush=True)
    cases = imageio.group_cases(files)
    limits = imageio.Limits(max_pixels=max_pixels)
    for case, files in cases.items():
        if imageio.file_ending(files[0]) in imageio.PICTURE_ENDINGS and len(files) > 1:
            raise DataError(
                f"case {case}: channels of a 2-D picture come in one file (RGB); got "
                f"{len(files)} files"
            )
        for f in files:
            imageio.read_header(f, limits)
    return cases


def read_case(
    case: str, files: Sequence[Path], spec: InferenceSpec, strict_inputs: bool = False,
) -> tuple[Decoded, Reorientation | None, str | None]:
    """Read one case (headers checked by :func:`check_cases`) with the spec's channels
    and preprocessing: the :class:`~unetzoo.data.imageio.Decoded` input whose ``array``
    is the normalised ``(C, D, H, W)`` float32 model input, in the model's training
    orientation (``view`` maps it back to the file's grid, None when it is the file's
    own), and a warning for an input far outside the training intensities
    (:func:`~unetzoo.engine.inputs.prepare`; an error under ``strict_inputs``)."""
    where = str(files[0]) if len(files) == 1 else f"case {case}"
    dec = imageio.decode(files, where=where)
    view = training_orientation(dec, spec)
    if view is not None:  # before normalising: the same voxels in the same order
        dec = dataclasses.replace(dec, array=view.forward(dec.array))
    image, warning = prepare(dec, spec, case, strict_inputs)
    return dataclasses.replace(dec, array=image), view, warning


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


def _file_probabilities(image: Decoded, probs: np.ndarray) -> np.ndarray:
    """``(K, D, H, W)`` probabilities in nnU-Net's ``(K, z, y, x)``: the file's index
    order reversed (a picture: ``(K, H, W)``)."""
    if image.picture:
        return probs[:, 0]
    from unetzoo.data.geometry import array_to_file

    assert image.order is not None
    fp = np.moveaxis(array_to_file(np.moveaxis(probs, 0, -1), None, image.order)[0], -1, 0)
    if image.file_ndim == 2:
        fp = fp[..., 0]
    return np.transpose(fp, (0, *range(fp.ndim - 1, 0, -1)))


def write_case(case: str, image: Decoded, labels: np.ndarray, probs: np.ndarray | None,
               target: Path, class_names: list[str]) -> str | None:
    """Write the label map to ``target`` on the input's grid (the one writer,
    :func:`unetzoo.data.imageio.write_labels`) and, with ``probs``, ``CASE.npz`` beside
    it; returns the ``.npz`` path or None."""
    write_output(target, imageio.write_labels, labels, image, target, class_names)
    if probs is None:
        return None
    npz = target.parent / f"{case}.npz"
    write_output(npz, np.savez_compressed, npz,
                 probabilities=np.ascontiguousarray(_file_probabilities(image, probs),
                                                    dtype=np.float32),
                 class_names=np.array(class_names))
    return str(npz)


def write_overlays(case: str, image: Decoded, labels: np.ndarray, out: Path,
                   class_names: list[str], count: int) -> list[str]:
    """Up to ``count`` overlay PNGs of the most informative slices, radiological display."""
    from unetzoo.engine.logging.display import file_to_array_affine

    shown = []
    for z in pick_slices(labels, count) if count else []:
        png = out / f"{case}_overlay{'' if labels.shape[0] == 1 else f'_slice{z:03d}'}.png"
        write_output(png, overlay_png, png, image.array[0, z], labels[z], class_names,
                     title=case, affine=file_to_array_affine(image.affine, image.order))
        shown.append(str(png))
    return shown


def plan_targets(cases: dict[str, list[Path]], out_dir: str | Path,
                 output_format: str = "auto") -> dict[str, Path]:
    """The label map path of every case (``CASE`` + :func:`unetzoo.data.imageio.output_ending`);
    one that would overwrite an input is refused before any work."""
    out = Path(out_dir)
    targets = {case: out / f"{case}{imageio.output_ending(files[0], output_format)}"
               for case, files in cases.items()}
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
    save_probabilities: bool = False, overlays: int = 3, output_format: str = "auto",
) -> tuple[dict[str, Path], OutputFolder]:
    """:func:`plan_targets`, then every file the run may write (label maps, ``CASE.npz``,
    the case's overlay PNGs, whose slice numbers are known only after the prediction, so
    every existing ``CASE_overlay*.png`` of ours) claimed in ``out_dir``: one that exists
    and that unetzoo did not write is refused (one line) unless ``overwrite``."""
    targets = plan_targets(cases, out_dir, output_format)
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
    output_format: str = "auto",
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
    under ``strict_inputs``. ``output_format`` (:data:`OUTPUT_FORMATS`): ``"dicom-seg"``
    writes a DICOM series' labels as a DICOM SEG ``CASE.seg.dcm`` referencing it.
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
                                    save_probabilities=save_probabilities, overlays=overlays,
                                    output_format=output_format)
    out = check_output_dir(out_dir)
    records = []
    for case, files in cases.items():
        image, view, warning = read_case(case, files, spec, strict_inputs)
        spacing = image.grid_spacing
        for line in (warning, spec.spacing_warning(spacing, str(files[0]))):
            if line:  # even when quiet: it is about the result
                print(line, file=sys.stderr, flush=True)
        probs = None
        if save_probabilities:
            probs = predict_probabilities(model, image.array, spec.img_size, device, tta,
                                          batch_size, plan=spec.plan,
                                          spacing=view_spacing(spacing, view))
            labels = probs.argmax(0).astype(np.int64)
        else:
            labels = predict_array(model, image.array, spec.img_size, device, tta=tta,
                                   batch_size=batch_size,
                                   progress=progress_printer(files[0].name) if verbose else None,
                                   plan=spec.plan, spacing=view_spacing(spacing, view))
        if view is not None:  # back onto the input's grid (exact: a transpose and flips)
            labels, probs = view.back(labels), None if probs is None else view.back(probs, 1)
            image = dataclasses.replace(image, array=view.back(image.array, lead=1))
        if postprocessing is not None:
            labels = apply_postprocessing(labels, postprocessing)
        npz = write_case(case, image, labels, probs, targets[case], class_names)
        shown = write_overlays(case, image, labels, out, class_names, overlays)
        folder.record(Path(f).name for f in (targets[case], npz, *shown) if f)
        records.append({
            "case": case, "inputs": [str(f) for f in files], "input": str(files[0]),
            "output": str(targets[case]), "probabilities": npz, "overlays": shown,
            "voxels": {class_names[k]: int((labels == k).sum()) for k in range(1, len(class_names))},
        })
        if verbose:
            print(f"{case} ({len(files)} file(s)) -> {targets[case]}", flush=True)
    return records
