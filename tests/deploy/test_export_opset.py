"""The opset rule has one home (engine.onnx.check_opset): ``export_model`` and
``export_checkpoint`` from Python refuse an opset the installed exporter does not write in
one ConfigError line naming the range, before any file is touched; the CLI reuses it."""

from __future__ import annotations

from pathlib import Path

import pytest

from unetzoo import create_model
from unetzoo.deploy.export import SUPPORTED_OPSETS, export_checkpoint, export_model
from unetzoo.engine.onnx import check_opset, export_onnx
from unetzoo.errors import ConfigError

RANGE = f"{SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}"


def test_the_range_starts_at_the_dynamo_exporters_opset() -> None:
    assert SUPPORTED_OPSETS.start == 18 and 18 in SUPPORTED_OPSETS
    assert check_opset(18) == 18


@pytest.mark.parametrize("opset", [11, 17, SUPPORTED_OPSETS.stop, -1, True, "18", 18.0])
def test_export_model_refuses_an_opset_outside_the_range(tmp_path: Path, opset) -> None:
    model = create_model("unet", in_channels=1, num_classes=2, base_channels=4)
    out = tmp_path / "sub" / "m.onnx"
    with pytest.raises(ConfigError) as exc:
        export_model(model, out, opset=opset, img_size=16, verify=False)
    msg = str(exc.value)
    assert msg.startswith(f"opset {opset!r} is not supported") and RANGE in msg
    assert "\n" not in msg
    assert not out.parent.exists()  # refused before any folder or file was made


def test_export_checkpoint_refuses_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"opset 11 is not supported; use {RANGE}"):
        export_checkpoint(tmp_path / "missing.pt", tmp_path / "m.onnx", opset=11)


def test_export_onnx_checks_too(tmp_path: Path) -> None:
    model = create_model("unet", in_channels=1, num_classes=2, base_channels=4)
    with pytest.raises(ConfigError, match=RANGE):
        export_onnx(model, tmp_path / "m.onnx", {"img_size": 16, "in_channels": 1,
                                                  "model": {"name": "unet"}}, opset=11)


def test_the_cli_says_the_same_line_with_its_flag(tmp_path: Path, capsys) -> None:
    from unetzoo.cli.main import main

    assert main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--opset", "11"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --opset 11 is not supported; use {RANGE} (the range the " \
                  "installed torch exporter writes)"
