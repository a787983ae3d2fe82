"""Which checkpoint a run scores: final.pt by default, ``--select best`` the best
validation epoch; the report says which and why; resume keeps final.pt right."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from unetzoo.engine import trainer
from unetzoo.engine.checkpoint import read_checkpoint
from unetzoo.engine.config import load_yaml, resolve_config
from unetzoo.engine.run_folder import RunLayout
from unetzoo.errors import ConfigError

# Validation improves at epoch 1, then worsens: best.pt is epoch 1, the final epoch 3.
EARLY_PEAK = [0.9, 0.2, 0.1]


@pytest.fixture()
def early_peak() -> trainer.TrainHooks:
    """Validation scores that peak at the first epoch (the trainer's ``validate`` hook)."""
    scores = iter(EARLY_PEAK)
    return trainer.TrainHooks(
        validate=lambda *a, **k: {"val_dice": next(scores), "val_hd95": 1.0})


def _report(run: Path) -> tuple[dict, str]:
    rep = RunLayout(run).report
    return json.loads(rep.summary_json.read_text()), rep.summary_md.read_text()


def test_final_checkpoint_is_scored_by_default(tiny_cfg, early_peak, tmp_path):
    from unetzoo.engine.evaluation import run_test

    summary = trainer.train(tiny_cfg(max_epochs=3, test=True), hooks=early_peak)
    run = RunLayout(summary["run_dir"])
    assert summary["best_epoch"] == 1  # validation picked the first epoch ...
    assert read_checkpoint(run.best).epoch == 1
    final = read_checkpoint(run.final)  # ... the final checkpoint is the last epoch
    latest = read_checkpoint(run.latest)
    assert final.epoch == latest.epoch == 3
    assert all(torch.equal(v, latest.weights[k]) for k, v in final.weights.items())

    scored = summary["test"]["scored"]
    assert scored["file"] == "final.pt" and scored["epoch"] == 3 and scored["max_epochs"] == 3
    assert scored["select"] == "final" and "default" in scored["reason"]
    assert "--select best" in scored["reason"]
    on_disk, md = _report(run.root)
    assert on_disk["scored"] == scored and on_disk["checkpoints"] == [str(run.final)]
    assert "Scored checkpoint: final.pt, epoch 3 of 3: final epoch (default" in md
    # the numbers are final.pt's: scoring it again gives the same mean Dice
    again = run_test(run.final, out_dir=tmp_path / "again", verbose=False, overlays=0,
                     device="cpu")
    assert again["mean_dice"] == summary["test"]["mean_dice"]
    assert again["scored"]["select"] is None and "given" in again["scored"]["reason"]


def test_select_best_scores_best_pt_and_says_so(tiny_cfg, early_peak):
    summary = trainer.train(tiny_cfg(max_epochs=3, test=True, select="best"), hooks=early_peak)
    scored = summary["test"]["scored"]
    assert (scored["file"], scored["epoch"], scored["select"]) == ("best.pt", 1, "best")
    assert "best validation epoch" in scored["reason"] and "0.9000" in scored["reason"]
    on_disk, md = _report(Path(summary["run_dir"]))
    assert on_disk["scored"] == scored
    assert "Scored checkpoint: best.pt, epoch 1 of 3: best validation epoch" in md
    assert read_checkpoint(RunLayout(summary["run_dir"]).final).epoch == 3  # still written


def test_select_best_without_validation_scores_final(tiny_cfg):
    summary = trainer.train(tiny_cfg(max_epochs=2, test=True, select="best", val_fraction=0.0))
    scored = summary["test"]["scored"]
    assert (scored["file"], scored["epoch"], scored["select"]) == ("final.pt", 2, "final")
    assert "no validation split" in scored["reason"]


def test_resume_writes_final_after_an_interruption_and_after_finishing(tiny_cfg):
    cfg = tiny_cfg(max_epochs=2)
    trainer.train(cfg, stop_after_epochs=1)
    run = RunLayout(cfg.output)
    assert not run.final.exists()  # an unfinished run has no final checkpoint
    trainer.train(cfg, resume=run.latest)
    assert read_checkpoint(run.final).epoch == 2
    stamp = run.final.stat().st_mtime_ns
    trainer.train(cfg, resume=run.latest)  # resumed after it finished: nothing to redo
    assert run.final.stat().st_mtime_ns == stamp
    # a kill between the last latest.pt and final.pt (or a run from before final.pt):
    # resuming the finished run writes it
    run.final.unlink()
    summary = trainer.train(cfg, resume=run.latest)
    assert summary["epochs"] == 2 and read_checkpoint(run.final).epoch == 2


@pytest.mark.parametrize("value", ["worst", "", 1, True, ["best"]])
def test_bad_select_is_one_line(value):
    with pytest.raises(ConfigError, match=r"^unknown select .*; choose one of final, best$"):
        resolve_config("phantom", None, {"select": value})


def test_select_from_yaml_and_the_paper_protocol(tmp_path):
    assert resolve_config("phantom").select == "final"
    f = tmp_path / "c.yaml"
    f.write_text("select: best\n")
    assert resolve_config("phantom", load_yaml(f)).select == "best"
    with pytest.raises(ConfigError, match="--paper-protocol tests the last epoch; drop "
                                          "--select best") as info:
        resolve_config("synapse", load_yaml(f), {"paper_protocol": True})
    assert "\n" not in str(info.value)
    assert resolve_config("synapse", None, {"paper_protocol": True}).select == "final"
    # SelfReg's recipe sweeps its late epochs on validation and keeps the best of them;
    # under --paper-protocol it tests the last epoch as the other sources do
    assert resolve_config("synapse", None, {"recipe": "selfreg"}).select == "best"
    assert resolve_config("synapse", None, {"recipe": "selfreg", "select": "final"}
                          ).select == "final"
    assert resolve_config("synapse", None, {"recipe": "selfreg", "paper_protocol": True}
                          ).select == "final"


def test_cli_select_flag_and_bad_yaml(tmp_path, capsys):
    from unetzoo.cli.main import build_parser, main
    from unetzoo.cli.train import flag_values

    args = build_parser().parse_args(["train", "--select", "best"])
    assert flag_values(args)["select"] == "best"
    assert "select" not in flag_values(build_parser().parse_args(["train"]))
    assert main(["train", "--select", "worst", "--output", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: unknown select 'worst'; choose one of final, best")
    f = tmp_path / "bad.yaml"
    f.write_text("select: latest\nmax_epochs: 1\n")
    assert main(["train", "--config", str(f), "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown select 'latest'; choose one of final, best"
    assert not (tmp_path / "r").exists()


def test_run_folder_picks_the_scored_else_final_else_latest(tmp_path):
    from unetzoo.engine.selection import find_run_checkpoint, run_checkpoint

    lay = RunLayout(tmp_path)
    assert find_run_checkpoint(tmp_path) is None
    with pytest.raises(ConfigError, match="without checkpoints/final.pt"):
        run_checkpoint(tmp_path)
    lay.checkpoints.mkdir()
    for p in (lay.best, lay.latest):
        p.write_bytes(b"x")
    assert run_checkpoint(tmp_path) == lay.latest  # never best.pt by default
    lay.final.write_bytes(b"x")
    assert run_checkpoint(tmp_path) == lay.final
    (tmp_path / "report").mkdir()  # a --select best run's report names best.pt
    (tmp_path / "report" / "summary.json").write_text(json.dumps({"scored": {"file": "best.pt"}}))
    assert run_checkpoint(tmp_path) == lay.best
    assert run_checkpoint(lay.latest) == lay.latest  # a file is itself


def test_test_and_predict_take_a_run_folder(tiny_cfg, tmp_path):
    from unetzoo.cli.main import main

    summary = trainer.train(tiny_cfg(max_epochs=1, test=True))
    rc = main(["test", "--checkpoint", summary["run_dir"], "--device", "cpu", "--overlays",
               "0", "--output", str(tmp_path / "rep")])
    assert rc == 0
    again = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert again["mean_dice"] == summary["test"]["mean_dice"]
    assert again["checkpoints"] == [str(RunLayout(summary["run_dir"]).final)]


def test_choose_checkpoint_rules(tmp_path):
    from unetzoo.engine.selection import choose_checkpoint

    lay = RunLayout(tmp_path)
    assert choose_checkpoint(lay, "final").path == lay.final
    assert choose_checkpoint(lay, "best", best_metric=0.5).path == lay.best
    paper = choose_checkpoint(lay, "best", paper_protocol=True)
    assert paper.path == lay.final and "--paper-protocol" in paper.reason
    nan = choose_checkpoint(lay, "best", best_metric=-math.inf)
    assert nan.path == lay.best and "first validated epoch" in nan.reason
    with pytest.raises(ConfigError, match="unknown select 'last'"):
        choose_checkpoint(lay, "last")
