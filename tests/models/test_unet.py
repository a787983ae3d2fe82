"""U-Net: shapes, gradients, padding modes and the three published parameter counts."""

from __future__ import annotations

import pytest
import torch

from unetzoo.errors import ModelError
from unetzoo.models import create_model, get_entry, parameter_count


@pytest.mark.parametrize("name", ["unet", "unet_paper", "unet_selfreg"])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_small_unet_shapes_and_gradients(check_segmentation, name, in_channels):
    model = create_model(name, in_channels=in_channels, num_classes=3, base_channels=4)
    check_segmentation(model, in_channels, 3, 37, 45)  # odd, not multiples of 16


@pytest.mark.parametrize(
    "name, in_channels, num_classes, expected",
    [
        # BatchNorm, bias-free convolutions everywhere (seed table: U-Net 31.04M).
        ("unet", 3, 1, 31_036_672),
        # The paper's network: 1 input channel, 2 classes, no BatchNorm, biases.
        ("unet_paper", 1, 2, 31_030_658),
        # SelfReg-UNet's bilinear U-Net on Synapse: 1 channel in, 9 classes.
        ("unet_selfreg", 1, 9, 17_262_345),
    ],
)
def test_published_parameter_counts(name, in_channels, num_classes, expected):
    assert parameter_count(name, in_channels, num_classes) == expected
    # The figure is also recorded in the registry, with the same configuration.
    pub = get_entry(name).published[0]
    assert pub.count == expected
    assert parameter_count(name, **pub.config) == pub.count


def test_valid_padding_reproduces_572_to_388():
    model = create_model("unet_paper", 1, 2, padding="valid", base_channels=2).eval()
    assert model.output_size(572) == 388
    assert model.output_size((572, 636)) == (388, 452)
    with torch.no_grad():
        y = model(torch.randn(1, 1, 572, 636))
    assert y.shape == (1, 2, 388, 452)


def test_valid_padding_output_size_matches_forward_on_odd_input():
    model = create_model("unet", 1, 2, padding="valid", base_channels=2).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 1, 197, 205))
    assert tuple(y.shape[-2:]) == model.output_size((197, 205))
    assert model.output_size(197) < 197


def test_valid_padding_too_small_input_is_one_line_error():
    model = create_model("unet", 1, 2, padding="valid", base_channels=2)
    with pytest.raises(ModelError, match="too small"):
        model(torch.randn(1, 1, 64, 64))


def test_same_padding_output_size_is_identity():
    model = create_model("unet", 1, 2, base_channels=2)
    assert model.output_size(37) == 37


def test_bad_padding_and_wrong_channels_are_clear_errors():
    with pytest.raises(ModelError, match="padding"):
        create_model("unet", padding="reflect")
    model = create_model("unet", in_channels=3, base_channels=2)
    with pytest.raises(ModelError, match="in_channels=1"):
        model(torch.randn(1, 1, 32, 32))


def test_bias_follows_batch_norm_and_can_be_overridden():
    bn = create_model("unet", base_channels=2)
    assert bn.inc[0].bias is None and bn.head.bias is None
    plain = create_model("unet_paper", base_channels=2)
    assert plain.inc[0].bias is not None and plain.head.bias is not None
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    selfreg = create_model("unet_selfreg", base_channels=2)
    assert selfreg.inc[0].bias is None and selfreg.head.bias is not None


def test_unet_taps_name_real_modules():
    model = create_model("unet", base_channels=2)
    taps = get_entry("unet").taps_for(model)
    assert len(taps.encoder) == 4 and len(taps.decoder) == 3
    for name in (*taps.encoder, *taps.decoder, taps.final):
        model.get_submodule(name)


def test_valid_bilinear_variant_matches_output_size():
    model = create_model("unet_selfreg", 1, 2, padding="valid", base_channels=2).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 1, 188, 190))
    assert tuple(y.shape[-2:]) == model.output_size((188, 190)) == (4, 4)


def test_any_input_size_is_accepted():
    assert create_model("unet", base_channels=2).fixed_input_size is None
