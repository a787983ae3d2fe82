"""Real MRI learning benchmark: the zoo's pipeline against smp.Unet in a plain loop.

On the real-MRI dataset of ``unetzoo prepare mni_dk`` (ICBM152 T1 + Desikan-Killiany
labels grouped into 12 classes, several of them under 2 % of the foreground), each zoo
model is trained through the unetzoo pipeline (``unetzoo.engine.trainer.train``, the
``default`` recipe with the settings below pinned) and ``smp.Unet("resnet34",
encoder_weights=None)`` is trained in a plain PyTorch loop on the same training slices
(resized to the same size, no augmentation), with the same batch, number of iterations,
optimizer (AdamW 1e-3, weight decay 1e-4, poly 0.9 per iteration) and loss (unetzoo's
``ce_dice`` 0.5 / 0.5). Every model is then scored by the same code: volume inference of
each test case (``predict_volume``), per-class Dice under nnU-Net's rule (a class absent
from both prediction and reference is left out), averaged over cases per class, then over
classes. A class counts as learned when its Dice is at least 0.1.

The pipeline trains on every training case (``val_fraction 0``: the same slices as the
plain loop) and its iterations are whole epochs; the plain loop runs exactly as many.

Model specs may carry options: ``resnet34_unet:head_relu=true`` (values are YAML), and
``plain:<spec>`` trains a zoo model in the plain loop instead of the pipeline (the
ablations of benchmarks/README.md). ``smp`` is the reference. ``monai_unet`` is a second
peer, MONAI's ``BasicUNet`` set up as the classic U-Net (widths 64..1024, BatchNorm, ReLU,
transposed-convolution up-sampling; 31.11 M parameters against ``unet``'s 31.04 M), trained
in the plain loop: it tells the U-Net architecture apart from unetzoo's code of it.

    python benchmarks/bench_real_data.py                      # small and large budget
    python benchmarks/bench_real_data.py --models smp,resnet34_unet --seeds 0,1,2 \
        --iterations 200 --json benchmarks/results/real_data_200.json
    python benchmarks/bench_real_data.py --models smp,plain:resnet34_unet:head_relu=true
    python benchmarks/bench_real_data.py --models smp --plain-augment default   # smp with
                                              # the pipeline's default-recipe augmentation
    python benchmarks/bench_real_data.py --models smp --plain-augment default \
        --plain-batches epochs            # ... and the pipeline's shuffled-epoch batches
                                          # ('loader': its very batch order: same model)
    python benchmarks/bench_real_data.py --tiny --json out.json   # CI smoke (seconds)

Every finished run is written to ``--json`` at once, so a stopped benchmark keeps its rows.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from itertools import chain, islice, repeat
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks._common` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import yaml

from benchmarks._common import base_parser, emit, machine_info, markdown_table

SMP = "smp"
MONAI_UNET = "monai_unet"
PLAIN_ONLY = (SMP, MONAI_UNET)
# BasicUNet as Ronneberger's U-Net; options given in the spec override these.
MONAI_UNET_ARGS = {"features": (64, 128, 256, 512, 1024, 64), "act": "relu",
                   "norm": "batch", "upsample": "deconv"}
MODELS = ("smp", "resnet34_unet", "unet", "unetpp", "unet3p", "resunet")
THREE_SEEDS = ("smp", "resnet34_unet", "unet")
LEARNED = 0.1  # a class with test Dice >= this counts as learned
# The training settings both sides share (the issue's: AdamW 1e-3 + poly, CE + Dice).
SHARED = {
    "loss": "ce_dice",
    "loss_weights": [0.5, 0.5],
    "optimizer": "adamw",
    "base_lr": 1e-3,
    "weight_decay": 1e-4,
    "lr_schedule": "poly",
    "poly_power": 0.9,
}
TINY = {"models": "smp,unet:base_channels=4", "iterations": "2", "size": 32, "batch": 2,
        "max_slices": 24}


# ------------------------------------------------------------------ specs and data
def parse_spec(spec: str) -> tuple[str, str, dict[str, Any]]:
    """``"plain:resnet34_unet:head_relu=true,init=smp"`` -> ``("plain", name, options)``."""
    loop = "pipeline"
    if spec.startswith("plain:"):
        loop, spec = "plain", spec[len("plain:"):]
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        options[key.strip()] = yaml.safe_load(value)
    if name in PLAIN_ONLY:
        loop = "plain"
    return loop, name, options


def open_dataset(data_root: str | None, workdir: Path, max_slices: int | None = None):
    """The nnU-Net folder at ``data_root``, or ``mni_dk`` built into ``workdir``."""
    from unetzoo.data import get_dataset

    if data_root is None:
        from unetzoo.data.realdata import prepare_real_dataset

        data_root = str(prepare_real_dataset("mni_dk", workdir / "data", max_slices=max_slices))
    return get_dataset("nnunet", data_root)


def training_slices(ds, img_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every training slice resized (image cubic, label nearest) to ``img_size``."""
    from unetzoo.data.transforms import build_eval_transform

    items = ds.slice_dataset("train", transform=build_eval_transform(img_size))
    xs, ys = zip(*((it["image"], it["label"]) for it in items))
    return torch.stack(xs), torch.stack(ys)


def iterations_per_epoch(n_slices: int, batch: int) -> int:
    # The pipeline's DataLoader drops the last partial batch when there is more than one.
    return n_slices // batch if n_slices > batch else 1


# ------------------------------------------------------------------ scoring
def class_dice(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> list[float]:
    """Dice per foreground class; NaN where the class is absent from both (nnU-Net)."""
    out = []
    for c in range(1, num_classes):
        p, r = pred == c, ref == c
        denom = int(p.sum()) + int(r.sum())
        out.append(float("nan") if denom == 0 else 2.0 * float((p & r).sum()) / denom)
    return out


def evaluate(model: torch.nn.Module, ds, img_size: int) -> dict[str, Any]:
    """Per-class test Dice (mean over cases, NaN cases left out) and their mean."""
    from unetzoo.engine.inference import predict_volume

    model.eval()
    per_case = []
    for cid in ds.cases("test"):
        case = ds.load_case(cid, "test")
        pred = predict_volume(model, case.image, img_size, batch_size=16)
        per_case.append(class_dice(pred, case.label, ds.num_classes))
    arr = np.asarray(per_case, dtype=float)
    with np.errstate(all="ignore"):
        counts = (~np.isnan(arr)).sum(0)
        per_class = np.where(counts > 0, np.nansum(arr, 0) / np.maximum(counts, 1), np.nan)
    scored = per_class[~np.isnan(per_class)]
    return {
        "mean_dice": float(scored.mean()) if scored.size else float("nan"),
        "learned": int((scored >= LEARNED).sum()),
        "scored_classes": int(scored.size),
        "per_class": {n: (None if np.isnan(v) else round(float(v), 4))
                      for n, v in zip(ds.class_names[1:], per_class)},
    }


# ------------------------------------------------------------------ training
def build_plain_model(name: str, options: dict[str, Any], in_channels: int, classes: int):
    if name == SMP:
        import segmentation_models_pytorch as smp

        return smp.Unet("resnet34", encoder_weights=None, in_channels=in_channels,
                        classes=classes, **options)
    if name == MONAI_UNET:
        from monai.networks.nets import BasicUNet

        args = {**MONAI_UNET_ARGS, **options}
        if "features" in options:
            args["features"] = tuple(options["features"])
        return BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=classes, **args)
    from unetzoo.models import create_model

    return create_model(name, in_channels=in_channels, num_classes=classes, **options)


def augmented_batches(ds, recipe: str, img_size: int, seed: int):
    """A ``draw(idx) -> (x, y)`` that passes the training slices ``idx`` through the
    pipeline's own training transform of ``recipe`` (the plain loop with augmentation)."""
    from unetzoo.data.transforms import build_train_transform

    items = ds.slice_dataset("train", transform=build_train_transform(recipe, img_size),
                             seed=seed)

    def draw(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        samples = [items[int(i)] for i in idx]
        return (torch.stack([s["image"] for s in samples]),
                torch.stack([s["label"] for s in samples]))

    return draw


BATCH_DRAWS = ("random", "epochs", "loader")


def batch_indices(n: int, batch: int, iterations: int, gen: torch.Generator,
                  mode: str = "random"):
    """The slice indices of each of ``iterations`` batches.

    ``random`` (the issue's loop): ``batch`` distinct slices drawn afresh each iteration.
    ``epochs``: a shuffled pass over all ``n`` slices cut into batches, the last partial
    batch dropped when there is more than one, then a new pass (the pipeline's scheme).
    ``loader``: the same scheme through a ``DataLoader`` seeded as the pipeline seeds its
    own, so the plain loop sees the pipeline's batches in the pipeline's order.
    """
    if mode not in BATCH_DRAWS:
        raise ValueError(f"batch drawing must be one of {BATCH_DRAWS}, got {mode!r}")
    if mode == "loader":
        yield from _loader_batches(n, batch, iterations, gen)
        return
    per_epoch = iterations_per_epoch(n, batch)
    order = torch.empty(0, dtype=torch.long)
    for it in range(iterations):
        if mode == "random":
            yield torch.randperm(n, generator=gen)[:batch]
            continue
        if it % per_epoch == 0:
            order = torch.randperm(n, generator=gen)
        k = it % per_epoch
        yield order[k * batch:(k + 1) * batch]


def _loader_batches(n: int, batch: int, iterations: int, gen: torch.Generator):
    from torch.utils.data import DataLoader

    loader = DataLoader(range(n), batch_size=batch, shuffle=True, generator=gen,
                        drop_last=n > batch)
    # repeat() re-iterates the loader: one fresh shuffle per pass, as the pipeline's epochs.
    return islice(chain.from_iterable(repeat(loader)), iterations)


def plain_loop(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, iterations: int,
               batch: int, seed: int, num_classes: int, draw=None,
               batches: str = "random") -> float:
    """The issue's plain loop: random batches, AdamW + poly per iteration, CE + Dice.

    ``draw`` (see :func:`augmented_batches`) replaces the pre-resized slices ``x, y`` by
    augmented ones, drawn with the same random indices; ``batches`` picks how the indices
    are drawn (:func:`batch_indices`). Returns the last training loss.
    """
    from unetzoo.losses import build_loss

    criterion = build_loss(SHARED["loss"], num_classes, weights=SHARED["loss_weights"])
    opt = torch.optim.AdamW(model.parameters(), lr=SHARED["base_lr"],
                            weight_decay=SHARED["weight_decay"])
    gen = torch.Generator().manual_seed(seed)
    model.train()
    loss = torch.tensor(float("nan"))
    for it, idx in enumerate(batch_indices(len(x), batch, iterations, gen, batches)):
        for group in opt.param_groups:
            group["lr"] = SHARED["base_lr"] * (1 - it / iterations) ** SHARED["poly_power"]
        xb, yb = draw(idx) if draw is not None else (x[idx], y[idx])
        out = model(xb)
        out = out[0] if isinstance(out, (list, tuple)) else out
        loss, _ = criterion(out.float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.detach())


def pipeline_run(name: str, options: dict[str, Any], ds, epochs: int, img_size: int,
                 batch: int, seed: int, out_dir: Path, augment: str | None) -> tuple[Any, int, float]:
    """Train through ``unetzoo.engine.trainer.train``; the trained model, iterations, loss."""
    import csv

    from unetzoo.engine.checkpoint import read_checkpoint
    from unetzoo.engine.config import resolve_config
    from unetzoo.engine.trainer import train

    flags = {
        "model": name, "model_options": dict(options), "seed": seed, "max_epochs": epochs,
        "img_size": img_size, "batch_size": batch, "eval_interval": epochs,
        "val_fraction": 0.0, "test": False, "progress": False, "output": str(out_dir),
        "device": "cpu", **SHARED,
    }
    if augment is not None:
        flags["augment"] = augment
    cfg = resolve_config(ds.recipe, None, flags)
    summary = train(cfg, dataset=ds)
    ckpt = read_checkpoint(out_dir / "checkpoints" / "latest.pt")
    with (out_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    loss = float(rows[-1]["loss"]) if rows and rows[-1].get("loss") else float("nan")
    return ckpt.build_model("cpu"), int(summary["iterations"]), loss


def run_one(spec: str, ds, slices, budget: int, img_size: int, batch: int, seed: int,
            workdir: Path, augment: str | None,
            plain_augment: str | None = None, plain_batches: str = "random") -> dict[str, Any]:
    loop, name, options = parse_spec(spec)
    x, y = slices
    epochs = max(1, round(budget / iterations_per_epoch(len(x), batch)))
    iterations = epochs * iterations_per_epoch(len(x), batch)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    if loop == "plain":
        model = build_plain_model(name, options, ds.in_channels, ds.num_classes)
        draw = (augmented_batches(ds, plain_augment, img_size, seed)
                if plain_augment not in (None, "none") else None)
        loss = plain_loop(model, x, y, iterations, batch, seed, ds.num_classes, draw,
                          plain_batches)
    else:
        out = workdir / f"{spec.replace(':', '_').replace(',', '_').replace('=', '-')}-b{budget}-s{seed}"
        model, iterations, loss = pipeline_run(name, options, ds, epochs, img_size, batch,
                                               seed, out, augment)
    train_s = time.perf_counter() - t0
    scores = evaluate(model, ds, img_size)
    return {"model": spec, "loop": loop, "budget": budget, "iterations": iterations,
            "batches": plain_batches if loop == "plain" else "epochs",
            "seed": seed, "train_s": round(train_s, 1),
            "s_per_iter": round(train_s / max(iterations, 1), 3),
            "final_loss": round(loss, 4), **scores}


# ------------------------------------------------------------------ tables
def summary_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, sample SD and range of the mean Dice per (model, budget); gap to smp."""
    rows = []
    keys = list(dict.fromkeys((r["model"], r["budget"]) for r in runs))
    ref = {}
    for model, budget in keys:
        vals = [r["mean_dice"] for r in runs if r["model"] == model and r["budget"] == budget]
        learned = [r["learned"] for r in runs if r["model"] == model and r["budget"] == budget]
        row = {
            "model": model, "budget_it": budget, "seeds": len(vals),
            "mean_dice": statistics.fmean(vals),
            "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "min": min(vals), "max": max(vals),
            "classes_learned": "/".join(str(v) for v in learned),
        }
        if model == SMP:
            ref[budget] = row["mean_dice"]
        rows.append(row)
    for row in rows:
        base = ref.get(row["budget_it"])
        row["vs_smp"] = round(row["mean_dice"] - base, 4) if base is not None else "n/a"
    return rows


def default_seeds(spec: str, seeds: list[int]) -> list[int]:
    """Three seeds for smp, resnet34_unet and unet (as the issue asks), one for the rest."""
    name = parse_spec(spec)[1]
    return seeds if name in THREE_SEEDS else seeds[:1]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None,
                   help="nnU-Net dataset folder (default: build mni_dk in a temp folder)")
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma-separated specs; ';' separates specs that carry options")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--all-seeds", action="store_true",
                   help="every model gets every seed (default: 3 for smp/resnet34_unet/unet)")
    p.add_argument("--iterations", default="200,600", help="budgets, comma-separated")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--augment", default=None,
                   help="pipeline augmentation recipe (default: the dataset recipe's)")
    p.add_argument("--plain-augment", default=None,
                   help="augmentation recipe for the plain-loop runs (default: none), e.g. "
                        "'default': the pipeline's default recipe, to compare like with like")
    p.add_argument("--plain-batches", choices=BATCH_DRAWS, default="random",
                   help="how the plain loop draws batches: 'random' slices each iteration "
                        "(default, the issue's loop), shuffled 'epochs' like the pipeline, "
                        "or 'loader': the pipeline's own batch order for the same seed")
    p.add_argument("--max-slices", type=int, default=None, help="build a smaller dataset")
    args = p.parse_args(argv)
    if args.tiny:
        args.models, args.iterations = TINY["models"], TINY["iterations"]
        args.size, args.batch, args.max_slices = TINY["size"], TINY["batch"], TINY["max_slices"]
        args.seeds = "0"
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = [s for s in (args.models.split(";") if ";" in args.models
                         else _split_specs(args.models)) if s]
    seeds = [int(s) for s in args.seeds.split(",")]
    budgets = [int(b) for b in args.iterations.split(",")]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="unetzoo-real-") as tmp:
        work = Path(tmp)
        ds = open_dataset(args.data_root, work, args.max_slices)
        slices = training_slices(ds, args.size)
        info = {"dataset": str(ds.root), "train_slices": len(slices[0]),
                "test_cases": len(ds.cases("test")), "classes": list(ds.class_names),
                "size": args.size, "batch": args.batch, "shared": SHARED,
                "augment": args.augment or "dataset recipe",
                "plain_augment": args.plain_augment or "none",
                "plain_batches": args.plain_batches}
        print(f"data: {info}", flush=True)
        for budget in budgets:
            for spec in specs:
                for seed in (seeds if args.all_seeds else default_seeds(spec, seeds)):
                    row = run_one(spec, ds, slices, budget, args.size, args.batch, seed,
                                  work, args.augment, args.plain_augment,
                                  args.plain_batches)
                    runs.append(row)
                    print(f"  {spec} budget {budget} seed {seed}: mean Dice "
                          f"{row['mean_dice']:.4f}, learned {row['learned']}/"
                          f"{row['scored_classes']}, {row['s_per_iter']} s/it", flush=True)
                    if args.json:
                        _write_partial(args, runs, info)
    table = summary_rows(runs)
    notes = "Per run:\n\n" + markdown_table(
        runs, ["model", "budget", "iterations", "seed", "mean_dice", "learned",
               "s_per_iter", "final_loss"])
    emit("Real MRI learning benchmark (mean Dice, nnU-Net rule)", table, args,
         extra={"notes": notes, "runs": runs, "setup": info})
    return {"rows": table, "runs": runs, "setup": info}


def _split_specs(text: str) -> list[str]:
    """Split on commas that start a new spec (a spec's options also use commas)."""
    out: list[str] = []
    for part in text.split(","):
        if out and "=" in part and ":" not in part.split("=")[0]:
            out[-1] += "," + part  # an option of the previous spec
        else:
            out.append(part)
    return out


def _write_partial(args, runs: list[dict[str, Any]], info: dict[str, Any]) -> None:
    import json

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"partial": True, "machine": machine_info(),
                                     "setup": info, "runs": runs}, indent=2, default=str))


if __name__ == "__main__":
    main()
