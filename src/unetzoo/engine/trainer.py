"""The training loop: one function, :func:`train`, driven by a resolved config.

A run folder holds ``config.yaml``, ``checkpoints/{latest,best}.pt``, ``metrics.csv``,
``tensorboard/``, ``plots/`` and, after the final test, ``report/``. Model selection uses
a validation split carved from the training cases (never the test set).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from unetzoo.engine import distributed as dist_utils
from unetzoo.engine.checkpoint import (
    capture_rng_state,
    crash_point,
    disk_full_error,
    load_checkpoint,
    repair_best,
    restore_rng_state,
    save_checkpoint,
)
from unetzoo.engine.config import dump_yaml, poly_lr
from unetzoo.engine.logging.plots import MetricsLog, plot_history
from unetzoo.engine.logging.tensorboard import (
    IMAGES_PER_VALIDATION,
    log_validation,
    pick_sample,
    validation_loss,
)
from unetzoo.engine.run_folder import RunFolder
from unetzoo.errors import ConfigError, DataError, ModelError, UnetzooError


class TrainingDiverged(UnetzooError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


# ------------------------------------------------------------------------------ helpers
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def split_train_val(
    cases: list[str], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Carve a validation subset from training cases, deterministically from ``seed``.

    At least one case goes to validation when ``val_fraction > 0`` and there are two or
    more cases; with a single case there is no validation split.
    """
    if val_fraction <= 0 or len(cases) < 2:
        return list(cases), []
    n_val = min(max(1, int(round(len(cases) * val_fraction))), len(cases) - 1)
    order = np.random.default_rng(seed).permutation(len(cases))
    val = sorted(cases[i] for i in order[:n_val])
    train = [c for c in cases if c not in set(val)]
    return train, val


def check_img_size(model: nn.Module, img_size: int, in_channels: int, name: str) -> None:
    """Raise a one-line ModelError when ``model`` cannot take ``img_size`` inputs."""
    fixed = getattr(model, "fixed_input_size", None)
    if fixed is not None and int(fixed) != int(img_size):
        raise ModelError(
            f"model {name!r} takes only {fixed} x {fixed} inputs; use --img-size {fixed}"
        )
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            out = model(torch.zeros(1, in_channels, img_size, img_size, device=device))
    except (UnetzooError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model {name!r} cannot take --img-size {img_size}: {first}") from exc
    finally:
        model.train(was_training)
    if isinstance(out, (list, tuple)):
        out = out[-1]
    if tuple(out.shape[-2:]) != (img_size, img_size):
        raise ModelError(
            f"model {name!r} maps {img_size} px inputs to {tuple(out.shape[-2:])} outputs; "
            "choose a padding='same' variant (the pipeline needs full-size outputs)"
        )


def build_optimizer(cfg: dict[str, Any], params) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay), Adam or AdamW at ``base_lr``."""
    name = cfg["optimizer"]
    lr, wd = float(cfg["base_lr"]), float(cfg["weight_decay"] or 0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(cfg["momentum"]), weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ConfigError(f"unknown optimizer {name!r}; choose sgd, adam or adamw")


def deep_supervision_weights(n: int, weights: list[float] | None) -> list[float]:
    """Per-head weights (final head last), normalised to sum 1; equal when None."""
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise ConfigError(
            f"deep-supervision-weights has {len(weights)} values but the model has {n} heads"
        )
    total = float(sum(weights))
    if total <= 0:
        raise ConfigError("deep-supervision-weights must sum to a positive number")
    return [float(w) / total for w in weights]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _loss_terms(terms: dict[str, Any]) -> dict[str, float]:
    return {k: float(v.detach().item() if torch.is_tensor(v) else v) for k, v in terms.items()}


# ------------------------------------------------------------------------------- train
def train(
    cfg: dict[str, Any],
    dataset=None,
    resume: str | Path | None = None,
    stop_after_epochs: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train a model as ``cfg`` says; returns a summary dict.

    Args:
        cfg: a resolved configuration (:func:`unetzoo.engine.config.resolve_config`).
        dataset: an already opened ``SegDataset`` (opened from ``cfg`` when None).
        resume: a checkpoint to continue from exactly (model, optimizer, scaler, epoch,
            iteration, RNG states including the DataLoader generator).
        stop_after_epochs: stop after this many epochs of *this call* without running
            the final test (simulates an interruption; used by the resume test).
        overwrite: replace a finished or unfinished run in ``cfg["output"]`` (its own
            files only; see :class:`~unetzoo.engine.run_folder.RunFolder`). Without it
            (and without ``resume``) a non-empty folder that is not a fresh start is
            refused. The folder is locked for the whole call.

    Returns:
        ``{"run_dir", "best_metric", "best_epoch", "epochs", "iterations", "test"}``.
    """
    from unetzoo.data import get_dataset
    from unetzoo.losses import build_loss
    from unetzoo.models import create_model, get_entry

    info = dist_utils.setup(cfg.get("device"))
    folder_guard = contextlib.ExitStack()
    try:
        ds = dataset
        if ds is None:
            ds = get_dataset(cfg["dataset"], cfg["data_root"], **cfg["dataset_options"])
        cfg["dataset"] = ds.name
        if cfg["output"] is None:
            cfg["output"] = str(Path("runs") / f"{cfg['model']}-{ds.name}")
            if cfg.get("fold") is not None:  # the folds of one model side by side
                cfg["output"] = str(Path(cfg["output"]) / f"fold_{cfg['fold']}")
        run_dir = Path(cfg["output"])
        run_folder = None
        if info.is_main:
            # Create and lock (which proves it writable), refuse someone else's files,
            # clean interrupted writes; main rank only. No write probe before the lock:
            # a concurrent start would see it as a foreign file.
            run_folder = folder_guard.enter_context(
                RunFolder(run_dir, resume=resume is not None, overwrite=overwrite)
            )
            for note in run_folder.notes:
                print(note, flush=True)
        dist_utils.barrier(info)

        # ---- data: train / validation cases (validation carved from training cases)
        all_train = list(ds.cases("train"))
        if not all_train:
            raise DataError(f"dataset {ds.name!r} at {ds.root} has no training cases")
        # --paper-protocol: no validation split at all (not even the dataset's own), so
        # every epoch's checkpoint is "best" and the test scores the last epoch.
        if cfg.get("fold") is not None:
            # nnU-Net's cross-validation: fold K of a seeded 5-fold split of the training
            # cases, stored once (user cache) and recorded in the run folder.
            from unetzoo.data.folds import dataset_fold

            train_cases, val_cases, _ = dataset_fold(
                ds, int(cfg["fold"]), run_dir=run_dir if info.is_main else None
            )
            val_split = "train"
        elif "val" in ds.splits() and ds.cases("val") and not cfg.get("paper_protocol"):
            train_cases, val_cases, val_split = all_train, list(ds.cases("val")), "val"
        else:
            train_cases, val_cases = split_train_val(all_train, cfg["val_fraction"], cfg["seed"])
            val_split = "train"
        if cfg["max_cases"]:
            train_cases = train_cases[: int(cfg["max_cases"])]
        if cfg["val_cases"]:
            val_cases = val_cases[: int(cfg["val_cases"])]

        seed_everything(int(cfg["seed"]) + info.rank)
        transform = _train_transform(
            cfg["augment"] or ds.recipe, int(cfg["img_size"]), cfg["augment_options"]
        )
        train_set = ds.slice_dataset(
            "train", cases=train_cases, transform=transform, seed=int(cfg["seed"]) + info.rank
        )
        if len(train_set) == 0:
            raise DataError(f"dataset {ds.name!r} at {ds.root} has no training slices")
        generator = torch.Generator()
        generator.manual_seed(int(cfg["seed"]) + info.rank)
        sampler = None
        if info.enabled:
            sampler = DistributedSampler(
                train_set, num_replicas=info.world_size, rank=info.rank,
                shuffle=True, seed=int(cfg["seed"]),
            )
        loader = DataLoader(
            train_set,
            batch_size=int(cfg["batch_size"]),
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=int(cfg["num_workers"]),
            generator=generator,
            worker_init_fn=_seed_worker(),
            pin_memory=info.device.type == "cuda",
            drop_last=len(train_set) > int(cfg["batch_size"]) * info.world_size,
        )

        # ---- model, loss, optimizer
        options = dict(cfg["model_options"] or {})
        if cfg["deep_supervision"]:
            options["deep_supervision"] = True
        if "img_size" in get_entry(cfg["model"]).default_options():
            # Transformers build their position grid for the training size.
            options.setdefault("img_size", int(cfg["img_size"]))
        model = create_model(
            cfg["model"], in_channels=ds.in_channels, num_classes=ds.num_classes, **options
        )
        check_img_size(model, int(cfg["img_size"]), ds.in_channels, cfg["model"])
        model.to(info.device)
        channels_last = bool(cfg["channels_last"]) and info.device.type == "cuda"
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        # nnU-Net's ignore label: unannotated pixels count for neither CE nor Dice.
        ignore = getattr(ds, "ignore_label", None)
        loss_options = {} if ignore is None else {"ignore_index": int(ignore)}
        criterion = build_loss(cfg["loss"], ds.num_classes, weights=cfg["loss_weights"],
                               **loss_options)
        # The same loss for the validation loss, its own instance (stateless losses
        # today, but nothing of validation may touch the training one).
        val_criterion = build_loss(cfg["loss"], ds.num_classes, weights=cfg["loss_weights"],
                                   **loss_options)
        distill = None
        distill_gen = torch.Generator().manual_seed(int(cfg["seed"]))
        if cfg["distill_ifd"] > 0 or cfg["distill_scr"] > 0:
            from unetzoo.losses import FeatureDistillationLoss

            taps = get_entry(cfg["model"]).taps_for(model)
            if taps is None:
                raise ModelError(f"model {cfg['model']!r} declares no feature taps; drop --distill")
            distill = (
                taps,
                FeatureDistillationLoss(
                    cfg["distill_ifd"], cfg["distill_scr"], generator=distill_gen
                ),
            )
        optimizer = build_optimizer(cfg, model.parameters())
        use_amp = bool(cfg["amp"]) and info.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

        # ---- resume
        start_epoch, iteration, best_metric, best_epoch = 0, 0, -math.inf, -1
        history: list[dict[str, Any]] = []
        if resume is not None:
            ck = load_checkpoint(resume, map_location=info.device)
            if ck["model"]["name"] != model.unetzoo_name:
                raise ConfigError(
                    f"--resume checkpoint holds model {ck['model']['name']!r}, not "
                    f"{model.unetzoo_name!r}"
                )
            if len(ck["class_names"]) != ds.num_classes:
                raise ConfigError(
                    f"--resume checkpoint has {len(ck['class_names'])} classes but dataset "
                    f"{ds.name!r} has {ds.num_classes}"
                )
            from unetzoo.engine.config import check_resume_options

            check_resume_options(ck["model"].get("options") or {}, model.unetzoo_options, resume)
            model.load_state_dict(ck["state_dict"])
            if "optimizer" not in ck:
                raise ConfigError(f"{resume} holds weights only (no optimizer state); it cannot be resumed")
            optimizer.load_state_dict(ck["optimizer"])
            if ck.get("scaler"):
                scaler.load_state_dict(ck["scaler"])
            start_epoch, iteration = int(ck["epoch"]), int(ck["iteration"])
            best_metric = float(ck.get("best_metric", -math.inf))
            best_epoch = int(ck.get("best_epoch", -1))
            history = list(ck.get("history", []))
            if info.is_main:
                # A kill between the latest.pt and best.pt writes: make best.pt agree.
                note = repair_best(run_dir / "checkpoints", ck)
                if note:
                    print(note, flush=True)
            if ck.get("rng"):
                restore_rng_state(ck["rng"], generator)
                if "dataset" in ck["rng"] and hasattr(train_set, "rng"):
                    # The main-process augmentation generator (num_workers=0) moves on
                    # across epochs; its state is JSON because PCG64 holds 128-bit ints.
                    train_set.rng.bit_generator.state = json.loads(ck["rng"]["dataset"])
                if "distill" in ck["rng"]:
                    distill_gen.set_state(ck["rng"]["distill"].cpu())

        train_model: nn.Module = model
        if info.enabled:
            train_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[info.device.index] if info.device.type == "cuda" else None
            )

        max_epochs = int(cfg["max_epochs"])
        max_it = max_epochs * len(loader)
        writer = _tensorboard(run_dir) if info.is_main else None
        log = MetricsLog(run_dir / "metrics.csv", history)
        if info.is_main:
            if resume is not None:  # drop rows of epochs after the checkpoint (a crash)
                log.write()
            dump_yaml(cfg, run_dir / "config.yaml")
            print(
                f"training {cfg['model']} on {ds.name}: {len(train_cases)} train / "
                f"{len(val_cases)} val cases, {len(train_set)} slices, {max_epochs} epochs "
                f"x {len(loader)} iterations, device {info.device}"
                + (f", {info.world_size} processes" if info.enabled else ""),
                flush=True,
            )

        base = {
            "model": {"name": model.unetzoo_name, "options": dict(model.unetzoo_options)},
            "class_names": list(ds.class_names),
            "in_channels": int(ds.in_channels),
            "img_size": int(cfg["img_size"]),
            "preprocessing": dict(ds.preprocessing),
            "dataset": ds.name,
            "config": _plain_config(cfg),
        }
        # Deep supervision only shapes training; inference rebuilds the plain model.
        base["model"]["options"].pop("deep_supervision", None)
        if "deep_supervision" in model.unetzoo_options:
            base["model"]["options"]["deep_supervision"] = False

        epochs_done = 0
        t_start = time.time()
        for epoch in range(start_epoch, max_epochs):
            if sampler is not None:
                sampler.set_epoch(epoch)
            train_model.train()
            sums: dict[str, float] = {}
            steps = 0
            bar = _progress(loader, epoch, max_epochs, info.is_main and cfg["progress"])
            for batch in bar:
                lr = (
                    poly_lr(cfg["base_lr"], iteration, max_it, cfg["poly_power"])
                    if cfg["lr_schedule"] == "poly" else float(cfg["base_lr"])
                )
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = batch["image"].to(info.device, non_blocking=True)
                y = batch["label"].to(info.device, non_blocking=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(info.device.type, enabled=use_amp):
                    if distill is not None:
                        from unetzoo.losses import FeatureTapper

                        with FeatureTapper(model, distill[0]) as tapper:
                            out = train_model(x)
                        features = tapper.features
                    else:
                        out = train_model(x)
                total, terms = _supervised_loss(criterion, out, y, cfg)
                if distill is not None:
                    d_total, d_terms = distill[1](features)
                    total = total + d_total
                    terms.update({f"distill_{k}": float(v) for k, v in d_terms.items()})
                    terms["total"] = float(total.detach().item())
                loss_value = float(total.detach().item())
                bad = not math.isfinite(loss_value)
                if info.enabled:
                    bad = dist_utils.all_reduce_mean(float(bad), info) > 0
                if bad:
                    latest = run_dir / "checkpoints" / "latest.pt"
                    kept = f"; the last good checkpoint is {latest}" if latest.exists() else ""
                    raise TrainingDiverged(
                        f"loss became {loss_value} at epoch {epoch + 1}, iteration "
                        f"{iteration + 1} (step {iteration + 1} of {max_it}){kept}; lower "
                        "--base-lr or check the data"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                scaler.step(optimizer)
                scaler.update()
                iteration += 1
                steps += 1
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                sums.setdefault("total", 0.0)
                if "total" not in terms:
                    sums["total"] += loss_value
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            if hasattr(bar, "close"):
                bar.close()

            row: dict[str, Any] = {"epoch": epoch + 1, "iteration": iteration}
            for k, v in sums.items():
                key = "loss" if k == "total" else f"loss_{k}"
                row[key] = dist_utils.all_reduce_mean(v / max(steps, 1), info)
            row["lr"] = optimizer.param_groups[0]["lr"]
            row["time_s"] = round(time.time() - t_start, 2)

            do_eval = val_cases and ((epoch + 1) % int(cfg["eval_interval"]) == 0 or epoch + 1 == max_epochs)
            improved = False
            if info.is_main:
                if do_eval:
                    details: dict[str, Any] = {}
                    val = validate(model, ds, val_split, val_cases, cfg, info.device,
                                   collect=details if writer is not None else None)
                    val["val_loss"] = validation_loss(
                        model, ds, val_split, val_cases, val_criterion, int(cfg["img_size"]),
                        int(cfg["batch_size"]), info.device,
                    )
                    row.update(val)
                    # NaN (no class scored) never beats a score, yet the first validation
                    # still gives best.pt a model, so the final test has one to load.
                    score = -math.inf if math.isnan(val["val_dice"]) else val["val_dice"]
                    if score > best_metric or best_epoch < 0:
                        best_metric, best_epoch, improved = score, epoch + 1, True
                elif not val_cases:
                    improved = True  # no validation split: the latest model is the best
                    best_epoch = epoch + 1
                log.append(row)
                if writer is not None:
                    for k, v in row.items():
                        if k != "epoch" and isinstance(v, (int, float)):
                            writer.add_scalar(k.replace("_", "/", 1) if k.startswith("val_") else f"train/{k}", v, epoch + 1)
                    if do_eval:  # per-class Dice and a few overlays (engine/logging/tensorboard)
                        log_validation(writer, epoch + 1, details.get("per_class_dice", {}),
                                       details.get("samples", ()))
                    writer.flush()
                rng = capture_rng_state(generator)
                rng["distill"] = distill_gen.get_state()
                if hasattr(train_set, "rng"):
                    rng["dataset"] = json.dumps(train_set.rng.bit_generator.state)
                payload = {
                    **base,
                    "state_dict": _unwrap(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if use_amp else {},
                    "epoch": epoch + 1,
                    "iteration": iteration,
                    "max_iterations": max_it,
                    "best_metric": float(best_metric) if math.isfinite(best_metric) else -1.0,
                    "best_epoch": best_epoch,
                    "history": log.rows,
                    "rng": rng,
                }
                # Order matters for crash repair (see checkpoint.repair_best): latest.pt
                # first, then best.pt; the crash points are the kill test's hooks.
                crash_point(f"before-latest:{epoch + 1}")
                save_checkpoint(payload, run_dir / "checkpoints" / "latest.pt")
                crash_point(f"between-writes:{epoch + 1}")
                if improved:
                    save_checkpoint(payload, run_dir / "checkpoints" / "best.pt")
                crash_point(f"after-best:{epoch + 1}")
                plot_history(log.rows, run_dir / "plots")
                msg = f"epoch {epoch + 1}/{max_epochs}: loss {row.get('loss', float('nan')):.4f}"
                if "val_dice" in row:
                    msg += f", val Dice {row['val_dice']:.4f}, val HD95 {row['val_hd95']:.2f}"
                    msg += " (best)" if improved else ""
                print(msg, flush=True)
            dist_utils.barrier(info)
            epochs_done += 1
            if stop_after_epochs is not None and epochs_done >= stop_after_epochs:
                break
        if writer is not None:
            writer.close()

        summary: dict[str, Any] = {
            "run_dir": str(run_dir),
            "best_metric": best_metric,
            "best_epoch": best_epoch,
            "epochs": start_epoch + epochs_done,
            "iterations": iteration,
            "train_seconds": round(time.time() - t_start, 1),
            "test": None,
        }
        finished = start_epoch + epochs_done >= max_epochs
        if info.is_main and finished and cfg["test"] and "test" in ds.splits() and ds.cases("test"):
            from unetzoo.engine.evaluation import run_test

            summary["test"] = run_test(
                run_dir / "checkpoints" / "best.pt",
                dataset=ds,
                out_dir=run_dir / "report",
                max_cases=cfg["test_max_cases"],
                protocol=cfg["protocol"],
                device=info.device,
            )
        if run_folder is not None and finished:
            run_folder.finish()
        dist_utils.barrier(info)
        return summary
    except OSError as exc:  # a full disk while writing logs, plots or caches: one line
        full = disk_full_error(exc, cfg.get("output"))
        if full is None:
            raise
        raise full from exc
    finally:
        folder_guard.close()
        dist_utils.cleanup()


def _supervised_loss(criterion, out, y: torch.Tensor, cfg: dict[str, Any]):
    """Main loss; deep-supervision heads combine with weights (final head last), or
    with EMCAD's mutation loss (``deep_supervision_loss: mutation``)."""
    if isinstance(out, (list, tuple)) and cfg.get("deep_supervision_loss") == "mutation":
        from unetzoo.losses import mutation_loss

        total, terms = mutation_loss(criterion, [o.float() for o in out], y)
        return total, _loss_terms(terms)
    if isinstance(out, (list, tuple)):
        weights = deep_supervision_weights(len(out), cfg["deep_supervision_weights"])
        total = 0.0
        heads: dict[str, float] = {}
        for i, (w, o) in enumerate(zip(weights, out)):
            t, tm = criterion(o.float(), y)
            total = total + w * t
            heads[f"head{i}"] = float(t.detach().item())
        # The terms of the final head, plus each head's total loss.
        return total, {**_loss_terms(tm), **heads}
    total, terms = criterion(out.float(), y)
    return total, _loss_terms(terms)


@torch.no_grad()
def validate(
    model: nn.Module, ds, split: str, cases: list[str], cfg: dict[str, Any], device,
    collect: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Mean foreground Dice and HD95 over ``cases`` (volume inference, TransUNet resize).

    The same aggregation as the test report (``unetzoo.engine.evaluation.summary_table``):
    per class the mean over the cases that scored it, then the mean over the classes with
    at least one scored case. Under ``"strict"`` a class absent from both prediction and
    reference is not scored (it never counts as a success) and a missed class scores Dice
    0; ``val_dice`` is NaN when no class was scored at all, which never beats a best model.

    ``collect`` (for TensorBoard), when given, receives ``"per_class_dice"`` ``{class
    name: mean Dice}`` and ``"samples"``, one :class:`~unetzoo.engine.logging.tensorboard.
    ValidationSample` for each of the first ``IMAGES_PER_VALIDATION`` cases.
    """
    from unetzoo.engine.evaluation import case_metrics, summary_table
    from unetzoo.engine.inference import predict_volume

    model = _unwrap(model)
    was_training = model.training
    model.eval()
    rows: list[dict[str, Any]] = []
    try:
        for cid in cases:
            case = ds.load_case(cid, split)
            pred = predict_volume(
                model, case.image, int(cfg["img_size"]), batch_size=int(cfg["batch_size"]),
                device=device, amp=bool(cfg["amp"]),
            )
            per_class = case_metrics(pred, case, ds.num_classes, cfg["protocol"])
            rows += [{"case": cid, "class_index": k, **m} for k, m in per_class.items()]
            if collect is not None and len(collect.setdefault("samples", [])) < IMAGES_PER_VALIDATION:
                collect["samples"].append(pick_sample(case, pred))
    finally:
        model.train(was_training)
    table = summary_table(rows, list(ds.class_names), cfg["protocol"])
    if collect is not None:
        collect["per_class_dice"] = {
            name: float(table.per_class["dice"][k]) for k, name in enumerate(table.class_names)
        }
    return {"val_dice": float(table.mean["dice"]), "val_hd95": float(table.mean["hd95"])}


def _train_transform(recipe: str, img_size: int, options: dict[str, Any]):
    try:
        from unetzoo.data.transforms import build_train_transform
    except ModuleNotFoundError as exc:  # data transforms not installed yet: no augmentation
        if exc.name != "unetzoo.data.transforms":
            raise
        return None
    return build_train_transform(recipe, img_size, **(options or {}))


def _seed_worker():
    try:
        from unetzoo.data.transforms import seed_worker
    except ImportError:  # pragma: no cover - the data package always provides it
        return None
    return seed_worker


def _progress(loader, epoch: int, max_epochs: int, enabled: bool):
    if not enabled:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=f"epoch {epoch + 1}/{max_epochs}", leave=False, dynamic_ncols=True)


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but keep training without it
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _plain_config(cfg: dict[str, Any]) -> dict[str, Any]:
    # Checkpoints are read with weights_only=True: plain values only.
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, Path):
            v = str(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out
