"""No code from model files: every entry point fed a real pickle payload that would
``touch`` a marker file; the marker must never appear and the user gets one line.

The payloads: a genuine ``torch.export`` archive (with valid unetzoo metadata) whose
sample inputs are a pickle that calls ``Path.touch(marker)`` when unpickled with
``weights_only=False`` (what ``torch.export.load`` does), the same bytes named
``model.onnx``, and a plain ``torch.save`` of the payload object named ``model.pt``.
``test_payload_is_live`` proves that the archive does run its payload under
``torch.export.load``, so the other tests can fail.
"""

from __future__ import annotations

import io
import json
import pathlib
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from unetzoo.cli.main import main
from unetzoo.errors import UnetzooError


class _Touch:
    """Unpickling this calls ``Path.touch(marker)``: a stand-in for any code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class _Double(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def _metadata() -> dict:
    return {
        "format": "unetzoo-export", "version": 2,
        "model": {"name": "unet", "options": {"base_channels": 4}},
        "class_names": ["background", "a"], "num_classes": 2, "in_channels": 1,
        "img_size": 32, "preprocessing": {"kind": "none"}, "dataset": "phantom",
        "size_multiple": 16, "fixed_input_size": None,
    }


@pytest.fixture(scope="module")
def payloads(tmp_path_factory) -> dict[str, Path]:
    """``{"marker", "pt2", "onnx", "pt"}``: hostile files and the marker they would touch."""
    d = tmp_path_factory.mktemp("payloads")
    marker = d / "PWNED"
    buf = io.BytesIO()
    torch.save(_Touch(marker), buf)
    evil_pickle = buf.getvalue()

    clean = io.BytesIO()
    ep = torch.export.export(_Double(), (torch.randn(2, 1, 8, 8),))
    torch.export.save(ep, clean, extra_files={"unetzoo.json": json.dumps(_metadata())})
    clean.seek(0)
    out = io.BytesIO()
    replaced = False
    with zipfile.ZipFile(clean) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("sample_inputs/model.pt"):
                data, replaced = evil_pickle, True
            dst.writestr(info.filename, data)
    assert replaced, "torch.export archive layout changed; update the payload builder"
    pt2 = d / "model.pt2"
    pt2.write_bytes(out.getvalue())
    onnx_named = d / "model.onnx"
    onnx_named.write_bytes(out.getvalue())
    pt = d / "model.pt"
    pt.write_bytes(evil_pickle)
    return {"marker": marker, "pt2": pt2, "onnx": onnx_named, "pt": pt}


@pytest.fixture
def marker(payloads) -> Path:
    m = payloads["marker"]
    m.unlink(missing_ok=True)
    yield m
    assert not m.exists(), "the payload ran"


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    from PIL import Image

    p = tmp_path_factory.mktemp("img") / "slice.png"
    Image.fromarray((np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8)).save(p)
    return p


def _one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_payload_is_live(payloads, tmp_path):
    """The archive is a working exploit against ``torch.export.load`` (in a child process)."""
    marker = payloads["marker"]
    marker.unlink(missing_ok=True)
    code = f"import torch\ntry:\n    torch.export.load({str(payloads['pt2'])!r})\nexcept Exception:\n    pass\n"
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, check=False)
    assert marker.exists(), "the payload no longer runs under torch.export.load: tests are void"
    marker.unlink()


@pytest.mark.parametrize("kind", ["onnx", "pt2", "pt"])
def test_predict_onnx_refuses_payload(payloads, marker, image, tmp_path, capsys, kind):
    rc = main(["predict", str(image), "--onnx", str(payloads[kind]), "--output", str(tmp_path / "o")])
    line = _one_line_error(capsys, rc)
    if kind != "pt":
        assert "zip archive" in line and "not an ONNX model" in line


@pytest.mark.parametrize("kind", ["onnx", "pt2", "pt"])
def test_predict_checkpoint_refuses_payload(payloads, marker, image, tmp_path, capsys, kind):
    rc = main(["predict", str(image), "--checkpoint", str(payloads[kind]),
               "--output", str(tmp_path / "o")])
    _one_line_error(capsys, rc)


@pytest.mark.parametrize("kind", ["pt2", "pt"])
def test_test_refuses_payload(payloads, marker, tmp_path, capsys, kind):
    rc = main(["test", "--checkpoint", str(payloads[kind]), "--output", str(tmp_path / "r")])
    _one_line_error(capsys, rc)


@pytest.mark.parametrize("kind", ["pt2", "pt"])
def test_export_refuses_payload(payloads, marker, tmp_path, capsys, kind):
    rc = main(["export", "--checkpoint", str(payloads[kind]), "--output", str(tmp_path / "m.onnx")])
    _one_line_error(capsys, rc)


@pytest.mark.parametrize("kind", ["pt2", "pt"])
def test_train_resume_refuses_payload(payloads, marker, tmp_path, capsys, kind):
    rc = main(["train", "--resume", str(payloads[kind]), "--output", str(tmp_path / "run")])
    _one_line_error(capsys, rc)


@pytest.mark.parametrize("kind", ["onnx", "pt2", "pt"])
def test_demo_refuses_payload_at_startup(payloads, marker, capsys, monkeypatch, kind):
    import unetzoo.deploy.webapp as webapp

    def no_server(*a, **k):
        raise AssertionError("the demo started with a hostile model file")

    monkeypatch.setattr(webapp, "build_app", no_server)
    rc = main(["demo", "--checkpoint", str(payloads[kind])])
    _one_line_error(capsys, rc)


@pytest.mark.parametrize("kind", ["onnx", "pt2"])
def test_read_metadata_never_unpickles(payloads, marker, kind):
    """A torch.export archive's metadata is read as JSON from the zip, whatever its name."""
    from unetzoo.deploy import read_metadata

    meta = read_metadata(payloads[kind])
    assert meta["class_names"] == ["background", "a"]


def test_read_metadata_refuses_pickle(payloads, marker):
    from unetzoo.deploy import read_metadata

    with pytest.raises(UnetzooError):
        read_metadata(payloads["pt"])


@pytest.mark.parametrize("kind", ["onnx", "pt2", "pt"])
def test_onnx_predictor_refuses_payload(payloads, marker, kind):
    from unetzoo.engine.predict import load_predictor

    with pytest.raises(UnetzooError):
        load_predictor(payloads[kind], kind="onnx")


def _tiny_onnx(path: Path) -> Path:
    """A valid one-node ONNX model (Identity, 2 classes) with unetzoo metadata."""
    import onnx
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 2, "h", "w"])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2, "h", "w"])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "g",
                              [inp], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    meta = {**_metadata(), "in_channels": 2}
    entry = model.metadata_props.add()
    entry.key, entry.value = "unetzoo", json.dumps(meta)
    onnx.save(model, str(path))
    return path


def test_demo_picker_rechecks_swapped_file(payloads, marker, tmp_path):
    """A file replaced by a payload after start-up is refused when the picker loads it."""
    from unetzoo.deploy.webapp import DemoBackend

    good = _tiny_onnx(tmp_path / "ok.onnx")
    backend = DemoBackend([good])
    label = backend.choices()[0]
    good.write_bytes(payloads["onnx"].read_bytes())
    with pytest.raises(UnetzooError, match="not an ONNX model"):
        backend.load(label)


def test_demo_picker_takes_labels_not_paths(payloads, marker, tmp_path):
    from unetzoo.deploy.webapp import DemoBackend

    backend = DemoBackend([_tiny_onnx(tmp_path / "ok.onnx")])
    for label in (str(payloads["onnx"]), str(payloads["pt"])):
        with pytest.raises(UnetzooError, match="unknown model"):
            backend.load(label)


def test_clean_onnx_still_serves(tmp_path):
    """The content check accepts a genuine ONNX file (Identity: logits == input)."""
    from unetzoo.engine.onnx import OnnxModule

    module = OnnxModule(_tiny_onnx(tmp_path / "ok.onnx"))
    x = torch.randn(1, 2, 5, 7)
    assert torch.equal(module(x), x)


def test_onnx_with_external_data_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    path = _tiny_onnx(tmp_path / "ext.onnx")
    model = onnx.load(str(path))
    w = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("float_data")
    entry = w.external_data.add()
    entry.key, entry.value = "location", "../../../etc/passwd"
    model.graph.initializer.append(w)
    onnx.save(model, str(path))
    from unetzoo.deploy.export import load_onnx

    with pytest.raises(UnetzooError, match="external files"):
        load_onnx(path)


@pytest.mark.parametrize("content", [b"", b"\x00" * 64, b"not an onnx file at all\n"])
def test_non_onnx_bytes_are_refused(tmp_path, content):
    from unetzoo.deploy.export import load_onnx

    p = tmp_path / "x.onnx"
    p.write_bytes(content)
    with pytest.raises(UnetzooError):
        load_onnx(p)


def test_no_unsafe_loader_in_sources():
    """Every unpickling call in src/ is weights-only (or the export check's own bytes)."""
    root = Path(__file__).resolve().parents[2] / "src" / "unetzoo"
    hits = []
    for f in root.rglob("*.py"):
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#")[0]
            if "torch.load(" in code and "weights_only=True" not in code:
                hits.append(f"{f.name}:{n}")
            if any(s in code for s in ("pickle.load", "allow_pickle=True", "yaml.load(",
                                       "yaml.unsafe_load", "torch.jit.load")):
                hits.append(f"{f.name}:{n}")
            if "torch.export.load(" in code and "io.BytesIO(pt2_bytes)" not in code:
                hits.append(f"{f.name}:{n}")
    assert not hits, hits
