"""Intensity normalisation specs: JSON-able dicts that a checkpoint stores so prediction
applies exactly what training saw.

Kinds (``spec["kind"]``):

- ``"none"``: values are already normalised (Synapse/ACDC npz files).
- ``"ct"``: clip to ``window`` (default the Synapse window ``[-125, 275]`` HU) and scale
  linearly to ``[0, 1]``.
- ``"range"``: ``(x - low) / (high - low)`` without clipping (8-bit images: 0..255).
- ``"zscore"``: per-volume ``(x - mean) / std``; with ``"nonzero": true`` the statistics
  come from voxels ``!= 0`` only and zero voxels stay 0 (skull-stripped MRI).
- ``"percentile"``: clip to the per-volume ``lower`` / ``upper`` percentiles (default 0.5
  / 99.5) and scale to ``[0, 1]``.
- ``"ct_zscore"``: nnU-Net's CT normalisation with statistics fixed by a plan
  (:mod:`unetzoo.data.plan`): clip to ``clip`` ``[low, high]`` (the training foreground's
  0.5 / 99.5 percentiles), then ``(x - mean) / std`` (the foreground's mean and sd).
- ``"channels"``: ``{"kind": "channels", "channels": [spec0, spec1, ...]}``, one spec per
  input channel (axis 0 of the array).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from unetzoo.errors import DataError

SYNAPSE_WINDOW = (-125.0, 275.0)
#: Full scale of 12-bit pictures stored as 16 bits (:func:`display_bit_depth`).
TWELVE_BIT = 4095
KINDS = ("none", "ct", "range", "zscore", "percentile", "ct_zscore", "channels")


def ct_spec(window: tuple[float, float] = SYNAPSE_WINDOW) -> dict[str, Any]:
    """CT clip + scale spec (default the Synapse window [-125, 275] HU -> [0, 1])."""
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise DataError(f"CT window {window} must be (low, high) with high > low")
    return {"kind": "ct", "window": [lo, hi]}


def mri_spec(method: str = "zscore") -> dict[str, Any]:
    """MRI spec: ``"zscore"`` (per volume) or ``"percentile"`` (0.5-99.5 % to [0, 1])."""
    if method == "zscore":
        return {"kind": "zscore", "nonzero": False}
    if method == "percentile":
        return {"kind": "percentile", "lower": 0.5, "upper": 99.5}
    raise DataError(f"unknown MRI normalisation {method!r}; use 'zscore' or 'percentile'")


def _finite_pair(spec: dict[str, Any], lo_key: str, hi_key: str, default: tuple) -> tuple:
    try:
        lo, hi = float(spec.get(lo_key, default[0])), float(spec.get(hi_key, default[1]))
    except (TypeError, ValueError):
        lo = hi = math.nan
    return lo, hi


def check_spec(spec: Any) -> str:
    """The spec's kind, after checking its values; one :class:`DataError` otherwise.

    A zero-width or reversed intensity range (``ct`` window, ``range`` low/high,
    ``percentile`` bounds) would divide by zero or flip contrast and the model would
    then predict background everywhere without a word, so it is refused here.
    """
    if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
        raise DataError(
            f"bad preprocessing spec {spec!r}; expected a dict with 'kind' in {KINDS}"
        )
    kind = spec["kind"]
    bad = None
    if kind == "ct":
        window = spec.get("window", SYNAPSE_WINDOW)
        if not isinstance(window, (list, tuple)) or len(window) != 2:
            bad = "'window' must be [low, high]"
        else:
            lo, hi = _finite_pair({"lo": window[0], "hi": window[1]}, "lo", "hi", (0, 0))
            if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                bad = f"CT window {list(window)} must be finite with high > low"
    elif kind == "range":
        lo, hi = _finite_pair(spec, "low", "high", (0.0, 255.0))
        if not (math.isfinite(lo) and math.isfinite(hi) and hi != lo):
            bad = f"range low={spec.get('low')} high={spec.get('high')} must be finite and differ"
    elif kind == "percentile":
        lo, hi = _finite_pair(spec, "lower", "upper", (0.5, 99.5))
        if not 0.0 <= lo < hi <= 100.0:
            bad = (f"percentiles lower={spec.get('lower')} upper={spec.get('upper')} must "
                   "satisfy 0 <= lower < upper <= 100")
    elif kind == "ct_zscore":
        clip = spec.get("clip")
        ok = isinstance(clip, (list, tuple)) and len(clip) == 2
        lo, hi = _finite_pair({"lo": clip[0], "hi": clip[1]}, "lo", "hi", (0, 0)) if ok else (0, 0)
        mean, std = _finite_pair(spec, "mean", "std", (math.nan, math.nan))
        if not (ok and math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            bad = f"'clip' must be [low, high] with high > low, got {clip!r}"
        elif not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            bad = f"mean {spec.get('mean')!r} and std {spec.get('std')!r} must be finite, std > 0"
    elif kind == "channels":
        subs = spec.get("channels")
        if not isinstance(subs, list) or not subs:
            bad = "'channels' must be a non-empty list of specs"
        else:
            for sub in subs:
                check_spec(sub)
    if bad:
        raise DataError(f"bad preprocessing spec {spec!r}: {bad}")
    return kind



def normalize(array: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Apply ``spec`` to raw intensities and return float32 of the same shape.

    ``array`` is any shape; for ``"channels"`` axis 0 is the channel axis and must have
    one entry per channel spec. Per-volume statistics (z-score, percentile) are computed
    over the whole array given, so pass one case (one channel) at a time.
    """
    kind = check_spec(spec)
    x = np.asarray(array, dtype=np.float32)
    if kind == "none":
        return x
    if kind == "channels":
        subs = spec.get("channels") or []
        if x.shape[0] != len(subs):
            raise DataError(
                f"preprocessing has {len(subs)} channel specs but the array has "
                f"{x.shape[0]} channels on axis 0"
            )
        return np.stack([normalize(x[c], s) for c, s in enumerate(subs)]).astype(np.float32)
    if kind == "ct":
        lo, hi = (float(v) for v in spec.get("window", SYNAPSE_WINDOW))
        return ((np.clip(x, lo, hi) - lo) / (hi - lo)).astype(np.float32)
    if kind == "ct_zscore":
        lo, hi = (float(v) for v in spec["clip"])
        return ((np.clip(x, lo, hi) - float(spec["mean"])) / float(spec["std"])).astype(np.float32)
    if kind == "range":
        lo, hi = float(spec.get("low", 0.0)), float(spec.get("high", 255.0))
        return ((x - lo) / (hi - lo)).astype(np.float32)
    if kind == "zscore":
        sel = x[x != 0] if spec.get("nonzero") else x
        if sel.size == 0:
            return np.zeros_like(x)
        mean, std = float(sel.mean()), float(sel.std())
        out = (x - mean) / max(std, 1e-8)
        if spec.get("nonzero"):
            out[x == 0] = 0.0
        return out.astype(np.float32)
    # percentile
    lo, hi = np.percentile(x, [float(spec.get("lower", 0.5)), float(spec.get("upper", 99.5))])
    if hi <= lo:
        return np.zeros_like(x)
    return ((np.clip(x, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def display_bit_depth(array: np.ndarray) -> int | None:
    """The full-scale value of an 8/16-bit picture (255, 65535; 1 for bool), else None.

    Unsigned integer pixels (PNG, JPEG, most TIFF) are display renderings; signed or
    float pixels (a CT slice in HU saved as int16 TIFF) are raw intensities. A 16-bit
    picture whose values stay within 12 bits (0..4095: DICOM's usual depth, exported to a
    16-bit PNG) is 12-bit: scaled by 65535 it would be 1/16 as bright.
    """
    if array.dtype == np.bool_:
        return 1
    if array.dtype == np.uint16 and array.size and int(array.max()) <= TWELVE_BIT:
        return TWELVE_BIT  # 12-bit data in a 16-bit container (DICOM exports)
    if np.issubdtype(array.dtype, np.unsignedinteger):
        return int(np.iinfo(array.dtype).max)
    return None


def normalize_picture(array: np.ndarray, spec: dict[str, Any], bit_depth: int | None) -> np.ndarray:
    """Model input of a 2-D picture ``(C, ...)``: the demo's rule, shared with ``predict``.

    A display rendering (``bit_depth`` set) is scaled to ``[0, 1]`` by its depth, which
    is what a windowed CT or a normalised MRI slice saved as PNG was scaled from, unless
    the spec names its own pixel scale (``"range"``) or per-image statistics
    (``"zscore"``, ``"percentile"``). Applying a CT window in HU to 0..255 pixels instead
    agreed with the NIfTI prediction of the same slice on 36.6 % of pixels.
    """
    kind = check_spec(spec)
    if bit_depth and kind not in ("range", "zscore", "percentile"):
        return (np.asarray(array, dtype=np.float32) / float(bit_depth)).astype(np.float32)
    if kind == "channels" or array.shape[0] == 1:
        return normalize(array, spec)
    return np.stack([normalize(ch, spec) for ch in array]).astype(np.float32)


def spec_for_channel(name: str, *, ct_window=SYNAPSE_WINDOW, mri: str = "zscore") -> dict:
    """Spec for an nnU-Net ``channel_names`` entry: ``"CT"`` -> CT window, ``"noNorm"`` ->
    none, ``"rescale_to_0_1"`` -> percentile 0-100, anything else (T1, T2, FLAIR, ADC, MRI,
    ...) -> the MRI method."""
    key = str(name).strip().lower()
    if key == "ct":
        return ct_spec(tuple(ct_window))
    if key in ("nonorm", "none"):
        return {"kind": "none"}
    if key == "rescale_to_0_1":
        return {"kind": "percentile", "lower": 0.0, "upper": 100.0}
    return mri_spec(mri)


# -- the input fingerprint --------------------------------------------------------------------
#: Statistics of one channel's raw intensities that a checkpoint stores (whole image).
FINGERPRINT_KEYS = ("p0_5", "p99_5", "mean", "sd")
#: Voxels sampled per case for the statistics (a regular stride; exact below this size).
FINGERPRINT_SAMPLE = 1_000_000
#: An input whose intensity range is this many times wider or narrower than the training
#: data's is "far outside" (12-bit data read as 16 bits is 16x; CT vs MRI windows ~3x).
FINGERPRINT_SCALE = 8.0
#: Normalisations that do not depend on the intensity scale (per-image statistics).
SCALE_FREE_KINDS = ("zscore", "percentile")


def channel_stats(values: np.ndarray) -> dict[str, float]:
    """:data:`FINGERPRINT_KEYS` of one channel's intensities (any shape, sampled)."""
    flat = np.asarray(values).ravel()
    flat = flat[:: max(1, flat.size // FINGERPRINT_SAMPLE)].astype(np.float64)
    lo, hi = np.percentile(flat, [0.5, 99.5])
    return {"p0_5": float(lo), "p99_5": float(hi), "mean": float(flat.mean()),
            "sd": float(flat.std())}


def intensity_fingerprint(
    images: list[np.ndarray], modality: str | None, space: str = "raw"
) -> dict[str, Any]:
    """The training data's intensity fingerprint: per channel the median over ``images``
    (``(C, ...)`` arrays, one per case) of :func:`channel_stats`, the modality and the
    ``space`` of the values: ``"raw"`` intensities (volumes) or ``"normalised"`` model
    inputs (pictures, whose raw scale is their bit depth)."""
    per_case = [[channel_stats(img[c]) for c in range(img.shape[0])] for img in images]
    channels = [{k: float(np.median([case[c][k] for case in per_case])) for k in FINGERPRINT_KEYS}
                for c in range(len(per_case[0]))]
    return {"modality": None if modality is None else str(modality), "cases": len(images),
            "space": space, "channels": channels}


def check_fingerprint(data: Any) -> dict[str, Any]:
    """A stored fingerprint, checked (one :class:`DataError` when it cannot be one)."""
    chans = data.get("channels") if isinstance(data, dict) else None
    ok = isinstance(chans, list) and chans and all(
        isinstance(c, dict) and all(
            isinstance(c.get(k), (int, float)) and not isinstance(c.get(k), bool)
            and math.isfinite(c[k]) for k in FINGERPRINT_KEYS) for c in chans)
    if not ok:
        raise DataError(f"bad intensity fingerprint {data!r}: expected per-channel "
                        f"{', '.join(FINGERPRINT_KEYS)}")
    modality, space = data.get("modality"), data.get("space", "raw")
    if space not in ("raw", "normalised"):
        raise DataError(f"bad intensity fingerprint space {space!r}: 'raw' or 'normalised'")
    return {"modality": None if modality is None else str(modality),
            "cases": int(data.get("cases") or 0), "space": space,
            "channels": [{k: float(c[k]) for k in FINGERPRINT_KEYS} for c in chans]}


def intensity_mismatch(
    array: np.ndarray, fingerprint: dict[str, Any], scale_free: bool = False
) -> str | None:
    """Why raw ``array`` ``(C, ...)`` is far outside the training ``fingerprint``, in a
    few words, or None. Far: negative intensities where training had none (CT in HU into
    an MRI model) or none where training's 0.5th percentile was well below zero (MRI into
    a CT model); unless the normalisation is ``scale_free``, also a range more than
    :data:`FINGERPRINT_SCALE` times wider or narrower (12-bit data read as 16 bits) or
    not overlapping the training range at all."""
    for c, trained in enumerate(fingerprint["channels"][: array.shape[0]]):
        have = channel_stats(array[c])
        lo, hi = trained["p0_5"], trained["p99_5"]
        width = max(hi - lo, abs(hi), 1e-6)
        width_in = max(have["p99_5"] - have["p0_5"], 1e-12)
        span = (f"0.5-99.5 percentiles {have['p0_5']:.4g}..{have['p99_5']:.4g}, "
                f"training {lo:.4g}..{hi:.4g}")
        name = f"channel {c}: " if len(fingerprint["channels"]) > 1 else ""
        if lo >= -0.05 * width and have["p0_5"] < lo - 0.25 * width:
            return f"{name}negative intensities where the training data had none ({span})"
        if lo < -0.25 * width and have["p0_5"] >= 0:
            return f"{name}no negative intensities where the training data had them ({span})"
        if scale_free:
            continue
        ratio = width_in / max(hi - lo, 1e-12)
        if not 1 / FINGERPRINT_SCALE <= ratio <= FINGERPRINT_SCALE:
            return (f"{name}intensity range {ratio:.3g}x the training data's ({span}; 12-bit "
                    "data stored as 16 bits is 1/16)")
        if have["p99_5"] < lo or have["p0_5"] > hi:
            return f"{name}intensities outside the training range ({span})"
    return None


def scale_free(spec: dict[str, Any]) -> bool:
    """Whether ``spec`` normalises by per-image statistics only (every channel)."""
    if spec.get("kind") == "channels":
        return all(scale_free(s) for s in spec.get("channels") or [])
    return spec.get("kind") in SCALE_FREE_KINDS
