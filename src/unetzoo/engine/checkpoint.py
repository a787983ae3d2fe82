"""Checkpoints: atomic writes, safe reads, models rebuilt from the checkpoint alone.

A checkpoint is a ``torch.save``d dict of tensors, numbers, strings, lists and dicts,
so ``torch.load(weights_only=True)`` reads it without running pickled code. The keys are
documented in ``docs/internals.md``; :func:`load_checkpoint` and
:func:`model_from_checkpoint` are the only readers.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unetzoo.errors import CheckpointError, ModelError

FORMAT = "unetzoo-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("model", "state_dict", "class_names", "in_channels", "img_size")


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` atomically: a temporary file in the same folder, then rename.

    A crash mid-write leaves the previous file intact. ``format`` and ``version`` are
    added. Returns the final path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "version": VERSION, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
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
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist; pass the path of a .pt file")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError) as exc:
        text = str(exc).strip()
        if text.startswith("Weights only load failed"):
            # torch's long advice about weights_only=False: never the fix for a user here.
            detail = "it holds pickled Python objects or is not a torch file"
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
    if int(ckpt.get("version", 0)) > VERSION:
        raise CheckpointError(
            f"{p} has checkpoint version {ckpt.get('version')}, newer than this unetzoo "
            f"reads ({VERSION}); upgrade unetzoo"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {p} lacks key(s) {', '.join(missing)}; it is incomplete")
    return ckpt


def model_from_checkpoint(
    ckpt: dict[str, Any], device: str | torch.device = "cpu"
) -> nn.Module:
    """Rebuild the model recorded in ``ckpt`` and load its weights; eval mode.

    Deep supervision is switched off (eval forward returns the final logits anyway).
    """
    from unetzoo.models import create_model

    spec = ckpt["model"]
    options = dict(spec.get("options") or {})
    in_channels = int(options.pop("in_channels", ckpt["in_channels"]))
    num_classes = int(options.pop("num_classes", len(ckpt["class_names"])))
    if "encoder_weights" in options:
        # The state dict below overwrites any pretrained encoder: never download or
        # read the original weight file again (it may not exist on this machine).
        options["encoder_weights"] = None
    if num_classes != len(ckpt["class_names"]):
        raise CheckpointError(
            f"checkpoint is inconsistent: the model has {num_classes} outputs but "
            f"{len(ckpt['class_names'])} class names"
        )
    try:
        model = create_model(spec["name"], in_channels=in_channels, num_classes=num_classes, **options)
    except ModelError as exc:
        raise CheckpointError(f"checkpoint model cannot be rebuilt: {exc}") from exc
    state = ckpt["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(
            f"checkpoint weights do not fit model {spec['name']!r}: {first[:160]}"
        ) from exc
    return model.to(device).eval()


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
