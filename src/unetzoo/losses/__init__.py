"""Losses: segmentation losses by name (``build_loss``) and feature distillation."""

from unetzoo.losses.distillation import FeatureDistillationLoss, FeatureTapper
from unetzoo.losses.segmentation import (
    DEEP_SUPERVISION_LOSSES,
    DEFAULT_WEIGHTS,
    BinarySegmentationLoss,
    SegmentationLoss,
    build_loss,
    deep_supervision_loss,
    deep_supervision_weights,
    list_losses,
    mutation_loss,
    mutation_subsets,
    soft_dice_per_class,
    source_deep_supervision_loss,
    supervised_loss,
)

# UNet 3+'s branch loss lives with its model (models never import losses).
from unetzoo.models.unet3p import binary_presence_loss

__all__ = [
    "DEEP_SUPERVISION_LOSSES",
    "DEFAULT_WEIGHTS",
    "BinarySegmentationLoss",
    "FeatureDistillationLoss",
    "FeatureTapper",
    "SegmentationLoss",
    "binary_presence_loss",
    "build_loss",
    "deep_supervision_loss",
    "deep_supervision_weights",
    "list_losses",
    "mutation_loss",
    "mutation_subsets",
    "soft_dice_per_class",
    "source_deep_supervision_loss",
    "supervised_loss",
]
