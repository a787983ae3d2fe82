"""ONNX export parity over the zoo: ONNX Runtime logits vs PyTorch, small configurations.

Each model is exported once with dynamic axes (batch, and height/width unless it has a
fixed input size), checked with ``onnx.checker``, then run by ONNX Runtime on random
inputs of two shapes (max |diff| <= 1e-4) and on phantom slices (identical argmax).

Exporting costs several seconds per model on two CPU cores, so the default run covers
one registration per architecture class (``COVERED_BY`` names the stand-in of the others:
the same class and operators at another depth or with other flags);
``UNETZOO_EXPORT_ALL=1`` runs every one (docs/deploy.md lists the measured results).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from small_configs import best_slice, small_config

from unetzoo import create_model, list_models
from unetzoo.models import get_entry

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOL = 1e-4
# Registrations whose graph another exported model already covers: same class and
# operators, other depth or flags. Everything else (and any model added later) runs by
# default. ``unet`` itself is exported and compared in test_export_cli.py.
COVERED_BY = {
    "unet": "test_export_cli.py", "unet_paper": "unet",
    **{f"resnet{d}_unet": "resnet18_unet" for d in (34, 50, 101, 152)},
    **{f"resunet_v0_{i}": "resunet_v1_0" for i in range(1, 8)},
}
EXPORT_ALL = os.environ.get("UNETZOO_EXPORT_ALL") == "1"
# Models ONNX cannot express: name -> reason (also listed in docs/deploy.md).
NOT_EXPORTABLE: dict[str, str] = {}
NUM_CLASSES = 9


def _build(name: str) -> torch.nn.Module:
    entry = get_entry(name)
    accepted = entry.accepted_options()
    cfg = small_config(name, accepted if accepted is not None else set(entry.default_options()))
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=NUM_CLASSES, **cfg)
    return _calibrate_batchnorm(model)


def _calibrate_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Set BatchNorm running statistics from two random batches, then eval mode.

    Freshly initialised running stats (mean 0, var 1) let activations grow through deep
    residual stacks to logits of ~1e3, where float32 rounding alone exceeds 1e-4. Matched
    statistics, as any trained model has, keep the logits O(1) like real checkpoints.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if bns:
        size = getattr(model, "fixed_input_size", None) or 48
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batches
        model.train()
        gen = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for _ in range(2):
                model(torch.randn(2, 1, size, size, generator=gen))
            # A channel that random inputs leave constant (dead ReLU6, padding-only
            # response) gets a variance ~1e-12 and would amplify rounding 300-fold.
            for bn in bns:
                bn.running_var.clamp_(min=1e-2)
    return model.eval()


def _phantom_batch(phantom_norm: np.ndarray, labels: np.ndarray, size: int | None) -> torch.Tensor:
    z = best_slice(labels)
    x = torch.from_numpy(phantom_norm[[z, max(z - 1, 0)]].astype(np.float32))[:, None]
    if size is not None and x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                            align_corners=False)
    return x


@pytest.mark.parametrize("name", list_models())
def test_onnx_runtime_matches_pytorch(name, tmp_path, phantom_norm, phantom_case):
    if name in NOT_EXPORTABLE:
        pytest.xfail(NOT_EXPORTABLE[name])
    if name in COVERED_BY and not EXPORT_ALL:
        pytest.skip(f"same operators as {COVERED_BY[name]}, exported in the default run; "
                    "UNETZOO_EXPORT_ALL=1 exports it too")
    from unetzoo.deploy.export import export_model

    model = _build(name)
    fixed = getattr(model, "fixed_input_size", None)
    res = export_model(model, tmp_path / f"{name}.onnx", img_size=fixed or 48, verify=False)
    assert res.format == "onnx"
    onnx.checker.check_model(str(res.path), full_check=True)
    meta = res.metadata
    assert meta["model"]["name"] == name and meta["num_classes"] == NUM_CLASSES
    if fixed:
        assert res.dynamic_axes == {0: "batch"}
        shapes = [(1, 1, fixed, fixed), (3, 1, fixed, fixed)]
    else:
        assert res.dynamic_axes == {0: "batch", 2: "height", 3: "width"}
        # Neither size is a multiple of the model's size multiple: padding is in the graph.
        shapes = [(1, 1, 37, 45), (3, 1, 50, 29)]
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])

    gen = torch.Generator().manual_seed(1)
    diffs = []
    for shape in shapes:
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            ref = model(x).numpy()
        got = sess.run(None, {"image": x.numpy()})[0]
        assert got.shape == ref.shape == (shape[0], NUM_CLASSES, *shape[2:])
        diff = float(np.abs(got - ref).max())
        diffs.append(diff)
        assert diff <= TOL, f"{name}: max |ORT - torch| = {diff:.2e} at {shape}"

    x = _phantom_batch(phantom_norm, phantom_case[1], fixed)
    with torch.no_grad():
        ref = model(x).numpy()
    got = sess.run(None, {"image": x.numpy()})[0]
    diffs.append(float(np.abs(got - ref).max()))
    assert diffs[-1] <= TOL
    np.testing.assert_array_equal(got.argmax(1), ref.argmax(1))
    if os.environ.get("UNETZOO_PARITY_LOG"):  # the numbers docs/deploy.md quotes
        with open(os.environ["UNETZOO_PARITY_LOG"], "a") as fh:
            fh.write(json.dumps({"model": name, "max_abs_diff": max(diffs),
                                 "dynamic_axes": list(res.dynamic_axes.values()),
                                 "params": sum(p.numel() for p in model.parameters())}) + "\n")
