"""ONNX Runtime prediction: an exported file run through the one prediction path.

The ONNX module and reader live in :mod:`unetzoo.engine.onnx` and the loader in
:func:`unetzoo.engine.predict.load_predictor`; this module keeps the deploy-side names.
:class:`OnnxPredictor` is the :class:`~unetzoo.engine.predict.Predictor` of an ``.onnx``
file: its ``spec`` comes from the file's metadata and its files go through
:func:`unetzoo.engine.predict_cases.predict_cases`, so the only difference between
``unetzoo predict --checkpoint`` and ``--onnx`` is which forward computes the logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unetzoo.engine.onnx import OnnxModule  # noqa: F401 - re-exported
from unetzoo.engine.predict import Predictor, load_predictor


class OnnxPredictor(Predictor):
    """Predict with an exported ``.onnx`` file (see :func:`load_predictor`).

    Args:
        path: an ONNX file written by ``unetzoo export``.
        batch_size: slices per forward pass.
        tta: average the softmax over flips.
        providers: ONNX Runtime execution providers (default CPU).
    """

    def __init__(self, path: str | Path, batch_size: int = 16, tta: bool = False,
                 providers: list[str] | None = None) -> None:
        loaded = load_predictor(path, kind="onnx", batch_size=batch_size, tta=tta,
                                providers=providers)
        super().__init__(**{f: getattr(loaded, f) for f in loaded.__dataclass_fields__})

    @property
    def metadata(self) -> dict[str, Any]:
        """The file's unetzoo metadata (the spec's keys and the protocol)."""
        return self.model.metadata


def predict_files(
    inputs: list[str | Path],
    onnx_path: str | Path,
    out_dir: str | Path,
    tta: bool = False,
    device: str | None = None,
    batch_size: int = 16,
    overlays: int = 3,
    verbose: bool = True,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """``unetzoo predict --onnx`` from Python: :func:`unetzoo.engine.predict.predict_files`
    with the ``.onnx`` file, so inputs and targets in ``out_dir`` are checked before the
    file is loaded and a file there that unetzoo did not write is refused unless
    ``overwrite``. ``device`` is accepted for symmetry; ONNX Runtime runs on its own
    providers."""
    from unetzoo.engine.predict import predict_files as predict_with

    return predict_with(inputs, onnx_path, out_dir, tta=tta, batch_size=batch_size,
                        overlays=overlays, verbose=verbose, overwrite=overwrite)
