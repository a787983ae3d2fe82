"""ResUnet ladder: registration, the channel plan's parameter counts, shapes, taps, weights.

Full-size models are built on the meta device (counts, shapes at 224 and an odd size);
real forwards use ResNet-18 and ``width_scale=0.125`` except one full v1.0 forward at 224.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torchvision

from unetzoo.errors import CheckpointError, ModelError
from unetzoo.losses.distillation import FeatureTapper
from unetzoo.models import create_model, get_entry, list_models, parameter_count
from unetzoo.models import encoders as encoders_mod
from unetzoo.models.resunet import LADDER_NAMES
from unetzoo.models.weights_maps import hub_checkpoint, sha256_file

RUNGS = (
    "resunet_v0_1",
    "resunet_v0_2",
    "resunet_v0_3",
    "resunet_v0_4",
    "resunet_v0_5",
    "resunet_v0_6",
    "resunet_v0_7",
    "resunet_v1_0",
)
SMALL = {"encoder": "resnet18", "width_scale": 0.125, "encoder_weights": None}


def conv_bn(cin: int, cout: int) -> int:
    """3x3 bias-free convolution + BatchNorm: the plan's unit."""
    return 9 * cin * cout + 2 * cout


def stage(cin: int, width: int) -> int:
    return conv_bn(cin, width) + conv_bn(width, width)


def resnet34_part(*names: str, in_channels: int = 1) -> int:
    """Parameters of torchvision ResNet-34 parts (conv1 rebuilt for ``in_channels``)."""
    with torch.device("meta"):
        net = torchvision.models.resnet34()
    total = 0
    for name in names:
        if name == "stem":
            total += 64 * in_channels * 49 + 2 * 64
        else:
            total += sum(p.numel() for p in getattr(net, name).parameters())
    return total


def plan_count(opts: dict, in_channels: int = 1, num_classes: int = 9) -> int:
    """The channel plan of the module docstring, computed independently of the module."""
    total = resnet34_part("stem", "layer1", "layer2", "layer3", in_channels=in_channels)
    if opts.get("bottleneck"):
        total += conv_bn(256, 512) + conv_bn(512, 512)
    else:
        total += resnet34_part("layer4")
    w3 = 512 if opts.get("preserve_layer3") else 256
    w2 = 384 if opts.get("preserve_up2") else 192
    total += stage(512 + 256, w3) + stage(w3 + 128, w2)
    prev = w2
    if opts.get("layer1_skip", True):
        total += stage(prev + 64, 128)
        prev = 128
    total += stage(prev + 64, 64)
    return total + 64 * num_classes + num_classes


def test_ladder_registered_with_roles():
    assert tuple(list_models("resunet_v*")) == RUNGS == LADDER_NAMES
    assert get_entry("resunet").name == "resunet_v1_0"
    roles = {
        "resunet_v0_1": "baseline",
        "resunet_v0_2": "training configuration",
        "resunet_v0_3": "improvement 1",
        "resunet_v0_4": "improvement 2",
        "resunet_v0_5": "improvement 3a",
        "resunet_v0_6": "improvement 3b",
        "resunet_v0_7": "unused branch",
        "resunet_v1_0": "improvement 3c",
    }
    for name, role in roles.items():
        assert role in get_entry(name).description, name
    assert get_entry("resunet_v0_2").default_options()["encoder_weights"] == "imagenet"
    assert get_entry("resunet_v0_1").default_options()["encoder_weights"] is None


@pytest.mark.parametrize("name", RUNGS)
def test_parameter_count_matches_plan(name):
    opts = get_entry(name).default_options()
    assert parameter_count(name, in_channels=1, num_classes=9) == plan_count(opts)


@pytest.fixture(scope="module")
def imagenet_stand_in() -> dict[str, torch.Tensor]:
    """A ResNet-34 state dict in torchvision's file layout, served instead of the
    ImageNet download (nothing downloads in tests)."""
    torch.manual_seed(3)
    return torchvision.models.resnet34().state_dict()


@pytest.mark.parametrize("name", RUNGS)
def test_every_rung_builds_as_registered(name, monkeypatch, imagenet_stand_in):
    """``create_model(name)`` with the registry's defaults only: ResNet-34, full widths
    and, from v0.2 on, the ImageNet file of the torch hub cache, hash-checked."""
    # The stand-in sits where torchvision's file would, with its own hash as the prefix.
    (source,) = get_entry(name).pretrained
    path = hub_checkpoint(source)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(imagenet_stand_in, path)
    stand_in = dataclasses.replace(source, hash_prefix=sha256_file(path)[:8])
    monkeypatch.setattr(encoders_mod, "imagenet_source", lambda depth: stand_in)
    if get_entry(name).default_options()["encoder_weights"] is None:
        path.unlink()  # the baseline must not read it
    model = create_model(name, in_channels=1, num_classes=9)
    entry = get_entry(name)
    assert model.unetzoo_options == {**entry.default_options(), "num_classes": 9}
    if entry.default_options()["encoder_weights"] is not None:
        for key in ("layer1.0.conv1.weight", "layer3.5.conv2.weight", "bn1.running_var"):
            mine = model.encoder.state_dict()[key.replace("bn1.", "stem.1.")]
            assert torch.equal(mine, imagenet_stand_in[key]), key
    assert sum(p.numel() for p in model.parameters()) == parameter_count(
        name, in_channels=1, num_classes=9
    )


def test_parameter_deltas_between_rungs():
    n = {r: parameter_count(r, in_channels=1, num_classes=9) for r in RUNGS}
    # v0.2 is a training configuration and v0.3 drops a parameter-free max-pool.
    assert n["resunet_v0_1"] == n["resunet_v0_2"] == n["resunet_v0_3"]
    # v0.4 removes the layer1 fusion stage (cat 192+64 -> 128 -> 128); the stem stage
    # then fuses the 192-wide layer2 output instead of the 128-wide layer1 output.
    layer1_fusion = stage(192 + 64, 128) + conv_bn(128 + 64, 64) - conv_bn(192 + 64, 64)
    assert n["resunet_v0_3"] - n["resunet_v0_4"] == layer1_fusion
    # v0.5 swaps layer4 for the two-conv bottleneck; the decoder is unchanged.
    bottleneck = conv_bn(256, 512) + conv_bn(512, 512)
    assert n["resunet_v0_4"] - n["resunet_v0_5"] == resnet34_part("layer4") - bottleneck
    # v0.6: layer3 stage 768 -> 512 -> 512 instead of 768 -> 256 -> 256 (and the layer2
    # stage then takes 512 + 128 channels).
    keep3 = stage(768, 512) - stage(768, 256) + conv_bn(640, 192) - conv_bn(384, 192)
    assert n["resunet_v0_6"] - n["resunet_v0_5"] == keep3
    # v0.7 puts the layer1 fusion back.
    assert n["resunet_v0_7"] - n["resunet_v0_6"] == layer1_fusion
    # v1.0: up2 keeps 384 (640 -> 384 -> 384 instead of 640 -> 192 -> 192).
    keep2 = stage(640, 384) - stage(640, 192) + conv_bn(384 + 64, 64) - conv_bn(192 + 64, 64)
    assert n["resunet_v1_0"] - n["resunet_v0_6"] == keep2


def test_v1_0_total_is_the_papers_21_3m():
    count = parameter_count("resunet", in_channels=1, num_classes=9)
    pub = get_entry("resunet").published[0]
    assert pub.config == {"in_channels": 1, "num_classes": 9}
    assert abs(count - pub.count) / pub.count < 0.01, count
    assert abs(count - 21_300_000) / 21_300_000 < 0.01


@pytest.mark.parametrize("name", RUNGS)
@pytest.mark.parametrize("size", [(224, 224), (225, 97)])
def test_full_size_output_shape_on_meta(name, size):
    with torch.device("meta"):
        model = create_model(name, in_channels=1, num_classes=9)
    model.eval()
    y = model(torch.empty(2, 1, *size, device="meta"))
    assert tuple(y.shape) == (2, 9, *size)


@pytest.mark.parametrize("name", RUNGS)
def test_small_forward_backward_odd_size(name, check_segmentation):
    model = create_model(name, in_channels=1, num_classes=4, **SMALL)
    check_segmentation(model, 1, 4, 37, 50)


def test_full_v1_0_forward_224():
    model = create_model("resunet_v1_0", in_channels=1, num_classes=9, encoder_weights=None)
    model.eval()
    with torch.no_grad():
        y = model(torch.randn(1, 1, 224, 224))
    assert y.shape == (1, 9, 224, 224) and torch.isfinite(y).all()


@pytest.mark.parametrize(
    "name, reductions, decoder",
    [
        ("resunet_v0_1", [2, 4, 8, 16, 32], ("dec3", "dec2", "dec1")),
        ("resunet_v0_3", [2, 2, 4, 8, 16], ("dec3", "dec2", "dec1")),
        ("resunet_v0_4", [2, 2, 4, 8, 16], ("dec3", "dec2")),
        ("resunet_v1_0", [2, 2, 4, 8, 16], ("dec3", "dec2")),
    ],
)
def test_taps_and_down_sampling(name, reductions, decoder):
    model = create_model(name, in_channels=1, num_classes=3, **SMALL)
    taps = get_entry(name).taps_for(model)
    assert taps.decoder == decoder and taps.final == "dec0"
    assert taps.encoder[-1] == ("bottleneck" if name == "resunet_v1_0" else "encoder.layer4")
    tapper = FeatureTapper(model)
    with tapper:
        model.eval()(torch.randn(1, 1, 64, 96))
    sizes = [tuple(f.shape[-2:]) for f in tapper.features["encoder"]]
    assert sizes == [(64 // r, 96 // r) for r in reductions]
    assert tapper.features["final"].shape[-2:] == (32, 48)


def test_v1_0_decoder_widths():
    model = create_model(
        "resunet_v1_0", in_channels=1, num_classes=9, encoder="resnet18", encoder_weights=None
    )
    assert model.widths == {"layer3": 512, "layer2": 384, "layer1": 128, "stem": 64}
    assert model.dec3.conv[0].in_channels == 768 and model.dec3.conv[0].out_channels == 512
    assert model.dec2.conv[3].in_channels == 384 and model.dec2.conv[3].out_channels == 384
    assert not hasattr(model, "dec1")


def _fake_resnet_state(depth: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    net = getattr(torchvision.models, f"resnet{depth}")()
    return net.state_dict()


def test_pretrained_rungs_load_through_the_encoder(monkeypatch):
    state = _fake_resnet_state(18)
    calls = []

    def fake_load(weights, depth):
        calls.append((weights, depth))
        return state

    monkeypatch.setattr(encoders_mod, "load_resnet_weights", fake_load)
    model = create_model(
        "resunet_v0_3", in_channels=1, num_classes=2, encoder="resnet18", width_scale=0.125
    )
    assert calls == [("imagenet", 18)]
    conv1 = model.encoder.stem[0].weight
    assert torch.allclose(conv1, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(model.encoder.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    # v0.1 is the not-pretrained baseline.
    calls.clear()
    create_model("resunet_v0_1", in_channels=1, num_classes=2, **SMALL)
    assert calls == []


def test_pretrained_from_local_file(tmp_path):
    path = tmp_path / "resnet18.pth"
    state = _fake_resnet_state(18)
    torch.save(state, path)
    model = create_model(
        "resunet_v0_5", in_channels=3, num_classes=2, encoder="resnet18",
        width_scale=0.125, encoder_weights=str(path),
    )
    assert torch.equal(model.encoder.stem[0].weight, state["conv1.weight"])
    with pytest.raises(CheckpointError):
        create_model("resunet_v0_5", encoder="resnet18", encoder_weights=str(tmp_path / "no"))


def test_offline_imagenet_default_is_one_line_naming_encoder_weights_none():
    # conftest makes every weight download fail, as it does offline.
    with pytest.raises(CheckpointError) as info:
        create_model("resunet_v0_2", in_channels=1, num_classes=2, encoder="resnet18",
                     width_scale=0.125)
    text = str(info.value)
    assert "\n" not in text and "encoder_weights=none" in text and "resnet18" in text


@pytest.mark.parametrize("spelling", ["none", "None", "null", "NULL"])
def test_encoder_weights_none_strings_build_random_init(spelling, monkeypatch):
    calls = []
    monkeypatch.setattr(encoders_mod, "load_resnet_weights", lambda *a: calls.append(a))
    model = create_model("resunet_v1_0", in_channels=1, num_classes=2, encoder="resnet18",
                         width_scale=0.125, encoder_weights=spelling)
    assert calls == [] and model.unetzoo_options["encoder_weights"] is None


def test_cli_model_option_encoder_weights_none_builds(tmp_path):
    from unetzoo.cli.main import main as cli_main

    out = tmp_path / "run"
    rc = cli_main([
        "train", "--model", "resunet_v0_3", "--dataset", "phantom",
        "--data-root", str(tmp_path / "data"), "--output", str(out),
        "--model-option", "encoder=resnet18", "--model-option", "width_scale=0.125",
        "--model-option", "encoder_weights=none", "--max-epochs", "1", "--img-size", "32",
        "--batch-size", "2", "--no-test", "--no-progress", "--device", "cpu",
    ])
    assert rc == 0


def test_no_env_switch_left():
    root = Path(__file__).resolve().parents[2]
    needle = "UNETZOO_NO_" + "PRETRAINED"  # split so this file does not match itself
    hits = [str(p) for d in ("src", "tests") for p in (root / d).rglob("*.py")
            if needle in p.read_text(encoding="utf-8")]
    assert hits == []


@pytest.mark.parametrize(
    "opts", [{"width_scale": 0}, {"encoder": "resnet50"}, {"encoder": "vgg"}, {"nope": 1}]
)
def test_bad_options_are_one_line_errors(opts):
    with pytest.raises(ModelError) as err:
        create_model("resunet_v0_1", **opts)
    assert "\n" not in str(err.value)
