"""benchmarks/bench_metrics.py runs in its --tiny mode (no timing is asserted)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("medpy.metric.binary")

from benchmarks import bench_metrics  # noqa: E402 - needs medpy, checked above


def test_tiny_compare_and_growth(tmp_path, capsys):
    out = tmp_path / "metrics.json"
    rc = bench_metrics.main(["--tiny", "--growth", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "Values equal: yes" in text and "| Organ |" in text and "Machine:" in text
    assert "Fitted growth" in text
    report = json.loads(out.read_text())
    cmp = report["compare"]
    assert cmp["equal"] is True and cmp["max_abs_diff"]["hd95"] <= 1e-6
    assert cmp["serial_equal"] is True and len(cmp["times_s"]["unetzoo_serial"]) == 1
    assert "threaded == serial exactly: yes" in text and "threads" in text
    assert len(cmp["classes"]) == 8 and all(r["gt_voxels"] > 0 for r in cmp["classes"])
    assert [r["size"] for r in report["growth"]["rows"]] == [32, 48]


def test_synthetic_case_has_the_promised_errors():
    pred, gt = bench_metrics.make_case(bench_metrics.TINY_SHAPE, seed=0)
    assert pred.shape == gt.shape == bench_metrics.TINY_SHAPE
    assert set(np.unique(gt)) == set(range(9))
    # the distant false positive: liver predicted far from the ground-truth liver
    liver_gt = np.argwhere(gt == 5)
    liver_pred = np.argwhere(pred == 5)
    assert liver_pred[:, 2].max() > liver_gt[:, 2].max() + 10
    # a missed slice range on the left kidney
    z_gt = np.flatnonzero((gt == 3).any(axis=(1, 2)))
    z_pred = np.flatnonzero((pred == 3).any(axis=(1, 2)))
    assert z_pred.max() < z_gt.max()
