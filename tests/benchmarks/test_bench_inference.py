"""bench_inference.py in tiny mode, and the reference protocol loop it compares against."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks import bench_inference as bench


def test_tiny_rows_identical_labels(tmp_path, capsys):
    out = tmp_path / "inf.json"
    result = bench.main(["--tiny", "--threads", "1", "--json", str(out)])
    assert "Machine:" in capsys.readouterr().out
    rows = result["rows"]
    assert [r["side"] for r in rows] == ["reference", "torch", "channels_last"]
    assert [r["identical"] for r in rows] == ["yes", "yes", "yes"]
    assert all(r["slices_per_s"] > 0 and r["slices"] == bench.TINY["shape"][0] for r in rows)
    assert rows[0]["speedup"] == 1.0
    assert all(r["differing_voxels_%"] == 0 for r in result["resize_rows"])
    assert json.loads(out.read_text())["rows"][1]["model"] == bench.TINY["model"]


def test_unknown_backend_side_is_refused():
    with pytest.raises(SystemExit, match="unknown backend 'fast'"):
        bench.main(["--tiny", "--backends", "torch,fast"])


class _Threshold(torch.nn.Module):
    """Two-class 'network': class 1 where the intensity exceeds 0.5."""

    def forward(self, x):
        return torch.cat([0.5 - x, x - 0.5], dim=1)


def test_reference_protocol_resizes_in_and_out():
    vol = bench.synthetic_case((2, 40, 40))
    labels = bench.reference_protocol(_Threshold(), vol, 20)
    assert labels.shape == vol.shape and labels.dtype == np.int64
    # Same as the threshold pipeline built from the two zooms directly.
    np.testing.assert_array_equal(labels, bench.resize_reference(vol, 20))
    np.testing.assert_array_equal(labels, bench.resize_unetzoo(vol, 20, batch_size=2))


@pytest.mark.skipif(pytest.importorskip("onnxruntime") is None, reason="needs onnxruntime")
def test_profile_names_the_operators(capsys):
    text = bench.main(["--tiny", "--threads", "1", "--profile", "resunet"])["profile"]
    assert "PyTorch NCHW" in text and "ONNX Runtime" in text
    assert "conv" in text.lower() and "Conv" in text  # both sides list their convolutions
