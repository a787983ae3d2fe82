"""Export a model (or a checkpoint) to ONNX, or to a ``torch.export`` program as fallback.

ONNX files come from the ``torch.export``-based (dynamo) exporter, which keeps the
padding of H and W up to the model's size multiple *inside* the graph as symbolic shape
arithmetic, so one file takes any batch size and any height and width (models with a
fixed input size, the Transformers, keep H and W fixed and only the batch dynamic). Every
file is checked with ``onnx.checker`` and, by default, run once through ONNX Runtime
against PyTorch.

The checkpoint's metadata travels in the file: ONNX ``metadata_props`` key ``"unetzoo"``
holds a JSON object (see :func:`build_metadata`), plus a few plain keys for viewers
such as Netron. ``torch.export`` programs (``.pt2``) carry the same JSON as the extra
file ``unetzoo.json``.

Safety: ``torch.export.load`` unpickles parts of the archive with ``weights_only=False``,
so a ``.pt2`` from elsewhere can run code. unetzoo loads a program only from the bytes it
has just serialised itself (the export check); it reads the metadata of any other ``.pt2``
with :mod:`zipfile` (JSON only), and ``--onnx`` / the demo take ONNX protobuf only,
recognised by content, never by file name.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unetzoo.errors import CheckpointError, ConfigError, ModelError

FORMATS = ("onnx", "torch-export", "auto")
DEFAULT_OPSET = 18
METADATA_KEY = "unetzoo"
METADATA_FORMAT = "unetzoo-export"
PT2_EXTRA_FILE = "unetzoo.json"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
_AXIS_NAMES = {0: "batch", 2: "height", 3: "width"}
# Zip archives (torch.export programs, torch.save checkpoints) start with a local file
# header, or the end-of-central-directory record when empty.
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_MAX_METADATA_BYTES = 1 << 20  # the JSON is ~1 kB; a larger member is not ours


class ExportError(ModelError):
    """A model that the requested export format cannot express (message names a fallback)."""


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


class _Logits(nn.Module):
    """Forward ``image -> logits`` only: deep-supervision lists collapse to the last head."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.model(image)
        if isinstance(out, (list, tuple)):
            out = out[-1]
        return out


def _jsonable(value: Any) -> Any:
    # Options may hold tuples or enums; JSON keeps lists, numbers, strings, None.
    return json.loads(json.dumps(value, default=str))


def build_metadata(
    model: nn.Module,
    *,
    class_names: list[str] | None = None,
    in_channels: int | None = None,
    img_size: int | None = None,
    preprocessing: dict[str, Any] | None = None,
    dataset: str | None = None,
) -> dict[str, Any]:
    """The JSON object stored in an exported file.

    Keys: ``format`` ("unetzoo-export"), ``version``, ``model`` (``name``, ``options``),
    ``class_names``, ``num_classes``, ``in_channels``, ``img_size``, ``preprocessing``,
    ``dataset``, ``size_multiple``, ``fixed_input_size``, ``torch_version``. Missing
    values default to what the model itself records (``unetzoo_name`` / ``unetzoo_options``).
    """
    name = getattr(model, "unetzoo_name", None) or type(model).__name__
    options = dict(getattr(model, "unetzoo_options", {}) or {})
    in_ch = int(in_channels or options.get("in_channels") or getattr(model, "in_channels", 1))
    n_cls = int(options.get("num_classes") or getattr(model, "num_classes", 0) or 0)
    if class_names is None:
        class_names = ["background"] + [f"class {i}" for i in range(1, max(n_cls, 2))]
    return _jsonable(
        {
            "format": METADATA_FORMAT,
            "version": 1,
            "model": {"name": name, "options": options},
            "class_names": list(class_names),
            "num_classes": n_cls or len(class_names),
            "in_channels": in_ch,
            "img_size": int(img_size) if img_size else None,
            "preprocessing": preprocessing or {"kind": "none"},
            "dataset": dataset,
            "size_multiple": int(getattr(model, "size_multiple", 1) or 1),
            "fixed_input_size": getattr(model, "fixed_input_size", None),
            "torch_version": torch.__version__,
        }
    )


def metadata_from_checkpoint(ckpt: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """:func:`build_metadata` filled from a loaded checkpoint dict (``load_checkpoint``)."""
    spec = ckpt.get("model")
    if not isinstance(spec, dict) or not spec.get("name"):
        raise CheckpointError(
            "checkpoint has no model metadata ('model': {'name', 'options'}); export needs "
            "a checkpoint written by `unetzoo train`"
        )
    meta = build_metadata(
        model,
        class_names=list(ckpt["class_names"]),
        in_channels=int(ckpt["in_channels"]),
        img_size=int(ckpt["img_size"]),
        preprocessing=ckpt.get("preprocessing") or {"kind": "none"},
        dataset=ckpt.get("dataset"),
    )
    meta["model"] = _jsonable({"name": spec["name"], "options": dict(spec.get("options") or {})})
    return meta


def _example_sizes(model: nn.Module, img_size: int | None) -> tuple[list[int], bool]:
    """Candidate example sizes and whether H/W may be dynamic.

    An odd size is tried first: it is not a multiple of any even size multiple, so the
    capture records the padding branch and the graph pads every other size correctly.
    """
    fixed = getattr(model, "fixed_input_size", None)
    if fixed:
        return [int(fixed)], False
    s = int(img_size or 64)
    odd = s + 1 if s % 2 == 0 else s
    return [odd, s], True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # torch.onnx wraps the cause; its summary line is the most telling.
    for i, ln in enumerate(lines):
        if ln.startswith("## Exception summary") and i + 1 < len(lines):
            return lines[i + 1][:300]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _rename_dims(onnx_model: Any) -> dict[int, str]:
    """Give the input's symbolic dims readable names; return the dynamic input axes."""
    graph = onnx_model.graph
    inp = graph.input[0]
    mapping: dict[str, str] = {}
    dynamic: dict[int, str] = {}
    for axis, dim in enumerate(inp.type.tensor_type.shape.dim):
        if dim.dim_param and axis in _AXIS_NAMES:
            mapping[dim.dim_param] = _AXIS_NAMES[axis]
            dynamic[axis] = _AXIS_NAMES[axis]
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        for dim in vi.type.tensor_type.shape.dim:
            if dim.dim_param in mapping:
                dim.dim_param = mapping[dim.dim_param]
    return dynamic


def _export_onnx(
    wrapper: nn.Module, x: torch.Tensor, out: Path, dynamic: bool, dyn_hw: bool, opset: int
) -> None:
    dims = torch.export.Dim.DYNAMIC
    shapes = None
    if dynamic:
        axes = {0: dims}
        if dyn_hw:
            axes.update({2: dims, 3: dims})
        shapes = {INPUT_NAME: axes}
    # The exporter prints progress lines and warns about its own internals; the CLI
    # reports the outcome itself.
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (x,),
            str(out),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=shapes,
            opset_version=opset,
            external_data=False,
            verbose=False,
        )


def _finish_onnx(out: Path, metadata: dict[str, Any]) -> dict[int, str]:
    import onnx

    model = onnx.load(str(out))
    dynamic = _rename_dims(model)
    meta = dict(metadata)
    meta["dynamic_axes"] = {str(k): v for k, v in dynamic.items()}
    del model.metadata_props[:]
    props = {
        METADATA_KEY: json.dumps(meta),
        "model_name": str(meta["model"]["name"]),
        "class_names": json.dumps(meta["class_names"]),
        "img_size": str(meta.get("img_size")),
    }
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "unetzoo"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out))
    metadata.update(meta)
    return dynamic


def _export_pt2(
    wrapper: nn.Module, x: torch.Tensor, out: Path, dynamic: bool, dyn_hw: bool,
    metadata: dict[str, Any],
) -> tuple[dict[int, str], bytes]:
    """Capture, save to ``out``; returns the dynamic axes and the bytes written."""
    dims = torch.export.Dim.DYNAMIC
    shapes = None
    axes_req = {}
    if dynamic:
        axes_req = {0: "batch"} | ({2: "height", 3: "width"} if dyn_hw else {})
        shapes = {INPUT_NAME: {a: dims for a in axes_req}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ep = torch.export.export(wrapper, (x,), dynamic_shapes=shapes)
        except Exception as exc:  # noqa: BLE001 - any capture failure is one message
            raise ExportError(
                f"model {metadata['model']['name']!r} cannot be captured by torch.export "
                f"either ({_first_line(exc)}); use the checkpoint with `unetzoo predict` "
                "instead"
            ) from exc
    # Which requested axes stayed symbolic in the captured program.
    placeholder = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == INPUT_NAME)
    shape = placeholder.meta["val"].shape
    dynamic_axes = {a: n for a, n in axes_req.items() if not isinstance(shape[a], int)}
    metadata["dynamic_axes"] = {str(k): v for k, v in dynamic_axes.items()}
    buf = io.BytesIO()
    torch.export.save(ep, buf, extra_files={PT2_EXTRA_FILE: json.dumps(metadata)})
    data = buf.getvalue()
    out.write_bytes(data)  # a temporary file that export_model renames into place
    return dynamic_axes, data


def _verify(
    wrapper: nn.Module, path: Path, fmt: str, shapes: list[tuple[int, ...]],
    pt2_bytes: bytes | None = None,
) -> float:
    """Max |runtime - PyTorch| over random inputs of the given shapes.

    A torch.export program is loaded from ``pt2_bytes``, the bytes this process has just
    serialised, never from the file on disk (which anyone could have replaced meanwhile):
    ``torch.export.load`` unpickles with ``weights_only=False``.
    """
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    else:
        if pt2_bytes is None:
            raise ExportError("internal: a torch.export program is verified from its own bytes")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prog = torch.export.load(io.BytesIO(pt2_bytes)).module()
    for shape in shapes:
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            ref = wrapper(x).float().numpy()
            if fmt == "onnx":
                got = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
            else:
                got = prog(x).float().numpy()
        if got.shape != ref.shape:
            raise ExportError(
                f"exported {fmt} gives shape {got.shape} for input {shape}, PyTorch "
                f"{ref.shape}; export without --dynamic"
            )
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


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
) -> ExportResult:
    """Export ``model`` (``(N, C, H, W)`` -> logits ``(N, K, H, W)``) to ``out``.

    Args:
        model: a segmentation model; switched to eval mode (deep supervision returns the
            final head only).
        out: the file to write (``.onnx`` or ``.pt2``).
        fmt: ``"onnx"``, ``"torch-export"`` or ``"auto"`` (ONNX, else ``torch.export``).
        dynamic: dynamic batch, height and width (height/width stay fixed for models with
            ``fixed_input_size``). False fixes the example shape.
        opset: ONNX opset (default 18).
        metadata: from :func:`build_metadata`; default built from the model.
        img_size: example H = W for the capture (default metadata ``img_size`` or 64).
        verify: run the file once (ONNX Runtime or the loaded program) against PyTorch
            at two sizes (the example and a smaller odd one) and record the max abs diff.

    Raises:
        ExportError: the format cannot express the model; the message names the fallback.
        ConfigError: an unknown format or an unwritable output path.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"the export output {out} is a folder; pass a file name such as "
                          f"{out / 'model.onnx'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output folder {out.parent}: {exc.strerror}") from exc
    model = model.eval()
    meta = dict(metadata or build_metadata(model, img_size=img_size))
    name = meta["model"]["name"]
    in_ch = int(meta["in_channels"])
    sizes, dyn_hw = _example_sizes(model, img_size or meta.get("img_size"))
    if not dynamic:  # a static file takes exactly the training size
        sizes = sizes[-1:]
    wrapper = _Logits(model).eval()
    # Batch 2: torch.export specialises sizes 0 and 1.
    n = 2 if dynamic else 1

    # Everything is written to a temporary file beside ``out`` and renamed into place
    # only once written (and verified): a failed export never leaves a half-written file
    # or destroys one that was there.
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write to the output folder {out.parent}: {exc.strerror}") from exc
    os.close(fd)
    work = Path(tmp)
    try:
        fallback = None
        target = fmt
        pt2_bytes = None
        s = sizes[0]
        if fmt in ("onnx", "auto"):
            errors = []
            for s in sizes:
                x = torch.randn(n, in_ch, s, s)
                try:
                    _export_onnx(wrapper, x, work, dynamic, dyn_hw, opset)
                    break
                except Exception as exc:  # noqa: BLE001 - reported as one line below
                    errors.append(_first_line(exc))
            else:
                reason = errors[0]
                if fmt == "onnx":
                    raise ExportError(
                        f"model {name!r} cannot be exported to ONNX ({reason}); use "
                        "`--format torch-export` for a torch.export program instead"
                    )
                fallback, target = reason, "torch-export"
                if out.suffix == ".onnx":
                    out = out.with_suffix(".pt2")
        example_shape = (n, in_ch, s, s)
        if target == "onnx":
            try:
                dyn_axes = _finish_onnx(work, meta)
            except Exception as exc:  # noqa: BLE001 - the checker's verdict, one line
                raise ExportError(
                    f"the ONNX file for {name!r} fails onnx.checker ({_first_line(exc)}); use "
                    "`--format torch-export` instead"
                ) from exc
        else:
            x = torch.randn(n, in_ch, sizes[0], sizes[0])
            example_shape = tuple(x.shape)
            dyn_axes, pt2_bytes = _export_pt2(wrapper, x, work, dynamic, dyn_hw, meta)

        diff = None
        if verify:
            shapes = [example_shape]
            if dyn_axes:
                other = list(example_shape)
                if 0 in dyn_axes:
                    other[0] = 3
                if 2 in dyn_axes:
                    other[2] = max(example_shape[2] // 2 + 1, 17) | 1
                if 3 in dyn_axes:
                    other[3] = max(example_shape[3] // 2 + 3, 19) | 1
                shapes.append(tuple(other))
            diff = _verify(wrapper, work, target, shapes, pt2_bytes)
        try:
            os.replace(work, out)
        except OSError as exc:
            raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from exc
    finally:
        work.unlink(missing_ok=True)
    return ExportResult(
        path=out,
        format=target,
        dynamic_axes=dyn_axes,
        example_shape=tuple(example_shape),
        max_abs_diff=diff,
        fallback_reason=fallback,
        metadata=meta,
    )


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
) -> ExportResult:
    """Load a unetzoo checkpoint and export its model with its metadata.

    The example capture size is the checkpoint's ``img_size``. See :func:`export_model`.
    """
    from unetzoo.engine.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(checkpoint)
    if not isinstance(ckpt.get("model"), dict) or not ckpt["model"].get("name"):
        raise CheckpointError(
            f"checkpoint {checkpoint} has no model metadata ('model': name, options); "
            "export needs a checkpoint written by `unetzoo train`"
        )
    model = model_from_checkpoint(ckpt)
    meta = metadata_from_checkpoint(ckpt, model)
    out = Path(out) if out else default_output_path(checkpoint, fmt)
    return export_model(
        model, out, fmt=fmt, dynamic=dynamic, opset=opset, metadata=meta,
        img_size=int(ckpt["img_size"]), verify=verify,
    )


def _existing_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"exported model {p} does not exist")
    return p


def _read_bytes(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {p}: {exc.strerror or exc}") from exc


def is_zip_bytes(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) starts a zip archive."""
    return head[:4] in _ZIP_MAGIC


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
        raise CheckpointError(f"cannot read {p} as a torch.export archive ({_first_line(exc)})") from exc


def _parse_onnx(p: Path, data: bytes) -> Any:
    """The ``ModelProto`` in ``data`` (protobuf parsing runs no code); one line otherwise."""
    import onnx

    if is_zip_bytes(data):
        raise CheckpointError(
            f"{p} is a zip archive (a torch.export program or a checkpoint), not an ONNX "
            "model; pass an .onnx file written by `unetzoo export --format onnx` (unetzoo "
            "never loads torch.export programs: they can run code)"
        )
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not an ONNX file"
        raise CheckpointError(
            f"cannot read {p} as an ONNX model ({_first_line(exc)}); pass an .onnx file "
            "written by `unetzoo export --format onnx`"
        ) from exc
    if not len(model.graph.node) and not len(model.graph.output):
        # Protobuf accepts many byte strings as an empty message.
        raise CheckpointError(f"{p} is not an ONNX model (no graph); pass an .onnx file")
    return model


def _uses_external_data(graph: Any) -> bool:
    from onnx import AttributeProto, TensorProto

    tensors = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                tensors.append(attr.t)
            elif attr.type == AttributeProto.TENSORS:
                tensors.extend(attr.tensors)
            elif attr.type == AttributeProto.GRAPH and _uses_external_data(attr.g):
                return True
            elif attr.type == AttributeProto.GRAPHS and any(
                _uses_external_data(g) for g in attr.graphs
            ):
                return True
    return any(t.data_location == TensorProto.EXTERNAL for t in tensors)


def _onnx_metadata_raw(model: Any) -> str | None:
    return next((e.value for e in model.metadata_props if e.key == METADATA_KEY), None)


def _decode_metadata(p: Path, raw: str | None) -> dict[str, Any]:
    if not raw:
        raise CheckpointError(
            f"{p} has no unetzoo metadata (class names, img_size, preprocessing); export "
            "it with `unetzoo export --checkpoint CKPT`"
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{p} has corrupt unetzoo metadata ({exc.msg})") from exc
    if not isinstance(meta, dict) or meta.get("format") != METADATA_FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{p} has metadata of an unknown format {fmt!r}")
    return meta


def load_onnx(path: str | Path) -> tuple[bytes, dict[str, Any]]:
    """The bytes and unetzoo metadata of an ONNX file, checked by content.

    Only ONNX protobuf is accepted: a zip archive (a ``torch.export`` program, a
    checkpoint, whatever its name) is refused, and so is a model whose tensors live in
    external files. Hand the returned bytes, not the path, to ONNX Runtime, so the file
    that runs is the file that was checked.

    Raises:
        CheckpointError: one line for a missing, non-ONNX or metadata-less file.
    """
    p = _existing_file(path)
    data = _read_bytes(p)
    model = _parse_onnx(p, data)
    if _uses_external_data(model.graph):
        raise CheckpointError(
            f"{p} keeps tensors in external files; unetzoo serves self-contained ONNX "
            "files only (`unetzoo export` writes one)"
        )
    return data, _decode_metadata(p, _onnx_metadata_raw(model))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The unetzoo metadata of an exported ``.onnx`` or ``.pt2`` file.

    Recognised by content: a zip archive is read as a ``torch.export`` program, with
    :mod:`zipfile` only (its JSON member; nothing is unpickled), anything else is parsed
    as ONNX protobuf.

    Raises:
        CheckpointError: unreadable file, or a file without unetzoo metadata.
    """
    p = _existing_file(path)
    with p.open("rb") as fh:
        head = fh.read(4)
    if is_zip_bytes(head):
        raw = _pt2_metadata_raw(p)
    else:
        raw = _onnx_metadata_raw(_parse_onnx(p, _read_bytes(p)))
    return _decode_metadata(p, raw)
