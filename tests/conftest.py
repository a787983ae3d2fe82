"""Shared test fixtures. Keep this small: area-specific helpers live next to their tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _no_weight_downloads(monkeypatch, tmp_path_factory):
    """Nothing downloads in tests: fetching pretrained weights fails as it does offline,
    and the torch hub cache is an empty folder of the test's own (``$TORCH_HOME``).
    Every fetch (torchvision's weights through ``torch.hub.load_state_dict_from_url``,
    unetzoo's own) ends in ``torch.hub.download_url_to_file``, so blocking it is enough.

    Models are built as registered; a test that wants a rung whose default is ImageNet
    weights passes ``encoder_weights=None`` explicitly (or a local file), or writes the
    file into ``$TORCH_HOME/hub/checkpoints`` itself.
    """

    def offline(url: str, *args, **kwargs):
        raise ConnectionError(f"downloads are disabled in tests ({url})")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Deterministic tensors and one intra-op thread (the CI machine is shared)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def first_conv(model: nn.Module) -> nn.Module:
    """The first convolution a model registers (the layer closest to the input)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear)):
            return m
    raise AssertionError("model has no convolution")


@pytest.fixture
def check_segmentation():
    """``check(model, in_channels, num_classes, h, w)``: shape, finiteness and gradient.

    Runs a training-mode forward/backward (batch 2, so BatchNorm works) and checks the
    logits are ``(2, num_classes, h, w)`` and that the first convolution gets a non-zero
    gradient; then an eval-mode forward of the same shape.
    """

    def check(model: nn.Module, in_channels: int, num_classes: int, h: int, w: int) -> None:
        model.train()
        x = torch.randn(2, in_channels, h, w)
        y = model(x)
        if isinstance(y, (list, tuple)):  # deep supervision: final output last
            assert all(t.shape == (2, num_classes, h, w) for t in y)
            loss = sum(t.float().pow(2).mean() for t in y)
        else:
            assert y.shape == (2, num_classes, h, w)
            loss = y.float().pow(2).mean()
        loss.backward()
        grad = first_conv(model).weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
        model.eval()
        with torch.no_grad():
            y = model(x)
        assert isinstance(y, torch.Tensor) and y.shape == (2, num_classes, h, w)
        assert torch.isfinite(y).all()

    return check
