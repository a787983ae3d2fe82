"""Training step: unetzoo's resnet34_unet against segmentation_models_pytorch's Unet("resnet34").

Three sides: ``unetzoo`` is ``resnet34_unet`` as published (gyb357's decoder 512-256-128-64
with transposed-convolution up-sampling: 1.49x smp's multiply-accumulates, so its time
says little about implementation quality); ``unetzoo-smpdec`` is ``resnet34_unet`` with
``decoder="smp"`` (smp's widths 256-128-64-32-16 and nearest up-sampling: the same
architecture as smp, equal parameter count), the like-for-like row; ``smp`` is
``smp.Unet("resnet34")``.

All models get the same input (batch 8, 1 x 224 x 224, 9 classes), the same loss
(cross-entropy) and the same optimizer (SGD, lr 1e-4, momentum 0.9, weight decay 1e-4);
random weights (``encoder_weights=None``). One step = zero_grad, forward, loss, backward,
optimizer step. The sides alternate within every repeat after a warm-up; the figure is
the median. Memory: the bytes autograd saves for backward in one step (unique storages,
measured in-process for both sides) and, with ``--rss``, the peak RSS of a fresh process
that builds one model and runs two steps.

    python benchmarks/bench_train_step.py                    # 224 px, batch 8, 5 repeats
    python benchmarks/bench_train_step.py --channels-last --threads 1
    python benchmarks/bench_train_step.py --tiny             # CI smoke
    python benchmarks/bench_train_step.py --sides unetzoo-smpdec --repeats 15  # the ratio's CI

Target (issue 17): the equal architecture (``unetzoo-smpdec``) at <= 1.0x smp's step time
and peak memory. smp is a benchmark-only dependency.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks._common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from benchmarks._common import (
    REPO_ROOT,
    base_parser,
    compare_samples,
    emit,
    flop_count,
    peak_sides,
    ratio_ci,
    roofline_columns,
    roofline_line,
    split_peaks,
)

FULL = {"size": 224, "batch": 8, "classes": 9}
TINY = {"size": 32, "batch": 2, "classes": 9}


SIDES = ("unetzoo", "unetzoo-smpdec", "smp")
LABELS = {
    "unetzoo": "unetzoo resnet34_unet (published: 512-256-128-64, transposed conv)",
    "unetzoo-smpdec": "unetzoo resnet34_unet decoder='smp' (smp's architecture)",
    "smp": "smp Unet('resnet34')",
}


def build(side: str, classes: int) -> torch.nn.Module:
    """``"unetzoo"`` -> resnet34_unet, ``"unetzoo-smpdec"`` -> resnet34_unet with smp's
    decoder, ``"smp"`` -> smp.Unet("resnet34"); random weights."""
    torch.manual_seed(0)
    if side in ("unetzoo", "unetzoo-smpdec"):
        from unetzoo.models import create_model

        extra = {"decoder": "smp"} if side == "unetzoo-smpdec" else {}
        return create_model("resnet34_unet", in_channels=1, num_classes=classes, **extra)
    if side == "smp":
        import segmentation_models_pytorch as smp

        return smp.Unet("resnet34", encoder_weights=None, in_channels=1, classes=classes)
    raise ValueError(side)


def make_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    """A closure running one SGD training step of ``model`` on ``(x, y)``."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def saved_tensor_mib(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """MiB of the unique non-parameter storages autograd keeps for backward (activations).

    Convolutions also save their weights; those storages are left out so the figure is
    the activation memory, which grows with the batch.
    """
    seen: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            st = t.untyped_storage()
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    del loss
    return sum(v for k, v in seen.items() if k not in weights) / 2**20


def forward_gmacs(model: torch.nn.Module, size: int) -> float:
    """fvcore multiply-accumulates (GMACs) of one forward at batch 1, ``size`` x ``size``."""
    from unetzoo.measure import count_macs

    was_training = model.training
    model.eval()
    try:
        return count_macs(model, torch.randn(1, 1, size, size))[0] / 1e9
    finally:
        model.train(was_training)


def rss_in_subprocess(side: str, cfg: dict[str, int], channels_last: bool,
                      threads: int | None) -> float:
    """Peak RSS (MiB) of a fresh process that builds ``side`` and runs two steps."""
    spec = json.dumps({"side": side, "cfg": cfg, "cl": channels_last, "threads": threads})
    code = "import sys; from benchmarks.bench_train_step import _rss_worker; _rss_worker(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    return float(proc.stdout.strip().splitlines()[-1])


def _rss_worker(spec_json: str) -> None:
    spec = json.loads(spec_json)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    cfg = spec["cfg"]
    # Both libraries imported on every side, so that the import footprint (unetzoo's
    # registry, smp's encoders) is the same baseline and the peak compares training.
    import segmentation_models_pytorch  # noqa: F401

    import unetzoo.models  # noqa: F401

    model = build(spec["side"], cfg["classes"])
    x = torch.randn(cfg["batch"], 1, cfg["size"], cfg["size"])
    y = torch.randint(0, cfg["classes"], (cfg["batch"], cfg["size"], cfg["size"]))
    if spec["cl"]:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    step = make_step(model, x, y)
    for _ in range(2):  # the 2nd step holds momentum buffers + activations + grads
        step()
    from unetzoo.measure import peak_rss_mib as _rss_mib  # VmHWM, not ru_maxrss (parent's)

    print(_rss_mib())


def _ratio_columns(side: list[float], ref: list[float]) -> dict[str, float]:
    ratio, lo, hi = ratio_ci(side, ref)
    return {"ratio_gmean": ratio, "ci95_lo": lo, "ci95_hi": hi}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the comparison and print the table; returns the rows."""
    p = base_parser(__doc__)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--channels-last", action="store_true",
                   help="add both sides with channels_last model and input")
    p.add_argument("--sides", default=",".join(SIDES),
                   help=f"comma-separated sides from {','.join(SIDES)} (smp is always kept)")
    p.add_argument("--rss-repeats", type=int, default=1,
                   help="fresh processes per side for the peak RSS (median; allocator "
                   "noise between runs is several percent)")
    p.add_argument("--rss", action="store_true",
                   help="peak RSS per side in a fresh subprocess (slower)")
    p.add_argument("--size", type=int, default=None, help="image size (default 224)")
    p.add_argument("--batch", type=int, default=None, help="batch (default 8)")
    p.set_defaults(repeats=None)  # 5, or 1 with --tiny, unless given
    args = p.parse_args(argv)
    cfg = dict(TINY if args.tiny else FULL)
    cfg.update({k: v for k, v in (("size", args.size), ("batch", args.batch)) if v})
    repeats = args.repeats or (1 if args.tiny else 5)
    sides = [x for x in SIDES if x in args.sides.split(",") or x == "smp"]
    unknown = set(args.sides.split(",")) - set(SIDES)
    if unknown:
        raise SystemExit(f"unknown side(s) {sorted(unknown)}; choose from {', '.join(SIDES)}")
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    x = torch.randn(cfg["batch"], 1, cfg["size"], cfg["size"])
    y = torch.randint(0, cfg["classes"], (cfg["batch"], cfg["size"], cfg["size"]))
    variants = [False, True] if args.channels_last else [False]
    models: dict[str, torch.nn.Module] = {}
    steps: dict[str, Any] = {}
    for cl in variants:
        for side in sides:
            key = f"{side}{' channels_last' if cl else ''}"
            m = build(side, cfg["classes"])
            xi = x
            if cl:
                m = m.to(memory_format=torch.channels_last)
                xi = x.contiguous(memory_format=torch.channels_last)
            models[key] = m
            steps[key] = make_step(m, xi, y)
    flops = {k: flop_count(fn) for k, fn in steps.items()}  # forward + backward, once
    psides = peak_sides(tiny=args.tiny)
    samples = compare_samples({**steps, **{k: fn for k, (fn, _) in psides.items()}},
                              repeats=repeats, warmup=1)
    times = {k: statistics.median(v) for k, v in samples.items()}
    peak = split_peaks(times, psides)

    rows = []
    for key, t in times.items():
        side, cl = key.split(" ")[0], key.endswith("channels_last")
        ref_key = "smp channels_last" if cl else "smp"
        m = models[key]
        xi = x.contiguous(memory_format=torch.channels_last) if cl else x
        row = {
            "side": key, "model": LABELS[side] + (" channels_last" if cl else ""),
            "params": sum(p.numel() for p in m.parameters()),
            "step_ms": t * 1e3, "img_s": cfg["batch"] / t,
            "time_vs_smp": t / times[ref_key],
            **_ratio_columns(samples[key], samples[ref_key]),
            **roofline_columns(flops[key], t, peak),
            "activations_MiB": saved_tensor_mib(m, xi, y),
            "GMACs_per_image": forward_gmacs(m, cfg["size"]),
        }
        row["ms_per_GMAC"] = row["step_ms"] / (row["GMACs_per_image"] * cfg["batch"])
        if args.rss:
            row["peak_rss_MiB"] = statistics.median(
                rss_in_subprocess(side, cfg, cl, args.threads)
                for _ in range(max(1, args.rss_repeats))
            )
        rows.append(row)
    # Memory against smp's: peak RSS when measured, else the activations autograd saves.
    mem_key = "peak_rss_MiB" if args.rss else "activations_MiB"
    for row in rows:
        ref = next(r for r in rows if r["side"] == ("smp channels_last"
                                                   if row["side"].endswith("channels_last")
                                                   else "smp"))
        row["memory_vs_smp"] = row[mem_key] / ref[mem_key]

    notes = (
        f"Input batch {cfg['batch']} x 1 x {cfg['size']} x {cfg['size']}, {cfg['classes']} "
        "classes, cross-entropy, SGD(lr 1e-4, momentum 0.9, wd 1e-4), random weights; "
        f"median of {repeats} alternating repeats after 1 warm-up. Target: the equal "
        "architecture (`unetzoo-smpdec`) at `time_vs_smp` and `memory_vs_smp` <= 1.0 "
        f"(memory: {'peak RSS' if args.rss else 'activations'}). `activations_MiB`: unique non-weight storages autograd saves in "
        "one forward; `peak_rss_MiB`: fresh process that imports both libraries, builds one model and runs 2 steps; "
        "`GMACs_per_image`: fvcore count of one forward; `ms_per_GMAC`: step time per "
        "forward GMAC of the batch (work-normalised speed). `ratio_gmean` [`ci95_lo`, "
        "`ci95_hi`]: geometric mean of the per-repeat step-time ratios to smp (paired, same "
        "repeat) with a 95 % Student-t interval. GFLOP_s: forward + backward FLOPs of one "
        "step (torch.utils.flop_counter) over the median step time; fp32_peak_%: share of "
        "the fp32 matmul peak timed alternating with the steps. " + roofline_line(peak)
    )
    emit(f"Training step: resnet34_unet vs smp.Unet('resnet34'), {cfg['size']} px, "
         f"batch {cfg['batch']}", rows, args, extra={"notes": notes})
    return rows


if __name__ == "__main__":
    main()
