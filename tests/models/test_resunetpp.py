"""ResUNet++: the official code's parameter count, shapes, attention gating, taps.

Reference: DebeshJha/ResUNetPlusPlus (official code of Jha et al., IEEE ISM 2019):
``resunet++_pytorch.py`` (PyTorch) and ``m_resunet.py`` (Keras) define the same network.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unetzoo.errors import ModelError
from unetzoo.losses.distillation import FeatureTapper
from unetzoo.models import create_model, get_entry, parameter_count
from unetzoo.models.resunetpp import OFFICIAL_KERAS_TOTAL, OFFICIAL_PARAMS


def _official_count() -> int:
    """Trainable parameters of the official layer list, by hand (biases everywhere)."""

    def conv(i, o, k=3):
        return i * o * k * k + o

    def bn(c):
        return 2 * c

    def se(c):
        return 2 * c * (c // 8)

    def res(i, o, pre=True):
        return (bn(i) if pre else 0) + conv(i, o) + bn(o) + conv(o, o) + conv(i, o, 1) + bn(o) + se(o)

    def aspp(i, o):
        return 4 * (conv(i, o) + bn(o)) + conv(o, o, 1)

    def dec(g, x, o):
        attention = bn(g) + conv(g, x) + bn(x) + conv(x, x) + bn(x) + conv(x, x)
        return attention + res(g + x, o)

    return (
        res(3, 16, pre=False) + res(16, 32) + res(32, 64) + res(64, 128) + aspp(128, 256)
        + dec(64, 256, 128) + dec(32, 128, 64) + dec(16, 64, 32) + aspp(32, 16)
        + conv(16, 1, 1)
    )


def test_matches_official_parameter_count():
    # 4,062,993 trainable = the official PyTorch file; Keras' model.summary() total
    # 4,070,385 also counts BatchNorm moving mean/variance (non-trainable).
    assert OFFICIAL_PARAMS == _official_count()
    assert parameter_count("resunetpp", in_channels=3, num_classes=1) == OFFICIAL_PARAMS
    pub = get_entry("resunetpp").published[0]
    assert pub.count == parameter_count("resunetpp", **pub.config)
    with torch.device("meta"):
        model = create_model("resunetpp", in_channels=3, num_classes=1)
    running = sum(
        b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))
    )
    assert OFFICIAL_PARAMS + running == OFFICIAL_KERAS_TOTAL


def test_structure_follows_the_paper():
    model = create_model("resunetpp", in_channels=1, num_classes=2)
    assert isinstance(model.bridge.branches[3][0], nn.Conv2d)
    assert [b[0].dilation[0] for b in model.bridge.branches] == [1, 6, 12, 18]
    assert model.enc1.se.fc[0].out_features == 32 // 8
    assert model.dec1.attention.x_conv[2].out_channels == 256
    assert get_entry("resunet++").name == "resunetpp"


@pytest.mark.parametrize("size", [(64, 64), (45, 70)])
def test_shapes_and_gradient(size, check_segmentation):
    model = create_model("resunetpp", in_channels=1, num_classes=3, widths=(8, 8, 16, 16, 32))
    check_segmentation(model, 1, 3, *size)


def test_full_size_224_on_meta():
    with torch.device("meta"):
        model = create_model("resunetpp", in_channels=1, num_classes=9)
    y = model.eval()(torch.empty(1, 1, 224, 224, device="meta"))
    assert tuple(y.shape) == (1, 9, 224, 224)


def test_attention_gate_multiplies_decoder_feature():
    model = create_model("resunetpp", in_channels=1, num_classes=2, widths=(4, 4, 8, 8, 8))
    gate = model.dec1.attention
    g = torch.randn(1, 8, 8, 8)
    x = torch.zeros(1, 8, 4, 4)
    assert torch.equal(gate(g, x), torch.zeros(1, 8, 4, 4))


def test_taps():
    model = create_model("resunetpp", in_channels=1, num_classes=2, widths=(4, 4, 8, 8, 8))
    tapper = FeatureTapper(model)
    with tapper:
        model.eval()(torch.randn(1, 1, 32, 48))
    sizes = [tuple(f.shape[-2:]) for f in tapper.features["encoder"]]
    assert sizes == [(32, 48), (16, 24), (8, 12), (4, 6)]
    assert [tuple(f.shape[-2:]) for f in tapper.features["decoder"]] == [
        (8, 12), (16, 24), (32, 48)
    ]
    assert tapper.features["final"].shape == (1, 4, 32, 48)


@pytest.mark.parametrize(
    "opts", [{"widths": (16, 32)}, {"se_reduction": 0}, {"aspp_rates": ()}]
)
def test_bad_options(opts):
    with pytest.raises(ModelError):
        create_model("resunetpp", **opts)
