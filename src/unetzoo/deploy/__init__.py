"""Deployment: ONNX / torch.export export, ONNX Runtime prediction and the web demo.

``export_model`` / ``export_checkpoint`` write an ONNX file (or a ``torch.export``
program) that carries the checkpoint's metadata;
:func:`unetzoo.engine.predict.load_predictor` runs such a file through ONNX Runtime with
the same pre- and post-processing as the checkpoint path; the demo app lives in
:mod:`unetzoo.deploy.webapp`. Heavy dependencies (onnx, onnxruntime,
gradio) are imported lazily so ``import unetzoo.deploy`` stays cheap.
"""

from __future__ import annotations

from unetzoo.deploy.export import (
    FORMATS,
    ExportError,
    ExportResult,
    export_checkpoint,
    export_model,
    read_metadata,
)

__all__ = [
    "FORMATS",
    "ExportError",
    "ExportResult",
    "export_checkpoint",
    "export_model",
    "read_metadata",
]
