"""bench_defaults.py: NIfTIs written on the reference grid, nnU-Net's evaluator, the table,
and the tiny run of all three sides (skipped without nnunetv2, which CI does not install)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import bench_defaults as bench


def _nifti(path, arr, affine):
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(arr.astype(np.uint8), affine), str(path))


def test_save_like_writes_file_order_with_the_reference_geometry(tmp_path):
    nib = pytest.importorskip("nibabel")
    affine = np.diag([0.8, 0.9, 2.5, 1.0])
    affine[:3, 3] = (-10, 4, 7)
    ref = np.random.default_rng(0).integers(0, 3, size=(5, 6, 3))
    _nifti(tmp_path / "ref.nii.gz", ref, affine)
    axes = (2, 1, 0)  # the reader's (D, H, W) = file (k, j, i)
    bench.save_like(np.transpose(ref, axes), axes, tmp_path / "ref.nii.gz",
                    tmp_path / "pred.nii.gz")
    out = nib.load(str(tmp_path / "pred.nii.gz"))
    assert np.array_equal(np.asarray(out.dataobj), ref)
    assert np.allclose(out.affine, affine)
    with pytest.raises(ValueError, match="prediction"):
        bench.save_like(ref, axes, tmp_path / "ref.nii.gz", tmp_path / "bad.nii.gz")


def test_nnunet_evaluator_scores_the_saved_folder(tmp_path):
    pytest.importorskip("nnunetv2")
    root = tmp_path / "Dataset999_Toy"
    (root / "labelsTs").mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2}}))
    pred = tmp_path / "pred"
    pred.mkdir()
    ref = np.zeros((8, 8, 2), np.uint8)
    ref[:4, :, :] = 1
    ref[4:6, :, :] = 2
    guess = ref.copy()
    guess[:2, :, :] = 0  # class 1: 32 of 64 voxels found -> Dice 2*32/(64+32) = 2/3
    for case, p in (("c1", ref), ("c2", guess)):
        _nifti(root / "labelsTs" / f"{case}.nii.gz", ref, np.eye(4))
        _nifti(pred / f"{case}.nii.gz", p, np.eye(4))
    score = bench.nnunet_score(root, pred)
    assert score["cases"] == 2
    assert score["per_class"]["1"] == pytest.approx((1 + 2 / 3) / 2, abs=1e-4)
    assert score["per_class"]["2"] == pytest.approx(1.0)
    assert score["mean_dice"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2, abs=1e-4)
    (pred / "c2.nii.gz").unlink()  # a side that lost a case is refused, not scored on less
    with pytest.raises(AssertionError):
        bench.nnunet_score(root, pred)


def test_summary_mean_sd_and_gap_to_the_best_peer():
    runs = [{"dataset": "d", "budget": 200, "side": s, "seed": i, "mean_dice": v}
            for s, vals in (("nnunet", (0.5, 0.7)), ("smp", (0.4, 0.4)),
                            ("unetzoo", (0.55, 0.65, 0.6)))
            for i, v in enumerate(vals)]
    rows = {r["side"]: r for r in bench.summary_rows(runs)}
    assert [r["side"] for r in bench.summary_rows(runs)] == ["unetzoo", "smp", "nnunet"]
    assert rows["nnunet"]["mean_dice"] == pytest.approx(0.6)
    assert rows["nnunet"]["sd"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert rows["unetzoo"]["seeds"] == 3
    assert rows["unetzoo"]["vs_best_peer"] == pytest.approx(0.0)  # 0.6 vs nnU-Net's 0.6
    assert rows["smp"]["vs_best_peer"] == ""
    assert "0.600 +- 0.141" in bench.table_text(bench.summary_rows(runs))


@pytest.mark.slow
def test_tiny_run_of_the_three_sides_scores_each_sides_niftis(tmp_path, capsys):
    for mod in ("nnunetv2", "segmentation_models_pytorch", "nilearn"):
        pytest.importorskip(mod)
    out = tmp_path / "defaults.json"
    result = bench.main(["--tiny", "--datasets", "mni_dk", "--data-dir", str(tmp_path / "data"),
                         "--json", str(out)])
    assert "| mni_dk |" in capsys.readouterr().out
    runs = {r["side"]: r for r in result["runs"]}
    assert set(runs) == {"unetzoo", "smp", "nnunet"}
    assert runs["nnunet"]["fold"] == "all" and runs["nnunet"]["iterations"] == 2
    assert runs["smp"]["iterations"] == 2
    for r in runs.values():
        assert 0.0 <= r["mean_dice"] <= 1.0 and r["cases"] >= 1 and r["per_class"]
    assert [r["side"] for r in json.loads(out.read_text())["runs"]] == list(bench.SIDES)
