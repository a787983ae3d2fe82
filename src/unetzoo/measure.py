"""Measurement of models: parameters, MACs, latency, training throughput, peak memory.

The one place this is computed; ``unetzoo bench`` (:mod:`unetzoo.cli.bench`), the
ablation table (:mod:`unetzoo.engine.ablation`) and ``benchmarks/*.py`` import it.

Zoo-table rows (:func:`measure_model`), per model at ``size`` x ``size`` (default 224),
1 input channel, 9 classes:

- ``params``: trainable parameters;
- ``GMACs``: multiply-accumulates of one forward pass at batch 1, counted by fvcore's
  ``FlopCountAnalysis`` (it counts one "flop" per fused multiply-add for convolutions,
  matmuls and linear layers). Operators fvcore has no handle for (element-wise ops,
  softmax, pooling, upsampling, ...) are *not counted* and listed in ``uncounted ops``;
  they are cheap next to the convolutions and matmuls;
- ``latency_ms``: median forward time at batch 1 in eval mode under ``inference_mode``;
- ``train_img_s``: images per second of forward + cross-entropy + backward + SGD step at
  ``batch`` (default 8);
- ``rss_infer_MiB`` / ``rss_train_MiB``: peak resident memory of a fresh process after the
  inference and then the training measurement (``ru_maxrss``; includes the interpreter and
  torch, whose baseline is the ``rss_base_MiB`` column); on CUDA, ``cuda_*_MiB`` are
  ``torch.cuda.max_memory_allocated`` of each phase.

Each model is measured in its own subprocess so the memory figures are clean. Big models
get fewer repeats: the number of repeats is what fits in ``budget`` seconds (at least
1 for training and 2 for latency, at most ``repeats``); the row records it.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from unetzoo.errors import ModelError

COLUMNS = (
    "model", "params", "GMACs", "latency_ms", "train_img_s", "rss_base_MiB",
    "rss_infer_MiB", "rss_train_MiB", "repeats", "uncounted ops",
)
CUDA_COLUMNS = ("cuda_infer_MiB", "cuda_train_MiB")


def select_models(pattern: str | None) -> list[str]:
    """Registered model names matching comma-separated wildcard ``pattern`` (all if None)."""
    from unetzoo.models import list_models

    if not pattern:
        return list_models()
    names: list[str] = []
    for part in (s.strip() for s in pattern.split(",")):
        if not part:
            continue
        found = list_models(part)
        if not found:
            raise ModelError(
                f"--models {part!r} matches no registered model; see `unetzoo list-models`"
            )
        names += [n for n in found if n not in names]
    return names


def peak_rss_mib() -> float:
    """Peak RSS of this process in MiB.

    ``VmHWM`` of /proc/self/status where it exists: ``ru_maxrss`` survives exec, so a
    subprocess would report at least its parent's RSS at fork time.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    """Seconds ``fn()`` takes, with ``sync()`` (CUDA) before and after."""
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def repeat(fn: Callable[[], Any], sync: Callable[[], None], max_repeats: int,
            min_repeats: int, budget: float) -> tuple[float, int]:
    """Warm up once, then the median of as many repeats as fit in ``budget`` seconds."""
    first = timed(fn, sync)  # warm-up (allocator, kernels, autotuning); not counted
    n = int(budget / max(first, 1e-6))
    n = max(min(min_repeats, max_repeats), min(max_repeats, n))
    return statistics.median(timed(fn, sync) for _ in range(max(1, n))), max(1, n)


def count_macs(model: Any, x: Any) -> tuple[float, dict[str, int]]:
    """fvcore MACs of ``model(x)`` and the operators it skipped (name -> occurrences).

    fvcore counts one "flop" per fused multiply-add of convolutions, matmuls and linear
    layers, so its total is MACs; operators without a formula (element-wise ops,
    resizing, pooling) count 0 and are returned in ``skipped``.
    """
    import torch
    from fvcore.nn import FlopCountAnalysis

    fca = FlopCountAnalysis(model, x)
    fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings of data-dependent shapes
        total = float(fca.total())
    return total, dict(fca.unsupported_ops())


def _build_random(name: str, classes: int, size: int, dev: Any) -> Any:
    """``name`` with random weights (rungs whose default is an ImageNet encoder must not
    download), built for ``size`` when it needs a fixed input size (Transformers)."""
    import torch

    from unetzoo.models import create_model, get_entry

    opts: dict[str, Any] = {}
    if get_entry(name).default_options().get("encoder_weights") is not None:
        opts["encoder_weights"] = None
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=classes, **opts).to(dev)
    fixed = getattr(model, "fixed_input_size", None)
    if fixed and fixed != size:
        opts["img_size"] = size
        model = create_model(name, in_channels=1, num_classes=classes, **opts).to(dev)
    return model


def _timed_with_memory(
    row: dict[str, Any], stage: str, fn: Callable[[], None], sync: Callable[[], None],
    cuda: bool, repeats: int, min_repeats: int, budget: float,
) -> tuple[float, int]:
    """Time ``fn`` (see :func:`repeat`) and record the peak RSS (and CUDA memory) after it
    as ``rss_<stage>_MiB`` / ``cuda_<stage>_MiB``."""
    import torch

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = repeat(fn, sync, repeats, min_repeats, budget)
    row[f"rss_{stage}_MiB"] = round(peak_rss_mib(), 1)
    if cuda:
        row[f"cuda_{stage}_MiB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def _macs_columns(model: Any, x: Any) -> dict[str, Any]:
    """``GMACs`` and ``uncounted ops`` of ``model(x)``; "n/a" when tracing fails (a
    tracing failure must not lose the timing row)."""
    try:
        total, skipped = count_macs(model, x)
    except Exception as exc:  # noqa: BLE001 - reported in the row instead
        return {"GMACs": "n/a", "uncounted ops": f"fvcore failed: {type(exc).__name__}"}
    ops = ", ".join(
        k.replace("aten::", "") for k, _ in sorted(skipped.items(), key=lambda kv: -kv[1])
    )
    return {"GMACs": total / 1e9, "uncounted ops": ops or "-"}


def measure_model(
    name: str, size: int = 224, batch: int = 8, classes: int = 9, repeats: int = 5,
    budget: float = 20.0, device: str | None = None, macs: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """One zoo-table row for model ``name`` (see the module docstring for the columns)."""
    import torch
    import torch.nn.functional as F

    from unetzoo.models import count_parameters

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = dev.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    row: dict[str, Any] = {"model": name, "rss_base_MiB": round(peak_rss_mib(), 1)}
    model = _build_random(name, classes, size, dev)
    row["params"] = count_parameters(model)

    # Inference: batch 1, eval mode.
    model.eval()
    x1 = torch.randn(1, 1, size, size, device=dev)

    def infer() -> None:
        with torch.inference_mode():
            model(x1)

    lat, n_inf = _timed_with_memory(row, "infer", infer, sync, cuda, repeats, 2, budget / 2)
    row["latency_ms"] = lat * 1e3

    # Training step: batch `batch`, CE loss, SGD with momentum.
    model.train()
    xb = torch.randn(batch, 1, size, size, device=dev)
    yb = torch.randint(0, classes, (batch, size, size), device=dev)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(xb)
        if isinstance(out, (list, tuple)):  # deep supervision: final output last
            out = out[-1]
        F.cross_entropy(out, yb).backward()
        opt.step()

    t_step, n_train = _timed_with_memory(row, "train", step, sync, cuda, repeats, 1, budget)
    row["train_img_s"] = batch / t_step
    row["repeats"] = f"{n_inf}/{n_train}"

    # MACs last: tracing allocates, and must not inflate the memory columns.
    if macs:
        model.eval()
        row.update(_macs_columns(model, x1))
    return row


def measure_in_subprocess(spec: dict[str, Any], timeout: float = 3600.0) -> dict[str, Any]:
    """Run :func:`measure_model` ``(**spec)`` in a fresh interpreter; returns its row."""
    cmd = [sys.executable, "-m", "unetzoo.measure", "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"model": spec["name"], "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"model": spec["name"], "error": tail[:200]}
    return json.loads(lines[-1])


def zoo_rows(
    names: Sequence[str], size: int = 224, batch: int = 8, classes: int = 9,
    repeats: int = 5, budget: float = 20.0, device: str | None = None,
    in_process: bool = False, progress: Callable[[str], None] | None = None,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Zoo-table rows for ``names``, each model in a fresh subprocess unless ``in_process``."""
    rows = []
    for name in names:
        spec = {"name": name, "size": size, "batch": batch, "classes": classes,
                "repeats": repeats, "budget": budget, "device": device, "threads": threads}
        t0 = time.perf_counter()
        if in_process:
            try:
                row = measure_model(**spec)
            except Exception as exc:  # one broken model must not stop the table
                row = {"model": name, "error": f"{type(exc).__name__}: {exc}"[:200]}
        else:
            row = measure_in_subprocess(spec)
        rows.append(row)
        if progress:  # the row too, so an interrupted long run loses nothing
            progress(f"{name}: {time.perf_counter() - t0:.0f} s {json.dumps(row, default=str)}")
    return rows


def machine_text() -> str:
    """One line naming cores, torch threads, torch version, device and load."""
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    load = f", load avg {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    return (f"Machine: {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}, python {platform.python_version()}, device {dev}{load}")


def table_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The columns to print: the CUDA ones only when measured, ``error`` when any failed."""
    cols = list(COLUMNS)
    if any("cuda_train_MiB" in r for r in rows):
        cols[-2:-2] = list(CUDA_COLUMNS)
    if any("error" in r for r in rows):
        cols.append("error")
    return cols


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of zoo rows."""
    cols = table_columns(rows)

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def _worker(argv: Sequence[str]) -> int:
    spec = json.loads(argv[0])
    row = measure_model(**spec)
    print(json.dumps(row, default=str), flush=True)
    return 0


if __name__ == "__main__":  # the per-model subprocess
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        raise SystemExit(_worker(sys.argv[2:]))
    raise SystemExit("usage: python -m unetzoo.measure --worker JSON (internal)")
