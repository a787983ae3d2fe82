"""ResNet-encoder U-Nets: shapes, gradients and the seed's parameter table."""

from __future__ import annotations

import pytest

from unetzoo.models import create_model, get_entry, parameter_count


@pytest.mark.parametrize("in_channels", [1, 3])
def test_resnet18_unet_shapes_and_gradients(check_segmentation, in_channels):
    model = create_model("resnet18_unet", in_channels=in_channels, num_classes=4)
    check_segmentation(model, in_channels, 4, 37, 45)


def test_bottleneck_encoder_forward(check_segmentation):
    # ResNet-50 has 2048 channels at the bottom and 256 at layer1: a different decoder.
    model = create_model("resnet50_unet", in_channels=1, num_classes=2)
    check_segmentation(model, 1, 2, 33, 32)


@pytest.mark.parametrize(
    "depth, expected",
    [(18, 20_777_344), (34, 30_885_504), (50, 40_899_456), (101, 59_891_584), (152, 75_535_232)],
)
def test_seed_parameter_table(depth, expected):
    # gyb357/UNet-Segmentation README: ResUNet18..152 at 3 input channels, 1 class.
    name = f"resnet{depth}_unet"
    assert parameter_count(name, in_channels=3, num_classes=1) == expected
    assert get_entry(name).published[0].count == expected


def test_one_channel_input_changes_only_conv1():
    three = parameter_count("resnet34_unet", 3, 1)
    one = parameter_count("resnet34_unet", 1, 1)
    assert three - one == 64 * 2 * 7 * 7


def test_freeze_encoder():
    model = create_model("resnet18_unet", freeze_encoder=True)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())


def test_taps_name_real_modules():
    model = create_model("resnet18_unet")
    taps = get_entry("resnet18_unet").taps_for(model)
    for name in (*taps.encoder, *taps.decoder, taps.final):
        model.get_submodule(name)
