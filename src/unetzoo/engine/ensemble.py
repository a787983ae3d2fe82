"""Ensembles of checkpoints (e.g. the five folds of a cross-validation): averaged softmax.

As nnU-Net's ``nnUNetv2_predict -f 0 1 2 3 4`` and ``nnUNetv2_ensemble``, the members'
class probabilities are averaged and the label is their argmax. :class:`EnsembleModel`
is an ``nn.Module`` whose forward returns ``log(mean softmax)``; since
``softmax(log p) = p`` for probabilities ``p``, every caller that takes the softmax of a
model's logits (:func:`unetzoo.engine.inference.predict_probs`, ``predict_volume``,
sliding windows, flip TTA) gets the averaged probabilities without knowing it runs an
ensemble.

Members must agree on everything the pipeline reads from a checkpoint besides the
weights: class names, input channels, training image size and intensity preprocessing
(one clear line otherwise). Their architectures may differ.

:func:`predict_volume_probs` gives the probabilities on the input grid for
``--save-probabilities`` (nnU-Net's ``.npz`` with a ``probabilities`` array).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unetzoo.engine.checkpoint import Checkpoint, read_checkpoint
from unetzoo.errors import CheckpointError, DataError

#: What ensemble members must share: the inference spec without the architecture.
MUST_MATCH = ("class_names", "in_channels", "img_size", "preprocessing", "slicing", "resize",
              "plan")
_TINY = 1e-12  # floor before the log: exp(log(0)) would be NaN-prone in half precision


def _probs(out: Any) -> torch.Tensor:
    if isinstance(out, (list, tuple)):  # deep supervision: final output last
        out = out[-1]
    out = out.float()
    if out.shape[1] == 1:  # binary head: background = 1 - sigmoid
        fg = torch.sigmoid(out)
        return torch.cat([1 - fg, fg], dim=1)
    return torch.softmax(out, dim=1)


class EnsembleModel(nn.Module):
    """Averages the softmax of ``members``; forward returns the log of the mean.

    Each member sees the same input; binary one-channel heads are turned into two-class
    probabilities as :func:`unetzoo.engine.inference.predict_probs` does.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise CheckpointError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)
        sizes = {getattr(m, "fixed_input_size", None) for m in members}
        self.fixed_input_size = next(iter(sizes)) if len(sizes) == 1 else None
        first = members[0]
        for attr in ("in_channels", "num_classes", "unetzoo_name"):
            if hasattr(first, attr):
                setattr(self, attr, getattr(first, attr))

    def mean_probs(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for m in self.members:
            p = _probs(m(x))
            total = p if total is None else total + p
        return total / len(self.members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.mean_probs(x).clamp_min(_TINY))


def check_compatible(ckpts: Sequence[Checkpoint], names: Sequence[str]) -> None:
    """One-line CheckpointError when the checkpoints' inference specs disagree on
    :data:`MUST_MATCH`."""
    specs = [ck.spec for ck in ckpts]
    ref, ref_name = specs[0], names[0]
    for spec, name in zip(specs[1:], names[1:]):
        for key in MUST_MATCH:
            a, b = getattr(ref, key), getattr(spec, key)
            if a != b:
                raise CheckpointError(
                    f"cannot ensemble {name} with {ref_name}: {key} differs ({b!r} vs {a!r}); "
                    "ensemble only models trained on the same dataset and settings"
                )


def load_ensemble(
    paths: Sequence[str | Path],
    device: str | torch.device = "cpu",
    wrap: Callable[[nn.Module, str, Checkpoint], nn.Module] | None = None,
) -> tuple[nn.Module, Checkpoint]:
    """``(model, first)`` for one checkpoint (the model itself) or several (an
    :class:`EnsembleModel`); ``first`` is the first member's :class:`Checkpoint`, whose
    spec the others share (:func:`check_compatible`).

    ``wrap(model, path, ckpt)`` replaces each member before the ensemble is formed, e.g.
    with its CPU backend (:func:`unetzoo.engine.backends.make_backend`).
    """
    names = [str(p) for p in paths]
    if not names:
        raise CheckpointError("no checkpoint given")
    if len(set(names)) != len(names):
        raise CheckpointError("the same checkpoint is given twice; give each fold once")
    ckpts = [read_checkpoint(p) for p in names]
    check_compatible(ckpts, names)
    models = [ck.build_model(device) for ck in ckpts]
    if wrap is not None:
        models = [wrap(m, name, ck) for m, name, ck in zip(models, names, ckpts)]
    if len(models) == 1:
        return models[0], ckpts[0]
    ens = EnsembleModel(models).to(device)
    ens.eval()
    return ens, ckpts[0]


def average_probabilities(probs: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of saved probability arrays of one case (e.g. ``.npz`` files of several runs)."""
    if not probs:
        raise DataError("no probabilities to average")
    shapes = {np.shape(p) for p in probs}
    if len(shapes) != 1:
        raise DataError(f"probability arrays differ in shape {sorted(shapes)}; cannot average")
    return np.mean(np.stack([np.asarray(p, dtype=np.float32) for p in probs]), axis=0)


@torch.no_grad()
def predict_volume_probs(
    model: nn.Module,
    image: np.ndarray,
    img_size: int,
    batch_size: int = 16,
    tta: bool = False,
    device: str | torch.device | None = None,
    plan=None,
    spacing=None,
) -> np.ndarray:
    """Class probabilities ``(K, D, H, W)`` float32 of a ``(C, D, H, W)`` volume on its own
    grid, in the same TransUNet slice protocol as ``predict_volume``.

    The probabilities of each ``img_size`` slice are brought back to ``H x W`` with the
    same nearest-neighbour map as the labels, so ``argmax`` over ``K`` equals
    ``predict_volume``'s labels exactly. With a ``plan`` (and the volume's ``spacing``)
    they are :func:`~unetzoo.engine.inference.planned_probs`, as ``predict_volume``'s.
    """
    from unetzoo.engine.inference import planned_probs, predict_probs, resize_cubic, resize_nearest

    if device is None:
        device = next(model.parameters()).device
    vol = torch.as_tensor(np.asarray(image, dtype=np.float32))
    c, d, h, w = vol.shape
    out: np.ndarray | None = None
    for start in range(0, d, batch_size):
        x = vol[:, start : start + batch_size].permute(1, 0, 2, 3).to(device)
        if plan is not None:
            p = planned_probs(model, x, plan, spacing, tta=tta, batch_size=batch_size).cpu().numpy()
        else:
            x = resize_cubic(x, (img_size, img_size))
            p = resize_nearest(predict_probs(model, x, tta=tta), (h, w)).cpu().numpy()
        if out is None:
            out = np.empty((p.shape[1], d, h, w), dtype=np.float32)
        out[:, start : start + p.shape[0]] = np.moveaxis(p, 0, 1)
    assert out is not None
    return out
