"""One flag vocabulary (issue 14): ``-o/--output`` everywhere, the old ``--out`` a hidden
alias that still works."""

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
@pytest.mark.parametrize("spelling", ["--output", "-o", "--out"])
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


def test_both_spellings_run_prepare_phantom(tmp_path):
    """End to end through main(): the new and the old spelling write the same dataset."""
    from unetzoo.cli.main import main

    for flag in ("--output", "--out"):
        out = tmp_path / flag.strip("-")
        assert main(["prepare", "phantom", flag, str(out), "--n-train", "1", "--n-test", "1",
                     "--shape", "4", "16", "16"]) == 0
        assert (out / "dataset.json").is_file()


def test_alias_is_hidden_not_a_second_destination():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for cmd in ("test", "predict", "export"):
        outs = [a for a in sub.choices[cmd]._actions if "--out" in a.option_strings]
        assert len(outs) == 1 and outs[0].dest == "output" and outs[0].help == argparse.SUPPRESS
