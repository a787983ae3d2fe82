"""Prediction from a file: one loader for ``.pt`` checkpoints and ``.onnx`` exports.

:func:`load_predictor` opens one checkpoint, several (an ensemble: averaged softmax) or an
ONNX file written by ``unetzoo export`` and returns a :class:`Predictor`: a forward module
plus the model's :class:`~unetzoo.engine.spec.InferenceSpec`, read from the checkpoint or
from the ONNX metadata, so everything downstream treats both alike. ``unetzoo predict``,
the Python API (:func:`predict_files`), ``unetzoo export``'s ONNX runner and the demo all
load through it, and all predict files through the one path,
:func:`unetzoo.engine.predict_cases.predict_cases` (nnU-Net naming ``CASE<ending>`` with
the input's geometry, ``CASE_seg.png`` for pictures, the stored post-processing plan).

What is refused, in one line each: an inference spec that cannot be right (``img_size``
< 8, a zero-width intensity window), non-finite weights, and every input problem of
:mod:`unetzoo.engine.inputs` (checked for all inputs before the model is loaded).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unetzoo.engine.checkpoint import Checkpoint
from unetzoo.engine.predict_cases import predict_array, predict_cases
from unetzoo.engine.spec import InferenceSpec
from unetzoo.errors import ConfigError

#: ``postprocessing`` value meaning "the plan stored with the checkpoint, if any".
STORED = "stored"


@dataclass
class Predictor:
    """A model ready to predict: ``model`` (a module returning logits, possibly ONNX
    Runtime, a CPU backend or an ensemble) and its ``spec``.

    Attributes:
        model: the forward module.
        spec: the inference spec (same for every ensemble member).
        source: the file it came from (the first member's).
        device: where the forward runs.
        checkpoint: the first :class:`Checkpoint` (None for ONNX): the stored plan lives there.
        members: every file loaded.
        batch_size, tta: defaults for :meth:`predict_files` / :meth:`predict_volume`.
    """

    model: nn.Module
    spec: InferenceSpec
    source: Path
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    checkpoint: Checkpoint | None = None
    members: list[str] = field(default_factory=list)
    batch_size: int = 16
    tta: bool = False

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)

    @property
    def img_size(self) -> int:
        return self.spec.img_size

    @property
    def in_channels(self) -> int:
        return self.spec.in_channels

    @property
    def preprocessing(self) -> dict[str, Any]:
        return dict(self.spec.preprocessing)

    def stored_postprocessing(self) -> dict[str, Any] | None:
        """The post-processing plan stored with the (first) checkpoint, else None."""
        if self.checkpoint is None:
            return None
        from unetzoo.engine.postprocess import plan_for_checkpoint

        return plan_for_checkpoint(self.checkpoint, self.source)

    def predict_volume(self, image: np.ndarray,
                       spacing: Sequence[float] | None = None) -> np.ndarray:
        """Labels ``(D, H, W)`` int64 of a normalised ``(C, D, H, W)`` array (sliding
        windows for 2-D images larger than ``img_size``; a planned model resamples from
        ``spacing`` ``(sz, sy, sx)`` mm, None: already at the plan's spacing)."""
        return predict_array(self.model, np.asarray(image, dtype=np.float32), self.img_size,
                             self.device, tta=self.tta, batch_size=self.batch_size,
                             plan=self.spec.plan, spacing=spacing)

    def predict_files(
        self, inputs: Sequence[str | Path], out_dir: str | Path, *,
        postprocessing: dict[str, Any] | str | Path | None = STORED, overlays: int = 3,
        verbose: bool = True, save_probabilities: bool = False, max_pixels: int | None = None,
        tta: bool | None = None, batch_size: int | None = None, overwrite: bool = False,
        strict_inputs: bool = False, output_format: str = "auto",
    ) -> list[dict[str, Any]]:
        """:func:`~unetzoo.engine.predict_cases.predict_cases` with this model;
        ``postprocessing`` is :data:`STORED` (the checkpoint's plan), None, a plan or a
        plan file. A file in ``out_dir`` under a target's name that unetzoo did not write
        is refused before any work unless ``overwrite``."""
        return predict_cases(
            inputs, self.model, self.spec, out_dir, tta=self.tta if tta is None else tta,
            device=self.device, batch_size=batch_size or self.batch_size,
            overlays=max(int(overlays), 0), verbose=verbose,
            save_probabilities=save_probabilities, postprocessing=self._plan(postprocessing),
            max_pixels=max_pixels, source=self.source, overwrite=overwrite,
            strict_inputs=strict_inputs, output_format=output_format,
        )

    def _plan(self, postprocessing: dict[str, Any] | str | Path | None) -> dict[str, Any] | None:
        if isinstance(postprocessing, str) and postprocessing == STORED:
            return self.stored_postprocessing()
        if isinstance(postprocessing, (str, Path)):
            from unetzoo.engine.postprocess import load_plan

            return load_plan(postprocessing)
        return postprocessing


def load_predictor(
    paths: str | Path | Sequence[str | Path],
    *,
    device: str | torch.device | None = None,
    backend: str = "torch",
    kind: str | None = None,
    batch_size: int = 16,
    tta: bool = False,
    verbose: bool = False,
    providers: list[str] | None = None,
    precision: str = "fp32",
) -> Predictor:
    """The one loader: a :class:`Predictor` for a checkpoint, several checkpoints (an
    ensemble) or an ONNX file.

    Args:
        paths: one file or a list of checkpoints.
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` (default CUDA when available);
            ONNX files run on ONNX Runtime's ``providers`` (default CPU).
        backend: ``torch``, ``onnxruntime`` or ``auto``: the CPU forward pass of a
            checkpoint (:mod:`unetzoo.engine.backends`).
        kind: ``"checkpoint"`` or ``"onnx"``; default by the file name (``.onnx``). Both
            readers check the content (a checkpoint is read with ``weights_only=True``,
            an ONNX file must be ONNX protobuf), so a misnamed file is refused, not run.
        precision: ``"fp32"`` or ``"bf16"`` (PyTorch autocast, checkpoints only, where
            the device has native bf16: :func:`unetzoo.engine.backends.check_precision`).

    Raises:
        CheckpointError: a missing, damaged or foreign file; members that disagree.
        ConfigError: an unknown backend or device.
    """
    names, kind = _check_request(paths, kind, backend, precision)
    return _open(names, kind, device, backend, batch_size, tta, verbose, providers, precision)


def _check_request(paths: str | Path | Sequence[str | Path], kind: str | None, backend: Any,
                   precision: str, max_pixels: int | None = None) -> tuple[list[str], str]:
    """The files and their kind, after every check that needs no file: the backend name
    (once per call: :func:`~unetzoo.engine.backends.check_backend`) and what an ONNX
    model cannot do."""
    from unetzoo.engine.backends import check_backend

    check_backend(backend)
    names = [str(paths)] if isinstance(paths, (str, Path)) else [str(p) for p in paths]
    kind = kind or ("onnx" if len(names) == 1 and names[0].lower().endswith(".onnx")
                    else "checkpoint")
    if kind == "onnx":
        if precision != "fp32":
            raise ConfigError("--precision bf16 runs checkpoints through PyTorch; an ONNX "
                              "model runs in its own precision")
        if len(names) != 1:
            raise ConfigError("an ONNX model is one file; ensembles take checkpoints")
        if max_pixels is not None:
            raise ConfigError("--max-pixels applies to --checkpoint; --onnx keeps the default")
    return names, kind


def _open(names: list[str], kind: str, device: Any, backend: Any, batch_size: int, tta: bool,
          verbose: bool, providers: list[str] | None, precision: str) -> Predictor:
    if kind == "onnx":
        return _load_onnx(names[0], batch_size, tta, providers)
    return _load_checkpoints(names, device, backend, batch_size, tta, verbose, precision)


def _load_onnx(path: str, batch_size: int, tta: bool, providers: list[str] | None) -> Predictor:
    from unetzoo.engine.onnx import OnnxModule

    module = OnnxModule(path, providers=providers)
    return Predictor(module, module.spec, Path(path), torch.device("cpu"), None, [path],
                     batch_size, tta)


def checked(wrap: Callable[..., nn.Module] | None) -> Callable[..., nn.Module]:
    """``wrap`` after :func:`unetzoo.engine.inference.check_memory` on the bare model
    (before any backend runs it)."""
    from unetzoo.engine.inference import check_memory

    def run(m: nn.Module, path: str, ck: Checkpoint) -> nn.Module:
        check_memory(m, ck.spec.img_size, ck.spec.in_channels, path)
        return m if wrap is None else wrap(m, path, ck)

    return run


def _load_checkpoints(names: list[str], device: Any, backend: str, batch_size: int,
                      tta: bool, verbose: bool, precision: str = "fp32") -> Predictor:
    from unetzoo.engine.backends import check_precision, make_backend
    from unetzoo.engine.distributed import resolve_device
    from unetzoo.engine.ensemble import load_ensemble

    dev = resolve_device(device)
    check_precision(precision, dev)  # one line before any checkpoint is read
    wrap = None
    if backend != "torch" or precision != "fp32":
        def wrap(m: nn.Module, path: str, ck: Checkpoint) -> nn.Module:
            return make_backend(m, backend, checkpoint=path, spec=ck.spec, device=dev, verbose=verbose,
                                precision=precision, batch_size=batch_size)
    model, first = load_ensemble(names, dev, wrap=checked(wrap))
    return Predictor(model, first.spec, Path(names[0]), torch.device(dev), first, names,
                     batch_size, tta)


def predict_files(
    inputs: list[str | Path],
    checkpoint: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    tta: bool = False,
    device: str | torch.device | None = None,
    batch_size: int = 16,
    overlays: int = 3,
    verbose: bool = True,
    max_pixels: int | None = None,
    backend: str = "torch",
    postprocessing: dict[str, Any] | str | Path | None = STORED,
    save_probabilities: bool = False,
    overwrite: bool = False,
    *,
    kind: str | None = None,
    precision: str = "fp32",
    strict_inputs: bool = False,
    max_voxels: int | None = None,
    output_format: str = "auto",
) -> list[dict[str, Any]]:
    """Segment files and folders with a checkpoint (or several, or an ``.onnx``): what
    ``unetzoo predict`` runs; one record per case (see
    :func:`~unetzoo.engine.predict_cases.predict_cases`).

    Label maps keep the input's geometry: NIfTI in -> ``CASE.nii.gz`` with the same shape,
    voxel order and affine (NRRD, MetaImage likewise in their own format); PNG/JPG/BMP in
    -> ``CASE_seg.png``; TIF in -> ``CASE_seg.tif``. ``postprocessing`` defaults to the
    plan stored with the checkpoint (:data:`STORED`; None: none; or a plan or plan file).
    Every option, every input (``max_pixels`` per 2-D image, default
    :data:`~unetzoo.data.imageio.DEFAULT_MAX_PIXELS`; ``max_voxels`` per file, read from
    its header) and every target in ``out_dir`` (a file there that unetzoo did not write
    is refused unless ``overwrite``) is checked before the model is loaded. ``kind`` is
    ``"onnx"`` or ``"checkpoint"`` (default by the file name, as :func:`load_predictor`).
    ``output_format`` ``"dicom-seg"`` writes a DICOM SEG for DICOM input.
    """
    from unetzoo.data.imageio import voxel_limit

    if max_voxels is not None and max_voxels < 1:
        raise ConfigError(f"--max-voxels must be >= 1, got {max_voxels}")
    with voxel_limit(max_voxels):
        return _predict_files(inputs, checkpoint, out_dir, dict(
            tta=tta, device=device, batch_size=batch_size, overlays=overlays, verbose=verbose,
            max_pixels=max_pixels, backend=backend, postprocessing=postprocessing,
            save_probabilities=save_probabilities, overwrite=overwrite, kind=kind,
            precision=precision, strict_inputs=strict_inputs, output_format=output_format))


def _predict_files(inputs: list[str | Path], checkpoint: Any, out_dir: str | Path,
                   o: dict[str, Any]) -> list[dict[str, Any]]:
    from unetzoo.engine.backends import check_precision
    from unetzoo.engine.distributed import resolve_device
    from unetzoo.engine.predict_cases import check_cases, claim_targets

    names, kind = _check_request(checkpoint, o["kind"], o["backend"], o["precision"],
                                 o["max_pixels"])
    if o["batch_size"] < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {o['batch_size']}")
    if o["max_pixels"] is not None and o["max_pixels"] < 1:
        raise ConfigError(f"--max-pixels must be >= 1, got {o['max_pixels']}")
    # unknown names, absent GPUs, bf16 without hardware: one line, before any work
    check_precision(o["precision"], resolve_device(o["device"]))
    cases = check_cases(inputs, o["max_pixels"])  # every header, before any model is loaded
    # A user's file under a target's name: refused before the model is loaded.
    claim_targets(cases, out_dir, overwrite=o["overwrite"], output_format=o["output_format"],
                  save_probabilities=o["save_probabilities"], overlays=o["overlays"])
    predictor = _open(names, kind, o["device"], o["backend"], o["batch_size"], o["tta"],
                      o["verbose"], None, o["precision"])
    plan = predictor._plan(o["postprocessing"])
    if plan is not None and o["verbose"]:
        given = o["postprocessing"]
        source = ("stored with the checkpoint" if isinstance(given, str) and given == STORED
                  else given if isinstance(given, (str, Path)) else "given")
        print(f"post-processing: {len(plan['steps'])} keep-largest-component step(s) "
              f"({source})", flush=True)
    return predictor.predict_files(
        inputs, out_dir, postprocessing=plan, overlays=o["overlays"], verbose=o["verbose"],
        max_pixels=o["max_pixels"], save_probabilities=o["save_probabilities"],
        overwrite=o["overwrite"], strict_inputs=o["strict_inputs"],
        output_format=o["output_format"])
