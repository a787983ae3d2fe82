"""Training augmentation and evaluation resizing for 2-D samples.

A transform is ``transform(image, label, rng) -> (image, label)`` with ``image`` float32
``(C, H, W)``, ``label`` int64 ``(H, W)`` and ``rng`` a ``numpy.random.Generator`` owned by
the dataset (one per DataLoader worker, re-derived every epoch by :func:`seed_worker`).
Transforms never seed anything themselves.

Recipes (``build_train_transform(recipe, img_size)``):

- ``"synapse"`` / ``"avt"`` / ``"acdc"`` / ``"phantom"`` / ``"default"``: the TransUNet recipe.
  With p = 0.5 a random ``rot90`` (k in 0..3) and a flip along a random axis; otherwise,
  with p = 0.5, a rotation by an integer angle in [-20, 20) degrees with nearest-neighbour
  interpolation of image and label (as TransUNet's ``ndimage.rotate(order=0)``); then a
  resize to ``img_size`` (image cubic spline, label nearest) as TransUNet's
  ``RandomGenerator``: ``scipy.ndimage.zoom(order=3)`` / ``zoom(order=0)``, corner
  aligned, the convention of the test protocol too (``resize="scipy"``, the default;
  ``resize="opencv"``, an ``augment_options`` key, gives the former OpenCV pixel-centre
  resize).
- ``"drive"``: flips, a random scaling (0.85-1.15) and rotation (+-15 deg), grid distortion
  and elastic deformation, all composed into one sampling map so the image is
  interpolated once (bilinear; label nearest) directly at ``img_size``; then gamma
  (0.7-1.5) and Gaussian noise on the image.
- ``"nnunet"``: nnU-Net v2's default 2-D set (``nnUNetTrainer.get_training_transforms``)
  on the resized slice: rotation (p 0.2, +-180 deg) and scaling (p 0.2, 0.7-1.4) about the
  centre (image bilinear, label nearest, zero fill; nnU-Net pads labels with an ignored
  -1), Gaussian noise (p 0.1, sd 0-0.1), blur (p 0.2, sigma 0.5-1 per axis, each channel
  p 0.5), brightness (p 0.15, x0.75-1.25), contrast (p 0.15, 0.75-1.25, range kept),
  low resolution (p 0.25, nearest down 0.5-1 and bilinear up, each channel p 0.5), gamma
  on the inverted (p 0.1) and plain (p 0.3) image (0.7-1.5, mean and sd kept), mirroring
  of each axis (p 0.5). Factors as nnU-Net's ``BGContrast``: half below 1, half above.
- ``"none"``: resize only.

Labels stay on the image's pixel grid: image and label share one coordinate mapping.
With ``resize="scipy"`` both are scipy's corner-aligned ``ndimage.zoom`` (the test
protocol's separable matrices in :mod:`unetzoo.engine.inference` equal it). With ``resize="opencv"``
every resize maps output pixel centres to input pixel centres (OpenCV's cubic does; for
labels that is
``INTER_NEAREST_EXACT``, the same mapping as ``scipy.ndimage.zoom(order=0,
grid_mode=True)``). OpenCV's plain ``INTER_NEAREST`` floors ``dst * scale`` instead,
which moved a 512 -> 224 label +0.46 px down and right of its image (measured; now
< 0.05 px on average, tests/data/test_transforms.py).

Hand-written on OpenCV instead of albumentations: the TransUNet recipe's "rot-flip else
rotate" branch and its nearest-neighbour rotation are reproduced exactly, the DRIVE
deformations are composed into a single remap (one interpolation instead of four), and the
caller's generator drives every random choice (albumentations keeps its own global RNG).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import torch
from scipy import ndimage

from unetzoo.errors import ConfigError

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]

TRANSUNET_RECIPES = ("synapse", "avt", "acdc", "phantom", "default")
RECIPES = (*TRANSUNET_RECIPES, "drive", "nnunet", "none")
#: ``"scipy"``: ``ndimage.zoom`` (corner aligned; the official training and test code and
#: unetzoo's test protocol); ``"opencv"``: ``cv2.resize`` (pixel-centre aligned).
RESIZE_CONVENTIONS = ("scipy", "opencv")


def _hwc(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(image, (1, 2, 0)))


def _chw(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:  # OpenCV drops a single channel axis
        image = image[:, :, None]
    return np.ascontiguousarray(np.transpose(image, (2, 0, 1)))


def resize_pair(
    image: np.ndarray, label: np.ndarray | None, size: int | tuple[int, int],
    convention: str = "scipy",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize ``image (C, H, W)`` cubic and ``label (H, W)`` nearest to ``size``.

    ``convention="scipy"``: ``ndimage.zoom(order=3)`` / ``zoom(order=0)`` per slice
    (corner aligned), as TransUNet's ``RandomGenerator`` and the test protocol.
    ``"opencv"``: both map output pixel centres onto input pixel centres
    (``INTER_CUBIC``, ``INTER_NEAREST_EXACT``; plain ``INTER_NEAREST`` shifts the label by
    up to half an input pixel).
    """
    h, w = (size, size) if isinstance(size, int) else size
    if image.shape[1:] == (h, w):
        return image, label
    if convention == "scipy":
        return _zoom_pair(image, label, h, w)
    if convention != "opencv":
        raise ConfigError(f"unknown resize convention {convention!r}; choose "
                          f"{', '.join(RESIZE_CONVENTIONS)}")
    img = _chw(cv2.resize(_hwc(image), (w, h), interpolation=cv2.INTER_CUBIC))
    lab = None
    if label is not None:
        lab = cv2.resize(label.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
        lab = lab.astype(np.int64)
    return img.astype(np.float32, copy=False), lab


def _zoom_pair(
    image: np.ndarray, label: np.ndarray | None, h: int, w: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """``scipy.ndimage.zoom`` of each image channel (order 3) and the label (order 0), as
    TransUNet's ``RandomGenerator`` (the zoom factors give exactly ``(h, w)``)."""
    zoom = (h / image.shape[1], w / image.shape[2])
    img = np.stack([ndimage.zoom(c.astype(np.float32, copy=False), zoom, order=3)
                    for c in image])
    lab = None if label is None else ndimage.zoom(label.astype(np.int64), zoom, order=0)
    return img.astype(np.float32, copy=False), lab


def _check_convention(resize: str) -> str:
    if resize not in RESIZE_CONVENTIONS:
        raise ConfigError(f"unknown resize convention {resize!r}; choose "
                          f"{', '.join(RESIZE_CONVENTIONS)}")
    return resize


class TransUNetAugment:
    """The TransUNet ``RandomGenerator`` recipe (see module docstring)."""

    def __init__(self, img_size: int, p_rot_flip: float = 0.5, p_rotate: float = 0.5,
                 max_angle: int = 20, resize: str = "scipy") -> None:
        self.resize = _check_convention(resize)
        self.img_size = int(img_size)
        self.p_rot_flip = p_rot_flip
        self.p_rotate = p_rotate
        self.max_angle = int(max_angle)

    def __call__(self, image, label, rng):
        if rng.random() < self.p_rot_flip:
            k = int(rng.integers(0, 4))
            axis = int(rng.integers(0, 2))
            image = np.flip(np.rot90(image, k, axes=(1, 2)), axis=axis + 1)
            label = np.flip(np.rot90(label, k, axes=(0, 1)), axis=axis)
        elif rng.random() < self.p_rotate:
            angle = int(rng.integers(-self.max_angle, self.max_angle))
            image, label = rotate_nearest(image, label, angle)
        return resize_pair(np.ascontiguousarray(image), np.ascontiguousarray(label),
                           self.img_size, self.resize)

    def __repr__(self) -> str:
        return f"TransUNetAugment(img_size={self.img_size})"


def rotate_nearest(image: np.ndarray, label: np.ndarray, angle: float):
    """Rotate ``image (C, H, W)`` and ``label (H, W)`` by ``angle`` degrees about the centre,
    nearest neighbour, zero fill, same size (``ndimage.rotate(order=0, reshape=False)``)."""
    h, w = label.shape
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), float(angle), 1.0)
    flags = cv2.INTER_NEAREST
    img = _chw(cv2.warpAffine(_hwc(image), m, (w, h), flags=flags,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0))
    lab = cv2.warpAffine(label.astype(np.int32), m, (w, h), flags=flags,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return img, lab.astype(np.int64)


class DriveAugment:
    """DRIVE-style augmentation (see module docstring); every step has probability 0.5."""

    def __init__(
        self,
        img_size: int,
        *,
        scale: tuple[float, float] = (0.85, 1.15),
        max_angle: float = 15.0,
        grid_steps: int = 5,
        grid_limit: float = 0.3,
        elastic_alpha: float = 0.03,
        elastic_sigma: float = 0.05,
        gamma: tuple[float, float] = (0.7, 1.5),
        noise_std: float = 0.03,
        p: float = 0.5,
    ) -> None:
        self.img_size = int(img_size)
        self.scale = scale
        self.max_angle = max_angle
        self.grid_steps = grid_steps
        self.grid_limit = grid_limit
        self.elastic_alpha = elastic_alpha
        self.elastic_sigma = elastic_sigma
        self.gamma = gamma
        self.noise_std = noise_std
        self.p = p

    def sampling_map(self, rng: np.random.Generator, in_hw: tuple[int, int]):
        """``(map_x, map_y)`` float32 ``(S, S)``: input pixel coordinates of each output
        pixel after flips, scaling/rotation, grid distortion and elastic deformation."""
        s = self.img_size
        # Output pixel centres in normalised [-1, 1] coordinates.
        lin = (np.arange(s, dtype=np.float32) + 0.5) / s * 2 - 1
        gx, gy = np.meshgrid(lin, lin)
        if rng.random() < self.p:  # elastic: smooth random displacement field
            coarse = max(4, int(round(1.0 / max(self.elastic_sigma, 1e-3))))
            for g in (gx, gy):
                field = rng.uniform(-1, 1, size=(coarse, coarse)).astype(np.float32)
                field = cv2.resize(field, (s, s), interpolation=cv2.INTER_CUBIC)
                g += 2 * self.elastic_alpha * field / max(float(np.abs(field).max()), 1e-6)
        if rng.random() < self.p:  # grid distortion: jitter of a coarse control grid
            n = self.grid_steps
            cell = 2.0 / n
            for g in (gx, gy):
                ctrl = rng.uniform(-self.grid_limit, self.grid_limit, size=(n + 1, n + 1))
                disp = cv2.resize(ctrl.astype(np.float32) * cell, (s, s),
                                  interpolation=cv2.INTER_LINEAR)
                g += disp
        if rng.random() < self.p:  # scaling + rotation
            zoom = rng.uniform(*self.scale)
            theta = np.deg2rad(rng.uniform(-self.max_angle, self.max_angle))
            c, si = np.cos(theta) / zoom, np.sin(theta) / zoom
            gx, gy = c * gx - si * gy, si * gx + c * gy
        if rng.random() < self.p:
            gx = -gx
        if rng.random() < self.p:
            gy = -gy
        h, w = in_hw
        map_x = ((gx + 1) / 2 * w - 0.5).astype(np.float32)
        map_y = ((gy + 1) / 2 * h - 0.5).astype(np.float32)
        return map_x, map_y

    def __call__(self, image, label, rng):
        map_x, map_y = self.sampling_map(rng, label.shape)
        img = _chw(cv2.remap(_hwc(image.astype(np.float32)), map_x, map_y, cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0))
        lab = cv2.remap(label.astype(np.int32), map_x, map_y, cv2.INTER_NEAREST,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(np.int64)
        if rng.random() < self.p:
            g = rng.uniform(*self.gamma)
            img = np.power(np.clip(img, 0.0, None), g, dtype=np.float32)
        if rng.random() < self.p:
            img = img + rng.normal(0.0, self.noise_std, size=img.shape).astype(np.float32)
        return img.astype(np.float32, copy=False), lab

    def __repr__(self) -> str:
        return f"DriveAugment(img_size={self.img_size})"


class NnUNetAugment:
    """nnU-Net v2's default 2-D training augmentation (see module docstring)."""

    def __init__(self, img_size: int, *, p_rotation: float = 0.2, max_angle: float = 180.0,
                 p_scaling: float = 0.2, scale: tuple[float, float] = (0.7, 1.4),
                 p_noise: float = 0.1, noise_sd: tuple[float, float] = (0.0, 0.1),
                 p_blur: float = 0.2, blur_sigma: tuple[float, float] = (0.5, 1.0),
                 p_brightness: float = 0.15, p_contrast: float = 0.15,
                 factor: tuple[float, float] = (0.75, 1.25), p_low_res: float = 0.25,
                 low_res: tuple[float, float] = (0.5, 1.0), p_gamma_inverted: float = 0.1,
                 p_gamma: float = 0.3, gamma: tuple[float, float] = (0.7, 1.5),
                 p_channel: float = 0.5, p_mirror: float = 0.5, resize: str = "scipy") -> None:
        self.resize = _check_convention(resize)
        self.img_size = int(img_size)
        self.p_rotation, self.max_angle = p_rotation, max_angle
        self.p_scaling, self.scale = p_scaling, scale
        self.p_noise, self.noise_sd = p_noise, noise_sd
        self.p_blur, self.blur_sigma = p_blur, blur_sigma
        self.p_brightness, self.p_contrast, self.factor = p_brightness, p_contrast, factor
        self.p_low_res, self.low_res = p_low_res, low_res
        self.p_gamma_inverted, self.p_gamma, self.gamma = p_gamma_inverted, p_gamma, gamma
        self.p_channel, self.p_mirror = p_channel, p_mirror

    def __call__(self, image, label, rng):
        image, label = resize_pair(image, label, self.img_size, self.resize)
        image, label = self._spatial(image, label, rng)
        image = self._intensity(np.array(image, dtype=np.float32), rng)
        for axis in (0, 1):
            if rng.random() < self.p_mirror:
                image, label = np.flip(image, axis + 1), np.flip(label, axis)
        return np.ascontiguousarray(image), np.ascontiguousarray(label)

    def _spatial(self, image, label, rng):
        angle = rng.uniform(-self.max_angle, self.max_angle) if rng.random() < self.p_rotation else 0.0
        zoom = rng.uniform(*self.scale) if rng.random() < self.p_scaling else 1.0
        if angle == 0.0 and zoom == 1.0:
            return image, label
        s = self.img_size
        # nnU-Net scales the sampling grid: zoom > 1 reads a larger area (zooms out).
        m = cv2.getRotationMatrix2D(((s - 1) / 2.0, (s - 1) / 2.0), float(angle), 1.0 / zoom)
        warp = {"dsize": (s, s), "borderMode": cv2.BORDER_CONSTANT, "borderValue": 0}
        img = _chw(cv2.warpAffine(_hwc(image), m, flags=cv2.INTER_LINEAR, **warp))
        lab = cv2.warpAffine(label.astype(np.int32), m, flags=cv2.INTER_NEAREST, **warp)
        return img, lab.astype(np.int64)

    def _factor(self, rng, bounds):
        low, high = bounds
        return rng.uniform(low, 1.0) if rng.random() < 0.5 and low < 1 else rng.uniform(max(low, 1.0), high)

    def _intensity(self, img: np.ndarray, rng) -> np.ndarray:
        s = self.img_size
        if rng.random() < self.p_noise:
            img += rng.normal(0.0, rng.uniform(*self.noise_sd), size=img.shape).astype(np.float32)
        if rng.random() < self.p_blur:
            for c in range(img.shape[0]):
                if rng.random() < self.p_channel:
                    sy, sx = rng.uniform(*self.blur_sigma, size=2)
                    img[c] = cv2.GaussianBlur(img[c], (0, 0), sigmaX=sx, sigmaY=sy)
        if rng.random() < self.p_brightness:
            for c in range(img.shape[0]):
                img[c] *= self._factor(rng, self.factor)
        if rng.random() < self.p_contrast:
            for c in range(img.shape[0]):
                lo, hi, mean = img[c].min(), img[c].max(), img[c].mean()
                img[c] = np.clip((img[c] - mean) * self._factor(rng, self.factor) + mean, lo, hi)
        if rng.random() < self.p_low_res:
            for c in range(img.shape[0]):
                if rng.random() < self.p_channel:
                    n = max(1, round(s * rng.uniform(*self.low_res)))
                    small = cv2.resize(img[c], (n, n), interpolation=cv2.INTER_NEAREST_EXACT)
                    img[c] = cv2.resize(small, (s, s), interpolation=cv2.INTER_LINEAR)
        for p, invert in ((self.p_gamma_inverted, True), (self.p_gamma, False)):
            if rng.random() < p:
                for c in range(img.shape[0]):
                    img[c] = _gamma(img[c], self._factor(rng, self.gamma), invert)
        return img

    def __repr__(self) -> str:
        return f"NnUNetAugment(img_size={self.img_size})"


def _gamma(x: np.ndarray, g: float, invert: bool) -> np.ndarray:
    """nnU-Net's gamma with retained mean and sd: ``((x - min) / range) ** g`` rescaled."""
    x = -x if invert else x
    mean, sd = x.mean(), x.std()
    lo, rng_ = x.min(), x.max() - x.min() + 1e-7
    y = np.power((x - lo) / rng_, g) * rng_ + lo
    y = (y - y.mean()) / (y.std() + 1e-8) * sd + mean
    return (-y if invert else y).astype(np.float32)


class Resize:
    """Deterministic resize to ``img_size`` (image cubic, label nearest; ``resize`` as
    :func:`resize_pair`'s ``convention``); ``rng`` unused."""

    def __init__(self, img_size: int, resize: str = "scipy") -> None:
        self.img_size = int(img_size)
        self.resize = _check_convention(resize)

    def __call__(self, image, label, rng=None):
        return resize_pair(image, label, self.img_size, self.resize)

    def __repr__(self) -> str:
        return f"Resize({self.img_size})"


def build_train_transform(recipe: str, img_size: int, **options: Any) -> Transform:
    """The training transform of ``recipe`` (see module docstring) producing
    ``(C, img_size, img_size)`` images and ``(img_size, img_size)`` labels. ``options`` go
    to the recipe class (e.g. ``p_rotate=0``, ``max_angle=10``)."""
    if int(img_size) < 8:
        raise ConfigError(f"img_size must be >= 8, got {img_size}")
    key = (recipe or "default").lower()
    try:
        if key in TRANSUNET_RECIPES:
            return TransUNetAugment(img_size, **options)
        if key == "drive":
            return DriveAugment(img_size, **options)
        if key == "nnunet":
            return NnUNetAugment(img_size, **options)
    except TypeError as exc:
        raise ConfigError(f"augmentation recipe {recipe!r}: {exc}") from exc
    if key == "none":  # resize only: the recipe's augmentation options do not apply
        return Resize(img_size, resize=options.get("resize", "scipy"))
    raise ConfigError(f"unknown augmentation recipe {recipe!r}; choose from {', '.join(RECIPES)}")


def build_eval_transform(img_size: int) -> Transform:
    """Resize only: image bicubic, label nearest, to ``(img_size, img_size)``."""
    return Resize(img_size)


def _slice_datasets(ds: Any, depth: int = 0):
    """Datasets with an ``rng`` inside ``ds`` (through Subset / ConcatDataset wrappers)."""
    if depth > 8 or ds is None:
        return
    if hasattr(ds, "rng"):
        yield ds
    for attr in ("dataset",):
        yield from _slice_datasets(getattr(ds, attr, None), depth + 1)
    for sub in getattr(ds, "datasets", ()) or ():
        yield from _slice_datasets(sub, depth + 1)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders: gives each worker's dataset a fresh generator.

    PyTorch seeds every worker with ``base_seed + worker_id`` where ``base_seed`` is drawn
    from the loader's ``generator`` once per epoch (per iterator), so augmentation differs
    between workers and epochs yet is reproducible from the loader's generator seed.
    """
    seed = torch.initial_seed() % 2**63
    np.random.seed(seed % 2**32)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        for ds in _slice_datasets(info.dataset):
            ds.rng = np.random.default_rng(seed)


def reseed(dataset: Any, seed: int) -> None:
    """Give ``dataset`` (and wrapped datasets) a generator from ``seed``: for
    ``num_workers=0`` loaders, call once per epoch with e.g. ``base_seed + epoch``."""
    for ds in _slice_datasets(dataset):
        ds.rng = np.random.default_rng(seed)
