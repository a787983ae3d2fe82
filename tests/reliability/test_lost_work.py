"""No lost work: ``train --output DIR`` never writes over a folder that is not its own
unfinished run, ``--overwrite`` deletes only the run's own files, and a second training
on the same folder stops with one line while the first holds the lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from unetzoo.cli.main import main
from unetzoo.engine.run_folder import RUN_MARKER, RunFolder
from unetzoo.errors import UnetzooError

TINY = ["--dataset-option", "n_train=3", "--dataset-option", "n_test=1",
        "--dataset-option", "shape=[4, 32, 32]", "--model", "unet",
        "--model-option", "base_channels=4", "--img-size", "32", "--batch-size", "4",
        "--max-epochs", "1", "--no-test", "--no-progress", "--device", "cpu",
        "--num-workers", "0"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from unetzoo.data.phantom import generate_phantom

    root = tmp_path_factory.mktemp("lw") / "phantom"
    generate_phantom(root, n_train=3, n_test=1, shape=[4, 32, 32], seed=0)
    return root


def _train(out: Path, root: Path, *extra: str) -> int:
    return main(["train", "--data-root", str(root), "--output", str(out), *TINY, *extra])


def _err(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def _user_files(out: Path) -> dict[str, str]:
    files = {"notes.txt": "my notes", "data/labels.csv": "a,b", "results.json": "{}"}
    for rel, text in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    return files


def _assert_intact(out: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        assert (out / rel).read_text() == text, rel


def test_refuses_folder_with_user_files(data_root, tmp_path, capsys):
    out = tmp_path / "mine"
    files = _user_files(out)
    assert _train(out, data_root) == 2
    err = _err(capsys)
    assert len(err) == 1 and "not empty" in err[0] and "--overwrite" in err[0]
    _assert_intact(out, files)
    assert not (out / "checkpoints").exists()


def test_overwrite_writes_beside_user_files(data_root, tmp_path, capsys):
    out = tmp_path / "mine"
    files = _user_files(out)
    assert _train(out, data_root, "--overwrite") == 0
    _assert_intact(out, files)
    assert (out / "checkpoints" / "final.pt").is_file()


@pytest.mark.parametrize("name", ["config.yaml", "metrics.csv", "checkpoints"])
def test_overwrite_never_replaces_a_user_file_named_like_a_run_file(data_root, tmp_path,
                                                                     capsys, name):
    out = tmp_path / "mine"
    out.mkdir()
    target = out / name
    if name == "checkpoints":
        target.mkdir()
        (target / "mine.pt").write_text("not a checkpoint")
    else:
        target.write_text("my own file")
    assert _train(out, data_root, "--overwrite") == 2
    err = _err(capsys)
    assert len(err) == 1 and "unetzoo did not write" in err[0]
    assert (out / name).exists()
    if name != "checkpoints":
        assert target.read_text() == "my own file"


def test_finished_run_is_refused_then_replaced_with_overwrite(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, data_root) == 0
    files = _user_files(out)
    (out / "report").mkdir()
    (out / "report" / "summary.md").write_text("old report of the old model")
    (out / "report" / "old.csv").write_text("the user's file in report/")
    before = (out / "checkpoints" / "final.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert _train(out, data_root) == 2
    err = _err(capsys)
    assert len(err) == 1 and "finished run" in err[0]
    assert (out / "checkpoints" / "final.pt").stat().st_mtime_ns == before
    assert _train(out, data_root, "--overwrite") == 0
    # The old run's report is gone with the old model; the user's files stay, in report/ too.
    assert not (out / "report" / "summary.md").exists()
    assert (out / "report" / "old.csv").read_text() == "the user's file in report/"
    _assert_intact(out, files)


def test_unfinished_run_needs_resume_or_overwrite(data_root, tmp_path, capsys):
    from unetzoo.data import get_dataset
    from unetzoo.engine.config import resolve_config
    from unetzoo.engine.trainer import train

    out = tmp_path / "run"
    ds = get_dataset("phantom", data_root, n_train=3, n_test=1, shape=[4, 32, 32])
    flags = {"model": "unet", "model_options": {"base_channels": 4}, "img_size": 32,
             "batch_size": 4, "max_epochs": 2, "test": False, "progress": False,
             "device": "cpu", "num_workers": 0, "output": str(out)}
    train(resolve_config(ds.recipe, None, dict(flags)), dataset=ds, stop_after_epochs=1)
    with pytest.raises(UnetzooError, match="unfinished run.*--resume"):
        train(resolve_config(ds.recipe, None, dict(flags)), dataset=ds)
    capsys.readouterr()
    assert main(["train", "--output", str(out), "--resume", "--no-progress"]) == 0
    assert "done" in capsys.readouterr().out


def test_run_killed_before_its_first_checkpoint_starts_over(data_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / RUN_MARKER).write_text('{"tool": "unetzoo", "status": "running"}')
    (out / "config.yaml").write_text("seed: 1\n")
    assert _train(out, data_root) == 0


def test_resume_and_overwrite_together_is_one_line(tmp_path, capsys):
    assert main(["train", "--output", str(tmp_path), "--resume", "--overwrite"]) == 2
    assert len(_err(capsys)) == 1


def test_lock_stops_second_process(data_root, tmp_path, capsys):
    """A process holding the folder (another training: the trainer's own RunFolder) makes
    `train` stop with one line; killing the holder frees the folder (no stale lock)."""
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import time\nfrom unetzoo.engine.run_folder import RunFolder\n"
         f"RunFolder({str(out)!r}).__enter__()\n"
         "print('locked', flush=True)\ntime.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _train(out, data_root) == 2
        err = _err(capsys)
        assert len(err) == 1 and "in use by another unetzoo training" in err[0]
        assert str(holder.pid) in err[0]
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the dead holder's lock: no stale lock blocks the next run.
    assert _train(out, data_root) == 0


def test_lock_is_released_on_exit_and_on_error(tmp_path):
    out = tmp_path / "run"
    with RunFolder(out):
        with pytest.raises(UnetzooError, match="in use"):
            with RunFolder(out, resume=True):
                pass
    with RunFolder(out, resume=True):  # free again after exit
        pass
    with pytest.raises(RuntimeError):
        with RunFolder(out, resume=True):
            raise RuntimeError("boom")
    with RunFolder(out, resume=True):  # and after an error
        pass


def test_legacy_run_folder_is_recognised(tmp_path):
    """A run folder from before markers existed counts as a run (its checkpoint loads)."""
    from unetzoo.engine.checkpoint import Checkpoint, TrainState, write_checkpoint
    from unetzoo.engine.spec import InferenceSpec

    out = tmp_path / "legacy"
    spec = InferenceSpec.from_dict({"model": {"name": "unet", "options": {}},
                                    "class_names": ["bg", "a"], "in_channels": 1, "img_size": 32})
    state = TrainState(optimizer={}, epoch=2, iteration=8, max_iterations=8)
    write_checkpoint(Checkpoint(spec=spec, weights={}, train_state=state),
                     out / "checkpoints" / "latest.pt")
    (out / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(UnetzooError, match="finished run"):
        RunFolder(out).__enter__()
    # No run marker: nothing proves config.yaml is the run's, so --overwrite deletes
    # nothing (issue 26: a copied best.pt beside the user's own config.yaml).
    with pytest.raises(UnetzooError, match="deletes none of them"):
        RunFolder(out, overwrite=True).__enter__()
    assert (out / "config.yaml").read_text() == "seed: 1\n"
    assert (out / "checkpoints" / "latest.pt").is_file()


def test_unwritable_output_is_one_line(tmp_path, capsys):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("x")
        out = blocker / "run"  # a path below a file: cannot be created even as root
    else:
        out = tmp_path / "ro" / "run"
        (tmp_path / "ro").mkdir(mode=0o500)
    assert main(["train", "--output", str(out), "--no-progress", "--max-epochs", "1"]) == 2
    err = _err(capsys)
    assert len(err) == 1 and "not writable" in err[0], err


def test_a_stored_fold_split_is_neither_in_the_way_nor_deleted(tmp_path):
    out = tmp_path / "fold_0"
    out.mkdir()
    (out / "splits_final.json").write_text("[]")
    with RunFolder(out):
        pass
    with RunFolder(out, overwrite=True):
        pass
    assert (out / "splits_final.json").read_text() == "[]"


def test_failed_export_leaves_an_existing_file_alone(tmp_path, monkeypatch):
    """Exports are written beside the target and renamed: a failure destroys nothing."""
    import unetzoo.deploy.export as export
    from unetzoo import create_model

    out = tmp_path / "model.onnx"
    out.write_bytes(b"the user's earlier export")

    def broken(wrapper, x, path, *a):
        Path(path).write_bytes(b"half a file")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr("unetzoo.engine.onnx.capture_onnx", broken)  # the ONNX writer
    model = create_model("unet", base_channels=4)
    with pytest.raises(export.ExportError):
        export.export_model(model, out, fmt="onnx", img_size=32, overwrite=True)
    assert out.read_bytes() == b"the user's earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    with pytest.raises(UnetzooError, match="is a folder"):
        export.export_model(model, tmp_path, fmt="onnx", img_size=32)
