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


def test_unet_taps_follow_official_selfreg_grouping_at_224():
    # Official SelfReg UNet_hd: encoder = [x2, x3, x4, x5] = 128@112, 256@56, 512@28,
    # 512@14 at 224 px; decoder = up1..up3; final = up4 (64@224). Meta device: shapes only.
    from unetzoo.models.taps import FeatureTapper

    with torch.device("meta"):
        model = create_model("unet_selfreg", 1, 9)
        x = torch.empty(1, 1, 224, 224)
    taps = get_entry("unet_selfreg").taps_for(model)
    assert taps.encoder == ("down1", "down2", "down3", "down4")
    assert taps.decoder == ("up1", "up2", "up3") and taps.final == "up4"
    with FeatureTapper(model) as tapper:
        model(x)
    shapes = lambda fs: [(f.shape[1], f.shape[2]) for f in fs]  # noqa: E731
    assert shapes(tapper.features["encoder"]) == [(128, 112), (256, 56), (512, 28), (512, 14)]
    assert shapes(tapper.features["decoder"]) == [(256, 28), (128, 56), (64, 112)]
    assert tuple(tapper.features["final"].shape[1:]) == (64, 224, 224)
    # The generic U-Net uses the same grouping (its bottom stage is 1024 wide).
    assert get_entry("unet").taps_for(create_model("unet", base_channels=2)) == taps


class _OfficialDoubleConv(torch.nn.Module):
    # Test replica of the module names and layout of milesial/SelfReg ``unet_parts``.
    def __init__(self, cin, cout, mid=None):
        super().__init__()
        mid = mid or cout
        nn = torch.nn
        self.double_conv = nn.Sequential(
            nn.Conv2d(cin, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        )

    def forward(self, x):
        return self.double_conv(x)


class _OfficialDown(torch.nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.maxpool_conv = torch.nn.Sequential(torch.nn.MaxPool2d(2), _OfficialDoubleConv(cin, cout))

    def forward(self, x):
        return self.maxpool_conv(x)


class _OfficialUp(torch.nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.up = torch.nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = _OfficialDoubleConv(cin, cout, cin // 2)

    def forward(self, x1, x2):
        return self.conv(torch.cat([x2, self.up(x1)], dim=1))


class _OfficialOutConv(torch.nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = torch.nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return self.conv(x)


class _OfficialUNet(torch.nn.Module):
    # UNet_hd(n_channels, n_classes, bilinear=True) with the width 64 as a parameter ``c``.
    def __init__(self, cin, ncls, c):
        super().__init__()
        self.inc = _OfficialDoubleConv(cin, c)
        self.down1, self.down2 = _OfficialDown(c, 2 * c), _OfficialDown(2 * c, 4 * c)
        self.down3, self.down4 = _OfficialDown(4 * c, 8 * c), _OfficialDown(8 * c, 8 * c)
        self.up1, self.up2 = _OfficialUp(16 * c, 4 * c), _OfficialUp(8 * c, 2 * c)
        self.up3, self.up4 = _OfficialUp(4 * c, c), _OfficialUp(2 * c, c)
        self.outc = _OfficialOutConv(c, ncls)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        y = self.up4(self.up3(self.up2(self.up1(x5, x4), x3), x2), x1)
        return self.outc(y)


def test_selfreg_unet_loads_official_weights_and_matches_their_forward():
    from unetzoo.models.unet import selfreg_official_state_dict

    torch.manual_seed(0)
    official = _OfficialUNet(1, 3, 4).eval()
    for m in official.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    ours = create_model("unet_selfreg", 1, 3, base_channels=4).eval()
    sd = {"module." + k: v for k, v in official.state_dict().items()}  # DataParallel file
    ours.load_state_dict(selfreg_official_state_dict(sd))  # strict: every key maps
    x = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        assert torch.allclose(ours(x), official(x), atol=1e-5)
        # Either layout option alone breaks the equality: both are pinned.
        for option in ({"skip_first": False}, {"align_corners": False}):
            other = create_model("unet_selfreg", 1, 3, base_channels=4, **option).eval()
            other.load_state_dict(ours.state_dict())
            assert not torch.allclose(other(x), official(x), atol=1e-3)


def test_selfreg_layout_is_the_default_of_unet_selfreg_only():
    selfreg = create_model("unet_selfreg", base_channels=2)
    assert selfreg.up1.skip_first and selfreg.up1.up.align_corners
    assert not create_model("unet", base_channels=2).up1.skip_first
