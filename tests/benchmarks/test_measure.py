"""One measurement module: MACs, parameters and timing come from unetzoo.measure."""

from __future__ import annotations

from pathlib import Path

import torch

from unetzoo import measure
from unetzoo.cli import bench as cli_bench
from unetzoo.engine import ablation

ROOT = Path(__file__).resolve().parents[2]


def test_one_mac_counter():
    conv = torch.nn.Conv2d(2, 4, 3, padding=1, bias=False)
    total, _ = measure.count_macs(conv, torch.zeros(1, 2, 8, 8))
    assert total == 8 * 8 * 9 * 2 * 4
    assert ablation.count_macs(conv, 2, 8) == int(total)
    # cli.bench is the command line only: no measurement function lives or is re-exported there
    for name in ("count_macs", "measure_model", "measure_in_subprocess", "COLUMNS", "table_columns"):
        assert not hasattr(cli_bench, name), name
    # fvcore is called from one module only.
    users = [p.relative_to(ROOT).as_posix() for d in ("src", "benchmarks")
             for p in (ROOT / d).rglob("*.py") if "FlopCountAnalysis(" in p.read_text("utf-8")]
    assert users == ["src/unetzoo/measure.py"]


def test_timing_helpers():
    calls = []
    seconds, n = measure.repeat(lambda: calls.append(1), lambda: None, 3, 2, budget=1.0)
    assert seconds >= 0 and 2 <= n <= 3 and len(calls) == n + 1  # + the warm-up
    assert measure.peak_rss_mib() > 10
