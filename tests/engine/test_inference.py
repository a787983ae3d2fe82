"""Batched TransUNet-protocol inference equals the per-slice scipy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from unetzoo.engine.inference import (
    gaussian_importance,
    predict_volume,
    resize_cubic,
    resize_nearest,
    sliding_window_probs,
)


@pytest.mark.parametrize("shape, size", [((40, 52), 32), ((20, 24), 48), ((33, 33), 33)])
def test_resize_matches_scipy_zoom(shape, size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, *shape)).astype(np.float32)
    ref = np.stack([ndimage.zoom(s, (size / shape[0], size / shape[1]), order=3) for s in x])
    got = resize_cubic(torch.from_numpy(x), (size, size)).numpy()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-5)
    lab = rng.integers(0, 5, size=(3, size, size))
    ref_lab = np.stack([ndimage.zoom(s, (shape[0] / size, shape[1] / size), order=0) for s in lab])
    got_lab = resize_nearest(torch.from_numpy(lab), shape).numpy()
    np.testing.assert_array_equal(got_lab, ref_lab)


def _reference_volume(model, image, img_size):
    """TransUNet's test_single_volume, slice by slice with scipy (the reference)."""
    _, d, h, w = image.shape
    out = np.zeros((d, h, w), dtype=np.int64)
    for z in range(d):
        s = image[0, z]
        if (h, w) != (img_size, img_size):
            s = ndimage.zoom(s, (img_size / h, img_size / w), order=3)
        with torch.no_grad():
            logits = model(torch.from_numpy(s.astype(np.float32))[None, None])
        pred = torch.argmax(torch.softmax(logits, 1), 1)[0].numpy()
        if (h, w) != (img_size, img_size):
            pred = ndimage.zoom(pred, (h / img_size, w / img_size), order=0)
        out[z] = pred
    return out


def test_predict_volume_equals_scipy_reference():
    from unetzoo.models import create_model

    torch.manual_seed(0)
    model = create_model("unet", 1, 4, base_channels=4).eval()
    rng = np.random.default_rng(1)
    image = ndimage.gaussian_filter(rng.normal(size=(1, 5, 45, 38)), 2).astype(np.float32)
    ref = _reference_volume(model, image, 32)
    got = predict_volume(model, image, 32, batch_size=2)
    assert got.shape == (5, 45, 38) and got.dtype == np.int64
    np.testing.assert_array_equal(got, ref)
    assert len(np.unique(got)) > 1  # a real comparison, not all background


class _Constant(torch.nn.Module):
    """Logits that depend only on the pixel's intensity (translation equivariant)."""

    def forward(self, x):
        return torch.cat([-x, x], dim=1) * 4


def test_sliding_window_blends_to_the_pixelwise_answer():
    torch.manual_seed(0)
    image = torch.rand(1, 70, 90)
    probs = sliding_window_probs(_Constant(), image, 32, overlap=0.5, batch_size=3)
    assert probs.shape == (2, 70, 90)
    direct = torch.softmax(_Constant()(image[None]), 1)[0]
    # A per-pixel model gives the same probability in every window, so the Gaussian
    # weighted average must return it unchanged (checks weights and normalisation).
    torch.testing.assert_close(probs, direct, atol=1e-5, rtol=1e-5)


def test_sliding_window_pads_small_images_and_weights_centre():
    probs = sliding_window_probs(_Constant(), torch.rand(1, 20, 24), 32)
    assert probs.shape == (2, 20, 24)
    g = gaussian_importance((32, 32))
    assert g.max() == 1.0 and g.min() > 0 and g[16, 16] > g[0, 0]


def test_tta_flips_are_undone():
    class Asym(torch.nn.Module):
        def forward(self, x):
            ramp = torch.linspace(-1, 1, x.shape[-1]).expand_as(x)
            return torch.cat([x * 0, ramp + x], 1)

    from unetzoo.engine.inference import predict_probs

    x = torch.rand(2, 1, 8, 8)
    plain = predict_probs(Asym(), x)
    tta = predict_probs(Asym(), x, tta=True)
    assert plain.shape == tta.shape == (2, 2, 8, 8)
    # The ramp flips with W-flips, so TTA averages it out: the mean over W equals plain's.
    assert not torch.allclose(plain, tta)
    torch.testing.assert_close(tta.sum(1), torch.ones(2, 8, 8))
