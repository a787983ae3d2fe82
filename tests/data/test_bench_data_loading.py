"""benchmarks/bench_data_loading.py in its --tiny mode (no timing asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load():
    import sys

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location(
        "bench_data_loading", ROOT / "benchmarks" / "bench_data_loading.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_run_prints_table_and_writes_json(tmp_path, capsys):
    bench = _load()
    out = tmp_path / "data.json"
    result = bench.main(["--tiny", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "| side |" in printed and "resnet34_unet training" in printed
    assert "nnunet NIfTI, mmap slice cache" in printed
    data = json.loads(out.read_text())
    sides = [r["side"] for r in data["rows"]]
    assert sides[:2] == ["DataLoader, 0 worker(s)", "DataLoader, 1 worker(s)"]
    for row in data["rows"]:
        assert row["slices_per_s"] > 0
    # Every slice went through the loader exactly once per pass.
    loader_rows = [r for r in result["rows"] if r["side"].startswith("DataLoader")]
    assert len(loader_rows) == 2
    assert all(r["slices"] == bench.TINY["slices"] for r in loader_rows)
    nifti = [r for r in result["rows"] if r["side"].startswith("nnunet")]
    assert [r["slices"] for r in nifti] == [bench.TINY["nifti_depth"]] * 2


def test_written_layout_is_readable(tmp_path):
    bench = _load()
    bench.write_slices(tmp_path / "S", 5, 24)
    from unetzoo.data import get_dataset

    ds = get_dataset("synapse", tmp_path / "S")
    assert len(ds.slice_dataset("train")) == 5
