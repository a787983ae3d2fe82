"""Tiny hostile inputs for the garbage / traceback tests: checkpoints, volumes, images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

IMG_SIZE = 32
CLASSES = ["background", "a", "b"]


def save_tiny_checkpoint(path: Path, *, img_size: Any = IMG_SIZE, options: dict | None = None,
                         preprocessing: dict | None = None, state_fn=None,
                         model_options_stored: dict | None = None) -> Path:
    """A random 4-wide U-Net in the checkpoint file layout (CT window spec). Written as a
    raw dict, not through ``write_checkpoint``: the values may be hostile on purpose."""
    from unetzoo import create_model
    from unetzoo.data.preprocessing import ct_spec
    from unetzoo.engine.checkpoint import FORMAT, VERSION

    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=len(CLASSES),
                         **(options or {"base_channels": 4}))
    state = model.state_dict()
    if state_fn is not None:
        state_fn(state)
    stored = dict(model.unetzoo_options)
    stored.update(model_options_stored or {})
    spec = {"model": {"name": "unet", "options": stored}, "class_names": list(CLASSES),
            "in_channels": 1, "img_size": img_size, "preprocessing": preprocessing or ct_spec(),
            "dataset": "phantom"}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "version": VERSION, "spec": spec, "config": {},
                "weights": state, "train_state": None}, path)
    return path


def ct_volume(shape=(3, 40, 40), seed: int = 0) -> np.ndarray:
    """A phantom CT volume in HU, ``(D, H, W)`` int16."""
    from unetzoo.data.phantom import make_ct_case

    hu, _ = make_ct_case(np.random.default_rng(seed), shape=shape)
    return hu


def save_volume(arr_dhw: np.ndarray, path: Path, zooms=(1.5, 1.5, 4.0)) -> Path:
    """Write a ``(D, H, W)`` array as NIfTI in file ``(W, H, D)`` order."""
    import nibabel as nib

    affine = np.diag([*zooms, 1.0])
    nib.save(nib.Nifti1Image(np.transpose(arr_dhw, (2, 1, 0)), affine), str(path))
    return path


def cli_error(capsys: Any, argv: list) -> str:
    """Run the CLI, expect exit 2 and exactly one ``error:`` line, no traceback; the line."""
    from unetzoo.cli.main import main

    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("\r")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]
