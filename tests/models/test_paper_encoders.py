"""Pretrained encoders of the source recipes (issue 27 item 1): TransUNet, Swin-Unet and
EMCAD start from the files their official scripts load; ``--recipe`` / ``--paper-protocol``
refuse a random encoder in one line; ``encoder_weights=none`` still trains from scratch and
the test report says so. Nothing downloads: conftest gives each test an empty
``$TORCH_HOME`` and disables downloads; the tests write the hub files themselves.
"""

from __future__ import annotations

import json

import pytest
import torch

from unetzoo.cli.main import main
from unetzoo.engine.config import require_pretrained_encoder, resolve_config
from unetzoo.errors import CheckpointError, ConfigError
from unetzoo.models import create_model, get_entry
from unetzoo.models.weights_maps import encoder_provenance, hub_checkpoint


@pytest.mark.parametrize("name", ["swin_unet", "emcad"])
def test_planted_pickle_as_release_file_never_runs(name, tmp_path):
    marker = tmp_path / "PWNED"

    class Touch:
        def __reduce__(self):
            import pathlib

            return (pathlib.Path.touch, (pathlib.Path(marker),))

    (src,) = get_entry(name).pretrained
    path = hub_checkpoint(src)
    path.parent.mkdir(parents=True)
    torch.save({"model": Touch()}, path)
    with pytest.raises(CheckpointError, match="cannot read encoder weights") as info:
        create_model(name, encoder_weights="imagenet")
    assert "\n" not in str(info.value) and not marker.exists()


@pytest.mark.parametrize("recipe, model, filename", [
    ("transunet", "transunet", "R50+ViT-B_16.npz"),
    ("swin_unet", "swin_unet", "swin_tiny_patch4_window7_224.pth"),
    ("emcad", "emcad", "pvt_v2_b2.pth"),
])
def test_source_recipe_refuses_a_random_encoder_in_one_line(recipe, model, filename):
    cfg = resolve_config("synapse", None, {"recipe": recipe})
    with pytest.raises(ConfigError) as info:
        require_pretrained_encoder(cfg)
    text = str(info.value)
    src = get_entry(model).paper_weights()
    assert "\n" not in text and text.startswith(f"--recipe {recipe} trains {model}")
    assert filename in text and src.url in text and str(hub_checkpoint(src)) in text
    # The file in the cache: the recipe uses it (its hash is checked when built).
    hub_checkpoint(src).parent.mkdir(parents=True, exist_ok=True)
    hub_checkpoint(src).write_bytes(b"stand-in")
    assert require_pretrained_encoder(cfg).model_options["encoder_weights"] == "imagenet"


def test_paper_protocol_refuses_and_explicit_choices_are_kept():
    cfg = resolve_config("synapse", None, {"model": "swin_unet", "paper_protocol": True})
    with pytest.raises(ConfigError, match="^--paper-protocol trains swin_unet"):
        require_pretrained_encoder(cfg)
    for value in (None, "none", "/my/swin.pth"):
        given = resolve_config("synapse", None, {"recipe": "emcad",
                                                 "model_options": {"encoder_weights": value}})
        assert require_pretrained_encoder(given) is given
    # Other recipes and models are untouched: the plain U-Net, TransUNet outside a recipe.
    for flags in ({"recipe": "transunet", "model": "unet"}, {"model": "transunet"}):
        cfg = resolve_config("synapse", None, flags)
        assert require_pretrained_encoder(cfg) is cfg


def test_cli_recipe_refusal_and_encoder_weights_flag(tmp_path, capsys):
    rc = main(["train", "--recipe", "transunet", "--max-epochs", "1",
               "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "R50+ViT-B_16.npz" in err[0], err
    rc = main(["train", "--recipe", "transunet", "--encoder-weights", "a.npz",
               "--model-option", "encoder_weights=b.npz", "--output", str(tmp_path / "r2")])
    assert rc == 2 and "disagree" in capsys.readouterr().err


def test_report_says_a_paper_encoder_was_trained_from_scratch():
    assert encoder_provenance("emcad", {"encoder_weights": None}) == {
        "encoder_weights": None,
        "encoder_note": "encoder trained from scratch (encoder_weights=none): the official "
        "recipe starts from the pretrained pvt_v2_b2.pth, so scores are not comparable with "
        "the paper's",
    }
    assert encoder_provenance("emcad", {"encoder_weights": "imagenet"}) == {
        "encoder_weights": "imagenet"}
    assert encoder_provenance("resunet_v0_1", {}) == {"encoder_weights": None}  # no paper file
    assert encoder_provenance("unet", {}) == {}


def test_cli_encoder_weights_none_trains_and_the_report_says_so(tmp_path):
    from unetzoo.data.phantom import generate_phantom

    ct = generate_phantom(tmp_path / "ct", n_train=2, n_test=1, shape=(4, 32, 32), seed=0)
    out = tmp_path / "run"
    rc = main(["train", "--recipe", "emcad", "--dataset", "phantom", "--data-root", str(ct),
               "--dataset-option", "n_train=2", "--dataset-option", "n_test=1",
               "--dataset-option", "shape=[4, 32, 32]", "--encoder-weights", "none",
               "--model-option", "embed_dims=[16, 32, 48, 64]", "--model-option",
               "depths=[1, 1, 1, 1]", "--model-option", "num_heads=[1, 2, 2, 4]",
               "--img-size", "32", "--batch-size", "2", "--max-epochs", "1",
               "--device", "cpu", "--no-progress", "--output", str(out)])
    assert rc == 0
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["encoder_weights"] is None and "from scratch" in summary["encoder_note"]
    assert "Note: encoder trained from scratch" in (out / "report" / "summary.md").read_text()
