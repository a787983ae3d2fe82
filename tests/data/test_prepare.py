from __future__ import annotations

import numpy as np
import pytest
from _data_writers import write_nnunet

from unetzoo.cli.main import main
from unetzoo.data import get_dataset
from unetzoo.data.imageio import save_image
from unetzoo.data.prepare import BTCV_TO_SYNAPSE, SYNAPSE_TEST, SYNAPSE_TRAIN


def _fake_btcv(root, ids=(1, 5, 6), shape=(12, 10, 4)):
    """Tiny BTCV release: img/imgXXXX.nii.gz (HU), label/labelXXXX.nii.gz (0..13)."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    (root / "label").mkdir()
    vols = {}
    for i in ids:
        hu = rng.integers(-1000, 1000, shape).astype(np.int16)
        lab = rng.integers(0, 14, shape).astype(np.uint8)
        save_image(hu, np.diag([0.7, 0.7, 3.0, 1]), root / "img" / f"img{i:04d}.nii.gz")
        save_image(lab, np.diag([0.7, 0.7, 3.0, 1]), root / "label" / f"label{i:04d}.nii.gz")
        vols[i] = (hu, lab)
    return vols


def test_standard_split_and_mapping_constants():
    assert len(SYNAPSE_TRAIN) == 18 and len(SYNAPSE_TEST) == 12
    assert not set(SYNAPSE_TRAIN) & set(SYNAPSE_TEST)
    assert sorted(SYNAPSE_TRAIN + SYNAPSE_TEST) == sorted(set(SYNAPSE_TRAIN + SYNAPSE_TEST))
    # aorta, gallbladder, left kidney, right kidney, liver, pancreas, spleen, stomach
    assert [k for k, _ in sorted(BTCV_TO_SYNAPSE.items(), key=lambda kv: kv[1])] == [
        8, 4, 3, 2, 6, 11, 1, 7]


def test_prepare_synapse_on_fake_btcv(tmp_path, capsys):
    vols = _fake_btcv(tmp_path / "RawData" / "Training")
    out = tmp_path / "Synapse"
    rc = main(["prepare", "synapse", "--raw", str(tmp_path), "--output", str(out),
               "--train", "5 6", "--test", "1"])
    assert rc == 0
    assert (out / "train_npz" / "case0005_slice003.npz").is_file()
    assert (out / "test_vol_h5" / "case0001.npy.h5").is_file()
    assert (out / "lists" / "lists_Synapse" / "test_vol.txt").read_text() == "case0001\n"
    ds = get_dataset("synapse", out)
    assert ds.cases("train") == ["case0005", "case0006"] and len(ds.slice_dataset("train")) == 8
    hu, lab = vols[1]
    case = ds.load_case("case0001", "test")
    assert case.image.shape == (1, 4, 10, 12)  # (z, y, x) from NIfTI (x, y, z)
    expected = (np.clip(hu, -125, 275).astype(np.float32) + 125) / 400
    assert np.allclose(case.image[0], expected.transpose(2, 1, 0), atol=1e-6)
    want = np.zeros(14, np.int64)
    for src, dst in BTCV_TO_SYNAPSE.items():
        want[src] = dst
    assert np.array_equal(case.label, want[lab.transpose(2, 1, 0)])
    assert case.label.max() == 8 and (lab == 5).any()  # esophagus dropped to background
    tr = ds.load_case("case0006", "train")
    assert np.array_equal(tr.label, want[vols[6][1].transpose(2, 1, 0)])


def test_prepare_synapse_errors(tmp_path, capsys):
    _fake_btcv(tmp_path / "raw", ids=(5,))
    rc = main(["prepare", "synapse", "--raw", str(tmp_path / "raw"), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "img0006.nii.gz" in err and "--train" in err
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "x").write_text("keep")
    rc = main(["prepare", "synapse", "--raw", str(tmp_path / "raw"), "--output",
               str(tmp_path / "o2"), "--train", "5", "--test", ""])
    assert rc == 2 and "not empty" in capsys.readouterr().err
    rc = main(["prepare", "synapse", "--raw", str(tmp_path), "--output", str(tmp_path / "o3")])
    assert rc == 2 and "no img/ and label/" in capsys.readouterr().err


def test_prepare_nnunet_builds_cache(tmp_path, capsys):
    root = write_nnunet(tmp_path / "D")
    assert main(["prepare", "nnunet", str(root), "--cache-dir", str(tmp_path / "c")]) == 0
    assert len(list((tmp_path / "c").rglob("*.img.npy"))) == 3  # 2 train + 1 test
    ds = get_dataset("nnunet", root, cache_dir=tmp_path / "c")
    assert ds.cache_dir.parent == tmp_path / "c"


def test_prepare_phantom(tmp_path, capsys):
    assert main(["prepare", "phantom", "--output", str(tmp_path / "p"), "--n-train", "1",
                 "--n-test", "0", "--shape", "4", "16", "16"]) == 0
    assert (tmp_path / "p" / "dataset.json").is_file()
    with pytest.raises(SystemExit):
        main(["prepare", "synapse"])  # --raw and --output are required
