"""bf16 against fp32 on a trained model: throughput, voxel agreement and per-class Dice.

The model is a checkpoint trained on real MRI (``--checkpoint``, e.g. a run of
``unetzoo train --dataset nnunet --data-root <unetzoo prepare mni_dk>``) or, without one,
``--model`` trained here through the pipeline for ``--iterations`` on ``mni_dk`` (the
settings of bench_real_data.py). Every test case is then predicted twice, alternating:
the default exact path (``make_backend(model, "auto")``, fp32) and ``--precision bf16``
(:class:`unetzoo.engine.backends.Bf16Model`, bf16 autocast). Reported: slices/s and
GFLOP/s of each against the fp32 (and bf16) matmul peak measured in the same process,
the share of voxels whose label is the same, and per-class Dice of both against the
reference labels (nnU-Net's rule: a class absent from both is left out).

With ``--train-iterations N`` the same model is also trained twice from the same seed,
fp32 and ``precision: bf16`` (autocast), and the step time and the test Dice (fp32
inference) compared at equal iterations.

bf16 runs only where the device has it natively (AMX / AVX512-BF16 CPUs, bf16 GPUs);
``--allow-emulated`` times PyTorch's emulated bf16 on other CPUs anyway (the quality
columns still mean something, the throughput does not; --tiny sets it, and skips the
training comparison, which the trainer refuses without native bf16).

    python benchmarks/bench_precision.py --checkpoint runs/x/checkpoints/final.pt \
        --data-root data/mni_dk
    python benchmarks/bench_precision.py --model resnet34_unet --iterations 600
    python benchmarks/bench_precision.py --iterations 600 --train-iterations 200
    python benchmarks/bench_precision.py --tiny                       # CI smoke

Target (issue 28): bf16 >= 3x the fp32 throughput with mean Dice within 0.002 of fp32.
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

from benchmarks._common import (
    base_parser,
    emit,
    flop_count,
    markdown_table,
    peak_sides,
    roofline_columns,
    roofline_line,
    time_once,
)
from benchmarks.bench_real_data import (
    SHARED,
    class_dice,
    iterations_per_epoch,
    open_dataset,
    training_slices,
)

TINY = {"model": "unet:base_channels=4", "iterations": 2, "size": 32, "batch": 2,
        "max_slices": 24, "max_cases": 1}


def _spec(text: str) -> tuple[str, dict[str, Any]]:
    import yaml

    name, _, rest = text.partition(":")
    opts = dict(kv.split("=", 1) for kv in rest.split(",") if kv) if rest else {}
    return name, {k: yaml.safe_load(v) for k, v in opts.items()}


def train_model(spec: str, ds, iterations: int, size: int, batch: int, out: Path,
                precision: str = "fp32", device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Train ``spec`` through the pipeline; the trained model, its checkpoint and s/iter."""
    from unetzoo.engine.checkpoint import read_checkpoint
    from unetzoo.engine.config import resolve_config
    from unetzoo.engine.trainer import train

    name, options = _spec(spec)
    per_epoch = iterations_per_epoch(len(training_slices(ds, size)[0]), batch)
    epochs = max(1, round(iterations / per_epoch))
    cfg = resolve_config(ds.recipe, None, {
        "model": name, "model_options": options, "seed": 0, "max_epochs": epochs,
        "img_size": size, "batch_size": batch, "eval_interval": epochs, "val_fraction": 0.0,
        "test": False, "progress": False, "output": str(out), "device": device,
        "precision": precision, **SHARED,
    })
    t0 = time.perf_counter()
    summary = train(cfg, dataset=ds)
    seconds = time.perf_counter() - t0
    path = out / "checkpoints" / "latest.pt"
    ckpt = read_checkpoint(path)
    its = int(summary["iterations"])
    return ckpt.build_model(device), {
        "checkpoint": str(path), "iterations": its, "s_per_iter": seconds / max(its, 1)}


def bf16_module(model: torch.nn.Module, device: torch.device, allow_emulated: bool):
    """``(module, label)``: bf16 through ``make_backend`` where native, else emulated
    (``allow_emulated``) or a SystemExit with the refusal line."""
    from unetzoo.engine.backends import Bf16Model, make_backend
    from unetzoo.errors import ConfigError

    try:
        return make_backend(model, "auto", device=device, precision="bf16"), "bf16"
    except ConfigError as exc:
        if not allow_emulated:
            raise SystemExit(f"bench_precision: {exc}") from None
        return Bf16Model(model, device.type), "bf16 (emulated, no native bf16)"


def compare_precisions(model, ds, size: int, batch: int, device: torch.device,
                       max_cases: int | None, allow_emulated: bool, tiny: bool
                       ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """Rows per precision, rows per class, the roofline line."""
    from unetzoo.engine.backends import make_backend
    from unetzoo.engine.inference import predict_volume

    model = model.eval().to(device)
    sides = {"fp32": make_backend(model, "auto", device=device)}
    sides["bf16"], bf16_label = bf16_module(model, device, allow_emulated)
    cases = list(ds.cases("test"))[: max_cases or None]
    psides = peak_sides(tiny=tiny, device=device.type)
    seconds = {k: 0.0 for k in sides}
    peak_s = {k: [] for k in psides}
    dice: dict[str, list[list[float]]] = {k: [] for k in sides}
    agree, voxels, slices = 0, 0, 0
    x1 = torch.randn(1, ds.in_channels, size, size, device=device)
    with torch.no_grad():
        flops_slice = flop_count(lambda: model(x1))
    for side in sides.values():  # warm-up (and auto's probe) outside the timing
        predict_volume(side, ds.load_case(cases[0], "test").image[:, :1], size, batch, device=device)
    for cid in cases:
        case = ds.load_case(cid, "test")
        preds = {}
        for key, side in sides.items():
            t0 = time.perf_counter()
            preds[key] = predict_volume(side, case.image, size, batch, device=device)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[key] += time.perf_counter() - t0
            dice[key].append(class_dice(preds[key], case.label, ds.num_classes))
        for k, (fn, _) in psides.items():
            peak_s[k].append(time_once(fn))
        agree += int((preds["fp32"] == preds["bf16"]).sum())
        voxels += preds["fp32"].size
        slices += case.image.shape[1]
    peak = {k.split()[1]: psides[k][1] / float(np.median(v)) / 1e9 for k, v in peak_s.items()}
    per_class = {k: _mean_over_cases(v) for k, v in dice.items()}
    rows = []
    for key in sides:
        scored = per_class[key][~np.isnan(per_class[key])]
        rows.append({
            "precision": bf16_label if key == "bf16" else "fp32 (auto, exact)",
            "backend": getattr(sides[key], "backend", "torch"),
            "slices_per_s": slices / seconds[key],
            "vs_fp32": seconds["fp32"] / seconds[key],
            **roofline_columns(flops_slice * slices, seconds[key], peak,
                               "bf16" if key == "bf16" else "fp32"),
            "mean_dice": float(scored.mean()) if scored.size else float("nan"),
            "voxel_agreement_%": 100.0 if key == "fp32" else 100.0 * agree / voxels,
        })
    rows[1]["dice_change"] = rows[1]["mean_dice"] - rows[0]["mean_dice"]
    class_rows = [{"class": name, "dice_fp32": a, "dice_bf16": b, "change": b - a}
                  for name, a, b in zip(ds.class_names[1:], per_class["fp32"],
                                        per_class["bf16"])]
    return rows, class_rows, roofline_line(peak)


def _mean_over_cases(values: list[list[float]]) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    with np.errstate(all="ignore"):
        counts = (~np.isnan(arr)).sum(0)
        return np.where(counts > 0, np.nansum(arr, 0) / np.maximum(counts, 1), np.nan)


def compare_training(spec: str, ds, iterations: int, size: int, batch: int, work: Path,
                     device: str) -> list[dict[str, Any]]:
    """Train fp32 and bf16 from the same seed; step time and test Dice (fp32 inference)."""
    from unetzoo.engine.inference import predict_volume

    rows = []
    for precision in ("fp32", "bf16"):
        model, info = train_model(spec, ds, iterations, size, batch, work / f"train-{precision}",
                                  precision, device)
        per_case = []
        for cid in ds.cases("test"):
            case = ds.load_case(cid, "test")
            per_case.append(class_dice(predict_volume(model.eval(), case.image, size, 16,
                                                      device=device),
                                       case.label, ds.num_classes))
        per_class = _mean_over_cases(per_case)
        rows.append({"training": precision, "iterations": info["iterations"],
                     "s_per_iter": info["s_per_iter"],
                     "mean_dice": float(np.nanmean(per_class))})
    for r in rows:
        r["step_time_vs_fp32"] = r["s_per_iter"] / rows[0]["s_per_iter"]
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="a trained checkpoint (else train one)")
    p.add_argument("--data-root", default=None,
                   help="nnU-Net dataset folder (default: build mni_dk in a temp folder)")
    p.add_argument("--model", default="resnet34_unet", help="model spec trained without "
                   "--checkpoint (options as bench_real_data: name:key=value,...)")
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--train-iterations", type=int, default=0,
                   help="also train fp32 and bf16 this long and compare (0: no)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=16, help="slices per forward (and training batch)")
    p.add_argument("--max-cases", type=int, default=None)
    p.add_argument("--max-slices", type=int, default=None, help="build a smaller dataset")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--allow-emulated", action="store_true",
                   help="time emulated bf16 on a CPU without native bf16")
    args = p.parse_args(argv)
    if args.tiny:
        args.model, args.iterations, args.size = TINY["model"], TINY["iterations"], TINY["size"]
        args.batch, args.max_slices = TINY["batch"], TINY["max_slices"]
        args.max_cases, args.allow_emulated = TINY["max_cases"], True
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with tempfile.TemporaryDirectory(prefix="unetzoo-precision-") as tmp:
        work = Path(tmp)
        ds = open_dataset(args.data_root, work, args.max_slices)
        if args.checkpoint:
            from unetzoo.engine.checkpoint import read_checkpoint

            ckpt = read_checkpoint(args.checkpoint)
            model, source = ckpt.build_model(device), args.checkpoint
            size = ckpt.spec.img_size
        else:
            model, info = train_model(args.model, ds, args.iterations, args.size, args.batch,
                                      work / "run", device=device.type)
            source = f"{args.model} trained here, {info['iterations']} iterations"
            size = args.size
        rows, class_rows, roof = compare_precisions(
            model, ds, size, args.batch, device, args.max_cases, args.allow_emulated, args.tiny)
        train_rows: list[dict[str, Any]] = []
        from unetzoo.engine.backends import check_precision
        from unetzoo.errors import ConfigError

        if args.train_iterations and not args.tiny:
            try:
                check_precision("bf16", device)
                train_rows = compare_training(args.model, ds, args.train_iterations, args.size,
                                              args.batch, work, device.type)
            except ConfigError as exc:
                print(f"training comparison skipped: {exc}", flush=True)
    notes = (f"Model: {source}; data {ds.root.name if hasattr(ds.root, 'name') else ds.root}, "
             f"{len(class_rows)} foreground classes, {size} px, batch {args.batch}, device "
             f"{device}. {roof}. GFLOP_s: the network's FLOPs over the whole prediction "
             "time (resizing included); voxel_agreement_%: labels equal to fp32's.\n\n"
             "Per class (mean over test cases, nnU-Net rule):\n\n" + markdown_table(class_rows))
    if train_rows:
        notes += "\n\nTraining, same seed and iterations:\n\n" + markdown_table(train_rows)
    emit("bf16 vs fp32 on a trained model", rows, args,
         extra={"notes": notes, "class_rows": class_rows, "train_rows": train_rows})
    return {"rows": rows, "class_rows": class_rows, "train_rows": train_rows}


if __name__ == "__main__":
    main()
