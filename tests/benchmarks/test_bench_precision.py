"""bench_precision.py and bench_e2e.py in tiny mode (no timing assertions)."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_precision


def test_precision_tiny_compares_both(tmp_path, capsys):
    pytest.importorskip("nilearn")
    out = tmp_path / "p.json"
    result = bench_precision.main(["--tiny", "--threads", "1", "--json", str(out)])
    rows = result["rows"]
    assert [r["precision"].split()[0] for r in rows] == ["fp32", "bf16"]
    assert rows[0]["voxel_agreement_%"] == 100.0 and 50.0 < rows[1]["voxel_agreement_%"] <= 100.0
    assert all(r["slices_per_s"] > 0 and r["GFLOP_s"] > 0 for r in rows)
    assert "bf16 autocast" in rows[1]["backend"]
    assert len(result["class_rows"]) == 12  # mni_dk's foreground classes
    assert json.loads(out.read_text())["class_rows"][0]["class"] == "frontal"
    assert "fp32 matmul peak" in capsys.readouterr().out


def test_precision_refuses_without_native_bf16_unless_allowed():
    import torch

    from unetzoo.engine.backends import cpu_bf16_support

    if cpu_bf16_support() is not None:
        pytest.skip("this CPU has native bf16")
    model = torch.nn.Conv2d(1, 2, 1)
    with pytest.raises(SystemExit, match="no native bf16"):
        bench_precision.bf16_module(model, torch.device("cpu"), allow_emulated=False)
    module, label = bench_precision.bf16_module(model, torch.device("cpu"), allow_emulated=True)
    assert "emulated" in label and module(torch.zeros(1, 1, 4, 4)).dtype == torch.float32


def test_e2e_tiny_runs_both_predictors(tmp_path):
    pytest.importorskip("nnunetv2")
    pytest.importorskip("nilearn")
    from benchmarks import bench_e2e

    rows = bench_e2e.main(["--tiny", "--threads", "1", "--json", str(tmp_path / "e.json")])["rows"]
    assert {(r["side"], r["tta"]) for r in rows} == {
        (s, t) for s in ("nnU-Net", "unetzoo") for t in ("no TTA", "TTA (4 flips)")}
    assert all(r["s_per_volume"] > 0 and r["GFLOP"] > 0 for r in rows)
    assert all(0.0 <= r["mean_dice"] <= 1.0 for r in rows)
    by = {(r["side"], r["tta"]): r for r in rows}
    # mirroring runs the network 4x on both sides (the resizing matmuls, counted too, once)
    for side in ("nnU-Net", "unetzoo"):
        ratio = by[(side, "TTA (4 flips)")]["GFLOP"] / by[(side, "no TTA")]["GFLOP"]
        assert 2.0 < ratio <= 4.01, (side, ratio)
