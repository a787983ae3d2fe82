"""Hashes of what the pipeline writes, for refactors that must change no output.

Run on the commit before a refactor and on the one after, on the same machine (training
on a CPU is bit-reproducible at one thread; another CPU may differ), and compare:

    OMP_NUM_THREADS=1 PYTHONPATH=src python tests/golden/output_hashes.py > before.txt
    ... refactor ...
    OMP_NUM_THREADS=1 PYTHONPATH=src python tests/golden/output_hashes.py > after.txt
    diff before.txt after.txt

A tiny phantom run: train (2 epochs), its test report, `unetzoo test`, `unetzoo predict`
on a NIfTI volume and a PNG slice, `unetzoo export` to ONNX. Label maps are hashed as
voxel arrays plus their affine (gzip headers carry a time), reports as their numbers
(paths and times dropped), the ONNX file as its graph and metadata. Not collected by
pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

VOLATILE = ("time", "seconds", "path", "dir", "date", "created", "host", "version", "file",
            "checkpoint", "output", "root", "machine")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in sorted(obj.items())
                if not any(w in k.lower() for w in VOLATILE)}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return round(obj, 6)
    return obj


def _cli(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "unetzoo", *args], capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"unetzoo {args[0]} failed: {proc.stderr.strip()[-1500:]}")


def _label_hash(path: Path) -> str:
    if path.suffix == ".png":
        return _digest(np.asarray(Image.open(path)).tobytes())
    img = nib.load(str(path))
    return _digest(np.asarray(img.dataobj).tobytes() + np.round(img.affine, 6).tobytes())


def _json_hash(path: Path) -> str:
    return _digest(json.dumps(_clean(json.loads(path.read_text())), sort_keys=True).encode())


def _onnx_hash(path: Path) -> str:
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:  # stack traces name the checkout's path
        del node.metadata_props[:]
    meta = {p.key: p.value for p in model.metadata_props}
    meta = _clean({k: (json.loads(v) if v[:1] in "[{" else v) for k, v in meta.items()})
    return _digest(model.graph.SerializeToString() + json.dumps(meta, sort_keys=True).encode())


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="unetzoo-golden-") as tmp:
        t = Path(tmp)
        run = t / "run"
        _cli("train", "--model", "unet", "--model-option", "base_channels=4", "--img-size",
             "32", "--batch-size", "4", "--max-epochs", "2", "--seed", "0", "--device", "cpu",
             "--output", str(run))
        ckpt = run / "checkpoints" / "final.pt"
        rows = {"train report summary.json": _json_hash(run / "report" / "summary.json")}
        _cli("test", "--checkpoint", str(ckpt), "--device", "cpu", "--output", str(t / "test"))
        for p in sorted((t / "test").rglob("*.json")):
            if p.name.startswith("."):  # the run-folder manifest: file hashes and times
                continue
            rows[f"test {p.relative_to(t / 'test')}"] = _json_hash(p)
        for p in sorted((t / "test").rglob("*.csv")):
            rows[f"test {p.relative_to(t / 'test')}"] = _digest(p.read_bytes())
        rng = np.random.default_rng(0)
        vol = (rng.normal(0, 200, (40, 40, 6)) + 40).astype(np.float32)
        nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.5, 1.0])), str(t / "vol.nii.gz"))
        Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8)).save(t / "slice.png")
        _cli("predict", "--checkpoint", str(ckpt), "--device", "cpu", "--overlays", "0",
             "-o", str(t / "pred"), str(t / "vol.nii.gz"), str(t / "slice.png"))
        for p in sorted((t / "pred").rglob("*")):
            if p.suffix in (".png", ".gz", ".nii"):
                rows[f"predict {p.relative_to(t / 'pred')}"] = _label_hash(p)
        _cli("export", "--checkpoint", str(ckpt), "-o", str(t / "model.onnx"))
        rows["export model.onnx"] = _onnx_hash(t / "model.onnx")
        _cli("predict", "--onnx", str(t / "model.onnx"), "--overlays", "0",
             "-o", str(t / "pred_onnx"), str(t / "vol.nii.gz"))
        for p in sorted((t / "pred_onnx").rglob("*.gz")):
            rows[f"predict --onnx {p.relative_to(t / 'pred_onnx')}"] = _label_hash(p)
    for name, digest in rows.items():
        print(f"{digest}  {name}")


if __name__ == "__main__":
    main()
