"""Export a model (or a checkpoint) to ONNX, or to a ``torch.export`` program as fallback.

ONNX files come from the ``torch.export``-based (dynamo) exporter, which keeps the
padding of H and W up to the model's size multiple *inside* the graph as symbolic shape
arithmetic, so one file takes any batch size and any height and width (models with a
fixed input size, the Transformers, keep H and W fixed and only the batch dynamic). Every
file is checked with ``onnx.checker`` and, by default, run once through ONNX Runtime
against PyTorch.

The checkpoint's inference spec travels in the file: ONNX ``metadata_props`` key
``"unetzoo"`` holds a JSON object (:func:`unetzoo.engine.onnx.build_metadata`: the spec,
the protocol in words, readable dim names), plus a few plain keys for viewers such as
Netron. ``torch.export`` programs (``.pt2``) carry the same JSON as the extra file
``unetzoo.json``. The ONNX capture, reading and running live in :mod:`unetzoo.engine.onnx`
(the engine's ``onnxruntime`` backend uses them too); this module adds the format choice,
the ``torch.export`` fallback and the checkpoint entry point.

Safety: ``torch.export.load`` unpickles parts of the archive with ``weights_only=False``,
so a ``.pt2`` from elsewhere can run code. unetzoo loads a program only from the bytes it
has just serialised itself (the export check); it reads the metadata of any other ``.pt2``
with :mod:`zipfile` (JSON only), and ``--onnx`` / the demo take ONNX protobuf only,
recognised by content, never by file name.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unetzoo.engine.onnx import (  # noqa: F401 - the ONNX format's names, re-exported
    DEFAULT_OPSET,
    INPUT_NAME,
    METADATA_FORMAT,
    METADATA_KEY,
    OUTPUT_NAME,
    SUPPORTED_OPSETS,
    CaptureError,
    ExportError,
    Logits,
    build_metadata,
    check_opset,
    decode_metadata,
    example_sizes,
    existing_file,
    export_onnx,
    first_line,
    is_zip_bytes,
    load_onnx,
    onnx_metadata_raw,
    parse_onnx,
    read_bytes,
    spec_for_model,
    verification_shapes,
    verify_outputs,
)
from unetzoo.engine.spec import InferenceSpec
from unetzoo.errors import CheckpointError, ConfigError

FORMATS = ("onnx", "torch-export", "auto")
PT2_EXTRA_FILE = "unetzoo.json"
_MAX_METADATA_BYTES = 1 << 20  # the JSON is ~1 kB; a larger member is not ours


@dataclass
class ExportResult:
    """What :func:`export_model` wrote.

    Attributes:
        path: the written file.
        format: ``"onnx"`` or ``"torch-export"``.
        dynamic_axes: input axis index -> name, for the axes that stayed dynamic.
        example_shape: the ``(N, C, H, W)`` shape used to capture the graph.
        max_abs_diff: largest |runtime - PyTorch| logit difference over the verification
            inputs (None when not verified).
        fallback_reason: why ONNX was not used (``format="auto"`` only), else None.
        metadata: the JSON metadata stored in the file.
    """

    path: Path
    format: str
    dynamic_axes: dict[int, str]
    example_shape: tuple[int, ...]
    max_abs_diff: float | None = None
    fallback_reason: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def _export_pt2(
    model: nn.Module, out: Path, metadata: dict[str, Any], dynamic: bool, verify: bool,
) -> tuple[tuple[int, ...], dict[int, str], float | None]:
    """Capture to a ``torch.export`` program at ``out`` (metadata as the extra file
    ``unetzoo.json``); returns the example shape, the dynamic axes and the verified diff.

    The program is verified from the bytes this process has just serialised, never from
    the file on disk (which anyone could have replaced meanwhile): ``torch.export.load``
    unpickles with ``weights_only=False``.
    """
    wrapper = Logits(model.eval()).eval()
    sizes, dyn_hw = example_sizes(model, metadata.get("img_size"))
    n = 2 if dynamic else 1
    s = sizes[0] if dynamic else sizes[-1]  # a static program takes the training size
    x = torch.randn(n, int(metadata["in_channels"]), s, s)
    axes_req = ({0: "batch"} | ({2: "height", 3: "width"} if dyn_hw else {})) if dynamic else {}
    shapes = {INPUT_NAME: {a: torch.export.Dim.DYNAMIC for a in axes_req}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ep = torch.export.export(wrapper, (x,), dynamic_shapes=shapes)
        except Exception as exc:  # noqa: BLE001 - any capture failure is one message
            raise ExportError(
                f"model {metadata['model']['name']!r} cannot be captured by torch.export "
                f"either ({first_line(exc)}); use the checkpoint with `unetzoo predict` "
                "instead"
            ) from exc
    # Which requested axes stayed symbolic in the captured program.
    placeholder = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == INPUT_NAME)
    shape = placeholder.meta["val"].shape
    dynamic_axes = {a: name for a, name in axes_req.items() if not isinstance(shape[a], int)}
    metadata["dynamic_axes"] = {str(k): v for k, v in dynamic_axes.items()}
    buf = io.BytesIO()
    torch.export.save(ep, buf, extra_files={PT2_EXTRA_FILE: json.dumps(metadata)})
    pt2_bytes = buf.getvalue()
    out.write_bytes(pt2_bytes)  # a temporary file that export_model renames into place
    diff = None
    if verify:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.export.load(io.BytesIO(pt2_bytes)).module()
        diff = verify_outputs(wrapper, prog, "torch-export",
                              verification_shapes(tuple(x.shape), dynamic_axes))
    return tuple(x.shape), dynamic_axes, diff


def _check_target(out: Path, fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if out.is_dir():
        raise ConfigError(f"the export output {out} is a folder; pass a file name such as "
                          f"{out / 'model.onnx'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output folder {out.parent}: {exc.strerror}") from exc


#: The file endings each format writes (``auto``: either, by what it falls back to).
_SUFFIXES = {"onnx": (".onnx",), "torch-export": (".pt2",), "auto": (".onnx", ".pt2")}


def _claim_output(out: Path, fmt: str, overwrite: bool, inputs: tuple[Path, ...]) -> None:
    """Refuse, before any work, an output that is one of the export's ``inputs`` (even
    with ``overwrite``), has another format's ending (``--format torch-export --output
    scan.png``), or exists and was not written by unetzoo (unless ``overwrite``)."""
    from unetzoo.runs.outputs import OutputFolder

    for src in inputs:
        same = os.path.lexists(out) and src.exists() and os.path.samefile(out, src)
        if same or out.absolute() == src.absolute():
            raise ConfigError(f"--output {out} is the export's own input {src}; choose "
                              "another output file")
    wanted = _SUFFIXES.get(fmt, ())
    if out.suffix.lower() not in wanted:
        raise ConfigError(f"--output {out}: a {fmt} export is written as "
                          f"{' or '.join(wanted)}; name the file {out.with_suffix(wanted[0]).name}")
    OutputFolder(out.parent, overwrite=overwrite).claim([out.name])


def _temporary_beside(out: Path) -> Path:
    """An empty temporary file in ``out``'s folder: everything is written there and renamed
    into place only once written and verified, so a failed export never leaves a
    half-written file or destroys one that was there."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write to the output folder {out.parent}: {exc.strerror}") from exc
    os.close(fd)
    return Path(tmp)


def export_model(
    model: nn.Module,
    out: str | Path,
    *,
    fmt: str = "onnx",
    dynamic: bool = True,
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, Any] | None = None,
    img_size: int | None = None,
    verify: bool = True,
    spec: InferenceSpec | None = None,
    overwrite: bool = False,
    inputs: tuple[str | Path, ...] = (),
) -> ExportResult:
    """Export ``model`` (``(N, C, H, W)`` -> logits ``(N, K, H, W)``) to ``out``.

    Args:
        model: a segmentation model; switched to eval mode (deep supervision returns the
            final head only).
        out: the file to write (``.onnx`` or ``.pt2``).
        fmt: ``"onnx"``, ``"torch-export"`` or ``"auto"`` (ONNX, else ``torch.export``).
        dynamic: dynamic batch, height and width (height/width stay fixed for models with
            ``fixed_input_size``). False fixes the example shape.
        opset: ONNX opset, one of :data:`SUPPORTED_OPSETS` (default 18; others: ConfigError).
        metadata: the stored JSON (:func:`unetzoo.engine.onnx.build_metadata`); default
            built from ``spec``, else from the model (:func:`unetzoo.engine.onnx.spec_for_model`).
        img_size: the spec's ``img_size`` when no spec is given (and the capture size).
        verify: run the file once (ONNX Runtime or the loaded program) against PyTorch
            at two sizes (the example and a smaller odd one) and record the max abs diff.
        spec: the model's inference spec (a checkpoint's).
        overwrite: replace an existing ``out`` that unetzoo did not write (never one of
            ``inputs``, the files the model came from). The files an export writes are
            listed in the folder's ``.unetzoo-outputs.json``, so a re-export replaces its
            own file without the flag.
        inputs: files the export reads (the checkpoint): never written over.

    Raises:
        ExportError: the format cannot express the model; the message names the fallback.
        ConfigError: an unknown format, an opset outside :data:`SUPPORTED_OPSETS`
            or an unwritable output path.
    """
    opset = check_opset(opset)  # before any file is touched
    out = Path(out)
    _check_target(out, fmt)
    sources = tuple(Path(p) for p in inputs)
    _claim_output(out, fmt, overwrite, sources)
    model = model.eval()
    meta = dict(metadata or build_metadata(spec or spec_for_model(model, img_size), model))
    work = _temporary_beside(out)
    fallback, target = None, "torch-export" if fmt == "torch-export" else "onnx"
    try:
        if target == "onnx":
            try:
                example, dyn_axes, diff = export_onnx(model, work, meta, dynamic=dynamic,
                                                      opset=opset, verify=verify)
            except CaptureError as exc:
                if fmt == "onnx":
                    raise
                fallback, target = exc.reason, "torch-export"
                out = out.with_suffix(".pt2") if out.suffix == ".onnx" else out
                _claim_output(out, "torch-export", overwrite, sources)
        if target == "torch-export":
            example, dyn_axes, diff = _export_pt2(model, work, meta, dynamic, verify)
        try:
            os.replace(work, out)
        except OSError as exc:
            raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from exc
    finally:
        work.unlink(missing_ok=True)
    from unetzoo.runs.outputs import OutputFolder

    OutputFolder(out.parent).record([out.name])  # ours: a re-export may replace it
    return ExportResult(path=out, format=target, dynamic_axes=dyn_axes, example_shape=example,
                        max_abs_diff=diff, fallback_reason=fallback, metadata=meta)


def default_output_path(checkpoint: str | Path, fmt: str) -> Path:
    """``CKPT.onnx`` (or ``CKPT.pt2``) next to the checkpoint."""
    suffix = ".pt2" if fmt == "torch-export" else ".onnx"
    return Path(checkpoint).with_suffix(suffix)


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path | None = None,
    *,
    fmt: str = "onnx",
    dynamic: bool = True,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    overwrite: bool = False,
) -> ExportResult:
    """Load a unetzoo checkpoint and export its model with its inference spec.

    The example capture size is the checkpoint's ``img_size``. See :func:`export_model`.
    """
    from unetzoo.engine.checkpoint import read_checkpoint

    check_opset(opset)  # before the checkpoint loads
    ckpt = read_checkpoint(checkpoint)
    model = ckpt.build_model()
    out = Path(out) if out else default_output_path(checkpoint, fmt)
    return export_model(model, out, fmt=fmt, dynamic=dynamic, opset=opset, spec=ckpt.spec,
                        verify=verify, overwrite=overwrite, inputs=(Path(checkpoint),))


def _pt2_metadata_raw(p: Path) -> str | None:
    """``unetzoo.json`` of a torch.export archive, read with :mod:`zipfile` only.

    Nothing in the archive is unpickled: the metadata is a plain JSON member.
    """
    try:
        with zipfile.ZipFile(p) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            # torch.export.save writes ``<archive>/extra/unetzoo.json``.
            hits = [i for i in infos if i.filename.split("/")[-2:] == ["extra", PT2_EXTRA_FILE]]
            if not hits:
                if any(n.split("/")[-1] == "data.pkl" for n in names):
                    raise CheckpointError(
                        f"{p} is a torch checkpoint, not an exported model; pass it with "
                        "--checkpoint"
                    )
                return None
            if hits[0].file_size > _MAX_METADATA_BYTES:
                raise CheckpointError(f"{p} has an oversized unetzoo metadata entry")
            return zf.read(hits[0]).decode("utf-8")
    except (zipfile.BadZipFile, UnicodeDecodeError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {p} as a torch.export archive ({first_line(exc)})") from exc


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The unetzoo metadata of an exported ``.onnx`` or ``.pt2`` file.

    Recognised by content: a zip archive is read as a ``torch.export`` program, with
    :mod:`zipfile` only (its JSON member; nothing is unpickled), anything else is parsed
    as ONNX protobuf.

    Raises:
        CheckpointError: unreadable file, or a file without unetzoo metadata.
    """
    p = existing_file(path)
    with p.open("rb") as fh:
        head = fh.read(4)
    if is_zip_bytes(head):
        raw = _pt2_metadata_raw(p)
    else:
        raw = onnx_metadata_raw(parse_onnx(p, read_bytes(p)))
    return decode_metadata(p, raw)
