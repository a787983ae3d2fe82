"""The model zoo. Importing this package registers every model family."""

from __future__ import annotations

import importlib

from unetzoo.models.registry import (
    ModelEntry,
    PublishedParams,
    Taps,
    count_parameters,
    create_model,
    get_entry,
    list_models,
    model_info,
    parameter_count,
    register_model,
)

# One module per architecture family; each registers its models on import.
FAMILY_MODULES = (
    "unet",
    "resnet_unet",
    "unetpp",
    "unet3p",
    "resunet",
    "resunetpp",
    "transunet",
    "swin_unet",
    "emcad",
)

for _family in FAMILY_MODULES:
    _name = f"unetzoo.models.{_family}"
    try:
        importlib.import_module(_name)
    except ModuleNotFoundError as _exc:  # family not written yet
        if _exc.name != _name:
            raise

__all__ = [
    "ModelEntry",
    "PublishedParams",
    "Taps",
    "count_parameters",
    "create_model",
    "get_entry",
    "list_models",
    "model_info",
    "parameter_count",
    "register_model",
]
