"""bench_zoo.py / ``unetzoo bench`` in tiny mode: rows, table, JSON, model filter, errors."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_zoo
from unetzoo import measure
from unetzoo.cli.main import main as cli_main
from unetzoo.errors import ModelError


def test_tiny_in_process_row_and_json(tmp_path, capsys):
    out = tmp_path / "zoo.json"
    rows = bench_zoo.main(["--tiny", "--models", "resunetpp", "--in-process", "--threads", "1",
                           "--json", str(out)])
    printed = capsys.readouterr().out
    assert "Machine:" in printed and "| resunetpp |" in printed
    (row,) = rows
    assert "error" not in row, row
    from unetzoo.models import count_parameters, create_model

    assert row["params"] == count_parameters(create_model("resunetpp", num_classes=9))
    assert row["GMACs"] > 0 and row["latency_ms"] > 0 and row["train_img_s"] > 0
    assert row["rss_train_MiB"] >= row["rss_infer_MiB"] >= row["rss_base_MiB"] > 0
    assert json.loads(out.read_text())["rows"][0]["model"] == "resunetpp"


def test_subprocess_row_has_clean_memory():
    row = measure.measure_in_subprocess(
        {"name": "resunetpp", "size": 32, "batch": 2, "classes": 9, "repeats": 1,
         "budget": 0.1, "device": "cpu", "threads": 1, "macs": False})
    assert "error" not in row, row
    assert row["rss_train_MiB"] >= row["rss_base_MiB"] > 0
    assert "GMACs" not in row


def test_count_macs_counts_a_conv_exactly():
    import torch

    conv = torch.nn.Conv2d(2, 4, 3, padding=1, bias=False)
    macs, skipped = measure.count_macs(conv, torch.randn(1, 2, 8, 8))
    assert macs == 2 * 4 * 9 * 8 * 8 and skipped == {}


def test_select_models_patterns_and_unknown():
    assert measure.select_models("resnet18_unet,resnet1*")[0] == "resnet18_unet"
    assert len(set(measure.select_models("resnet*"))) == len(measure.select_models("resnet*"))
    with pytest.raises(ModelError, match="matches no registered model"):
        measure.select_models("no_such_model*")


def test_cli_bench_unknown_pattern_is_one_line(capsys):
    assert cli_main(["bench", "--models", "no_such_model*"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_format_rows_adds_error_and_cuda_columns():
    text = measure.format_rows([{"model": "a", "params": 3, "cuda_train_MiB": 1.0},
                                {"model": "b", "error": "boom"}])
    header = text.splitlines()[0]
    assert "cuda_train_MiB" in header and header.endswith("error |") and "boom" in text
