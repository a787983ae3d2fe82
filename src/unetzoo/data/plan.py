"""A training plan from the data: nnU-Net v2's 2-D configuration in this project's terms.

``unetzoo plan --data-root D`` writes it as ``plans.json``; ``unetzoo train --data-root D``
makes one itself when the dataset has no source recipe (the ``default`` recipe of an
nnU-Net raw folder) and records it in the run folder (``plans.json``) and, as a
:class:`SlicePlan`, in the checkpoint's inference spec, so ``test`` and ``predict``
reproduce the training preprocessing from the checkpoint alone. docs/planning.md gives
the rules and how they relate to nnU-Net's.

From a :class:`~unetzoo.data.fingerprint.Fingerprint` (:func:`make_plan`):

- target in-plane spacing: the median of the cases' in-plane spacings (per axis);
- patch side: the largest side of the median slice shape (cropped to the nonzero bounding
  box, as nnU-Net plans) after resampling, rounded up to a
  multiple of :data:`STRIDE`, capped at :data:`MAX_PATCH` (square: the zoo's
  augmentations rotate by 90 degrees); slices larger than the patch are predicted with
  Gaussian sliding windows;
- batch size: :data:`PIXEL_BUDGET` pixels per batch, at least :data:`MIN_BATCH`, at most
  5 % of the dataset's resampled pixels (nnU-Net's cap);
- normalisation per channel by modality: CT clipped to the foreground's 0.5-99.5
  percentiles and z-scored with the foreground mean and sd (``ct_zscore``); ``noNorm``
  none; ``rescale_to_0_1`` min-max; anything else z-scored per image (over its nonzero
  voxels when cropping to them would keep less than 3/4 of the median case);
- the model (:data:`DEFAULT_MODEL`), the augmentation recipe (:data:`DEFAULT_AUGMENT`) and
  the number of iterations (``iterations`` and/or a time budget over a measured step
  time; :data:`DEFAULT_ITERATIONS` otherwise).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from unetzoo.data.base import SliceDataset
from unetzoo.data.fingerprint import Fingerprint
from unetzoo.errors import ConfigError, DataError

#: Every planned input side is a multiple of this (five 2x poolings: ResNet encoders).
STRIDE = 32
#: The largest patch side (a memory cap; larger slices use sliding windows).
MAX_PATCH = 512
#: Pixels per batch (8 slices of 256 x 256: the default recipe's batch 8 at ~224 px).
PIXEL_BUDGET = 8 * 256 * 256
#: nnU-Net's minimum batch size and its cap: one batch covers at most 5 % of the data.
MIN_BATCH = 2
MAX_DATASET_SHARE = 0.05
#: The best measured learner of the project's real-data table (benchmarks/README.md).
DEFAULT_MODEL = "resnet34_unet"
#: Augmentation: the TransUNet recipe cost 0.07 mean Dice at ~200 iterations on real MRI
#: (issue 24's table); random patch crops remain. Item 3 of issue 24 measures the choice.
DEFAULT_AUGMENT = "none"
#: Iterations when neither ``iterations`` nor a time budget is given.
DEFAULT_ITERATIONS = 1000
#: Share of training patches centred on a foreground pixel (nnU-Net: 0.33).
FOREGROUND_OVERSAMPLING = 0.33
#: Z-scores use the nonzero voxels when the nonzero crop keeps less than this share
#: of the median case (nnU-Net's ``use_mask_for_norm`` rule).
NONZERO_CROP_SHARE = 0.75
#: Share of training cases held out for validation by the default configuration, when
#: there are at least VALIDATION_MIN_CASES of them. The final checkpoint is scored by
#: default, so validation is only a curve; on fewer cases one held-out case cost more
#: than the curve is worth (mni_dk, 9 cases, ~200 iterations, seed 0: 0.184 with 1 case
#: held out, 0.244 with none; benchmarks/README.md).
VAL_FRACTION = 0.1
VALIDATION_MIN_CASES = 20
PLAN_VERSION = 1


# ------------------------------------------------------------------ inference part
@dataclass(frozen=True)
class SlicePlan:
    """What inference needs of a plan (stored in the checkpoint's inference spec):
    slices are resampled in-plane to ``target_spacing`` ``(sy, sx)`` mm and predicted in
    ``patch_size`` ``(h, w)`` windows; the probabilities go back to the input grid."""

    target_spacing: tuple[float, float]
    patch_size: tuple[int, int]

    def resampled_shape(self, hw: tuple[int, int],
                        spacing: tuple[float, ...] | None) -> tuple[int, int]:
        """``(h, w)`` of a slice of ``hw`` pixels at in-plane ``spacing`` (its last two
        values; None: already at the target) after resampling to the target spacing."""
        if spacing is None:
            return int(hw[0]), int(hw[1])
        sy, sx = (float(s) for s in tuple(spacing)[-2:])
        ty, tx = self.target_spacing
        return (max(1, int(round(hw[0] * sy / ty))), max(1, int(round(hw[1] * sx / tx))))

    def slice_dataset(self, source, split: str, index, transform=None, *,
                      seed: int = 0) -> PlannedSliceDataset:
        """The training slices of ``source`` under this plan (``SegDataset.slice_dataset``
        of a dataset that carries ``plan``)."""
        return PlannedSliceDataset(source, split, index, transform, seed=seed, plan=self)

    def to_dict(self) -> dict[str, Any]:
        return {"target_spacing": [float(s) for s in self.target_spacing],
                "patch_size": [int(s) for s in self.patch_size]}

    @classmethod
    def from_dict(cls, data: Any, where: str = "plan") -> SlicePlan:
        """Read and check; one DataError line when a value cannot be right."""
        try:
            spacing = tuple(float(s) for s in data["target_spacing"])
            patch = tuple(data["patch_size"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where}: a plan needs target_spacing [sy, sx] and patch_size "
                            f"[h, w], got {data!r}") from None
        if len(spacing) != 2 or not all(math.isfinite(s) and s > 0 for s in spacing):
            raise DataError(f"{where}: target_spacing must be two positive numbers, got "
                            f"{list(spacing)}")
        if len(patch) != 2 or not all(
                isinstance(p, int) and not isinstance(p, bool) and 8 <= p <= 4096 for p in patch):
            raise DataError(f"{where}: patch_size must be two whole numbers in 8..4096, got "
                            f"{list(patch)}")
        return cls((spacing[0], spacing[1]), (int(patch[0]), int(patch[1])))


def view_spacing(spacing: tuple[float, ...] | None, view: Any) -> tuple[float, ...] | None:
    """``spacing`` ``(sz, sy, sx)`` of an array after ``view`` (a
    :class:`~unetzoo.data.geometry.Reorientation`, or None) permuted its axes."""
    if spacing is None or view is None:
        return spacing
    return tuple(spacing[p] for p in view.perm)


def resample_slice(image: np.ndarray, label: np.ndarray | None,
                   shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """``image`` ``(C, H, W)`` (cubic spline) and ``label`` ``(H, W)`` (nearest) to
    ``shape``, with ``scipy.ndimage.zoom``: the map :func:`unetzoo.engine.inference.
    resize_cubic` applies at inference (first and last pixel centres aligned)."""
    h, w = image.shape[-2:]
    if (h, w) == tuple(shape):
        return image, label
    factors = (shape[0] / h, shape[1] / w)
    img = np.stack([ndimage.zoom(np.asarray(ch, dtype=np.float32), factors, order=3)
                    for ch in image]).astype(np.float32)
    lab = None if label is None else ndimage.zoom(np.asarray(label), factors, order=0)
    return img, lab


def crop_patch(image: np.ndarray, label: np.ndarray, patch: tuple[int, int],
               rng: np.random.Generator, foreground: float = FOREGROUND_OVERSAMPLING):
    """A ``patch`` of ``(image (C, H, W), label (H, W))``: zero-padded (centred) where
    the slice is smaller, then a random crop; with probability ``foreground`` (and a
    foreground pixel present) centred on a random pixel of a random foreground class
    (nnU-Net's oversampling)."""
    ph, pw = patch
    h, w = label.shape
    py, px = max(ph - h, 0), max(pw - w, 0)
    if py or px:
        pads = ((py // 2, py - py // 2), (px // 2, px - px // 2))
        image = np.pad(image, ((0, 0), *pads))
        label = np.pad(label, pads)
        h, w = label.shape
    y0 = int(rng.integers(0, h - ph + 1))
    x0 = int(rng.integers(0, w - pw + 1))
    if rng.random() < foreground:
        classes = [c for c in np.unique(label) if c > 0]
        if classes:
            c = classes[int(rng.integers(0, len(classes)))]
            ys, xs = np.nonzero(label == c)
            k = int(rng.integers(0, len(ys)))
            y0 = int(np.clip(ys[k] - ph // 2, 0, h - ph))
            x0 = int(np.clip(xs[k] - pw // 2, 0, w - pw))
    return (np.ascontiguousarray(image[:, y0:y0 + ph, x0:x0 + pw]),
            np.ascontiguousarray(label[y0:y0 + ph, x0:x0 + pw]))


class PlannedSliceDataset(SliceDataset):
    """Training slices of a planned dataset: each slice resampled in-plane to the plan's
    spacing (its case's spacing known up front), then a patch cropped
    (:func:`crop_patch`) before the augmentation ``transform``."""

    def __init__(self, source, split: str, index, transform=None, *, seed: int = 0,
                 plan: SlicePlan) -> None:
        super().__init__(source, split, index, transform, seed=seed)
        self.plan = plan
        header = getattr(source, "case_spacing", None)
        self.spacings = {
            cid: tuple(header(cid, split)) if header else tuple(source.load_case(cid, split).spacing)
            for cid in sorted({c for c, _ in index})
        }

    def _prepare(self, case_id: str, image: np.ndarray, label: np.ndarray):
        shape = self.plan.resampled_shape(label.shape, self.spacings[case_id])
        image, label = resample_slice(image, label, shape)
        return crop_patch(image, label, self.plan.patch_size, self.rng)


# ------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class Plan:
    """A training configuration planned from a fingerprint (``plans.json``)."""

    dataset: str
    modalities: tuple[str, ...]
    target_spacing: tuple[float, float]
    median_shape: tuple[int, int]
    patch_size: int
    batch_size: int
    normalisation: dict[str, Any]
    model: str
    augment: str
    iterations: int
    iterations_rule: str
    max_epochs: int
    step_seconds: float | None
    fingerprint: Fingerprint
    version: int = PLAN_VERSION
    val_fraction: float = VAL_FRACTION

    @property
    def slice_plan(self) -> SlicePlan:
        return SlicePlan(self.target_spacing, (self.patch_size, self.patch_size))

    def config_values(self) -> dict[str, Any]:
        """The training configuration keys this plan decides (flags and YAML win)."""
        return {
            "model": self.model, "img_size": self.patch_size, "batch_size": self.batch_size,
            "augment": self.augment, "max_epochs": self.max_epochs,
            "max_iterations": None if self.iterations_rule == "--max-epochs" else self.iterations,
            "val_fraction": self.val_fraction,
            "eval_interval": max(1, self.max_epochs // 10),
            "dataset_options": {"preprocessing": self.normalisation},
        }

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "fingerprint"}
        out["fingerprint"] = self.fingerprint.to_dict()
        return json.loads(json.dumps(out))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "plans.json") -> Plan:
        try:
            return cls(
                dataset=str(data["dataset"]), modalities=tuple(data["modalities"]),
                target_spacing=tuple(float(s) for s in data["target_spacing"]),
                median_shape=tuple(int(s) for s in data["median_shape"]),
                patch_size=int(data["patch_size"]), batch_size=int(data["batch_size"]),
                normalisation=dict(data["normalisation"]), model=str(data["model"]),
                augment=str(data["augment"]), iterations=int(data["iterations"]),
                iterations_rule=str(data["iterations_rule"]),
                max_epochs=int(data["max_epochs"]),
                step_seconds=None if data.get("step_seconds") is None else float(data["step_seconds"]),
                fingerprint=Fingerprint.from_dict(data["fingerprint"], where),
                version=int(data.get("version", PLAN_VERSION)),
                val_fraction=float(data.get("val_fraction", VAL_FRACTION)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: not a unetzoo plan ({exc})") from None

    def save(self, path: str | Path) -> Path:
        from unetzoo.data.io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        from unetzoo.data.io import read_json

        return cls.from_dict(read_json(Path(path)), str(path))

    def summary(self) -> str:
        sp = " x ".join(f"{s:.3g}" for s in self.target_spacing)
        return (f"plan for {self.dataset}: {'/'.join(self.modalities)}, spacing {sp} mm, "
                f"median slice {self.median_shape[0]} x {self.median_shape[1]} -> patch "
                f"{self.patch_size} px, batch {self.batch_size}, model {self.model}, augment "
                f"{self.augment}, validation "
                + (f"{self.val_fraction:g} of the cases, " if self.val_fraction else
                   f"none ({len(self.fingerprint.cases)} cases < {VALIDATION_MIN_CASES}), ")
                + (f"{self.max_epochs} epochs (--max-epochs)"
                if self.iterations_rule == "--max-epochs" else
                f"{self.iterations} iterations ({self.iterations_rule}; {self.max_epochs} "
                "epochs)"))


def channel_normalisation(stats, nonzero: bool = False) -> dict[str, Any]:
    """The intensity spec of one channel by its modality (see the module docstring);
    ``nonzero``: z-scores use the nonzero voxels only (nnU-Net's ``use_mask_for_norm``)."""
    from unetzoo.data.preprocessing import spec_for_channel

    key = stats.modality.strip().lower()
    if key == "ct":
        lo, hi = stats.p00_5, stats.p99_5
        if not hi > lo:  # a constant foreground: clip to a unit window around it
            lo, hi = lo - 0.5, lo + 0.5
        return {"kind": "ct_zscore", "clip": [lo, hi], "mean": stats.mean,
                "std": max(stats.sd, 1e-8)}
    spec = spec_for_channel(stats.modality)
    if spec["kind"] == "zscore" and nonzero:
        spec["nonzero"] = True
    return spec


def _round_up(n: float, multiple: int) -> int:
    return max(multiple, int(math.ceil(n / multiple)) * multiple)


def make_plan(
    fp: Fingerprint,
    *,
    model: str = DEFAULT_MODEL,
    iterations: int | None = None,
    time_budget: float | None = None,
    step_seconds: float | None = None,
) -> Plan:
    """The plan of ``fp`` (rules in the module docstring).

    ``time_budget`` (minutes) needs ``step_seconds`` (one training step at the planned
    patch and batch, :func:`measure_step_seconds`); with ``iterations`` as well the
    smaller count wins.
    """
    if not fp.cases:
        raise DataError(f"{fp.dataset}: no training cases to plan from")
    spacings = np.array([c.spacing[1:] for c in fp.cases], dtype=np.float64)
    target = tuple(float(s) for s in np.median(spacings, axis=0))
    sp = SlicePlan((target[0], target[1]), (STRIDE, STRIDE))
    shapes = np.array([sp.resampled_shape(c.plan_shape[1:], c.spacing) for c in fp.cases])
    median = tuple(int(round(s)) for s in np.median(shapes, axis=0))
    patch = min(_round_up(max(median), STRIDE), MAX_PATCH)
    # nnU-Net's dataset size: the median resampled (D, H, W) times the number of cases
    depth = float(np.median([c.plan_shape[0] for c in fp.cases]))
    pixels = depth * median[0] * median[1] * len(fp.cases)
    batch = max(PIXEL_BUDGET // patch**2, MIN_BATCH)
    batch = max(min(batch, int(round(MAX_DATASET_SHARE * pixels / patch**2))), MIN_BATCH)
    # nnU-Net: z-score inside the nonzero mask when cropping to it keeps < 3/4 of the data
    nonzero = float(np.median([c.nonzero_share for c in fp.cases])) < NONZERO_CROP_SHARE
    specs = [channel_normalisation(c, nonzero) for c in fp.channels]
    norm = specs[0] if len(specs) == 1 else {"kind": "channels", "channels": specs}
    its, rule = _iterations(iterations, time_budget, step_seconds)
    val_fraction = VAL_FRACTION if len(fp.cases) >= VALIDATION_MIN_CASES else 0.0
    slices = sum(c.shape[0] for c in fp.cases) * (1 - val_fraction)
    per_epoch = max(1, int(slices // batch))
    return Plan(
        dataset=fp.dataset, modalities=fp.modalities, target_spacing=(target[0], target[1]),
        median_shape=(median[0], median[1]), patch_size=patch, batch_size=batch,
        normalisation=norm, model=model, augment=DEFAULT_AUGMENT, iterations=its,
        iterations_rule=rule, max_epochs=max(1, math.ceil(its / per_epoch)),
        step_seconds=step_seconds, fingerprint=fp, val_fraction=val_fraction,
    )


def _iterations(iterations: int | None, minutes: float | None,
                step_seconds: float | None) -> tuple[int, str]:
    if iterations is not None and (isinstance(iterations, bool) or int(iterations) < 1):
        raise ConfigError(f"--iterations must be a whole number >= 1, got {iterations!r}")
    if minutes is None:
        if iterations is None:
            return DEFAULT_ITERATIONS, "default"
        return int(iterations), "--iterations"
    if not (math.isfinite(minutes) and minutes > 0):
        raise ConfigError(f"--time-budget must be a positive number of minutes, got {minutes!r}")
    if not step_seconds or step_seconds <= 0:
        raise ConfigError("--time-budget needs a measured step time")
    by_time = max(1, int(minutes * 60 / step_seconds))
    rule = f"--time-budget {minutes:g} min at {step_seconds:.3g} s/step"
    if iterations is not None and int(iterations) < by_time:
        return int(iterations), "--iterations (within the time budget)"
    return by_time, rule


def measure_step_seconds(model_name: str, in_channels: int, num_classes: int, patch: int,
                         batch: int, device: str = "cpu", steps: int = 3,
                         options: dict[str, Any] | None = None) -> float:
    """Median seconds of one training step (forward, CE loss, backward, AdamW) of
    ``model_name`` (with ``options``) at ``batch`` x ``patch`` px, after one warm-up step."""
    import torch

    from unetzoo.models import create_model

    dev = torch.device(device)
    model = create_model(model_name, in_channels=in_channels, num_classes=num_classes,
                         **(options or {})).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, in_channels, patch, patch, device=dev)
    y = torch.randint(0, num_classes, (batch, patch, patch), device=dev)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        out = model(x)
        out = out[-1] if isinstance(out, (list, tuple)) else out
        loss = torch.nn.functional.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


# ------------------------------------------------------------------ from a folder
def open_raw(name: str | None, root: str | Path, options: dict[str, Any] | None = None):
    """The dataset at ``root`` read with raw intensities (an nnU-Net reader with
    ``preprocessing={"kind": "none"}``); a reader that cannot plan is a ConfigError."""
    from unetzoo.data import get_dataset, guess_dataset

    name = name or guess_dataset(root)
    if name != "nnunet":
        raise ConfigError(f"planning needs an nnU-Net raw folder (dataset.json with "
                          f"channel_names); {root} is read as {name!r}")
    opts = {k: v for k, v in (options or {}).items() if k in ("slice_axis", "cache_dir")}
    return get_dataset(name, root, **opts, preprocessing={"kind": "none"})


def plan_dataset(
    name: str | None,
    root: str | Path,
    options: dict[str, Any] | None = None,
    *,
    model: str = DEFAULT_MODEL,
    iterations: int | None = None,
    time_budget: float | None = None,
    device: str = "cpu",
    verbose: bool = False,
    model_options: dict[str, Any] | None = None,
) -> Plan:
    """Fingerprint the dataset at ``root`` and plan it; with ``time_budget`` the step
    time of the planned model (with ``model_options``), patch and batch is measured on
    ``device`` first."""
    from unetzoo.data.fingerprint import fingerprint_dataset

    ds = open_raw(name, root, options)
    fp = fingerprint_dataset(ds, verbose=verbose)
    plan = make_plan(fp, model=model, iterations=iterations)
    if time_budget is not None:
        step = measure_step_seconds(model, ds.in_channels, ds.num_classes, plan.patch_size,
                                    plan.batch_size, device, options=model_options)
        plan = make_plan(fp, model=model, iterations=iterations, time_budget=time_budget,
                         step_seconds=step)
    return plan


def with_overrides(plan: Plan, values: dict[str, Any]) -> Plan:
    """``plan`` with the keys the user set explicitly (model, img_size, batch_size,
    augment, max_epochs, val_fraction; ``select: best`` brings validation back) recorded
    as used, so ``plans.json`` in the run folder says what ran."""
    changes: dict[str, Any] = {}
    for key, field in (("model", "model"), ("img_size", "patch_size"),
                       ("batch_size", "batch_size"), ("augment", "augment"),
                       ("max_epochs", "max_epochs")):
        if values.get(key) is not None:
            changes[field] = values[key]
    if "max_epochs" in changes:  # the epochs were given: no iteration count was planned
        changes["iterations_rule"] = "--max-epochs"
    if values.get("val_fraction") is not None:
        changes["val_fraction"] = float(values["val_fraction"])
    elif values.get("select") == "best" and not plan.val_fraction:
        changes["val_fraction"] = VAL_FRACTION  # --select best needs validation cases
    return replace(plan, **changes)


# ------------------------------------------------------------------ for `unetzoo train`
def wants_plan(ds: Any, *sources: dict[str, Any]) -> bool:
    """Whether ``train`` plans this run: an nnU-Net raw folder on the ``default`` recipe,
    with no ``--recipe`` / ``--paper-protocol`` and no intensity spec of the user's
    (``--dataset-option preprocessing=...``) in the YAML file or the flags."""
    if getattr(ds, "recipe", None) != "default" or not hasattr(ds, "read_case"):
        return False
    for src in sources:
        if src.get("recipe") is not None or src.get("paper_protocol"):
            return False
        if "preprocessing" in (src.get("dataset_options") or {}):
            return False
    return True


def plan_training(
    name: str | None, root: str | Path, options: dict[str, Any],
    file_values: dict[str, Any], flags: dict[str, Any], *,
    iterations: int | None = None, time_budget: float | None = None, device: str = "cpu",
) -> tuple[Any, dict[str, Any]]:
    """Plan the dataset at ``root`` for ``unetzoo train``: ``(dataset, file_values)``.

    The dataset is reopened with the plan's normalisation and carries ``plan`` (the
    :class:`SlicePlan` that training and the checkpoint use) and ``plan_record`` (the
    :class:`Plan` the trainer writes to ``RUN/plans.json``); the plan's configuration
    keys go under ``file_values`` (the YAML file's and the flags' win). ``device``
    times a step for ``time_budget``.
    """
    from unetzoo.data import get_dataset

    given = {**file_values, **flags}
    plan = plan_dataset(name, root, options, model=given.get("model") or DEFAULT_MODEL,
                        iterations=iterations, time_budget=time_budget, device=device,
                        model_options=dict(given.get("model_options") or {}))
    plan = with_overrides(plan, given)
    print(plan.summary(), flush=True)
    layer = plan.config_values()
    values = {**layer, **file_values}
    values["dataset_options"] = {**layer["dataset_options"],
                                 **(file_values.get("dataset_options") or {})}
    ds = get_dataset(name, root, **{**options, "preprocessing": plan.normalisation})
    ds.plan, ds.plan_record = plan.slice_plan, plan
    return ds, values
