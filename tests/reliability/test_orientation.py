"""Orientation from the affine (issue 26 item 2): a model trained on axial slices gives
the same labels for the same anatomy stored in any voxel order, and the label map stays
on the input's grid.

The volume is the real ICBM152 T1 of the nilearn wheel (1 mm isotropic, RAS+), taken
every 6th voxel (33 x 39 x 33, the whole head), stored in all 6 axis permutations x 8
flips with the affine permuted to match. The model is a fixed 3 x 3 convolution (an
edge detector along rows plus a weaker one along columns), so the labels change when
the slices are cut along another axis, transposed or flipped in-plane.
"""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from unetzoo.data.geometry import (
    Reorientation,
    file_to_array_affine,
    orientation_codes,
    reorientation,
)
from unetzoo.engine.predict_cases import predict_cases
from unetzoo.engine.spec import InferenceSpec
from unetzoo.engine.training_inputs import training_orientation

STRIDE = 6
PERMS = list(itertools.permutations(range(3)))
FLIPS = list(itertools.product((False, True), repeat=3))


class EdgeNet(nn.Module):
    """Two classes: 1 where the row gradient (plus half the column gradient) is positive.
    Weights fixed by the test; no training, no download."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        k = torch.zeros(2, 1, 3, 3)
        k[1, 0] = torch.tensor([[-1.0, -1.5, -1.0], [0.0, 0.0, 0.0], [1.0, 1.5, 1.0]])
        k[1, 0] += 0.5 * torch.tensor([[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]])
        with torch.no_grad():
            self.conv.weight.copy_(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


@pytest.fixture(scope="module")
def t1():
    """The ICBM152 T1 (RAS+), every 6th voxel, and its affine."""
    pytest.importorskip("nilearn")
    from unetzoo.data.realdata import T1_FILE, _icbm

    arr, aff = _icbm(T1_FILE)
    small = np.ascontiguousarray(np.asarray(arr, dtype=np.float32)[::STRIDE, ::STRIDE, ::STRIDE])
    scaled = aff.copy()
    scaled[:3, :3] = aff[:3, :3] * STRIDE
    return small, scaled


def variant(arr: np.ndarray, aff: np.ndarray, perm, flips) -> tuple[np.ndarray, np.ndarray]:
    """The same anatomy in another voxel order: axes permuted, then flipped, the affine
    changed to match (every voxel keeps its world position)."""
    out = np.transpose(arr, perm)
    new = aff.copy()
    new[:, :3] = aff[:, list(perm)]
    for ax, flip in enumerate(flips):
        if flip:
            out = np.flip(out, ax)
            new[:3, 3] += (out.shape[ax] - 1) * new[:3, ax]
            new[:3, ax] *= -1
    return np.ascontiguousarray(out), new


def back(labels: np.ndarray, perm, flips) -> np.ndarray:
    """Undo :func:`variant` on a label map."""
    axes = tuple(ax for ax, f in enumerate(flips) if f)
    out = np.flip(labels, axes) if axes else labels
    return np.transpose(out, np.argsort(perm))


def spec(orientation: str | None) -> InferenceSpec:
    return InferenceSpec.from_dict({
        "model": {"name": "edge", "options": {}}, "class_names": ["background", "edge"],
        "in_channels": 1, "img_size": 32, "preprocessing": {"kind": "zscore"},
        "orientation": orientation,
    })


def agreement(tmp_path, t1, orientation: str | None) -> dict[tuple, float]:
    """Voxel agreement of every variant's labels (mapped back) with the reference's."""
    arr, aff = t1
    inputs = tmp_path / f"in_{orientation}"
    inputs.mkdir()
    for n, (perm, flips) in enumerate(itertools.product(PERMS, FLIPS)):
        v, a = variant(arr, aff, perm, flips)
        nib.save(nib.Nifti1Image(v, a), str(inputs / f"v{n:02d}.nii.gz"))
    out = tmp_path / f"out_{orientation}"
    predict_cases([inputs], EdgeNet().eval(), spec(orientation), out, overlays=0, verbose=False)
    ref = None
    agree = {}
    for n, (perm, flips) in enumerate(itertools.product(PERMS, FLIPS)):
        img = nib.load(str(out / f"v{n:02d}.nii.gz"))
        v, a = variant(arr, aff, perm, flips)
        assert img.shape == v.shape and np.allclose(img.affine, a)  # the input's grid
        labels = back(np.asarray(img.dataobj), perm, flips)
        ref = labels if ref is None else ref  # n = 0 is the file as stored (RAS)
        agree[(perm, flips)] = float((labels == ref).mean())
    return agree


def test_training_orientation_is_read_from_the_affine(t1):
    arr, aff = t1
    # the reader's arrays of a RAS file are (k, j, i): axial slices, rows A, columns R
    dhw = file_to_array_affine(aff, (2, 1, 0))
    assert orientation_codes(dhw) == "SAR"

    class Reader:
        def case_affine(self, cid, split):
            return dhw if cid != "odd" else file_to_array_affine(aff, (0, 1, 2))

    assert training_orientation(Reader(), ["a", "b"]) == "SAR"
    assert training_orientation(Reader(), ["a", "b", "odd"]) == "SAR"  # the most common
    assert training_orientation(object(), ["a"]) is None  # no affines: nothing recorded


def test_reorientation_round_trips_exactly():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 9, size=(2, 3, 4, 5))
    for perm, flips in itertools.product(PERMS, FLIPS):
        view = Reorientation(perm, flips)
        assert np.array_equal(view.back(view.forward(x), lead=1), x)
        assert np.array_equal(view.back(view.forward(x[0], lead=0)), x[0])


def test_reorientation_matches_the_training_axes(t1):
    arr, aff = t1
    for perm, flips in itertools.product(PERMS, FLIPS):
        v, a = variant(arr, aff, perm, flips)
        # the pipeline's (D, H, W) of this file (tie -> k) and its affine
        dhw_aff = file_to_array_affine(a, (2, 1, 0))
        view = reorientation(dhw_aff, "SAR")
        assert view is not None
        seen = view.forward(np.transpose(v, (2, 1, 0))[None])[0]
        assert np.array_equal(seen, np.transpose(arr, (2, 1, 0)))  # what training saw


def test_same_labels_in_every_voxel_order(tmp_path, t1):
    """48 voxel orders of one real T1: 100 % voxel agreement with the orientation stored;
    without it (older checkpoints) the file's axis order decides, and most orders differ."""
    after = agreement(tmp_path, t1, "SAR")
    before = agreement(tmp_path, t1, None)
    print(f"\nvoxel agreement over {len(after)} orders: before min {min(before.values()):.3f} "
          f"mean {np.mean(list(before.values())):.3f}; after min {min(after.values()):.3f} "
          f"mean {np.mean(list(after.values())):.3f}")
    assert min(after.values()) == 1.0
    # the old rule really was wrong for most orders (the test can fail)
    assert sum(v < 0.99 for v in before.values()) >= len(before) // 2


def test_old_checkpoint_keeps_the_file_slicing(tmp_path, t1):
    """A spec without ``orientation`` slices as before: the file's own rule."""
    from unetzoo.data.imageio import decode
    from unetzoo.engine.inputs import model_input
    from unetzoo.engine.predict_cases import predict_array

    arr, aff = t1
    v, a = variant(arr, aff, (1, 2, 0), (True, False, False))
    nib.save(nib.Nifti1Image(v, a), str(tmp_path / "p.nii.gz"))
    old = spec(None)
    assert "orientation" in old.to_dict() and InferenceSpec.from_dict(
        {k: w for k, w in old.to_dict().items() if k != "orientation"}).orientation is None
    predict_cases([tmp_path / "p.nii.gz"], EdgeNet().eval(), old, tmp_path / "o",
                  overlays=0, verbose=False)
    dec = decode(tmp_path / "p.nii.gz")
    want = predict_array(EdgeNet().eval(), model_input(dec, 1, {"kind": "zscore"}), 32, "cpu")
    got = np.asarray(nib.load(str(tmp_path / "o" / "p.nii.gz")).dataobj)
    assert np.array_equal(np.transpose(got, dec.order), want)


def test_test_scores_the_same_anatomy_the_same_in_any_voxel_order(tmp_path, t1, monkeypatch):
    """``unetzoo test`` on the T1 stored as RAS and as (j, k, i) with flips: the same
    Dice once the spec names the orientation (the label is an edge map of the T1)."""
    import json

    from unetzoo.data.nnunet import NnUNetDataset
    from unetzoo.engine import evaluation
    from unetzoo.engine.checkpoint import Checkpoint

    monkeypatch.setenv("UNETZOO_CACHE", str(tmp_path / "cache"))
    arr, aff = t1
    label = (np.gradient(arr, axis=1) > 1.0).astype(np.uint8)  # a fixed, asymmetric target

    def dice(perm, flips, orientation):
        root = tmp_path / f"d{perm}{flips}{orientation}"
        for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (root / d).mkdir(parents=True)
        v, a = variant(arr, aff, perm, flips)
        lab, _ = variant(label, aff, perm, flips)
        for split, tag in (("Tr", "c0"), ("Ts", "c1")):
            nib.save(nib.Nifti1Image(v, a), str(root / f"images{split}" / f"{tag}_0000.nii.gz"))
            nib.save(nib.Nifti1Image(lab, a), str(root / f"labels{split}" / f"{tag}.nii.gz"))
        (root / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "T1"}, "labels": {"background": 0, "edge": 1},
            "numTraining": 1, "file_ending": ".nii.gz"}))
        ckpt = Checkpoint(spec=spec(orientation), weights={})  # the model is given
        out = evaluation.run_test(ckpt, dataset=NnUNetDataset(root), out_dir=root / "r",
                                  overlays=0, verbose=False, backend="torch", device="cpu",
                                  postprocessing=None, model=EdgeNet().eval())
        return out["mean_dice"]

    ref = dice((0, 1, 2), (False, False, False), "SAR")
    other = ((1, 2, 0), (True, False, True))
    assert dice(*other, "SAR") == pytest.approx(ref, abs=1e-6)
    assert abs(dice(*other, None) - ref) > 0.01  # before: the file's axis order decided
