"""``predict``'s input path walked as data (issue 25): the modules a PNG and a NIfTI pass
through from file name to model input, traced with ``sys.setprofile``.

A *stay* is a run of calls inside one module entered by a call from another module
(property getters and generated dunders, i.e. data access, are not stays); the path has
two phases, :func:`~unetzoo.engine.predict_cases.check_cases` (every header, before any
model is loaded) and :func:`~unetzoo.engine.predict_cases.read_case`. Before the
registry (``data/io.py``, ``data/medio.py`` and ``engine/inputs.py`` reading in turn) a
NIfTI made 14 stays with 5 climbs from ``data`` back up to ``engine``, the PNG 14 with 6.
Now each phase goes down once and never re-enters a module it left.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from unetzoo.engine.predict_cases import predict_cases

PHASES = ("check_cases", "read_case")


def _accessor(frame) -> bool:
    name = frame.f_code.co_name
    if name.startswith(("__", "<")):
        return True
    owner = frame.f_locals.get("self")
    return owner is not None and isinstance(getattr(type(owner), name, None), property)


def _walk(run) -> dict[str, list[str]]:
    """``{phase: [module of each stay]}``, up to the first model call."""
    stays: dict[str, list[str]] = {p: [] for p in PHASES}
    phase: list[str] = []

    def profile(frame, event, arg):
        mod, name = frame.f_globals.get("__name__", ""), frame.f_code.co_name
        if not mod.startswith("unetzoo.") or name == "<module>":
            return
        if mod == "unetzoo.engine.predict_cases" and name in PHASES:
            if event == "call":
                phase.append(name)
            elif event == "return":
                phase.pop()
            return
        caller = frame.f_back.f_globals.get("__name__", "") if frame.f_back else ""
        if event == "call" and phase and caller != mod and not _accessor(frame):
            seq = stays[phase[0]]
            if not seq or seq[-1] != mod:
                seq.append(mod)

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return stays


def _png(tmp_path):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24), dtype=np.uint8)).save(path)
    return path


def _nifti(tmp_path):
    from unetzoo.data.imageio import save_image

    path = tmp_path / "b.nii.gz"
    vol = np.random.default_rng(0).normal(size=(12, 10, 3)).astype(np.float32)
    return save_image(vol, np.diag([1.0, 1.0, 3.0, 1.0]), path)


@pytest.mark.parametrize("make", [_png, _nifti])
def test_input_path_goes_down_once_per_phase(tmp_path, make):
    from unetzoo import create_model

    torch.manual_seed(0)
    model = create_model("unet", in_channels=1, num_classes=2, base_channels=4).eval()
    meta = {"img_size": 16, "in_channels": 1, "class_names": ["bg", "fg"],
            "preprocessing": {"kind": "none"}}
    path = make(tmp_path)
    stays = _walk(lambda: predict_cases([path], model, meta, tmp_path / "o", overlays=0,
                                        verbose=False))
    check, read = stays["check_cases"], stays["read_case"]
    for seq in (check, read):  # no zig-zag: a module left is never entered again
        assert len(seq) == len(set(seq)), seq
    assert all(m.startswith("unetzoo.data.") for m in check), check  # headers: data only
    assert read[0] == "unetzoo.data.imageio", read  # every file through the registry
    engine = [i for i, m in enumerate(read) if m.startswith("unetzoo.engine.")]
    assert engine == [len(read) - 2], read  # one step up, to the model input, then down
    assert read[-1] == "unetzoo.data.preprocessing", read
    assert len(check) + len(read) <= 10, stays
