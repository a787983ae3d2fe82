"""Planned inference: slices resampled to the plan's spacing and back onto the input's own
grid, through the one slice inferer; specs with and without a plan."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from unetzoo.data.plan import SlicePlan
from unetzoo.engine.inference import predict_volume
from unetzoo.engine.spec import RESIZE_CUBIC_NEAREST, RESIZE_PLANNED, InferenceSpec
from unetzoo.errors import CheckpointError


class Sign(nn.Module):
    """Class 1 where the input is positive: logits (-10x, 10x). Records input sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return torch.cat([-10 * x[:, :1], 10 * x[:, :1]], 1) * self.w


def _ellipse(h, w, depth=3):
    yy, xx = np.mgrid[:h, :w]
    lab = (((yy - h / 2) / (0.3 * h)) ** 2 + ((xx - w / 2) / (0.35 * w)) ** 2 < 1)
    lab = np.repeat(lab[None], depth, 0).astype(np.int64)
    return lab, (2 * lab - 1)[None].astype(np.float32)  # image (1, D, H, W) in {-1, 1}


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize("hw,spacing,patch", [
    ((45, 37), (2.0, 0.5, 0.6), 32),   # down-sampled to 23 x 22, padded to the patch
    ((30, 26), (2.0, 1.6, 1.4), 32),   # up-sampled to 48 x 36: sliding windows
])
def test_planned_prediction_comes_back_on_the_input_grid(hw, spacing, patch):
    label, image = _ellipse(*hw)
    model = Sign().eval()
    plan = SlicePlan((1.0, 1.0), (patch, patch))
    pred = predict_volume(model, image, 999, batch_size=2, plan=plan, spacing=spacing)
    assert pred.shape == label.shape  # the input's own grid, not the patch's
    assert _dice(pred == 1, label == 1) > 0.95  # a smooth label survives down and back
    want = plan.resampled_shape(hw, spacing)
    assert all(s[0] % patch == 0 and s[1] % patch == 0 for s in model.sizes)
    assert want == (round(hw[0] * spacing[1]), round(hw[1] * spacing[2]))


def test_without_a_plan_the_transunet_protocol_is_unchanged():
    """An old checkpoint's spec (no plan): labels identical to the per-slice scipy
    reference (zoom order 3 to img_size, argmax, zoom order 0 back)."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 2, 20, 27)).astype(np.float32)
    model = Sign().eval()
    spec = InferenceSpec.from_dict({"model": {"name": "unet", "options": {}},
                                    "class_names": ["bg", "fg"], "in_channels": 1,
                                    "img_size": 32, "preprocessing": {"kind": "none"}})
    assert spec.plan is None and spec.resize == RESIZE_CUBIC_NEAREST
    assert "plan" not in spec.to_dict()
    got = predict_volume(model, image, spec.img_size, plan=spec.plan, spacing=(1.0, 3.0, 2.0))
    for z in range(2):
        x = ndimage.zoom(image[0, z], (32 / 20, 32 / 27), order=3)
        lab = (x > 0).astype(np.int64)
        ref = ndimage.zoom(lab, (20 / 32, 27 / 32), order=0)
        np.testing.assert_array_equal(got[z], ref)


def test_spec_round_trip_with_a_plan():
    model = nn.Conv2d(1, 2, 1)
    plan = SlicePlan((0.8, 0.75), (64, 64))
    spec = InferenceSpec.for_model(model, class_names=["bg", "fg"], in_channels=1, img_size=64,
                                   plan=plan)
    assert spec.plan == plan and spec.resize == RESIZE_PLANNED
    d = spec.to_dict()
    assert d["plan"] == {"target_spacing": [0.8, 0.75], "patch_size": [64, 64]}
    assert InferenceSpec.from_dict(d) == spec
    # a planned spec never warns about spacing: it resamples
    assert spec.spacing_warning((1.0, 5.0, 5.0), "x") is None
    with pytest.raises(CheckpointError, match="do not go together"):
        InferenceSpec.from_dict({**d, "resize": RESIZE_CUBIC_NEAREST})
    with pytest.raises(CheckpointError, match="do not go together"):
        InferenceSpec.from_dict({k: v for k, v in d.items() if k != "plan"})
    with pytest.raises(CheckpointError, match="patch_size"):
        InferenceSpec.from_dict({**d, "plan": {"target_spacing": [1, 1], "patch_size": [2, 2]}})


def test_the_spacing_follows_a_reorientation():
    """Predict and test reorient a volume to the training orientation before slicing; the
    spacing handed to the plan is the reoriented array's, axis for axis."""
    from unetzoo.data.geometry import Reorientation
    from unetzoo.data.plan import view_spacing

    view = Reorientation((2, 0, 1), (False, True, False))
    image = np.zeros((1, 4, 5, 6))
    assert view.forward(image).shape[1:] == (6, 4, 5)
    assert view_spacing((3.0, 0.9, 0.8), view) == (0.8, 3.0, 0.9)
    assert view_spacing((3.0, 0.9, 0.8), None) == (3.0, 0.9, 0.8)
    assert view_spacing(None, view) is None
