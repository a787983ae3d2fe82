"""One flag vocabulary (issue 14): ``-o/--output`` everywhere; the old ``--out`` is gone
and, like any flag spelled otherwise than documented, refused (issue 25)."""

from __future__ import annotations

import argparse

import pytest

from unetzoo.cli.main import build_parser

CASES = {
    "test": ["test", "--checkpoint", "c.pt"],
    "predict": ["predict", "in.nii.gz", "--checkpoint", "c.pt"],
    "export": ["export", "--checkpoint", "c.pt"],
    "prepare phantom": ["prepare", "phantom"],
    "prepare synapse": ["prepare", "synapse", "--raw", "raw"],
    "prepare mni_dk": ["prepare", "mni_dk"],
    "train": ["train", "--model", "unet", "--dataset", "phantom"],
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("spelling", ["--output", "-o"])
def test_output_spellings_parse_the_same(name, spelling):
    args = build_parser().parse_args([*CASES[name], spelling, "somewhere"])
    assert args.output == "somewhere"


def _help(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("name", [n for n in sorted(CASES) if n != "train"])
def test_help_shows_output_not_out(name, capsys):
    text = _help(CASES[name][:2] if name.startswith("prepare") else CASES[name][:1], capsys)
    assert "--output" in text and "-o" in text
    assert "--out " not in text and "--out\n" not in text and "--out," not in text


@pytest.mark.parametrize("name", ["predict", "prepare phantom"])
def test_required_output_still_required(name, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(CASES[name])
    assert exc.value.code == 2
    assert "--output" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("flag", ["--out", "--outp"])
def test_old_or_abbreviated_flags_are_refused(name, flag, capsys):
    """``--out`` (the old spelling) and abbreviations of real flags are unknown flags:
    exit 2 and one error line, as for any misspelling."""
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*CASES[name], "-o", "x", flag, "somewhere"])
    assert exc.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"unrecognized arguments: {flag} somewhere" in errors[0]


def test_old_out_is_refused_end_to_end(tmp_path, capsys):
    """Through main(): ``--out`` is refused before any work (exit 2, nothing written)."""
    from unetzoo.cli.main import main

    out = tmp_path / "m.onnx"
    with pytest.raises(SystemExit) as exc:
        main(["export", "--checkpoint", str(tmp_path / "c.pt"), "--out", str(out)])
    assert exc.value.code == 2 and not out.exists()
    assert f"unrecognized arguments: --out {out}" in capsys.readouterr().err


def test_output_is_one_plain_flag():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for cmd in ("test", "predict", "export"):
        outs = [a for a in sub.choices[cmd]._actions if a.dest == "output"]
        assert len(outs) == 1 and outs[0].option_strings == ["-o", "--output"]
