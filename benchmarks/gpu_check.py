"""GPU checks behind ``benchmarks/gpu_check.sh``: each subcommand prints Markdown rows.

    python benchmarks/gpu_check.py step     # fp32 vs AMP vs channels_last vs both, compile on/off
    python benchmarks/gpu_check.py volume   # batched volume inference vs the per-slice loop

``--device cpu --tiny`` runs the same code on small sizes so the suite can check it
without a GPU (the timings then mean nothing). Rows: ``| check | setting | value | note |``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks._common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks._common import REPO_ROOT  # noqa: F401  (puts src/ on the path)

MODEL = "resnet34_unet"
FULL = {"size": 224, "batch": 8, "classes": 9, "steps": 20, "depth": 150, "side": 512}
TINY = {"size": 32, "batch": 2, "classes": 3, "steps": 2, "depth": 3, "side": 40}


def row(check: str, setting: str, value: str, note: str = "") -> None:
    print(f"| {check} | {setting} | {value} | {note} |", flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build(classes: int, device: torch.device, channels_last: bool) -> torch.nn.Module:
    from unetzoo.models import create_model

    torch.manual_seed(0)
    model = create_model(MODEL, in_channels=1, num_classes=classes).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _time_steps(step: Callable[[], None], steps: int, device: torch.device) -> float:
    """Median ms of ``steps`` calls after three warm-up calls (compile happens there)."""
    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def train_step_ms(cfg: dict, device: torch.device, amp: bool, channels_last: bool,
                  compile_model: bool) -> float:
    model = _build(cfg["classes"], device, channels_last)
    if compile_model:
        model = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    x = torch.randn(cfg["batch"], 1, cfg["size"], cfg["size"], device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, cfg["classes"], (cfg["batch"], cfg["size"], cfg["size"]), device=device)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return _time_steps(step, cfg["steps"], device)


def check_step(cfg: dict, device: torch.device) -> None:
    settings = [("fp32", False, False, False), ("AMP", True, False, False),
                ("channels_last", False, True, False), ("AMP + channels_last", True, True, False),
                ("fp32 + torch.compile", False, False, True),
                ("AMP + channels_last + torch.compile", True, True, True)]
    base = None
    for name, amp, cl, comp in settings:
        if comp and device.type != "cuda":  # inductor's CPU compile takes minutes; GPU only
            row("train step", name, "skipped", "torch.compile is checked on CUDA only")
            continue
        try:
            ms = train_step_ms(cfg, device, amp, cl, comp)
        except Exception as exc:  # a failing setting is a row, not the end of the check
            row("train step", name, "FAILED", f"{type(exc).__name__}: {str(exc)[:120]}")
            continue
        base = ms if base is None else base
        row("train step", name, f"{ms:.1f} ms", f"{base / ms:.2f}x fp32 "
            f"({MODEL}, batch {cfg['batch']}, {cfg['size']} px)")


def check_volume(cfg: dict, device: torch.device) -> None:
    """Batched ``predict_volume`` vs a per-slice loop (batch 1), same labels required."""
    from unetzoo.engine.inference import predict_volume

    model = _build(cfg["classes"], device, False).eval()
    rng = np.random.default_rng(0)
    vol = rng.random((1, cfg["depth"], cfg["side"], cfg["side"]), dtype=np.float32)
    runs = {}
    for name, batch, cl in [("per-slice loop (batch 1)", 1, False), ("batched (32)", 32, False),
                            ("batched (32), channels_last", 32, True)]:
        m = model.to(memory_format=torch.channels_last) if cl else model
        predict_volume(m, vol[:, :2], cfg["size"], batch_size=batch, device=device)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        runs[name] = predict_volume(m, vol, cfg["size"], batch_size=batch, device=device,
                                    channels_last=cl)
        _sync(device)
        runs[name + " s"] = time.perf_counter() - t0
    ref = runs["per-slice loop (batch 1)"]
    for name in ("per-slice loop (batch 1)", "batched (32)", "batched (32), channels_last"):
        same = float((runs[name] == ref).mean())
        row("volume inference", name, f"{runs[name + ' s']:.2f} s",
            f"{runs['per-slice loop (batch 1) s'] / runs[name + ' s']:.2f}x loop, "
            f"labels equal {100 * same:.3f} % ({cfg['depth']} x {cfg['side']}^2)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("check", choices=["step", "volume"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch", file=sys.stderr)
        return 2
    cfg = TINY if args.tiny else FULL
    {"step": check_step, "volume": check_volume}[args.check](cfg, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
