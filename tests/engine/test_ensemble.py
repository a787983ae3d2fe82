"""Softmax-averaging ensembles of checkpoints (unetzoo.engine.ensemble)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unetzoo import create_model
from unetzoo.engine import ensemble as ens
from unetzoo.engine.inference import predict_probs, predict_volume
from unetzoo.errors import CheckpointError

IMG = 16
CLASSES = ["background", "a", "b"]


def _model(seed: int, num_classes: int = 3, **opts):
    torch.manual_seed(seed)
    m = create_model("unet", in_channels=1, num_classes=num_classes, base_channels=4, **opts)
    return m.eval()


def _save(tmp_path, name: str, seed: int, **over):
    from ckpt_helpers import save_model_checkpoint

    fields = {"class_names": CLASSES, "img_size": IMG, "dataset": "phantom", **over}
    return save_model_checkpoint(tmp_path / name, _model(seed), **fields)


def test_ensemble_probabilities_are_the_mean_of_the_members():
    members = [_model(0), _model(1), _model(2)]
    x = torch.randn(2, 1, IMG, IMG)
    got = predict_probs(ens.EnsembleModel(members).eval(), x)
    ref = sum(predict_probs(m, x) for m in members) / 3
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    assert torch.allclose(got.sum(1), torch.ones(2, IMG, IMG), atol=1e-5)
    # With flip TTA as well (the wrapper is an ordinary model to predict_probs).
    got = predict_probs(ens.EnsembleModel(members).eval(), x, tta=True)
    ref = sum(predict_probs(m, x, tta=True) for m in members) / 3
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)


def test_binary_one_channel_heads_average_as_two_classes():
    members = [_model(0, num_classes=1), _model(1, num_classes=1)]
    x = torch.randn(1, 1, IMG, IMG)
    got = predict_probs(ens.EnsembleModel(members).eval(), x)
    ref = sum(predict_probs(m, x) for m in members) / 2
    assert got.shape[1] == 2
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)


def test_volume_probabilities_match_the_labels():
    model = ens.EnsembleModel([_model(0), _model(3)]).eval()
    vol = np.random.default_rng(0).normal(size=(1, 3, 20, 13)).astype(np.float32)
    labels = predict_volume(model, vol, IMG, batch_size=2)
    probs = ens.predict_volume_probs(model, vol, IMG, batch_size=2)
    assert probs.shape == (3, 3, 20, 13) and probs.dtype == np.float32
    np.testing.assert_array_equal(probs.argmax(0), labels)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def test_load_ensemble_from_checkpoints(tmp_path):
    a, b = _save(tmp_path, "f0.pt", 0), _save(tmp_path, "f1.pt", 1)
    single, first = ens.load_ensemble([a])
    assert not isinstance(single, ens.EnsembleModel) and first.spec.img_size == IMG
    model, first = ens.load_ensemble([a, b])
    assert isinstance(model, ens.EnsembleModel) and len(model.members) == 2
    assert first.spec.img_size == IMG and list(first.spec.class_names) == CLASSES
    x = torch.randn(1, 1, IMG, IMG)
    ref = (predict_probs(single, x) + predict_probs(ens.load_ensemble([b])[0], x)) / 2
    torch.testing.assert_close(predict_probs(model, x), ref, atol=1e-6, rtol=1e-5)
    seen = []
    wrapped, _ = ens.load_ensemble([a, b], wrap=lambda m, p, ck: seen.append(p) or m)
    assert seen == [str(a), str(b)] and isinstance(wrapped, ens.EnsembleModel)


@pytest.mark.parametrize(
    "over, key",
    [
        ({"img_size": 32}, "img_size"),
        ({"class_names": ["background", "a", "c"]}, "class_names"),
        ({"preprocessing": {"kind": "zscore"}}, "preprocessing"),
    ],
)
def test_incompatible_members_are_one_line(tmp_path, over, key):
    a = _save(tmp_path, "f0.pt", 0)
    b = _save(tmp_path, "f1.pt", 1, **over)
    with pytest.raises(CheckpointError, match=f"{key} differs") as exc:
        ens.load_ensemble([a, b])
    assert "\n" not in str(exc.value)


def test_same_checkpoint_twice_is_refused(tmp_path):
    a = _save(tmp_path, "f0.pt", 0)
    with pytest.raises(CheckpointError, match="twice"):
        ens.load_ensemble([a, a])


def test_average_saved_probabilities():
    p = np.random.default_rng(0).random((2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(ens.average_probabilities([p, 3 * p]), 2 * p)
    from unetzoo.errors import DataError

    with pytest.raises(DataError, match="differ in shape"):
        ens.average_probabilities([p, p[:, :2]])
