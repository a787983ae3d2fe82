"""bench_distillation.py in its --tiny mode: tables and JSON come out, values are sane."""

from __future__ import annotations

import importlib.util
import json

import pytest

from benchmarks import bench_distillation as bench


def test_tiny_overhead_table_and_json(tmp_path, capsys):
    out = tmp_path / "distill.json"
    result = bench.main(["--tiny", "--no-ab", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "| model |" in printed and "time_overhead_%" in printed
    data = json.loads(out.read_text())
    (row,) = data["overhead"]
    assert row["model"] == bench.TINY["model"] and row == result["overhead"][0]
    assert row["step_s_plain"] > 0 and row["step_s_distill"] > 0
    # Distillation keeps extra tensors for backward (pooled maps, selected channels).
    assert row["saved_MiB_distill"] > row["saved_MiB_plain"] > 0
    assert "ab" not in data


def test_saved_activation_bytes_counts_unique_storages():
    import torch

    w = torch.randn(4, 4, requires_grad=True)
    x = torch.randn(8, 4)
    one = bench.saved_activation_bytes(lambda: (x @ w).sum())
    assert one >= x.numel() * 4  # matmul saves its input
    # Saving the same tensor twice does not count twice.
    twice = bench.saved_activation_bytes(lambda: ((x @ w) + (x @ w)).sum())
    assert twice == one


def test_ab_table_mean_and_spread():
    runs = [
        {"seed": s, "distill": d, "wall_s": 1.0, "val_dice": v, "test_dice": None}
        for s, d, v in [(0, False, 0.5), (1, False, 0.7), (0, True, 0.6), (1, True, 0.6)]
    ]
    off, on = bench.ab_table(runs)
    assert off["val_dice_mean"] == pytest.approx(0.6) and off["val_dice_sd"] > 0
    assert on["val_dice_mean"] == pytest.approx(0.6) and on["val_dice_sd"] == 0
    assert off["test_dice_mean"] == "n/a"


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("unetzoo.engine.trainer") is None
    or importlib.util.find_spec("unetzoo.data.transforms") is None,
    reason="training pipeline not installed",
)
def test_tiny_ab_runs_the_pipeline(tmp_path, monkeypatch):
    monkeypatch.setenv("UNETZOO_CACHE", str(tmp_path / "cache"))
    result = bench.main(["--tiny", "--no-target", "--json", str(tmp_path / "ab.json")])
    ab = result["ab"]
    assert "runs" in ab, ab
    assert [r["distill"] for r in ab["runs"]] == [False, True]
    assert all(r["val_dice"] is not None or r["test_dice"] is not None for r in ab["runs"])
