"""Surface distances of a case's classes in parallel threads.

The surface-distance work of one class (``pred == c`` on its box, the surface erosion,
``argwhere`` and the KD-tree build and nearest-neighbour queries) runs in numpy and
scipy code that releases the GIL, so the classes of one case can share the CPU's cores
through plain threads: no process start-up and no copying of a 150 x 512 x 512 volume
into workers. Each class runs the very function of the serial path
(:func:`unetzoo.metrics.surface._distances_in_box`) on the same inputs, so the values are
equal to the serial ones, bit for bit.

One class often dominates a case (a large organ with a distant false positive has a box
of a third of the volume), which would leave the other threads idle. A class whose box
holds more than ``1 / workers`` of the boxes' voxels is therefore split itself: its
surfaces and surface points are found in slabs along the first axis (each slab read with
one voxel of halo, so the erosion sees the same neighbours), and its nearest-neighbour
queries in chunks of points; the slabs are concatenated in order, so the points, the
trees and every distance are those of the serial path.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor

import numpy as np
from scipy.ndimage import generate_binary_structure

from unetzoo.errors import ConfigError
from unetzoo.metrics._common import union_box
from unetzoo.metrics.surface import (
    _KDTREE_FRACTION,
    SurfaceDistances,
    _distances_in_box,
    _surface,
    _tree,
)

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
    executor: Executor | None = None,
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
        executor: the thread pool to run in when ``workers`` > 1 (default: a fresh one of
            ``workers`` threads named ``unetzoo-surface``; one given is not shut down).

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
    total = sum(_volume(box) for _, box in tasks)
    big = [t for t in tasks if _volume(t[1]) * n > total and t[1][0].stop - t[1][0].start >= 2 * n]
    with contextlib.ExitStack() as stack:
        pool = executor or stack.enter_context(
            ThreadPoolExecutor(max_workers=n, thread_name_prefix="unetzoo-surface"))
        small = {c: pool.submit(one, (c, box)) for c, box in tasks if (c, box) not in big}
        # The dominant classes are driven from this thread, their pieces run in the pool
        # behind the small classes (this thread is not a pool worker: no deadlock).
        split = {c: _split_distances(pred, gt, c, box, spacing, connectivity, pool, n)
                 for c, box in big}
        out = {c: f.result() for c, f in small.items()} | split
    return {c: out[c] for c, _ in tasks}


def _volume(box: Box) -> int:
    return math.prod(s.stop - s.start for s in box)


def _slab_points(labels: np.ndarray, c: int, box: Box, z0: int, z1: int,
                 footprint: np.ndarray, connectivity: int) -> np.ndarray:
    """Surface voxel indices (relative to ``box``) of ``labels == c`` in slab ``z0:z1``
    of the box, in ``argwhere`` order."""
    depth = box[0].stop - box[0].start
    lo, hi = max(z0 - 1, 0), min(z1 + 1, depth)  # one voxel of halo inside the box
    sub = (slice(box[0].start + lo, box[0].start + hi), *box[1:])
    surf = _surface(labels[sub] == c, footprint, connectivity)[z0 - lo : z0 - lo + z1 - z0]
    pts = np.argwhere(surf)
    pts[:, 0] += z0
    return pts


def _split_distances(pred: np.ndarray, gt: np.ndarray, c: int, box: Box,
                     spacing: np.ndarray, connectivity: int, pool: Executor,
                     n: int) -> SurfaceDistances:
    """:func:`_distances_in_box` of class ``c`` with its work split over ``pool``."""
    depth = box[0].stop - box[0].start
    cuts = np.linspace(0, depth, 2 * n + 1).round().astype(int)
    footprint = generate_binary_structure(pred.ndim, connectivity)
    jobs: dict[str, list[Future]] = {
        side: [pool.submit(_slab_points, arr, c, box, int(a), int(b), footprint, connectivity)
               for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
        for side, arr in (("pred", pred), ("gt", gt))
    }
    idx_p = np.concatenate([f.result() for f in jobs["pred"]])
    idx_g = np.concatenate([f.result() for f in jobs["gt"]])
    if (len(idx_p) + len(idx_g)) * _KDTREE_FRACTION >= _volume(box):
        # the serial path would take the distance transform here: take it too
        return _distances_in_box(pred[box] == c, gt[box] == c, spacing, connectivity, "auto")
    pts_p, pts_g = idx_p * spacing, idx_g * spacing
    tree_g, tree_p = pool.submit(_tree, pts_g), pool.submit(_tree, pts_p)

    def query(tree: Future, pts: np.ndarray) -> list[Future]:
        chunks = np.array_split(pts, n)
        return [pool.submit(lambda q: tree.result().query(q, k=1)[0], q) for q in chunks]

    d_pg, d_gp = query(tree_g, pts_p), query(tree_p, pts_g)
    return SurfaceDistances(
        np.concatenate([np.asarray(f.result(), dtype=np.float64) for f in d_pg]),
        np.concatenate([np.asarray(f.result(), dtype=np.float64) for f in d_gp]),
        False,
        False,
    )
