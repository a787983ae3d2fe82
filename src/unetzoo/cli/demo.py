"""``unetzoo demo [--checkpoint CKPT] [--port N] [--host 127.0.0.1]``: the web demo."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="start the web demo (upload an image or volume, see the segmentation)",
        description="A local web app: upload a PNG/JPEG/TIFF image or a NIfTI/NRRD/.mha volume, "
        "pick a model, see the segmentation overlaid with a class legend, per-class "
        "areas or volumes, Dice/HD95 against an uploaded ground truth, and download the "
        "label map. Without --checkpoint it offers the phantom demo model (`make demo`, "
        "or trained on request in the app).",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="CKPT",
        help="a .pt checkpoint or an exported .onnx file (repeat for several)",
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--max-upload-mb", type=float, default=64.0,
                   help="upload size limit in MiB (default 64)")
    return p


def run(args: argparse.Namespace) -> int:
    from unetzoo.errors import ConfigError

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be 1..65535, got {args.port}")
    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    from unetzoo.deploy.webapp import launch

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach this address can "
              "upload files and run the models")
    print(f"unetzoo demo on http://{args.host}:{args.port} (Ctrl+C stops it)", flush=True)
    launch(args.checkpoint, host=args.host, port=args.port,
           max_bytes=int(args.max_upload_mb * 2**20), block=True)
    return 0
