"""CPU inference backends: the fastest forward pass that gives PyTorch's labels.

A backend is an ``nn.Module`` predictor, ``forward(x (N, C, H, W)) -> logits``, so the
engine's inference functions (:func:`~unetzoo.engine.inference.predict_volume`,
:func:`~unetzoo.engine.inference.predict_probs`, sliding windows, TTA) run it unchanged.

- ``"torch"``: the model as given (NCHW PyTorch, the reference).
- ``"onnxruntime"``: the model exported to ONNX by :func:`unetzoo.engine.onnx.export_onnx`
  and run by ONNX Runtime's CPU provider. The file is cached beside the checkpoint as
  ``<stem>.<key>.onnx``, where ``key`` hashes the checkpoint's bytes, the opset and the
  export options, so a changed checkpoint gets a new file and an unchanged one reuses it.
  A file at that name is used only if its SHA-256 is the one recorded when unetzoo wrote
  it (:data:`CACHE_RECORD` in the same folder), it is ONNX protobuf (checked by content,
  never unpickled) that records this key, and it reproduces PyTorch's logits on a probe
  input of the batch size used; a recorded file that fails is rebuilt, a file unetzoo
  did not record is left alone (never overwritten) and the export goes to a temporary file.
- ``"auto"``: on CPU, measured once on the first batch: the NCHW model runs a probe of
  ``probe_slices`` slice(s) (default 1) once, for its time; a
  ``channels_last`` copy of it (the caller's model is never converted) and ONNX Runtime
  (when installed and its export for this checkpoint is cached) each run the probe
  twice, warm-up then timed. Among those whose argmax labels equal the NCHW model's on
  the whole first batch (the batch size used: a file wrong only at batch > 1 is caught),
  the fastest runs from then on (five one-slice forwards in all, about 3 % of
  a 150-slice volume). An export that is not cached yet is made, and joins the
  measurement, only once the job has spent :data:`EXPORT_AFTER_S` seconds in forward
  passes (a short job never pays for it). On other devices ``auto`` is ``torch``.

Why these candidates: on a 2-core CPU a ``channels_last`` copy ran a ResNet-34 U-Net
1.7x and ONNX Runtime 2.1x faster than NCHW with identical labels, while bf16 autocast was
slower and changed 0.3 % of the labels (issue 17); which of the two wins depends on the
model and the CPU, hence a measurement rather than a fixed rule.
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import nn

from unetzoo.engine.spec import InferenceSpec
from unetzoo.errors import CheckpointError, ConfigError, ModelError

Backend = Literal["auto", "torch", "onnxruntime"]
BACKENDS: tuple[str, ...] = get_args(Backend)
#: ``fp32`` is the default and exact path; ``bf16`` (autocast) changes labels and is
#: only run when asked for, on hardware with native bf16 matmuls.
PRECISIONS = ("fp32", "bf16")
#: /proc/cpuinfo flags of native bf16 matmuls: Intel AMX and AVX512-BF16 (x86), the
#: Armv8.6 BF16 extension (aarch64 "Features: bf16").
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
#: Bumped when the cached file's recipe changes (export options, metadata keys).
CACHE_VERSION = 1
#: Largest |ONNX Runtime - PyTorch| logit difference accepted for a cached file, relative
#: to the logits' scale (float32 reassociation gives ~1e-6).
PROBE_TOLERANCE = 1e-3
#: The side record of the cached exports in a folder: ``{file name: SHA-256}`` of each
#: file as unetzoo wrote it; a cached file is trusted only while its bytes match.
CACHE_RECORD = ".unetzoo-onnx-cache.json"


def check_backend(name: object) -> Backend:
    """``name`` if it is one of :data:`BACKENDS`, else a one-line :class:`ConfigError`.

    Called once, where a name comes in (:func:`unetzoo.engine.predict.load_predictor`,
    :func:`~unetzoo.engine.predict.predict_files`, :func:`unetzoo.engine.evaluation.run_test`);
    :func:`make_backend` takes the checked :data:`Backend`."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    return name  # type: ignore[return-value]


def onnxruntime_available() -> bool:
    """Whether ``onnxruntime`` (and ``onnx``, for the export) can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _device_of(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _logits(out: Any) -> torch.Tensor:
    return out[-1] if isinstance(out, (list, tuple)) else out


class ChannelsLastModel(nn.Module):
    """A ``channels_last`` copy of ``model``; inputs are converted on the way in.

    The copy is made so that the caller's model (which may be training, or shared)
    keeps its memory format.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
        self.backend = "torch channels_last"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _logits(self.model(x.contiguous(memory_format=torch.channels_last)))


# ---------------------------------------------------------------- precision
def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``); empty when unreadable."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_bf16_support(flags: frozenset[str] | set[str] | None = None) -> str | None:
    """The CPU's native bf16 feature (``"amx_bf16"``, ``"avx512_bf16"``, ``"bf16"``) or None.

    ``flags`` defaults to :func:`cpu_flags`; pass a set to ask about another CPU.
    """
    flags = cpu_flags() if flags is None else flags
    return next((f for f in CPU_BF16_FLAGS if f in flags), None)


def check_precision(precision: object, device: str | torch.device | None = "cpu",
                    flags: frozenset[str] | set[str] | None = None) -> str:
    """``precision`` if it is known and ``device`` runs it natively, else one ConfigError.

    bf16 on the CPU needs AMX or AVX512-BF16 (without them PyTorch emulates it, slower
    than fp32); on CUDA, a GPU that supports bf16. ``flags`` overrides the CPU's flags.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return "fp32"
    dev = torch.device(device or "cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise ConfigError(f"--precision bf16: {torch.cuda.get_device_name(dev)} has no "
                              "bf16 support; use --precision fp32")
        return "bf16"
    if dev.type != "cpu":
        raise ConfigError(f"--precision bf16 runs on cpu or cuda, not {dev.type}; use "
                          "--precision fp32")
    if cpu_bf16_support(flags) is None:
        cap = torch.backends.cpu.get_cpu_capability()
        raise ConfigError(f"--precision bf16: this CPU ({cap}) has no native bf16 (AMX or "
                          "AVX512-BF16; it would run slower than fp32); use --precision fp32")
    return "bf16"


class Bf16Model(nn.Module):
    """``model`` under bf16 autocast (``channels_last`` on the CPU, where oneDNN's bf16
    kernels want it); logits come back as float32. Labels differ from fp32 slightly."""

    def __init__(self, model: nn.Module, device_type: str = "cpu") -> None:
        super().__init__()
        self.device_type = device_type
        self.channels_last = device_type == "cpu"
        self.model = ChannelsLastModel(model) if self.channels_last else model
        self.backend = f"torch bf16 autocast{' channels_last' if self.channels_last else ''}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return _logits(self.model(x)).float()


# ---------------------------------------------------------------- ONNX Runtime + cache
def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in chunks)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def cache_key(checkpoint_sha256: str, opset: int, img_size: int | None) -> str:
    """16 hex digits naming the cached export of one checkpoint content and recipe."""
    recipe = f"{checkpoint_sha256}|opset={opset}|dynamic=1|img={img_size}|v={CACHE_VERSION}"
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def onnx_cache_path(checkpoint: str | Path, key: str) -> Path:
    """``DIR/best.pt`` -> ``DIR/best.<key>.onnx``."""
    p = Path(checkpoint)
    return p.with_name(f"{p.stem}.{key}.onnx")


def _session_options(threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # Same thread count as PyTorch, so that the comparison and the machine share are fair.
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


def _probe_input(in_channels: int, img_size: int, batch: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(17)
    return torch.randn(max(1, batch), in_channels, img_size, img_size, generator=gen)


def _recorded(target: Path) -> str | None:
    """The SHA-256 recorded for ``target`` when unetzoo wrote it; None if not recorded."""
    import json

    try:
        data = json.loads((target.parent / CACHE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    value = data.get(target.name) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _record(target: Path) -> None:
    """Record ``target``'s SHA-256 in its folder's :data:`CACHE_RECORD` (atomically)."""
    import json

    from unetzoo.data.io import atomic_write_text

    record = target.parent / CACHE_RECORD
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        data = {}
    data = {k: v for k, v in (data if isinstance(data, dict) else {}).items()
            if (target.parent / k).is_file()}
    data[target.name] = file_sha256(target)
    atomic_write_text(record, json.dumps(data, indent=1, sort_keys=True) + "\n")


def _matches(module: nn.Module, model: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module`` reproduces ``model``'s logits on ``x`` within the tolerance."""
    with torch.no_grad():
        ref = _logits(model(x)).float()
        got = _logits(module(x)).float()
    if got.shape != ref.shape:
        return False
    scale = max(float(ref.abs().max()), 1.0)
    return float((got - ref).abs().max()) <= PROBE_TOLERANCE * scale


class OnnxBackend(nn.Module):
    """ONNX Runtime on the CPU as a module; ``path`` is the file it runs, ``cached``
    whether that file is the reusable cache beside the checkpoint."""

    def __init__(self, module: nn.Module, path: Path, cached: bool, reused: bool) -> None:
        super().__init__()
        self.module = module
        self.path = path
        self.cached = cached
        self.reused = reused
        self.backend = "onnxruntime"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def _export(model: nn.Module, out: Path, meta: dict[str, Any], opset: int) -> None:
    from unetzoo.engine.onnx import export_onnx

    export_onnx(copy.deepcopy(model).cpu().eval(), out, dict(meta), dynamic=True,
                opset=opset, verify=True)


def _load(path: Path, threads: int | None) -> nn.Module:
    from unetzoo.engine.onnx import OnnxModule

    return OnnxModule(path, session_options=_session_options(threads))


def onnx_backend(
    model: nn.Module,
    *,
    checkpoint: str | Path | None = None,
    spec: InferenceSpec | None = None,
    img_size: int | None = None,
    opset: int | None = None,
    threads: int | None = None,
    check: bool = True,
    batch_size: int = 1,
) -> OnnxBackend:
    """``model`` run by ONNX Runtime, exported once and cached beside ``checkpoint``.

    A cached file is used only if it records this checkpoint's key and, with ``check``,
    reproduces ``model``'s logits on a probe input of ``batch_size`` slices (``auto``
    passes False: it compares the labels on the first real batch itself). A file whose
    bytes are not the ones recorded (:data:`CACHE_RECORD`) is never loaded.

    Without a checkpoint path (a model in memory), or when its folder is not writable,
    the export goes to a temporary file that is deleted once loaded.

    Raises:
        ConfigError: onnxruntime or onnx is not installed.
        ModelError: the model cannot be exported to ONNX (``ExportError``).
    """
    if not onnxruntime_available():
        raise ConfigError(
            "backend 'onnxruntime' needs the onnxruntime and onnx packages; install them "
            "(pip install onnxruntime onnx) or pass --backend torch"
        )
    from unetzoo.engine.onnx import DEFAULT_OPSET, build_metadata, spec_for_model

    opset = int(opset or DEFAULT_OPSET)
    model = model.eval()
    if spec is not None:
        img_size = img_size or spec.img_size
    else:
        spec = spec_for_model(model, img_size)
    meta = build_metadata(spec, model)
    if img_size:  # the capture size is the inference size asked for
        meta["img_size"] = int(img_size)
    size = int(img_size or 64)
    probe = _probe_input(int(meta["in_channels"]), size, batch_size)

    target: Path | None = None
    if checkpoint is not None and Path(checkpoint).is_file():
        key = cache_key(file_sha256(checkpoint), opset, img_size)
        meta = {**meta, "cache_key": key, "cache_of": Path(checkpoint).name}
        target = onnx_cache_path(checkpoint, key)
        recorded = _recorded(target)
        if target.exists():
            module = _reuse(target, key, model, probe if check else None, threads)
            if module is not None:
                return OnnxBackend(module, target, cached=True, reused=True)
        if target.exists() and recorded is None:
            target = None  # someone else's file: leave it, export elsewhere
        else:  # absent, or ours but changed since: (re)built
            module = _export_to_cache(model, target, meta, img_size, opset, threads)
            if module is not None:
                return OnnxBackend(module, target, cached=True, reused=False)
            target = None
    try:
        with tempfile.TemporaryDirectory(prefix="unetzoo-onnx-") as tmp:
            path = Path(tmp) / "model.onnx"
            _export(model, path, meta, opset)
            module = _load(path, threads)  # the session holds the bytes; the file can go
    except OSError as exc:  # e.g. a full temporary folder
        raise ConfigError(
            f"cannot write the ONNX export to a temporary folder ({exc.strerror or exc}); "
            "free space or pass --backend torch"
        ) from None
    return OnnxBackend(module, path, cached=False, reused=False)


def _reuse(target: Path, key: str, model: nn.Module, probe: torch.Tensor | None,
           threads: int | None) -> nn.Module | None:
    """The cached file as a module if it is ours (the SHA-256 recorded when written)
    and computes ``model`` on ``probe`` (not run when None); else None."""
    recorded = _recorded(target)
    try:
        if recorded is None or file_sha256(target) != recorded:
            return None
    except OSError:
        return None
    try:
        module = _load(target, threads)
    except (CheckpointError, ModelError):
        return None
    if module.metadata.get("cache_key") != key:
        return None
    if probe is None:
        return module
    try:
        ok = _matches(module, model.cpu() if _device_of(model).type == "cpu" else model, probe)
    except Exception:  # noqa: BLE001 - a file that cannot run the probe is not used
        ok = False
    return module if ok else None


def _export_to_cache(model: nn.Module, target: Path, meta: dict[str, Any],
                     img_size: int | None, opset: int, threads: int | None) -> nn.Module | None:
    """Export to a temporary name in ``target``'s folder, then link it to ``target``
    (``os.link`` fails instead of replacing a file that appeared meanwhile; a file of
    ours that no longer matches its record is replaced), and record its SHA-256."""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp.onnx",
                                        dir=target.parent)
        os.close(fd)
    except OSError:
        return None  # read-only folder: no cache
    tmp = Path(tmp_name)
    try:
        _export(model, tmp, meta, opset)
        if target.exists() and _recorded(target) is not None:
            os.replace(tmp, target)  # ours, changed since (corrupt or tampered): rebuilt
        else:
            try:
                os.link(tmp, target)
            except FileExistsError:
                return None
            except OSError:  # no hard links here (some network file systems): rename, checked
                if target.exists():
                    return None
                os.replace(tmp, target)
        _record(target)
        return _load(target, threads)
    except (ConfigError, OSError):  # folder not writable, disk full: no cache
        return None
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- auto
#: Forward seconds after which ``auto`` pays for an ONNX export that is not cached yet
#: (the export took 20-60 s on a loaded 2-core CPU, about a third of what ONNX Runtime
#: saves on one 150-slice Synapse volume; a small job never pays it).
EXPORT_AFTER_S = 30.0


class AutoBackend(nn.Module):
    """Runs the fastest candidate whose labels equal the reference's on a probe.

    On the first forward the reference (NCHW PyTorch) and every candidate in
    ``candidates`` run on the first ``probe_slices`` slices, once to warm up and compare
    labels, once timed. Candidates in ``deferred`` (an ONNX export not cached yet) join
    the same measurement only once the forward passes have taken ``defer_after_s``
    seconds, so that a short job never pays for an export it cannot recover.

    Attributes: ``backend`` (the chosen name), ``timings`` (seconds per probe run of the
    candidates that matched), ``rejected`` (name -> why not: a build failure or labels
    that differ), ``spent`` (forward seconds so far).
    """

    def __init__(self, reference: nn.Module,
                 candidates: dict[str, Callable[[], nn.Module]],
                 deferred: dict[str, Callable[[], nn.Module]] | None = None,
                 probe_slices: int = 1, defer_after_s: float = EXPORT_AFTER_S,
                 verbose: bool = False) -> None:
        super().__init__()
        self.reference = reference
        self._factories = dict(candidates)
        self._deferred = dict(deferred or {})
        self.probe_slices = max(1, int(probe_slices))
        self.defer_after_s = float(defer_after_s)
        self.verbose = verbose
        self.chosen: nn.Module | None = None
        self.backend = "auto (not yet measured)"
        self.timings: dict[str, float] = {}
        self.rejected: dict[str, str] = {}
        self.spent = 0.0

    def _choose(self, x: torch.Tensor, factories: dict[str, Callable[[], nn.Module]]) -> None:
        probe = x[: self.probe_slices]
        with torch.no_grad():
            # The labels to match: the reference on the whole batch, at the batch size
            # used (a file that is wrong only at batch > 1 must not pass). One reference
            # run on the probe gives its time (PyTorch's CPU warm-up is small; a bias here
            # only favours candidates whose labels are already equal).
            want = _logits(self.reference(x)).argmax(1)
            t0 = time.perf_counter()
            self.reference(probe)
            self.timings["torch"] = time.perf_counter() - t0
        options = {"torch": self.reference}
        if self.chosen is not None and self.backend != "torch":
            options[self.backend] = self.chosen
            t0 = time.perf_counter()
            with torch.no_grad():
                self.chosen(probe)
            self.timings[self.backend] = time.perf_counter() - t0
        for name, factory in factories.items():
            try:
                module = factory()
                with torch.no_grad():
                    labels = _logits(module(x)).argmax(1)  # warm-up, and the check
                    if not torch.equal(labels, want):
                        self.rejected[name] = "labels differ from PyTorch NCHW on the batch"
                        continue
                    t0 = time.perf_counter()
                    module(probe)
                    self.timings[name] = time.perf_counter() - t0
            except (ConfigError, ModelError, CheckpointError, RuntimeError, OSError) as exc:
                self.rejected[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                continue
            options[name] = module
        best = min(options, key=lambda k: self.timings[k])
        self.chosen, self.backend = options[best], best
        if self.verbose:
            timed = ", ".join(f"{k} {self.timings[k] * 1e3:.0f} ms" for k in options)
            # stdout: stderr is kept for errors and warnings (one line each)
            print(f"backend: {best} (probe of {probe.shape[0]} slice(s): {timed})", flush=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.chosen is None:
            self._choose(x, self._factories)
        elif self._deferred and self.spent >= self.defer_after_s:
            deferred, self._deferred = self._deferred, {}
            self._choose(x, deferred)
        t0 = time.perf_counter()
        out = _logits(self.chosen(x))
        self.spent += time.perf_counter() - t0
        return out


def make_backend(
    model: nn.Module,
    backend: Backend = "auto",
    *,
    checkpoint: str | Path | None = None,
    spec: InferenceSpec | None = None,
    img_size: int | None = None,
    device: str | torch.device | None = None,
    probe_slices: int = 1,
    defer_after_s: float = EXPORT_AFTER_S,
    verbose: bool = False,
    precision: str = "fp32",
    batch_size: int = 1,
) -> nn.Module:
    """A predictor module for ``model`` on ``device`` (default: the model's).

    Args:
        model: an eval-mode segmentation model; never modified.
        backend: ``"torch"``, ``"onnxruntime"`` or ``"auto"`` (see the module docstring),
            checked where the name came in (:func:`check_backend`).
        checkpoint: the checkpoint file the model came from (the ONNX cache lives beside
            it); None exports to a temporary file.
        spec: the checkpoint's inference spec (it goes into the ONNX file).
        img_size: the inference size (default ``spec.img_size``).
        probe_slices: slices of the first batch that ``auto`` times each candidate on.
        defer_after_s: forward seconds after which ``auto`` exports an ONNX file that
            is not cached yet (0: at once).
        verbose: ``auto`` prints its choice and timings on stdout.
        precision: ``"fp32"`` (exact) or ``"bf16"``: PyTorch under bf16 autocast
            (:class:`Bf16Model`), refused where the device lacks native bf16
            (:func:`check_precision`); ``auto`` then runs it without a probe.
        batch_size: slices per forward pass; ``onnxruntime`` checks a cached file at it.

    Raises:
        ConfigError: an unknown backend or precision, bf16 without hardware support or
            with ``onnxruntime``, ``onnxruntime`` off the CPU or not installed.
        ModelError: ``onnxruntime`` for a model that cannot be exported to ONNX.
    """
    dev = torch.device(device) if device is not None else _device_of(model)
    if img_size is None and spec is not None:
        img_size = spec.img_size
    if check_precision(precision, dev) == "bf16":
        if backend == "onnxruntime":
            raise ConfigError("--precision bf16 runs PyTorch autocast; use --backend auto or "
                              "torch with it")
        if verbose:
            print(f"backend: torch bf16 autocast on {dev.type} (labels may differ from fp32)",
                  flush=True)
        return Bf16Model(model, dev.type)
    if backend == "torch":
        return model
    if dev.type != "cpu":
        if backend == "onnxruntime":
            raise ConfigError(
                f"backend 'onnxruntime' runs on the CPU, not on {dev}; pass --device cpu or "
                "--backend torch"
            )
        return model  # auto off the CPU: PyTorch on its device

    def ort(check: bool = False) -> nn.Module:
        return onnx_backend(model, checkpoint=checkpoint, spec=spec, img_size=img_size,
                            check=check, batch_size=batch_size)

    if backend == "onnxruntime":
        return ort(check=True)
    if backend != "auto":  # a name that skipped check_backend
        check_backend(backend)
    candidates: dict[str, Callable[[], nn.Module]] = {
        "torch channels_last": lambda: ChannelsLastModel(model)
    }
    deferred: dict[str, Callable[[], nn.Module]] = {}
    if onnxruntime_available():
        # A cached export costs a load; a missing one an export, worth it for long jobs
        # only; a model without a checkpoint file has no cache and is not exported.
        if checkpoint is not None and _cached_onnx_exists(checkpoint, img_size):
            candidates["onnxruntime"] = ort
        elif checkpoint is not None:
            deferred["onnxruntime"] = ort
    return AutoBackend(model, candidates, deferred, probe_slices=probe_slices,
                       defer_after_s=defer_after_s, verbose=verbose)


def _cached_onnx_exists(checkpoint: str | Path, img_size: int | None) -> bool:
    from unetzoo.engine.onnx import DEFAULT_OPSET

    p = Path(checkpoint)
    if not p.is_file():
        return False
    return onnx_cache_path(p, cache_key(file_sha256(p), DEFAULT_OPSET, img_size)).is_file()
