"""ONNX Runtime inference with the checkpoint path's pre- and post-processing.

:class:`OnnxModule` wraps an ``onnxruntime.InferenceSession`` as a ``torch.nn.Module``
(``(N, C, H, W)`` float tensor -> logits tensor), so the engine's own inference
functions (batched slice inference in the TransUNet protocol, sliding windows, TTA) run
unchanged on it: the only difference between ``unetzoo predict --checkpoint`` and
``--onnx`` is which forward computes the logits. :class:`OnnxPredictor` bundles that
module with the metadata stored in the file (class names, img_size, preprocessing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unetzoo.deploy.export import INPUT_NAME, load_onnx
from unetzoo.errors import CheckpointError, ModelError


class OnnxModule(nn.Module):
    """An ONNX file as a module: ``forward(x (N, C, H, W)) -> logits (N, K, H', W')``.

    Static axes of the file are honoured: a fixed batch size splits (and zero-pads) the
    batch into chunks; a fixed height/width that differs from the input is one clear
    error. Runs on the CPU execution provider unless ``providers`` says otherwise.
    """

    def __init__(
        self, path: str | Path, providers: list[str] | None = None,
        session_options: Any | None = None,
    ) -> None:
        super().__init__()
        import onnxruntime as ort

        self.path = Path(path)
        # ONNX protobuf only, checked by content; the session gets the checked bytes.
        data, self.metadata = load_onnx(self.path)
        try:
            self.session = ort.InferenceSession(
                data, sess_options=session_options,
                providers=providers or ["CPUExecutionProvider"],
            )
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise CheckpointError(f"ONNX Runtime cannot load {self.path}: {exc}") from exc
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name if inp.name else INPUT_NAME
        self.input_shape = [d if isinstance(d, int) else None for d in inp.shape]
        self.in_channels = int(self.metadata["in_channels"])
        self.num_classes = int(self.metadata["num_classes"])
        self.unetzoo_name = self.metadata["model"]["name"]
        self.unetzoo_options = self.metadata["model"]["options"]
        # The engine finds the device from the first parameter; this one pins it to CPU.
        self._anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ModelError(
                f"{self.path.name} takes (N, {self.in_channels}, H, W) input, got "
                f"{tuple(x.shape)}"
            )
        for axis, name in ((2, "height"), (3, "width")):
            fixed = self.input_shape[axis]
            if fixed is not None and x.shape[axis] != fixed:
                raise ModelError(
                    f"{self.path.name} was exported with a fixed {name} of {fixed}, got "
                    f"{x.shape[axis]}; resize the input or export with --dynamic"
                )
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        batch = self.input_shape[0]
        if batch is None or batch == arr.shape[0]:
            out = self._run(arr)
        else:
            chunks = []
            for start in range(0, arr.shape[0], batch):
                part = arr[start : start + batch]
                n = part.shape[0]
                if n < batch:
                    part = np.concatenate([part, np.zeros((batch - n, *part.shape[1:]), part.dtype)])
                chunks.append(self._run(part)[:n])
            out = np.concatenate(chunks)
        return torch.from_numpy(out).to(x.device)


class OnnxPredictor:
    """Predict label maps with an exported ``.onnx`` file.

    The counterpart of predicting from a checkpoint: ``model`` is an :class:`OnnxModule`
    and ``class_names``, ``img_size``, ``preprocessing``, ``in_channels`` come from the
    file's metadata, so callers treat both the same way.

    Args:
        path: an ONNX file written by ``unetzoo export``.
        batch_size: slices per forward pass.
        tta: average the softmax over flips.
        providers: ONNX Runtime execution providers (default CPU).
    """

    def __init__(
        self,
        path: str | Path,
        batch_size: int = 16,
        tta: bool = False,
        providers: list[str] | None = None,
    ) -> None:
        self.model = OnnxModule(path, providers=providers)
        self.metadata: dict[str, Any] = self.model.metadata
        self.class_names: list[str] = list(self.metadata["class_names"])
        self.img_size = int(self.metadata.get("img_size") or 0) or None
        self.preprocessing: dict[str, Any] = self.metadata.get("preprocessing") or {"kind": "none"}
        self.in_channels = int(self.metadata["in_channels"])
        self.batch_size = int(batch_size)
        self.tta = bool(tta)

    def checkpoint_like(self) -> dict[str, Any]:
        """The metadata keys a checkpoint dict has (without weights), for shared code."""
        return {
            "model": dict(self.metadata["model"]),
            "class_names": self.class_names,
            "in_channels": self.in_channels,
            "img_size": self.img_size,
            "preprocessing": self.preprocessing,
            "dataset": self.metadata.get("dataset"),
        }

    def predict_volume(self, image: np.ndarray) -> np.ndarray:
        """Labels ``(D, H, W)`` int64 of normalised ``image`` ``(C, D, H, W)``, slice-wise.

        Slices are resized to ``img_size`` (cubic) and labels back (nearest), as the
        checkpoint path does (:func:`unetzoo.engine.inference.predict_volume`).
        """
        from unetzoo.engine.inference import predict_volume

        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 4 or image.shape[0] != self.in_channels:
            raise ModelError(
                f"expected a (C={self.in_channels}, D, H, W) volume, got shape {image.shape}"
            )
        size = self.img_size or int(self.model.input_shape[2] or image.shape[-1])
        return predict_volume(
            self.model, image, size, batch_size=self.batch_size, tta=self.tta, device="cpu"
        )

    def predict_files(
        self,
        inputs: list[str | Path],
        out_dir: str | Path,
        tta: bool | None = None,
        batch_size: int | None = None,
        overlays: int = 3,
        verbose: bool = True,
    ) -> list[dict[str, Any]]:
        """:func:`unetzoo.engine.predict.predict_files` with this file's logits."""
        return predict_files(
            inputs, self.model.path, out_dir, tta=self.tta if tta is None else tta,
            batch_size=batch_size or self.batch_size, overlays=overlays, verbose=verbose,
            _module=self.model,
        )


def predict_files(
    inputs: list[str | Path],
    onnx_path: str | Path,
    out_dir: str | Path,
    tta: bool = False,
    device: str | None = None,
    batch_size: int = 16,
    overlays: int = 3,
    verbose: bool = True,
    _module: OnnxModule | None = None,
) -> list[dict[str, Any]]:
    """``unetzoo predict --onnx``: the checkpoint path's predictor, fed by ONNX Runtime.

    Same arguments and outputs as :func:`unetzoo.engine.predict.predict_files` (label
    maps with the input's geometry, overlay PNGs), with ``onnx_path`` in place of the
    checkpoint. The engine's :func:`~unetzoo.engine.predict.predict_files_with_model`
    runs with an :class:`OnnxModule` and the file's metadata, so reading, normalisation,
    resizing, sliding windows and writing are the same code for both paths. ``device``
    is accepted for symmetry; ONNX Runtime runs on its own providers (CPU by default).
    """
    from unetzoo.engine.predict import predict_files_with_model

    module = _module or OnnxModule(onnx_path)
    meta = module.metadata
    meta_in_checkpoint_form = {
        "class_names": list(meta["class_names"]),
        "in_channels": int(meta["in_channels"]),
        "img_size": int(meta.get("img_size") or module.input_shape[2] or 224),
        "preprocessing": meta.get("preprocessing") or {"kind": "none"},
    }
    return predict_files_with_model(
        inputs, module, meta_in_checkpoint_form, out_dir, tta=tta, device="cpu",
        batch_size=batch_size, overlays=overlays, verbose=verbose,
    )
