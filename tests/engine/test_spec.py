"""One inference spec, one loader, one prediction path (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unetzoo.engine.spec import InferenceSpec
from unetzoo.errors import CheckpointError
from unetzoo.models import create_model

CLASSES = ["background", "a", "b"]


def _spec_dict(**over) -> dict:
    d = {"model": {"name": "unet", "options": {"base_channels": 4}}, "class_names": CLASSES,
         "in_channels": 1, "img_size": 32, "preprocessing": {"kind": "ct", "window": [-125, 275]},
         "dataset": "phantom"}
    d.update(over)
    return d


def test_round_trip_and_defaults():
    old = _spec_dict()  # a hand-built spec: no slicing / resize / spacing
    spec = InferenceSpec.from_dict(old)
    assert spec.slicing == "through-plane" and spec.resize == "cubic-in-nearest-out"
    assert spec.num_classes == 3 and spec.spacing is None
    data = spec.to_dict()
    assert {k: data[k] for k in old} == {**old, "preprocessing": {"kind": "ct", "window": [-125, 275]}}
    assert InferenceSpec.from_dict(json.loads(json.dumps(data))) == spec  # plain values
    with pytest.raises(AttributeError):
        spec.img_size = 64  # frozen


@pytest.mark.parametrize("over, needle", [
    ({"img_size": 4}, "img_size is 4"),
    ({"img_size": float("nan")}, "img_size is nan"),
    ({"in_channels": True}, "in_channels is True"),
    ({"class_names": []}, "class_names"),
    ({"preprocessing": {"kind": "ct", "window": [5, 5]}}, "CT window"),
    ({"model": {"options": {}}}, "no model name"),
    ({"slicing": "sagittal"}, "slicing rule 'sagittal'"),
    ({"spacing": [1.0, -2.0, 3.0]}, "spacing"),
])
def test_bad_specs_are_one_line(over, needle):
    with pytest.raises(CheckpointError) as ei:
        InferenceSpec.from_dict(_spec_dict(**over), "x.pt")
    msg = str(ei.value)
    assert msg.startswith("x.pt: ") and needle in msg and "\n" not in msg


def test_training_records_deep_supervision_off():
    model = create_model("unetpp", in_channels=1, num_classes=3, base_channels=4,
                         deep_supervision=True)
    spec = InferenceSpec.for_model(model, class_names=CLASSES, in_channels=1, img_size=32)
    assert spec.model == "unetpp" and spec.options["deep_supervision"] is False
    assert spec.options["base_channels"] == 4


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from ckpt_helpers import save_model_checkpoint

    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=3, base_channels=4).eval()
    return save_model_checkpoint(tmp_path_factory.mktemp("spec") / "m.pt", model,
                                 class_names=CLASSES, preprocessing={"kind": "none"})


def _volume(path: Path) -> Path:
    import nibabel as nib

    arr = np.random.default_rng(0).normal(size=(20, 18, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(arr, np.diag([1.0, 1.0, 3.0, 1.0])), path)
    return path


def test_python_api_and_cli_write_the_same_files(ckpt, tmp_path):
    """predict_files (Python) is the CLI's path: nnU-Net naming, the input's grid."""
    import nibabel as nib

    from unetzoo.cli.main import main
    from unetzoo.engine.predict import load_predictor, predict_files

    src = _volume(tmp_path / "case1.nii.gz")
    recs = predict_files([src], ckpt, tmp_path / "api", device="cpu", overlays=0, verbose=False)
    assert recs[0]["output"] == str(tmp_path / "api" / "case1.nii.gz")
    assert recs[0]["input"] == str(src) and recs[0]["case"] == "case1"
    assert main(["predict", str(src), "--checkpoint", str(ckpt), "--output",
                 str(tmp_path / "cli"), "--overlays", "0", "--backend", "torch"]) == 0
    a, b = nib.load(tmp_path / "api" / "case1.nii.gz"), nib.load(tmp_path / "cli" / "case1.nii.gz")
    assert a.shape == b.shape == (20, 18, 3)
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    pred = load_predictor(ckpt)
    assert pred.spec == pred.checkpoint.spec
    assert pred.predict_files([src], tmp_path / "obj", overlays=0, verbose=False)[0]["voxels"] \
        == recs[0]["voxels"]


def test_one_loader_reads_onnx_and_refuses_version_1(ckpt, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from unetzoo.deploy.export import export_checkpoint
    from unetzoo.engine.onnx import OnnxModule
    from unetzoo.engine.predict import load_predictor

    new = export_checkpoint(ckpt, tmp_path / "m.onnx", verify=False).path
    via_onnx, via_pt = load_predictor(new), load_predictor(ckpt)
    assert isinstance(via_onnx.model, OnnxModule) and via_onnx.spec == via_pt.spec
    vol = np.random.default_rng(1).random((1, 2, 20, 18)).astype(np.float32)
    np.testing.assert_array_equal(via_onnx.predict_volume(vol), via_pt.predict_volume(vol))

    # A file from the previous version: flat keys, no slicing/resize, version 1.
    model = onnx.load(str(new))
    meta = json.loads(next(p.value for p in model.metadata_props if p.key == "unetzoo"))
    for key in ("slicing", "resize", "spacing", "protocol"):
        meta.pop(key)
    meta["version"] = 1
    next(p for p in model.metadata_props if p.key == "unetzoo").value = json.dumps(meta)
    onnx.save(model, str(tmp_path / "v1.onnx"))
    with pytest.raises(CheckpointError) as info:
        load_predictor(tmp_path / "v1.onnx")
    msg = str(info.value)
    assert "older unetzoo (metadata version 1)" in msg and "export it again" in msg
    assert "\n" not in msg


def test_engine_never_imports_deploy():
    import ast

    root = Path(__file__).resolve().parents[2] / "src" / "unetzoo" / "engine"
    hits = []
    for f in root.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("unetzoo.deploy"):
                hits.append(f"{f.name}:{node.lineno}")
            if isinstance(node, ast.Import) and any(a.name.startswith("unetzoo.deploy")
                                                    for a in node.names):
                hits.append(f"{f.name}:{node.lineno}")
    assert not hits, hits


def test_spacing_warning_only_beyond_twice_in_plane():
    spec = InferenceSpec.from_dict(_spec_dict(spacing=[5.0, 2.5, 2.5]))
    assert spec.to_dict()["spacing"] == [5.0, 2.5, 2.5]
    assert spec.spacing_warning((5.0, 2.5, 4.9), "x.nii.gz") is None  # within 2x
    assert spec.spacing_warning((1.0, 2.5, 2.5), "x.nii.gz") is None  # through-plane only
    assert spec.spacing_warning(None, "x.nii.gz") is None  # a picture: unknown
    for far in ((5.0, 0.5, 0.5), (5.0, 2.5, 5.1)):
        line = spec.spacing_warning(far, "x.nii.gz")
        assert line.startswith("warning: x.nii.gz:") and "2x" in line and "\n" not in line
    assert InferenceSpec.from_dict(_spec_dict()).spacing_warning((5.0, 0.1, 0.1), "x") is None


def test_predict_warns_once_when_the_input_spacing_is_far_from_training(tmp_path, capsys):
    """The checkpoint's training spacing travels to `unetzoo export` and `predict` warns
    (one line, stderr) on an input whose in-plane voxels are over 2x off."""
    import nibabel as nib

    from ckpt_helpers import save_model_checkpoint
    from unetzoo.engine.predict import predict_files

    model = create_model("unet", in_channels=1, num_classes=3, base_channels=4).eval()
    path = save_model_checkpoint(tmp_path / "m.pt", model, class_names=CLASSES,
                                 spacing=(3.0, 1.0, 1.0))
    arr = np.zeros((20, 18, 3), np.float32)
    near, far = tmp_path / "near.nii.gz", tmp_path / "far.nii.gz"
    nib.save(nib.Nifti1Image(arr, np.diag([1.5, 1.0, 3.0, 1.0])), near)
    nib.save(nib.Nifti1Image(arr, np.diag([0.3, 0.3, 3.0, 1.0])), far)
    capsys.readouterr()
    predict_files([near], path, tmp_path / "o1", device="cpu", overlays=0, verbose=False)
    assert "warning" not in capsys.readouterr().err
    predict_files([far], path, tmp_path / "o2", device="cpu", overlays=0, verbose=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "far.nii.gz" in err[0] and "0.3 x 0.3 mm" in err[0]
    assert "1 x 1 mm" in err[0]
    pytest.importorskip("onnx")
    from unetzoo.deploy.export import export_checkpoint
    from unetzoo.engine.predict import load_predictor

    onnx_path = export_checkpoint(path, tmp_path / "m.onnx", verify=False).path
    assert load_predictor(onnx_path).spec.spacing == (3.0, 1.0, 1.0)
    import onnx

    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    meta = json.loads(props["unetzoo"])
    assert meta["spacing"] == [3.0, 1.0, 1.0] and "2x off" in meta["protocol"]["spacing"]
