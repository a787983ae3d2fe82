"""The fingerprint and the planner (unetzoo.data.fingerprint, unetzoo.data.plan)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from unetzoo.data.fingerprint import CaseShape, ChannelStats, Fingerprint, fingerprint_dataset
from unetzoo.data.plan import (
    MAX_PATCH,
    MIN_BATCH,
    PIXEL_BUDGET,
    STRIDE,
    Plan,
    SlicePlan,
    crop_patch,
    make_plan,
    open_raw,
    resample_slice,
    with_overrides,
)
from unetzoo.data.preprocessing import check_spec, normalize
from unetzoo.errors import ConfigError, DataError

sys.path.insert(0, str(Path(__file__).parent))
from _data_writers import write_nnunet  # noqa: E402


def _stats(modality: str, mean=40.0, sd=20.0, lo=-100.0, hi=300.0) -> ChannelStats:
    return ChannelStats(modality, mean, sd, mean, lo, hi, lo - 50, hi + 50)


def _fp(channels, cases, name="toy", nonzero=1.0) -> Fingerprint:
    return Fingerprint(name, ("background", "a", "b"), tuple(channels),
                       tuple(CaseShape(f"c{i}", s, sp, nonzero) for i, (s, sp) in enumerate(cases)),
                       (0.9, 0.07, 0.03))


def test_ct_plan_median_spacing_patch_batch_and_normalisation():
    # three CT cases at 0.7 / 0.8 / 0.9 mm in-plane: the target is the median per axis
    cases = [((100, 512, 512), (2.5, 0.7, 0.7)), ((80, 512, 400), (5.0, 0.8, 0.9)),
             ((120, 512, 512), (3.0, 0.9, 0.8))]
    plan = make_plan(_fp([_stats("CT")], cases))
    assert plan.target_spacing == pytest.approx((0.8, 0.8))
    # resampled shapes: 448x448, 512x450, 576x512 -> median 512 x 450 -> side 512
    assert plan.median_shape == (512, 450)
    assert plan.patch_size == 512 and plan.patch_size % STRIDE == 0
    assert plan.batch_size == max(PIXEL_BUDGET // 512**2, MIN_BATCH) == 2
    assert plan.normalisation == {"kind": "ct_zscore", "clip": [-100.0, 300.0], "mean": 40.0,
                                  "std": 20.0}
    assert plan.model == "resnet34_unet" and plan.iterations == 1000
    assert plan.slice_plan == SlicePlan((0.8, 0.8), (512, 512))


def test_mri_plan_zscore_per_image_per_channel_and_patch_cap_and_dataset_cap():
    # two-channel MRI, 1 mm slices of 180 x 200 at 1.2 mm: resampled 216 x 240 -> 256;
    # a tiny dataset caps the batch at 5 % of its pixels (never below MIN_BATCH)
    cases = [((8, 180, 200), (1.0, 1.2, 1.2))] * 3
    plan = make_plan(_fp([_stats("T1"), _stats("FLAIR")], cases))
    assert plan.normalisation == {"kind": "channels", "channels": [
        {"kind": "zscore", "nonzero": False}, {"kind": "zscore", "nonzero": False}]}
    assert plan.target_spacing == pytest.approx((1.2, 1.2))
    assert plan.patch_size == 224  # 200 -> next multiple of 32
    pixels = 3 * 8 * 216 * 240  # nnU-Net: cases x the median resampled shape
    assert plan.batch_size == max(min(PIXEL_BUDGET // 224**2, round(0.05 * pixels / 224**2)),
                                  MIN_BATCH)
    # a large MRI dataset: the pixel budget decides
    big = make_plan(_fp([_stats("T2")], [((400, 180, 200), (1.0, 1.2, 1.2))] * 20))
    assert big.batch_size == PIXEL_BUDGET // 224**2 == 10
    # skull-stripped: the nonzero crop keeps half the data -> z-score over nonzero voxels
    stripped = make_plan(_fp([_stats("T1")], cases, nonzero=0.5))
    assert stripped.normalisation == {"kind": "zscore", "nonzero": True}
    assert make_plan(_fp([_stats("CT")], cases, nonzero=0.5)).normalisation["kind"] == "ct_zscore"
    # a huge slice: capped patch
    huge = make_plan(_fp([_stats("MRI")], [((10, 2000, 1500), (1.0, 0.5, 0.5))] * 2))
    assert huge.patch_size == MAX_PATCH


def test_iterations_from_a_budget():
    cases = [((50, 64, 64), (1.0, 1.0, 1.0))] * 4
    fp = _fp([_stats("CT")], cases)
    assert make_plan(fp, iterations=300).iterations == 300
    timed = make_plan(fp, time_budget=2.0, step_seconds=0.5)
    assert timed.iterations == 240 and "time-budget" in timed.iterations_rule
    assert make_plan(fp, iterations=100, time_budget=2.0, step_seconds=0.5).iterations == 100
    # 4 cases (< VALIDATION_MIN_CASES): none held out; epochs of 4 x 50 slices
    per_epoch = int(200 // timed.batch_size)
    assert timed.max_epochs == -(-240 // per_epoch)
    # the exact budget goes to the trainer; the epochs only bound it
    assert timed.config_values()["max_iterations"] == 240
    with pytest.raises(ConfigError, match="time-budget"):
        make_plan(fp, time_budget=-1.0, step_seconds=0.5)
    with pytest.raises(ConfigError, match="iterations"):
        make_plan(fp, iterations=0)


def test_validation_holdout_only_with_enough_cases():
    few = make_plan(_fp([_stats("MRI")], [((12, 64, 64), (1.0, 1.0, 1.0))] * 9))
    many = make_plan(_fp([_stats("MRI")], [((12, 64, 64), (1.0, 1.0, 1.0))] * 20))
    assert few.val_fraction == 0.0 and few.config_values()["val_fraction"] == 0.0
    assert "validation none (9 cases" in few.summary()
    assert many.val_fraction == pytest.approx(0.1)
    # --select best needs validation cases; an explicit --val-fraction wins
    assert with_overrides(few, {"select": "best"}).val_fraction == pytest.approx(0.1)
    assert with_overrides(many, {"val_fraction": 0.25}).val_fraction == 0.25
    # --max-epochs given: no iteration budget is passed on
    assert with_overrides(few, {"max_epochs": 3}).config_values()["max_iterations"] is None


def test_plan_json_round_trip(tmp_path):
    plan = make_plan(_fp([_stats("CT")], [((5, 40, 30), (3.0, 0.9, 0.8))] * 2))
    again = Plan.load(plan.save(tmp_path / "plans.json"))
    assert again == plan
    assert SlicePlan.from_dict(plan.slice_plan.to_dict()) == plan.slice_plan
    for bad in ({"target_spacing": [0, 1], "patch_size": [32, 32]},
                {"target_spacing": [1, 1], "patch_size": [32.5, 32]}, {"patch_size": [32, 32]}):
        with pytest.raises(DataError):
            SlicePlan.from_dict(bad)
    with pytest.raises(DataError, match="not a unetzoo plan"):
        Plan.from_dict({"dataset": "x"})


def test_ct_zscore_spec():
    spec = {"kind": "ct_zscore", "clip": [-100.0, 200.0], "mean": 50.0, "std": 25.0}
    x = np.array([-500.0, 50.0, 100.0, 900.0])
    np.testing.assert_allclose(normalize(x, spec), [-6.0, 0.0, 2.0, 6.0])
    for bad in ({**spec, "clip": [5, 5]}, {**spec, "std": 0}, {**spec, "mean": "x"}):
        with pytest.raises(DataError):
            check_spec(bad)


def test_fingerprint_of_a_raw_nnunet_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("UNETZOO_CACHE", str(tmp_path / "cache"))
    root = write_nnunet(tmp_path / "ds", n_train=3, shape=(9, 8, 4), zooms=(0.8, 0.9, 3.0))
    fp = fingerprint_dataset(open_raw(None, root))
    assert [c.shape for c in fp.cases] == [(4, 8, 9)] * 3  # (D, H, W): k, j, i
    assert fp.cases[0].spacing == pytest.approx((3.0, 0.9, 0.8))
    assert fp.modalities == ("CT",)
    assert [c.nonzero_share for c in fp.cases] == [1.0] * 3  # noise: nonzero everywhere
    # every foreground voxel is sampled (fewer than SAMPLES_PER_CASE): exact statistics
    import nibabel as nib

    fg = []
    counts = np.zeros(3)
    for i in range(3):
        img = nib.load(root / "imagesTr" / f"case_{i:03d}_0000.nii.gz").get_fdata()
        lab = nib.load(root / "labelsTr" / f"case_{i:03d}.nii.gz").get_fdata().astype(int)
        fg.append(img[lab > 0])
        counts += np.bincount(lab.ravel(), minlength=3)
    fg = np.concatenate(fg)
    ch = fp.channels[0]
    assert ch.mean == pytest.approx(fg.mean(), rel=1e-5)
    assert ch.sd == pytest.approx(fg.std(), rel=1e-5)
    assert ch.p99_5 == pytest.approx(np.percentile(fg, 99.5), rel=1e-5)
    assert fp.class_shares == pytest.approx(tuple(counts / counts.sum()))
    assert Fingerprint.from_dict(fp.to_dict()) == fp


def test_nonzero_share():
    from unetzoo.data.fingerprint import nonzero_share

    img = np.zeros((2, 4, 10, 10), np.float32)
    img[1, 1:3, 2:7, 0:5] = 1.0
    assert nonzero_share(img) == pytest.approx(2 * 5 * 5 / 400)
    assert nonzero_share(np.zeros((1, 2, 3, 3))) == 1.0


def test_resample_slice_and_patch_crop():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :30]
    label = (((yy - 20) / 12.0) ** 2 + ((xx - 15) / 9.0) ** 2 < 1).astype(np.int64)
    image = label[None].astype(np.float32)
    img, lab = resample_slice(image, label, (20, 15))
    assert img.shape == (1, 20, 15) and lab.shape == (20, 15)
    assert set(np.unique(lab)) == {0, 1}  # nearest: no new label values
    # smaller than the patch: padded; always-foreground sampling hits the structure
    for _ in range(5):
        pi, pl = crop_patch(img, lab, (32, 32), rng, foreground=1.0)
        assert pi.shape == (1, 32, 32) and pl.shape == (32, 32)
        assert pl.sum() == lab.sum()  # the whole slice fits: nothing cropped away
    small_lab = np.zeros((64, 64), np.int64)
    small_lab[60, 3] = 2
    for _ in range(5):
        _, pl = crop_patch(np.zeros((1, 64, 64), np.float32), small_lab, (16, 16), rng,
                           foreground=1.0)
        assert (pl == 2).any()


def test_time_budget_measures_the_planned_step(tmp_path, monkeypatch):
    from unetzoo.data.plan import measure_step_seconds, plan_dataset

    monkeypatch.setenv("UNETZOO_CACHE", str(tmp_path / "cache"))
    secs = measure_step_seconds("unet", 1, 3, 32, 2, options={"base_channels": 4})
    assert 0 < secs < 30
    root = write_nnunet(tmp_path / "ds", n_train=2, shape=(20, 18, 3))
    plan = plan_dataset(None, root, model="unet", time_budget=0.05,
                        model_options={"base_channels": 4})
    assert plan.step_seconds > 0
    assert plan.iterations == max(1, int(3.0 / plan.step_seconds))
    assert plan.iterations_rule.startswith("--time-budget")
