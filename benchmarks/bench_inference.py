"""Volume inference on CPU: the reference protocol loop against unetzoo's backends.

The reference is TransUNet's ``test_single_volume``: for every slice, one at a time,
``scipy.ndimage.zoom(order=3)`` to ``img_size``, the network at batch 1 (PyTorch, NCHW),
softmax + argmax, ``zoom(order=0)`` back to the slice size. unetzoo's
``unetzoo.engine.inference.predict_volume`` does the same maths on batches of slices (the
zooms as precomputed separable matrices) and runs the network through a backend of
``unetzoo.engine.backends``:

* ``torch``: the model as given (NCHW);
* ``channels_last``: a ``channels_last`` copy of the model;
* ``onnxruntime``: the model exported to ONNX once (cached beside a checkpoint in a temp
  folder) and run by ONNX Runtime's CPU provider with the same thread count;
* ``auto``: what ``unetzoo test`` / ``predict`` run by default: a fresh
  ``make_backend(..., "auto")`` per timed run (its probe of the first slices, the
  ``channels_last`` copy and the cached ONNX session load are inside the timing; the
  one-time export is not, it is reported in the notes).

All sides run in one process on the same synthetic Synapse-sized case (150 x 512 x 512,
CT-like smooth intensities) per model (random weights, eval mode), alternating, after a
warm-up, median of ``--repeats``. On a slow CPU a full 150-slice pass per side and repeat
is too long, so ``--slices N`` times a contiguous slab of N slices (slices/s is a per-slice
rate either way); the label maps of the timed slab are compared voxel by voxel with the
reference's. A second table times the resizing alone (no network).

    python benchmarks/bench_inference.py --slices 8 --repeats 3 --threads 2
    python benchmarks/bench_inference.py --models resnet34_unet --backends torch,auto
    python benchmarks/bench_inference.py --tiny               # CI smoke

Target (issue 17): >= 2.5x the reference's slices/s on CPU with identical labels, for
resnet34_unet, unet and resunet.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks._common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from scipy import ndimage

from benchmarks._common import (
    base_parser,
    compare,
    emit,
    flop_count,
    markdown_table,
    peak_sides,
    roofline_columns,
    roofline_line,
    split_peaks,
)

FULL = {"model": "resunet", "options": {"encoder_weights": None}, "shape": (150, 512, 512),
        "img_size": 224, "classes": 9}
TINY = {"model": "resunet", "options": {"encoder_weights": None, "width_scale": 0.125},
        "shape": (4, 64, 64), "img_size": 32, "classes": 9}
#: The issue's three models, random weights (no download).
FULL_MODELS = {
    "resnet34_unet": {"encoder_weights": None},
    "unet": {},
    "resunet": {"encoder_weights": None},
}
BACKENDS = ("torch", "channels_last", "onnxruntime", "auto")
TINY_BACKENDS = ("torch", "channels_last")


def synthetic_case(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """``(D, H, W)`` float32 CT-like volume: smoothed noise plus bright blobs, roughly [0, 1]."""
    rng = np.random.default_rng(seed)
    d, h, w = shape
    # Smooth a coarse grid and upsample: cheap even at 150 x 512 x 512.
    coarse = rng.standard_normal((max(d // 8, 2), max(h // 16, 2), max(w // 16, 2)))
    vol = ndimage.zoom(coarse, (d / coarse.shape[0], h / coarse.shape[1], w / coarse.shape[2]),
                       order=1)
    vol = (vol - vol.min()) / (np.ptp(vol) + 1e-8)
    vol += 0.05 * rng.standard_normal(vol.shape)
    return vol.astype(np.float32)


@torch.no_grad()
def reference_protocol(model: torch.nn.Module, volume: np.ndarray, img_size: int) -> np.ndarray:
    """TransUNet ``test_single_volume``: ``(D, H, W)`` image -> ``(D, H, W)`` labels, batch 1."""
    prediction = np.zeros(volume.shape, dtype=np.int64)
    for ind in range(volume.shape[0]):
        sl = volume[ind]
        x, y = sl.shape
        if (x, y) != (img_size, img_size):
            sl = ndimage.zoom(sl, (img_size / x, img_size / y), order=3)
        inp = torch.from_numpy(sl).unsqueeze(0).unsqueeze(0).float()
        out = torch.argmax(torch.softmax(model(inp), dim=1), dim=1).squeeze(0).numpy()
        if (x, y) != (img_size, img_size):
            out = ndimage.zoom(out, (x / img_size, y / img_size), order=0)
        prediction[ind] = out
    return prediction


def resize_reference(volume: np.ndarray, img_size: int) -> np.ndarray:
    """The reference's two zooms alone (labels from a fixed threshold instead of a network)."""
    out = np.zeros(volume.shape, dtype=np.int64)
    x, y = volume.shape[1:]
    for ind in range(volume.shape[0]):
        small = ndimage.zoom(volume[ind], (img_size / x, img_size / y), order=3)
        out[ind] = ndimage.zoom((small > 0.5).astype(np.int64), (x / img_size, y / img_size),
                                order=0)
    return out


def resize_unetzoo(volume: np.ndarray, img_size: int, batch_size: int) -> np.ndarray:
    """unetzoo's batched tensor resizing of the same two zooms."""
    from unetzoo.engine.inference import resize_cubic, resize_nearest

    d, h, w = volume.shape
    out = np.zeros(volume.shape, dtype=np.int64)
    vol = torch.from_numpy(volume)
    for s in range(0, d, batch_size):
        small = resize_cubic(vol[s : s + batch_size], (img_size, img_size))
        out[s : s + batch_size] = resize_nearest((small > 0.5).long(), (h, w)).numpy()
    return out


def _build(name: str, options: dict[str, Any], classes: int) -> torch.nn.Module:
    from unetzoo.models import create_model

    torch.manual_seed(0)
    return create_model(name, in_channels=1, num_classes=classes, **options).eval()


def bench_model(name: str, options: dict[str, Any], cfg: dict[str, Any], slab: np.ndarray,
                backends: list[str], batch_size: int, repeats: int,
                workdir: Path) -> tuple[list[dict[str, Any]], str]:
    """Time the reference loop and each backend on ``slab`` for one model."""
    from unetzoo.engine.backends import ChannelsLastModel, make_backend, onnx_backend
    from unetzoo.engine.inference import predict_volume

    model = _build(name, options, cfg["classes"])
    size = cfg["img_size"]
    n = slab.shape[0]
    results: dict[str, np.ndarray] = {}
    notes = []

    def side(key, fn):
        def run():
            results[key] = fn()
        return run

    def volume(module):
        return lambda: predict_volume(module, slab[None], size, batch_size=batch_size)

    sides = {"reference": side("reference", lambda: reference_protocol(model, slab, size))}
    chosen: list[str] = []  # what each auto run picked
    for b in backends:
        if b == "torch":
            sides[b] = side(b, volume(model))
        elif b == "channels_last":
            sides[b] = side(b, volume(ChannelsLastModel(model)))
        elif b in ("onnxruntime", "auto"):
            ckpt = workdir / name / "best.pt"
            if not ckpt.exists():
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"state_dict": model.state_dict()}, ckpt)
                t0 = time.perf_counter()
                onnx_backend(model, checkpoint=ckpt, img_size=size)
                notes.append(f"`{name}`: one-time ONNX export {time.perf_counter() - t0:.1f} s")
            if b == "onnxruntime":  # the cached file, as a second run finds it
                sides[b] = side(b, volume(onnx_backend(model, checkpoint=ckpt, img_size=size)))
            else:
                def auto(ckpt=ckpt, chosen=chosen):
                    backend = make_backend(model, "auto", checkpoint=ckpt, img_size=size)
                    out = predict_volume(backend, slab[None], size, batch_size=batch_size)
                    chosen.append(backend.backend)
                    return out

                sides[b] = side(b, auto)
        else:
            raise SystemExit(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    psides = peak_sides(tiny=size < 64)
    sides.update({k: fn for k, (fn, _) in psides.items()})
    times = compare(sides, repeats=repeats, warmup=1)
    peak = split_peaks(times, psides)
    x1 = torch.randn(1, 1, size, size)
    with torch.no_grad():
        flops = flop_count(lambda: model(x1)) * n  # the network's FLOPs on the slab
    notes.append(f"`{name}`: {flops / n / 1e9:.2f} GFLOP per slice; " + roofline_line(peak))

    ref = results["reference"]
    pick = {"torch channels_last": "channels_last"}.get(chosen[-1]) if chosen else None
    pick = pick or (chosen[-1] if chosen else None)
    if "auto" in times and pick in times:
        # auto = its chosen backend + a one-time cost per process (probe, session load):
        # what that cost is on a whole Synapse volume, from the rates measured here.
        depth = FULL["shape"][0]
        once = times["auto"] - times[pick]
        notes.append(
            f"`{name}` auto: one-time cost {once:.1f} s per process (probe of the first "
            f"slice, copies, cached ONNX session load); on a {depth}-slice volume that is "
            f"{depth / n * times['reference']:.0f} s (reference) against "
            f"{depth / n * times[pick] + once:.0f} s (auto), "
            f"{times['reference'] * depth / n / (times[pick] * depth / n + once):.2f}x "
            "(projected from this slab's rates)"
        )
    rows = []
    for key, t in times.items():
        labels = results[key]
        diff = float((labels != ref).mean() * 100.0)
        label = key if key != "auto" else f"auto (chose {', '.join(sorted(set(chosen)))})"
        rows.append({
            "model": name, "side": label, "slices": n, "s_per_slab": t,
            "slices_per_s": n / t, "speedup": times["reference"] / t,
            **roofline_columns(flops, t, peak),
            "identical": "yes" if diff == 0.0 else "no", "differing_voxels_%": diff,
        })
    return rows, "; ".join(notes)


def profile_model(name: str, options: dict[str, Any], classes: int, size: int,
                  slices: int = 1, top: int = 8) -> str:
    """Where one forward's time goes: PyTorch's operators (NCHW, as the reference runs
    them) and ONNX Runtime's node types, as Markdown tables of the top ``top``."""
    import json as _json

    import onnxruntime as ort

    from unetzoo.deploy.export import export_model

    model = _build(name, options, classes)
    x = torch.randn(slices, 1, size, size)
    with torch.no_grad():
        model(x)  # warm-up
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model(x)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) or 1
    torch_rows = [{"operator": e.key, "calls": e.count,
                   "self_ms": e.self_cpu_time_total / 1e3,
                   "share_%": 100.0 * e.self_cpu_time_total / total} for e in events[:top]]
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp:
        path = Path(tmp) / "m.onnx"
        export_model(model, path, img_size=size, verify=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        sess.run(None, {"image": x.numpy()})  # warm-up
        sess.run(None, {"image": x.numpy()})
        trace = _json.loads(Path(sess.end_profiling()).read_text())
    runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    last = runs[-1]["ts"] if runs else 0
    by_op: dict[str, list[float]] = {}
    for e in trace:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") \
                and e["ts"] >= last:
            op = e.get("args", {}).get("op_name", "?")
            by_op.setdefault(op, []).append(e["dur"])
    ort_total = sum(sum(v) for v in by_op.values()) or 1
    ort_rows = sorted(({"node type": k, "nodes": len(v), "ms": sum(v) / 1e3,
                        "share_%": 100.0 * sum(v) / ort_total} for k, v in by_op.items()),
                      key=lambda r: -r["ms"])[:top]
    return (f"### Profile: `{name}`, {slices} x 1 x {size} x {size}, one forward\n\n"
            f"PyTorch NCHW (self CPU time):\n\n{markdown_table(torch_rows)}\n\n"
            f"ONNX Runtime (kernel time by node type):\n\n{markdown_table(ort_rows)}\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison, print the tables, return ``{"rows": ..., "resize_rows": ...}``."""
    p = base_parser(__doc__)
    p.add_argument("--slices", type=int, default=None,
                   help="time a slab of this many slices (default: the whole case)")
    p.add_argument("--batch-size", type=int, default=16, help="unetzoo slices per forward")
    p.add_argument("--threads", type=int, default=None, help="torch (and ORT) CPU threads")
    p.add_argument("--models", default=None,
                   help="comma-separated models (default resnet34_unet,unet,resunet)")
    p.add_argument("--backends", default=None,
                   help=f"comma-separated unetzoo sides from {','.join(BACKENDS)} "
                   "(default all; --tiny: torch,channels_last)")
    p.add_argument("--profile", metavar="MODEL", default=None,
                   help="only print where one forward's time goes (PyTorch and ONNX "
                   "Runtime operators) for MODEL")
    args = p.parse_args(argv)
    cfg = TINY if args.tiny else FULL
    repeats = 1 if args.tiny else args.repeats
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.profile:
        options = cfg["options"] if args.tiny else FULL_MODELS.get(args.profile, {})
        text = profile_model(args.profile, options, cfg["classes"], cfg["img_size"])
        print(text)
        return {"profile": text}
    if args.tiny:
        models = {cfg["model"]: cfg["options"]}
    else:
        names = args.models.split(",") if args.models else list(FULL_MODELS)
        models = {m: FULL_MODELS.get(m, {}) for m in names}
    backends = (args.backends.split(",") if args.backends
                else list(TINY_BACKENDS if args.tiny else BACKENDS))

    volume = synthetic_case(cfg["shape"])
    n = min(args.slices or volume.shape[0], volume.shape[0])
    start = (volume.shape[0] - n) // 2  # a slab from the middle of the case
    slab = np.ascontiguousarray(volume[start : start + n])
    size = cfg["img_size"]

    rows: list[dict[str, Any]] = []
    export_notes = []
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        for name, options in models.items():
            r, note = bench_model(name, options, cfg, slab, backends, args.batch_size,
                                  repeats, Path(tmp))
            rows += r
            if note:
                export_notes.append(note)
            print(markdown_table(r), flush=True)

    # The resizing alone: what batching on tensors buys without the network.
    results: dict[str, np.ndarray] = {}

    def side(name, fn):
        def run():
            results[name] = fn()
        return run

    rtimes = compare({
        "reference scipy zoom 3 / 0 per slice": side("rref", lambda: resize_reference(slab, size)),
        "unetzoo resize_cubic / resize_nearest": side(
            "ruz", lambda: resize_unetzoo(slab, size, args.batch_size)),
    }, repeats=repeats, warmup=1)
    rdiff = float((results["rref"] != results["ruz"]).mean() * 100.0)
    resize_rows = [
        {"side": k, "slices_per_s": n / t, "speedup": list(rtimes.values())[0] / t,
         "differing_voxels_%": 0.0 if i == 0 else rdiff}
        for i, (k, t) in enumerate(rtimes.items())
    ]

    notes = (
        f"Case: synthetic {cfg['shape'][0]} x {cfg['shape'][1]} x {cfg['shape'][2]} float32; "
        f"timed slab: {n} slices from the middle; models {', '.join(models)} with random "
        f"weights at {size} px, {cfg['classes']} classes, unetzoo batch {args.batch_size}; "
        f"median of {repeats} alternating repeats after 1 warm-up; speedup = reference "
        "time / side time; identical = label maps equal voxel for voxel. GFLOP_s: the "
        "network's FLOPs (torch.utils.flop_counter, 2 per multiply-accumulate) over the "
        "side's whole time (resizing included); fp32_peak_%: that rate over the fp32 "
        "matmul peak measured alternating with the sides."
        + (f" {'; '.join(export_notes)}." if export_notes else "")
        + "\n\n### Resizing only (no network)\n\n" + markdown_table(resize_rows)
    )
    emit(f"Volume inference on CPU: reference loop vs unetzoo backends at {size} px", rows,
         args, extra={"notes": notes, "resize_rows": resize_rows})
    return {"rows": rows, "resize_rows": resize_rows}


if __name__ == "__main__":
    main()
