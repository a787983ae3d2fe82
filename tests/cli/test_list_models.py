"""``unetzoo list-models``: table, patterns, --info, and one-line errors (exit 2)."""

from __future__ import annotations

import pytest

from unetzoo.cli.main import main
from unetzoo.models import list_models, parameter_count


def test_table_lists_every_model_with_its_count(capsys):
    assert main(["list-models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("name") and "published" in lines[0]
    for name in list_models("*unet*"):
        row = next(line for line in lines if line.split()[0] == name)
        if name in ("unet", "resnet34_unet", "unetpp", "unet3p"):
            assert f"{parameter_count(name):,}" in row
    assert "31,036,672 (3in/1cls)" in out
    assert "9,041,601 (1in/1cls, batch_norm=False)" in out


def test_pattern_filters_rows(capsys):
    assert main(["list-models", "resnet*_unet"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert sorted(r.split()[0] for r in rows) == list_models("resnet*_unet")


def test_exact_name_gives_one_row(capsys):
    assert main(["list-models", "unet_selfreg"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert len(rows) == 1 and "17,262,345" in rows[0]


def test_info_prints_model_info(capsys):
    assert main(["list-models", "--info", "unet3+"]) == 0
    out = capsys.readouterr().out
    assert "name:        unet3p" in out
    assert "26,971,777 with in_channels=3, num_classes=1" in out
    assert "ZJUGiveLab" in out
    assert "deep_supervision = False" in out
    assert "final decoder.3" in out


def test_info_names_the_pretrained_sources(capsys):
    assert main(["list-models", "--info", "resunet_v0_2"]) == 0
    out = capsys.readouterr().out
    assert "encoder_weights = 'imagenet'" in out
    assert ("pretrained:  encoder_weights='imagenet' <- "
            "https://download.pytorch.org/models/resnet34-b627a593.pth") in out
    assert main(["list-models", "--info", "unet"]) == 0
    assert "pretrained:" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["list-models", "unte"], "error: unknown model 'unte'; did you mean unet"),
        (["list-models", "--info", "resnet34unet"], "did you mean resnet34_unet"),
        (["list-models", "zz*"], "error: no registered model matches 'zz*'"),
    ],
)
def test_unknown_names_are_one_error_line(capsys, argv, expected):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert expected in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert captured.out == ""
