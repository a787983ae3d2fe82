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
- ``"channels"``: ``{"kind": "channels", "channels": [spec0, spec1, ...]}``, one spec per
  input channel (axis 0 of the array).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unetzoo.errors import DataError

SYNAPSE_WINDOW = (-125.0, 275.0)
KINDS = ("none", "ct", "range", "zscore", "percentile", "channels")


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


def _check(spec: Any) -> str:
    if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
        raise DataError(
            f"bad preprocessing spec {spec!r}; expected a dict with 'kind' in {KINDS}"
        )
    return spec["kind"]


def normalize(array: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Apply ``spec`` to raw intensities and return float32 of the same shape.

    ``array`` is any shape; for ``"channels"`` axis 0 is the channel axis and must have
    one entry per channel spec. Per-volume statistics (z-score, percentile) are computed
    over the whole array given, so pass one case (one channel) at a time.
    """
    kind = _check(spec)
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
