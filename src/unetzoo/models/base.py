"""Shared model plumbing: input checks and padding to the model's size multiple."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unetzoo.errors import ModelError


def check_input(x: torch.Tensor, in_channels: int, model_name: str = "model") -> None:
    """Raise one clear line when ``x`` is not ``(N, in_channels, H, W)``."""
    if x.dim() != 4:
        raise ModelError(
            f"{model_name} expects a 4-D tensor (N, C, H, W), got shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise ModelError(
            f"{model_name} was built for {in_channels} input channel(s) but got "
            f"{x.shape[1]}; rebuild it with in_channels={x.shape[1]}"
        )


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad H and W at the bottom/right up to a multiple; return the original size."""
    h, w = x.shape[-2], x.shape[-1]
    # Pad unconditionally (a zero pad is a no-op) so that a traced or exported graph
    # keeps the padding whatever input size it was captured at.
    ph = (-h) % multiple
    pw = (-w) % multiple
    return F.pad(x, (0, pw, 0, ph)), (h, w)


def crop_to(y: torch.Tensor | list[torch.Tensor], size: tuple[int, int]):
    """Crop logits (or a list of deep-supervision logits) back to ``size``."""
    h, w = size
    if isinstance(y, (list, tuple)):
        return [t[..., :h, :w] for t in y]
    return y[..., :h, :w]


class SegmentationModel(nn.Module):
    """Base class: ``forward`` checks the input, pads to ``size_multiple``, crops back.

    Subclasses set ``in_channels``, ``num_classes`` and ``size_multiple`` and implement
    :meth:`forward_padded` on inputs whose H and W are multiples of ``size_multiple``.
    """

    in_channels: int
    num_classes: int
    size_multiple: int = 1

    def forward(self, x: torch.Tensor):  # noqa: D401 - see class docstring
        check_input(x, self.in_channels, type(self).__name__)
        x, size = pad_to_multiple(x, self.size_multiple)
        return crop_to(self.forward_padded(x), size)

    def forward_padded(self, x: torch.Tensor):
        raise NotImplementedError
