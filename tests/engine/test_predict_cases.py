"""nnU-Net-style case prediction (unetzoo.engine.predict_cases): folders, channel files,
NRRD / MetaImage / DICOM, CASE<ending> outputs, probabilities, ensembles, post-processing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from unetzoo import create_model
from unetzoo.data import imageio
from unetzoo.engine.ensemble import EnsembleModel
from unetzoo.engine.postprocess import STEP_KIND, apply_postprocessing, empty_plan
from unetzoo.engine.predict_cases import predict_cases
from unetzoo.errors import DataError

sitk = pytest.importorskip("SimpleITK")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from _medical_writers import write_dicom_series  # noqa: E402

CLASSES = ["background", "a", "b"]
SHAPE = (13, 11, 3)  # (i, j, k); k is through-plane (largest spacing)


def _model(seed: int, in_channels: int = 2):
    torch.manual_seed(seed)
    return create_model("unet", in_channels=in_channels, num_classes=3, base_channels=4).eval()


def _meta(in_channels: int = 2) -> dict:
    return {"img_size": 16, "in_channels": in_channels, "class_names": CLASSES,
            "preprocessing": {"kind": "none"}}


def _itk(arr: np.ndarray):
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.T))
    img.SetSpacing((0.9, 1.1, 3.0))
    img.SetOrigin((4.0, -7.0, 20.0))
    img.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return img


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "imagesTs"
    d.mkdir()
    for case, end in (("liver_001", ".nii.gz"), ("liver_002", ".nrrd")):
        for ch in range(2):
            vol = rng.normal(size=SHAPE).astype(np.float32)
            sitk.WriteImage(_itk(vol), str(d / f"{case}_{ch:04d}{end}"))
    return d


def _reference_labels(model, files) -> np.ndarray:
    """Slice-wise prediction done by hand, in the file's (i, j, k) order."""
    from unetzoo.engine.inference import predict_volume

    arr = np.stack([imageio.read_file(f)[0] for f in files], axis=-1)  # (i, j, k, C)
    vol = np.moveaxis(np.transpose(arr, (2, 1, 0, 3)), -1, 0)  # (C, k, j, i)
    labels = predict_volume(model, vol, 16)
    return np.transpose(labels, (2, 1, 0))


def test_folder_of_channel_files_gives_one_map_per_case(folder, tmp_path):
    model = _model(0)
    recs = predict_cases([folder], model, _meta(), tmp_path / "out", overlays=1,
                         verbose=False)
    assert [r["case"] for r in recs] == ["liver_001", "liver_002"]
    for rec, end in zip(recs, (".nii.gz", ".nrrd")):
        out = tmp_path / "out" / f"{rec['case']}{end}"
        assert rec["output"] == str(out) and len(rec["inputs"]) == 2
        labels, aff, _ = imageio.read_file(out)
        ref_img = sitk.ReadImage(rec["inputs"][0])
        got = sitk.ReadImage(str(out))
        assert got.GetSize() == ref_img.GetSize()
        np.testing.assert_allclose(got.GetOrigin(), ref_img.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(got.GetDirection(), ref_img.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(got.GetSpacing(), ref_img.GetSpacing(), atol=1e-6)
        files = sorted(folder.glob(f"{rec['case']}_*"))
        np.testing.assert_array_equal(labels, _reference_labels(model, files))
        assert rec["overlays"]


def test_probabilities_in_nnunet_layout_and_ensemble(folder, tmp_path):
    members = [_model(0), _model(1)]
    ens = EnsembleModel(members).eval()
    recs = predict_cases([folder], ens, _meta(), tmp_path / "out", overlays=0,
                         verbose=False, save_probabilities=True)
    rec = recs[0]
    with np.load(rec["probabilities"], allow_pickle=False) as z:
        probs, names = z["probabilities"], list(z["class_names"])
    assert names == CLASSES
    assert probs.shape == (3, *SHAPE[::-1])  # (K, z, y, x)
    labels, _, _ = imageio.read_file(rec["output"])
    np.testing.assert_array_equal(probs.argmax(0).T, labels)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    # The ensemble's probabilities are the mean of its members'.
    singles = []
    for i, m in enumerate(members):
        r = predict_cases([folder], m, _meta(), tmp_path / f"m{i}", overlays=0,
                          verbose=False, save_probabilities=True)[0]
        with np.load(r["probabilities"]) as z:
            singles.append(z["probabilities"])
    np.testing.assert_allclose(probs, (singles[0] + singles[1]) / 2, atol=1e-5)


def test_postprocessing_plan_is_applied(folder, tmp_path):
    model = _model(2)
    plain = predict_cases([folder], model, _meta(), tmp_path / "a", overlays=0, verbose=False)
    plan = empty_plan(3)
    plan["steps"] = [{"kind": STEP_KIND, "classes": [1]}, {"kind": STEP_KIND, "classes": [2]}]
    post = predict_cases([folder], model, _meta(), tmp_path / "b", overlays=0,
                         verbose=False, postprocessing=plan)
    for a, b in zip(plain, post):
        la = imageio.read_file(a["output"])[0]
        lb = imageio.read_file(b["output"])[0]
        np.testing.assert_array_equal(lb, apply_postprocessing(la, plan))


def test_dicom_series_and_2d_metaimage(tmp_path):
    rng = np.random.default_rng(1)
    img = _itk(rng.integers(-100, 100, size=SHAPE).astype(np.int16))
    write_dicom_series(img, tmp_path / "in" / "patient7")
    flat = sitk.GetImageFromArray(rng.normal(size=(9, 14)).astype(np.float32))
    flat.SetSpacing((0.5, 0.6))
    sitk.WriteImage(flat, str(tmp_path / "in" / "slice.mha"))
    recs = predict_cases([tmp_path / "in"], _model(0, 1), _meta(1), tmp_path / "out",
                         overlays=0, verbose=False)
    by_case = {r["case"]: r for r in recs}
    assert by_case["patient7"]["output"].endswith("patient7.nii.gz")
    got = sitk.ReadImage(by_case["patient7"]["output"])
    assert got.GetSize() == SHAPE
    np.testing.assert_allclose(got.GetOrigin(), img.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(got.GetDirection(), img.GetDirection(), atol=1e-6)
    two_d = sitk.ReadImage(by_case["slice"]["output"])
    assert by_case["slice"]["output"].endswith("slice.mha")
    assert two_d.GetSize() == (14, 9) and two_d.GetSpacing() == (0.5, 0.6)


def test_missing_channel_and_bad_inputs_are_one_line(folder, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    (one / "x_0000.nrrd").write_bytes((folder / "liver_002_0000.nrrd").read_bytes())
    with pytest.raises(DataError, match=r"1 channel\(s\).*x_0000 \.\.\. x_0001"):
        predict_cases([one], _model(0), _meta(), tmp_path / "out", verbose=False)
    (one / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported input type"):
        predict_cases([one / "notes.txt"], _model(0), _meta(), tmp_path / "out", verbose=False)
    nan = tmp_path / "nan"
    nan.mkdir()
    vol = np.zeros(SHAPE, np.float32)
    vol[1, 1, 1] = np.nan
    sitk.WriteImage(_itk(vol), str(nan / "n.mha"))
    with pytest.raises(DataError, match="NaN or Inf"):
        predict_cases([nan], _model(0, 1), _meta(1), tmp_path / "out", verbose=False)


def test_pictures_keep_their_seg_naming(tmp_path):
    from PIL import Image

    Image.fromarray((np.arange(20 * 24) % 255).astype(np.uint8).reshape(20, 24)).save(
        tmp_path / "pic.png")
    rec = predict_cases([tmp_path / "pic.png"], _model(0, 1), _meta(1), tmp_path / "out",
                        overlays=0, verbose=False, save_probabilities=True)[0]
    assert rec["output"].endswith("pic_seg.png")
    assert np.asarray(Image.open(rec["output"])).shape == (20, 24)
    with np.load(rec["probabilities"]) as z:
        assert z["probabilities"].shape == (3, 20, 24)


def test_an_output_never_overwrites_its_input(tmp_path):
    src = tmp_path / "scan.mha"
    sitk.WriteImage(_itk(np.zeros(SHAPE, np.float32)), str(src))
    before = src.read_bytes()
    with pytest.raises(DataError, match="would overwrite its input"):
        predict_cases([src], _model(0, 1), _meta(1), tmp_path, verbose=False)
    assert src.read_bytes() == before


def test_headers_are_checked_before_any_prediction(folder, tmp_path):
    from unetzoo.engine.predict_cases import check_cases

    assert list(check_cases([folder])) == ["liver_001", "liver_002"]
    with pytest.raises(DataError, match="over predict's limit"):
        check_cases([folder], max_pixels=100)  # 13 x 11 slices
    with pytest.raises(DataError, match="over predict's limit"):
        predict_cases([folder], _model(0), _meta(), tmp_path / "o", verbose=False,
                      max_pixels=100)
    assert not (tmp_path / "o").exists()  # nothing written
