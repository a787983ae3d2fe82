"""The embedded phantom dataset: seeded synthetic data written in real on-disk layouts.

``kind="ct"``: CT-like abdominal volumes with the 8 Synapse organs (same class order as
Synapse), written as an nnU-Net v2 raw folder (int16 HU, ``channel_names {"0": "CT"}``),
so the ``nnunet`` reader applies the Synapse window [-125, 275] HU -> [0, 1].
Anatomy: air, a body outline with subcutaneous fat, an abdominal-wall / paraspinal muscle
ring, a vertebra, and organs with distinct mean HU (contrast-enhanced portal-venous
phase) and very different sizes: liver (large), stomach, spleen, kidneys, pancreas (thin),
gallbladder and aorta (a few voxels across). Each case gets a random global pose, per-organ
jitter, a smooth random warp of all shapes, partial-volume blur, correlated noise and a
smooth additive intensity inhomogeneity.

``kind="fundus"``: DRIVE-like RGB fundus images (circular field of view, optic disc,
vignetting, thin branching vessels) written in the DRIVE layout (``training/images/*.tif``,
``training/1st_manual/*.gif``, ``training/mask/*.gif``, ``test/...``) for the ``drive``
reader.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from unetzoo.data import imageio, io
from unetzoo.data.listed import SYNAPSE_CLASSES
from unetzoo.errors import DataError

CT_SHAPE = (24, 128, 128)
CT_SPACING = (5.0, 2.5, 2.5)  # (sz, sy, sx) mm: slices are the through-plane axis
FUNDUS_SHAPE = (128, 128)
STAMP = "phantom.json"
GENERATOR_VERSION = 3

# Mean HU per structure (portal-venous phase). Organs differ by >= 35 HU inside the
# [-125, 275] window so intensity and shape together identify them; the other soft tissue
# between organs is fat-dominated (-85) so the fluid-filled gallbladder (-15) stands out
# from it as well as from the liver around it.
HU = {
    "air": -1000.0, "fat": -100.0, "interior": -85.0, "muscle": 50.0, "bone": 500.0,
    "aorta": 260.0, "gallbladder": -15.0, "kidney": 200.0, "liver": 120.0,
    "pancreas": 80.0, "spleen": 155.0, "stomach": 25.0,
}

# name -> (label, HU key, centre (x, y, z), radii (x, y, z)) in normalised coordinates:
# x: -1 = image left = patient right; y: -1 = anterior (top rows); z: -1 = inferior.
# Painted in this order, later ones over earlier ones.
ORGANS: list[tuple[str, int, str, tuple[float, float, float], tuple[float, float, float]]] = [
    ("liver", 5, "liver", (-0.42, -0.02, 0.35), (0.36, 0.38, 0.85)),
    ("spleen", 7, "spleen", (0.56, 0.18, 0.45), (0.13, 0.20, 0.50)),
    ("stomach", 8, "stomach", (0.30, -0.17, 0.35), (0.22, 0.16, 0.45)),
    ("right kidney", 4, "kidney", (-0.29, 0.34, -0.25), (0.10, 0.14, 0.45)),
    ("left kidney", 3, "kidney", (0.31, 0.34, -0.15), (0.10, 0.14, 0.45)),
    ("pancreas head", 6, "pancreas", (-0.07, 0.12, -0.05), (0.08, 0.06, 0.30)),
    ("pancreas body", 6, "pancreas", (0.13, 0.09, 0.0), (0.13, 0.045, 0.28)),
    ("pancreas tail", 6, "pancreas", (0.36, 0.12, 0.05), (0.10, 0.04, 0.25)),
    ("gallbladder", 2, "gallbladder", (-0.24, 0.06, -0.05), (0.09, 0.08, 0.36)),
]


def _smooth_field(
    rng: np.random.Generator, shape: Sequence[int], max_cycles: float = 1.5, waves: int = 6
) -> np.ndarray:
    """Smooth random field of unit-order amplitude: a sum of ``waves`` random plane waves
    with at most ``max_cycles`` periods across the field. Each wave is the real part of a
    product of per-axis complex exponentials (separable, no full-size ``cos``)."""
    field = np.zeros(tuple(int(s) for s in shape), dtype=np.float32)
    for _ in range(waves):
        freq = rng.uniform(-max_cycles, max_cycles, size=len(shape)) * 2 * np.pi
        wave = np.exp(1j * rng.uniform(0, 2 * np.pi)).astype(np.complex64)
        for ax, (n, f) in enumerate(zip(shape, freq)):
            e = np.exp(1j * f * np.linspace(0, 1, int(n))).astype(np.complex64)
            wave = wave * e.reshape([-1 if i == ax else 1 for i in range(len(shape))])
        field += wave.real
    return field * np.float32(np.sqrt(2.0 / waves))


def make_ct_case(
    rng: np.random.Generator, shape: Sequence[int] = CT_SHAPE
) -> tuple[np.ndarray, np.ndarray]:
    """One phantom volume: HU ``int16 (D, H, W)`` and label ``uint8 (D, H, W)``."""
    d, h, w = (int(s) for s in shape)
    zz, yy, xx = np.meshgrid(
        np.linspace(-1, 1, d, dtype=np.float32), np.linspace(-1, 1, h, dtype=np.float32),
        np.linspace(-1, 1, w, dtype=np.float32), indexing="ij", sparse=True,
    )
    # Global pose: scale, in-plane rotation, shift.
    scale = np.float32(rng.uniform(0.9, 1.05))
    theta = np.deg2rad(rng.uniform(-8, 8))
    shift = rng.uniform(-0.05, 0.05, size=2).astype(np.float32)
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    x0, y0 = xx - shift[0], yy - shift[1]
    x = (c * x0 + s * y0) / scale
    y = (-s * x0 + c * y0) / scale
    z = zz
    # Smooth warp so organ outlines are not plain ellipsoids.
    x = x + 0.035 * _smooth_field(rng, (d, h, w), max_cycles=2.0)
    y = y + 0.035 * _smooth_field(rng, (d, h, w), max_cycles=2.0)

    hu = np.full((d, h, w), HU["air"], dtype=np.float32)
    label = np.zeros((d, h, w), dtype=np.uint8)
    # Body outline with a subcutaneous fat layer and a muscle ring.
    bx, by = 0.85 * rng.uniform(0.95, 1.05), 0.62 * rng.uniform(0.95, 1.05)
    rb = np.sqrt((x / bx) ** 2 + ((y - 0.05) / by) ** 2)
    hu[rb < 1.0] = HU["fat"]
    hu[rb < 0.93] = HU["muscle"]
    hu[rb < 0.86] = HU["interior"]
    # Paraspinal muscles and the vertebral body (bone, clipped to 1.0 by the window).
    para = ((np.abs(x) - 0.13) / 0.11) ** 2 + ((y - 0.50) / 0.09) ** 2 < 1.0
    hu[para & (rb < 1.0)] = HU["muscle"]
    hu[(x / 0.09) ** 2 + ((y - 0.40) / 0.09) ** 2 < 1.0] = HU["bone"]
    # Aorta: a thin tube left-anterior of the spine, drifting slightly with z.
    ax = 0.07 + rng.uniform(-0.02, 0.02) + 0.02 * z
    ar = 0.055 * rng.uniform(0.9, 1.1)
    aorta = ((x - ax) ** 2 + (y - 0.26) ** 2) < ar**2
    jitter: dict[int, tuple[np.ndarray, float]] = {}
    for _name, lab, key, centre, radii in ORGANS:
        # One jitter per organ (the pancreas parts move together and stay connected).
        if lab not in jitter:
            jitter[lab] = (rng.uniform(-0.03, 0.03, size=3), rng.uniform(0.85, 1.15))
        offset, grow = jitter[lab]
        cx, cy, cz = (v + o for v, o in zip(centre, offset))
        rx, ry, rz = (v * grow for v in radii)
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 < 1.0
        inside &= rb < 0.86
        hu[inside] = HU[key] + rng.normal(0, 6)  # per-case organ enhancement varies
        label[inside] = lab
    hu[aorta] = HU["aorta"] + rng.normal(0, 10)
    label[aorta] = 1
    # Partial-volume blur (in-plane mostly), inhomogeneity, correlated noise.
    hu = ndimage.gaussian_filter(hu, sigma=(0.3, 0.6, 0.6))
    inside_body = rb < 1.0
    hu += (20.0 * _smooth_field(rng, (d, h, w), max_cycles=0.8)) * inside_body
    noise = ndimage.gaussian_filter(rng.standard_normal((d, h, w)).astype(np.float32), 0.7)
    noise *= 12.0 / max(float(noise.std()), 1e-6)
    hu += noise
    hu = np.clip(hu, -1024, 3071)
    return np.round(hu).astype(np.int16), label


def _draw_vessels(
    rng: np.random.Generator, size: tuple[int, int], disc: tuple[float, float], radius: float
) -> np.ndarray:
    """Binary vessel tree: four arcades from the optic disc, branching, tapering."""
    import cv2

    h, w = size
    mask = np.zeros((h, w), dtype=np.uint8)
    base_width = max(2, round(min(h, w) / 48))
    cy, cx = h / 2, w / 2
    stack = []
    for angle in (np.pi * 0.30, -np.pi * 0.30, np.pi * 0.70, -np.pi * 0.70):
        # Arcades run from the disc towards the centre of the image (temporal side).
        direction = angle + (0 if disc[1] < cx else np.pi)
        stack.append((disc[1], disc[0], direction + rng.normal(0, 0.15), base_width, 0))
    while stack:
        x, y, ang, width, depth = stack.pop()
        length = rng.uniform(0.25, 0.45) * min(h, w) / (1 + 0.5 * depth)
        steps = max(3, int(length / 3))
        pts = [(x, y)]
        for _ in range(steps):
            ang += rng.normal(0, 0.18)
            x += 3 * np.cos(ang)
            y += 3 * np.sin(ang)
            if (x - cx) ** 2 + (y - cy) ** 2 > radius**2:
                break
            pts.append((x, y))
            if depth < 4 and rng.random() < 0.08:
                side = rng.choice([-1, 1])
                stack.append((x, y, ang + side * rng.uniform(0.4, 1.0), max(1, width - 1),
                              depth + 1))
        cv2.polylines(mask, [np.round(np.array(pts)).astype(np.int32)], False, 1,
                      thickness=int(width), lineType=cv2.LINE_8)
        if len(pts) > 2 and depth < 4 and width > 1:
            stack.append((x, y, ang + rng.normal(0, 0.4), max(1, width - 1), depth + 1))
    return mask


def make_fundus_case(
    rng: np.random.Generator, shape: Sequence[int] = FUNDUS_SHAPE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One fundus image ``uint8 (H, W, 3)``, vessel mask ``uint8 (H, W)`` {0,1} and field
    of view ``uint8 (H, W)`` {0,1}."""
    h, w = (int(s) for s in shape)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h / 2 - 0.5, w / 2 - 0.5
    radius = 0.46 * min(h, w)
    r = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    fov = (r < radius).astype(np.uint8)
    side = rng.choice([-1, 1])
    disc = (cy + rng.uniform(-0.08, 0.08) * h, cx + side * rng.uniform(0.22, 0.3) * w)
    vessels = _draw_vessels(rng, (h, w), disc, radius * 0.97)
    vessels &= fov
    base = np.array([rng.uniform(0.70, 0.85), rng.uniform(0.32, 0.42), rng.uniform(0.10, 0.18)])
    vignette = 1.0 - 0.35 * (r / radius) ** 2
    shade = 1.0 + 0.08 * _smooth_field(rng, (h, w), max_cycles=1.5)
    img = base[None, None, :] * (vignette * shade)[..., None]
    dd = np.sqrt((yy - disc[0]) ** 2 + (xx - disc[1]) ** 2)
    img += (0.35 * np.exp(-((dd / (0.07 * min(h, w))) ** 2)))[..., None] * np.array([1, 0.9, 0.6])
    soft = ndimage.gaussian_filter(vessels.astype(np.float32), 0.6)
    # Vessels are darker, most visibly in the green channel.
    img *= 1.0 - soft[..., None] * np.array([0.30, 0.55, 0.40])
    img += rng.normal(0, 0.02, img.shape)
    img *= fov[..., None]
    img8 = np.clip(img * 255, 0, 255).round().astype(np.uint8)
    return img8, vessels.astype(np.uint8), fov


def _params(kind: str, n_train: int, n_test: int, shape: Sequence[int], seed: int) -> dict:
    return {
        "generator": "unetzoo.data.phantom", "version": GENERATOR_VERSION, "kind": kind,
        "n_train": int(n_train), "n_test": int(n_test), "shape": [int(s) for s in shape],
        "seed": int(seed),
    }


def _write_ct(root: Path, params: dict[str, Any]) -> None:
    shape = params["shape"]
    sz, sy, sx = CT_SPACING
    # File axes (i, j, k) = (x, y, z); the reader slices along k (largest spacing).
    affine = np.diag([sx, sy, sz, 1.0])
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True)
    n_total = params["n_train"] + params["n_test"]
    seeds = np.random.SeedSequence(params["seed"]).spawn(n_total)
    for i in range(n_total):
        rng = np.random.default_rng(seeds[i])
        hu, lab = make_ct_case(rng, shape)
        train = i < params["n_train"]
        cid = f"phantom_{i:03d}"
        img_dir, lab_dir = ("imagesTr", "labelsTr") if train else ("imagesTs", "labelsTs")
        imageio.save_image(hu.transpose(2, 1, 0), affine, root / img_dir / f"{cid}_0000.nii.gz")
        imageio.save_image(lab.transpose(2, 1, 0), affine, root / lab_dir / f"{cid}.nii.gz")
    meta = {
        "name": "phantom",
        "description": "unetzoo synthetic CT-like abdomen (Synapse organ classes)",
        "channel_names": {"0": "CT"},
        "labels": {name: i for i, name in enumerate(SYNAPSE_CLASSES)},
        "numTraining": params["n_train"],
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))


def _write_fundus(root: Path, params: dict[str, Any]) -> None:
    import tifffile
    from PIL import Image

    n_total = params["n_train"] + params["n_test"]
    seeds = np.random.SeedSequence(params["seed"]).spawn(n_total)
    for i in range(n_total):
        rng = np.random.default_rng(seeds[i])
        img, ves, fov = make_fundus_case(rng, params["shape"])
        if i < params["n_train"]:
            folder, num, tag = root / "training", 21 + i, "training"
        else:
            folder, num, tag = root / "test", 1 + i - params["n_train"], "test"
        for sub in ("images", "1st_manual", "mask"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(str(folder / "images" / f"{num:02d}_{tag}.tif"), img)
        Image.fromarray(ves * 255).save(folder / "1st_manual" / f"{num:02d}_manual1.gif")
        Image.fromarray(fov * 255).save(folder / "mask" / f"{num:02d}_{tag}_mask.gif")


def generate_phantom(
    root: str | Path,
    *,
    kind: str = "ct",
    n_train: int = 12,
    n_test: int = 4,
    shape: Sequence[int] | None = None,
    seed: int = 0,
) -> Path:
    """Generate the phantom into ``root`` (atomically) and return ``root``.

    ``kind="ct"``: nnU-Net v2 raw folder; ``shape`` ``(D, H, W)``, default (24, 128, 128)
    at spacing (5.0, 2.5, 2.5) mm. ``kind="fundus"``: DRIVE layout; ``shape`` ``(H, W)``,
    default (128, 128). The same arguments give byte-identical arrays. If ``root`` already
    holds a phantom generated with the same arguments it is reused; any other non-empty
    ``root`` is an error.
    """
    shape = _checked(kind, n_train, n_test, shape, seed)
    if n_train < 1 or n_test < 0:
        raise DataError("phantom needs n_train >= 1 and n_test >= 0")
    params = _params(kind, n_train, n_test, shape, seed)
    root = Path(root)
    existing = read_stamp(root)
    if existing is not None:
        if existing == params:
            return root
        raise DataError(
            f"{root} holds a phantom generated with other settings ({existing}); delete it "
            "or choose another folder"
        )
    if root.exists() and any(root.iterdir()):
        raise DataError(f"{root} is not empty and is not a phantom folder; choose another root")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        (_write_ct if kind == "ct" else _write_fundus)(tmp, params)
        (tmp / STAMP).write_text(json.dumps(params, indent=2))
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
        try:
            os.replace(tmp, root)  # atomic; works onto an empty directory too
        except OSError:
            # Another process finished first: keep theirs if it is the same phantom.
            if read_stamp(root) != params:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def read_stamp(root: Path) -> dict[str, Any] | None:
    """Generation parameters stored in a phantom folder, or None."""
    p = Path(root) / STAMP
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _checked(kind: str, n_train: Any, n_test: Any, shape: Any, seed: Any) -> tuple[int, ...]:
    """The shape to generate, after checking the option types (``n_train=abc`` from a
    ``--dataset-option`` used to end in a traceback)."""
    if kind not in ("ct", "fundus"):
        raise DataError(f"phantom kind must be 'ct' or 'fundus', got {kind!r}")
    for name, value in (("n_train", n_train), ("n_test", n_test), ("seed", seed)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise DataError(f"phantom option {name} must be a whole number, got {value!r}")
    if not 0 <= int(seed) < 2**32:  # numpy's seed range; outside it a traceback
        raise DataError(f"phantom seed must be a whole number in 0..{2**32 - 1}, got {seed!r}")
    shape = shape if shape is not None else (CT_SHAPE if kind == "ct" else FUNDUS_SHAPE)
    want = 3 if kind == "ct" else 2
    if (
        not isinstance(shape, (list, tuple)) or len(shape) != want
        or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 4
                   for s in shape)
    ):
        raise DataError(f"phantom {kind} shape must be {want} whole sizes >= 4, got {shape!r}")
    return tuple(shape)


def default_phantom_root(kind: str, n_train: int, n_test: int, shape, seed: int) -> Path:
    """Cache folder for a phantom with these settings (one folder per setting)."""
    shape = _checked(kind, n_train, n_test, shape, seed)
    tag = "x".join(str(int(s)) for s in shape)
    return io.cache_root() / (
        f"phantom-{kind}-v{GENERATOR_VERSION}-{n_train}-{n_test}-{tag}-s{seed}"
    )
