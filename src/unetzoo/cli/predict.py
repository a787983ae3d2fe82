"""``unetzoo predict``: label maps and overlays for NIfTI volumes and 2-D images."""

from __future__ import annotations

import argparse

from unetzoo.cli import add_output_option


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict",
        help="segment NIfTI / PNG / TIF files with a checkpoint",
        description="Writes <name>_seg.{nii.gz,png,tif} with the input's geometry and "
        "overlay PNGs. 2-D images larger than the training size use sliding windows "
        "with Gaussian blending. 8/16-bit pictures (PNG, JPEG, TIFF) are scaled by their "
        "bit depth as in the demo; NIfTI volumes get the checkpoint's normalisation. "
        "Inputs holding NaN/Inf are refused (mask them yourself), as are 2-D inputs over "
        "--max-pixels.",
    )
    a = p.add_argument
    a("inputs", nargs="+", metavar="INPUT", help="NIfTI (.nii/.nii.gz), PNG, JPG, BMP or TIF files")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a .pt file written by `unetzoo train`")
    src.add_argument("--onnx", metavar="MODEL.onnx",
                     help="an ONNX file from `unetzoo export`, run by ONNX Runtime instead")
    add_output_option(p, required=True, help="output folder")
    a("--tta", action="store_true", help="flip test-time augmentation")
    a("--overlays", type=int, default=3, help="overlay PNG slices per input (0: none)")
    a("--batch-size", type=int, default=16, help="slices or windows per forward pass")
    a("--device", help="cpu, cuda, cuda:N or mps (default: cuda when available)")
    a("--max-pixels", type=int, default=None, metavar="N",
      help="refuse 2-D images (and volume slices) over N pixels (default 4096 x 4096): "
      "huge inputs take minutes and many GB")
    a("--backend", default="auto", metavar="{auto,torch,onnxruntime}",
      help="forward pass on CPU: auto (default) measures a channels_last copy and ONNX "
      "Runtime against PyTorch on the first slices and runs the fastest with identical "
      "labels; onnxruntime exports once, cached beside the checkpoint; torch as is "
      "(--onnx: always ONNX Runtime)")
    return p


def run(args: argparse.Namespace) -> int:
    from unetzoo.engine.backends import check_backend
    from unetzoo.engine.predict import predict_files
    from unetzoo.errors import ConfigError

    check_backend(args.backend)
    if args.onnx and args.backend == "torch":
        raise ConfigError("--backend torch needs --checkpoint; --onnx runs ONNX Runtime")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise ConfigError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    from unetzoo.engine.distributed import check_device, resolve_device

    resolve_device(args.device)  # unknown names and absent GPUs: one line, before any work
    extra = {}
    if args.onnx:  # same pre/post-processing, logits from ONNX Runtime
        from unetzoo.deploy.onnx_runtime import predict_files
    if args.max_pixels is not None:
        if args.onnx:
            raise ConfigError("--max-pixels applies to --checkpoint; --onnx keeps the default")
        extra["max_pixels"] = args.max_pixels
    if not args.onnx:
        extra["backend"] = args.backend
    predict_files(
        args.inputs, args.onnx or args.checkpoint, args.output, tta=args.tta,
        device=check_device(args.device), batch_size=args.batch_size,
        overlays=max(args.overlays, 0), **extra,
    )
    return 0
