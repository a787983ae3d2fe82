"""Checkpoints: the typed Checkpoint, its one reader, atomic writes, refused files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from unetzoo.engine.checkpoint import (
    FORMAT,
    REQUIRED_KEYS,
    VERSION,
    Checkpoint,
    TrainState,
    capture_rng_state,
    read_checkpoint,
    restore_rng_state,
    write_checkpoint,
)
from unetzoo.engine.spec import InferenceSpec
from unetzoo.errors import CheckpointError

SRC = Path(__file__).resolve().parents[2] / "src" / "unetzoo"


def _ckpt(**over) -> tuple[torch.nn.Module, Checkpoint]:
    from unetzoo.models import create_model

    model = create_model("unet", 1, 3, base_channels=4)
    spec = InferenceSpec.for_model(model, class_names=["background", "a", "b"], in_channels=1,
                                   img_size=32, dataset="x")
    state = TrainState(optimizer={"state": {}, "param_groups": []}, epoch=1, iteration=5,
                       best_metric=0.5, best_epoch=1)
    fields = {"spec": spec, "weights": model.state_dict(), "config": {"seed": 1, "img_size": 32},
              "train_state": state, **over}
    return model, Checkpoint(**fields)


def _raw(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_round_trip_returns_typed_fields(tmp_path):
    model, ck = _ckpt()
    path = write_checkpoint(ck, tmp_path / "sub" / "c.pt")
    assert path.is_file()
    assert not list(path.parent.glob("*.tmp"))  # the temp file was renamed away
    back = read_checkpoint(path)
    assert isinstance(back, Checkpoint) and isinstance(back.spec, InferenceSpec)
    assert back.spec == ck.spec and back.num_classes == 3 == len(back.spec.class_names)
    assert back.config == {"seed": 1, "img_size": 32}
    assert isinstance(back.train_state, TrainState) and back.train_state.iteration == 5
    assert back.epoch == 1 and back.train_state.best_metric == 0.5
    assert back.weights.keys() == ck.weights.keys()
    assert all(torch.equal(back.weights[k], v) for k, v in ck.weights.items())
    with pytest.raises(TypeError):
        back["spec"]  # noqa: B018 - typed fields, not a dict to index
    rebuilt = back.build_model()
    assert not rebuilt.training
    x = torch.rand(1, 1, 32, 32)
    model.eval()
    torch.testing.assert_close(rebuilt(x), model(x))


def test_inference_only_file_has_no_train_state(tmp_path):
    _, ck = _ckpt(train_state=None, config={})
    back = read_checkpoint(write_checkpoint(ck, tmp_path / "c.pt"))
    assert back.train_state is None and back.epoch is None and back.config == {}


def test_missing_corrupt_foreign(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint(bad)
    _, ck = _ckpt()
    good = write_checkpoint(ck, tmp_path / "good.pt")
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save(dict(ck.weights), foreign)  # a bare state dict
    with pytest.raises(CheckpointError, match="not a unetzoo checkpoint"):
        read_checkpoint(foreign)


def _one_line_error(path: Path) -> str:
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_a_file_missing_a_field_is_one_line(tmp_path, key):
    _, ck = _ckpt()
    data = _raw(write_checkpoint(ck, tmp_path / "c.pt"))
    del data[key]
    torch.save(data, tmp_path / "c.pt")
    assert f"lacks key(s) {key}" in _one_line_error(tmp_path / "c.pt")


@pytest.mark.parametrize("version, words", [
    (1, "written by an older unetzoo (format 1"),
    (VERSION + 1, "newer than this unetzoo"),
    ("2", "not a whole number"),
])
def test_a_wrong_version_is_one_line(tmp_path, version, words):
    _, ck = _ckpt()
    data = _raw(write_checkpoint(ck, tmp_path / "c.pt"))
    torch.save({**data, "version": version}, tmp_path / "c.pt")
    assert words in _one_line_error(tmp_path / "c.pt")


def test_a_flat_file_of_the_first_format_is_refused(tmp_path):
    """What unetzoo 0.1 wrote (spec keys at the top, ``state_dict``): no conversion."""
    model, ck = _ckpt()
    flat = {"format": FORMAT, "version": 1, **ck.spec.to_dict(),
            "state_dict": model.state_dict(), "config": {}, "epoch": 1}
    torch.save(flat, tmp_path / "old.pt")
    msg = _one_line_error(tmp_path / "old.pt")
    assert "older unetzoo" in msg and "retrain" in msg


@pytest.mark.parametrize("change, words", [
    ({"config": {"img_size": 64}}, "config says img_size 64, its spec 32"),
    ({"config": [1]}, "not a mapping"),
    ({"weights": {"w": [1.0]}}, "not a mapping of names to tensors"),
    ({"train_state": {"epoch": 1}}, "train_state is damaged"),
    ({"train_state": {"optimizer": {}, "epoch": "1", "iteration": 0}}, "not a whole number"),
    ({"spec": {"model": {"name": "unet"}, "class_names": []}}, "class_names"),
])
def test_damaged_fields_are_one_line(tmp_path, change, words):
    _, ck = _ckpt()
    data = _raw(write_checkpoint(ck, tmp_path / "c.pt"))
    torch.save({**data, **change}, tmp_path / "c.pt")
    assert words in _one_line_error(tmp_path / "c.pt")


class Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_objects_are_refused(tmp_path, capsys):
    p = tmp_path / "evil.pt"
    torch.save({"format": "unetzoo-checkpoint", "x": Evil()}, p)
    with pytest.raises(CheckpointError, match="corrupt or not a safe torch file"):
        read_checkpoint(p)
    assert "pickled code ran" not in capsys.readouterr().out


def test_weights_that_do_not_fit(tmp_path):
    import dataclasses

    _, ck = _ckpt()
    wide = dataclasses.replace(ck.spec, options={**ck.spec.options, "base_channels": 8})
    p = write_checkpoint(dataclasses.replace(ck, spec=wide), tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        read_checkpoint(p).build_model()
    two = dataclasses.replace(ck.spec, class_names=("bg", "a"))  # head of 3 outputs
    p = write_checkpoint(dataclasses.replace(ck, spec=two), tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="3 outputs but 2 class names"):
        read_checkpoint(p).build_model()


def test_rng_state_round_trip(tmp_path):
    import dataclasses
    import random

    import numpy as np

    _, ck = _ckpt()  # builds a model: draws from the torch RNG first
    gen = torch.Generator().manual_seed(3)
    state = dataclasses.replace(ck.train_state, rng=capture_rng_state(gen))
    p = write_checkpoint(dataclasses.replace(ck, train_state=state), tmp_path / "r.pt")
    first = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    restore_rng_state(read_checkpoint(p).train_state.rng, gen)
    again = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    assert first == again


def test_rebuild_does_not_reload_pretrained_encoder_file(tmp_path):
    """A run trained from a local encoder file must rebuild on a machine without it."""
    from unetzoo.models import create_model

    model = create_model("resnet18_unet", 1, 2)
    spec = InferenceSpec.for_model(model, class_names=["background", "fg"], in_channels=1,
                                   img_size=32)
    spec = InferenceSpec.from_dict({**spec.to_dict(), "model": {
        "name": "resnet18_unet",
        "options": {**model.unetzoo_options, "encoder_weights": str(tmp_path / "gone.pth")}}})
    path = write_checkpoint(Checkpoint(spec=spec, weights=model.state_dict()), tmp_path / "c.pt")
    rebuilt = read_checkpoint(path).build_model()
    x = torch.rand(1, 1, 32, 32)
    model.eval()
    torch.testing.assert_close(rebuilt(x), model(x))


def test_only_the_checkpoint_module_reads_checkpoint_files():
    """No module but engine/checkpoint.py calls torch.load (models/ reads published
    pretrained weight files, never a checkpoint) or names the file format's keys."""
    allowed = {SRC / "engine" / "checkpoint.py"}
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path in allowed:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            if (call and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "torch" and path.parent.name != "models"):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno} torch.load")
            if isinstance(node, ast.Constant) and node.value in (FORMAT, "train_state"):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno} {node.value!r}")
    assert offenders == []
