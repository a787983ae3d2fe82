"""Kill a tiny training at many points, ``--resume``, and get the uninterrupted run.

Each kill is ``os._exit(137)`` at a named step of the checkpoint writes, in a child forked
from a fresh helper process: the child passes ``train`` a callback
(``hooks=TrainHooks(on_checkpoint=...)``) that exits at the chosen step, and nothing runs
after it, as after ``kill -9``. Points: before ``latest.pt`` is written, half way through
writing it (the temporary file is complete, not yet renamed), between the ``latest.pt``
and ``best.pt`` writes, half way through ``best.pt``, after both, and (after the last
epoch) before and half way through ``final.pt``. Then
the run is continued the way a user would (``--resume`` when ``latest.pt`` exists, else a
plain rerun) and must end with the same ``latest.pt`` weights, the same ``best.pt`` (the
same epoch and weights), the same ``final.pt``, the same metrics.csv and no temporary
files. Disk-full writes
are simulated by making the writer raise ``OSError(ENOSPC)``.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unetzoo.engine.checkpoint import read_checkpoint
from unetzoo.engine.run_folder import RUN_MARKER
from unetzoo.errors import CheckpointError

EPOCHS = 3
SHAPE = [4, 32, 32]
FLAGS = {
    "model": "unet", "model_options": {"base_channels": 4}, "img_size": 32, "batch_size": 4,
    "max_epochs": EPOCHS, "eval_interval": 1, "base_lr": 0.03, "optimizer": "adamw",
    "test": False, "progress": False, "device": "cpu", "num_workers": 0, "val_cases": 1,
}

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

# A fresh process that imports everything once and forks one child per training call.
# Forking pytest itself is not safe: once a process has run autograd (any earlier test
# that trained), torch refuses backward passes in its forked children.
_ZYGOTE = r"""
import json, os, sys, traceback
import torch
torch.set_num_threads(1)
import unetzoo.engine.evaluation, unetzoo.engine.inference  # once, not per child
import unetzoo.losses, unetzoo.metrics, unetzoo.models  # metrics pull in scipy.stats
import unetzoo.engine.trainer as trainer
from unetzoo.data import get_dataset
from unetzoo.engine.config import resolve_config
trainer.plot_history = lambda rows, out_dir: []  # PNG plots are not under test
try:
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401
except ImportError:
    pass
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            def kill_at(step, epoch, point=job["crash"]):
                if f"{step}:{epoch}" == point:
                    os._exit(137)  # a kill -9 stand-in: no finally, no cleanup
            ds = get_dataset("phantom", job["root"], **job["ds"])
            cfg = resolve_config(ds.recipe, None, job["flags"])
            trainer.train(cfg, dataset=ds, resume=job["resume"],
                          hooks=trainer.TrainHooks(on_checkpoint=kill_at))
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


@pytest.fixture(scope="module")
def zygote():
    proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()  # idle between jobs: nothing to lose, and no slow interpreter teardown
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from unetzoo.data.phantom import generate_phantom

    root = tmp_path_factory.mktemp("kill") / "phantom"
    generate_phantom(root, n_train=4, n_test=1, shape=SHAPE, seed=0)
    return root


@pytest.fixture
def run(zygote, data_root):
    """``run(out, crash=None) -> exit code``: one ``train`` in a forked child, resuming
    from ``latest.pt`` when it exists (what a user does after a kill)."""

    def go(out: Path, crash: str | None = None) -> int:
        latest = out / "checkpoints" / "latest.pt"
        out.parent.mkdir(parents=True, exist_ok=True)
        log = out.parent / f"{out.name}-{(crash or 'run').replace(':', '-')}.log"
        job = {"root": str(data_root), "ds": {"n_train": 4, "n_test": 1, "shape": SHAPE},
               "flags": {**FLAGS, "output": str(out)}, "crash": crash,
               "resume": str(latest) if latest.exists() else None, "log": str(log)}
        zygote.stdin.write(json.dumps(job) + "\n")
        zygote.stdin.flush()
        rc = json.loads(zygote.stdout.readline())["rc"]
        if rc not in (0, 137):
            print(log.read_text())  # shown by pytest on failure
        return rc

    return go


def _metrics(out: Path) -> list[dict[str, str]]:
    with (out / "metrics.csv").open() as fh:
        return [{k: v for k, v in r.items() if k != "time_s"} for r in csv.DictReader(fh)]


def _tiny(epoch: int, best_epoch: int, w: torch.Tensor | None = None):
    """A small checkpoint at ``epoch`` whose run's best is ``best_epoch``."""
    from unetzoo.engine.checkpoint import Checkpoint, TrainState
    from unetzoo.engine.spec import InferenceSpec

    spec = InferenceSpec.from_dict({"model": {"name": "unet", "options": {}},
                                    "class_names": ["bg", "a"], "in_channels": 1, "img_size": 32})
    return Checkpoint(spec=spec, weights={} if w is None else {"w": w},
                      train_state=TrainState(optimizer={}, epoch=epoch, iteration=epoch,
                                             best_epoch=best_epoch))


def _same_weights(a: Path, b: Path) -> bool:
    sa, sb = read_checkpoint(a).weights, read_checkpoint(b).weights
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def reference(zygote, data_root, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ref") / "run"
    job = {"root": str(data_root), "ds": {"n_train": 4, "n_test": 1, "shape": SHAPE},
           "flags": {**FLAGS, "output": str(out)}, "crash": None,
           "resume": None, "log": str(out.parent / "ref.log")}
    zygote.stdin.write(json.dumps(job) + "\n")
    zygote.stdin.flush()
    assert json.loads(zygote.stdout.readline())["rc"] == 0, (out.parent / "ref.log").read_text()
    ck = read_checkpoint(out / "checkpoints" / "latest.pt").train_state
    best_epochs = []
    best = -float("inf")
    for row in ck.history:
        if row["val_dice"] > best:
            best, best_epochs = row["val_dice"], [*best_epochs, int(row["epoch"])]
    assert read_checkpoint(out / "checkpoints" / "best.pt").epoch == ck.best_epoch
    return {"out": out, "improving": best_epochs, "best_epoch": ck.best_epoch}


def _kill_points(improving: list[int]) -> list[str]:
    points = [f"between-writes:{e}" for e in improving]  # the dangerous gap, every time
    points += ["before-latest:1", "before-latest:2", "tmp-latest:2", f"tmp-best:{improving[0]}",
               f"after-best:{EPOCHS - 1}", f"after-best:{EPOCHS}", f"tmp-final:{EPOCHS}"]
    return points


def test_kill_at_every_point_then_resume_matches_uninterrupted_run(run, tmp_path, reference):
    ref = reference["out"]
    points = _kill_points(reference["improving"])
    assert any(p.startswith("between-writes") for p in points)
    results = []
    for point in points:
        out = tmp_path / point.replace(":", "-")
        assert run(out, crash=point) == 137, point
        if point.startswith("tmp-"):  # killed mid-write: the temporary file is left
            assert list((out / "checkpoints").glob(".*.tmp")), point
        assert run(out) == 0, point
        ck_dir = out / "checkpoints"
        latest = read_checkpoint(ck_dir / "latest.pt").train_state
        best = read_checkpoint(ck_dir / "best.pt").train_state
        results.append((point, best.epoch, latest.best_epoch))
        assert latest.epoch == EPOCHS, point
        assert best.epoch == latest.best_epoch == reference["best_epoch"], point
        assert _same_weights(ck_dir / "best.pt", ref / "checkpoints" / "best.pt"), point
        assert _same_weights(ck_dir / "latest.pt", ref / "checkpoints" / "latest.pt"), point
        assert read_checkpoint(ck_dir / "final.pt").epoch == EPOCHS, point
        assert _same_weights(ck_dir / "final.pt", ref / "checkpoints" / "final.pt"), point
        assert _metrics(out) == _metrics(ref), point
        assert not list(ck_dir.glob(".*.tmp")) and not (out / "metrics.csv.tmp").exists(), point
        assert '"finished"' in (out / RUN_MARKER).read_text(), point


def test_disk_full_on_best_keeps_latest_and_resume_repairs(data_root, tmp_path, monkeypatch,
                                                           reference, run):
    """ENOSPC while writing best.pt: one line naming it, latest.pt intact, resume repairs."""
    import unetzoo.engine.checkpoint as ckpt_mod
    from unetzoo.data import get_dataset
    from unetzoo.engine.config import resolve_config
    from unetzoo.engine.trainer import train

    ds = get_dataset("phantom", data_root, n_train=4, n_test=1, shape=SHAPE)
    out = tmp_path / "run"
    real_save = torch.save
    calls = []

    def full_disk(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 2:  # epoch 1 always improves: latest.pt, then best.pt fails
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt_mod.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"^disk full at .*best\.pt") as info:
        train(resolve_config(ds.recipe, None, {**FLAGS, "output": str(out)}), dataset=ds)
    assert "\n" not in str(info.value)
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    ck_dir = out / "checkpoints"
    assert read_checkpoint(ck_dir / "latest.pt").epoch == 1  # the good write stayed
    assert not (ck_dir / "best.pt").exists() and not list(ck_dir.glob(".*.tmp"))
    assert run(out) == 0
    assert read_checkpoint(ck_dir / "best.pt").epoch == reference["best_epoch"]
    assert _same_weights(ck_dir / "best.pt", reference["out"] / "checkpoints" / "best.pt")


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 RuntimeError("[enforce fail at inline_container.cc:626] . "
                                              "unexpected pos 3904 vs 3792")])
def test_disk_full_writing_a_checkpoint_is_one_line(tmp_path, monkeypatch, exc):
    """Both ways a full disk shows up (errno, torch's zip writer) read "disk full at PATH";
    the previous file is untouched and no temporary file is left."""
    import shutil

    import unetzoo.engine.checkpoint as ckpt_mod

    path = tmp_path / "checkpoints" / "latest.pt"
    ckpt_mod.write_checkpoint(_tiny(1, 1, torch.ones(2)), path)
    before = path.read_bytes()

    def fail(*a, **k):
        raise exc

    monkeypatch.setattr(ckpt_mod.torch, "save", fail)
    real_usage = shutil.disk_usage
    monkeypatch.setattr(ckpt_mod.shutil, "disk_usage",
                        lambda p: real_usage(p)._replace(free=1024))
    with pytest.raises(CheckpointError) as info:
        ckpt_mod.write_checkpoint(_tiny(2, 1), path)
    msg = str(info.value)
    assert msg.startswith(f"disk full at {path}") and "intact" in msg and "\n" not in msg
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["latest.pt"]


def test_disk_full_via_cli_is_one_line(data_root, tmp_path, monkeypatch, capsys):
    import unetzoo.engine.checkpoint as ckpt_mod
    from unetzoo.cli.main import main

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", full_disk)
    rc = main(["train", "--data-root", str(data_root), "--output", str(tmp_path / "run"),
               "--dataset-option", "n_train=4", "--dataset-option", "n_test=1",
               "--dataset-option", "shape=[4, 32, 32]", "--model-option", "base_channels=4",
               "--img-size", "32", "--max-epochs", "1", "--no-test", "--no-progress",
               "--device", "cpu", "--num-workers", "0", "--model", "unet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: disk full at "), err


def test_repair_best_leaves_consistent_folders_alone(tmp_path):
    from unetzoo.engine.checkpoint import repair_best, write_checkpoint

    d = tmp_path / "checkpoints"
    write_checkpoint(_tiny(3, 2), d / "latest.pt")
    write_checkpoint(_tiny(2, 2), d / "best.pt")
    assert repair_best(d) is None
    # A mismatch that no interruption can produce is reported, never papered over.
    write_checkpoint(_tiny(1, 1), d / "best.pt")
    note = repair_best(d)
    assert note and note.startswith("warning") and read_checkpoint(d / "best.pt").epoch == 1
    # The gap a kill between the two writes leaves: latest.pt is the best, best.pt older.
    write_checkpoint(_tiny(4, 4, torch.ones(1)), d / "latest.pt")
    assert "repaired" in repair_best(d)
    best = read_checkpoint(d / "best.pt")
    assert best.epoch == 4 and torch.equal(best.weights["w"], torch.ones(1))


def test_disk_full_writing_the_metrics_log_is_one_line(data_root, tmp_path, monkeypatch, capsys):
    """ENOSPC outside the checkpoint writer (metrics.csv) is "disk full at PATH" as well."""
    from unetzoo.cli.main import main
    from unetzoo.engine.logging.plots import MetricsLog

    def full_disk(self):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(MetricsLog, "write", full_disk)
    out = tmp_path / "run"
    rc = main(["train", "--data-root", str(data_root), "--output", str(out),
               "--dataset-option", "n_train=4", "--dataset-option", "n_test=1",
               "--dataset-option", "shape=[4, 32, 32]", "--model-option", "base_channels=4",
               "--img-size", "32", "--max-epochs", "1", "--no-test", "--no-progress",
               "--device", "cpu", "--num-workers", "0", "--model", "unet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: disk full at {out / 'metrics.csv'}"), err
