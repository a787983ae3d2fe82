"""Cost growth: forward time of one model against image size (128 to 1024 px).

Batch 1, eval mode, ``torch.inference_mode``, random weights; every size is timed after
a warm-up, the sizes interleaved within every repeat (so load changes hit all sizes
alike), median of ``--repeats``. The fit ``log(time) = a + slope * log(pixels)`` tells
whether the cost grows linearly in the pixel count (slope 1) or faster (attention over
all tokens would approach 2).

    python benchmarks/bench_scaling.py                         # resunetpp, 128..1024
    python benchmarks/bench_scaling.py --model unet --sizes 128,256,512
    python benchmarks/bench_scaling.py --tiny                  # CI smoke
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks._common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks._common import base_parser, compare, emit

DEFAULT_SIZES = (128, 256, 384, 512, 768, 1024)
TINY = {"model": "resunet", "options": {"encoder_weights": None, "width_scale": 0.125},
        "sizes": (32, 64)}


def loglog_slope(pixels: list[float], seconds: list[float]) -> float:
    """Least-squares slope of ``log(seconds)`` against ``log(pixels)``."""
    if len(pixels) < 2:
        return float("nan")
    return float(np.polyfit(np.log(pixels), np.log(seconds), 1)[0])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Time the sizes, print the table and the slope; returns ``{"rows", "slope"}``."""
    from unetzoo.models import create_model, get_entry

    p = base_parser(__doc__)
    p.add_argument("--model", default="resunetpp", help="registered model (default resunetpp)")
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                   help="comma-separated image sides")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        name, options, sizes, repeats = TINY["model"], dict(TINY["options"]), TINY["sizes"], 1
    else:
        name, sizes, repeats = args.model, tuple(int(s) for s in args.sizes.split(",")), args.repeats
        options = {}
        if get_entry(name).default_options().get("encoder_weights") is not None:
            options["encoder_weights"] = None
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=9, **options).eval()
    if getattr(model, "fixed_input_size", None):
        raise SystemExit(f"{name} takes one fixed input size; pick a convolutional model")

    inputs = {s: torch.randn(1, 1, s, s) for s in sizes}

    def forward(s: int):
        def run() -> None:
            with torch.inference_mode():
                model(inputs[s])
        return run

    times = compare({str(s): forward(s) for s in sizes}, repeats=repeats, warmup=1)
    base = sizes[0]
    rows = []
    for s in sizes:
        t = times[str(s)]
        rows.append({
            "size": f"{s}x{s}", "megapixels": s * s / 1e6, "forward_ms": t * 1e3,
            "ms_per_megapixel": t * 1e3 / (s * s / 1e6),
            "time_ratio": t / times[str(base)], "pixel_ratio": (s * s) / (base * base),
        })
    slope = loglog_slope([s * s for s in sizes], [times[str(s)] for s in sizes])
    verdict = ("linear in pixel count" if abs(slope - 1) <= 0.15 else
               "sub-linear (fixed overheads dominate small sizes)" if slope < 1 else
               "super-linear")
    notes = (f"Model `{name}` {options or ''} at batch 1, random weights; median of {repeats} "
             f"interleaved repeats after 1 warm-up. Log-log slope of time against pixel "
             f"count: **{slope:.2f}** ({verdict}).")
    emit(f"Cost growth: {name} forward time vs image size", rows, args,
         extra={"notes": notes, "slope": slope})
    return {"rows": rows, "slope": slope}


if __name__ == "__main__":
    main()
