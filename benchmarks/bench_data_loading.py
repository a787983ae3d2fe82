"""Data loading vs. training consumption.

Writes N slices of S x S (default 2,000 of 512 x 512) into a temporary folder in the
TransUNet Synapse layout (``train_npz/caseXXXX_sliceNNN.npz``: ``image`` float32, ``label``
uint8, uncompressed like the released files, plus ``lists/lists_Synapse/train.txt``),
streams them through ``DataLoader`` workers with the TransUNet training transform at
``--img-size`` (default 224), and compares the rate with how many slices per second a
training step of ``--model`` (default resnet34_unet, batch 8, SGD, CE loss) consumes on
this machine.

    python benchmarks/bench_data_loading.py [--slices 2000] [--workers 0 1 2] [--json out.json]
    python benchmarks/bench_data_loading.py --tiny      # seconds; used by the test suite
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import base_parser, emit, median_time  # noqa: E402

TINY = {"slices": 16, "size": 64, "img_size": 32, "batch": 2, "workers": [0, 1],
        "nifti_cases": 1, "nifti_depth": 4}


def write_slices(root: Path, n: int, size: int, num_classes: int = 9, seed: int = 0) -> float:
    """Write ``n`` slices in the Synapse npz layout under ``root``; returns seconds taken."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    (root / "train_npz").mkdir(parents=True)
    lists = root / "lists" / "lists_Synapse"
    lists.mkdir(parents=True)
    # A few smooth base images shifted per slice: realistic value ranges, cheap to make.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    bases = [
        (0.5 + 0.4 * np.sin(2 * np.pi * (f * xx + g * yy))).astype(np.float32)
        for f, g in rng.uniform(0.5, 3, size=(4, 2))
    ]
    names = []
    per_case = 100
    for i in range(n):
        img = np.roll(bases[i % 4], i % size, axis=1)
        lab = (img * (num_classes - 1)).astype(np.uint8)
        name = f"case{i // per_case:04d}_slice{i % per_case:03d}"
        np.savez(root / "train_npz" / f"{name}.npz", image=img, label=lab)
        names.append(name)
    (lists / "train.txt").write_text("".join(f"{n}\n" for n in names))
    return time.perf_counter() - t0


def loader_rate(root: Path, img_size: int, batch: int, workers: int, seed: int = 0) -> dict:
    """Slices per second of one full pass over the dataset with ``workers`` workers."""
    import torch
    from torch.utils.data import DataLoader

    from unetzoo.data import get_dataset
    from unetzoo.data.transforms import build_train_transform, seed_worker

    ds = get_dataset("synapse", root)
    items = ds.slice_dataset("train", transform=build_train_transform("synapse", img_size))
    loader = DataLoader(
        items, batch_size=batch, shuffle=True, num_workers=workers,
        worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(seed),
        drop_last=False,
    )
    t0 = time.perf_counter()
    seen = 0
    for b in loader:
        assert b["image"].shape[-1] == img_size
        seen += b["image"].shape[0]
    dt = time.perf_counter() - t0
    return {"slices": seen, "seconds": dt, "slices_per_s": seen / dt}


def write_nifti_cases(root: Path, n: int, size: int, depth: int, seed: int = 0) -> None:
    """``n`` CT volumes of ``size x size x depth`` (int16 HU) in nnU-Net v2 raw layout."""
    import json

    import numpy as np

    from unetzoo.data.imageio import save_image

    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    for i in range(n):
        hu = rng.normal(40, 200, (size, size, depth)).astype(np.int16)
        lab = (rng.random((size, size, depth)) * 9).astype(np.uint8)
        save_image(hu, affine, root / "imagesTr" / f"vol_{i:03d}_0000.nii.gz")
        save_image(lab, affine, root / "labelsTr" / f"vol_{i:03d}.nii.gz")
    labels = {"background": 0, **{f"organ{k}": k for k in range(1, 9)}}
    (root / "dataset.json").write_text(json.dumps(
        {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": n,
         "file_ending": ".nii.gz"}))


def nifti_rates(root: Path, img_size: int, batch: int, workers: int, naive_samples: int,
                seed: int = 0) -> dict:
    """nnU-Net NIfTI data: cache build time, cached streaming rate, and the rate of the
    naive alternative (decompress the whole volume for every sample)."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from unetzoo.data import get_dataset
    from unetzoo.data.imageio import read_file
    from unetzoo.data.transforms import build_train_transform, seed_worker

    ds = get_dataset("nnunet", root)
    t0 = time.perf_counter()
    ds.prepare(["train"])
    build = time.perf_counter() - t0
    items = ds.slice_dataset("train", transform=build_train_transform(ds.recipe, img_size))
    loader = DataLoader(items, batch_size=batch, shuffle=True, num_workers=workers,
                        worker_init_fn=seed_worker,
                        generator=torch.Generator().manual_seed(seed))
    t0 = time.perf_counter()
    seen = sum(b["image"].shape[0] for b in loader)
    cached = seen / (time.perf_counter() - t0)
    files = sorted((root / "imagesTr").glob("*.nii.gz"))
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for _ in range(naive_samples):
        arr, _, _ = read_file(files[int(rng.integers(len(files)))])
        _ = np.asarray(arr[:, :, int(rng.integers(arr.shape[2]))], dtype=np.float32)
    naive = naive_samples / (time.perf_counter() - t0)
    return {"build_s": build, "slices": seen, "cached_per_s": cached, "naive_per_s": naive}


def consumption_rate(model_name: str, img_size: int, batch: int, repeats: int) -> dict:
    """Slices per second consumed by training steps (forward, CE loss, backward, SGD)."""
    import torch

    from unetzoo.models import create_model

    torch.manual_seed(0)
    model = create_model(model_name, in_channels=1, num_classes=9)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 1, img_size, img_size)
    y = torch.randint(0, 9, (batch, img_size, img_size))

    def step() -> None:
        out = model(x)
        if isinstance(out, list):
            out = out[-1]
        loss = torch.nn.functional.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t = median_time(step, repeats=repeats, warmup=1)
    return {"step_s": t, "slices_per_s": batch / t}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = base_parser(__doc__)
    p.add_argument("--slices", type=int, default=2000)
    p.add_argument("--size", type=int, default=512, help="stored slice size")
    p.add_argument("--img-size", type=int, default=224, help="training size after transform")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--model", default="resnet34_unet")
    p.add_argument("--keep", type=Path, default=None, help="write the slices here and keep them")
    p.add_argument("--nifti-cases", type=int, default=2,
                   help="also time nnU-Net NIfTI volumes (0 = skip)")
    p.add_argument("--nifti-depth", type=int, default=50, help="slices per NIfTI volume")
    args = p.parse_args(argv)
    if args.tiny:
        args.slices, args.size, args.img_size = TINY["slices"], TINY["size"], TINY["img_size"]
        args.batch, args.workers, args.repeats = TINY["batch"], TINY["workers"], 1
        args.nifti_cases, args.nifti_depth = TINY["nifti_cases"], TINY["nifti_depth"]
    tmp = None
    if args.keep is not None:
        root = args.keep
    else:
        tmp = Path(tempfile.mkdtemp(prefix="unetzoo-bench-data-"))
        root = tmp / "Synapse"
    try:
        write_s = write_slices(root, args.slices, args.size)
        rows = []
        for w in args.workers:
            r = loader_rate(root, args.img_size, args.batch, w)
            rows.append({
                "side": f"DataLoader, {w} worker(s)", "slices_per_s": r["slices_per_s"],
                "seconds_per_pass": r["seconds"], "slices": r["slices"],
            })
        if args.nifti_cases > 0:
            nroot = (tmp or root.parent) / "nnunet_bench"
            shutil.rmtree(nroot, ignore_errors=True)
            write_nifti_cases(nroot, args.nifti_cases, args.size, args.nifti_depth)
            n = nifti_rates(nroot, args.img_size, args.batch, max(args.workers),
                            naive_samples=max(2, args.nifti_cases * 2))
            rows.append({
                "side": f"nnunet NIfTI, mmap slice cache, {max(args.workers)} worker(s)",
                "slices_per_s": n["cached_per_s"], "seconds_per_pass": n["slices"] / n["cached_per_s"],
                "slices": n["slices"],
            })
            rows.append({
                "side": "nnunet NIfTI, whole volume decompressed per sample (not used)",
                "slices_per_s": n["naive_per_s"], "seconds_per_pass": n["slices"] / n["naive_per_s"],
                "slices": n["slices"],
            })
        c = consumption_rate(args.model, args.img_size, args.batch, args.repeats)
        rows.append({
            "side": f"{args.model} training, batch {args.batch}",
            "slices_per_s": c["slices_per_s"], "seconds_per_pass": args.slices / c["slices_per_s"],
            "slices": args.slices,
        })
        consume = c["slices_per_s"]
        for row in rows:
            row["vs_consumption"] = row["slices_per_s"] / consume
        best = max((r for r in rows if r["side"].startswith("DataLoader")),
                   key=lambda r: r["slices_per_s"])
        notes = (
            f"{args.slices} slices of {args.size}x{args.size} (Synapse npz layout, written in "
            f"{write_s:.1f} s), TransUNet train transform to {args.img_size} px. Fastest loader "
            f"({best['side']}) streams {best['vs_consumption']:.1f}x what {args.model} consumes."
        )
        if args.nifti_cases > 0:
            notes += (
                f" NIfTI: {args.nifti_cases} volume(s) of {args.size}x{args.size}x"
                f"{args.nifti_depth}; building the slice cache took {n['build_s']:.1f} s."
            )
        emit(f"Data loading vs. consumption ({args.img_size} px)", rows, args,
             columns=["side", "slices_per_s", "seconds_per_pass", "vs_consumption", "slices"],
             extra={"notes": notes, "config": {k: (str(v) if isinstance(v, Path) else v)
                                               for k, v in vars(args).items()}})
        return {"rows": rows, "write_seconds": write_s}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
