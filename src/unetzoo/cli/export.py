"""``unetzoo export --checkpoint CKPT --format onnx [--dynamic] [--out FILE] [--opset N]``."""

from __future__ import annotations

import argparse

from unetzoo.deploy.export import DEFAULT_OPSET, FORMATS


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX (or a torch.export program)",
        description="Export a trained checkpoint to ONNX (checked with onnx.checker and "
        "compared with PyTorch through ONNX Runtime) or, where ONNX cannot express the "
        "model, to a torch.export program (.pt2). The file carries the model name, "
        "options, class names, img_size and preprocessing, so `unetzoo predict --onnx` "
        "needs nothing else.",
    )
    p.add_argument("--checkpoint", required=True, help="a .pt checkpoint from `unetzoo train`")
    p.add_argument(
        "--format",
        default="onnx",
        choices=FORMATS,
        help="onnx (default), torch-export (.pt2), or auto (ONNX, else torch.export)",
    )
    p.add_argument(
        "--dynamic",
        action="store_true",
        help="dynamic batch, height and width (height/width stay fixed for fixed-size "
        "models such as the Transformers); default: the checkpoint's img_size, batch 1",
    )
    p.add_argument("--out", default=None, help="output file (default: next to the checkpoint)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default 18)")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the ONNX Runtime vs PyTorch comparison after writing",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from unetzoo.deploy.export import export_checkpoint

    res = export_checkpoint(
        args.checkpoint,
        args.out,
        fmt=args.format,
        dynamic=args.dynamic,
        opset=args.opset,
        verify=not args.no_verify,
    )
    if res.fallback_reason:
        print(f"note: ONNX cannot express this model ({res.fallback_reason}); wrote a "
              "torch.export program instead")
    axes = ", ".join(f"{name} (axis {axis})" for axis, name in sorted(res.dynamic_axes.items()))
    print(f"wrote {res.path} ({res.format}, model {res.metadata['model']['name']})")
    print(f"  example input {tuple(res.example_shape)}; dynamic axes: {axes or 'none'}")
    if res.max_abs_diff is not None:
        runtime = "ONNX Runtime" if res.format == "onnx" else "the loaded program"
        print(f"  max |{runtime} - PyTorch| logit difference: {res.max_abs_diff:.2e}")
    return 0
