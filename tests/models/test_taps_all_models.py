"""Every registered model declares feature taps, and the hooks collect them.

Parametrised over ``unetzoo.list_models()`` at collection time, so models registered
later are covered without editing this file. Each model is built at a small width
(width-like options scaled down when the model accepts that) and, unless it has a
``fixed_input_size``, fed a non-square image so a token grid or pooling that assumes
``H == W`` shows up.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import unetzoo
from unetzoo.errors import UnetzooError
from unetzoo.losses.distillation import FeatureDistillationLoss, FeatureTapper
from unetzoo.models import create_model, get_entry

# Options that set a model's width; scaled by 1/8 (ints, or each element of a tuple).
WIDTH_OPTIONS = (
    "base_channels",
    "base_width",
    "width",
    "filters",
    "features",
    "channels",
    "decoder_channels",
    "embed_dim",
    "hidden_size",
    "dims",
    "widths",
    "num_filters",
)
NON_SQUARE = (64, 96)


def _shrink(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return max(4, value // 8)
    if (
        isinstance(value, (tuple, list))
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return type(value)(max(4, v // 8) for v in value)
    return value


def small_model(name: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model at a small width when that builds, else at its defaults."""
    defaults = get_entry(name).default_options()
    small = {k: _shrink(defaults[k]) for k in WIDTH_OPTIONS if k in defaults}
    small = {k: v for k, v in small.items() if v != defaults[k]}
    # Random init, explicitly: rungs whose default is ImageNet weights would download.
    base = {"encoder_weights": None} if "encoder_weights" in defaults else {}
    torch.manual_seed(0)
    if small:
        try:
            return create_model(name, in_channels=1, num_classes=3, **base, **small), small
        except (UnetzooError, ValueError, RuntimeError, AssertionError, TypeError):
            pass  # widths tied to other options (heads, groups): use the defaults
    return create_model(name, in_channels=1, num_classes=3, **base), {}


def _input_size(model: torch.nn.Module) -> tuple[int, int]:
    fixed = getattr(model, "fixed_input_size", None)
    if fixed:
        return (int(fixed), int(fixed))
    return NON_SQUARE


@pytest.mark.parametrize("name", unetzoo.list_models())
def test_hooks_collect_declared_taps(name: str):
    model, small = small_model(name)
    taps = get_entry(name).taps_for(model)
    assert taps is not None, f"model {name!r} declares no feature taps"
    assert taps.final, f"model {name!r} declares no final decoder feature"
    assert taps.encoder or taps.decoder, f"model {name!r} taps no encoder/decoder block"

    model.train()
    h_in, w_in = _input_size(model)
    x = torch.randn(2, 1, h_in, w_in)
    tapper = FeatureTapper(model)
    with tapper:
        out = model(x)
    feats = tapper.features
    assert len(feats["encoder"]) == len(taps.encoder)
    assert len(feats["decoder"]) == len(taps.decoder)
    assert isinstance(feats["final"], torch.Tensor), f"{name}: final feature missing"

    named = list(zip(taps.encoder, feats["encoder"])) + list(zip(taps.decoder, feats["decoder"]))
    named.append((taps.final, feats["final"]))
    for tap, f in named:
        where = f"{name} ({small or 'defaults'}) tap {tap!r} {tuple(f.shape)}"
        assert f.dim() == 4 and f.shape[0] == 2 and f.shape[1] >= 1, where
        h, w = int(f.shape[2]), int(f.shape[3])
        # Padded inputs may be a little larger than x; nothing is larger than 2x.
        assert 1 <= h <= 2 * h_in and 1 <= w <= 2 * w_in, where
        # Same aspect as the input (up to rounding of odd sizes): catches a token
        # sequence put on the wrong grid and channels-last maps.
        assert abs(h * w_in - w * h_in) <= max(h_in, w_in), where
        assert torch.isfinite(f).all(), where
    # The teacher is a late decoder feature: at least as fine as the deepest tap.
    deepest = min(int(f.shape[2]) for _, f in named)
    assert feats["final"].shape[2] >= deepest

    logits = out[-1] if isinstance(out, (list, tuple)) else out
    assert logits.shape[-2:] == (h_in, w_in)
    total, terms = FeatureDistillationLoss(generator=torch.Generator().manual_seed(0))(feats)
    assert torch.isfinite(total) and set(terms) == {"ifd", "scr"}
    (total + 0.0 * logits.sum()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads), f"{name}: no gradient reached"
    # Hooks are gone after the with-block: a second forward collects nothing.
    assert not any(m._forward_hooks for m in tapper.modules.values())


@pytest.mark.parametrize(
    "name, n_enc, n_dec, per_stage",
    [("unet_selfreg", 4, 3, (1, 1)), ("unet", 4, 3, (1, 1)), ("swin_unet", 8, 6, (2, 2))],
)
def test_reference_groupings(name: str, n_enc: int, n_dec: int, per_stage: tuple[int, int]):
    """U-Net: 4 encoder + 3 decoder taps, one group; Swin-UNet: (first, last) per stage."""
    if name not in unetzoo.list_models():
        pytest.skip(f"{name} is not registered")
    model, _ = small_model(name)
    tapper = FeatureTapper(model)
    assert (len(tapper.taps.encoder), len(tapper.taps.decoder)) == (n_enc, n_dec)
    assert tapper.taps_per_stage == per_stage
