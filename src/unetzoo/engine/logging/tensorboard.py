"""What training writes to TensorBoard beyond the epoch's scalars: the validation loss,
each class's validation Dice and a few validation overlays (nnU-Net's progress plot
shows train and validation loss and per-class pseudo Dice; MONAI's TensorBoard handlers
log images of input, label and output).

Tags: ``train/<term>`` and ``val/dice``, ``val/hd95``, ``val/loss`` (the epoch row),
``val/dice/<class>`` (per class, NaN when no validation case scored it) and images
``val/overlay/<case>`` (ground truth | prediction | error map of the slice with the most
foreground, in radiological orientation with markers; :mod:`.display`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

#: Validation cases shown as images per validation (the first ones, always the same).
IMAGES_PER_VALIDATION = 3
#: Displayed slices are enlarged to at least this many pixels.
IMAGE_MIN_SIZE = 128


@dataclass
class ValidationSample:
    """One slice of a validation case, kept for a TensorBoard image."""

    case: str
    z: int
    image: np.ndarray  # (H, W) first channel
    pred: np.ndarray  # (H, W)
    gt: np.ndarray  # (H, W)
    affine: np.ndarray | None
    ignore_label: int | None
    window: tuple[float, float]


def pick_sample(case, pred: np.ndarray) -> ValidationSample:
    """The slice of ``case`` with the most labelled pixels, as a :class:`ValidationSample`."""
    from unetzoo.engine.logging.display import display_window
    from unetzoo.engine.logging.plots import pick_slices

    ignore = getattr(case, "ignore_label", None)
    z = pick_slices(case.label, 1, ignore_label=ignore)[0]
    return ValidationSample(
        case=str(case.id), z=int(z), image=np.asarray(case.image[0, z]),
        pred=np.asarray(pred[z]), gt=np.asarray(case.label[z]),
        affine=case.affine, ignore_label=ignore, window=display_window(case.image[0]),
    )


def _tag(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", str(name)) or "class"


@torch.no_grad()
def validation_loss(
    model: nn.Module,
    ds: Any,
    split: str,
    cases: Sequence[str],
    criterion: Any,
    img_size: int,
    batch_size: int,
    device: torch.device | str,
) -> float:
    """Mean training loss (``criterion``, ignore label included) over the validation
    slices resized to ``img_size`` as for training, the model in eval mode."""
    from torch.utils.data import DataLoader

    from unetzoo.data.transforms import build_eval_transform

    data = ds.slice_dataset(split, cases=list(cases), transform=build_eval_transform(img_size))
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    # Its own generator: a loader without one draws its base seed from torch's global
    # RNG, which would shift the training stream (and break exact resume).
    loader = DataLoader(data, batch_size=int(batch_size), shuffle=False,
                        generator=torch.Generator().manual_seed(0))
    try:
        for batch in loader:
            x = batch["image"].to(device)
            y = batch["label"].to(device)
            out = model(x)
            if isinstance(out, (list, tuple)):  # deep supervision: the final head
                out = out[-1]
            loss, _ = criterion(out.float(), y)
            total += float(loss) * x.shape[0]
            n += x.shape[0]
    finally:
        model.train(was_training)
    return total / n if n else float("nan")


def log_validation(
    writer: Any,
    step: int,
    per_class_dice: Mapping[str, float],
    samples: Sequence[ValidationSample] = (),
) -> None:
    """Write ``val/dice/<class>`` scalars and ``val/overlay/<case>`` images at ``step``."""
    from unetzoo.engine.logging.display import overlay_image

    if writer is None:
        return
    for name, value in per_class_dice.items():
        v = float(value)
        writer.add_scalar(f"val/dice/{_tag(name)}", v if math.isfinite(v) else float("nan"), step)
    for s in samples:
        rgb = overlay_image(s.image, s.pred, s.gt, affine=s.affine, window=s.window,
                            ignore_label=s.ignore_label, min_size=IMAGE_MIN_SIZE)
        writer.add_image(f"val/overlay/{_tag(s.case)}", rgb, step, dataformats="HWC")
