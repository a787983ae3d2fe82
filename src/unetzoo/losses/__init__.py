"""Losses: segmentation losses by name (``build_loss``) and feature distillation."""

from unetzoo.losses.segmentation import (
    DEEP_SUPERVISION_LOSSES,
    DEFAULT_WEIGHTS,
    BinarySegmentationLoss,
    SegmentationLoss,
    build_loss,
    deep_supervision_loss,
    list_losses,
    mutation_loss,
    mutation_subsets,
    soft_dice_per_class,
)

__all__ = [
    "DEEP_SUPERVISION_LOSSES",
    "DEFAULT_WEIGHTS",
    "BinarySegmentationLoss",
    "SegmentationLoss",
    "build_loss",
    "deep_supervision_loss",
    "list_losses",
    "mutation_loss",
    "mutation_subsets",
    "soft_dice_per_class",
]

# Feature distillation (issue 6) lives in its own module, written separately; the guard
# keeps this package importable until that module exists.
try:
    from unetzoo.losses.distillation import FeatureDistillationLoss, FeatureTapper
except ModuleNotFoundError as exc:
    if exc.name != "unetzoo.losses.distillation":
        raise
else:
    __all__ += ["FeatureDistillationLoss", "FeatureTapper"]
