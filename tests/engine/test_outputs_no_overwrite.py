"""predict / test never overwrite a file the user wrote (engine.run_folder.OutputFolder):
unetzoo's own files are recognised through DIR/.unetzoo-outputs.json and replaced on a
re-run; a user's file under a target's name is refused before any work unless overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unetzoo import create_model
from unetzoo.engine.predict_cases import predict_cases
from unetzoo.engine.run_folder import RUN_MARKER
from unetzoo.errors import ConfigError
from unetzoo.runs.outputs import OUTPUTS_MANIFEST, OutputFolder

CLASSES = ["background", "a", "b"]
USER_BYTES = b"my ground truth, not a prediction"


# ------------------------------------------------------------------ OutputFolder itself
def test_claim_refuses_a_user_file_and_record_makes_it_ours(tmp_path: Path) -> None:
    (tmp_path / "x.nii.gz").write_bytes(USER_BYTES)
    with pytest.raises(ConfigError) as exc:
        OutputFolder(tmp_path).claim(["x.nii.gz"])
    msg = str(exc.value)
    assert "x.nii.gz exists and was not written by unetzoo" in msg and "--overwrite" in msg
    assert "\n" not in msg
    OutputFolder(tmp_path).claim(["absent.nii.gz"])  # nothing there: nothing to refuse
    folder = OutputFolder(tmp_path, overwrite=True)
    folder.claim(["x.nii.gz"])
    (tmp_path / "x.nii.gz").write_bytes(b"prediction")
    folder.record(["x.nii.gz"])
    data = json.loads((tmp_path / OUTPUTS_MANIFEST).read_text())  # JSON, never pickle
    assert data["tool"] == "unetzoo" and set(data["files"]) == {"x.nii.gz"}
    OutputFolder(tmp_path).claim(["x.nii.gz"])  # ours now: a re-run may replace it
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left no temporary file


def test_a_user_file_put_in_place_of_ours_is_the_users_again(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"ours")
    OutputFolder(tmp_path).record(["x.png"])
    (tmp_path / "x.png").write_bytes(USER_BYTES)  # the user copied their file over it
    with pytest.raises(ConfigError, match="was not written by unetzoo"):
        OutputFolder(tmp_path).claim(["x.png"])


def test_a_damaged_manifest_lists_nothing(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"ours")
    OutputFolder(tmp_path).record(["x.png"])
    (tmp_path / OUTPUTS_MANIFEST).write_text("{not json")
    with pytest.raises(ConfigError, match="was not written by unetzoo"):
        OutputFolder(tmp_path).claim(["x.png"])


def test_overwrite_replaces_a_link_never_the_file_it_points_to(tmp_path: Path) -> None:
    user = tmp_path / "labelsTr" / "c.nii.gz"
    user.parent.mkdir()
    user.write_bytes(USER_BYTES)
    out = tmp_path / "out"
    out.mkdir()
    (out / "c.nii.gz").symlink_to(user)
    with pytest.raises(ConfigError, match="was not written by unetzoo"):
        OutputFolder(out).claim(["c.nii.gz"])
    OutputFolder(out, overwrite=True).claim(["c.nii.gz"])
    assert not (out / "c.nii.gz").exists() and user.read_bytes() == USER_BYTES


def test_a_report_without_a_manifest_is_not_unetzoos(tmp_path: Path) -> None:
    # No adoption of files from before manifests: even a run's own report/ folder is
    # claimed file by file through its record, so an unrecorded summary.md is refused.
    run = tmp_path / "run"
    (run / "report").mkdir(parents=True)
    (run / RUN_MARKER).write_text('{"tool": "unetzoo", "status": "finished"}')
    (run / "report" / "summary.md").write_text("old report")
    with pytest.raises(ConfigError, match="was not written by unetzoo"):
        OutputFolder(run / "report").claim(["summary.md"])
    OutputFolder(run / "report").record(["summary.md"])
    OutputFolder(run / "report").claim(["summary.md"])  # recorded: a re-run may replace it
    assert "summary.md" in json.loads((run / "report" / OUTPUTS_MANIFEST).read_text())["files"]


# ------------------------------------------------------------------ predict_cases
class _Refuses(torch.nn.Module):
    """A model that fails the test if anything is predicted."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("predicted although the output folder was refused")


@pytest.fixture()
def case_file(tmp_path: Path) -> Path:
    import nibabel as nib

    d = tmp_path / "imagesTs"
    d.mkdir()
    vol = np.random.default_rng(0).normal(size=(12, 10, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 3.0, 1.0])), d / "c1_0000.nii.gz")
    return d / "c1_0000.nii.gz"


def test_predict_refuses_a_user_label_map_before_any_work(case_file, tmp_path, tiny_unet,
                                                          tiny_meta):
    out = tmp_path / "labelsTr"
    out.mkdir()
    (out / "c1.nii.gz").write_bytes(USER_BYTES)
    (out / "notes.txt").write_text("unrelated")
    with pytest.raises(ConfigError) as exc:
        predict_cases([case_file], _Refuses(), tiny_meta, out, verbose=False)
    assert "c1.nii.gz exists and was not written by unetzoo" in str(exc.value)
    assert (out / "c1.nii.gz").read_bytes() == USER_BYTES
    assert not (out / OUTPUTS_MANIFEST).exists()
    # --overwrite: replaced by a label map; the unrelated file untouched
    recs = predict_cases([case_file], tiny_unet, tiny_meta, out, verbose=False, overwrite=True,
                         overlays=1, save_probabilities=True)
    assert (out / "c1.nii.gz").read_bytes() != USER_BYTES
    assert (out / "notes.txt").read_text() == "unrelated"
    listed = set(json.loads((out / OUTPUTS_MANIFEST).read_text())["files"])
    assert listed == {"c1.nii.gz", "c1.npz", *(Path(p).name for p in recs[0]["overlays"])}


def test_predict_twice_into_the_same_folder(case_file, tmp_path, tiny_unet, tiny_meta):
    out = tmp_path / "out"
    out.mkdir()
    (out / "c2.nii.gz").write_bytes(USER_BYTES)  # not a target of this run
    for _ in range(2):  # the second run replaces the first one's files, no flag needed
        predict_cases([case_file], tiny_unet, tiny_meta, out, verbose=False, overlays=2,
                      save_probabilities=True)
    assert (out / "c1.nii.gz").is_file() and (out / "c1.npz").is_file()
    assert (out / "c2.nii.gz").read_bytes() == USER_BYTES


@pytest.mark.parametrize("name, kwargs", [
    ("c1.npz", {"save_probabilities": True}),
    ("c1_overlay_slice001.png", {"overlays": 1}),
])
def test_predict_claims_probabilities_and_overlays(case_file, tmp_path, name, kwargs,
                                                   tiny_meta):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(USER_BYTES)
    with pytest.raises(ConfigError, match=name):
        predict_cases([case_file], _Refuses(), tiny_meta, out, verbose=False, **kwargs)
    assert (out / name).read_bytes() == USER_BYTES


def test_predict_files_refuses_before_loading_the_checkpoint(case_file, tmp_path):
    from unetzoo.engine.predict import predict_files

    out = tmp_path / "out"
    out.mkdir()
    (out / "c1.nii.gz").write_bytes(USER_BYTES)
    # The checkpoint does not exist: the folder's refusal must come first.
    with pytest.raises(ConfigError, match="was not written by unetzoo"):
        predict_files([case_file], tmp_path / "missing.pt", out, device="cpu", verbose=False)
    assert (out / "c1.nii.gz").read_bytes() == USER_BYTES


# ------------------------------------------------------------------ run_test's report
class _MemDataset:
    """Two labelled 2 x 16 x 16 test cases in memory."""

    name = "mem"
    root = Path(".")
    class_names = CLASSES
    num_classes = 3
    in_channels = 1

    def splits(self) -> list[str]:
        return ["test"]

    def cases(self, split: str) -> list[str]:
        return ["c0", "c1"]

    def load_case(self, case_id: str, split: str):
        from unetzoo.data.base import Case

        lab = np.zeros((2, 16, 16), np.int64)
        lab[:, 3:9, 3:9] = 1 if case_id == "c0" else 2
        return Case(id=case_id, image=lab[None].astype(np.float32), label=lab,
                    spacing=(3.0, 1.0, 1.0), affine=np.diag([3.0, 1.0, 1.0, 1.0]),
                    class_names=CLASSES)


def _checkpoint():
    from ckpt_helpers import model_checkpoint

    model = create_model("unet", in_channels=1, num_classes=3, base_channels=4)
    return model_checkpoint(model, class_names=CLASSES, img_size=16, dataset="mem")


class _CopiesTheLabel(torch.nn.Module):
    """Logits whose argmax is the input (the test images are their label maps)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        labels = x[:, 0].round().long().clamp(0, len(CLASSES) - 1)
        return 10.0 * torch.nn.functional.one_hot(labels, len(CLASSES)).permute(0, 3, 1, 2).float()


class _NeverRuns(torch.nn.Module):
    """A model for runs that must be refused before any prediction."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pytest.fail("a case was predicted")


def test_report_keeps_a_user_summary(tmp_path):
    from unetzoo.engine import evaluation

    out = tmp_path / "r"
    out.mkdir()
    (out / "summary.md").write_bytes(USER_BYTES)
    (out / "mine.txt").write_text("unrelated")
    with pytest.raises(ConfigError, match="summary.md exists and was not written by unetzoo"):
        evaluation.run_test(_checkpoint(), dataset=_MemDataset(), out_dir=out,
                            overlays=0, device="cpu", verbose=False, model=_NeverRuns())
    assert (out / "summary.md").read_bytes() == USER_BYTES
    for overwrite in (True, False):  # replaced with the flag, then a re-run needs none
        summary = evaluation.run_test(_checkpoint(), dataset=_MemDataset(), out_dir=out,
                                      overlays=1, save_predictions=True, device="cpu",
                                      verbose=False, overwrite=overwrite,
                                      model=_CopiesTheLabel().eval())
        assert summary["mean_dice"] == 1.0  # the model in memory made the predictions
    assert (out / "summary.md").read_text().startswith("# Test of unet")
    assert (out / "mine.txt").read_text() == "unrelated"
    listed = set(json.loads((out / OUTPUTS_MANIFEST).read_text())["files"])
    assert {"summary.md", "summary.json", "cases.csv", "predictions/c0.nii.gz"} <= listed
    assert any(n.startswith("overlays/c0_slice") for n in listed)


def test_report_claims_predictions_and_overlays(tmp_path):
    from unetzoo.engine import evaluation

    out = tmp_path / "r"
    for rel in ("predictions/c1.nii.gz", "overlays/c0_slice001.png"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(USER_BYTES)
        with pytest.raises(ConfigError, match=rel):
            evaluation.run_test(_checkpoint(), dataset=_MemDataset(), out_dir=out,
                                overlays=1, save_predictions=True, device="cpu",
                                verbose=False, model=_NeverRuns())
        assert (out / rel).read_bytes() == USER_BYTES
