"""ONNX files: capture a model with its inference spec, read one back, run it as a module.

This is the ONNX format's one home. The engine needs it for the ``onnxruntime`` CPU
backend (:mod:`unetzoo.engine.backends`) and the one loader
(:func:`unetzoo.engine.predict.load_predictor`); ``unetzoo export``
(:mod:`unetzoo.deploy.export`) adds the ``torch.export`` fallback and the CLI on top.

What a file holds (``metadata_props``):

- ``"unetzoo"``: JSON with ``format`` ("unetzoo-export"), ``version`` (2), the inference
  spec's keys at top level (:meth:`unetzoo.engine.spec.InferenceSpec.to_dict`: ``model``,
  ``class_names``, ``in_channels``, ``img_size``, ``preprocessing``, ``slicing``,
  ``resize``, ...), ``protocol`` (the contract in words:
  :data:`unetzoo.engine.spec.PROTOCOL_TEXT`), ``num_classes``, ``size_multiple``,
  ``fixed_input_size``, ``dynamic_axes``, ``torch_version``. ``num_classes`` here is the
  model's output channels (1 for a sigmoid head), not the class count. Files of another
  version are refused in one line (export them again from their checkpoint).
- plain keys for viewers such as Netron: ``model_name``, ``class_names``, ``img_size``.

Input ``image`` ``(batch, C, height, width)`` float32 -> output ``logits``
``(batch, K, height, width)``: the dims are named so, for input and output alike.
Files are read by content (ONNX protobuf only, never a zip archive, never unpickled) and
ONNX Runtime gets the checked bytes, not the path.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unetzoo.engine.spec import PROTOCOL_TEXT, InferenceSpec
from unetzoo.errors import CheckpointError, ConfigError, ModelError

DEFAULT_OPSET = 18


def _max_opset() -> int:
    try:  # the newest opset the installed torch exporter declares
        from torch.onnx._constants import ONNX_MAX_OPSET
    except ImportError:  # pragma: no cover - older/newer torch layouts
        return DEFAULT_OPSET
    return max(int(ONNX_MAX_OPSET), DEFAULT_OPSET)


#: Opsets an export writes. 18 is the dynamo exporter's own opset (it raised lower ones to
#: 18 without a word); the top is what the installed torch declares (ONNX Runtime 1.32
#: runs all of them).
SUPPORTED_OPSETS = range(DEFAULT_OPSET, _max_opset() + 1)


def check_opset(opset: Any, what: str = "opset") -> int:
    """``opset`` as an int when the installed exporter writes it (:data:`SUPPORTED_OPSETS`),
    else one ConfigError line naming the range; ``what`` names it (``--opset`` in the CLI).
    Every export (``export_model``, ``export_onnx``, ``unetzoo export``) checks here."""
    whole = isinstance(opset, (int, np.integer)) and not isinstance(opset, bool)
    if not whole or int(opset) not in SUPPORTED_OPSETS:
        raise ConfigError(
            f"{what} {opset!r} is not supported; use {SUPPORTED_OPSETS.start}.."
            f"{SUPPORTED_OPSETS.stop - 1} (the range the installed torch exporter writes)"
        )
    return int(opset)
METADATA_KEY = "unetzoo"
METADATA_FORMAT = "unetzoo-export"
METADATA_VERSION = 2
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
AXIS_NAMES = {0: "batch", 2: "height", 3: "width"}
# Zip archives (torch.export programs, torch.save checkpoints) start with a local file
# header, or the end-of-central-directory record when empty.
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


class ExportError(ModelError):
    """A model that the requested export format cannot express (message names a fallback)."""


class CaptureError(ExportError):
    """The ONNX exporter could not capture the model (``reason``: its telling line);
    ``unetzoo export --format auto`` then falls back to ``torch.export``."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class Logits(nn.Module):
    """Forward ``image -> logits`` only: deep-supervision lists collapse to the last head."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.model(image)
        if isinstance(out, (list, tuple)):
            out = out[-1]
        return out


def first_line(exc: BaseException) -> str:
    """The telling line of an exporter's (often pages long) error."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # torch.onnx wraps the cause; its summary line is the most telling.
    for i, ln in enumerate(lines):
        if ln.startswith("## Exception summary") and i + 1 < len(lines):
            return lines[i + 1][:300]
    return (lines[0] if lines else type(exc).__name__)[:300]


# ------------------------------------------------------------------ metadata
def spec_for_model(model: nn.Module, img_size: int | None = None) -> InferenceSpec:
    """The spec of a model exported without one (no checkpoint): what the model records
    (``unetzoo_name`` / ``unetzoo_options``), placeholder class names, and ``img_size``
    the given size, else the model's fixed input size, else 64 (the capture size)."""
    options = dict(getattr(model, "unetzoo_options", {}) or {})
    in_ch = int(options.get("in_channels") or getattr(model, "in_channels", 1))
    n_cls = int(options.get("num_classes") or getattr(model, "num_classes", 0) or 0)
    names = ["background"] + [f"class {i}" for i in range(1, max(n_cls, 2))]
    size = int(img_size or getattr(model, "fixed_input_size", None) or 64)
    return InferenceSpec.for_model(model, class_names=names, in_channels=in_ch, img_size=size)


def build_metadata(spec: InferenceSpec, model: nn.Module | None = None) -> dict[str, Any]:
    """The JSON object stored in an exported file (see the module docstring)."""
    return {
        "format": METADATA_FORMAT,
        "version": METADATA_VERSION,
        **spec.to_dict(),
        "protocol": dict(PROTOCOL_TEXT),
        # The model's outputs (1 for a sigmoid head), else one per class name.
        "num_classes": int(spec.options.get("num_classes") or getattr(model, "num_classes", 0)
                           or spec.num_classes),
        "size_multiple": int(getattr(model, "size_multiple", 1) or 1),
        "fixed_input_size": getattr(model, "fixed_input_size", None),
        "torch_version": torch.__version__,
    }


# ------------------------------------------------------------------ capture
def example_sizes(model: nn.Module, img_size: int | None) -> tuple[list[int], bool]:
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


def capture_onnx(
    wrapper: nn.Module, x: torch.Tensor, out: Path, dynamic: bool, dyn_hw: bool, opset: int
) -> None:
    """``torch.onnx.export`` (dynamo) of ``wrapper`` on example ``x`` to ``out``."""
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
            wrapper, (x,), str(out), dynamo=True, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], dynamic_shapes=shapes, opset_version=opset,
            external_data=False, verbose=False,
        )


def _name_dims(onnx_model: Any) -> dict[int, str]:
    """Name the dynamic dims ``batch`` / ``height`` / ``width`` on the input and the
    output (the exporter leaves the output's as ``Min(s73, 16*(...``: the graph's
    padding arithmetic, which equals the input's size); return the dynamic input axes."""
    graph = onnx_model.graph
    mapping: dict[str, str] = {}
    dynamic: dict[int, str] = {}
    for axis, dim in enumerate(graph.input[0].type.tensor_type.shape.dim):
        if dim.dim_param and axis in AXIS_NAMES:
            mapping[dim.dim_param] = AXIS_NAMES[axis]
            dynamic[axis] = AXIS_NAMES[axis]
    for vi in list(graph.input) + list(graph.value_info):
        for dim in vi.type.tensor_type.shape.dim:
            if dim.dim_param in mapping:
                dim.dim_param = mapping[dim.dim_param]
    for out in graph.output:
        for axis, dim in enumerate(out.type.tensor_type.shape.dim):
            if axis in dynamic and not dim.dim_value:
                dim.dim_param = dynamic[axis]
    return dynamic


def finish_onnx(out: Path, metadata: dict[str, Any]) -> dict[int, str]:
    """Name the dims, store ``metadata`` (plus ``dynamic_axes``) in ``out``, check it with
    ``onnx.checker``; ``metadata`` is updated in place. Returns the dynamic input axes."""
    import onnx

    model = onnx.load(str(out))
    dynamic = _name_dims(model)
    metadata["dynamic_axes"] = {str(k): v for k, v in dynamic.items()}
    del model.metadata_props[:]
    props = {
        METADATA_KEY: json.dumps(metadata),
        "model_name": str(metadata["model"]["name"]),
        "class_names": json.dumps(metadata["class_names"]),
        "img_size": str(metadata.get("img_size")),
    }
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "unetzoo"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out))
    return dynamic


def verify_onnx(wrapper: nn.Module, path: Path, shapes: list[tuple[int, ...]]) -> float:
    """Max |ONNX Runtime - PyTorch| logit difference over random inputs of ``shapes``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return verify_outputs(wrapper, lambda x: sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0],
                          "onnx", shapes)


def verify_outputs(wrapper: nn.Module, run: Any, fmt: str,
                   shapes: list[tuple[int, ...]]) -> float:
    """Max |run(x) - wrapper(x)| over seeded random inputs of ``shapes``."""
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in shapes:
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            ref = wrapper(x).float().numpy()
            got = np.asarray(run(x), dtype=np.float32)
        if got.shape != ref.shape:
            raise ExportError(
                f"exported {fmt} gives shape {got.shape} for input {shape}, PyTorch "
                f"{ref.shape}; export without --dynamic"
            )
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


# ------------------------------------------------------------------ reading
def is_zip_bytes(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a file) starts a zip archive."""
    return head[:4] in _ZIP_MAGIC


def existing_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"exported model {p} does not exist")
    return p


def read_bytes(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {p}: {exc.strerror or exc}") from exc


def parse_onnx(p: Path, data: bytes) -> Any:
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
            f"cannot read {p} as an ONNX model ({first_line(exc)}); pass an .onnx file "
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


def onnx_metadata_raw(model: Any) -> str | None:
    return next((e.value for e in model.metadata_props if e.key == METADATA_KEY), None)


def decode_metadata(p: Path, raw: str | None) -> dict[str, Any]:
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
    version = meta.get("version")
    if version != METADATA_VERSION:
        older = isinstance(version, int) and not isinstance(version, bool) and version < METADATA_VERSION
        raise CheckpointError(
            f"{p} was written by an older unetzoo (metadata version {version}); export it "
            "again from its checkpoint (`unetzoo export --checkpoint CKPT`)" if older else
            f"{p} has unetzoo metadata version {version!r}, not {METADATA_VERSION}; use the "
            "unetzoo that exported it, or export it again from its checkpoint"
        )
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
    p = existing_file(path)
    data = read_bytes(p)
    model = parse_onnx(p, data)
    if _uses_external_data(model.graph):
        raise CheckpointError(
            f"{p} keeps tensors in external files; unetzoo serves self-contained ONNX "
            "files only (`unetzoo export` writes one)"
        )
    return data, decode_metadata(p, onnx_metadata_raw(model))


# ------------------------------------------------------------------ running
class OnnxModule(nn.Module):
    """An ONNX file as a module: ``forward(x (N, C, H, W)) -> logits (N, K, H', W')``.

    Static axes of the file are honoured: a fixed batch size splits (and zero-pads) the
    batch into chunks; a fixed height/width that differs from the input is one clear
    error. Runs on the CPU execution provider unless ``providers`` says otherwise.
    ``spec`` is the file's :class:`~unetzoo.engine.spec.InferenceSpec`.
    """

    def __init__(
        self, path: str | Path, providers: list[str] | None = None,
        session_options: Any | None = None,
    ) -> None:
        super().__init__()
        import onnxruntime as ort

        self.path = Path(path)
        # ONNX protobuf only, checked by content; the session gets the checked bytes.
        data, self.metadata = load_onnx(self.path)
        try:
            self.session = ort.InferenceSession(
                data, sess_options=session_options,
                providers=providers or ["CPUExecutionProvider"],
            )
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise CheckpointError(f"ONNX Runtime cannot load {self.path}: {exc}") from exc
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name if inp.name else INPUT_NAME
        self.input_shape = [d if isinstance(d, int) else None for d in inp.shape]
        self.spec = InferenceSpec.from_dict(self.metadata, str(self.path))
        self.in_channels = self.spec.in_channels
        self.num_classes = int(self.metadata.get("num_classes") or self.spec.num_classes)
        self.unetzoo_name = self.spec.model
        self.unetzoo_options = dict(self.spec.options)
        # The engine finds the device from the first parameter; this one pins it to CPU.
        self._anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ModelError(
                f"{self.path.name} takes (N, {self.in_channels}, H, W) input, got "
                f"{tuple(x.shape)}"
            )
        for axis, name in ((2, "height"), (3, "width")):
            fixed = self.input_shape[axis]
            if fixed is not None and x.shape[axis] != fixed:
                raise ModelError(
                    f"{self.path.name} was exported with a fixed {name} of {fixed}, got "
                    f"{x.shape[axis]}; resize the input or export with --dynamic"
                )
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        batch = self.input_shape[0]
        if batch is None or batch == arr.shape[0]:
            out = self._run(arr)
        else:
            chunks = []
            for start in range(0, arr.shape[0], batch):
                part = arr[start : start + batch]
                n = part.shape[0]
                if n < batch:
                    part = np.concatenate([part, np.zeros((batch - n, *part.shape[1:]), part.dtype)])
                chunks.append(self._run(part)[:n])
            out = np.concatenate(chunks)
        return torch.from_numpy(out).to(x.device)


def export_onnx(
    model: nn.Module, out: Path, metadata: dict[str, Any], *, dynamic: bool = True,
    opset: int = DEFAULT_OPSET, verify: bool = True,
) -> tuple[tuple[int, ...], dict[int, str], float | None]:
    """Capture ``model`` to ONNX at ``out`` with ``metadata`` (from :func:`build_metadata`).

    Tries the example sizes of :func:`example_sizes` in turn; returns ``(example_shape,
    dynamic input axes, max abs diff against PyTorch or None)``.

    Raises:
        CaptureError: no example size could be captured.
        ExportError: the checker refuses the file.
    """
    opset = check_opset(opset)
    wrapper = Logits(model.eval()).eval()
    sizes, dyn_hw = example_sizes(model, metadata.get("img_size"))
    if not dynamic:  # a static file takes exactly the training size
        sizes = sizes[-1:]
    n = 2 if dynamic else 1  # batch 2: torch.export specialises sizes 0 and 1
    in_ch = int(metadata["in_channels"])
    name = metadata["model"]["name"]
    errors = []
    for s in sizes:
        try:
            capture_onnx(wrapper, torch.randn(n, in_ch, s, s), out, dynamic, dyn_hw, opset)
            break
        except Exception as exc:  # noqa: BLE001 - reported as one line below
            errors.append(first_line(exc))
    else:
        raise CaptureError(f"model {name!r} cannot be exported to ONNX ({errors[0]}); use "
                           "`--format torch-export` for a torch.export program instead",
                           errors[0])
    try:
        dyn_axes = finish_onnx(out, metadata)
    except Exception as exc:  # noqa: BLE001 - the checker's verdict, one line
        raise ExportError(f"the ONNX file for {name!r} fails onnx.checker ({first_line(exc)}); "
                          "use `--format torch-export` instead") from exc
    example = (n, in_ch, s, s)
    diff = verify_onnx(wrapper, out, verification_shapes(example, dyn_axes)) if verify else None
    return example, dyn_axes, diff


def verification_shapes(example: tuple[int, ...], dyn_axes: dict[int, str]) -> list[tuple[int, ...]]:
    """The example shape and, when some axes are dynamic, a second shape that differs on
    each of them (odd H and W: the padding branch)."""
    shapes = [tuple(example)]
    if dyn_axes:
        other = list(example)
        if 0 in dyn_axes:
            other[0] = 3
        if 2 in dyn_axes:
            other[2] = max(example[2] // 2 + 1, 17) | 1
        if 3 in dyn_axes:
            other[3] = max(example[3] // 2 + 3, 19) | 1
        shapes.append(tuple(other))
    return shapes
