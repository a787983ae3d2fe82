"""Cost and effect of SelfReg feature distillation (``train --distill``).

1. **Overhead**: training-step time (forward, loss, backward, SGD step) and memory with
   and without distillation, per model. Both sides run in one process, alternating
   within every repeat after a warm-up; the figure is the median. Memory is the size of
   the tensors autograd saves for backward (unique storages; the activation memory that
   distillation could add) and, on CUDA, the peak allocated memory of a step.
2. **A/B**: the training pipeline (``unetzoo.engine.trainer.train``) with the same seed
   and budget, with and without distillation, for several seeds and models; mean and
   spread of the test Dice it reports. On the phantom by default, or on any dataset
   folder (``--ab-data-root``, e.g. the real MRI dataset of ``unetzoo prepare mni_dk``).
   Every finished run is written to ``--json`` at once, so a stopped run keeps its rows.

    python benchmarks/bench_distillation.py                    # target row + A/B
    python benchmarks/bench_distillation.py --models all --size 128 --batch 2
    python benchmarks/bench_distillation.py --tiny --json out.json   # CI smoke
    python benchmarks/bench_distillation.py --no-target --ab-data-root DIR \
        --ab-models unet_selfreg,resnet34_unet --ab-width 0 --ab-epochs 16 --ab-size 64 \
        --json benchmarks/results/distillation_real_ab.json       # docs/distillation.md

The target (issue 6): <= 10% step-time overhead for resnet34_unet at 224 px, batch 8.
"""

from __future__ import annotations

import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks._common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from benchmarks._common import base_parser, compare, emit, machine_info, markdown_table

TARGET = {"model": "resnet34_unet", "size": 224, "batch": 8, "options": {}}
TINY = {"model": "unet", "size": 32, "batch": 2, "options": {"base_channels": 4}}


# ------------------------------------------------------------------ overhead
def saved_activation_bytes(fn) -> int:
    """Bytes of the unique storages autograd saves while ``fn()`` builds its graph."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            st = t.untyped_storage()
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        except (RuntimeError, NotImplementedError):
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def overhead_row(
    name: str, size: int, batch: int, options: dict[str, Any], repeats: int, warmup: int,
    lambda_: float = 0.015, device: str = "cpu",
) -> dict[str, Any]:
    """Median step time and memory of one model with and without distillation."""
    from unetzoo.losses.distillation import FeatureDistillationLoss, FeatureTapper
    from unetzoo.models import count_parameters, create_model, get_entry

    torch.manual_seed(0)
    options = dict(options)
    if get_entry(name).default_options().get("encoder_weights") is not None:
        options.setdefault("encoder_weights", None)  # random weights: nothing downloads
    model = create_model(name, in_channels=1, num_classes=9, **options).to(device).train()
    fixed = getattr(model, "fixed_input_size", None)
    size = int(fixed) if fixed else size
    x = torch.randn(batch, 1, size, size, device=device)
    y = torch.randint(0, 9, (batch, size, size), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    tapper = FeatureTapper(model)
    distill = FeatureDistillationLoss(
        lambda_, lambda_, generator=torch.Generator().manual_seed(0)
    )

    def seg_loss(out):
        out = out[-1] if isinstance(out, (list, tuple)) else out
        return F.cross_entropy(out, y)

    def loss_plain():
        return seg_loss(model(x))

    def loss_distill():
        with tapper:
            out = model(x)
        total, _ = distill(tapper.features)
        return seg_loss(out) + total

    def step(loss_fn):
        def run():
            opt.zero_grad(set_to_none=True)
            loss_fn().backward()
            opt.step()

        return run

    times = compare(
        {"plain": step(loss_plain), "distill": step(loss_distill)},
        repeats=repeats, warmup=warmup,
    )
    mem = {k: saved_activation_bytes(f) / 2**20 for k, f in
           (("plain", loss_plain), ("distill", loss_distill))}
    row: dict[str, Any] = {
        "model": name,
        "options": ",".join(f"{k}={v}" for k, v in options.items()) or "-",
        "params_M": round(count_parameters(model) / 1e6, 2),
        "input": f"{batch}x1x{size}x{size}",
        "step_s_plain": round(times["plain"], 4),
        "step_s_distill": round(times["distill"], 4),
        "time_overhead_%": round(100.0 * (times["distill"] / times["plain"] - 1.0), 1),
        "saved_MiB_plain": round(mem["plain"], 1),
        "saved_MiB_distill": round(mem["distill"], 1),
        "mem_overhead_%": round(100.0 * (mem["distill"] / mem["plain"] - 1.0), 1),
    }
    if device == "cuda":
        peaks = {}
        for k, fn in (("plain", step(loss_plain)), ("distill", step(loss_distill))):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            peaks[k] = torch.cuda.max_memory_allocated() / 2**20
        row["cuda_peak_MiB_plain"] = round(peaks["plain"], 1)
        row["cuda_peak_MiB_distill"] = round(peaks["distill"], 1)
    return row


def model_list(spec: str) -> list[str]:
    from unetzoo.models import list_models

    if spec == "all":
        return list_models()
    return [m.strip() for m in spec.split(",") if m.strip()]


# ------------------------------------------------------------------ A/B
def ab_runs(
    seeds: list[int], model: str | list[str], options: dict[str, Any], epochs: int,
    img_size: int, batch: int, lambda_: float, max_cases: int | None, workdir: Path,
    device: str, data_root: str | None = None, extra_flags: dict[str, Any] | None = None,
    on_run: Any = None, resume: bool = False,
) -> list[dict[str, Any]]:
    """One training run per (seed, model, distill on/off) through the pipeline's ``train``.

    ``data_root=None`` trains on the phantom; otherwise on the dataset folder (format
    detected as ``unetzoo train --data-root`` does). ``extra_flags`` pins recipe values
    (loss, optimizer, ...) so the A/B does not move when a recipe changes. ``on_run(runs)``
    is called after every run (the script writes its JSON there). ``resume=True`` reads a
    run whose folder in ``workdir`` already has a test report instead of training it again.
    """
    from unetzoo.data import get_dataset
    from unetzoo.engine.config import resolve_config
    from unetzoo.engine.trainer import train

    models = [model] if isinstance(model, str) else list(model)
    if data_root is None:
        ds = get_dataset("phantom", root=workdir / "phantom")
    else:
        ds = get_dataset("nnunet" if (Path(data_root) / "dataset.json").is_file() else None,
                         data_root)
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        for name in models:
            for distill in (False, True):  # alternate so drift in machine load hits both
                flags = {
                    "model": name, "model_options": dict(options), "seed": seed,
                    "max_epochs": epochs, "img_size": img_size, "batch_size": batch,
                    "max_cases": max_cases, "eval_interval": epochs, "progress": False,
                    "distill_ifd": lambda_ if distill else 0.0,
                    "distill_scr": lambda_ if distill else 0.0,
                    "output": str(workdir / f"run-{name}-s{seed}-{'kd' if distill else 'plain'}"),
                    "device": device, **(extra_flags or {}),
                }
                cfg = resolve_config(ds.recipe, None, flags)
                done = Path(cfg.output) / "report" / "summary.json"
                t0 = time.perf_counter()
                if resume and done.is_file():
                    summary = _finished_run(Path(cfg.output))
                    t0 -= summary["train_seconds"]
                else:
                    summary = train(cfg, dataset=ds)
                test = summary.get("test") or {}
                runs.append({
                    "model": name, "seed": seed, "distill": distill,
                    "wall_s": round(time.perf_counter() - t0, 1),
                    "iterations": summary.get("iterations"),
                    "val_dice": _as_float(summary.get("best_metric")),
                    "test_dice": _test_dice(test),
                    "test_hd95": _as_float(test.get("mean_hd95") if isinstance(test, dict) else None),
                    "final_loss": _last_loss(Path(cfg.output)),
                })
                print(f"  {name} seed {seed} distill={distill}: {runs[-1]}", flush=True)
                if on_run is not None:
                    on_run(runs)
    return runs


def _finished_run(run_dir: Path) -> dict[str, Any]:
    """The summary ``train`` returned for a finished run folder, read back from disk."""
    import csv
    import json

    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    return {
        "test": json.loads((run_dir / "report" / "summary.json").read_text()),
        "iterations": int(rows[-1]["iteration"]), "best_metric": None,
        "train_seconds": float(rows[-1]["time_s"]),
    }


def _last_loss(run_dir: Path) -> float | None:
    """Training loss of the last epoch from the run folder's metrics.csv."""
    import csv

    try:
        with (run_dir / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
        return _as_float(rows[-1].get("loss")) if rows else None
    except OSError:
        return None


def _as_float(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _test_dice(test: Any) -> float | None:
    """Mean foreground Dice from the pipeline's test summary, whatever its nesting."""
    if isinstance(test, (int, float)):
        return float(test)
    if not isinstance(test, dict):
        return None
    for key in ("mean_dice", "dice", "mean"):
        if key in test:
            got = _test_dice(test[key])
            if got is not None:
                return got
    return None


def ab_table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, sample SD and range per (model, distill); models in order of appearance."""
    rows = []
    models = list(dict.fromkeys(r.get("model") for r in runs))
    for model in models:
        for distill in (False, True):
            sel = [r for r in runs if r["distill"] is distill and r.get("model") == model]
            if sel:
                rows.append(_ab_row(model, distill, sel))
    return rows


def ab_pairs(runs: list[dict[str, Any]], key: str = "test_dice") -> list[dict[str, Any]]:
    """Per model: the paired on - off differences of ``key`` over the seeds that have both
    arms, their mean, sample SD and how many are positive (the A/B's own noise level)."""
    rows = []
    for model in dict.fromkeys(r.get("model") for r in runs):
        by_seed: dict[Any, dict[bool, float]] = {}
        for r in runs:
            if r.get("model") == model and r.get(key) is not None:
                by_seed.setdefault(r["seed"], {})[r["distill"]] = float(r[key])
        diffs = [v[True] - v[False] for v in by_seed.values() if len(v) == 2]
        rows.append({
            "model": model, "pairs": len(diffs),
            f"{key}_diff_mean": round(statistics.fmean(diffs), 4) if diffs else "n/a",
            f"{key}_diff_sd": round(statistics.stdev(diffs), 4) if len(diffs) > 1 else "n/a",
            "positive": sum(d > 0 for d in diffs),
            "diffs": ", ".join(f"{d:+.4f}" for d in diffs),
        })
    return rows


def _ab_row(model: str | None, distill: bool, sel: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {} if model is None else {"model": model}
    row.update({"distill": "on" if distill else "off", "runs": len(sel)})
    for key in ("val_dice", "test_dice", "test_hd95"):
        # No validation (val_fraction 0) leaves val_dice at -inf; HD95 is inf when a class
        # is missed: statistics.stdev fails on those, and a mean of them says nothing.
        vals = [r[key] for r in sel if r.get(key) is not None and math.isfinite(r[key])]
        row[f"{key}_mean"] = round(statistics.fmean(vals), 4) if vals else "n/a"
        row[f"{key}_sd"] = round(statistics.stdev(vals), 4) if len(vals) > 1 else "n/a"
        row[f"{key}_min..max"] = f"{min(vals):.4f}..{max(vals):.4f}" if vals else "n/a"
    row["wall_s_mean"] = round(statistics.fmean(r["wall_s"] for r in sel), 1)
    return row


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = base_parser(__doc__)
    p.add_argument("--models", default=None,
                   help="comma list or 'all' (default: the target row only)")
    p.add_argument("--size", type=int, default=None, help="image size for --models rows")
    p.add_argument("--batch", type=int, default=None, help="batch for --models rows")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no-target", action="store_true", help="skip the resnet34_unet row")
    p.add_argument("--no-ab", action="store_true", help="skip the A/B")
    p.add_argument("--ab-seeds", default="0,1,2")
    p.add_argument("--ab-model", default="unet")
    p.add_argument("--ab-models", default=None, help="comma list (overrides --ab-model)")
    p.add_argument("--ab-width", type=int, default=16,
                   help="base_channels of the A/B models; 0 = each model's registered width")
    p.add_argument("--ab-data-root", default=None,
                   help="dataset folder for the A/B (default: the embedded phantom)")
    p.add_argument("--ab-recipe", default=None,
                   help="YAML-like KEY=VALUE pins, comma separated (e.g. base_lr=0.001)")
    p.add_argument("--ab-workdir", type=Path, default=None,
                   help="keep the A/B run folders here (default: a temporary folder)")
    p.add_argument("--ab-resume", action="store_true",
                   help="reuse runs in --ab-workdir that already have a test report")
    p.add_argument("--ab-val-fraction", type=float, default=None,
                   help="held-out share of training cases (0: no validation, test the last epoch)")
    p.add_argument("--ab-epochs", type=int, default=6)
    p.add_argument("--ab-size", type=int, default=64)
    p.add_argument("--ab-batch", type=int, default=8)
    p.add_argument("--ab-max-cases", type=int, default=None)
    p.add_argument("--lambda", dest="lambda_", type=float, default=0.015)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)

    result: dict[str, Any] = {"machine": machine_info()}
    rows: list[dict[str, Any]] = []
    if args.tiny:
        args.repeats, args.warmup = 1, 1
        rows.append(overhead_row(TINY["model"], TINY["size"], TINY["batch"], TINY["options"],
                                 1, 1, args.lambda_, args.device))
    else:
        if not args.no_target:
            rows.append(overhead_row(TARGET["model"], TARGET["size"], TARGET["batch"],
                                     TARGET["options"], args.repeats, args.warmup,
                                     args.lambda_, args.device))
            print(markdown_table(rows[-1:]), flush=True)
        for name in model_list(args.models or ""):
            try:
                rows.append(overhead_row(name, args.size or 128, args.batch or 2, {},
                                         args.repeats, args.warmup, args.lambda_,
                                         args.device))
            except Exception as exc:  # report and continue: one broken model
                rows.append({"model": name, "options": f"failed: {exc}"})
            print(markdown_table(rows[-1:]), flush=True)
    notes = (
        f"lambda_ifd = lambda_scr = {args.lambda_}; SGD step; 9 classes; median of "
        f"{args.repeats} alternating repeats after {args.warmup} warm-up steps. "
        "saved_MiB: tensors autograd keeps for backward (unique storages)."
    )
    emit("Feature distillation overhead (step time, saved activations)", rows, args,
         extra={"notes": notes})
    result["overhead"] = rows

    if not args.no_ab:
        seeds = [0] if args.tiny else [int(s) for s in args.ab_seeds.split(",")]
        width = 4 if args.tiny else args.ab_width
        opts = {"base_channels": width} if width else {}
        models = args.ab_models.split(",") if args.ab_models else [args.ab_model]
        extra = _pins(args.ab_recipe)
        if args.ab_val_fraction is not None:
            extra["val_fraction"] = args.ab_val_fraction
        epochs = 1 if args.tiny else args.ab_epochs
        size = 32 if args.tiny else args.ab_size
        max_cases = 2 if args.tiny else args.ab_max_cases
        setup = (
            f"{','.join(models)} {opts or 'registered widths'}, "
            f"{args.ab_data_root or 'phantom'}, {epochs} epochs, {size} px, batch "
            f"{args.ab_batch}, max_cases {max_cases}, seeds {seeds}, lambda "
            f"{args.lambda_} (both terms), pins {extra}; Dice = the pipeline's mean "
            "foreground Dice."
        )
        runs = None
        try:
            with tempfile.TemporaryDirectory(prefix="bench_distill_") as tmp:
                runs = ab_runs(seeds, models, opts, epochs, size, args.ab_batch,
                               args.lambda_, max_cases, args.ab_workdir or Path(tmp), args.device,
                               data_root=args.ab_data_root, extra_flags=extra,
                               on_run=lambda rs: _write_json(args, result, rs, setup),
                               resume=args.ab_resume)
        except ImportError as exc:  # the pipeline (engine, data) is not installed
            result["ab"] = {"status": f"not run: training pipeline unavailable ({exc})"}
            print(result["ab"]["status"])
        if runs is not None:
            table = ab_table(runs)
            pairs = ab_pairs(runs)
            print(f"## A/B\n\n{setup}\n\n{markdown_table(table)}\n\n{markdown_table(pairs)}\n")
            result["ab"] = {"setup": setup, "runs": runs, "table": table, "pairs": pairs}
    if args.json:
        import json

        args.json.write_text(json.dumps({"title": "bench_distillation", **result},
                                        indent=2, default=str))
    return result


def _pins(spec: str | None) -> dict[str, Any]:
    """``"loss=ce_dice,base_lr=0.001"`` -> config values (YAML scalars; ``a/b`` = a list)."""
    import yaml

    out: dict[str, Any] = {}
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        key, _, value = item.partition("=")
        parts = [yaml.safe_load(v) for v in value.split("/")]
        out[key.strip()] = parts if len(parts) > 1 else parts[0]
    return out


def _write_json(args: Any, result: dict[str, Any], runs: list[dict[str, Any]], setup: str) -> None:
    if not args.json:
        return
    import json

    partial = {**result, "ab": {"setup": setup, "runs": runs, "table": ab_table(runs),
                                "status": "partial"}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"title": "bench_distillation", **partial}, indent=2,
                                    default=str))


if __name__ == "__main__":
    main()
