"""Loading torchvision ResNet weights into encoders: local files, 'imagenet', bad files.

Nothing downloads: the tests save torchvision's own randomly initialised ResNet-18 state
dict (the same format as resnet18-f37072fd.pth), for 'imagenet' into the test's own
``$TORCH_HOME/hub/checkpoints`` (conftest).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision

from unetzoo.errors import CheckpointError, ModelError
from unetzoo.models import create_model, encoders
from unetzoo.models.encoders import ResNetEncoder, adapt_first_conv, guess_resnet_depth
from unetzoo.models.registry import PretrainedSource
from unetzoo.models.weights_maps import hub_checkpoint, pretrained_file, sha256_file


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(1)
    return torchvision.models.resnet18().state_dict()


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory, resnet18_state):
    path = tmp_path_factory.mktemp("weights") / "resnet18-f37072fd.pth"
    torch.save(resnet18_state, path)
    return path


def test_local_file_loads_every_weight(resnet18_file, resnet18_state):
    enc = ResNetEncoder(18, in_channels=3, weights=resnet18_file)
    assert torch.equal(enc.stem[0].weight, resnet18_state["conv1.weight"])
    assert torch.equal(enc.stem[1].running_var, resnet18_state["bn1.running_var"])
    assert torch.equal(enc.layer4[1].conv2.weight, resnet18_state["layer4.1.conv2.weight"])


def test_release_files_without_num_batches_tracked_load(tmp_path, resnet18_state):
    # torchvision's published resnet*.pth files have no BatchNorm num_batches_tracked.
    old_style = {k: v for k, v in resnet18_state.items() if "num_batches_tracked" not in k}
    assert len(old_style) < len(resnet18_state)
    path = tmp_path / "resnet18-old.pth"
    torch.save(old_style, path)
    enc = ResNetEncoder(18, 3, weights=path)
    assert torch.equal(enc.layer2[0].bn1.weight, resnet18_state["layer2.0.bn1.weight"])


def test_one_channel_sums_rgb_filters(resnet18_file, resnet18_state):
    model = create_model("resnet18_unet", in_channels=1, encoder_weights=str(resnet18_file))
    rgb = resnet18_state["conv1.weight"]
    assert model.encoder.stem[0].weight.shape == (64, 1, 7, 7)
    assert torch.allclose(model.encoder.stem[0].weight, rgb.sum(1, keepdim=True))
    # A grey image gives the same stem response as the RGB image R = G = B.
    grey = torch.randn(1, 1, 32, 32)
    enc3 = ResNetEncoder(18, 3, weights=resnet18_file).eval()
    with torch.no_grad():
        a = model.encoder.eval().stem[0](grey)
        b = enc3.stem[0](grey.repeat(1, 3, 1, 1))
    assert torch.allclose(a, b, atol=1e-5)


def test_other_channel_counts_repeat_and_scale():
    w = torch.randn(64, 3, 7, 7)
    out = adapt_first_conv(w, 5)
    assert out.shape == (64, 5, 7, 7)
    assert torch.allclose(out[:, 3], w[:, 0] * 3 / 5)
    assert torch.equal(adapt_first_conv(w, 3), w)


def test_weights_reach_unetpp_and_unet3p_encoders(resnet18_file, resnet18_state):
    for name in ("unetpp", "unet3p"):
        model = create_model(name, 3, 2, encoder="resnet18", encoder_weights=resnet18_file)
        assert torch.equal(
            model.encoder.layer1[0].conv1.weight, resnet18_state["layer1.0.conv1.weight"]
        )


def test_data_parallel_prefix_and_wrapped_state_dict(tmp_path, resnet18_state):
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in resnet18_state.items()}}, path)
    enc = ResNetEncoder(18, 3, weights=path)
    assert torch.equal(enc.stem[0].weight, resnet18_state["conv1.weight"])


def _hub_file(source, state) -> str:
    """Write ``state`` where ``source``'s file lives in the (test's own) hub cache."""
    path = hub_checkpoint(source)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return sha256_file(path)


def test_imagenet_reads_the_hash_checked_hub_file(monkeypatch, resnet18_state):
    # The file the test writes has its own hash: the registry data says so (a stand-in
    # for torchvision's published prefix, which no test file can match).
    real = encoders.imagenet_source(18)
    digest = _hub_file(real, resnet18_state)
    monkeypatch.setattr(encoders, "imagenet_source",
                        lambda depth: dataclasses.replace(real, hash_prefix=digest[:8]))
    enc = ResNetEncoder(18, 1, weights="imagenet")
    assert torch.allclose(enc.stem[0].weight, resnet18_state["conv1.weight"].sum(1, True))


def test_imagenet_file_with_another_hash_is_refused(resnet18_state):
    real = encoders.imagenet_source(18)
    assert real.hash_prefix == "f37072fd" and real.filename == "resnet18-f37072fd.pth"
    _hub_file(real, resnet18_state)  # right layout, not the released bytes
    with pytest.raises(CheckpointError, match="is not the released resnet18-f37072fd.pth") as info:
        ResNetEncoder(18, 3, weights="imagenet")
    assert "\n" not in str(info.value) and "starts with f37072fd" in str(info.value)


def test_full_sha256_is_checked_when_known(tmp_path, monkeypatch, resnet18_state):
    src = PretrainedSource(tag="imagenet", url="https://example.invalid/w.pth",
                           filename="w.pth", hash_prefix="0", sha256="0" * 64)
    digest = _hub_file(src, resnet18_state)
    with pytest.raises(CheckpointError, match="its SHA-256 is"):
        pretrained_file(src)
    # The prefix alone would not do: the full digest decides.
    ok = dataclasses.replace(src, hash_prefix="f" * 8, sha256=digest)
    assert pretrained_file(ok) == hub_checkpoint(src)


def test_imagenet_fetch_failure_is_one_line():
    # conftest disables downloads and gives an empty $TORCH_HOME: as offline.
    with pytest.raises(CheckpointError, match="resnet34.*pass its path") as info:
        create_model("resnet34_unet", encoder_weights="imagenet")
    text = str(info.value)
    assert "\n" not in text and str(hub_checkpoint(encoders.imagenet_source(34))) in text


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found") as info:
        create_model("resnet18_unet", encoder_weights=str(tmp_path / "nope.pth"))
    assert "\n" not in str(info.value)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        create_model("resnet18_unet", encoder_weights=str(path))


def test_truncated_file(tmp_path, resnet18_file):
    data = resnet18_file.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        ResNetEncoder(18, 3, weights=path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="no state dict"):
        ResNetEncoder(18, 3, weights=path)


def test_wrong_depth_names_the_depth_found(resnet18_file):
    with pytest.raises(CheckpointError, match="resnet34 encoder.*resnet18 checkpoint") as info:
        create_model("resnet34_unet", encoder_weights=str(resnet18_file))
    assert "\n" not in str(info.value)


def test_guess_resnet_depth_on_bottleneck_layout():
    with torch.device("meta"):
        state = torchvision.models.resnet50().state_dict()
    assert guess_resnet_depth(state) == 50
    assert guess_resnet_depth({"foo": torch.zeros(1)}) is None


def test_weights_need_a_resnet_encoder(resnet18_file):
    with pytest.raises(ModelError, match="encoder_weights needs a ResNet"):
        create_model("unetpp", encoder_weights=str(resnet18_file))


def test_unknown_encoder_is_one_line():
    with pytest.raises(ModelError, match="unknown encoder 'resnet35'"):
        create_model("unet3p", encoder="resnet35")
