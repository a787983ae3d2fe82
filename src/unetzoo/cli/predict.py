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
    from unetzoo.engine.predict import STORED, predict_files
    from unetzoo.engine.selection import run_checkpoint
    from unetzoo.errors import ConfigError

    if args.onnx and args.backend == "torch":
        raise ConfigError("--backend torch needs --checkpoint; --onnx runs ONNX Runtime")
    plan = (args.postprocessing if args.postprocessing
            else None if args.no_postprocessing else STORED)
    predict_files(
        args.inputs, args.onnx or [run_checkpoint(c) for c in args.checkpoint], args.output,
        tta=args.tta, device=args.device, batch_size=args.batch_size, overlays=args.overlays,
        max_pixels=args.max_pixels, backend=args.backend, postprocessing=plan,
        save_probabilities=args.save_probabilities, overwrite=args.overwrite,
        kind="onnx" if args.onnx else "checkpoint", precision=args.precision,
        strict_inputs=args.strict_inputs, max_voxels=args.max_voxels,
        output_format=args.output_format,
    )
    return 0
