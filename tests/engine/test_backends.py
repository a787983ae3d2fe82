"""CPU inference backends: identical labels, the ONNX cache, the auto rule, bad names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unetzoo.engine import backends
from unetzoo.engine.backends import (
    AutoBackend,
    ChannelsLastModel,
    check_backend,
    make_backend,
    onnx_backend,
)
from unetzoo.engine.inference import predict_volume
from unetzoo.errors import ConfigError, ModelError
from unetzoo.models import create_model

SIZE = 32


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("unet", in_channels=1, num_classes=3, base_channels=4).eval()


def _volume() -> np.ndarray:
    return np.random.default_rng(0).random((1, 5, 40, 44), dtype=np.float32)


def _checkpoint(tmp_path, model) -> object:
    path = tmp_path / "best.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def test_channels_last_copy_gives_identical_labels_and_leaves_the_model_alone():
    model = _model()
    ref = predict_volume(model, _volume(), SIZE, batch_size=4)
    got = predict_volume(ChannelsLastModel(model), _volume(), SIZE, batch_size=4)
    np.testing.assert_array_equal(got, ref)
    conv = next(m for m in model.modules()
                if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous()  # the caller's model was not converted
    assert not conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(not backends.onnxruntime_available(), reason="needs onnxruntime")
def test_onnx_cache_identical_labels_reused_and_invalidated(tmp_path):
    model = _model()
    ckpt = _checkpoint(tmp_path, model)
    ref = predict_volume(model, _volume(), SIZE, batch_size=4)

    first = onnx_backend(model, checkpoint=ckpt, img_size=SIZE)
    assert first.cached and not first.reused
    assert first.path.parent == tmp_path and first.path.name.startswith("best.")
    assert first.path.suffix == ".onnx"
    np.testing.assert_array_equal(predict_volume(first, _volume(), SIZE, batch_size=4), ref)
    stamp = first.path.stat().st_mtime_ns

    again = onnx_backend(model, checkpoint=ckpt, img_size=SIZE)
    assert again.reused and again.path == first.path
    assert again.path.stat().st_mtime_ns == stamp  # read, not rewritten

    # New weights in the checkpoint: a new key, so the old file is not used; a file
    # already at the new name that unetzoo did not write is left as it is.
    changed = _model(seed=1)
    torch.save({"state_dict": changed.state_dict()}, ckpt)
    key = backends.cache_key(backends.file_sha256(ckpt), 18, SIZE)
    foreign = backends.onnx_cache_path(ckpt, key)
    assert foreign != first.path
    foreign.write_bytes(b"not a model of ours")
    fresh = onnx_backend(changed, checkpoint=ckpt, img_size=SIZE)
    assert not fresh.cached and not fresh.reused
    assert foreign.read_bytes() == b"not a model of ours"
    np.testing.assert_array_equal(
        predict_volume(fresh, _volume(), SIZE, batch_size=4),
        predict_volume(changed, _volume(), SIZE, batch_size=4),
    )
    # The stale file of the old weights would not compute the new ones.
    assert backends._reuse(first.path, key, changed, backends._probe_input(1, SIZE), 1) is None
    assert not list(tmp_path.glob(".*.tmp.onnx"))  # no temporary export left behind


class _Scaled(torch.nn.Module):
    """A candidate: the reference's logits times ``k`` (k < 0 flips the labels)."""

    def __init__(self, ref: torch.nn.Module, k: float, delay: float = 0.0) -> None:
        super().__init__()
        self.ref, self.k, self.delay = ref, k, delay

    def forward(self, x):
        import time

        time.sleep(self.delay)
        return self.ref(x) * self.k


def test_auto_keeps_only_candidates_with_identical_labels():
    model = _model()

    def broken():
        raise ModelError("cannot export this one")

    auto = AutoBackend(model, {
        "wrong": lambda: _Scaled(model, -1.0),
        "broken": broken,
        "same": lambda: _Scaled(model, 2.0),
    })
    got = predict_volume(auto, _volume(), SIZE, batch_size=4)
    np.testing.assert_array_equal(got, predict_volume(model, _volume(), SIZE, batch_size=4))
    assert set(auto.rejected) == {"wrong", "broken"}
    assert auto.backend in ("torch", "same") and set(auto.timings) == {"torch", "same"}


def test_auto_picks_the_faster_and_defers_the_export():
    model = _model()
    calls = []

    def export():
        calls.append(1)
        return _Scaled(model, 1.0)

    slow = AutoBackend(model, {"slow": lambda: _Scaled(model, 1.0, delay=0.05)},
                       {"export": export}, defer_after_s=1e9)
    predict_volume(slow, _volume(), SIZE, batch_size=2)
    assert slow.backend == "torch" and not calls  # a short job never exports

    eager = AutoBackend(model, {}, {"export": export}, defer_after_s=0.0)
    predict_volume(eager, _volume(), SIZE, batch_size=2)
    assert calls == [1] and "export" in eager.timings


def test_auto_without_onnxruntime_falls_back_to_torch(tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "onnxruntime_available", lambda: False)
    model = _model()
    auto = make_backend(model, "auto", checkpoint=_checkpoint(tmp_path, model), img_size=SIZE,
                        defer_after_s=0.0)
    got = predict_volume(auto, _volume(), SIZE, batch_size=2)
    np.testing.assert_array_equal(got, predict_volume(model, _volume(), SIZE, batch_size=2))
    assert auto.backend in ("torch", "torch channels_last")
    assert "onnxruntime" not in auto.timings and "onnxruntime" not in auto.rejected
    with pytest.raises(ConfigError, match="pip install onnxruntime"):
        make_backend(model, "onnxruntime", img_size=SIZE)


def test_backend_names_and_devices_are_checked():
    model = _model()
    assert make_backend(model, "torch") is model
    with pytest.raises(ConfigError, match="unknown backend 'fast'; choose one of: auto"):
        check_backend("fast")
    with pytest.raises(ConfigError, match="runs on the CPU"):
        make_backend(model, "onnxruntime", device="cuda")
    assert make_backend(model, "auto", device="cuda") is model


# ---------------------------------------------------------------- CLI
def _saved_checkpoint(path):
    from ckpt_helpers import save_model_checkpoint

    return save_model_checkpoint(path, _model(), class_names=["background", "a", "b"],
                                 img_size=SIZE, dataset="phantom")


@pytest.mark.parametrize("command", ["test", "predict"])
def test_cli_bad_backend_is_one_line(command, tmp_path, capsys):
    from unetzoo.cli.main import main

    argv = ["--checkpoint", str(tmp_path / "x.pt"), "--backend", "fast"]
    argv = ["test", *argv] if command == "test" else ["predict", "in.nii.gz", *argv,
                                                     "--output", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown backend 'fast'; choose one of: auto, torch, onnxruntime"


@pytest.mark.skipif(not backends.onnxruntime_available(), reason="needs onnxruntime")
def test_cli_predict_labels_equal_across_backends_and_the_export_is_cached(tmp_path, capsys):
    import nibabel as nib

    from unetzoo.cli.main import main

    ckpt = _saved_checkpoint(tmp_path / "ck" / "best.pt")
    img = tmp_path / "case.nii.gz"
    vol = np.random.default_rng(1).random((40, 44, 6)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), img)
    labels = {}
    for backend in ("torch", "auto", "onnxruntime", "auto"):
        out = tmp_path / f"out_{backend}_{len(labels)}"
        assert main(["predict", str(img), "--checkpoint", str(ckpt), "--output", str(out),
                     "--device", "cpu", "--overlays", "0", "--backend", backend]) == 0
        labels[len(labels)] = np.asarray(nib.load(out / "case.nii.gz").dataobj)
    for k in range(1, 4):
        np.testing.assert_array_equal(labels[k], labels[0])
    cached = list((tmp_path / "ck").glob("best.*.onnx"))
    assert len(cached) == 1 and len(cached[0].name.split(".")[1]) == 16
    # The last auto run found the cached export and measured it beside PyTorch.
    assert "onnxruntime" in capsys.readouterr().out.splitlines()[-2]


def test_auto_survives_a_candidate_that_cannot_write(tmp_path):
    model = _model()

    def disk_full():
        raise OSError(28, "No space left on device")

    auto = AutoBackend(model, {"onnxruntime": disk_full})
    got = predict_volume(auto, _volume(), SIZE, batch_size=4)
    np.testing.assert_array_equal(got, predict_volume(model, _volume(), SIZE, batch_size=4))
    assert auto.backend == "torch" and "No space left" in auto.rejected["onnxruntime"]
