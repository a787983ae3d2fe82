"""``unetzoo export --checkpoint CKPT --format onnx [--dynamic] [--output FILE] [--opset N]``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from unetzoo.cli import add_output_option
from unetzoo.deploy.export import DEFAULT_OPSET, FORMATS, SUPPORTED_OPSETS, check_opset


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
    p.add_argument("--checkpoint", required=True, help="a .pt checkpoint from `unetzoo train`, or its run folder")
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
    add_output_option(p, help="output file (default: next to the checkpoint)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset, {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1} "
                   f"(default {DEFAULT_OPSET})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --output file that unetzoo did not write "
                   "(never the checkpoint itself)")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the ONNX Runtime vs PyTorch comparison after writing",
    )
    return p


def check_out(out: str | None) -> None:
    """A bad ``--output`` is the user's path, not the model's fault: one line before any
    export work (it used to surface as "cannot be exported to ONNX")."""
    from unetzoo.errors import ConfigError

    if out is None:
        return
    p = Path(out)
    if out.endswith(("/", os.sep)) or p.is_dir():
        raise ConfigError(
            f"--output {out} names a folder; give a file name such as {p / 'model.onnx'}"
        )
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--output {out}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"--output {out}: the folder {parent} is not writable; choose another path")
    if parent == p.parent and not p.exists():
        try:  # the real test: some folders (/proc, read-only mounts) pass os.access
            p.open("xb").close()
        except OSError as exc:
            raise ConfigError(
                f"--output {out}: cannot write there ({exc.strerror or exc}); choose another path"
            ) from None
        p.unlink()


def run(args: argparse.Namespace) -> int:
    from unetzoo.deploy.export import export_checkpoint

    check_opset(args.opset, "--opset")  # export_model's own rule, before the checkpoint loads
    check_out(args.output)
    from unetzoo.engine.selection import run_checkpoint

    res = export_checkpoint(
        run_checkpoint(args.checkpoint),
        args.output,
        fmt=args.format,
        dynamic=args.dynamic,
        opset=args.opset,
        verify=not args.no_verify,
        overwrite=args.overwrite,
    )
    if res.fallback_reason:
        print(f"note: ONNX cannot express this model ({res.fallback_reason}); wrote a "
              "torch.export program instead")
    axes = ", ".join(f"{name} (axis {axis})" for axis, name in sorted(res.dynamic_axes.items()))
    print(f"wrote {res.path} ({res.format}, model {res.metadata['model']['name']})")
    print(f"  example input {tuple(res.example_shape)}; dynamic axes: {axes or 'none'}")
    meta = res.metadata
    print(f"  inference spec: {len(meta['class_names'])} classes, img_size {meta['img_size']}, "
          f"{meta['preprocessing']['kind']} normalisation, slices {meta.get('slicing')} / "
          f"{meta.get('resize')} (the protocol is in the file; docs/deploy.md)")
    if res.max_abs_diff is not None:
        runtime = "ONNX Runtime" if res.format == "onnx" else "the loaded program"
        print(f"  max |{runtime} - PyTorch| logit difference: {res.max_abs_diff:.2e}")
    return 0
