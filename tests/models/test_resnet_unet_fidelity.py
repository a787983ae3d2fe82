"""ResNet U-Nets against gyb357's official code and smp's decoder: each deviation pinned.

gyb357/UNet-Segmentation (model/modules.py, model/resnet.py, model/unet.py):
``OutputBlock`` = ConvTranspose2d(64, 32, 2, 2) (bias) -> Conv2d(32, classes, 1, bias=False)
with nothing between them; its ResNet blocks add the residual only where a downsample
exists; ``init_weights=False`` leaves PyTorch's default init everywhere.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from unetzoo.errors import ModelError
from unetzoo.models import create_model, parameter_count


def _relus(module: nn.Module) -> int:
    return sum(isinstance(m, nn.ReLU) for m in module.modules())


def test_head_is_gyb357_output_block_by_default():
    model = create_model("resnet18_unet", in_channels=1, num_classes=3)
    up, cls = model.head
    assert isinstance(up, nn.ConvTranspose2d) and up.bias is not None
    assert isinstance(cls, nn.Conv2d) and cls.kernel_size == (1, 1) and cls.bias is None
    assert _relus(model.head) == 0


def test_head_relu_option_restores_the_seed_head_with_same_parameters():
    seed = create_model("resnet18_unet", in_channels=1, num_classes=3, head_relu=True)
    assert _relus(seed.head) == 1 and isinstance(seed.head[1], nn.ReLU)
    assert parameter_count("resnet18_unet", 1, 3, head_relu=True) == parameter_count(
        "resnet18_unet", 1, 3
    )


def _gradient_through_head(head_relu: bool) -> float:
    torch.manual_seed(0)
    model = create_model("resnet18_unet", in_channels=1, num_classes=3, head_relu=head_relu)
    with torch.no_grad():
        model.head[0].bias.fill_(-100.0)  # every unit of the transposed conv below zero
    model.train()
    out = model(torch.randn(2, 1, 64, 64))
    nn.functional.cross_entropy(out, torch.randint(0, 3, (2, 64, 64))).backward()
    return float(model.decoder[0].conv[0].weight.grad.abs().sum())


def test_head_relu_is_a_gradient_dead_end_where_its_units_are_off():
    # The cause the seed's head adds: where all 32 units after the transposed conv are
    # negative, the ReLU zeroes them, the bias-free classifier outputs 0 for every class
    # and nothing upstream gets a gradient. gyb357's head passes the gradient on.
    assert _gradient_through_head(head_relu=True) == 0.0
    assert _gradient_through_head(head_relu=False) > 0.0


def _zero_convs(block: nn.Module) -> None:
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, nn.Conv2d) and "downsample" not in _path(block, m):
                m.weight.zero_()


def _path(root: nn.Module, target: nn.Module) -> str:
    return next(n for n, m in root.named_modules() if m is target)


@pytest.mark.parametrize("shortcuts, keeps_input", [("torchvision", True), ("gyb357", False)])
def test_identity_shortcut_of_a_block_without_downsample(shortcuts, keeps_input):
    model = create_model("resnet18_unet", in_channels=1, num_classes=2, shortcuts=shortcuts)
    block = model.encoder.layer1[0]
    assert block.downsample is None
    _zero_convs(block)
    block.eval()
    x = torch.rand(1, 64, 8, 8) + 0.1  # positive, so relu(x) == x
    with torch.no_grad():
        y = block(x)
    if keeps_input:  # torchvision: relu(0 + x) == x
        torch.testing.assert_close(y, x)
    else:  # gyb357: no residual without a downsample -> relu(0) == 0
        assert float(y.abs().max()) == 0.0


@pytest.mark.parametrize("depth", [18, 50])
def test_gyb357_shortcuts_keep_the_projection_blocks_and_the_weights(depth):
    a = create_model(f"resnet{depth}_unet", in_channels=1, num_classes=2)
    b = create_model(f"resnet{depth}_unet", in_channels=1, num_classes=2, shortcuts="gyb357")
    b.load_state_dict(a.state_dict())  # same keys and shapes
    a.eval(), b.eval()
    x = torch.randn(1, 64, 16, 16)
    # layer2's first block has a downsample projection: identical in both.
    xa = a.encoder.layer1(x) if depth == 18 else torch.randn(1, 256, 16, 16)
    torch.testing.assert_close(a.encoder.layer2[0](xa), b.encoder.layer2[0](xa))
    # ...its second block has none: gyb357 drops the residual there.
    y = a.encoder.layer2[0](xa)
    assert not torch.allclose(a.encoder.layer2[1](y), b.encoder.layer2[1](y))


def test_init_gyb357_is_pytorch_default_in_the_encoder():
    torch.manual_seed(0)
    tv = create_model("resnet34_unet", in_channels=1, num_classes=2, init="pytorch")
    gy = create_model("resnet34_unet", in_channels=1, num_classes=2, init="gyb357")
    w_tv = tv.encoder.layer3[0].conv2.weight  # 256 x 256 x 3 x 3
    w_gy = gy.encoder.layer3[0].conv2.weight
    fan_in = fan_out = 256 * 9
    # torchvision: Kaiming normal, fan-out -> std sqrt(2 / fan_out).
    assert float(w_tv.std()) == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
    # PyTorch default: Kaiming uniform a=sqrt(5) -> bound 1 / sqrt(fan_in).
    assert float(w_gy.abs().max()) <= 1 / math.sqrt(fan_in) + 1e-7
    assert float(w_gy.std()) == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.05)


def test_init_kaiming_is_gyb357_init_weights_true_and_the_default():
    # The learning-gap cause: with PyTorch's default init in the decoder (gyb357's
    # init_weights=False) resnet34_unet learned 1 of 12 real-MRI classes in 196
    # iterations; with gyb357's init_weights=True init, 11 (benchmarks/README.md).
    torch.manual_seed(0)
    model = create_model("resnet34_unet", in_channels=1, num_classes=4)
    assert model.unetzoo_options["init"] == "kaiming"
    conv = model.decoder[1].conv[0]  # (256 + 128) -> 256, 3x3
    fan_out = conv.out_channels * 9
    assert float(conv.weight.std()) == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
    up = model.decoder[1].up  # ConvTranspose2d is not a Conv2d: PyTorch's default stays
    assert float(up.weight.abs().max()) <= 1 / math.sqrt(up.weight.shape[1] * 4) + 1e-7
    enc = create_model("resnet34_unet", in_channels=1, num_classes=4, init="pytorch").encoder
    torch.testing.assert_close(  # the encoder is untouched (same seed, same draws first)
        model.encoder.layer1[0].conv1.weight.std(), enc.layer1[0].conv1.weight.std(),
        rtol=0.1, atol=0)


def test_init_pytorch_keeps_pytorch_defaults_in_the_decoder():
    torch.manual_seed(0)
    conv = create_model("resnet34_unet", in_channels=1, num_classes=4,
                        init="pytorch").decoder[1].conv[0]
    fan_in = conv.in_channels * 9  # Kaiming uniform a=sqrt(5): bound 1 / sqrt(fan_in)
    assert float(conv.weight.abs().max()) <= 1 / math.sqrt(fan_in) + 1e-7


def test_init_smp_matches_smp_initializers():
    torch.manual_seed(0)
    model = create_model("resnet34_unet", in_channels=1, num_classes=4, init="smp")
    conv = model.decoder[1].conv[0]  # (256 + 128) -> 256, 3x3
    fan_in = conv.in_channels * 9
    assert float(conv.weight.std()) == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
    cls = model.head[-1]
    bound = math.sqrt(6 / (cls.in_channels + cls.out_channels))  # Xavier uniform
    assert float(cls.weight.abs().max()) <= bound + 1e-7


def test_options_keep_the_published_parameter_count():
    published = parameter_count("resnet34_unet", 3, 1)
    assert published == 30_885_504
    for options in ({"shortcuts": "gyb357"}, {"init": "gyb357"}, {"init": "smp"}, {"init": "pytorch"},
                    {"head_relu": True}):
        assert parameter_count("resnet34_unet", 3, 1, **options) == published


def _smp_to_zoo(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        k = k.replace("encoder.conv1.", "encoder.stem.0.").replace("encoder.bn1.", "encoder.stem.1.")
        k = k.replace("segmentation_head.0.", "head.0.").replace("decoder.blocks.", "decoder.")
        for i, j in (("conv1.0", "conv.0"), ("conv1.1", "conv.1"),
                     ("conv2.0", "conv.3"), ("conv2.1", "conv.4")):
            k = k.replace(f".{i}.", f".{j}.")
        out[k] = v
    return out


def test_smp_decoder_option_is_smp_unet_resnet34():
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    ref = smp.Unet("resnet34", encoder_weights=None, in_channels=1, classes=5).eval()
    ours = create_model("resnet34_unet", in_channels=1, num_classes=5, decoder="smp").eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    ours.load_state_dict(_smp_to_zoo(ref.state_dict()), strict=True)
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))


def test_smp_decoder_widths_and_upsampling():
    model = create_model("resnet18_unet", in_channels=1, num_classes=2, decoder="smp")
    assert [b.conv[3].out_channels for b in model.decoder] == [256, 128, 64, 32, 16]
    assert all(isinstance(b.up, nn.Upsample) and b.up.mode == "nearest" for b in model.decoder)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 2, 64, 64)


@pytest.mark.parametrize(
    "options",
    [{"decoder": "fpn"}, {"shortcuts": "none"}, {"init": "xavier"},
     {"decoder": "smp", "head_relu": True}, {"decoder": "smp", "decoder_channels": [1, 2, 3, 4]}],
)
def test_bad_options_raise_one_line(options):
    with pytest.raises(ModelError):
        create_model("resnet18_unet", **options)


def test_checkpoint_of_the_seed_head_loads_with_its_relu():
    # Weights saved before the head followed gyb357 (head.0, ReLU, head.2) keep working,
    # with the ReLU, instead of failing on head.2 or silently dropping it.
    torch.manual_seed(0)
    old = create_model("resnet18_unet", in_channels=1, num_classes=3, head_relu=True).eval()
    new = create_model("resnet18_unet", in_channels=1, num_classes=3)
    new.load_state_dict(old.state_dict(), strict=True)
    new.eval()
    assert _relus(new.head) == 1 and new.unetzoo_options["head_relu"] is True
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(new(x), old(x))
    # A current checkpoint loads as it is.
    cur = create_model("resnet18_unet", in_channels=1, num_classes=3)
    cur.load_state_dict(create_model("resnet18_unet", in_channels=1, num_classes=3).state_dict())
    assert _relus(cur.head) == 0
