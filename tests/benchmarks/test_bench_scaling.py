"""bench_scaling.py in tiny mode, and the log-log slope it reports."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_scaling as bench


def test_tiny_rows(tmp_path, capsys):
    out = tmp_path / "scale.json"
    result = bench.main(["--tiny", "--threads", "1", "--json", str(out)])
    assert "Log-log slope" in capsys.readouterr().out
    rows = result["rows"]
    assert [r["size"] for r in rows] == [f"{s}x{s}" for s in bench.TINY["sizes"]]
    assert rows[0]["time_ratio"] == 1.0 and rows[1]["pixel_ratio"] == 4.0
    assert json.loads(out.read_text())["slope"] == pytest.approx(result["slope"])


def test_loglog_slope():
    px = [1.0, 4.0, 16.0]
    assert bench.loglog_slope(px, [2 * p for p in px]) == pytest.approx(1.0)
    assert bench.loglog_slope(px, [p**2 for p in px]) == pytest.approx(2.0)
    assert bench.loglog_slope([1.0], [1.0]) != bench.loglog_slope([1.0], [1.0])  # nan
