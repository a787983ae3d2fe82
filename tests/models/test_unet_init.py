"""U-Net and UNet++ weight initialisation: each registration starts as its source does.

`unet` (gyb357's layout) keeps gyb357's default, PyTorch's init (He init did not make it
learn faster on real MRI, benchmarks/README.md); `unet_paper` draws the paper's
sqrt(2 / N) Gaussian; `unetpp` the official code's `he_normal`; `unet_selfreg` PyTorch's
(milesial). PyTorch's default (Kaiming uniform, a = sqrt(5)) draws weights sqrt(6) times
smaller than He's.
"""

from __future__ import annotations

import math

import pytest
import torch

from unetzoo.errors import ModelError
from unetzoo.models import create_model


def _std(w: torch.Tensor) -> float:
    return float(w.detach().std())


def test_unet_defaults_per_registration():
    inits = {n: create_model(n, 1, 2, base_channels=8).unetzoo_options["init"]
             for n in ("unet", "unet_paper", "unet_selfreg", "unetpp")}
    assert inits == {"unet": "pytorch", "unet_paper": "paper", "unet_selfreg": "pytorch",
                     "unetpp": "kaiming"}


def test_unet_kaiming_is_gyb357_init_weights_true():
    torch.manual_seed(0)
    model = create_model("unet", 1, 4, init="kaiming")
    conv = model.down3[1][0]  # 256 -> 512, 3x3
    assert _std(conv.weight) == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.05)
    up = model.up1.up  # transposed convolutions keep PyTorch's default, as in gyb357
    assert float(up.weight.abs().max()) <= 1 / math.sqrt(up.weight.shape[1] * 4) + 1e-7


def test_unet_paper_is_the_papers_gaussian():
    # Ronneberger et al., Section 3: std sqrt(2 / N), N = 9 * 64 for a 3x3 conv on 64 channels.
    torch.manual_seed(0)
    conv = create_model("unet_paper", 1, 2).down3[1][0]  # 256 -> 512
    assert _std(conv.weight) == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.05)
    assert float(conv.bias.abs().max()) == 0.0


def test_unet_pytorch_keeps_pytorch_defaults():
    torch.manual_seed(0)
    conv = create_model("unet", 1, 4).down3[1][0]  # the default
    fan_in = 256 * 9
    assert float(conv.weight.abs().max()) <= 1 / math.sqrt(fan_in) + 1e-7
    assert _std(conv.weight) == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.05)


def test_unetpp_kaiming_is_he_normal_and_spares_a_resnet_encoder():
    torch.manual_seed(0)
    node = create_model("unetpp", 1, 4).nodes["x3_1"]
    conv = next(m for m in node.modules() if isinstance(m, torch.nn.Conv2d))
    fan_in = conv.in_channels * 9
    assert _std(conv.weight) == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
    torch.manual_seed(0)
    he = create_model("unetpp", 1, 4, encoder="resnet18")
    torch.manual_seed(0)
    pt = create_model("unetpp", 1, 4, encoder="resnet18", init="pytorch")
    for a, b in zip(he.encoder.state_dict().values(), pt.encoder.state_dict().values()):
        assert torch.equal(a, b)  # torchvision's own init, untouched
    assert not torch.equal(he.head.weight, pt.head.weight)


@pytest.mark.parametrize("name", ["unet", "unetpp"])
def test_he_init_gives_the_head_a_usable_logit_scale(name):
    # What the option changes: BatchNorm keeps the features at unit scale, so the logits'
    # spread at initialisation is set by the head's weights; at the registered widths
    # PyTorch's default makes it 2.6x (unetpp) to 5.7x (unet) smaller (the softmax starts
    # nearly uniform). In resnet34_unet's decoder that stalled learning; in unet it did not.
    x = torch.randn(2, 1, 32, 32)
    spread = {}
    for init in ("kaiming", "pytorch"):
        torch.manual_seed(0)
        model = create_model(name, 1, 13, init=init).train()
        with torch.no_grad():
            spread[init] = float(model(x).std())
    assert spread["kaiming"] > 2 * spread["pytorch"]


@pytest.mark.parametrize("name", ["unet", "unetpp"])
def test_bad_init_is_one_line(name):
    with pytest.raises(ModelError, match="init must be one of"):
        create_model(name, 1, 2, base_channels=8, init="xavier")


@pytest.mark.parametrize("name", ["unet", "unetpp", "unet3p", "resnet34_unet"])
def test_pytorchs_default_init_has_one_name_across_the_zoo(name):
    opts = {"encoder_weights": None} if name == "resnet34_unet" else {"base_channels": 8}
    if name == "unet3p":
        opts["cat_channels"] = 8
    assert create_model(name, 1, 2, init="pytorch", **opts).unetzoo_options["init"] == "pytorch"
    with pytest.raises(ModelError, match="init"):
        create_model(name, 1, 2, init="default", **opts)
