"""The ONNX file is the whole contract: docs/deploy.md's script, run with numpy, nibabel,
scipy and onnxruntime only, reproduces `unetzoo predict` voxel for voxel."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unetzoo.cli.main import main

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"


def _doc_script() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("### `predict_onnx.py`"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_doc_script_uses_no_unetzoo_and_stays_short():
    code = _doc_script()
    imports = {m.split()[1].split(".")[0] for m in re.findall(r"^(?:import|from) \S+", code, re.M)}
    assert imports == {"json", "sys", "nibabel", "numpy", "onnxruntime", "scipy"}
    assert len([ln for ln in code.splitlines() if ln.strip()]) <= 40


@pytest.fixture(scope="module")
def calibrated_model(tiny_checkpoint, phantom_norm, tmp_path_factory) -> tuple[Path, Path]:
    """``tiny_checkpoint`` with BatchNorm statistics measured on phantom slices, and its
    ONNX export.

    Untrained with its initial statistics (mean 0, variance 1) the tiny U-Net's logits
    differ between classes by ~1e-6, and its float32 softmax ties on a quarter of the
    pixels (argmax then picks the lower class by rounding luck); with measured statistics
    its logits differ by units, as a trained model's do."""
    import dataclasses

    import torch

    from unetzoo.deploy.export import export_checkpoint
    from unetzoo.engine.checkpoint import read_checkpoint, write_checkpoint
    from unetzoo.engine.inference import resize_cubic

    ck = read_checkpoint(tiny_checkpoint)
    model = ck.build_model().train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the calibration batch
    with torch.no_grad():
        model(resize_cubic(torch.from_numpy(phantom_norm)[:, None], (64, 64)))
    folder = tmp_path_factory.mktemp("calibrated")
    pt = write_checkpoint(dataclasses.replace(ck, weights=model.eval().state_dict()),
                          folder / "calibrated.pt")
    return pt, export_checkpoint(pt, folder / "calibrated.onnx", verify=False).path


def test_doc_script_reproduces_unetzoo_predict(calibrated_model, phantom_case, tmp_path):
    import nibabel as nib

    tiny_checkpoint, dynamic_onnx = calibrated_model
    script = tmp_path / "predict_onnx.py"
    script.write_text(_doc_script(), encoding="utf-8")
    hu = phantom_case[0].astype(np.int16)  # (D, H, W)
    # Through-plane axis k (the usual layout) and i (slices along the first file axis).
    volumes = {
        "axial_k": (np.transpose(hu, (2, 1, 0)), np.diag([2.5, 2.5, 5.0, 1.0])),
        "first_i": (hu, np.diag([5.0, 2.5, 2.0, 1.0])),
    }
    for name, (arr, affine) in volumes.items():
        src = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(arr, affine), src)
        mine = tmp_path / f"{name}_doc.nii.gz"
        run = subprocess.run([sys.executable, str(script), str(dynamic_onnx), str(src), str(mine)],
                             capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-2000:]
        out = tmp_path / f"pred_{name}"
        assert main(["predict", str(src), "--checkpoint", str(tiny_checkpoint), "--output",
                     str(out), "--overlays", "0", "--backend", "torch"]) == 0
        ref, got = nib.load(out / f"{name}.nii.gz"), nib.load(mine)
        assert got.shape == ref.shape == arr.shape
        np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(ref.dataobj))
        np.testing.assert_allclose(got.affine, ref.affine)
        assert len(np.unique(np.asarray(ref.dataobj))) > 1  # a map worth comparing


def test_onnx_names_its_dims_and_states_the_protocol(dynamic_onnx):
    import json

    model = onnx.load(str(dynamic_onnx))

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    meta = json.loads({p.key: p.value for p in model.metadata_props}["unetzoo"])
    assert dims(model.graph.input[0]) == ["batch", 1, "height", "width"]
    assert dims(model.graph.output[0]) == ["batch", len(meta["class_names"]), "height", "width"]
    assert meta["version"] == 2
    assert meta["slicing"] == "through-plane" and meta["resize"] == "cubic-in-nearest-out"
    assert "order=3" in meta["protocol"]["resize"] and "order=0" in meta["protocol"]["resize"]
    assert "(z, y, x)" in meta["protocol"]["slicing"]
