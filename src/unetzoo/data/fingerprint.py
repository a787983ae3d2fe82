"""A dataset fingerprint (nnU-Net v2's ``dataset_fingerprint.json``, in this project's terms).

What the planner (:mod:`unetzoo.data.plan`) needs to know about a dataset it has never
seen, read once from the raw intensities:

- per case: the array shape ``(D, H, W)`` with ``D`` the slicing axis, and the voxel
  spacing ``(sz, sy, sx)`` mm (the reader's orientation, :mod:`unetzoo.data.nnunet`);
- per input channel: the modality (dataset.json's ``channel_names``) and intensity
  statistics over **foreground** voxels (label > 0) pooled across cases: mean, sd,
  median, 0.5 / 99.5 percentiles, min, max. As nnU-Net, a random sample of each case's
  foreground voxels is pooled (:data:`SAMPLES_PER_CASE` per case, seed 1234);
- the share of all voxels that each class holds.

Deviations from nnU-Net's fingerprint extractor: it crops each case to its nonzero
bounding box first and keeps only the cropped data (here: the full array is kept; the
box, ``cropped_shape``, and the share it keeps, ``nonzero_share``, are recorded), draws
``1e8 / cases`` samples per case with replacement (here: at most
:data:`SAMPLES_PER_CASE`, without replacement), and records no class shares.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unetzoo.errors import DataError

#: Foreground voxels sampled per case and channel for the intensity statistics.
SAMPLES_PER_CASE = 100_000
#: nnU-Net's seed for the foreground sample.
SAMPLE_SEED = 1234
FINGERPRINT_VERSION = 1


@dataclass(frozen=True)
class ChannelStats:
    """Foreground intensity statistics of one input channel (raw values)."""

    modality: str
    mean: float
    sd: float
    median: float
    p00_5: float
    p99_5: float
    min: float
    max: float

    @classmethod
    def of(cls, modality: str, values: np.ndarray) -> ChannelStats:
        v = np.asarray(values, dtype=np.float64)
        if v.size == 0:  # no foreground at all: the whole-image stats stand in upstream
            return cls(modality, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        lo, med, hi = np.percentile(v, [0.5, 50.0, 99.5])
        return cls(modality, float(v.mean()), float(v.std()), float(med), float(lo),
                   float(hi), float(v.min()), float(v.max()))


@dataclass(frozen=True)
class CaseShape:
    """One training case: ``shape`` ``(D, H, W)``, ``spacing`` ``(sz, sy, sx)`` mm and
    ``nonzero_share``, the share of the array inside the bounding box of its nonzero
    voxels (any channel; nnU-Net's crop), which decides mask-based normalisation."""

    case: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    nonzero_share: float = 1.0
    #: ``(D, H, W)`` of the nonzero bounding box (nnU-Net's shape after cropping).
    cropped_shape: tuple[int, int, int] | None = None

    @property
    def plan_shape(self) -> tuple[int, int, int]:
        """The shape the planner uses: after cropping to nonzero, as nnU-Net plans."""
        return self.cropped_shape or self.shape


@dataclass(frozen=True)
class Fingerprint:
    """The dataset fingerprint (see the module docstring); JSON round-trip with
    :meth:`to_dict` / :meth:`from_dict`, :meth:`save` / :meth:`load`."""

    dataset: str
    class_names: tuple[str, ...]
    channels: tuple[ChannelStats, ...]
    cases: tuple[CaseShape, ...]
    class_shares: tuple[float, ...]
    spacing_known: bool = True
    version: int = field(default=FINGERPRINT_VERSION)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(c.modality for c in self.channels)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "fingerprint") -> Fingerprint:
        try:
            return cls(
                dataset=str(data["dataset"]),
                class_names=tuple(str(n) for n in data["class_names"]),
                channels=tuple(ChannelStats(**c) for c in data["channels"]),
                cases=tuple(CaseShape(str(c["case"]), tuple(int(s) for s in c["shape"]),
                                      tuple(float(s) for s in c["spacing"]),
                                      float(c.get("nonzero_share", 1.0)),
                                      None if c.get("cropped_shape") is None
                                      else tuple(int(v) for v in c["cropped_shape"]))
                            for c in data["cases"]),
                class_shares=tuple(float(s) for s in data["class_shares"]),
                spacing_known=bool(data.get("spacing_known", True)),
                version=int(data.get("version", FINGERPRINT_VERSION)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: not a unetzoo fingerprint ({exc})") from None

    def save(self, path: str | Path) -> Path:
        from unetzoo.data.io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2))
        return Path(path)


def _sample(values: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if values.size <= n:
        return values
    return values[rng.choice(values.size, n, replace=False)]


def nonzero_box(image: np.ndarray) -> tuple[int, ...]:
    """``(D, H, W)`` of the bounding box of the nonzero voxels of ``image`` ``(C, D, H, W)``
    (any channel); the whole shape when nothing is nonzero."""
    mask = np.any(np.asarray(image) != 0, axis=0)
    if not mask.any():
        return tuple(mask.shape)
    box = []
    for axis in range(mask.ndim):
        hit = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))[0]
        box.append(int(hit[-1] - hit[0] + 1))
    return tuple(box)


def nonzero_share(image: np.ndarray) -> float:
    """Share of ``image`` ``(C, D, H, W)`` inside the bounding box of its nonzero voxels."""
    return float(np.prod(nonzero_box(image))) / float(np.prod(np.shape(image)[1:]))


def raw_reader(ds: Any):
    """``read(case_id, split) -> Case`` with raw (un-normalised) intensities: an nnU-Net
    reader's uncached read when its spec is ``none``; else the reader's own cases."""
    read = getattr(ds, "read_case", None)
    return read if read is not None else ds.load_case


def fingerprint_dataset(ds: Any, split: str = "train", *, verbose: bool = False,
                        samples_per_case: int = SAMPLES_PER_CASE) -> Fingerprint:
    """Fingerprint the labelled cases of ``split`` of ``ds``.

    ``ds`` should read raw intensities (an nnU-Net reader opened with
    ``preprocessing={"kind": "none"}``, see :func:`unetzoo.data.plan.open_raw`): the
    statistics are of whatever ``ds`` returns. A case without a label is a DataError.
    """
    rng = np.random.default_rng(SAMPLE_SEED)
    read = raw_reader(ds)
    cases: list[CaseShape] = []
    pooled: list[list[np.ndarray]] = [[] for _ in range(ds.in_channels)]
    counts = np.zeros(ds.num_classes, dtype=np.int64)
    known = True
    for cid in ds.cases(split):
        case = read(cid, split)
        if case.label is None:
            raise DataError(f"{ds.name}: case {cid!r} has no label; the fingerprint needs labels")
        # a reader without an affine (2-D pictures, Synapse npz) knows no spacing
        known = known and bool(getattr(case, "spacing_known", case.affine is not None))
        cases.append(CaseShape(str(cid), tuple(int(s) for s in case.image.shape[1:]),
                               tuple(float(s) for s in case.spacing),
                               nonzero_share(case.image), nonzero_box(case.image)))
        label = np.asarray(case.label)
        fg = label > 0
        for c in range(ds.in_channels):
            pooled[c].append(_sample(np.asarray(case.image[c])[fg], samples_per_case, rng))
        valid = label[label < ds.num_classes]  # the ignore label is no class
        counts += np.bincount(valid.ravel(), minlength=ds.num_classes)[: ds.num_classes]
        if verbose:
            print(f"fingerprint {cid}: shape {cases[-1].shape}, spacing "
                  f"{' x '.join(f'{s:.3g}' for s in cases[-1].spacing)} mm", flush=True)
    modalities = list(getattr(ds, "channel_names", None) or [ds.modality] * ds.in_channels)
    channels = tuple(ChannelStats.of(str(m), np.concatenate(v) if v else np.zeros(0))
                     for m, v in zip(modalities, pooled))
    total = max(int(counts.sum()), 1)
    return Fingerprint(
        dataset=str(getattr(ds, "title", None) or ds.name), class_names=tuple(ds.class_names),
        channels=channels, cases=tuple(cases),
        class_shares=tuple(float(n) / total for n in counts), spacing_known=known,
    )
