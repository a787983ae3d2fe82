"""``unetzoo predict``: label maps and overlays for volumes (NIfTI, NRRD, MetaImage, DICOM)
and 2-D images, case by case as nnU-Net names them, from one checkpoint or an ensemble."""

from __future__ import annotations

import argparse

from unetzoo.cli import add_output_option, add_postprocessing_options


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "predict",
        help="segment image files and folders with one or more checkpoints",
        description="Writes CASE.nii.gz (the input's ending: .nrrd, .mha; NIfTI for "
        "DICOM series) with the input's geometry, CASE_seg.{png,tif} for pictures, and "
        "overlay PNGs. 2-D images larger than the training size use sliding windows "
        "with Gaussian blending. 8/16-bit pictures (PNG, JPEG, TIFF) are scaled by their "
        "bit depth as in the demo; NIfTI volumes get the checkpoint's normalisation. "
        "Inputs holding NaN/Inf are refused (mask them yourself), as are 2-D inputs over "
        "--max-pixels.",
    )
    a = p.add_argument
    a("inputs", nargs="+", metavar="INPUT",
      help="files or folders: NIfTI (.nii/.nii.gz), NRRD, MetaImage (.mha/.mhd), DICOM "
      "series folders, PNG, JPG, BMP or TIF; nnU-Net's CASE_0000, CASE_0001 ... files are "
      "the channels of case CASE")
    a("--format", default="auto", choices=("auto", "dicom-seg"), dest="output_format",
      help="label map format: auto (default) keeps the input's own format, NIfTI for DICOM "
      "series; dicom-seg writes CASE.seg.dcm, a DICOM SEG referencing the input series, "
      "segments named after the checkpoint's classes (DICOM inputs only; needs highdicom)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", action="append", metavar="CKPT",
                     help="a .pt file written by `unetzoo train` or its run folder (the "
                     "checkpoint its report scored); repeat it to ensemble "
                     "several (e.g. the folds of a cross-validation: softmax averaged)")
    src.add_argument("--onnx", metavar="MODEL.onnx",
                     help="an ONNX file from `unetzoo export`, run by ONNX Runtime instead")
    add_output_option(p, required=True,
                      help="output folder: CASE.nii.gz (the input's own ending and geometry; "
                      "NIfTI for DICOM series), CASE_seg.png for pictures")
    a("--overwrite", action="store_true",
      help="replace files in --output that have a target's name but that unetzoo did not "
      "write there (without it they are refused; unetzoo's own files from an earlier run "
      "are always replaced, other files never touched)")
    a("--save-probabilities", action="store_true",
      help="also write CASE.npz with the softmax, 'probabilities' (K, z, y, x) as nnU-Net's "
      "--save_probabilities (before post-processing)")
    add_postprocessing_options(p)
    a("--tta", action="store_true", help="flip test-time augmentation")
    a("--strict-inputs", action="store_true",
      help="refuse an input far outside the training intensities (CT into an MRI model, "
      "12-bit data read as 16 bits); by default it is one warning line")
    a("--overlays", type=int, default=3, help="overlay PNG slices per input (0: none)")
    a("--batch-size", type=int, default=16, help="slices or windows per forward pass")
    a("--device", help="cpu, cuda, cuda:N or mps (default: cuda when available)")
    a("--max-pixels", type=int, default=None, metavar="N",
      help="refuse 2-D images (and volume slices) over N pixels (default 4096 x 4096): "
      "huge inputs take minutes and many GB")
    a("--max-voxels", type=int, default=None, metavar="N",
      help="refuse files over N voxels, read from the header before decompressing "
      "(default 2**28, or $UNETZOO_MAX_VOXELS)")
    a("--backend", default="auto", metavar="{auto,torch,onnxruntime}",
      help="forward pass on CPU: auto (default) measures a channels_last copy and ONNX "
      "Runtime against PyTorch on the first slices and runs the fastest with identical "
      "labels; onnxruntime exports once, cached beside the checkpoint; torch as is "
      "(--onnx: always ONNX Runtime)")
    a("--precision", default="fp32", metavar="{fp32,bf16}",
      help="fp32 (default, exact) or bf16: PyTorch bf16 autocast, on CPUs with AMX or "
      "AVX512-BF16 and on bf16 GPUs only (refused elsewhere); labels may differ slightly")
    return p


def run(args: argparse.Namespace) -> int:
    from unetzoo.data.imageio import voxel_limit
    from unetzoo.errors import ConfigError

    limit = getattr(args, "max_voxels", None)
    if limit is not None and limit < 1:
        raise ConfigError(f"--max-voxels must be >= 1, got {limit}")
    with voxel_limit(limit):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from unetzoo.engine.backends import check_backend, check_precision
    from unetzoo.engine.selection import run_checkpoint
    from unetzoo.errors import ConfigError

    check_backend(args.backend)
    if args.onnx and args.backend == "torch":
        raise ConfigError("--backend torch needs --checkpoint; --onnx runs ONNX Runtime")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise ConfigError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    from unetzoo.engine.distributed import resolve_device

    device = resolve_device(args.device)  # unknown names, absent GPUs: one line, before any work
    check_precision(args.precision, device)
    if args.onnx and args.precision != "fp32":
        raise ConfigError("--precision bf16 needs --checkpoint; --onnx runs in the file's precision")
    if args.max_pixels is not None and args.onnx:
        raise ConfigError("--max-pixels applies to --checkpoint; --onnx keeps the default")
    from unetzoo.engine.postprocess import load_plan
    from unetzoo.engine.predict import load_predictor
    from unetzoo.engine.predict_cases import check_cases, claim_targets

    cases = check_cases(args.inputs, args.max_pixels)  # every header, before any model is loaded
    # A user's file under a target's name: refused before the model is loaded.
    claim_targets(cases, args.output, overwrite=args.overwrite, output_format=args.output_format,
                  save_probabilities=args.save_probabilities, overlays=args.overlays)
    # One loader for both: same pre/post-processing, logits from PyTorch or ONNX Runtime.
    predictor = load_predictor(
        [args.onnx] if args.onnx else [run_checkpoint(c) for c in args.checkpoint],
        kind="onnx" if args.onnx else "checkpoint",
        device=args.device, backend="torch" if args.onnx else args.backend,
        batch_size=args.batch_size, tta=args.tta, verbose=True, precision=args.precision,
    )
    plan = None
    if args.postprocessing:
        plan = load_plan(args.postprocessing)
    elif not args.no_postprocessing:
        plan = predictor.stored_postprocessing()
    if plan is not None:
        print(f"post-processing: {len(plan['steps'])} keep-largest-component step(s) "
              f"({args.postprocessing or 'stored with the checkpoint'})", flush=True)
    predictor.predict_files(
        args.inputs, args.output, postprocessing=plan, overlays=args.overlays,
        save_probabilities=args.save_probabilities, max_pixels=args.max_pixels,
        overwrite=args.overwrite, strict_inputs=args.strict_inputs,
        output_format=args.output_format,
    )
    return 0
