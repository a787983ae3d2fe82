"""NSD in the report: ``score_case`` with ``metrics=(..., "nsd")`` and ``unetzoo test --metrics``."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from unetzoo.cli.main import main
from unetzoo.metrics import Reference, ScoringRules, score_case
from unetzoo.metrics.nsd import nsd


def _maps() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    gt = np.zeros((6, 24, 24), dtype=np.int64)
    gt[1:5, 3:15, 4:16] = 1
    gt[2:5, 15:22, 12:20] = 2
    pred = gt.copy()
    pred[gt == 1] = 0
    pred[1:5, 7:19, 4:11] = 1  # shifted and shrunk: some boundary beyond 2 voxels
    pred[rng.random(pred.shape) < 0.02] = 2  # scattered false positives of class 2
    # class 3 only in the reference (one empty -> 0), class 4 in neither (NaN)
    gt[0, 0:3, 0:3] = 3
    return pred, gt


@pytest.mark.parametrize("spacing", [None, (2.5, 0.8, 0.8)])
@pytest.mark.parametrize("tolerance", [1.0, 2.0])
def test_score_case_nsd_matches_nsd(spacing, tolerance):
    pred, gt = _maps()

    def score(metrics):
        rules = ScoringRules(5, metrics=metrics, nsd_tolerance=tolerance, workers=1)
        return score_case(pred, Reference(gt, spacing), rules).by_class()

    res = score(("dice", "hd95", "nsd"))
    for c in (1, 2, 3, 4):
        want = nsd(pred == c, gt == c, tolerance, spacing)
        got = res[c]["nsd"]
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-12)
    assert 0.0 < res[1]["nsd"] < 1.0 and 0.0 < res[2]["nsd"] < 1.0
    assert res[3]["nsd"] == 0.0 and math.isnan(res[4]["nsd"])
    # NSD only, without HD95, is the same value (distances computed for it alone)
    alone = score(("nsd",))
    assert alone[1]["nsd"] == res[1]["nsd"]


def test_bad_tolerance_is_config_error():
    from unetzoo.errors import ConfigError

    with pytest.raises(ConfigError, match="tolerance"):
        ScoringRules(5, metrics=("nsd",), nsd_tolerance=-1.0)


TINY = ["--dataset-option", "n_train=2", "--dataset-option", "n_test=1",
        "--dataset-option", "shape=[4, 32, 32]"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from unetzoo.data.phantom import generate_phantom

    base = tmp_path_factory.mktemp("nsd")
    root = generate_phantom(base / "ct", n_train=2, n_test=1, shape=(4, 32, 32), seed=0)
    out = base / "run"
    assert main(["train", "--dataset", "phantom", "--data-root", str(root), *TINY,
                 "--model", "unet", "--model-option", "base_channels=4", "--img-size", "32",
                 "--batch-size", "2", "--max-epochs", "1", "--output", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    return out, root


def test_cli_metrics_nsd_column(trained, tmp_path):
    run, root = trained
    rep = tmp_path / "rep"
    code = main(["test", "--checkpoint", str(run / "checkpoints" / "best.pt"),
                 "--dataset", "phantom", "--data-root", str(root),
                 "--metrics", "dice,hd95,nsd", "--nsd-tolerance", "2", "--overlays", "0",
                 "--backend", "torch", "--device", "cpu", "--output", str(rep)])
    assert code == 0
    with (rep / "cases.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and list(rows[0]) == ["case", "class_index", "class_name", "dice", "hd95", "nsd"]
    vals = [float(r["nsd"]) for r in rows]
    assert all(math.isnan(v) or 0.0 <= v <= 1.0 for v in vals)
    summary = json.loads((rep / "summary.json").read_text())
    assert "mean_nsd" in summary and summary["nsd_tolerance"] == 2.0
    assert summary["metrics"] == ["dice", "hd95", "nsd"]
    first = next(iter(summary["per_class"].values()))
    assert "nsd" in first and "n_nsd" in first
    table = (rep / "summary.md").read_text()
    assert "NSD (%)" in table and "tolerance 2" in table
    # default: no NSD column
    rep2 = tmp_path / "rep2"
    assert main(["test", "--checkpoint", str(run / "checkpoints" / "best.pt"),
                 "--dataset", "phantom", "--data-root", str(root), "--overlays", "0",
                 "--backend", "torch", "--device", "cpu", "--output", str(rep2)]) == 0
    assert "NSD" not in (rep2 / "summary.md").read_text()
    assert "mean_nsd" not in json.loads((rep2 / "summary.json").read_text())


def test_cli_bad_metric_name_one_line(trained, tmp_path, capsys):
    run, root = trained
    code = main(["test", "--checkpoint", str(run / "checkpoints" / "best.pt"),
                 "--dataset", "phantom", "--data-root", str(root),
                 "--metrics", "dice,nsdd", "--output", str(tmp_path / "bad")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nsdd" in err[0] and "nsd" in err[0] and "hd95" in err[0]
    assert "Traceback" not in err[0]
