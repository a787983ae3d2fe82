"""The run folder's layout lives in one module; the trainer writes exactly those paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from unetzoo.engine.run_folder import (
    RUN_ENTRIES,
    RunFolder,
    RunLayout,
    check_output_dir,
)
from unetzoo.errors import ConfigError


def test_layout_paths(tmp_path: Path) -> None:
    lay = RunLayout(tmp_path)
    assert lay.best == tmp_path / "checkpoints" / "best.pt"
    assert lay.latest == tmp_path / "checkpoints" / "latest.pt"
    assert lay.final == tmp_path / "checkpoints" / "final.pt"
    assert lay.config == tmp_path / "config.yaml"
    assert lay.metrics_csv == tmp_path / "metrics.csv"
    assert lay.report.summary_json == tmp_path / "report" / "summary.json"
    assert lay.splits == tmp_path / "splits_final.json"
    # Every top-level entry the layout names is one RunFolder --overwrite may delete.
    for p in (lay.checkpoints, lay.config, lay.metrics_csv, lay.plots, lay.tensorboard,
              lay.report_dir, lay.marker, lay.lock):
        assert p.name in RUN_ENTRIES
    assert lay.splits.name not in RUN_ENTRIES  # an input: never deleted


def test_layout_of_checkpoint(tmp_path: Path) -> None:
    assert RunLayout.of_checkpoint(tmp_path / "checkpoints" / "best.pt").root == tmp_path
    assert RunLayout.of_checkpoint(tmp_path / "model.pt").root == tmp_path


def test_run_folder_marks_running_then_finished(tmp_path: Path) -> None:
    with RunFolder(tmp_path / "run") as rf:
        assert '"running"' in rf.layout.marker.read_text()
        rf.finish()
        assert rf.marker()["status"] == "finished"


def test_check_output_dir_unwritable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="not writable"):
        check_output_dir(blocker / "sub")
    assert check_output_dir(tmp_path / "a" / "b").is_dir()
