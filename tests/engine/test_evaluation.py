"""The test report and the validation never count an unscored or missed class as success.

A two-case in-memory dataset and a fake predictor that never predicts classes 2 and 3:
class 1 is perfect, class 2 is missed in case ``c0`` and absent from both maps in ``c1``,
class 3 is absent from both maps everywhere.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from unetzoo.data.base import Case, SegDataset
from unetzoo.engine import evaluation
from unetzoo.engine.evaluation import run_test, validate
from unetzoo.metrics import Reference, ScoringRules, score_case, spacing_known

NAMES = ["background", "liver", "kidney", "spleen"]


def _labels() -> dict[str, np.ndarray]:
    c0 = np.zeros((2, 16, 16), np.int64)
    c0[:, 2:8, 2:8] = 1
    c0[:, 10:14, 9:15] = 2
    c1 = np.zeros((2, 16, 16), np.int64)
    c1[:, 4:12, 4:12] = 1
    return {"c0": c0, "c1": c1}


class _MemDataset(SegDataset):
    name = "mem"

    def __init__(self, affine: bool) -> None:
        super().__init__(Path("."))
        self.class_names = list(NAMES)
        self.labels = _labels()
        self.affine = affine

    def splits(self) -> list[str]:
        return ["test"]

    def cases(self, split: str) -> list[str]:
        return list(self.labels)

    def load_case(self, case_id: str, split: str) -> Case:
        lab = self.labels[case_id]
        return Case(
            id=case_id,
            image=lab[None].astype(np.float32),
            label=lab,
            spacing=(3.0, 0.5, 0.5),
            affine=np.diag([3.0, 0.5, 0.5, 1.0]) if self.affine else None,
            class_names=list(NAMES),
        )


class NeverPredicts2Or3(torch.nn.Module):
    """Logits whose argmax is the case's label (carried in the image) with classes 2 and
    3 erased."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lab = x[:, 0].round().long()
        keep = torch.where(lab == 1, 1, 0)
        return 10.0 * torch.nn.functional.one_hot(keep, len(NAMES)).permute(0, 3, 1, 2).float()


def _checkpoint(**spec):
    from unetzoo.engine.checkpoint import Checkpoint
    from unetzoo.engine.spec import InferenceSpec
    from unetzoo.models import create_model

    model = create_model("unet", in_channels=1, num_classes=len(NAMES), base_channels=4)
    return Checkpoint(spec=InferenceSpec.from_dict({
        "model": {"name": "unet", "options": {"base_channels": 4}},
        "class_names": list(NAMES), "in_channels": 1, "img_size": 16, "dataset": "mem", **spec,
    }), weights=model.state_dict())


@pytest.fixture()
def fake_predictor() -> torch.nn.Module:
    return NeverPredicts2Or3().eval()


def test_report_never_counts_a_missing_class_as_success(fake_predictor, tmp_path, capsys):
    ds = _MemDataset(affine=True)
    summary = run_test(_checkpoint(), dataset=ds, out_dir=tmp_path / "r", overlays=0,
                       device="cpu", protocol="strict", model=fake_predictor)
    pc = summary["per_class"]
    assert pc["liver"]["dice"] == 1.0 and pc["liver"]["n_dice"] == 2
    # kidney: missed in c0 (Dice 0, HD95 inf), absent from both in c1 (not scored)
    assert pc["kidney"]["dice"] == 0.0 and pc["kidney"]["n_dice"] == 1
    assert pc["kidney"]["hd95"] == math.inf and pc["kidney"]["n_hd95"] == 1
    # spleen: absent everywhere -> NaN, no scored case, out of the mean
    assert math.isnan(pc["spleen"]["dice"]) and pc["spleen"]["n_dice"] == 0
    assert summary["mean_dice"] == pytest.approx(0.5)  # (1 + 0) / 2, not (1 + 1 + 1) / 3
    assert summary["classes_in_mean"]["dice"] == 2
    assert summary["never_predicted"] == ["kidney", "spleen"]
    assert summary["hd95_unit"] == "mm"
    md = (tmp_path / "r" / "summary.md").read_text()
    assert "| Class | DSC (%) | n | HD95 (mm) | n |" in md
    assert "| kidney (never predicted) | 0.00 | 1 | inf | 1 |" in md
    assert "| spleen (never predicted) | n/a | 0 | n/a | 0 |" in md
    assert "2/3 classes" in md and "never predicted 2 of 3" in md.lower()
    err = capsys.readouterr().err
    assert "warning: the model never predicted 2 of 3 class(es)" in err
    assert "kidney, spleen" in err
    saved = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert saved["never_predicted"] == ["kidney", "spleen"]
    # strict JSON: not scored -> null, infinite distance -> "inf"
    assert saved["per_class"]["spleen"]["dice"] is None
    assert saved["per_class"]["kidney"]["hd95"] == "inf" and saved["mean_dice"] == 0.5
    rows = {(r["case"], r["class_name"]): r
            for r in csv.DictReader((tmp_path / "r" / "cases.csv").open())}
    assert rows[("c0", "kidney")]["dice"] == "0.000000" and rows[("c0", "kidney")]["hd95"] == "inf"
    assert rows[("c1", "kidney")]["dice"] == "nan" and rows[("c1", "spleen")]["hd95"] == "nan"


def test_transunet_protocol_keeps_published_rules(fake_predictor, tmp_path):
    ds = _MemDataset(affine=True)
    summary = run_test(_checkpoint(), dataset=ds, out_dir=tmp_path / "r", overlays=0,
                       device="cpu", protocol="transunet", verbose=False,
                       model=fake_predictor)
    pc = summary["per_class"]
    # calculate_metric_percase: prediction empty -> Dice 0, HD95 0, in every case
    assert pc["kidney"]["dice"] == 0.0 and pc["kidney"]["hd95"] == 0.0
    assert pc["spleen"]["dice"] == 0.0 and pc["spleen"]["n_dice"] == 2
    assert summary["mean_dice"] == pytest.approx(1 / 3)
    assert summary["hd95_unit"] == "voxels"  # as TransUNet's test script


def test_hd95_unit_is_mm_only_with_known_spacing(fake_predictor, tmp_path):
    ds = _MemDataset(affine=False)  # like a Synapse h5 volume: no spacing on file
    case = ds.load_case("c0", "test")
    assert not spacing_known(case) and Reference.of_case(case).spacing is None
    summary = run_test(_checkpoint(), dataset=ds, out_dir=tmp_path / "r", overlays=0,
                       device="cpu", verbose=False, model=fake_predictor)
    assert summary["hd95_unit"] == "voxels"
    assert "HD95 (voxels)" in (tmp_path / "r" / "summary.md").read_text()
    # with a spacing the same shift is measured in mm: 1 voxel in-plane = 0.5 mm
    lab = ds.labels["c1"]
    shifted = np.roll(lab, 1, axis=2)
    rules = ScoringRules(4)
    mm = score_case(shifted, Reference.of_case(_MemDataset(affine=True).load_case("c1", "test")),
                    rules)
    vox = score_case(shifted, Reference.of_case(ds.load_case("c1", "test")), rules)
    assert mm.by_class()[1]["hd95"] == pytest.approx(0.5) and mm.distance_unit == "mm"
    assert vox.by_class()[1]["hd95"] == pytest.approx(1.0) and vox.distance_unit == "voxels"


def test_validation_uses_the_same_rule(fake_predictor):
    ds = _MemDataset(affine=True)
    cfg = {"img_size": 16, "batch_size": 2, "amp": False, "protocol": "strict"}
    val = validate(fake_predictor, ds, "test", ["c0", "c1"], cfg, "cpu")
    assert val["val_dice"] == pytest.approx(0.5) and val["val_hd95"] == math.inf
    val = validate(fake_predictor, ds, "test", ["c1"], cfg, "cpu")
    assert val["val_dice"] == pytest.approx(1.0)  # kidney and spleen not scored in c1
    cfg["protocol"] = "transunet"
    val = validate(fake_predictor, ds, "test", ["c0", "c1"], cfg, "cpu")
    assert val["val_dice"] == pytest.approx(1 / 3)


def test_unscored_validation_never_wins_but_best_pt_exists(tiny_cfg):
    """val_dice NaN (no class scored) never beats a real score; the first validation
    still writes best.pt so the run keeps a model to test."""
    from unetzoo.engine import trainer

    scores = iter([math.nan, 0.4, math.nan])
    hooks = trainer.TrainHooks(
        validate=lambda *a, **k: {"val_dice": next(scores), "val_hd95": math.nan})
    summary = trainer.train(tiny_cfg(max_epochs=3), hooks=hooks)
    assert summary["best_epoch"] == 2 and summary["best_metric"] == 0.4
    run = Path(summary["run_dir"])
    from unetzoo.engine.checkpoint import read_checkpoint

    assert read_checkpoint(run / "checkpoints" / "best.pt").epoch == 2

    scores = iter([math.nan, math.nan])
    summary = trainer.train(tiny_cfg(max_epochs=2, output=str(run.parent / "nan-run")),
                            hooks=hooks)
    assert summary["best_epoch"] == 1  # the first validated model, not a "better" NaN
    assert (Path(summary["run_dir"]) / "checkpoints" / "best.pt").is_file()


def test_demo_legend_mean_leaves_unscored_classes_out(tmp_path):
    """The demo's mean Dice line follows the same rule (minimal edit in webapp.py)."""
    from unetzoo.deploy.webapp import Segmentation, legend_html

    lab = _labels()["c0"][:1]
    seg = Segmentation(
        display=np.zeros(lab.shape, np.uint8), labels=lab, class_names=list(NAMES),
        spacing=(1.0, 1.0, 1.0), is_volume=False, download=tmp_path / "x.png", gt=lab,
        metrics={1: {"dice": 1.0, "hd95": 0.0}, 2: {"dice": 0.5, "hd95": 2.0},
                 3: {"dice": math.nan, "hd95": math.nan}},
    )
    assert "mean Dice over the 2 scored class(es): 0.750" in legend_html(seg, 0)


def test_one_scoring_for_cases_csv_cases_json_and_the_summary(fake_predictor, tmp_path,
                                                              monkeypatch):
    """The report's rows and cases.json come from one score_case call per case."""
    from unetzoo.metrics import score_case

    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs.get("ignore_label"))
        return score_case(*args, **kwargs)

    monkeypatch.setattr(evaluation, "score_case", counting)
    summary = run_test(_checkpoint(), dataset=_MemDataset(affine=True), out_dir=tmp_path / "r",
                       overlays=0, device="cpu", verbose=False, case_json=True,
                       model=fake_predictor)
    assert len(calls) == 2  # one per case, not one for the report and one for the JSON
    cases = json.loads((tmp_path / "r" / "cases.json").read_text())
    rows = {(r["case"], r["class_index"]): r
            for r in csv.DictReader((tmp_path / "r" / "cases.csv").open())}
    for (cid, k), row in rows.items():
        rec = cases["metric_per_case"][cid]["classes"][k]
        for m in ("dice", "hd95"):
            want = math.nan if rec[m] is None else float(rec[m])
            assert float(row[m]) == pytest.approx(want, nan_ok=True)
    assert cases["foreground_mean"]["dice"] == pytest.approx(summary["mean_dice"])
    assert list(rows[("c0", "1")]) == ["case", "class_index", "class_name", "dice", "hd95"]


def test_validate_reads_a_config_object_as_a_dict(fake_predictor):
    """The trainer passes its typed config; the same numbers as with a plain dict."""
    from types import SimpleNamespace

    ds = _MemDataset(affine=True)
    cfg = {"img_size": 16, "batch_size": 2, "amp": False, "protocol": "strict"}
    as_dict = validate(fake_predictor, ds, "test", ["c0", "c1"], cfg, "cpu")
    as_obj = validate(fake_predictor, ds, "test", ["c0", "c1"],
                      SimpleNamespace(**cfg), "cpu")
    assert as_obj == as_dict and as_dict["val_dice"] == pytest.approx(0.5)


@pytest.mark.parametrize("over, needle", [
    ({"img_size": 3}, "img_size"),
    ({"class_names": []}, "class_names"),
    ({"model": {"options": {}}}, "model name"),
])
def test_run_test_reads_the_checkpoint_through_the_spec(tmp_path, over, needle):
    """A damaged checkpoint is one line from InferenceSpec, before any case is read."""
    from unetzoo.engine.checkpoint import write_checkpoint
    from unetzoo.errors import CheckpointError

    path = write_checkpoint(_checkpoint(), tmp_path / "c.pt")
    data = torch.load(path, weights_only=True)
    torch.save({**data, "spec": {**data["spec"], **over}}, path)
    with pytest.raises(CheckpointError, match=needle) as exc:
        run_test(path, dataset=_MemDataset(affine=True),
                 out_dir=tmp_path / "r", overlays=0, device="cpu", verbose=False)
    assert "\n" not in str(exc.value) and not (tmp_path / "r").exists()


def test_ensemble_members_must_share_the_spec(tmp_path):
    from unetzoo.engine.checkpoint import write_checkpoint
    from unetzoo.errors import CheckpointError

    a, b = tmp_path / "f0.pt", tmp_path / "f1.pt"
    write_checkpoint(_checkpoint(), a)
    write_checkpoint(_checkpoint(preprocessing={"kind": "zscore"}), b)
    with pytest.raises(CheckpointError, match="preprocessing differs"):
        run_test([a, b], dataset=_MemDataset(affine=True), out_dir=tmp_path / "r",
                 overlays=0, device="cpu", verbose=False)


def test_validation_never_averages_mm_with_voxels(fake_predictor):
    """A case without a known spacing among cases with one: one line, not a mean of HD95
    in mm and in voxels (the test report's rule)."""
    from unetzoo.errors import DataError

    ds = _MemDataset(affine=True)
    known = ds.load_case

    def load_case(cid, split):
        case = known(cid, split)
        case.affine = None if cid == "c1" else case.affine
        return case

    ds.load_case = load_case
    cfg = {"img_size": 16, "batch_size": 2, "amp": False, "protocol": "strict"}
    with pytest.raises(DataError, match="validation case 'c1' has no known voxel spacing.*"
                       "cannot be averaged"):
        validate(torch.nn.Conv2d(1, 4, 1), ds, "test", ["c0", "c1"], cfg, "cpu")
    cfg["protocol"] = "transunet"  # voxels throughout
    assert validate(torch.nn.Conv2d(1, 4, 1), ds, "test", ["c0", "c1"], cfg, "cpu")
