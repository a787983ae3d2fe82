"""``train --overwrite`` deletes only what unetzoo wrote inside the run's sub-folders:
a file the user put in ``report/``, ``checkpoints/``, ``plots/`` or ``tensorboard/`` stays,
and a sub-folder is removed only when it ends empty (engine.run_folder.run_files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unetzoo.engine.run_folder import RUN_MARKER, RunFolder, run_files
from unetzoo.errors import CheckpointError
from unetzoo.runs.outputs import OUTPUTS_MANIFEST, OutputFolder

USER = "the user's own file"


def _write(root: Path, rel: str, text: str = "x") -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def _finished_run(root: Path) -> Path:
    _write(root, RUN_MARKER, '{"tool": "unetzoo", "status": "finished"}')
    _write(root, "config.yaml", "seed: 0\n")
    return root


RUNS_OWN = [
    "checkpoints/best.pt", "checkpoints/latest.pt", "checkpoints/.best.pt.k3j2.tmp",
    "checkpoints/best.0123456789abcdef.onnx", "checkpoints/.best.0123456789abcdef.x1.tmp.onnx",
    "checkpoints/best.onnx", "checkpoints/postprocessing.json", "checkpoints/final.pt",
    "checkpoints/.final.pt.x7q1.tmp", "checkpoints/final.0123456789abcdef.onnx",
    "plots/loss.png", "plots/val_metrics.png", "tensorboard/events.out.tfevents.17.host.1.0",
]
USERS = [
    "checkpoints/my_pretrained.pt", "checkpoints/best.pt.bak", "tensorboard/notes.txt",
    "report/mine.txt", "report/overlays/my_figure.png", "report/predictions/gt.nii",
    "report/drafts/summary.md",
]


def test_overwrite_keeps_user_files_in_every_sub_folder(tmp_path: Path) -> None:
    run = _finished_run(tmp_path / "run")
    for rel in RUNS_OWN:
        _write(run, rel)
    for rel in USERS:
        _write(run, rel, USER)
    report = run / "report"
    ours = ["summary.md", "summary.json", "cases.csv", "overlays/c0_slice001.png",
            "predictions/c0.nii.gz"]
    for rel in ours:
        _write(report, rel)
    OutputFolder(report).record(ours)
    with RunFolder(run, overwrite=True):
        pass
    for rel in USERS:
        assert (run / rel).read_text() == USER, rel
    for rel in RUNS_OWN + [f"report/{n}" for n in ours] + [f"report/{OUTPUTS_MANIFEST}"]:
        assert not (run / rel).exists(), rel
    assert not (run / "plots").exists()  # only unetzoo's files were there: folder gone
    assert not (run / "config.yaml").exists()


def test_a_report_from_before_manifests_loses_only_report_names(tmp_path: Path) -> None:
    run = _finished_run(tmp_path / "run")
    for rel in ("summary.md", "summary.json", "cases.csv", "cases.json",
                "overlays/c0_slice002.png", "predictions/c0.nii.gz"):
        _write(run / "report", rel)
    _write(run / "report", "old.csv", USER)
    with RunFolder(run, overwrite=True):
        pass
    left = sorted(p.relative_to(run / "report").as_posix()
                  for p in (run / "report").rglob("*"))
    assert left == ["old.csv"]  # overlays/ and predictions/ ended empty: removed


def test_a_report_folder_of_only_our_files_is_removed(tmp_path: Path) -> None:
    run = _finished_run(tmp_path / "run")
    _write(run / "report", "summary.md")
    OutputFolder(run / "report").record(["summary.md"])
    with RunFolder(run, overwrite=True):
        pass
    assert not (run / "report").exists()


def test_a_user_file_under_a_report_name_is_refused_before_anything_goes(tmp_path):
    run = _finished_run(tmp_path / "run")
    _write(run, "checkpoints/best.pt")
    _write(run / "report", "summary.md", "ours")
    OutputFolder(run / "report").record(["summary.md"])
    (run / "report" / "summary.md").write_text(USER + ", much longer than ours")
    with pytest.raises(CheckpointError) as exc:
        RunFolder(run, overwrite=True).__enter__()
    msg = str(exc.value)
    assert "summary.md was not written by unetzoo" in msg and "\n" not in msg
    assert (run / "report" / "summary.md").read_text().startswith(USER)
    assert (run / "checkpoints" / "best.pt").is_file()  # nothing deleted


def test_a_manifest_entry_outside_the_report_is_never_deleted(tmp_path: Path) -> None:
    run = _finished_run(tmp_path / "run")
    outside = _write(tmp_path, "precious.txt", USER)
    _write(run / "report", "summary.md")
    OutputFolder(run / "report").record(["summary.md"])
    manifest = run / "report" / OUTPUTS_MANIFEST
    data = json.loads(manifest.read_text())
    st = outside.stat()
    for name in ("../../precious.txt", str(outside)):  # hand-edited to point outside
        data["files"][name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    manifest.write_text(json.dumps(data))
    assert run_files(run, "report") == [manifest, run / "report" / "summary.md"]
    with RunFolder(run, overwrite=True):
        pass
    assert outside.read_text() == USER


def test_train_overwrite_keeps_user_files_in_report_and_checkpoints(tmp_path, capsys):
    from unetzoo.cli.main import main
    from unetzoo.data.phantom import generate_phantom

    root = generate_phantom(tmp_path / "ph", n_train=2, n_test=1, shape=[4, 16, 16], seed=0)
    out = tmp_path / "run"
    argv = ["train", "--data-root", str(root), "--output", str(out), "--model", "unet",
            "--dataset-option", "n_train=2", "--dataset-option", "n_test=1",
            "--dataset-option", "shape=[4, 16, 16]", "--model-option", "base_channels=4",
            "--img-size", "16", "--batch-size", "2", "--max-epochs", "1", "--no-progress",
            "--device", "cpu", "--num-workers", "0"]
    assert main(argv) == 0
    assert (out / "report" / OUTPUTS_MANIFEST).is_file()  # the final test recorded its files
    mine = {"report/my_notes.md": USER, "checkpoints/my_pretrained.pt": USER}
    for rel, text in mine.items():
        _write(out, rel, text)
    before = {rel: (out / rel).stat().st_mtime_ns
              for rel in ("checkpoints/best.pt", "report/summary.json")}
    assert main([*argv, "--overwrite"]) == 0, capsys.readouterr().err
    for rel, text in mine.items():
        assert (out / rel).read_text() == text, rel
    for rel, mtime in before.items():  # the run's own files: written anew
        assert (out / rel).stat().st_mtime_ns != mtime, rel
