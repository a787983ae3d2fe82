"""Models registered as classes (defaults as registry data) and pretrained sources."""

from __future__ import annotations

import inspect

import pytest
import torch
import torchvision

from unetzoo.errors import ModelError
from unetzoo.models import create_model, get_entry, list_models, registry
from unetzoo.models.emcad import EMCADNet
from unetzoo.models.resnet_unet import ResNetUNet
from unetzoo.models.resunet import ResUnet
from unetzoo.models.resunetpp import ResUnetPlusPlus
from unetzoo.models.swin_unet import SwinUNet
from unetzoo.models.transunet import TransUNet
from unetzoo.models.unet import UNet
from unetzoo.models.unet3p import UNet3Plus
from unetzoo.models.unetpp import UNetPlusPlus

CLASSES = {
    "resunet_v1_0": ResUnet, "unetpp": UNetPlusPlus, "unet3p": UNet3Plus,
    "resunetpp": ResUnetPlusPlus, "transunet": TransUNet, "swin_unet": SwinUNet,
    "emcad": EMCADNet, "resnet34_unet": ResNetUNet, "unet": UNet,
}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_family_registers_its_class(name):
    entry = get_entry(name)
    assert entry.builder is CLASSES[name]
    # Options, types and defaults are the class's own signature.
    params = inspect.signature(CLASSES[name]).parameters
    assert set(entry.default_options()) - set(entry.defaults) <= set(params)


def test_every_registered_model_is_a_class():
    # No builder functions left: every entry's builder is an nn.Module class, and the
    # registry refuses a function (it would re-type the class's signature).
    for name in list_models():
        builder = get_entry(name).builder
        assert inspect.isclass(builder) and issubclass(builder, torch.nn.Module), name
    assert {get_entry(f"resnet{d}_unet").builder for d in (18, 34, 50, 101, 152)} == {ResNetUNet}

    def build_unet(in_channels: int = 1, num_classes: int = 2) -> UNet:
        return UNet(in_channels, num_classes)

    with pytest.raises(TypeError, match="class itself"):
        registry.register_model("function_builder", build_unet, description="d", source="s")
    assert "function_builder" not in list_models()


def test_every_rung_of_the_ladder_is_the_class():
    assert {get_entry(n).builder for n in list_models("resunet_v*")} == {ResUnet}


def test_yaml_lists_become_tuples_and_sequences_are_checked():
    model = create_model("resunetpp", in_channels=1, num_classes=2, widths=[4, 8, 8, 16, 16])
    assert model.unetzoo_options["widths"] == (4, 8, 8, 16, 16)
    with pytest.raises(ModelError, match="widths"):
        create_model("resunetpp", widths=[4, 8.5, 8, 16, 16])


def test_pretrained_sources_are_registry_data():
    src = get_entry("resunet_v1_0").pretrained
    assert [s.tag for s in src] == ["imagenet"]
    # The same file torchvision fetches for "imagenet" (read from its enum, no download).
    url = torchvision.models.ResNet34_Weights.IMAGENET1K_V1.url
    assert src[0].url == url and url.endswith(src[0].filename)
    assert src[0].hash_prefix and src[0].hash_prefix in src[0].filename
    for name in ("transunet", "swin_unet", "emcad"):
        (file_src,) = get_entry(name).pretrained
        assert file_src.url.startswith("https://") and file_src.tag == "imagenet"
        assert get_entry(name).paper_weights() is file_src  # the official scripts load it
    # Every entry whose default needs weights says where they come from.
    for name in list_models():
        default = get_entry(name).default_options().get("encoder_weights")
        if default is not None:
            assert default in {s.tag for s in get_entry(name).pretrained}, name
