"""``unetzoo test``: evaluate a checkpoint on a test split and write the report."""

from __future__ import annotations

import argparse

from unetzoo.cli import add_output_option, add_postprocessing_options


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "test",
        help="evaluate a checkpoint: per-case Dice/HD95, mean table, CSV, overlays",
        description="Slice-wise volume inference (TransUNet resize protocol) on a test "
        "split; writes summary.md, summary.json, cases.csv, overlays/ and optionally "
        "NIfTI predictions.",
    )
    a = p.add_argument
    a("--checkpoint", required=True, action="append", metavar="CKPT",
      help="a .pt file written by `unetzoo train`, or its run folder (the checkpoint the "
      "run's report scored, else final.pt); repeat it to test an ensemble (softmax "
      "averaged, e.g. the folds of a cross-validation)")
    a("--dataset", help="dataset name (default: the checkpoint's dataset)")
    a("--data-root", help="dataset folder")
    a("--split", default="test", help="split to evaluate (default test)")
    a("--max-cases", type=int, help="evaluate only the first N cases")
    a("--save-nifti", action="store_true",
      help="write NIfTI label maps with the input file's shape, voxel order and affine")
    a("--tta", action="store_true", help="flip test-time augmentation")
    a("--strict-inputs", action="store_true",
      help="refuse a dataset far outside the training intensities or of another modality "
      "(by default one warning line)")
    add_postprocessing_options(p)
    a("--case-json", action="store_true",
      help="also write cases.json: per case and class TP/FP/FN/TN and every metric "
      "(Dice, IoU, sensitivity, specificity, HD95, HD, ASSD, NSD), nnU-Net's summary layout")
    a("--nsd-tolerance", type=float, default=1.0, metavar="MM",
      help="NSD tolerance in the HD95 unit (mm; voxels under --protocol transunet)")
    a("--metrics", default="dice,hd95", metavar="LIST",
      help="report metrics, a comma list of dice, iou, sensitivity, specificity, hd95, "
      "hd, assd, nsd (default dice,hd95; e.g. dice,hd95,nsd adds NSD at --nsd-tolerance)")
    a("--protocol", choices=("strict", "transunet"), default="strict",
      help="empty-mask protocol; transunet also reports HD95 in voxels as the paper does")
    add_output_option(p, help="report folder (default <run>/report)")
    a("--overwrite", action="store_true",
      help="replace report files in --output that unetzoo did not write there (without it "
      "they are refused; unetzoo's own files from an earlier test are always replaced, "
      "other files never touched)")
    a("--overlays", type=int, default=3, help="overlay PNG slices per case (0: none)")
    a("--batch-size", type=int, default=16, help="slices per forward pass")
    a("--device", help="cpu or cuda (default: cuda when available)")
    a("--backend", default="auto", metavar="{auto,torch,onnxruntime}",
      help="forward pass on CPU: auto (default) measures a channels_last copy and ONNX "
      "Runtime against PyTorch on the first slices and runs the fastest with identical "
      "labels; onnxruntime exports once, cached beside the checkpoint; torch as is")
    a("--precision", default="fp32", metavar="{fp32,bf16}",
      help="fp32 (default, exact) or bf16: PyTorch bf16 autocast, on CPUs with AMX or "
      "AVX512-BF16 and on bf16 GPUs only (refused elsewhere); labels may differ slightly")
    return p


def run(args: argparse.Namespace) -> int:
    from unetzoo.engine.evaluation import run_test
    from unetzoo.errors import ConfigError

    if args.max_cases is not None and args.max_cases < 1:
        raise ConfigError(f"--max-cases must be >= 1, got {args.max_cases}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    from unetzoo.engine.postprocess import load_plan
    from unetzoo.metrics.nsd import check_tolerance

    check_tolerance(args.nsd_tolerance)
    from unetzoo.engine.evaluation import check_report_metrics

    metrics = check_report_metrics(args.metrics)
    plan = (load_plan(args.postprocessing) if args.postprocessing
            else None if args.no_postprocessing else "stored")
    from unetzoo.engine.selection import run_checkpoint

    ckpts = [run_checkpoint(c) for c in args.checkpoint]
    run_test(
        ckpts if len(ckpts) > 1 else ckpts[0],
        dataset=args.dataset,
        data_root=args.data_root,
        split=args.split,
        max_cases=args.max_cases,
        out_dir=args.output,
        save_predictions=args.save_nifti,
        tta=args.tta,
        protocol=args.protocol,
        overlays=max(args.overlays, 0),
        device=args.device,
        batch_size=args.batch_size,
        backend=args.backend,
        postprocessing=plan,
        case_json=args.case_json,
        nsd_tolerance=args.nsd_tolerance,
        metrics=metrics,
        overwrite=args.overwrite,
        strict_inputs=args.strict_inputs,
        precision=args.precision,
    )
    return 0
