"""`unetzoo export` and `unetzoo predict --onnx`: metadata, axes, fallbacks, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from unetzoo.cli.main import main
from unetzoo.deploy.export import ExportError, export_model, read_metadata
from unetzoo.errors import CheckpointError
from unetzoo.models.base import SegmentationModel

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def test_export_dynamic_metadata_and_axes(dynamic_onnx, tiny_checkpoint):
    from unetzoo.engine.checkpoint import read_checkpoint

    spec = read_checkpoint(tiny_checkpoint).spec
    model = onnx.load(str(dynamic_onnx))
    onnx.checker.check_model(model, full_check=True)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 1, "height", "width"]
    meta = read_metadata(dynamic_onnx)
    assert meta["class_names"] == list(spec.class_names)
    assert meta["img_size"] == spec.img_size
    assert meta["preprocessing"] == spec.preprocessing
    assert meta["model"] == {"name": spec.model, "options": dict(spec.options)}
    props = {p.key: p.value for p in model.metadata_props}
    assert props["model_name"] == "unet"


def test_dynamic_unet_parity(dynamic_onnx, tiny_checkpoint, phantom_norm):
    """The registry's `unet` (the zoo parity test leaves it to this file)."""
    from unetzoo.engine.checkpoint import read_checkpoint

    model = read_checkpoint(tiny_checkpoint).build_model()
    sess = ort.InferenceSession(str(dynamic_onnx), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    # Random inputs, and phantom slices cropped to sizes that are not multiples of 16.
    inputs = [torch.randn(2, 1, 37, 45, generator=gen), torch.randn(1, 1, 80, 23, generator=gen),
              torch.from_numpy(phantom_norm[:3, None, :90, :70].copy())]
    for x in inputs:
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run(None, {"image": x.numpy()})[0]
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-4
        np.testing.assert_array_equal(got.argmax(1), ref.argmax(1))


def test_static_export_and_printed_summary(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "static.onnx"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dynamic axes: none" in text and "ONNX Runtime - PyTorch" in text
    shape = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert shape == [1, 1, 64, 64]
    # A fixed-batch file still predicts a batch of 3 slices (split into runs of 1).
    from unetzoo.engine.checkpoint import read_checkpoint
    from unetzoo.engine.onnx import OnnxModule

    ref_model = read_checkpoint(tiny_checkpoint).build_model()
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        np.testing.assert_allclose(OnnxModule(out)(x).numpy(), ref_model(x).numpy(), atol=1e-4)


def test_predict_onnx_equals_checkpoint_path(dynamic_onnx, tiny_checkpoint, phantom_files,
                                             tmp_path):
    import nibabel as nib
    from PIL import Image

    inputs = [str(phantom_files["png"]), str(phantom_files["nii"])]
    a, b = tmp_path / "torch", tmp_path / "onnx"
    assert main(["predict", *inputs, "--checkpoint", str(tiny_checkpoint), "--output", str(a),
                 "--overlays", "0"]) == 0
    assert main(["predict", *inputs, "--onnx", str(dynamic_onnx), "--output", str(b),
                 "--overlays", "0"]) == 0
    png_a = np.asarray(Image.open(a / "phantom_slice_seg.png"))
    png_b = np.asarray(Image.open(b / "phantom_slice_seg.png"))
    np.testing.assert_array_equal(png_a, png_b)
    vol_a = np.asarray(nib.load(a / "phantom_case.nii.gz").dataobj)
    vol_b = np.asarray(nib.load(b / "phantom_case.nii.gz").dataobj)
    assert vol_a.shape == nib.load(phantom_files["nii"]).shape
    np.testing.assert_array_equal(vol_a, vol_b)
    # One loader, two kinds: the checkpoint still loads as PyTorch after the ONNX run,
    # and both carry the same inference spec.
    from unetzoo.engine.onnx import OnnxModule
    from unetzoo.engine.predict import load_predictor

    via_ckpt, via_onnx = load_predictor(tiny_checkpoint), load_predictor(dynamic_onnx)
    assert not isinstance(via_ckpt.model, OnnxModule) and isinstance(via_onnx.model, OnnxModule)
    assert via_ckpt.spec == via_onnx.spec


# An operator with no ONNX translation: stands in for a model ONNX cannot express.
@torch.library.custom_op("unetzoo_deploy_test::mystery", mutates_args=())
def _mystery(x: torch.Tensor) -> torch.Tensor:
    return x * 2.0


@_mystery.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class _Mystery(SegmentationModel):
    def __init__(self) -> None:
        super().__init__()
        self.in_channels, self.num_classes, self.size_multiple = 1, 2, 4
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return _mystery(self.conv(x))


def test_model_onnx_cannot_express(tmp_path):
    model = _Mystery().eval()
    with pytest.raises(ExportError, match="cannot be exported to ONNX.*--format torch-export"):
        export_model(model, tmp_path / "m.onnx", img_size=16)
    res = export_model(model, tmp_path / "m.onnx", fmt="auto", img_size=16)
    assert res.format == "torch-export" and res.path.suffix == ".pt2"
    assert res.fallback_reason
    assert res.dynamic_axes == {0: "batch", 2: "height", 3: "width"}
    assert res.max_abs_diff is not None and res.max_abs_diff <= 1e-5
    assert read_metadata(res.path)["model"]["name"] == "_Mystery"
    prog = torch.export.load(str(res.path)).module()
    x = torch.randn(3, 1, 13, 18)
    with torch.no_grad():
        torch.testing.assert_close(prog(x), model(x))


def test_bad_checkpoints_one_line(tmp_path, capsys):
    from unetzoo import create_model
    from unetzoo.engine.checkpoint import FORMAT, VERSION

    bare = tmp_path / "bare.pt"
    torch.save(create_model("unet", base_channels=2).state_dict(), bare)
    assert main(["export", "--checkpoint", str(bare)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a unetzoo checkpoint" in err

    no_meta = tmp_path / "no_meta.pt"
    torch.save({"format": FORMAT, "version": VERSION, "config": {}, "weights": {},
                "train_state": None}, no_meta)
    assert main(["export", "--checkpoint", str(no_meta)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lacks key(s) spec" in err

    assert main(["export", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_onnx_without_metadata(tmp_path):
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(nn.Conv2d(1, 2, 1), (torch.randn(1, 1, 4, 4),), str(plain), dynamo=True,
                      verbose=False)
    with pytest.raises(CheckpointError, match="no unetzoo metadata"):
        read_metadata(plain)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        read_metadata(junk)
