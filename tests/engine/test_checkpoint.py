"""Checkpoints: atomic round trip, weights_only loading, corrupt and foreign files."""

from __future__ import annotations

import pytest
import torch

from unetzoo.engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    model_from_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from unetzoo.errors import CheckpointError


def _payload():
    from unetzoo.models import create_model

    model = create_model("unet", 1, 3, base_channels=4)
    return model, {
        "model": {"name": model.unetzoo_name, "options": dict(model.unetzoo_options)},
        "state_dict": model.state_dict(),
        "class_names": ["background", "a", "b"],
        "in_channels": 1,
        "img_size": 32,
        "preprocessing": {"kind": "none"},
        "dataset": "x",
        "config": {"seed": 1},
        "epoch": 1,
        "iteration": 5,
        "best_metric": 0.5,
    }


def test_round_trip_and_rebuild(tmp_path):
    model, payload = _payload()
    path = save_checkpoint(payload, tmp_path / "sub" / "c.pt")
    assert path.is_file()
    assert not list(path.parent.glob("*.tmp"))  # the temp file was renamed away
    ck = load_checkpoint(path)
    assert ck["format"] == "unetzoo-checkpoint" and ck["iteration"] == 5
    rebuilt = model_from_checkpoint(ck)
    assert not rebuilt.training
    x = torch.rand(1, 1, 32, 32)
    model.eval()
    torch.testing.assert_close(rebuilt(x), model(x))


def test_missing_corrupt_foreign(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    _, payload = _payload()
    good = save_checkpoint(payload, tmp_path / "good.pt")
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save(payload["state_dict"], foreign)  # a bare state dict
    with pytest.raises(CheckpointError, match="not a unetzoo checkpoint"):
        load_checkpoint(foreign)


class Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_objects_are_refused(tmp_path, capsys):
    p = tmp_path / "evil.pt"
    torch.save({"format": "unetzoo-checkpoint", "x": Evil()}, p)
    with pytest.raises(CheckpointError, match="corrupt or not a safe torch file"):
        load_checkpoint(p)
    assert "pickled code ran" not in capsys.readouterr().out


def test_weights_that_do_not_fit(tmp_path):
    _, payload = _payload()
    payload["model"]["options"]["base_channels"] = 8  # weights are of a 4-wide net
    p = save_checkpoint(payload, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        model_from_checkpoint(load_checkpoint(p))
    payload["class_names"] = ["bg", "a"]  # head of 3 classes, names say 2
    p = save_checkpoint(payload, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="inconsistent"):
        model_from_checkpoint(load_checkpoint(p))


def test_rng_state_round_trip(tmp_path):
    import random

    import numpy as np

    payload = _payload()[1]  # builds a model: draws from the torch RNG first
    gen = torch.Generator().manual_seed(3)
    state = capture_rng_state(gen)
    p = save_checkpoint({**payload, "rng": state}, tmp_path / "r.pt")
    first = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    restore_rng_state(load_checkpoint(p)["rng"], gen)
    again = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    assert first == again


def test_rebuild_does_not_reload_pretrained_encoder_file(tmp_path):
    """A run trained from a local encoder file must rebuild on a machine without it."""
    from unetzoo.models import create_model

    model = create_model("resnet18_unet", 1, 2)
    payload = {
        "model": {
            "name": "resnet18_unet",
            "options": {**model.unetzoo_options, "encoder_weights": str(tmp_path / "gone.pth")},
        },
        "state_dict": model.state_dict(),
        "class_names": ["background", "fg"],
        "in_channels": 1,
        "img_size": 32,
        "preprocessing": {"kind": "none"},
    }
    path = save_checkpoint(payload, tmp_path / "c.pt")
    rebuilt = model_from_checkpoint(load_checkpoint(path))
    x = torch.rand(1, 1, 32, 32)
    model.eval()
    torch.testing.assert_close(rebuilt(x), model(x))


@pytest.mark.parametrize("name, small, legacy", [
    ("unet_selfreg", {"base_channels": 4}, {"align_corners": False, "skip_first": False}),
    ("unet3p", {"base_channels": 4, "cgm": True}, {"cgm_mode": "background"}),
    ("resnet18_unet", {}, {"head_relu": True}),
])
def test_checkpoint_from_before_a_default_changed_keeps_its_function(name, small, legacy):
    # Options are stored merged, so a checkpoint lacking one was written before it existed:
    # it is rebuilt with the old behaviour, not silently as the new default.
    from unetzoo.models import create_model

    torch.manual_seed(0)
    old = create_model(name, 1, 3, **small, **legacy).eval()
    options = {k: v for k, v in old.unetzoo_options.items() if k not in legacy}
    ck = {"model": {"name": name, "options": options}, "state_dict": old.state_dict(),
          "class_names": ["background", "a", "b"], "in_channels": 1}
    rebuilt = model_from_checkpoint(ck)
    assert all(rebuilt.unetzoo_options[k] == v for k, v in legacy.items())
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), old(x))
    # A current checkpoint keeps the (new) defaults it stored.
    cur = create_model(name, 1, 3, **small)
    ck_new = {**ck, "model": {"name": name, "options": dict(cur.unetzoo_options)},
              "state_dict": cur.state_dict()}
    assert all(model_from_checkpoint(ck_new).unetzoo_options[k] == cur.unetzoo_options[k]
               for k in legacy)
