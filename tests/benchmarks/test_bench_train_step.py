"""bench_train_step.py in tiny mode: both sides timed, params and memory reported."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import bench_train_step as bench

pytest.importorskip("segmentation_models_pytorch")


def test_tiny_rows(tmp_path, capsys):
    out = tmp_path / "train.json"
    rows = bench.main(["--tiny", "--threads", "1", "--json", str(out)])
    assert "Machine:" in capsys.readouterr().out
    by_side = {r["side"]: r for r in rows}
    assert set(by_side) == {"unetzoo", "unetzoo-smpdec", "smp"}
    assert by_side["smp"]["time_vs_smp"] == 1.0 == by_side["smp"]["memory_vs_smp"]
    assert by_side["unetzoo"]["params"] != by_side["smp"]["params"]  # different decoders
    # smp's decoder on unetzoo's encoder: the same architecture, the same weight count
    assert by_side["unetzoo-smpdec"]["params"] == by_side["smp"]["params"]
    assert "published" in by_side["unetzoo"]["model"]
    assert all(r["step_ms"] > 0 and r["activations_MiB"] > 0 for r in rows)
    assert len(json.loads(out.read_text())["rows"]) == 3


def test_step_updates_weights():
    model = bench.build("unetzoo", 3)
    x, y = torch.randn(2, 1, 32, 32), torch.randint(0, 3, (2, 32, 32))
    before = [p.detach().clone() for p in model.parameters()]
    bench.make_step(model, x, y)()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_saved_tensor_mib_grows_with_batch():
    model = bench.build("smp", 3)
    # 64 px: smp's deepest BatchNorm needs more than one value per channel in training.
    y1, y4 = torch.zeros(1, 64, 64, dtype=torch.long), torch.zeros(4, 64, 64, dtype=torch.long)
    small = bench.saved_tensor_mib(model, torch.randn(1, 1, 64, 64), y1)
    big = bench.saved_tensor_mib(model, torch.randn(4, 1, 64, 64), y4)
    assert big > 2 * small > 0
