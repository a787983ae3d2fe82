"""Registry behaviour, and a generic forward test over every registered model."""

from __future__ import annotations

import inspect

import pytest
import torch

from unetzoo.errors import ModelError
from unetzoo.models import (
    create_model,
    get_entry,
    list_models,
    parameter_count,
)

OWN_FAMILIES = {"unet", "resnet_unet", "unetpp", "unet3p"}


def test_unknown_name_suggests_closest():
    with pytest.raises(ModelError, match=r"unknown model 'unte'; did you mean unet") as info:
        create_model("unte")
    assert "\n" not in str(info.value)


def test_unknown_option_lists_valid_options():
    with pytest.raises(ModelError, match=r"no option 'widht'.*base_channels"):
        create_model("unet", widht=3)


def test_aliases_resolve_and_stay_out_of_the_list():
    model = create_model("UNet++", base_channels=2)
    assert model.unetzoo_name == "unetpp"
    assert get_entry("unet3+").name == "unet3p"
    assert get_entry("unet_resnet34").name == "resnet34_unet"
    names = list_models()
    assert "unetpp" in names and "unet++" not in names


def test_wildcard_list():
    assert list_models("resnet*_unet") == [f"resnet{d}_unet" for d in (101, 152, 18, 34, 50)]
    assert {"unet", "unet_paper", "unet_selfreg", "unetpp", "unet3p"} <= set(list_models("unet*"))
    assert list_models("RESNET18*") == ["resnet18_unet"]
    assert list_models("zzz*") == []


def test_create_model_stamps_name_and_full_options():
    model = create_model("unet3p", 1, 4, base_channels=4, cat_channels=4)
    assert model.unetzoo_name == "unet3p"
    opts = model.unetzoo_options
    assert opts["num_classes"] == 4 and opts["base_channels"] == 4 and opts["cgm"] is False


def test_entry_has_source_and_defaults():
    import unetzoo

    assert not hasattr(unetzoo, "model_info")  # one name for a model's description
    info = unetzoo.get_entry("unet_selfreg")
    assert "SelfReg" in info.source
    assert info.default_options()["bilinear"] is True


def test_bad_sizes_are_model_errors():
    with pytest.raises(ModelError, match="in_channels and num_classes"):
        create_model("unet", in_channels=0)
    with pytest.raises(ModelError, match="base_channels"):
        create_model("unetpp", base_channels=0)


def _own_published():
    for name in list_models():
        entry = get_entry(name)
        if entry.family in OWN_FAMILIES:
            for pub in entry.published:
                yield pytest.param(name, pub, id=f"{name}-{pub.count}")


@pytest.mark.parametrize("name, pub", list(_own_published()))
def test_every_own_published_figure(name, pub):
    assert pub.source
    assert parameter_count(name, **pub.config) == pub.count


def test_every_own_model_has_taps_and_a_figure():
    for name in list_models():
        entry = get_entry(name)
        if entry.family in OWN_FAMILIES:
            assert entry.taps is not None, name
            assert entry.published, name


# ---------------------------------------------------------------------------------
# Generic smoke test over *every* registered model, teammates' included: the smallest
# configuration (``base_channels`` where the model has that width knob, no pretrained
# weights so nothing downloads) maps (1, C, 64, 64) to (1, num_classes, 64, 64).

SMALL_BASE_CHANNELS = 8


def _smallest_options(name: str) -> dict:
    entry = get_entry(name)
    accepted = entry.accepted_options()
    defaults = entry.default_options()
    options: dict = {}
    if accepted is None or "base_channels" in accepted:
        if "base_channels" in defaults:
            options["base_channels"] = SMALL_BASE_CHANNELS
    if "encoder_weights" in defaults:
        options["encoder_weights"] = None
    return options


# 1 and 3 input channels alternate over the sorted names (half the build time; each
# family's own tests cover both channel counts).
@pytest.mark.parametrize(
    "name, in_channels", [(n, 1 + 2 * (i % 2)) for i, n in enumerate(list_models())]
)
def test_every_model_maps_64x64_to_logits(name, in_channels):
    options = _smallest_options(name)
    with torch.device("meta"):
        probe = create_model(name, in_channels, 3, **options)
    if getattr(probe, "fixed_input_size", None):
        pytest.skip(f"{name} needs a fixed input size ({probe.fixed_input_size})")
    model = create_model(name, in_channels, 3, **options).eval()
    with torch.no_grad():
        y = model(torch.randn(1, in_channels, 64, 64))
    assert isinstance(y, torch.Tensor)
    assert y.shape == (1, 3, 64, 64)
    assert torch.isfinite(y).all()


def test_smallest_options_use_base_channels_where_available():
    assert _smallest_options("unet") == {"base_channels": SMALL_BASE_CHANNELS}
    assert _smallest_options("resnet18_unet") == {"encoder_weights": None}
    assert "base_channels" in inspect.signature(get_entry("unet3p").builder).parameters
