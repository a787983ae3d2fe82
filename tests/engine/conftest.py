"""Shared fixtures for the engine tests: a tiny phantom on disk and a tiny config."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_PHANTOM = {"n_train": 3, "n_test": 1, "shape": [4, 32, 32], "seed": 0}


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A 3-train / 1-test CT phantom of 4 x 32 x 32 voxels in nnU-Net layout."""
    from unetzoo.data.phantom import generate_phantom

    root = tmp_path_factory.mktemp("phantom") / "tiny"
    shape = TINY_PHANTOM["shape"]
    generate_phantom(root, n_train=3, n_test=1, shape=shape, seed=0)
    return root


@pytest.fixture()
def tiny_cfg(tiny_root, tmp_path):
    """A resolved config that trains a 4-channel U-Net on 32 px slices for 2 epochs."""
    from unetzoo.engine.config import resolve_config

    def make(**over):
        flags = {
            "dataset": "phantom",
            "data_root": str(tiny_root),
            "dataset_options": dict(TINY_PHANTOM),
            "model": "unet",
            "model_options": {"base_channels": 4},
            "img_size": 32,
            "batch_size": 4,
            "max_epochs": 2,
            "eval_interval": 1,
            "base_lr": 0.01,
            "optimizer": "adamw",
            "loss": "ce_dice",
            "output": str(tmp_path / "run"),
            "progress": False,
            "test": False,
            "device": "cpu",
        }
        flags.update(over)
        return resolve_config("phantom", None, flags)

    return make


TINY_CLASSES = ["background", "a", "b"]


@pytest.fixture()
def tiny_unet():
    """A seeded 3-class U-Net of width 4 in eval mode, for prediction tests."""
    import torch

    from unetzoo import create_model

    torch.manual_seed(0)
    return create_model("unet", in_channels=1, num_classes=3, base_channels=4).eval()


@pytest.fixture()
def tiny_meta() -> dict:
    """The checkpoint metadata `predict_cases` needs for `tiny_unet` on 16 px slices."""
    return {"img_size": 16, "in_channels": 1, "class_names": list(TINY_CLASSES),
            "preprocessing": {"kind": "none"}}
