"""The training loop: :func:`train`, a handful of named steps driven by a :class:`TrainConfig`.

The steps, in order: open the dataset and name the run (:func:`open_run`), split the
cases and build the loader (:func:`make_loader`), build the model (:func:`build_model`)
and its objective (:func:`build_objective`: losses, distillation, optimizer, scaler),
resume (:func:`resume_state`), then per epoch :func:`train_epoch` and
:func:`end_epoch` (validation, logs, checkpoints), and :func:`final_test` (``final.pt``
and its test; :mod:`unetzoo.engine.selection`). The run folder's files are named in
:mod:`unetzoo.engine.run_folder`. Validation uses a split carved from the training cases
(never the test set); ``--select best`` scores its best epoch instead of the last.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from unetzoo.data.transforms import build_train_transform, seed_worker
from unetzoo.engine import distributed as dist_utils
from unetzoo.engine.checkpoint import (
    Checkpoint,
    TrainState,
    capture_rng_state,
    disk_full_error,
    read_checkpoint,
    repair_best,
    restore_rng_state,
    write_checkpoint,
)
from unetzoo.engine.config import (
    TrainConfig,
    check_resume_options,
    dump_yaml,
    effective_base_lr,
    poly_lr,
)
from unetzoo.engine.evaluation import run_test, validate
from unetzoo.engine.logging.plots import MetricsLog, plot_history
from unetzoo.engine.logging.tensorboard import log_validation, validation_loss
from unetzoo.engine.run_folder import RunFolder, RunLayout
from unetzoo.engine.selection import choose_checkpoint, write_final
from unetzoo.engine.spec import InferenceSpec
from unetzoo.engine.training_inputs import training_intensity, training_orientation
from unetzoo.errors import ConfigError, DataError, ModelError, UnetzooError
from unetzoo.losses import build_loss, source_deep_supervision_loss, supervised_loss
from unetzoo.metrics import spacing_known


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


def check_img_size(model: nn.Module, img_size: int, in_channels: int, name: str,
                   batch_size: int = 2) -> None:
    """Raise a one-line ModelError when ``model`` cannot take ``img_size`` inputs (or
    when a BatchNorm layer would see one value per channel at ``batch_size``)."""
    fixed = getattr(model, "fixed_input_size", None)
    if fixed is not None and int(fixed) != int(img_size):
        raise ModelError(
            f"model {name!r} takes only {fixed} x {fixed} inputs; use --img-size {fixed}"
        )
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        norm_sizes: list[int] = []
        hooks = [m.register_forward_hook(lambda _m, x, _y: norm_sizes.append(x[0][0, 0].numel()))
                 for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        try:
            with torch.no_grad():
                out = model(torch.zeros(1, in_channels, img_size, img_size, device=device))
        finally:
            for h in hooks:
                h.remove()
    except (UnetzooError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model {name!r} cannot take --img-size {img_size}: {first}") from exc
    finally:
        model.train(was_training)
    if batch_size == 1 and norm_sizes and min(norm_sizes) == 1:
        # Training-mode BatchNorm needs more than one value per channel ("Expected more
        # than 1 value per channel"): a 1 x 1 map in a batch of one has exactly one.
        raise ModelError(
            f"model {name!r} shrinks --img-size {img_size} to 1 x 1 at its deepest level, "
            "where BatchNorm cannot train on a batch of 1; use --batch-size 2 or more, or "
            "a larger --img-size"
        )
    if isinstance(out, (list, tuple)):
        out = out[-1]
    if tuple(out.shape[-2:]) != (img_size, img_size):
        raise ModelError(
            f"model {name!r} maps {img_size} px inputs to {tuple(out.shape[-2:])} outputs; "
            "choose a padding='same' variant (the pipeline needs full-size outputs)"
        )


def build_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay), Adam or AdamW at ``base_lr`` (after the recipe's
    batch rule, :func:`~unetzoo.engine.config.effective_base_lr`)."""
    name = cfg.optimizer
    lr, wd = effective_base_lr(cfg), float(cfg.weight_decay or 0.0)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(cfg.momentum), weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    raise ConfigError(f"unknown optimizer {name!r}; choose sgd, adam or adamw")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


# ------------------------------------------------------------------------------ state
@dataclass
class TrainData:
    """The cases of a run and the loader over its training slices."""

    ds: Any
    train_cases: list[str]
    val_cases: list[str]
    val_split: str
    train_set: Any
    loader: DataLoader
    sampler: DistributedSampler | None
    generator: torch.Generator  # the loader's shuffling generator (saved for resume)


@dataclass
class Distillation:
    """SelfReg feature distillation: where to tap features and the loss on them."""

    taps: Any
    loss: nn.Module


@dataclass
class Objective:
    """What one optimisation step needs besides the model and the batch."""

    criterion: nn.Module
    val_criterion: nn.Module  # its own instance: validation never touches the training one
    distill: Distillation | None
    distill_gen: torch.Generator  # drawn by distillation; saved every epoch even when off
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    use_amp: bool
    channels_last: bool
    amp_dtype: torch.dtype | None = None  # autocast dtype (bf16 for --precision bf16)


@dataclass
class Progress:
    """Counters a resumed run continues from."""

    start_epoch: int = 0
    iteration: int = 0
    best_metric: float = -math.inf
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class TrainHooks:
    """The collaborators :func:`train` calls at its seams; pass stand-ins to observe or
    replace one (the tests do; so can a caller with its own validation).

    Attributes:
        validate: ``validate(model, ds, split, cases, cfg, device, collect=None) ->
            {"val_dice", "val_hd95", ...}``, the validation score of an epoch.
        test: ``test(checkpoint, selection=, dataset=, out_dir=, max_cases=, protocol=,
            device=) -> summary``, the test of the chosen checkpoint after training.
        build_loss: ``build_loss(name, num_classes, weights=, **options) -> loss``, called
            for the training and the validation loss (:func:`unetzoo.losses.build_loss`).
        on_checkpoint: ``on_checkpoint(step, epoch)`` at each step of writing the
            checkpoints: ``"before-latest"``, ``"tmp-latest"`` (its temporary file complete,
            not yet renamed), ``"between-writes"``, ``"tmp-best"``, ``"after-best"`` and,
            after the last epoch, ``"tmp-final"``. A callback that exits the process there
            is how the tests prove a kill at any step resumable.
    """

    validate: Callable[..., dict[str, Any]] = validate
    test: Callable[..., dict[str, Any]] = run_test
    build_loss: Callable[..., nn.Module] = build_loss
    on_checkpoint: Callable[[str, int], None] | None = None


@dataclass
class Run:
    """Everything the epoch steps share (one training call)."""

    cfg: TrainConfig
    info: dist_utils.DistInfo
    layout: RunLayout
    data: TrainData
    model: nn.Module
    train_model: nn.Module  # ``model``, or its DistributedDataParallel wrapper
    obj: Objective
    progress: Progress
    base: Checkpoint  # what every epoch's checkpoint shares (inference spec, config)
    log: MetricsLog
    writer: Any  # a TensorBoard SummaryWriter on the main rank, else None
    max_it: int
    t_start: float = field(default_factory=time.time)
    hooks: TrainHooks = field(default_factory=TrainHooks)


# ------------------------------------------------------------------------------- train
def train(
    cfg: TrainConfig | Mapping[str, Any],
    dataset=None,
    resume: str | Path | None = None,
    stop_after_epochs: int | None = None,
    overwrite: bool = False,
    hooks: TrainHooks | None = None,
) -> dict[str, Any]:
    """Train a model as ``cfg`` says; returns a summary dict.

    Args:
        cfg: a resolved configuration (:func:`unetzoo.engine.config.resolve_config`; a
            plain mapping is validated into a :class:`TrainConfig`).
        dataset: an already opened ``SegDataset`` (opened from ``cfg`` when None).
        resume: a checkpoint to continue from exactly (model, optimizer, scaler, epoch,
            iteration, RNG states including the DataLoader generator).
        stop_after_epochs: stop after this many epochs of *this call* without running
            the final test (simulates an interruption; used by the resume test).
        overwrite: replace a finished or unfinished run in ``cfg.output`` (its own
            files only; see :class:`~unetzoo.engine.run_folder.RunFolder`). Without it
            (and without ``resume``) a non-empty folder that is not a fresh start is
            refused. The folder is locked for the whole call.
        hooks: the validation, the final test and a checkpoint-writing callback
            (:class:`TrainHooks`; default: unetzoo's own, no callback).

    Returns:
        ``{"run_dir", "best_metric", "best_epoch", "epochs", "iterations",
        "train_seconds", "test"}``.
    """
    if not isinstance(cfg, TrainConfig):
        cfg = TrainConfig.from_dict(cfg)
    info = dist_utils.setup(cfg.device)
    folder_guard = contextlib.ExitStack()
    try:
        ds, cfg = open_run(cfg, dataset)
        layout = RunLayout(cfg.output)
        run_folder = None
        if info.is_main:
            # Create and lock (which proves it writable), refuse someone else's files,
            # clean interrupted writes; main rank only. No write probe before the lock:
            # a concurrent start would see it as a foreign file.
            run_folder = folder_guard.enter_context(
                RunFolder(layout.root, resume=resume is not None, overwrite=overwrite)
            )
            for note in run_folder.notes:
                print(note, flush=True)
        dist_utils.barrier(info)
        run = start_run(cfg, ds, info, layout, resume, hooks or TrainHooks())
        epochs_done = run_epochs(run, stop_after_epochs)
        finished = run.progress.start_epoch + epochs_done >= run.cfg.max_epochs
        summary = {
            "run_dir": str(layout.root),
            "best_metric": run.progress.best_metric,
            "best_epoch": run.progress.best_epoch,
            "epochs": run.progress.start_epoch + epochs_done,
            "iterations": run.progress.iteration,
            "train_seconds": round(time.time() - run.t_start, 1),
            "test": final_test(run) if finished and info.is_main else None,
        }
        if run_folder is not None and finished:
            run_folder.finish()
        dist_utils.barrier(info)
        return summary
    except OSError as exc:  # a full disk while writing logs, plots or caches: one line
        full = disk_full_error(exc, cfg.output)
        if full is None:
            raise
        raise full from exc
    finally:
        folder_guard.close()
        dist_utils.cleanup()


def run_epochs(run: Run, stop_after_epochs: int | None = None) -> int:
    """Train from the run's start epoch to ``max_epochs`` (or ``stop_after_epochs`` of
    them); returns the number of epochs done by this call."""
    epochs_done = 0
    for epoch in range(run.progress.start_epoch, run.cfg.max_epochs):
        row = train_epoch(run, epoch)
        end_epoch(run, epoch, row)
        epochs_done += 1
        if stop_after_epochs is not None and epochs_done >= stop_after_epochs:
            break
    if run.writer is not None:
        run.writer.close()
    return epochs_done


def open_run(cfg: TrainConfig, dataset=None) -> tuple[Any, TrainConfig]:
    """Open the dataset (unless given) and name the run: the config gains the dataset's
    name and, when ``output`` is None, ``runs/MODEL-DATASET`` (``/fold_K`` for a fold)."""
    from unetzoo.data import get_dataset

    ds = dataset
    if ds is None:
        ds = get_dataset(cfg.dataset, cfg.data_root, **cfg.dataset_options)
    output = cfg.output
    if output is None:
        output = str(Path("runs") / f"{cfg.model}-{ds.name}")
        if cfg.fold is not None:  # the folds of one model side by side
            output = str(Path(output) / f"fold_{cfg.fold}")
    return ds, dataclasses.replace(cfg, dataset=ds.name, output=output)


def start_run(
    cfg: TrainConfig, ds, info: dist_utils.DistInfo, layout: RunLayout,
    resume: str | Path | None, hooks: TrainHooks | None = None,
) -> Run:
    """Everything before the first epoch: data, model, objective, resumed state, logs.

    The order is part of the run's reproducibility (seeding, then the loader, then the
    model's initialisation draws from torch's generator), so it stays as it is.
    """
    data = make_loader(cfg, ds, info, layout)
    cfg = budget_epochs(cfg, len(data.loader))
    model = build_model(cfg, ds, info)
    hooks = hooks or TrainHooks()
    obj = build_objective(cfg, ds, model, info, hooks.build_loss)
    progress = Progress()
    if resume is not None:
        progress = resume_state(resume, cfg, model, obj, data, info, layout)
    train_model: nn.Module = model
    if info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    spec = InferenceSpec.for_model(
        model, class_names=ds.class_names, in_channels=ds.in_channels,
        img_size=cfg.img_size, preprocessing=ds.preprocessing, dataset=ds.name,
        spacing=training_spacing(ds, data.train_cases), plan=getattr(ds, "plan", None),
        orientation=training_orientation(ds, data.train_cases),
        intensity=training_intensity(ds, data.train_cases),
    )
    run = Run(
        cfg=cfg, info=info, layout=layout, data=data, model=model, train_model=train_model,
        obj=obj, progress=progress, base=Checkpoint(spec=spec, weights={}, config=cfg.to_dict()),
        log=MetricsLog(layout.metrics_csv, progress.history),
        writer=_tensorboard(layout.tensorboard) if info.is_main else None,
        max_it=cfg.max_iterations or cfg.max_epochs * len(data.loader), hooks=hooks,
    )
    if info.is_main:
        if resume is not None:  # drop rows of epochs after the checkpoint (a crash)
            run.log.write()
        dump_yaml(cfg, layout.config)
        if getattr(ds, "plan_record", None) is not None:  # a planned run (unetzoo.data.plan)
            ds.plan_record.save(layout.plans)
        print(
            f"training {cfg.model} on {ds.name}: {len(data.train_cases)} train / "
            f"{len(data.val_cases)} val cases, {len(data.train_set)} slices, "
            + (f"{cfg.max_iterations} iterations ({cfg.max_epochs} epochs of up to "
               f"{len(data.loader)})" if cfg.max_iterations else
               f"{cfg.max_epochs} epochs x {len(data.loader)} iterations")
            + f", device {info.device}"
            + (f", {info.world_size} processes" if info.enabled else ""),
            flush=True,
        )
        if effective_base_lr(cfg) != cfg.base_lr:
            print(f"learning rate {cfg.base_lr:g} x batch {cfg.batch_size} / 24 = "
                  f"{effective_base_lr(cfg):g} (lr-batch-rule {cfg.lr_batch_rule})", flush=True)
    return run


# ------------------------------------------------------------------------------- data
def training_spacing(ds, cases: list[str], split: str = "train") -> tuple[float, ...] | None:
    """Median voxel spacing ``(sz, sy, sx)`` mm of the training ``cases`` (nnU-Net's
    fingerprint statistic), recorded in the inference spec; None when the reader knows
    no spacing (the 1.0 placeholder, :func:`~unetzoo.metrics.spacing_known`).

    A reader may answer from its metadata (``ds.case_spacing(case_id, split)``, e.g. the
    nnU-Net slice cache) instead of a full read; the first case without a known spacing
    ends the scan (one reader, one rule for all its cases).
    """
    header = getattr(ds, "case_spacing", None)
    spacings = []
    for cid in cases:
        if header is not None:
            spacing = header(cid, split)
        else:
            case = ds.load_case(cid, split)
            spacing = case.spacing if spacing_known(case) else None
        if spacing is None or not all(float(v) > 0 for v in spacing):  # NaN: unknown
            return None
        spacings.append([float(s) for s in spacing])
    if not spacings:
        return None
    return tuple(float(s) for s in np.median(np.asarray(spacings), axis=0))


def check_foreground(train_set, where: str) -> None:
    """Refuse training labels that are all background: the run would train to the end
    on nothing (Dice 0 everywhere, exit 0). Reads label slices until the first foreground
    voxel, so a usable dataset costs a few slices."""
    store: dict[str, Any] = {}
    for cid, z in train_set.index:
        _, label = train_set.source._read_slice(train_set.split, cid, z, store)
        if np.any(np.asarray(label) > 0):
            return
    raise DataError(
        f"{where}: every label of the {len(train_set.index)} training slices is background "
        "(0), so there is nothing to learn; check the label files (classes 1..K) and the "
        "label values dataset.json declares"
    )


def split_cases(
    cfg: TrainConfig, ds, layout: RunLayout, is_main: bool
) -> tuple[list[str], list[str], str]:
    """``(train cases, validation cases, the split the validation cases are read from)``.

    A fold (``--fold K``) takes nnU-Net's stored 5-fold split (recorded in the run
    folder); else the dataset's own ``val`` split; else a seeded share of the training
    cases. ``--paper-protocol`` uses no validation at all (not even the dataset's own),
    so every epoch's checkpoint is "best" and the test scores the last epoch.
    """
    all_train = list(ds.cases("train"))
    if not all_train:
        raise DataError(f"dataset {ds.name!r} at {ds.root} has no training cases")
    if cfg.fold is not None:
        from unetzoo.data.folds import dataset_fold

        train_cases, val_cases, _ = dataset_fold(
            ds, int(cfg.fold), run_dir=layout.root if is_main else None
        )
        val_split = "train"
    elif "val" in ds.splits() and ds.cases("val") and not cfg.paper_protocol:
        train_cases, val_cases, val_split = all_train, list(ds.cases("val")), "val"
    else:
        train_cases, val_cases = split_train_val(all_train, cfg.val_fraction, cfg.seed)
        val_split = "train"
    if cfg.max_cases:
        train_cases = train_cases[: int(cfg.max_cases)]
    if cfg.val_cases:
        val_cases = val_cases[: int(cfg.val_cases)]
    return train_cases, val_cases, val_split


def make_loader(cfg: TrainConfig, ds, info: dist_utils.DistInfo, layout: RunLayout) -> TrainData:
    """Split the cases, seed this rank, and build the augmented, shuffled slice loader."""
    train_cases, val_cases, val_split = split_cases(cfg, ds, layout, info.is_main)
    seed = cfg.seed + info.rank
    seed_everything(seed)
    transform = build_train_transform(
        cfg.augment or ds.recipe, cfg.img_size, **dict(cfg.augment_options)
    )
    train_set = ds.slice_dataset("train", cases=train_cases, transform=transform, seed=seed)
    if len(train_set) == 0:
        raise DataError(f"dataset {ds.name!r} at {ds.root} has no training slices")
    check_foreground(train_set, f"dataset {ds.name!r} at {ds.root}")
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = None
    if info.enabled:
        sampler = DistributedSampler(
            train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed,
        )
    loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=cfg.num_workers,
        generator=generator,
        worker_init_fn=seed_worker,
        pin_memory=info.device.type == "cuda",
        drop_last=len(train_set) > cfg.batch_size * info.world_size,
    )
    return TrainData(ds, train_cases, val_cases, val_split, train_set, loader, sampler, generator)


# ------------------------------------------------------------------------------ model
def build_model(cfg: TrainConfig, ds, info: dist_utils.DistInfo) -> nn.Module:
    """The registered model for the dataset's channels and classes, checked against
    ``img_size`` and placed on the device (channels-last on CUDA when asked)."""
    from unetzoo.models import create_model, get_entry

    options = dict(cfg.model_options)
    if cfg.deep_supervision:
        options["deep_supervision"] = True
    if "img_size" in get_entry(cfg.model).default_options():
        # Transformers build their position grid for the training size.
        options.setdefault("img_size", cfg.img_size)
    model = create_model(
        cfg.model, in_channels=ds.in_channels, num_classes=ds.num_classes, **options
    )
    check_img_size(model, cfg.img_size, ds.in_channels, cfg.model, cfg.batch_size)
    model.to(info.device)
    if _channels_last(cfg, info):
        model = model.to(memory_format=torch.channels_last)
    return model


def _channels_last(cfg: TrainConfig, info: dist_utils.DistInfo) -> bool:
    return cfg.channels_last and info.device.type == "cuda"


def build_objective(
    cfg: TrainConfig, ds, model: nn.Module, info: dist_utils.DistInfo,
    build_loss: Callable[..., nn.Module] = build_loss,
) -> Objective:
    """Training and validation losses (from ``build_loss``), SelfReg distillation (when
    its weights are set), the optimizer and the AMP grad scaler."""
    from unetzoo.models import get_entry

    # nnU-Net's ignore label: unannotated pixels count for neither CE nor Dice.
    ignore = getattr(ds, "ignore_label", None)
    loss_options = {} if ignore is None else {"ignore_index": int(ignore)}
    criterion = build_loss(cfg.loss, ds.num_classes, weights=cfg.loss_weights, **loss_options)
    val_criterion = build_loss(cfg.loss, ds.num_classes, weights=cfg.loss_weights,
                               **loss_options)
    distill = None
    distill_gen = torch.Generator().manual_seed(cfg.seed)
    weights = cfg.distill
    if weights is not None:
        from unetzoo.losses import FeatureDistillationLoss

        taps = get_entry(cfg.model).taps_for(model)
        if taps is None:
            raise ModelError(f"model {cfg.model!r} declares no feature taps; drop --distill")
        distill = Distillation(
            taps, FeatureDistillationLoss(weights.ifd, weights.scr, generator=distill_gen)
        )
    optimizer = build_optimizer(cfg, model.parameters())
    use_amp = cfg.amp and info.device.type == "cuda"
    from unetzoo.engine.backends import check_precision

    bf16 = check_precision(cfg.precision, info.device) == "bf16"  # bf16 needs no scaler
    return Objective(
        criterion=criterion, val_criterion=val_criterion, distill=distill,
        distill_gen=distill_gen, optimizer=optimizer,
        scaler=torch.amp.GradScaler("cuda", enabled=use_amp), use_amp=use_amp or bf16,
        channels_last=_channels_last(cfg, info), amp_dtype=torch.bfloat16 if bf16 else None,
    )


def resume_state(
    path: str | Path, cfg: TrainConfig, model: nn.Module, obj: Objective, data: TrainData,
    info: dist_utils.DistInfo, layout: RunLayout,
) -> Progress:
    """Load ``path`` into the model, optimizer, scaler and every generator, exactly.

    Raises:
        ConfigError: another model, class count or model options than this run's, or a
            weights-only checkpoint (nothing to continue).
    """
    ck = read_checkpoint(path, map_location=info.device)
    if ck.spec.model != model.unetzoo_name:
        raise ConfigError(
            f"--resume checkpoint holds model {ck.spec.model!r}, not {model.unetzoo_name!r}"
        )
    if ck.num_classes != data.ds.num_classes:
        raise ConfigError(
            f"--resume checkpoint has {ck.num_classes} classes but dataset "
            f"{data.ds.name!r} has {data.ds.num_classes}"
        )
    check_resume_options(dict(ck.spec.options), model.unetzoo_options, path)
    model.load_state_dict(ck.weights)
    st = ck.train_state
    if st is None:
        raise ConfigError(f"{path} holds weights only (no optimizer state); it cannot be resumed")
    obj.optimizer.load_state_dict(st.optimizer)
    if st.scaler:
        obj.scaler.load_state_dict(st.scaler)
    if info.is_main:
        # A kill between the latest.pt and best.pt writes: make best.pt agree.
        note = repair_best(layout.checkpoints, path)
        if note:
            print(note, flush=True)
    rng = st.rng
    if rng:
        restore_rng_state(rng, data.generator)
        if "dataset" in rng and hasattr(data.train_set, "rng"):
            # The main-process augmentation generator (num_workers=0) moves on across
            # epochs; its state is JSON because PCG64 holds 128-bit ints.
            data.train_set.rng.bit_generator.state = json.loads(rng["dataset"])
        if "distill" in rng:
            obj.distill_gen.set_state(rng["distill"].cpu())
    return Progress(start_epoch=st.epoch, iteration=st.iteration, best_metric=st.best_metric,
                    best_epoch=st.best_epoch, history=list(st.history))


# ------------------------------------------------------------------------------ epochs
def budget_epochs(cfg: TrainConfig, per_epoch: int) -> TrainConfig:
    """``cfg`` with ``max_epochs`` derived from an exact ``max_iterations`` budget (the
    loader's length known): ceil(budget / per_epoch) epochs, the last one cut short."""
    if cfg.max_iterations is None:
        return cfg
    return dataclasses.replace(cfg, max_epochs=max(1, math.ceil(cfg.max_iterations / per_epoch)))


def train_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """One pass over the loader (cut short at the run's iteration budget); returns the
    epoch's metrics row (losses averaged over steps and ranks, the last learning rate,
    the elapsed time)."""
    cfg, info = run.cfg, run.info
    if run.data.sampler is not None:
        run.data.sampler.set_epoch(epoch)
    run.train_model.train()
    sums: dict[str, float] = {}
    steps = 0
    bar = _progress(run.data.loader, epoch, cfg.max_epochs, info.is_main and cfg.progress)
    for batch in bar:
        if run.progress.iteration >= run.max_it:
            break
        base_lr = effective_base_lr(cfg)
        lr = (
            poly_lr(base_lr, run.progress.iteration, run.max_it, cfg.poly_power)
            if cfg.lr_schedule == "poly" else base_lr
        )
        for group in run.obj.optimizer.param_groups:
            group["lr"] = lr
        loss_value, terms = train_step(run, batch, epoch)
        run.progress.iteration += 1
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
    row: dict[str, Any] = {"epoch": epoch + 1, "iteration": run.progress.iteration}
    for k, v in sums.items():
        key = "loss" if k == "total" else f"loss_{k}"
        row[key] = dist_utils.all_reduce_mean(v / max(steps, 1), info)
    row["lr"] = run.obj.optimizer.param_groups[0]["lr"]
    row["time_s"] = round(time.time() - run.t_start, 2)
    return row


def train_step(run: Run, batch: dict[str, Any], epoch: int) -> tuple[float, dict[str, float]]:
    """Forward, loss (deep supervision and distillation included), backward, step.

    Raises:
        TrainingDiverged: the loss is NaN or Inf on any rank (nothing is stepped).
    """
    info, obj = run.info, run.obj
    x = batch["image"].to(info.device, non_blocking=True)
    y = batch["label"].to(info.device, non_blocking=True)
    if obj.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(info.device.type, dtype=obj.amp_dtype, enabled=obj.use_amp):
        if obj.distill is not None:
            from unetzoo.losses import FeatureTapper

            with FeatureTapper(run.model, obj.distill.taps) as tapper:
                out = run.train_model(x)
            features = tapper.features
        else:
            out = run.train_model(x)
        mode = run.cfg.deep_supervision_loss
        if mode == "auto":  # the model's source: sum (UNet++, UNet 3+), mutation (EMCAD)
            mode = source_deep_supervision_loss(run.model)
        total, terms = supervised_loss(obj.criterion, out, y, mode,
                                       run.cfg.deep_supervision_weights)
        aux = getattr(run.model, "auxiliary_loss", None)  # UNet 3+ CGM: BCE of its branch
        aux = aux(y) if aux is not None else None
        if aux is not None:
            total = total + aux[0]
            terms.update(aux[1])
        if obj.distill is not None:
            d_total, d_terms = obj.distill.loss(features)
            total = total + d_total
            terms.update({f"distill_{k}": float(v) for k, v in d_terms.items()})
            terms["total"] = float(total.detach().item())
    loss_value = float(total.detach().item())
    bad = not math.isfinite(loss_value)
    if info.enabled:
        bad = dist_utils.all_reduce_mean(float(bad), info) > 0
    if bad:
        it = run.progress.iteration
        kept = f"; the last good checkpoint is {run.layout.latest}" if run.layout.latest.exists() else ""
        raise TrainingDiverged(
            f"loss became {loss_value} at epoch {epoch + 1}, iteration {it + 1} (step "
            f"{it + 1} of {run.max_it}){kept}; lower --base-lr or check the data"
        )
    obj.optimizer.zero_grad(set_to_none=True)
    obj.scaler.scale(total).backward()
    obj.scaler.step(obj.optimizer)
    obj.scaler.update()
    return loss_value, terms


def end_epoch(run: Run, epoch: int, row: dict[str, Any]) -> None:
    """Main rank: validate when due, pick the best model, log, write the checkpoints
    and plots; then every rank waits for it."""
    cfg, p = run.cfg, run.progress
    if run.info.is_main:
        val_cases = run.data.val_cases
        do_eval = bool(val_cases) and (epoch + 1 == cfg.max_epochs or (
            (epoch + 1) % cfg.eval_interval == 0 and epoch + 1 >= (cfg.eval_from_epoch or 1)
        ))
        improved = False
        details: dict[str, Any] = {}
        if do_eval:
            row.update(validation_row(run, details))
            # NaN (no class scored) never beats a score, yet the first validation still
            # gives best.pt a model, so the final test has one to load.
            score = -math.inf if math.isnan(row["val_dice"]) else row["val_dice"]
            if score > p.best_metric or p.best_epoch < 0:
                p.best_metric, p.best_epoch, improved = score, epoch + 1, True
        elif not val_cases:
            improved = True  # no validation split: the latest model is the best
            p.best_epoch = epoch + 1
        run.log.append(row)
        if run.writer is not None:
            _log_tensorboard(run.writer, epoch, row, details if do_eval else None)
        save_epoch(run, epoch, improved)
        plot_history(run.log.rows, run.layout.plots)
        msg = f"epoch {epoch + 1}/{cfg.max_epochs}: loss {row.get('loss', float('nan')):.4f}"
        if "val_dice" in row:
            msg += f", val Dice {row['val_dice']:.4f}, val HD95 {row['val_hd95']:.2f}"
            msg += " (best)" if improved else ""
        print(msg, flush=True)
    dist_utils.barrier(run.info)


def validation_row(run: Run, details: dict[str, Any]) -> dict[str, float]:
    """``val_dice``, ``val_hd95`` (:func:`unetzoo.engine.evaluation.validate`) and
    ``val_loss``; ``details`` receives the per-class Dice and samples for TensorBoard."""
    d, cfg = run.data, run.cfg
    val = run.hooks.validate(run.model, d.ds, d.val_split, d.val_cases, cfg, run.info.device,
                             collect=details if run.writer is not None else None)
    val["val_loss"] = validation_loss(
        run.model, d.ds, d.val_split, d.val_cases, run.obj.val_criterion, cfg.img_size,
        cfg.batch_size, run.info.device,
    )
    return val


def _log_tensorboard(writer, epoch: int, row: dict[str, Any], details: dict[str, Any] | None) -> None:
    for k, v in row.items():
        if k != "epoch" and isinstance(v, (int, float)):
            tag = k.replace("_", "/", 1) if k.startswith("val_") else f"train/{k}"
            writer.add_scalar(tag, v, epoch + 1)
    if details is not None:  # per-class Dice and a few overlays (engine/logging/tensorboard)
        log_validation(writer, epoch + 1, details.get("per_class_dice", {}),
                       details.get("samples", ()))
    writer.flush()


def save_epoch(run: Run, epoch: int, improved: bool) -> None:
    """Write ``latest.pt`` then, when the epoch improved, ``best.pt`` (the order crash
    repair relies on, see :func:`~unetzoo.engine.checkpoint.repair_best`)."""
    obj, p, d = run.obj, run.progress, run.data
    rng = capture_rng_state(d.generator)
    rng["distill"] = obj.distill_gen.get_state()
    if hasattr(d.train_set, "rng"):
        rng["dataset"] = json.dumps(d.train_set.rng.bit_generator.state)
    state = TrainState(
        optimizer=obj.optimizer.state_dict(),
        scaler=obj.scaler.state_dict() if obj.use_amp else {},
        epoch=epoch + 1,
        iteration=p.iteration,
        max_iterations=run.max_it,
        best_metric=float(p.best_metric) if math.isfinite(p.best_metric) else -1.0,
        best_epoch=p.best_epoch,
        history=run.log.rows,
        rng=rng,
    )
    ckpt = dataclasses.replace(run.base, weights=_unwrap(run.model).state_dict(),
                               train_state=state)
    step = _checkpoint_steps(run, epoch + 1)
    step("before-latest")
    write_checkpoint(ckpt, run.layout.latest, on_written=lambda _: step("tmp-latest"))
    step("between-writes")
    if improved:
        write_checkpoint(ckpt, run.layout.best, on_written=lambda _: step("tmp-best"))
    step("after-best")


def _checkpoint_steps(run: Run, epoch: int) -> Callable[[str], None]:
    """``step(name)``: tells ``on_checkpoint`` (if any) that the writes reached ``name``."""
    hook = run.hooks.on_checkpoint
    return (lambda name: hook(name, epoch)) if hook is not None else (lambda name: None)


def final_test(run: Run) -> dict[str, Any] | None:
    """Write ``final.pt`` (:func:`~unetzoo.engine.selection.write_final`), then ``unetzoo
    test`` of the checkpoint ``cfg.select`` picks (``final.pt`` by default) on the test
    split into ``report/`` (when asked and the dataset has test cases); None otherwise."""
    cfg, ds = run.cfg, run.data.ds
    step = _checkpoint_steps(run, cfg.max_epochs)
    write_final(run.layout, on_written=lambda _: step("tmp-final"))
    if not (cfg.test and "test" in ds.splits() and ds.cases("test")):
        return None
    chosen = choose_checkpoint(run.layout, cfg.select, paper_protocol=cfg.paper_protocol,
                               validated=bool(run.data.val_cases),
                               best_metric=run.progress.best_metric)
    print(f"testing {chosen.path}: {chosen.reason}", flush=True)
    return run.hooks.test(
        chosen.path,
        selection=chosen,
        dataset=ds,
        out_dir=run.layout.report_dir,
        max_cases=cfg.test_max_cases,
        protocol=cfg.protocol,
        device=run.info.device,
    )


def _progress(loader, epoch: int, max_epochs: int, enabled: bool):
    if not enabled:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=f"epoch {epoch + 1}/{max_epochs}", leave=False, dynamic_ncols=True)


def _tensorboard(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency, but keep training without it
        return None
    return SummaryWriter(log_dir=str(log_dir))
