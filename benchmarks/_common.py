"""Shared helpers for the benchmark scripts (run by hand, not in CI).

Usage in a script::

    from benchmarks._common import machine_info, compare, median_time, emit

    def main(argv=None):
        args = base_parser(__doc__).parse_args(argv)   # --tiny, --repeats, --json
        rows = ...
        emit("Title", rows, args, extra={"notes": ...})

Rules the helpers enforce: warm-up before timing, both sides of a comparison alternate
within one process, and the reported figure is the median of the repeats (this machine
is shared and noisy, so ratios measured side by side are what we quote).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT / "src") not in sys.path:  # allow running from a plain checkout
    sys.path.insert(0, str(REPO_ROOT / "src"))


def machine_info() -> dict[str, Any]:
    """Cores, threads, library versions and device: printed above every table."""
    import numpy as np
    import torch

    info: dict[str, Any] = {
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": "cpu",
    }
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    return info


def machine_line(info: dict[str, Any] | None = None) -> str:
    info = info or machine_info()
    parts = [
        f"{info['cpu_cores']} cores",
        f"{info['torch_threads']} torch threads",
        f"torch {info['torch']}",
        f"numpy {info['numpy']}",
        f"device {info['device']}",
    ]
    if "load_avg_1m" in info:
        parts.append(f"load avg {info['load_avg_1m']}")
    return "Machine: " + ", ".join(parts)


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_once(fn: Callable[[], Any]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    return statistics.median(time_once(fn) for _ in range(max(1, repeats)))


def compare_samples(
    sides: dict[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1
) -> dict[str, list[float]]:
    """Every repeat's time of each side, the sides alternating within every repeat."""
    for fn in sides.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(max(1, repeats)):
        for name, fn in sides.items():
            samples[name].append(time_once(fn))
    return samples


def compare(
    sides: dict[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1
) -> dict[str, float]:
    """Median time of each side, the sides alternating within every repeat."""
    samples = compare_samples(sides, repeats, warmup)
    return {k: statistics.median(v) for k, v in samples.items()}


def ratio_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95
             ) -> tuple[float, float, float]:
    """Geometric mean of the paired ratios ``a[i] / b[i]`` (same repeat, so the load is
    shared) and its Student-t confidence interval on the log scale; ``(ratio, lo, hi)``
    (``lo = hi = nan`` with fewer than 2 pairs)."""
    import math

    from scipy import stats

    logs = [math.log(x / y) for x, y in zip(a, b)]
    mean = statistics.fmean(logs)
    if len(logs) < 2:
        return math.exp(mean), float("nan"), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "(no rows)"
    cols = list(columns or rows[0].keys())

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def base_parser(description: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--tiny", action="store_true", help="small sizes, one repeat (CI smoke)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    return p


def emit(
    title: str,
    rows: Sequence[dict[str, Any]],
    args: argparse.Namespace,
    columns: Sequence[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """Print the machine line and a Markdown table; write JSON when ``--json`` is set."""
    info = machine_info()
    text = f"## {title}\n\n{machine_line(info)}\n\n{markdown_table(rows, columns)}\n"
    if extra and extra.get("notes"):
        text += f"\n{extra['notes']}\n"
    print(text)
    if getattr(args, "json", None):
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"title": title, "machine": info, "rows": list(rows), **(extra or {})}
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return text


# ---------------------------------------------------------------- roofline
#: /proc/cpuinfo flags that decide the matmul peak (vector width, FMA, bf16 units).
PEAK_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "bf16")


def cpu_info() -> dict[str, Any]:
    """CPU model, the flags of :data:`PEAK_FLAGS` it has, PyTorch's capability and
    whether it has native bf16 (:func:`unetzoo.engine.backends.cpu_bf16_support`)."""
    import torch

    from unetzoo.engine.backends import cpu_bf16_support, cpu_flags

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    return {"cpu_model": model, "cpu_flags": [f for f in PEAK_FLAGS if f in flags],
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_bf16": cpu_bf16_support(flags)}


def matmul_peak_gflops(dtype: str = "float32", n: int = 2048, repeats: int = 3,
                       device: str = "cpu") -> float:
    """The machine's matmul ceiling: best GFLOP/s of ``repeats`` ``n x n`` matmuls in
    ``dtype`` (2 n^3 FLOPs each) after a warm-up, on this process's threads."""
    import torch

    dt = getattr(torch, dtype)
    a = torch.randn(n, n, device=device).to(dt)
    b = torch.randn(n, n, device=device).to(dt)
    torch.mm(a, b)
    best = min(time_once(lambda: torch.mm(a, b)) for _ in range(max(1, repeats)))
    return 2.0 * n**3 / best / 1e9


def peak_sides(tiny: bool = False, device: str = "cpu"
               ) -> dict[str, tuple[Callable[[], Any], float]]:
    """``{"peak fp32": (fn, flops), "peak bf16": ...}``: one ``n x n`` matmul per call, to
    time *alternating with* the benchmark's sides (on a shared machine the ceiling moves
    with the load, so it is measured under the same load). bf16 only where the device has
    it natively (emulated bf16 on a CPU without it is no ceiling worth quoting)."""
    import torch

    from unetzoo.engine.backends import cpu_bf16_support

    n = 256 if tiny else 2048
    dtypes = ["float32"]
    if (device == "cpu" and cpu_bf16_support() is not None) or (
            device != "cpu" and torch.cuda.is_bf16_supported()):
        dtypes.append("bfloat16")
    out = {}
    for name in dtypes:
        a = torch.randn(n, n, device=device).to(getattr(torch, name))
        b = torch.randn(n, n, device=device).to(getattr(torch, name))
        key = "peak " + ("fp32" if name == "float32" else "bf16")
        out[key] = ((lambda a=a, b=b: torch.mm(a, b)), 2.0 * n**3)
    return out


def peaks(tiny: bool = False, device: str = "cpu", repeats: int = 3) -> dict[str, float]:
    """GFLOP/s of :func:`peak_sides` on their own (best of ``repeats``): ``{"fp32": ...,
    "bf16": ...}``."""
    return {k.split()[1]: flops / min(time_once(fn) for _ in range(max(1, repeats))) / 1e9
            for k, (fn, flops) in peak_sides(tiny, device).items()}


def split_peaks(times: dict[str, float], sides: dict[str, tuple[Callable[[], Any], float]]
                ) -> dict[str, float]:
    """Pop the peak sides' median times out of ``times``; their GFLOP/s by precision."""
    return {k.split()[1]: sides[k][1] / times.pop(k) / 1e9 for k in sides}


def flop_count(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (convolutions and matmuls, 2 per multiply-accumulate;
    backward included when ``fn`` runs it), by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def roofline_columns(flops: float, seconds: float, peak: dict[str, float],
                     precision: str = "fp32") -> dict[str, float]:
    """``GFLOP/s`` and its share of the ``precision`` peak (and of fp32 for bf16 rows)."""
    rate = flops / seconds / 1e9
    cols = {"GFLOP_s": rate, "fp32_peak_%": 100.0 * rate / peak["fp32"]}
    if "bf16" in peak:
        cols["bf16_peak_%"] = 100.0 * rate / peak["bf16"]
    if precision == "bf16" and "bf16" not in peak:
        cols["bf16_peak_%"] = float("nan")
    return cols


def roofline_line(peak: dict[str, float], info: dict[str, Any] | None = None) -> str:
    """One line naming the CPU, its flags and the peaks measured in this process."""
    info = info or cpu_info()
    bf16 = (f", bf16 matmul peak {peak['bf16']:.0f} GFLOP/s" if "bf16" in peak
            else f", no native bf16 ({info['cpu_bf16'] or 'no AMX / AVX512-BF16'})")
    return (f"CPU: {info['cpu_model']} ({info['cpu_capability']}; flags "
            f"{' '.join(info['cpu_flags']) or 'none of ' + ' '.join(PEAK_FLAGS)}); "
            f"fp32 matmul peak {peak['fp32']:.0f} GFLOP/s{bf16}, measured in this process "
            "(a square matmul timed alternating with the sides, median)")
