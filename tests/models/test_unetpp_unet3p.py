"""UNet++ and UNet 3+: shapes, deep supervision, CGM, ResNet encoders, published counts."""

from __future__ import annotations

import pytest
import torch

from unetzoo.models import create_model, get_entry, parameter_count

SMALL = {"unetpp": {"base_channels": 4}, "unet3p": {"base_channels": 4, "cat_channels": 4}}


@pytest.mark.parametrize("name", ["unetpp", "unet3p"])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_small_plain_encoder(check_segmentation, name, in_channels):
    model = create_model(name, in_channels=in_channels, num_classes=3, **SMALL[name])
    check_segmentation(model, in_channels, 3, 37, 45)


@pytest.mark.parametrize("name, heads", [("unetpp", 4), ("unet3p", 5)])
def test_deep_supervision_train_list_eval_tensor(check_segmentation, name, heads):
    model = create_model(name, 1, 2, deep_supervision=True, **SMALL[name])
    check_segmentation(model, 1, 2, 35, 40)  # checks every element is full size
    model.train()
    out = model(torch.randn(2, 1, 35, 40))
    assert isinstance(out, list) and len(out) == heads
    model.eval()
    with torch.no_grad():
        final_eval = model(torch.randn(2, 1, 35, 40))
    assert isinstance(final_eval, torch.Tensor)


def test_deep_supervision_final_is_last():
    # The last training output must be the same map the eval forward returns.
    model = create_model("unetpp", 1, 2, deep_supervision=True, base_channels=4)
    x = torch.randn(1, 1, 32, 32)
    model.eval()
    with torch.no_grad():
        final = model(x)
        model.training = True  # toggle only the flag: BatchNorm stays in eval statistics
        outs = model(x)
    assert torch.allclose(outs[-1], final)
    assert not torch.allclose(outs[0], final)


@pytest.mark.parametrize("name", ["unetpp", "unet3p"])
def test_resnet_encoder_option(check_segmentation, name):
    model = create_model(name, 1, 2, encoder="resnet18")
    check_segmentation(model, 1, 2, 33, 47)
    taps = get_entry(name).taps_for(model)
    assert taps.encoder[0] == "encoder.stem"
    for tap in (*taps.encoder, *taps.decoder, taps.final):
        model.get_submodule(tap)


@pytest.mark.parametrize("name", ["unetpp", "unet3p"])
def test_plain_taps_name_real_modules(name):
    model = create_model(name, **SMALL[name])
    taps = get_entry(name).taps_for(model)
    assert len(taps.encoder) == 4 and len(taps.decoder) == 3
    for tap in (*taps.encoder, *taps.decoder, taps.final):
        model.get_submodule(tap)


def test_unet3p_cgm_stores_logits_and_gates_in_eval():
    model = create_model("unet3p", 1, 3, cgm=True, **SMALL["unet3p"])
    model.train()
    out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 3, 32, 32)
    assert model.cgm_logits.shape == (2, 2) and model.cgm_logits.requires_grad
    # Force "absent": the eval output must be background everywhere.
    conv = model.cls_head[1]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([5.0, -5.0]))
    model.eval()
    with torch.no_grad():
        pred = model(torch.randn(2, 1, 32, 32)).argmax(1)
    assert (pred == 0).all()
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([-5.0, 5.0]))
        ungated = model(torch.randn(2, 1, 32, 32))
    assert ungated.abs().max() < 1e3


def test_unetpp_official_parameter_count():
    # MrGiovanni/UNetPlusPlus model.py, Nest_Net docstring: "Total params: 9,041,601"
    # (Keras; widths 32-512, no BatchNorm, biases, 1 input channel, 1 sigmoid output).
    # Our default adds BatchNorm (bias-free); batch_norm=False reproduces the code.
    assert parameter_count("unetpp", 1, 1, batch_norm=False) == 9_041_601
    pub = get_entry("unetpp").published[0]
    assert parameter_count("unetpp", **pub.config) == pub.count == 9_041_601
    # Deep supervision adds three 1x1 heads (32 weights + 1 bias each).
    assert parameter_count("unetpp", 1, 1, batch_norm=False, deep_supervision=True) == (
        9_041_601 + 3 * 33
    )


def test_unet3p_official_parameter_count():
    # ZJUGiveLab/UNet-Version models/UNet_3Plus.py: UNet_3Plus(in_channels=3, n_classes=1)
    # has 26,971,777 parameters (paper Table 1: 26.97M). UNet_3Plus_DeepSup_CGM adds four
    # 3x3 heads (3 x (320*9+1) + (1024*9+1)) and the 1x1 classifier (1024*2+2).
    assert parameter_count("unet3p", 3, 1) == 26_971_777
    pub = get_entry("unet3p").published[0]
    assert parameter_count("unet3p", **pub.config) == pub.count
    ds_cgm = 26_971_777 + 3 * (320 * 9 + 1) + (1024 * 9 + 1) + (1024 * 2 + 2)
    assert parameter_count("unet3p", 3, 1, deep_supervision=True, cgm=True) == ds_cgm
