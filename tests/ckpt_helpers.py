"""Tiny checkpoints for tests, written through the typed API (no hand-made file dicts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from unetzoo.engine.checkpoint import Checkpoint, TrainState, write_checkpoint
from unetzoo.engine.spec import InferenceSpec


def model_checkpoint(model: nn.Module, *, class_names, in_channels: int = 1, img_size: int = 32,
                     config: dict[str, Any] | None = None, train_state: TrainState | None = None,
                     postprocessing: dict[str, Any] | None = None, **spec: Any) -> Checkpoint:
    """``model`` (a registry model) and its spec; ``spec`` takes the other
    :meth:`InferenceSpec.for_model` fields (preprocessing, dataset, spacing, ...)."""
    return Checkpoint(
        spec=InferenceSpec.for_model(model, class_names=list(class_names),
                                     in_channels=in_channels, img_size=img_size, **spec),
        weights=model.state_dict(), config=dict(config or {}), train_state=train_state,
        postprocessing=postprocessing,
    )


def save_model_checkpoint(path: str | Path, model: nn.Module, **fields: Any) -> Path:
    """Write :func:`model_checkpoint` to ``path``; returns the path."""
    return write_checkpoint(model_checkpoint(model, **fields), path)
