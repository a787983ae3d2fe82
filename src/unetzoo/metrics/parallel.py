"""Surface distances of a case's classes in parallel threads.

The surface-distance work of one class (``pred == c`` on its box, the surface erosion,
``argwhere`` and the KD-tree build and nearest-neighbour queries) runs in numpy and
scipy code that releases the GIL, so the classes of one case can share the CPU's cores
through plain threads: no process start-up and no copying of a 150 x 512 x 512 volume
into workers. Each class runs the very function of the serial path
(:func:`unetzoo.metrics.surface._distances_in_box`) on the same inputs, so the values are
equal to the serial ones, bit for bit.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from unetzoo.errors import ConfigError
from unetzoo.metrics._common import union_box
from unetzoo.metrics.surface import SurfaceDistances, _distances_in_box

Box = tuple[slice, ...]


def default_workers() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity call on this platform
        return max(1, os.cpu_count() or 1)


def class_surface_distances(
    pred: np.ndarray,
    gt: np.ndarray,
    boxes_pred: Sequence[Box | None],
    boxes_gt: Sequence[Box | None],
    spacing: np.ndarray,
    connectivity: int = 1,
    *,
    workers: int | None = None,
) -> dict[int, SurfaceDistances]:
    """Surface distances of every class present in both label maps.

    Args:
        pred, gt: integer label maps of one shape.
        boxes_pred, boxes_gt: bounding box of class ``i + 1`` in each map at index ``i``
            (None when absent), as ``scipy.ndimage.find_objects`` gives them.
        spacing: voxel size per axis, a float array (``normalize_spacing``).
        connectivity: surface neighbourhood (1 = faces, medpy's default).
        workers: threads (default: the cores this process may use; 1 runs serially
            in the calling thread).

    Returns:
        ``{class: SurfaceDistances}`` for the classes with a box in both maps; a class
        absent from either map is not included (its distances are the empty-mask case).
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ConfigError(f"workers must be a whole number >= 1 or None, got {workers!r}")
    tasks = [
        (c, union_box(bp, bg))
        for c, (bp, bg) in enumerate(zip(boxes_pred, boxes_gt), start=1)
        if bp is not None and bg is not None
    ]
    # Largest boxes first, so that the last class to start is a small one.
    tasks.sort(key=lambda t: -math.prod(s.stop - s.start for s in t[1]))

    def one(task: tuple[int, Box]) -> SurfaceDistances:
        c, box = task
        return _distances_in_box(pred[box] == c, gt[box] == c, spacing, connectivity, "auto")

    n = min(len(tasks), default_workers() if workers is None else workers)
    if n <= 1:
        return {c: one((c, box)) for c, box in tasks}
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="unetzoo-surface") as pool:
        return {c: sd for (c, _), sd in zip(tasks, pool.map(one, tasks))}
