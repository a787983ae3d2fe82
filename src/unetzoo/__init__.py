"""unetzoo: the U-Net family for medical image segmentation.

Public entry points::

    import unetzoo
    unetzoo.list_models("resnet*")
    model = unetzoo.create_model("unet", in_channels=1, num_classes=9)
    unetzoo.get_entry("unet")  # description, source, default options
"""

from __future__ import annotations

from unetzoo.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelError,
    UnetzooError,
)
from unetzoo.models.registry import create_model, get_entry, list_models

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ModelError",
    "UnetzooError",
    "__version__",
    "create_model",
    "get_entry",
    "list_models",
]
