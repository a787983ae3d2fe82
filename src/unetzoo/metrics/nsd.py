"""Normalized surface Dice (NSD, "surface Dice at tolerance tau").

Definition (Nikolov et al. 2021, arXiv:1809.04430; MONAI's ``compute_surface_dice`` with
``use_subvoxels=False``, arXiv:2111.05408):

    NSD = (|{d in D_pred->gt : d <= tau}| + |{d in D_gt->pred : d <= tau}|)
          / (|D_pred->gt| + |D_gt->pred|)

where ``D_pred->gt`` holds, for every surface voxel of the prediction, the Euclidean
distance (in the units of ``spacing``: mm for real spacings) to the nearest surface voxel
of the ground truth, and ``D_gt->pred`` the reverse. A boundary voxel counts as correct
when it lies within ``tau`` of the other boundary. The surfaces and distances are those
of :func:`unetzoo.metrics.surface.surface_distances` (the same voxel-face surface MONAI
uses), so NSD, HD95 and ASSD of a case come from one distance computation. A distance
equal to ``tau`` counts as within it even when floating-point rounding puts it one ulp
above (exact arithmetic's ``<=``).

DeepMind's ``surface-distance`` package weighs each boundary element by its surfel area
instead of counting voxels (MONAI's ``use_subvoxels=True``); the two agree closely on
smooth organs but not exactly, and this module implements the voxel count.

Empty masks (MONAI's rule): both empty -> NaN (nothing to score, the case is left out of
the class mean); exactly one empty -> 0.0 (no boundary element can be correct).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from unetzoo.errors import ConfigError
from unetzoo.metrics.surface import SurfaceDistances, surface_distances


def check_tolerance(tolerance: float) -> float:
    """``tolerance`` as a float if finite and >= 0, else a one-line ConfigError."""
    try:
        tau = float(tolerance)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"NSD tolerance must be a number in mm, got {tolerance!r}") from exc
    if not math.isfinite(tau) or tau < 0:
        raise ConfigError(f"NSD tolerance must be finite and >= 0 (mm), got {tolerance!r}")
    return tau


def nsd_from_distances(distances: SurfaceDistances, tolerance: float) -> float:
    """NSD at ``tolerance`` from already computed :class:`SurfaceDistances`."""
    tau = check_tolerance(tolerance)
    if distances.pred_empty and distances.gt_empty:
        return math.nan
    if distances.pred_empty or distances.gt_empty:
        return 0.0
    d_pg, d_gp = distances.pred_to_gt, distances.gt_to_pred
    total = d_pg.size + d_gp.size
    # A distance equal to tau (common: tau = one voxel) may come out 1 ulp above it from
    # idx * spacing arithmetic; count it as within, as exact arithmetic would.
    limit = tau * (1.0 + 1e-9) + 1e-12
    correct = int(np.count_nonzero(d_pg <= limit)) + int(np.count_nonzero(d_gp <= limit))
    return correct / total


def nsd(
    pred: np.ndarray,
    gt: np.ndarray,
    tolerance: float = 1.0,
    spacing: float | Sequence[float] | None = None,
    *,
    connectivity: int = 1,
) -> float:
    """Normalized surface Dice of two masks (2-D or 3-D, nonzero = foreground).

    Args:
        pred, gt: masks of one shape.
        tolerance: accepted boundary deviation ``tau``, in the units of ``spacing`` (mm
            when ``spacing`` is the voxel size in mm; voxels when ``spacing`` is None).
        spacing: voxel size per array axis, one number for all axes, or None.
        connectivity: neighbourhood of the surface erosion (1 = faces, as MONAI).

    Returns:
        NSD in [0, 1]; NaN when both masks are empty, 0.0 when exactly one is.
    """
    tau = check_tolerance(tolerance)
    return nsd_from_distances(surface_distances(pred, gt, spacing, connectivity=connectivity), tau)
