"""Checkpoints: one typed :class:`Checkpoint`, one reader, atomic writes, crash repair
(run folders: engine/run_folder.py).

A checkpoint file is a ``torch.save``d dict of tensors, numbers, strings, lists and
dicts, so ``torch.load(weights_only=True)`` reads it without running pickled code. Its
layout (format version :data:`VERSION`) is the :class:`Checkpoint` fields::

    {"format": "unetzoo-checkpoint", "version": 2,
     "spec": InferenceSpec.to_dict(),    # model name + options, classes, img_size, ...
     "config": TrainConfig.to_dict(),    # {} for a checkpoint not written by training
     "weights": model.state_dict(),
     "train_state": {...} | None,        # what --resume needs (:class:`TrainState`)
     "postprocessing": plan | None}      # an unetzoo.engine.postprocess plan

:func:`read_checkpoint` is the only reader and :func:`write_checkpoint` the only writer;
nothing outside this module looks inside the dict. The model is rebuilt from the spec
alone (:meth:`Checkpoint.build_model`). Files of an older format are refused in one line
(retrain, or use the unetzoo that wrote them): there is no conversion.

Crash consistency: each epoch writes ``latest.pt`` first, then (when the epoch improved)
``best.pt``, each atomically. A kill between the two leaves a ``latest.pt`` whose
``best_epoch`` is its own ``epoch`` while ``best.pt`` is older; :func:`repair_best`
(run on ``--resume``) then copies ``latest.pt`` to ``best.pt``, the only state that
write order allows. :class:`unetzoo.engine.run_folder.RunFolder` guards the run folder.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import pickle
import random
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unetzoo.engine.spec import InferenceSpec
from unetzoo.errors import CheckpointError, ModelError

FORMAT = "unetzoo-checkpoint"
#: Format version: 2 groups the file into spec / config / weights / train_state; files of
#: version 1 (a flat dict) are refused.
VERSION = 2
REQUIRED_KEYS = ("spec", "config", "weights", "train_state")
_TRAIN_KEYS = ("optimizer", "epoch", "iteration")


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_LOW_SPACE = 64 << 20  # below this, a failed torch.save write is taken as a full disk


@dataclass(frozen=True, eq=False)  # tensors inside: identity, not element-wise, equality
class TrainState:
    """What ``--resume`` needs besides the weights (and what run bookkeeping reads).

    Attributes:
        optimizer: the optimizer's ``state_dict``.
        scaler: the AMP grad scaler's ``state_dict`` (``{}`` without AMP).
        epoch: epochs completed.
        iteration: optimizer steps taken.
        max_iterations: the run's step budget (0: unknown).
        best_metric: best mean validation Dice so far (-1.0: none yet).
        best_epoch: the epoch that reached it (-1: none).
        history: one metrics row per epoch (``metrics.csv``'s rows).
        rng: the generator states of :func:`capture_rng_state` (plus the run's own).
    """

    optimizer: dict[str, Any]
    epoch: int
    iteration: int
    scaler: dict[str, Any] = field(default_factory=dict)
    max_iterations: int = 0
    best_metric: float = -1.0
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    rng: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TrainState:
        """Read and check ``data`` (one-line CheckpointError when damaged)."""
        if not isinstance(data, Mapping) or any(k not in data for k in _TRAIN_KEYS):
            raise CheckpointError(f"{where}: train_state is damaged (it needs "
                                  f"{', '.join(_TRAIN_KEYS)}); use another checkpoint")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise CheckpointError(f"{where}: train_state holds unknown key(s) "
                                  f"{', '.join(map(str, unknown))}; the file is damaged")
        values = dict(data)
        for key in ("epoch", "iteration", "max_iterations", "best_epoch"):
            if key in values and not _is_int(values[key]):
                raise CheckpointError(f"{where}: train_state {key} is {values[key]!r}, not a "
                                      "whole number; the file is damaged")
        metric = values.get("best_metric", -1.0)
        if not isinstance(metric, (int, float)) or isinstance(metric, bool):
            raise CheckpointError(f"{where}: train_state best_metric is {metric!r}, not a "
                                  "number; the file is damaged")
        values["best_metric"] = float(metric)
        return cls(**values)


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A unetzoo checkpoint as :func:`read_checkpoint` returns it.

    Attributes:
        spec: the inference spec (model name and options, class names, ``img_size`` -
            stored here only; the config's copy is checked against it - preprocessing, ...).
        weights: the model's ``state_dict`` (checked finite).
        config: the training configuration's values (:meth:`TrainConfig.to_dict`);
            ``{}`` when the file was not written by ``unetzoo train``.
        train_state: what ``--resume`` needs; None for an inference-only file.
        postprocessing: a post-processing plan stored with the model, or None.

    Class counts: :attr:`num_classes` is the number of classes *including background*
    (``len(spec.class_names)``), everywhere in this module; the model's output channels
    are the constructor's ``num_classes`` and must equal it.
    """

    spec: InferenceSpec
    weights: Mapping[str, torch.Tensor]
    config: Mapping[str, Any] = field(default_factory=dict)
    train_state: TrainState | None = None
    postprocessing: Mapping[str, Any] | None = None

    @property
    def num_classes(self) -> int:
        """Classes including background."""
        return self.spec.num_classes

    @property
    def epoch(self) -> int | None:
        """Epochs completed (None for an inference-only file)."""
        return None if self.train_state is None else self.train_state.epoch

    def to_dict(self) -> dict[str, Any]:
        """The file's content (without ``format`` / ``version``)."""
        return {
            "spec": self.spec.to_dict(),
            "config": dict(self.config),
            "weights": dict(self.weights),
            "train_state": None if self.train_state is None else self.train_state.to_dict(),
            "postprocessing": None if self.postprocessing is None else dict(self.postprocessing),
        }

    def build_model(self, device: str | torch.device = "cpu") -> nn.Module:
        """The model the spec describes with these weights, in eval mode.

        Deep supervision is off (eval forward returns the final logits anyway); a
        pretrained encoder is never read (:func:`offline_options`).

        Raises:
            CheckpointError: the spec's model cannot be built, its size or its fixed input
                size disagree with the weights or ``img_size``, or the weights do not fit.
        """
        from unetzoo.models import create_model

        name = self.spec.model
        options = dict(self.spec.options)
        # Not int(): create_model type-checks them and a damaged value is then one line.
        in_channels = options.pop("in_channels", self.spec.in_channels)
        outputs = options.pop("num_classes", self.num_classes)
        options = offline_options(name, options)
        if outputs != self.num_classes:
            raise CheckpointError(
                f"checkpoint is inconsistent: the model has {outputs} outputs but "
                f"{self.num_classes} class names"
            )
        try:
            # On the meta device first: absurd stored widths must not allocate anything.
            check_rebuild_size(name, in_channels, outputs, options, self.weights)
            model = create_model(name, in_channels=in_channels, num_classes=outputs, **options)
        except ModelError as exc:
            raise CheckpointError(f"checkpoint model cannot be rebuilt: {exc}") from exc
        fixed = getattr(model, "fixed_input_size", None)
        if fixed is not None and int(fixed) != self.spec.img_size:
            raise CheckpointError(
                f"checkpoint is inconsistent: model {name!r} takes {fixed} x {fixed} inputs "
                f"but img_size is {self.spec.img_size}; the file is damaged"
            )
        try:
            model.load_state_dict(self.weights)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(
                f"checkpoint weights do not fit model {name!r}: {first[:160]}"
            ) from exc
        return model.to(device).eval()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _disk_full(exc: BaseException, folder: Path) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in _DISK_FULL
    # torch's zip writer reports a failed write as RuntimeError ("unexpected pos ...",
    # "file write failed") without an errno: judge by the space left.
    try:
        return shutil.disk_usage(folder).free < _LOW_SPACE
    except OSError:
        return False


def disk_full_error(exc: OSError, run_dir: str | Path | None) -> CheckpointError | None:
    """``"disk full at PATH"`` for an ENOSPC/EDQUOT ``exc`` raised anywhere in a run (logs,
    plots, caches), naming the last good checkpoint; None for any other error."""
    if exc.errno not in _DISK_FULL:
        return None
    where = exc.filename or run_dir or "the output folder"
    kept = ""
    if run_dir is not None and (Path(run_dir) / "checkpoints" / "latest.pt").is_file():
        kept = f"; the last good checkpoint {Path(run_dir) / 'checkpoints' / 'latest.pt'} is intact"
    return CheckpointError(f"disk full at {where}{kept}; free space and continue with --resume")


OnWritten = Callable[[Path], None]


def write_checkpoint(ckpt: Checkpoint, path: str | Path, *,
                     on_written: OnWritten | None = None) -> Path:
    """Write ``ckpt`` atomically: a temporary file in the same folder, then rename.

    A crash mid-write leaves the previous file intact (and a ``.NAME.*.tmp`` file that
    :class:`~unetzoo.engine.run_folder.RunFolder` removes on the next run).
    ``on_written(tmp)`` is called once the temporary file is complete and synced, before
    the rename (the kill tests stop the process there). Returns the final path.

    Raises:
        CheckpointError: ``"disk full at PATH"`` when the disk is full, one line for any
            other write failure; the previous file at ``path`` is untouched either way.
    """
    return _write({"format": FORMAT, "version": VERSION, **ckpt.to_dict()}, Path(path),
                  on_written)


def _write(data: dict[str, Any], path: Path, on_written: OnWritten | None) -> Path:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            torch.save(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if on_written is not None:
            on_written(Path(tmp))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        full = _disk_full(exc, path.parent)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        kept = (f"; the last good checkpoint {path} is intact" if path.exists()
                else "; no earlier checkpoint existed")
        if full:
            raise CheckpointError(f"disk full at {path}{kept}; free space and continue "
                                  "with --resume") from exc
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"cannot write checkpoint {path} ({first}){kept}") from exc
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """The one reader: a unetzoo checkpoint file, read with ``weights_only=True``, checked.

    Raises:
        CheckpointError: one line when the file is missing, unreadable, corrupt, holds
            pickled objects, is not a unetzoo checkpoint (e.g. a bare state dict), was
            written by another format version, lacks a field, or holds values that
            cannot be right (a damaged spec, NaN weights, a config ``img_size`` that is
            not the spec's).
    """
    p = Path(path)
    data = _load_file(p, map_location)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{p} is not a unetzoo checkpoint (no 'format: {FORMAT}' key); "
            "use a checkpoint written by `unetzoo train`"
        )
    _check_version(data.get("version", 0), p)
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"checkpoint {p} lacks key(s) {', '.join(missing)}; it is incomplete")
    spec = InferenceSpec.from_dict(data["spec"], str(p))
    config = data["config"]
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {p}: config is {type(config).__name__}, not a mapping; "
                              "the file is damaged")
    if "img_size" in config and config["img_size"] != spec.img_size:
        raise CheckpointError(f"checkpoint {p} is inconsistent: its config says img_size "
                              f"{config['img_size']!r}, its spec {spec.img_size}; the file is damaged")
    weights = data["weights"]
    if not isinstance(weights, dict) or not all(torch.is_tensor(v) for v in weights.values()):
        raise CheckpointError(f"checkpoint {p}: weights are not a mapping of names to tensors; "
                              "the file is damaged")
    check_finite_weights(weights, p)
    state = data["train_state"]
    plan = data.get("postprocessing")
    if plan is not None and not isinstance(plan, dict):
        raise CheckpointError(f"checkpoint {p}: postprocessing is not a plan; the file is damaged")
    return Checkpoint(
        spec=spec, weights=weights, config=config, postprocessing=plan,
        train_state=None if state is None else TrainState.from_dict(state, f"checkpoint {p}"),
    )


def _check_version(version: Any, p: Path) -> None:
    if not _is_int(version) or version < 0:
        raise CheckpointError(f"{p} has checkpoint version {version!r}, not a whole number; "
                              "use a checkpoint written by `unetzoo train`")
    if version > VERSION:
        raise CheckpointError(f"{p} has checkpoint version {version}, newer than this unetzoo "
                              f"reads ({VERSION}); upgrade unetzoo")
    if version < VERSION:
        raise CheckpointError(
            f"{p} was written by an older unetzoo (format {version}; this one reads format "
            f"{VERSION}); retrain the model, or use the unetzoo version that wrote it"
        )


def _load_file(p: Path, map_location: str | torch.device) -> Any:
    """``torch.load(p, weights_only=True)`` with every failure as one CheckpointError."""
    from unetzoo.data.io import special_file

    if special_file(p):
        raise CheckpointError(f"checkpoint {p} is {special_file(p)}, not a file; pass the "
                              "path of a .pt file")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist; pass the path of a .pt file")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError) as exc:
        text = str(exc).strip()
        if text.startswith("Weights only load failed"):
            # torch's long advice about weights_only=False: never the fix for a user here.
            detail = "it holds pickled Python objects or is not a torch file"
        elif _is_torch_export_archive(p):
            raise CheckpointError(
                f"{p} is a torch.export program (.pt2), not a checkpoint; pass the .pt "
                "file that `unetzoo train` wrote (unetzoo never loads .pt2 programs: "
                "loading one can run code)"
            ) from exc
        else:
            detail = text.splitlines()[0][:120] if text else type(exc).__name__
        raise CheckpointError(
            f"cannot read checkpoint {p}: the file is corrupt or not a safe torch file "
            f"({detail}); use a checkpoint written by `unetzoo train`"
        ) from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {p}: {exc.strerror or exc}") from exc


def _is_torch_export_archive(p: Path) -> bool:
    try:
        with zipfile.ZipFile(p) as zf:
            return any(n.endswith("/archive_format") or "/extra/" in n for n in zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def offline_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with ``encoder_weights`` off whenever the model takes it, stored or not.

    A trained checkpoint's state dict overwrites any pretrained encoder, so rebuilding it
    never reads (or downloads) the original weight file: a checkpoint whose stored options
    leave ``encoder_weights`` out would otherwise take the rung default (``"imagenet"``).
    """
    from unetzoo.models import get_entry

    try:
        accepted = get_entry(name).accepted_options()
    except ModelError:
        return options  # an unknown name is reported by create_model, in one line
    if "encoder_weights" in (options if accepted is None else accepted):
        options["encoder_weights"] = None
    return options


def check_finite_weights(weights: torch.nn.Module | dict[str, Any], where: str | Path) -> None:
    """One line if any weight or buffer (of a model or a state dict) is NaN/Inf: such a
    model predicts background (argmax of NaN) everywhere, which looks like an answer."""
    if isinstance(weights, torch.nn.Module):
        items = [*weights.named_parameters(), *weights.named_buffers()]
    else:
        items = [(k, v) for k, v in weights.items() if torch.is_tensor(v)]
    for name, t in items:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(
                f"{where}: weight {name} holds NaN or Inf (a diverged or damaged training); "
                "use an earlier checkpoint"
            )


def check_rebuild_size(
    name: str, in_channels: int, num_classes: int, options: dict[str, Any], state: Any
) -> None:
    """Raise :class:`CheckpointError` unless the model that ``options`` describe holds as many
    values as ``state``; built on the meta device, so a checkpoint whose options say
    ``base_channels=10**6`` is refused without allocating its weights."""
    from unetzoo.models import create_model

    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError("checkpoint weights are not a mapping of names to tensors")
    with torch.device("meta"):
        shell = create_model(name, in_channels=in_channels, num_classes=num_classes, **options)
    shell_state = shell.state_dict()
    want = sum(t.numel() for t in shell_state.values())
    # Deep-supervision heads (trained, recorded off) are dropped at load (UNet++, UNet 3+).
    have = sum(t.numel() for k, t in state.items()
               if k in shell_state or not k.startswith("aux_heads."))
    if want != have:
        raise CheckpointError(
            f"checkpoint weights do not fit model {name!r}: its stored options describe "
            f"{want:,} weight values but the file holds {have:,}; the options or the "
            "weights are damaged"
        )


# ---------------------------------------------------------------------------- RNG states
def capture_rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python, NumPy, torch (CPU and CUDA) and DataLoader-generator states, as tensors/lists."""
    version, pystate, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(pystate), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["loader"] = generator.get_state()
    return state


def restore_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"].cpu())


# ------------------------------------------------------------------ crash repair
def _peek(path: Path) -> dict[str, Any] | None:
    """A file of this format (memory-mapped, weights-only, unchecked), or None."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an unreadable file is "no usable checkpoint"
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        return None
    return data


def is_checkpoint(path: str | Path) -> bool:
    """True when ``path`` is a readable file of this checkpoint format (not checked
    further; memory-mapped: the weights are not read)."""
    return Path(path).is_file() and _peek(Path(path)) is not None


def read_train_state(path: str | Path) -> TrainState | None:
    """The bookkeeping of a checkpoint of ours (run folders, crash repair, the final copy):
    its :class:`TrainState`, or None when the file is missing, unreadable, not ours,
    damaged or inference-only. Memory-mapped: the weights are not read."""
    data = _peek(Path(path)) if Path(path).is_file() else None
    try:
        return TrainState.from_dict(data["train_state"], str(path)) if data else None
    except (CheckpointError, KeyError, TypeError):
        return None


def copy_checkpoint(src: str | Path, dst: str | Path, *,
                    on_written: OnWritten | None = None) -> Path:
    """Copy the checkpoint ``src`` to ``dst`` atomically (as :func:`write_checkpoint`).

    Raises:
        CheckpointError: ``src`` is not a readable checkpoint of ours; a failed write.
    """
    data = _peek(Path(src))
    if data is None:
        raise CheckpointError(f"cannot copy checkpoint {src}: it is not a readable unetzoo "
                              f"checkpoint of format {VERSION}")
    return _write(data, Path(dst), on_written)


def repair_best(ckpt_dir: str | Path, latest: str | Path | None = None) -> str | None:
    """Make ``best.pt`` agree with ``latest.pt`` after a crash; returns what was done.

    ``latest`` is the checkpoint being resumed (default ``ckpt_dir/latest.pt``).

    Writes go ``latest.pt`` then ``best.pt``, so the one disagreement a crash can leave
    is a ``latest.pt`` that records itself as the best epoch (``best_epoch == epoch``)
    beside an older or missing ``best.pt``: then ``latest.pt`` *is* the best model and is
    copied. Any other mismatch cannot come from an interruption and is reported, not hidden.

    Returns:
        None when nothing needed doing, else a one-line note for the log.
    """
    d = Path(ckpt_dir)
    source = Path(latest) if latest is not None else d / "latest.pt"
    state = read_train_state(source)
    if state is None:
        return None
    best_path = d / "best.pt"
    best = read_train_state(best_path)
    best_at = None if best is None else best.epoch
    if state.best_epoch < 1 or best_at == state.best_epoch:
        return None
    if state.best_epoch == state.epoch:
        copy_checkpoint(source, best_path)
        was = f"epoch {best_at}" if best_at is not None else "missing"
        return (f"repaired {best_path}: it was {was}, the run's best is epoch "
                f"{state.best_epoch} (an interrupted write); copied from {source.name}")
    return (f"warning: {best_path} holds epoch {best_at}, but the run records epoch "
            f"{state.best_epoch} as its best; --select best scores {best_path} as it is")
