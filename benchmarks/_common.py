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


def compare(
    sides: dict[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1
) -> dict[str, float]:
    """Median time of each side, the sides alternating within every repeat."""
    for fn in sides.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(max(1, repeats)):
        for name, fn in sides.items():
            samples[name].append(time_once(fn))
    return {k: statistics.median(v) for k, v in samples.items()}


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
