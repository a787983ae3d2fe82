"""The model zoo. Importing this package registers every model family.

Family discovery happens here and only here: each family module registers its class's
configurations with :mod:`unetzoo.models.registry` when imported. The registry never
imports this package back (Python runs this file before any submodule is usable).
"""

from __future__ import annotations

# One module per architecture family; each registers its models on import.
from unetzoo.models import (  # noqa: F401
    emcad,
    resnet_unet,
    resunet,
    resunetpp,
    swin_unet,
    transunet,
    unet,
    unet3p,
    unetpp,
)
from unetzoo.models.registry import (
    ModelEntry,
    PublishedParams,
    Taps,
    count_parameters,
    create_model,
    get_entry,
    list_models,
    parameter_count,
    register_model,
)

__all__ = [
    "ModelEntry",
    "PublishedParams",
    "Taps",
    "count_parameters",
    "create_model",
    "get_entry",
    "list_models",
    "parameter_count",
    "register_model",
]
