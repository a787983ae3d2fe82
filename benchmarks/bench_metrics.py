"""Evaluation speed: unetzoo's per-class Dice + HD95 against medpy's ``dc`` + ``hd95``.

Builds one Synapse-sized case (150 x 512 x 512, the 8 Synapse organs as deformed
ellipsoids of realistic sizes) and a prediction with realistic errors (boundary erosion
and dilation, a missed slice range, a distant false-positive blob), then times

* medpy: TransUNet's ``calculate_metric_percase`` loop (``pred == c``, ``dc``, ``hd95``
  for every organ), and
* unetzoo: ``score_case(pred, Reference(gt), ScoringRules(9, "transunet"))``, its classes' surface
  distances in parallel threads (one per core this process may use), and
* unetzoo serial: the same with ``workers=1`` (one class after the other),

alternating the sides after a warm-up and reporting the median of the repeats. The
values must agree to 1e-6 (the two unetzoo sides exactly). ``--growth`` times HD95 against volume size instead.
``--tiny`` runs a small case once (used by the test suite; no timing is asserted).

    python benchmarks/bench_metrics.py [--repeats 3] [--json out.json] [--growth]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion, zoom

from unetzoo.metrics import Reference, ScoringRules, score_case
from unetzoo.metrics.parallel import default_workers

CLASS_NAMES = [
    "background", "aorta", "gallbladder", "kidney_left", "kidney_right",
    "liver", "pancreas", "spleen", "stomach",
]
FULL_SHAPE = (150, 512, 512)
TINY_SHAPE = (20, 72, 72)

# Organ centre (z, y, x) and semi-axes (z, y, x) in voxels of a 150 x 512 x 512 case
# (about 0.76 mm in-plane, 2.5-3 mm slices), after typical Synapse organ sizes.
ORGANS = {
    1: ((75, 250, 256), (55, 14, 14)),    # aorta: a long thin tube
    2: ((80, 290, 170), (9, 22, 16)),     # gallbladder
    3: ((70, 300, 345), (20, 42, 28)),    # left kidney (image right)
    4: ((72, 300, 165), (20, 42, 28)),    # right kidney
    5: ((95, 220, 150), (35, 100, 82)),   # liver
    6: ((80, 250, 270), (10, 22, 75)),    # pancreas
    7: ((95, 300, 370), (24, 55, 36)),    # spleen
    8: ((100, 190, 330), (28, 60, 52)),   # stomach
}


def _deformed_ellipsoid(
    rng: np.random.Generator, shape: tuple[int, ...], centre, radii, box=None
) -> tuple[tuple[slice, ...], np.ndarray]:
    """A smooth organ-like blob: an ellipsoid whose radius varies by about +-15 %,
    drawn in ``box`` (default: the ellipsoid's box with a 30 % margin)."""
    if box is None:
        box = tuple(
            slice(max(0, int(c - 1.3 * r)), min(n, int(c + 1.3 * r) + 1))
            for c, r, n in zip(centre, radii, shape)
        )
    grids = np.ogrid[box]
    d = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii))
    sub = tuple(s.stop - s.start for s in box)
    coarse = rng.standard_normal((5, 5, 5))
    noise = zoom(coarse, [n / 5 for n in sub], order=1)[: sub[0], : sub[1], : sub[2]]
    return box, d < (1.0 + 0.15 * noise) ** 2


def make_case(shape: tuple[int, int, int] = FULL_SHAPE, seed: int = 0):
    """Ground truth and prediction label maps (uint8, ``shape``) of one synthetic case."""
    rng = np.random.default_rng(seed)
    scale = np.asarray(shape, float) / np.asarray(FULL_SHAPE, float)
    gt = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    struct = np.ones((1, 3, 3), bool)  # in-plane errors, as a 2-D network makes
    # large organs first, so that small ones drawn later stay whole where they touch
    order = sorted(ORGANS, key=lambda k: -float(np.prod(ORGANS[k][1])))
    for c in order:
        centre, radii = ORGANS[c]
        centre = np.asarray(centre) * scale
        radii = np.maximum(np.asarray(radii) * scale, 1.5)
        box, blob = _deformed_ellipsoid(rng, shape, centre, radii)
        gt[box][blob] = c
        # prediction: the same organ with its own boundary error
        _, guess = _deformed_ellipsoid(rng, shape, centre + rng.normal(0, 1.0, 3), radii, box)
        guess = guess if c % 2 else blob | (guess & binary_dilation(blob, struct, 2))
        guess = binary_erosion(guess, struct, 1) if c in (2, 6) else guess
        guess = binary_dilation(guess, struct, 1) if c in (5, 8) else guess
        if c == 3:  # a missed slice range at the top of the left kidney
            zs = np.flatnonzero(blob.any(axis=(1, 2)))
            guess[zs[-max(2, len(zs) // 6)]:] = False
        pred[box][guess] = c
    # a distant false-positive blob labelled liver, far from the liver
    fp_c = (np.asarray((20, 460, 460)) * scale).astype(int)
    fp_r = np.maximum((np.asarray((3, 9, 9)) * scale).astype(int), 1)
    fp = tuple(slice(c - r, c + r + 1) for c, r in zip(fp_c, fp_r))
    pred[fp] = 5
    return pred, gt


def medpy_case(pred: np.ndarray, gt: np.ndarray, num_classes: int, spacing=None):
    """The reference: TransUNet's per-organ loop with medpy's ``dc`` and ``hd95``."""
    from medpy.metric.binary import dc, hd95

    out = {}
    for c in range(1, num_classes):
        p, g = pred == c, gt == c
        if p.sum() > 0 and g.sum() > 0:
            out[c] = {"dice": dc(p, g), "hd95": hd95(p, g, voxelspacing=spacing)}
        elif p.sum() > 0 and g.sum() == 0:
            out[c] = {"dice": 1.0, "hd95": 0.0}
        else:
            out[c] = {"dice": 0.0, "hd95": 0.0}
    return out


def unetzoo_case(pred: np.ndarray, gt: np.ndarray, num_classes: int, spacing=None,
                 workers: int | None = None):
    """unetzoo's side: one call for all organs (``workers=1``: classes one by one)."""
    # distance_unit "mm": the given spacing even under TransUNet's empty-mask protocol
    rules = ScoringRules(num_classes, "transunet", ("dice", "hd95"), distance_unit="mm",
                         workers=workers)
    return score_case(pred, Reference(gt, spacing), rules).by_class()


def unetzoo_serial_case(pred: np.ndarray, gt: np.ndarray, num_classes: int, spacing=None):
    return unetzoo_case(pred, gt, num_classes, spacing, workers=1)


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def machine() -> dict:
    """Cores, threads and library versions of this machine."""
    import scipy

    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        info["medpy"] = version("medpy")
    except Exception:  # noqa: BLE001 - optional
        info["medpy"] = "not installed"
    info["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "unset")
    info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


def _machine_line(m: dict) -> str:
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m.get('torch', '-')} "
        f"({m.get('torch_threads', '-')} threads), numpy {m['numpy']}, scipy {m['scipy']}, "
        f"medpy {m['medpy']}, OMP_NUM_THREADS={m['OMP_NUM_THREADS']}, "
        f"load average {m['load_average']} at start."
    )


def compare(
    shape, repeats: int, spacing, seed: int = 0, medpy_repeats: int | None = None
) -> dict:
    """Time both sides on one case, alternating; check the values agree.

    ``medpy_repeats`` (default ``repeats``) may be smaller: medpy takes minutes per case
    at full size, so its run-to-run noise is small next to the ratio.
    """
    medpy_repeats = repeats if medpy_repeats is None else min(medpy_repeats, repeats)
    n = len(CLASS_NAMES)
    # warm-up on a small case: imports, allocator, scipy/KD-tree code paths
    wp, wg = make_case(TINY_SHAPE, seed + 1)
    medpy_case(wp, wg, n, spacing)
    unetzoo_case(wp, wg, n, spacing)

    t0 = time.perf_counter()
    pred, gt = make_case(shape, seed)
    build_s = time.perf_counter() - t0
    times: dict[str, list[float]] = {"medpy": [], "unetzoo": [], "unetzoo_serial": []}
    results: dict[str, dict] = {}
    sides = {"medpy": medpy_case, "unetzoo": unetzoo_case,
             "unetzoo_serial": unetzoo_serial_case}
    names = ["unetzoo", "unetzoo_serial", "medpy"]
    for r in range(repeats):
        order = names[r % 3:] + names[: r % 3]  # each side in every position in turn
        for side in order:
            if side == "medpy" and r >= medpy_repeats:
                continue
            dt, res = _timed(lambda s=side: sides[s](pred, gt, n, spacing))
            times[side].append(dt)
            results[side] = res
            print(f"  repeat {r + 1}/{repeats}: {side:8s} {dt:8.3f} s", flush=True)

    rows = []
    max_diff = {"dice": 0.0, "hd95": 0.0}
    for c in range(1, n):
        u, m = results["unetzoo"][c], results["medpy"][c]
        diffs = {k: abs(float(u[k]) - float(m[k])) for k in ("dice", "hd95")}
        for k in diffs:
            max_diff[k] = max(max_diff[k], diffs[k])
        rows.append({
            "class": c, "name": CLASS_NAMES[c],
            "gt_voxels": int(np.count_nonzero(gt == c)),
            "dice": float(u["dice"]), "hd95": float(u["hd95"]),
            "medpy_dice": float(m["dice"]), "medpy_hd95": float(m["hd95"]),
        })
    med = {k: statistics.median(v) for k, v in times.items()}
    serial_equal = all(
        results["unetzoo"][c][k] == results["unetzoo_serial"][c][k]
        for c in range(1, n) for k in ("dice", "hd95")
    )
    return {
        "shape": list(shape),
        "spacing": None if spacing is None else list(spacing),
        "repeats": repeats,
        "medpy_repeats": medpy_repeats,
        "build_case_s": build_s,
        "times_s": times,
        "median_s": med,
        "speedup": med["medpy"] / med["unetzoo"],
        "speedup_serial": med["medpy"] / med["unetzoo_serial"],
        "thread_gain": med["unetzoo_serial"] / med["unetzoo"],
        "workers": default_workers(),
        "serial_equal": serial_equal,
        "max_abs_diff": max_diff,
        "equal": max(max_diff.values()) <= 1e-6 and serial_equal,
        "classes": rows,
    }


def growth(sizes: list[int], repeats: int, medpy_max: int, spacing) -> dict:
    """HD95 (+ Dice) time per case against volume size (in-plane size, depth scaled)."""
    n = len(CLASS_NAMES)
    out = []
    for s in sizes:
        shape = (max(8, round(150 * s / 512)), s, s)
        pred, gt = make_case(shape, seed=s)
        t_u = []
        t_m = []
        for _ in range(repeats):
            t_u.append(_timed(lambda p=pred, g=gt: unetzoo_case(p, g, n, spacing))[0])
            if s <= medpy_max:
                t_m.append(_timed(lambda p=pred, g=gt: medpy_case(p, g, n, spacing))[0])
        row = {
            "size": s, "shape": list(shape), "voxels": int(np.prod(shape)),
            "unetzoo_s": statistics.median(t_u),
            "medpy_s": statistics.median(t_m) if t_m else None,
        }
        print(f"  {shape}: unetzoo {row['unetzoo_s']:.3f} s"
              + (f", medpy {row['medpy_s']:.3f} s" if t_m else ""), flush=True)
        out.append(row)
    vox = np.log([r["voxels"] for r in out])
    slope = (
        float(np.polyfit(vox, np.log([r["unetzoo_s"] for r in out]), 1)[0])
        if len(out) > 1 else float("nan")
    )
    m_rows = [r for r in out if r["medpy_s"]]
    m_slope = (
        float(np.polyfit(np.log([r["voxels"] for r in m_rows]),
                         np.log([r["medpy_s"] for r in m_rows]), 1)[0])
        if len(m_rows) > 1 else None
    )
    return {"rows": out, "unetzoo_exponent": slope, "medpy_exponent": m_slope}


def markdown_compare(res: dict, m: dict) -> str:
    lines = [
        f"### Evaluation speed: one {' x '.join(map(str, res['shape']))} case, "
        f"8 organs, Dice + HD95 (protocol transunet, spacing {res['spacing'] or 'none'})",
        "",
        _machine_line(m),
        "",
        "| Side | Median s / case | Runs (s) |",
        "|---|---|---|",
    ]
    for side, label in (("medpy", "medpy `dc` + `hd95` (TransUNet loop)"),
                        ("unetzoo_serial", "unetzoo `score_case` (workers=1), serial"),
                        ("unetzoo", f"unetzoo `score_case`, {res['workers']} threads")):
        runs = ", ".join(f"{t:.2f}" for t in res["times_s"][side])
        lines.append(f"| {label} | {res['median_s'][side]:.3f} | {runs} |")
    lines += [
        "",
        f"Speed-up: **{res['speedup']:.1f}x** threaded, {res['speedup_serial']:.1f}x serial "
        f"(threads {res['thread_gain']:.2f}x the serial speed; medians of {res['repeats']} "
        f"unetzoo and {res['medpy_repeats']} medpy runs, alternating, after a warm-up).",
        f"Values equal: {'yes' if res['equal'] else 'NO'} (max |diff| Dice "
        f"{res['max_abs_diff']['dice']:.2e}, HD95 {res['max_abs_diff']['hd95']:.2e}; "
        "tolerance 1e-6; threaded == serial exactly: "
        f"{'yes' if res['serial_equal'] else 'NO'}).",
        "",
        "| Organ | GT voxels | Dice | HD95 | medpy Dice | medpy HD95 |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["classes"]:
        lines.append(
            f"| {r['name']} | {r['gt_voxels']} | {r['dice']:.6f} | {r['hd95']:.6f} | "
            f"{r['medpy_dice']:.6f} | {r['medpy_hd95']:.6f} |"
        )
    return "\n".join(lines) + "\n"


def markdown_growth(g: dict, m: dict) -> str:
    lines = [
        "### HD95 cost growth: Dice + HD95 of 8 organs against volume size",
        "",
        _machine_line(m),
        "",
        "| Volume | Voxels | unetzoo s | unetzoo ns / voxel | medpy s |",
        "|---|---|---|---|---|",
    ]
    for r in g["rows"]:
        medpy_s = f"{r['medpy_s']:.3f}" if r["medpy_s"] else "-"
        lines.append(
            f"| {' x '.join(map(str, r['shape']))} | {r['voxels']} | {r['unetzoo_s']:.3f} | "
            f"{1e9 * r['unetzoo_s'] / r['voxels']:.1f} | {medpy_s} |"
        )
    lines.append("")
    lines.append(
        f"Fitted growth: unetzoo time ~ voxels^{g['unetzoo_exponent']:.2f}"
        + (f", medpy ~ voxels^{g['medpy_exponent']:.2f}" if g["medpy_exponent"] else "")
        + " (1.0 = linear)."
    )
    return "\n".join(lines) + "\n"


def _spacing(text: str):
    if text.lower() == "none":
        return None
    return tuple(float(x) for x in text.split(","))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--medpy-repeats", type=int, default=None,
                    help="medpy runs (default --repeats); medpy takes minutes per case")
    ap.add_argument("--spacing", type=_spacing, default=None,
                    help="voxel spacing z,y,x in mm, or none (voxel units, as TransUNet)")
    ap.add_argument("--growth", action="store_true", help="time HD95 against volume size")
    ap.add_argument("--growth-sizes", default="64,128,256,384,512")
    ap.add_argument("--growth-medpy-max", type=int, default=256,
                    help="largest in-plane size at which medpy is timed in --growth")
    ap.add_argument("--no-compare", action="store_true", help="skip the full-size comparison")
    ap.add_argument("--tiny", action="store_true", help="small case, one repeat (tests)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)

    m = machine()
    report: dict = {"machine": m}
    shape = TINY_SHAPE if args.tiny else FULL_SHAPE
    repeats = 1 if args.tiny else args.repeats
    if not args.no_compare:
        print(f"comparing on {shape} ...", flush=True)
        res = compare(shape, repeats, args.spacing, medpy_repeats=args.medpy_repeats)
        report["compare"] = res
        print(markdown_compare(res, m))
    if args.growth:
        sizes = [32, 48] if args.tiny else [int(s) for s in args.growth_sizes.split(",")]
        print(f"growth over {sizes} ...", flush=True)
        g = growth(sizes, repeats, 48 if args.tiny else args.growth_medpy_max, args.spacing)
        report["growth"] = g
        print(markdown_growth(g, m))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    ok = report.get("compare", {"equal": True})["equal"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
