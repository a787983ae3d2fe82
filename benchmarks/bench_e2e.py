"""End to end against nnU-Net's predictor: reading a NIfTI file to writing its label map.

Same CPU, same threads, same real volume (the ``mni_dk`` test case of ``unetzoo prepare
mni_dk``): nnU-Net v2's ``nnUNetPredictor`` (``initialize_from_trained_model_folder``,
then ``predict_from_files_sequential``: its own reading, resampling, normalisation,
sliding windows with Gaussian weighting, export; in this process, so both sides use the
same cores) against unetzoo's ``load_predictor(...).predict_files`` (the default
``--backend auto``, fp32), with and without test-time mirroring (nnU-Net's 2-D mirroring
is the same four flips as unetzoo's ``--tta``). Model loading is outside the timing for
both; the sides alternate, median of ``--repeats``.

The models: a 2-D nnU-Net (its planner's network for this dataset) and a unetzoo model
(``--model``); both are trained here for a few iterations unless given
(``--nnunet-model FOLDER``, ``--checkpoint``): speed does not depend on training, but
then the Dice column only says the pipeline ran (the notes say which). GFLOPs: the
convolution FLOPs each side actually spends on the volume (torch.utils.flop_counter
around one prediction), so "similar MACs" can be checked rather than assumed.

    python benchmarks/bench_e2e.py --repeats 3                        # trains both briefly
    python benchmarks/bench_e2e.py --nnunet-model RESULTS/Dataset801.../nnUNetTrainer__nnUNetPlans__2d \
        --checkpoint runs/x/checkpoints/final.pt
    python benchmarks/bench_e2e.py --tiny                             # CI smoke

Target (issue 28): unetzoo >= 2x faster than nnU-Net at equal TTA.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks._common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from benchmarks._common import base_parser, emit, flop_count, time_once
from benchmarks.bench_precision import train_model
from benchmarks.bench_real_data import class_dice, open_dataset

TINY = {"model": "unet:base_channels=4", "iterations": 2, "size": 32, "batch": 2,
        "max_slices": 24, "nnunet_iterations": 1, "nnunet_batch": 2, "nnunet_max_width": 8}


# ------------------------------------------------------------------ nnU-Net
def _nnunet_env(work: Path) -> None:
    for var, sub in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "pre"),
                     ("nnUNet_results", "results")):
        (work / sub).mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(work / sub)
    os.environ.setdefault("nnUNet_compile", "f")


def train_nnunet(root: Path, iterations: int, batch: int, work: Path,
                 max_width: int | None = None) -> Path:
    """nnU-Net's fingerprint, plan, 2-D preprocessing and ``iterations`` of its trainer
    (one epoch, fold ``all``) on the CPU; the trained model folder. ``max_width`` caps
    the planned network's widths (smoke tests only: it is then not nnU-Net's network)."""
    import json

    _nnunet_env(work)
    os.environ["nnUNet_n_proc_DA"] = "1"  # its planner sets torch's threads from this
    link = work / "raw" / root.name
    if not link.exists():
        link.symlink_to(root.resolve())
    dataset_id = int(root.name[len("Dataset"):].split("_")[0])
    threads = torch.get_num_threads()
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True)
    plan_experiments([dataset_id])
    plans_file = work / "pre" / root.name / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    cfg = plans["configurations"]["2d"]
    cfg["batch_size"] = batch  # speed only; the network is its own
    if max_width:
        arch = cfg["architecture"]["arch_kwargs"]
        arch["features_per_stage"] = [min(f, max_width) for f in arch["features_per_stage"]]
    plans_file.write_text(json.dumps(plans, indent=2))
    preprocess([dataset_id], configurations=("2d",), num_processes=(1,))
    from nnunetv2.run.run_training import get_trainer_from_args

    os.environ["nnUNet_n_proc_DA"] = "0"
    trainer = get_trainer_from_args(str(dataset_id), "2d", "all", "nnUNetTrainer",
                                    "nnUNetPlans", device=torch.device("cpu"))
    trainer.num_iterations_per_epoch = max(1, iterations)
    trainer.num_epochs = 1
    trainer.num_val_iterations_per_epoch = 1
    torch.set_num_threads(threads)
    trainer.run_training()
    torch.set_num_threads(threads)
    return Path(trainer.output_folder_base)


def nnunet_predictor(folder: Path, tta: bool):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                           perform_everything_on_device=False, device=torch.device("cpu"),
                           verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    folds = ("all",) if (folder / "fold_all").is_dir() else None
    pred.initialize_from_trained_model_folder(str(folder), use_folds=folds,
                                              checkpoint_name="checkpoint_final.pth")
    return pred


# ------------------------------------------------------------------ the comparison
def _labels(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj).astype(np.int64)


def run_sides(nnunet_folder: Path, checkpoint: Path, image: Path, reference: Path,
              classes: int, repeats: int, out: Path) -> list[dict[str, Any]]:
    """Time both predictors on ``image`` with and without TTA (alternating); Dice of
    each label map against ``reference`` (the file's own voxel order)."""
    from unetzoo.engine.predict import load_predictor

    threads = torch.get_num_threads()
    sides: dict[str, Any] = {}
    flops: dict[str, float] = {}
    for tta in (False, True):
        tag = "TTA (4 flips)" if tta else "no TTA"
        nn_pred = nnunet_predictor(nnunet_folder, tta)
        nn_out = out / f"nnunet-{int(tta)}"
        nn_out.mkdir(parents=True, exist_ok=True)

        def nnunet(p=nn_pred, o=nn_out) -> None:
            p.predict_from_files_sequential([[str(image)]], [str(o / "case")],
                                            save_probabilities=False, overwrite=True)
            torch.set_num_threads(threads)  # nnU-Net's predictor may change them

        uz_pred = load_predictor([str(checkpoint)], device="cpu", backend="auto", tta=tta)
        uz_out = out / f"unetzoo-{int(tta)}"

        def unetzoo(p=uz_pred, o=uz_out) -> None:
            if o.exists():
                shutil.rmtree(o)
            p.predict_files([str(image)], str(o), postprocessing=None, overlays=0,
                            verbose=False, overwrite=True)

        sides[f"nnU-Net|{tag}"] = nnunet
        sides[f"unetzoo|{tag}"] = unetzoo
    for key, fn in sides.items():  # warm-up, and the FLOPs each side spends on the volume
        fn()
        flops[key] = flop_count(fn)
    samples: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(max(1, repeats)):
        for key, fn in sides.items():
            samples[key].append(time_once(fn))
    ref = _labels(reference)
    rows = []
    for key, times in samples.items():
        side, tag = key.split("|")
        folder = out / f"{'nnunet' if side == 'nnU-Net' else 'unetzoo'}-{int('TTA' in tag)}"
        pred = _labels(next(folder.glob("*.nii.gz")))
        dice = [d for d in class_dice(pred, ref, classes) if not np.isnan(d)]
        t = statistics.median(times)
        rows.append({"side": side, "tta": tag, "s_per_volume": t,
                     "GFLOP": flops[key] / 1e9, "mean_dice": float(np.mean(dice)) if dice else float("nan")})
    for r in rows:
        nn = next(x for x in rows if x["side"] == "nnU-Net" and x["tta"] == r["tta"])
        r["speed_vs_nnunet"] = nn["s_per_volume"] / r["s_per_volume"]
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None,
                   help="nnU-Net dataset folder (default: build mni_dk in a temp folder)")
    p.add_argument("--nnunet-model", type=Path, default=None,
                   help="a trained nnU-Net v2 2-D model folder (else trained here briefly)")
    p.add_argument("--nnunet-iterations", type=int, default=10)
    p.add_argument("--nnunet-batch", type=int, default=12)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="a unetzoo checkpoint (else --model trained here briefly)")
    p.add_argument("--model", default="unet", help="unetzoo model spec trained without "
                   "--checkpoint (name:key=value,...)")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--size", type=int, default=128, help="unetzoo img_size")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-slices", type=int, default=None, help="build a smaller dataset")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    repeats = args.repeats
    if args.tiny:
        args.model, args.iterations, args.size = TINY["model"], TINY["iterations"], TINY["size"]
        args.batch, args.max_slices = TINY["batch"], TINY["max_slices"]
        args.nnunet_iterations, args.nnunet_batch = TINY["nnunet_iterations"], TINY["nnunet_batch"]
        repeats = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="unetzoo-e2e-") as tmp:
        work = Path(tmp)
        ds = open_dataset(args.data_root, work, args.max_slices)
        root = Path(ds.root)
        image = sorted((root / "imagesTs").glob("*.nii.gz"))[0]
        reference = root / "labelsTs" / image.name.replace("_0000.nii.gz", ".nii.gz")
        trained_here = []
        nn_folder = args.nnunet_model
        if nn_folder is None:
            nn_folder = train_nnunet(root, args.nnunet_iterations, args.nnunet_batch,
                                     work / "nnunet",
                                     TINY["nnunet_max_width"] if args.tiny else None)
            trained_here.append(f"nnU-Net {args.nnunet_iterations} iteration(s)")
        ckpt = args.checkpoint
        if ckpt is None:
            _, info = train_model(args.model, ds, args.iterations, args.size, args.batch,
                                  work / "unetzoo-run")
            ckpt = Path(info["checkpoint"])
            trained_here.append(f"unetzoo {args.model} {info['iterations']} iteration(s)")
        rows = run_sides(nn_folder, ckpt, image, reference, ds.num_classes, repeats,
                         work / "out")
    quality = ("models trained here for timing only (" + ", ".join(trained_here)
               + "): the Dice column says the pipeline ran, not what it learns"
               if trained_here else "trained models given on the command line")
    notes = (f"Volume: {image.name} ({root.name}); nnU-Net: {nn_folder.name}; unetzoo: "
             f"{args.model if args.checkpoint is None else ckpt}; {quality}. Times from "
             "reading the file to writing the label map, models loaded before; median of "
             f"{repeats} alternating repeats after a warm-up; {torch.get_num_threads()} "
             "torch threads for both. GFLOP: the FLOPs each side spends on the volume "
             "(torch.utils.flop_counter).")
    emit("End to end: unetzoo predict vs nnU-Net's predictor (one volume, CPU)", rows, args,
         extra={"notes": notes})
    return {"rows": rows}


if __name__ == "__main__":
    main()
