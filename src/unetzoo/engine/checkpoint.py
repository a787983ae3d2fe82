"""Checkpoints: atomic writes, safe reads, crash repair (run folders: engine/run_folder.py).

A checkpoint is a ``torch.save``d dict of tensors, numbers, strings, lists and dicts,
so ``torch.load(weights_only=True)`` reads it without running pickled code. The keys are
documented in ``docs/internals.md``; :func:`load_checkpoint` and
:func:`model_from_checkpoint` are the only readers.

Crash consistency: each epoch writes ``latest.pt`` first, then (when the epoch improved)
``best.pt``, each atomically. A kill between the two leaves a ``latest.pt`` whose
``best_epoch`` is its own ``epoch`` while ``best.pt`` is older; :func:`repair_best`
(run on ``--resume``) then copies ``latest.pt`` to ``best.pt``, the only state that
write order allows. :class:`unetzoo.engine.run_folder.RunFolder` guards the run folder.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unetzoo.errors import CheckpointError, ModelError

FORMAT = "unetzoo-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("model", "state_dict", "class_names", "in_channels", "img_size")


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_LOW_SPACE = 64 << 20  # below this, a failed torch.save write is taken as a full disk


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


def save_checkpoint(payload: dict[str, Any], path: str | Path, *,
                    on_written: Callable[[Path], None] | None = None) -> Path:
    """Write ``payload`` atomically: a temporary file in the same folder, then rename.

    A crash mid-write leaves the previous file intact (and a ``.NAME.*.tmp`` file that
    :class:`~unetzoo.engine.run_folder.RunFolder` removes on the next run). ``format`` and ``version`` are added.
    ``on_written(tmp)`` is called once the temporary file is complete and synced, before
    the rename (the kill tests stop the process there). Returns the final path.

    Raises:
        CheckpointError: ``"disk full at PATH"`` when the disk is full, one line for any
            other write failure; the previous file at ``path`` is untouched either way.
    """
    path = Path(path)
    data = {"format": FORMAT, "version": VERSION, **payload}
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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a unetzoo checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: one line when the file is missing, unreadable, corrupt, holds
            pickled objects, or is not a unetzoo checkpoint (e.g. a bare state dict).
    """
    p = Path(path)
    from unetzoo.data.io import special_file

    if special_file(p):
        raise CheckpointError(f"checkpoint {p} is {special_file(p)}, not a file; pass the "
                              "path of a .pt file")
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist; pass the path of a .pt file")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
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
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{p} is not a unetzoo checkpoint (no 'format: {FORMAT}' key); "
            "use a checkpoint written by `unetzoo train`"
        )
    version = ckpt.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise CheckpointError(f"{p} has checkpoint version {version!r}, not a whole number; "
                              "use a checkpoint written by `unetzoo train`")
    if version > VERSION:
        raise CheckpointError(
            f"{p} has checkpoint version {ckpt.get('version')}, newer than this unetzoo "
            f"reads ({VERSION}); upgrade unetzoo"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {p} lacks key(s) {', '.join(missing)}; it is incomplete")
    from unetzoo.engine.spec import InferenceSpec

    InferenceSpec.from_checkpoint(ckpt, str(p))  # model, img_size, classes, preprocessing
    if isinstance(ckpt["state_dict"], dict):
        check_finite_weights(ckpt["state_dict"], p)
    return ckpt


def _is_torch_export_archive(p: Path) -> bool:
    try:
        with zipfile.ZipFile(p) as zf:
            return any(n.endswith("/archive_format") or "/extra/" in n for n in zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


# Options whose default changed to the official behaviour after checkpoints were written
# without them. Stored options are the merged ones, so a missing key marks such a
# checkpoint: it is rebuilt as it was trained, never silently as a different function.
LEGACY_OPTIONS: dict[str, dict[str, Any]] = {
    "unet_selfreg": {"align_corners": False, "skip_first": False},
    "unet3p": {"cgm_mode": "background"},
    "emcad": {"gate_activation": None},
    **{f"resnet{d}_unet": {"head_relu": True} for d in (18, 34, 50, 101, 152)},
}


def legacy_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` completed with the pre-change values of options they lack."""
    for key, value in LEGACY_OPTIONS.get(name, {}).items():
        options.setdefault(key, value)
    return options


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


def model_from_checkpoint(
    ckpt: dict[str, Any], device: str | torch.device = "cpu"
) -> nn.Module:
    """Rebuild the model recorded in ``ckpt`` and load its weights; eval mode.

    Deep supervision is switched off (eval forward returns the final logits anyway).
    """
    from unetzoo.models import create_model

    spec = ckpt["model"]
    options = legacy_options(spec["name"], dict(spec.get("options") or {}))
    # Not int(): create_model type-checks them and a damaged value is then one line.
    in_channels = options.pop("in_channels", ckpt["in_channels"])
    num_classes = options.pop("num_classes", len(ckpt["class_names"]))
    options = offline_options(spec["name"], options)
    if num_classes != len(ckpt["class_names"]):
        raise CheckpointError(
            f"checkpoint is inconsistent: the model has {num_classes} outputs but "
            f"{len(ckpt['class_names'])} class names"
        )
    state = ckpt["state_dict"]
    try:
        # On the meta device first: absurd stored widths must not allocate anything.
        check_rebuild_size(spec["name"], in_channels, num_classes, options, state)
        model = create_model(spec["name"], in_channels=in_channels, num_classes=num_classes, **options)
    except ModelError as exc:
        raise CheckpointError(f"checkpoint model cannot be rebuilt: {exc}") from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(
            f"checkpoint weights do not fit model {spec['name']!r}: {first[:160]}"
        ) from exc
    return model.to(device).eval()


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

    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError("checkpoint state_dict is not a mapping of names to tensors")
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
    """A checkpoint's bookkeeping keys (memory-mapped, weights-only), or None if unreadable."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an unreadable file is "no usable checkpoint"
        return None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        return None
    return ck


def repair_best(ckpt_dir: str | Path, latest: dict[str, Any] | None = None) -> str | None:
    """Make ``best.pt`` agree with ``latest.pt`` after a crash; returns what was done.

    ``latest`` is the loaded ``latest.pt`` (read from ``ckpt_dir`` when None). Writes go
    ``latest.pt`` then ``best.pt``, so the one disagreement a crash can leave is a
    ``latest.pt`` that records itself as the best epoch (``best_epoch == epoch``) beside
    an older or missing ``best.pt``: then ``latest.pt`` *is* the best model and is copied.
    Any other mismatch cannot come from an interruption and is reported, not hidden.

    Returns:
        None when nothing needed doing, else a one-line note for the log.
    """
    d = Path(ckpt_dir)
    if latest is None:
        latest = _peek(d / "latest.pt")
        if latest is None:
            return None
    epoch, best_epoch = int(latest.get("epoch", 0)), int(latest.get("best_epoch", -1))
    best_path = d / "best.pt"
    best = _peek(best_path) if best_path.is_file() else None
    best_at = int(best["epoch"]) if best is not None and "epoch" in best else None
    if best_epoch < 1 or best_at == best_epoch:
        return None
    if best_epoch == epoch:
        save_checkpoint({k: v for k, v in latest.items() if k not in ("format", "version")},
                        best_path)
        was = f"epoch {best_at}" if best_at is not None else "missing"
        return (f"repaired {best_path}: it was {was}, the run's best is epoch {best_epoch} "
                "(an interrupted write); copied from latest.pt")
    return (f"warning: {best_path} holds epoch {best_at}, but the run records epoch "
            f"{best_epoch} as its best; --select best scores {best_path} as it is")
