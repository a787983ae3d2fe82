"""Volume inference: unetzoo's batched slice inference against the reference protocol loop.

The reference is TransUNet's ``test_single_volume``: for every slice, one at a time,
``scipy.ndimage.zoom(order=3)`` to ``img_size``, the network at batch 1, softmax + argmax,
``zoom(order=0)`` back to the slice size. unetzoo's ``unetzoo.engine.inference.predict_volume``
does the same maths on batches of slices (the zooms as precomputed separable matrices).

Both sides run in one process on the same synthetic Synapse-sized case (150 x 512 x 512,
CT-like smooth intensities) through ``resunet`` (random weights, eval mode), alternating,
after a warm-up, median of ``--repeats``. On a slow CPU a full 150-slice pass per side and
repeat is too long, so ``--slices N`` times a contiguous slab of N slices of the case
(slices/s is a per-slice rate either way); the label maps of the timed slab are compared
voxel by voxel. A second table times the resizing alone (no network).

    python benchmarks/bench_inference.py                      # full case, 3 repeats
    python benchmarks/bench_inference.py --slices 16 --threads 1
    python benchmarks/bench_inference.py --tiny               # CI smoke

Target (issue 7): >= 3x the reference's slices/s on CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks._common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from scipy import ndimage

from benchmarks._common import base_parser, compare, emit, markdown_table

FULL = {"model": "resunet", "options": {"encoder_weights": None}, "shape": (150, 512, 512),
        "img_size": 224, "classes": 9}
TINY = {"model": "resunet", "options": {"encoder_weights": None, "width_scale": 0.125},
        "shape": (4, 64, 64), "img_size": 32, "classes": 9}


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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison, print the tables, return ``{"rows": ..., "resize_rows": ...}``."""
    from unetzoo.engine.inference import predict_volume
    from unetzoo.models import create_model

    p = base_parser(__doc__)
    p.add_argument("--slices", type=int, default=None,
                   help="time a slab of this many slices (default: the whole case)")
    p.add_argument("--batch-size", type=int, default=16, help="unetzoo slices per forward")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--channels-last", action="store_true",
                   help="add a side with the model converted to channels_last")
    args = p.parse_args(argv)
    cfg = TINY if args.tiny else FULL
    repeats = 1 if args.tiny else args.repeats
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = create_model(cfg["model"], in_channels=1, num_classes=cfg["classes"],
                         **cfg["options"]).eval()
    volume = synthetic_case(cfg["shape"])
    n = min(args.slices or volume.shape[0], volume.shape[0])
    start = (volume.shape[0] - n) // 2  # a slab from the middle of the case
    slab = np.ascontiguousarray(volume[start : start + n])
    size = cfg["img_size"]

    results: dict[str, np.ndarray] = {}

    def side(name, fn):
        def run():
            results[name] = fn()
        return run

    sides = {
        "reference (scipy zoom, batch 1)": side("ref", lambda: reference_protocol(model, slab, size)),
        f"unetzoo predict_volume (batch {args.batch_size})": side(
            "uz", lambda: predict_volume(model, slab[None], size, batch_size=args.batch_size)),
    }
    if args.channels_last:
        model_cl = create_model(cfg["model"], in_channels=1, num_classes=cfg["classes"],
                                **cfg["options"]).eval()
        model_cl.load_state_dict(model.state_dict())
        model_cl = model_cl.to(memory_format=torch.channels_last)
        sides[f"unetzoo predict_volume (batch {args.batch_size}, channels_last model)"] = side(
            "uz_cl", lambda: predict_volume(model_cl, slab[None], size,
                                            batch_size=args.batch_size))
    times = compare(sides, repeats=repeats, warmup=1)

    ref = results["ref"]
    rows = []
    key_of = dict(zip(sides, ["ref", "uz", "uz_cl"]))
    for name, t in times.items():
        labels = results[key_of[name]]
        diff = float((labels != ref).mean() * 100.0)
        rows.append({
            "side": name, "slices": n, "s_per_case_slab": t, "slices_per_s": n / t,
            "speedup": times[next(iter(times))] / t,
            "identical": "yes" if diff == 0.0 else "no", "differing_voxels_%": diff,
        })

    # The resizing alone: what batching on tensors buys without the network.
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
        f"timed slab: {n} slices from the middle; model `{cfg['model']}` "
        f"{cfg['options']} with random weights at {size} px, {cfg['classes']} classes; "
        f"median of {repeats} alternating repeats after 1 warm-up.\n\n"
        "### Resizing only (no network)\n\n" + markdown_table(resize_rows)
    )
    emit(f"Volume inference: {cfg['model']} at {size} px, reference loop vs unetzoo", rows,
         args, extra={"notes": notes, "resize_rows": resize_rows})
    return {"rows": rows, "resize_rows": resize_rows}


if __name__ == "__main__":
    main()
