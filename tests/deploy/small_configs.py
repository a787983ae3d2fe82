"""Small configurations of every zoo model, for fast export and parity tests.

Widths are cut to a few channels and Transformers to one block at a small fixed size;
the graph structure (what the exporter has to express) is the same as at full size.
A model missing here is exported with its defaults (pretrained weights off).
"""

from __future__ import annotations

from typing import Any

import numpy as np

SMALL: dict[str, dict[str, Any]] = {
    "unet": {"base_channels": 4},
    "unet_paper": {"base_channels": 4},
    "unet_selfreg": {"base_channels": 4},
    "unetpp": {"base_channels": 4},
    "unet3p": {"base_channels": 4},
    "resunetpp": {"widths": (4, 8, 8, 16, 16)},
    "swin_unet": {
        "img_size": 32, "patch_size": 4, "embed_dim": 8, "depths": (1, 1, 1, 1),
        "num_heads": (1, 1, 2, 2), "window_size": 2, "drop_path_rate": 0.0,
    },
    "transunet": {
        "img_size": 32, "hidden_size": 16, "num_layers": 1, "num_heads": 2, "mlp_dim": 16,
        "resnet_layers": (1, 1, 1), "resnet_width": 32, "decoder_channels": (8, 8, 4, 4),
        "head_channels": 16,
    },
    "emcad": {
        "embed_dims": (8, 16, 16, 32), "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1),
        "drop_path_rate": 0.0,
    },
}
# Families whose width is an option: ResNet-encoder U-Nets keep the encoder, thin decoder.
_PREFIX: dict[str, dict[str, Any]] = {
    "resnet": {"decoder_channels": (16, 8, 8, 4)},
    "resunet_v": {"width_scale": 0.125},
}


def small_config(name: str, accepted: set[str] | None = None) -> dict[str, Any]:
    """Options for a small ``name``; ``encoder_weights`` forced off (no downloads)."""
    cfg: dict[str, Any] = dict(SMALL.get(name, {}))
    if name not in SMALL:
        for prefix, opts in _PREFIX.items():
            if name.startswith(prefix):
                cfg.update(opts)
    if accepted is None or "encoder_weights" in accepted:
        cfg["encoder_weights"] = None
    if accepted is not None:
        cfg = {k: v for k, v in cfg.items() if k in accepted}
    return cfg


def best_slice(labels: np.ndarray) -> int:
    """The slice with the most labelled classes (then the most foreground)."""
    keys = [(len(np.unique(s)), int((s > 0).sum())) for s in labels]
    return max(range(len(keys)), key=lambda i: keys[i])
