from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from unetzoo.data.base import SegDataset, SliceDataset
from unetzoo.data.transforms import (
    DriveAugment,
    NnUNetAugment,
    TransUNetAugment,
    build_eval_transform,
    build_train_transform,
    reseed,
    rotate_nearest,
    seed_worker,
)
from unetzoo.errors import ConfigError


def _blobs(size=64, seed=0):
    """An image of a few bright discs and a label derived from it by thresholding."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.zeros((size, size), np.float32)
    for _ in range(5):
        cy, cx, r = rng.uniform(10, size - 10), rng.uniform(10, size - 10), rng.uniform(4, 9)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1.0
    img[:, : size // 4] *= 0.5  # asymmetric, so flips/rotations are visible
    lab = (img > 0.25).astype(np.int64) + (img > 0.75).astype(np.int64)
    return np.stack([img, 1 - img]), lab


@pytest.mark.parametrize("recipe", ["synapse", "drive"])
def test_augmentation_keeps_image_and_label_aligned(recipe):
    t = build_train_transform(recipe, 48)
    if recipe == "drive":
        t.noise_std = 0.0  # keep the intensity threshold meaningful
        t.gamma = (1.0, 1.0)
    rng = np.random.default_rng(0)
    changed = 0
    for i in range(12):
        img, lab = _blobs(seed=i)
        out_img, out_lab = t(img, lab, rng)
        assert out_img.shape == (2, 48, 48) and out_img.dtype == np.float32
        assert out_lab.shape == (48, 48) and out_lab.dtype == np.int64
        assert set(np.unique(out_lab)) <= {0, 1, 2}
        # Re-derive the label from the transformed image: must agree almost everywhere.
        derived = (out_img[0] > 0.25).astype(np.int64) + (out_img[0] > 0.75)
        assert (derived == out_lab).mean() > 0.95
        ref_img, _ = build_eval_transform(48)(img, lab, None)
        changed += not np.allclose(ref_img, out_img)
    assert changed >= 4  # the recipe actually augments


def test_transunet_rotation_is_nearest_and_size_preserving():
    img, lab = _blobs()
    r_img, r_lab = rotate_nearest(img, lab, 17)
    assert r_img.shape == img.shape and r_lab.shape == lab.shape
    assert set(np.unique(r_img[0])) <= set(np.unique(img[0]))  # no interpolated values
    i90, l90 = rotate_nearest(img, lab, 90)
    assert np.array_equal(l90, np.rot90(lab)) or (l90 == np.rot90(lab)).mean() > 0.98


def test_transunet_branches_are_taken_with_expected_rates():
    t = TransUNetAugment(64)
    img, lab = _blobs()
    rng = np.random.default_rng(1)
    kinds = {"identity": 0, "other": 0}
    for _ in range(400):
        out, _ = t(img, lab, rng)
        kinds["identity" if np.array_equal(out, img) else "other"] += 1
    # Identity only when neither branch fires (0.5 * 0.5) or the rotation angle is 0
    # (0.25 / 40); rot90 + flip is a reflection, never the identity -> about 0.26.
    assert 0.17 < kinds["identity"] / 400 < 0.33


def test_same_seed_same_augmentation_different_seed_differs():
    t = build_train_transform("drive", 32)
    img, lab = _blobs(seed=3)
    a = t(img, lab, np.random.default_rng(7))
    b = t(img, lab, np.random.default_rng(7))
    c = t(img, lab, np.random.default_rng(8))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_unknown_recipe_and_bad_option():
    with pytest.raises(ConfigError, match="unknown augmentation recipe"):
        build_train_transform("nope", 64)
    with pytest.raises(ConfigError):
        build_train_transform("synapse", 64, bogus=1)
    assert isinstance(build_train_transform("drive", 64), DriveAugment)


NO_INTENSITY = {"p_noise": 0, "p_blur": 0, "p_brightness": 0, "p_contrast": 0, "p_low_res": 0,
                "p_gamma": 0, "p_gamma_inverted": 0}


def test_nnunet_spatial_keeps_image_and_label_aligned():
    """Rotation, scaling and mirroring of the nnU-Net set move label and image together."""
    t = build_train_transform("nnunet", 48, p_rotation=1.0, p_scaling=1.0, **NO_INTENSITY)
    assert isinstance(t, NnUNetAugment)
    rng = np.random.default_rng(0)
    worst = moved = 1.0
    for i in range(12):
        img, lab = _blobs(seed=i)
        out_img, out_lab = t(img, lab, rng)
        assert out_img.shape == (2, 48, 48) and out_lab.shape == (48, 48)
        assert out_img.dtype == np.float32 and out_lab.dtype == np.int64
        derived = (out_img[0] > 0.25).astype(np.int64) + (out_img[0] > 0.75)
        # Bilinear edges on 48 px blobs disagree on a few boundary pixels only.
        assert (derived == out_lab).mean() > 0.92
        worst = min(worst, (derived == out_lab).mean())
        _, ref_lab = build_eval_transform(48)(img, lab, None)
        moved = min(moved, (derived == ref_lab).mean())  # the untransformed label
    assert moved < worst - 0.05  # ... which the transformed image no longer matches


def test_nnunet_intensity_leaves_the_label_and_gamma_keeps_mean_and_sd():
    t = build_train_transform("nnunet", 48, p_rotation=0, p_scaling=0, p_mirror=0)
    img, lab = _blobs(seed=2)
    ref_img, ref_lab = build_eval_transform(48)(img, lab, None)
    rng = np.random.default_rng(3)
    changed = 0
    for _ in range(40):
        out_img, out_lab = t(img, lab, rng)
        assert np.array_equal(out_lab, ref_lab)
        changed += not np.allclose(out_img, ref_img)
    # P(no intensity step fires) = 0.9 * 0.8 * 0.85 * 0.85 * 0.75 * 0.9 * 0.7 = 0.25.
    assert 20 <= changed <= 38
    gam = NnUNetAugment(48, p_gamma=1.0, p_noise=0, p_blur=0, p_brightness=0, p_contrast=0,
                        p_low_res=0, p_gamma_inverted=0, p_rotation=0, p_scaling=0, p_mirror=0)
    out, _ = gam(img, lab, np.random.default_rng(5))
    assert not np.allclose(out, ref_img)
    assert np.allclose(out.mean((1, 2)), ref_img.mean((1, 2)), atol=1e-4)
    assert np.allclose(out.std((1, 2)), ref_img.std((1, 2)), rtol=1e-3)


def test_nnunet_mirrors_each_axis_half_the_time():
    t = NnUNetAugment(32, p_rotation=0, p_scaling=0, **NO_INTENSITY)
    img, lab = _blobs(size=32, seed=4)
    rng = np.random.default_rng(6)
    same = sum(np.array_equal(t(img, lab, rng)[1], lab) for _ in range(400))
    assert 0.17 < same / 400 < 0.33  # neither axis flipped: 0.25


class _Toy(SegDataset):
    name = "toy"

    def splits(self):
        return ["train"]

    def cases(self, split):
        return ["a"]

    def _slice_index(self, split, cases):
        return [("a", z) for z in range(16)]

    def _read_slice(self, split, case_id, z, store):
        img, lab = _blobs(32, seed=z)
        return img[:1], lab


def _epoch(loader):
    return torch.cat([b["image"] for b in loader])


def test_worker_seeding_is_reproducible_and_varies_per_epoch():
    ds = _Toy("/nonexistent").slice_dataset("train", transform=build_train_transform("drive", 32))
    assert isinstance(ds, SliceDataset)

    def loader(seed):
        g = torch.Generator().manual_seed(seed)
        return DataLoader(ds, batch_size=4, num_workers=2, worker_init_fn=seed_worker,
                          generator=g, shuffle=False)

    l1, l2 = loader(0), loader(0)
    e1a, e1b = _epoch(l1), _epoch(l1)
    e2a = _epoch(l2)
    assert torch.equal(e1a, e2a)  # same loader seed -> same augmentation
    assert not torch.equal(e1a, e1b)  # next epoch -> new augmentation
    # Another loader seed gives another augmentation.
    assert not torch.equal(_epoch(loader(1)), e1a)


def test_reseed_restarts_augmentation_without_workers():
    # num_workers=0: the dataset's own generator runs on; reseed (through a Subset) resets it.
    ds = _Toy("/nonexistent").slice_dataset("train", transform=build_train_transform("drive", 32))
    wrapped = torch.utils.data.Subset(ds, range(len(ds)))

    def epoch() -> torch.Tensor:
        return _epoch(DataLoader(wrapped, batch_size=4, num_workers=0, shuffle=False))

    reseed(wrapped, 5)
    first, second = epoch(), epoch()
    reseed(wrapped, 5)
    assert torch.equal(epoch(), first) and not torch.equal(first, second)


def _centroid(a: np.ndarray) -> np.ndarray:
    a = np.clip(a.astype(np.float64), 0.0, None)
    yy, xx = np.mgrid[: a.shape[0], : a.shape[1]]
    return np.array([(a * yy).sum(), (a * xx).sum()]) / a.sum()


def _mean_offset(transform, src: int, n: int = 32) -> np.ndarray:
    """Mean (label centroid - image centroid) in output pixels over ``n`` discs whose
    centres sweep the middle of the image in non-integer steps. A disc's image is its
    label as float, so a systematic offset is the resampling's; a single disc's label is
    off by up to ~0.25 px where nearest-neighbour blocks drift against the exact scale
    (2 or 3 output pixels per source pixel at 63 -> 128), which averages out."""
    yy, xx = np.mgrid[:src, :src]
    offsets = []
    for s in range(n):
        cy = src * (0.3 + 0.4 * s / n) + 0.37
        cx = src * (0.3 + 0.4 * ((11 * s) % n) / n) + 0.61
        lab = ((yy - cy) ** 2 + (xx - cx) ** 2 <= (0.15 * src) ** 2).astype(np.int64)
        img, out = transform(lab[None].astype(np.float32), lab, np.random.default_rng(s))
        offsets.append(_centroid(out) - _centroid(img[0]))
    return np.mean(offsets, axis=0)


SIZES = [(512, 224), (224, 512), (97, 224), (224, 97), (101, 64), (63, 128)]


@pytest.mark.parametrize(("src", "dst"), SIZES)
@pytest.mark.parametrize("recipe", ["synapse", "drive", "none"])
def test_label_stays_on_the_image_pixel_grid(recipe, src, dst):
    """Every resize of the training transforms keeps label and image centroids within
    0.05 px (cv2.INTER_NEAREST put the label +0.46 px down-right at 512 -> 224)."""
    t = build_train_transform(recipe, dst)
    if recipe == "drive":
        t.noise_std = 0.0  # zero-mean noise would pull the image centroid to the middle
    offset = _mean_offset(t, src)
    assert np.abs(offset).max() < 0.05, offset


def test_plain_nearest_resize_is_misaligned():
    """The control: the old label resize fails the same check, so the check can fail."""
    import cv2

    def old(image, label, rng):
        img, _ = build_eval_transform(224)(image, None, rng)
        return img, cv2.resize(label.astype(np.int32), (224, 224),
                               interpolation=cv2.INTER_NEAREST)

    assert np.abs(_mean_offset(old, 512)).min() > 0.3


@pytest.mark.parametrize(("src", "dst"), SIZES)
def test_label_resize_maps_pixel_centres(src, dst):
    """The label's output pixel ``d`` takes the source pixel under its centre,
    ``floor((d + 0.5) * src / dst)`` (the mapping of ``zoom(order=0, grid_mode=True)``);
    where that centre falls exactly on a source pixel border either neighbour is right."""
    from unetzoo.data.transforms import resize_pair

    ramp = np.tile(np.arange(src, dtype=np.int64), (src, 1))
    _, out = resize_pair(np.zeros((1, src, src), np.float32), ramp, dst, "opencv")
    x = (np.arange(dst) + 0.5) * src / dst
    tie = np.isclose(x, np.round(x))
    assert out.shape == (dst, dst) and (out == out[0]).all()
    assert (out[0][~tie] == np.floor(x[~tie])).all()
    assert np.isin(out[0][tie] - np.round(x[tie]), (-1, 0)).all()


@pytest.mark.parametrize(("src", "dst"), SIZES)
def test_training_resize_is_scipy_zoom_as_the_official_code_and_the_test_protocol(src, dst):
    """TransUNet's RandomGenerator: zoom(image, order=3), zoom(label, order=0), corner
    aligned; the test protocol resizes the same way, so training and test agree (OpenCV's
    pixel-centre resize differed by a 0.26 % scale at 512 -> 224)."""
    from scipy import ndimage

    from unetzoo.data.transforms import resize_pair

    img, lab = _blobs(size=src, seed=3)
    out_img, out_lab = build_train_transform("none", dst)(img, lab, None)
    zoom = (dst / src, dst / src)
    for c in range(2):
        assert np.allclose(out_img[c], ndimage.zoom(img[c].astype(np.float64), zoom, order=3),
                           atol=1e-5)
    assert (out_lab == ndimage.zoom(lab, zoom, order=0)).all()
    old_img, _ = resize_pair(img, lab, dst, "opencv")
    assert not np.allclose(old_img, out_img, atol=1e-3)  # the conventions differ
    t = build_train_transform("synapse", dst, p_rot_flip=0.0, p_rotate=0.0)
    assert (t(img, lab, np.random.default_rng(0))[1] == out_lab).all()
    opencv = build_train_transform("synapse", dst, resize="opencv", p_rot_flip=0.0,
                                   p_rotate=0.0)
    assert np.allclose(opencv(img, lab, np.random.default_rng(0))[0], old_img)
    with pytest.raises(ConfigError, match="resize convention"):
        build_train_transform("synapse", dst, resize="pil")
