"""The roofline helpers of benchmarks/_common.py and their columns in the two benchmarks."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks import _common as common


def test_flop_count_matches_the_analytic_conv_count():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert common.flop_count(lambda: conv(x)) == 2 * (2 * 8 * 8) * 4 * 3 * 9
    # forward + backward: the backward pass adds the input and weight gradients (2x)
    assert common.flop_count(lambda: conv(x.requires_grad_()).sum().backward()) == \
        3 * 2 * (2 * 8 * 8) * 4 * 3 * 9


def test_ratio_ci_brackets_the_geometric_mean():
    ratio, lo, hi = common.ratio_ci([2.0, 2.2, 1.8, 2.1], [1.0, 1.0, 1.0, 1.0])
    assert lo < ratio < hi and 1.8 < ratio < 2.2
    assert common.ratio_ci([2.0, 4.0], [1.0, 2.0])[1:] == (2.0, 2.0)  # no spread, no width
    assert math.isnan(common.ratio_ci([1.0], [2.0])[1])


def test_roofline_columns_and_line():
    cols = common.roofline_columns(50e9, 1.0, {"fp32": 100.0})
    assert cols == {"GFLOP_s": 50.0, "fp32_peak_%": 50.0}
    both = common.roofline_columns(50e9, 0.5, {"fp32": 100.0, "bf16": 400.0})
    assert both["fp32_peak_%"] == 100.0 and both["bf16_peak_%"] == 25.0
    info = {"cpu_model": "Fake CPU", "cpu_capability": "AVX512", "cpu_flags": ["amx_bf16"],
            "cpu_bf16": "amx_bf16"}
    line = common.roofline_line({"fp32": 300.0, "bf16": 2400.0}, info)
    assert "Fake CPU" in line and "fp32 matmul peak 300" in line and "bf16 matmul peak 2400" in line
    assert "no native bf16" in common.roofline_line({"fp32": 1.0}, {**info, "cpu_bf16": None})


def test_cpu_info_and_peaks():
    info = common.cpu_info()
    assert info["cpu_model"] and isinstance(info["cpu_flags"], list)
    peak = common.peaks(tiny=True, repeats=1)
    assert peak["fp32"] > 0 and ("bf16" in peak) == (info["cpu_bf16"] is not None)


def test_inference_rows_have_the_roofline(capsys):
    from benchmarks import bench_inference as bench

    rows = bench.main(["--tiny", "--threads", "1"])["rows"]
    assert all(r["GFLOP_s"] > 0 and r["fp32_peak_%"] > 0 for r in rows)
    assert "fp32 matmul peak" in capsys.readouterr().out


def test_train_step_ratio_has_a_confidence_interval():
    pytest.importorskip("segmentation_models_pytorch")
    from benchmarks import bench_train_step as bench

    rows = bench.main(["--tiny", "--threads", "1", "--repeats", "2", "--sides",
                       "unetzoo-smpdec"])
    by = {r["side"]: r for r in rows}
    assert set(by) == {"unetzoo-smpdec", "smp"}
    r = by["unetzoo-smpdec"]
    assert r["ci95_lo"] <= r["ratio_gmean"] <= r["ci95_hi"]
    assert by["smp"]["ratio_gmean"] == 1.0 and r["GFLOP_s"] > 0 and r["fp32_peak_%"] > 0
