"""``--precision bf16``: detected from the CPU's flags, refused in one line elsewhere, and
(with a forced-capable detection) really run under bf16 autocast."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unetzoo.engine import backends
from unetzoo.engine.backends import Bf16Model, check_precision, cpu_bf16_support, cpu_flags
from unetzoo.engine.inference import predict_volume
from unetzoo.errors import ConfigError
from unetzoo.models import create_model

ZEN3 = frozenset({"avx", "avx2", "fma", "sse4_2"})  # this machine: no native bf16


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("unet", in_channels=1, num_classes=3, base_channels=4).eval()


@pytest.fixture()
def bf16_cpu(monkeypatch):
    """Pretend the CPU has AMX (CPU bf16 autocast runs on any x86, only slowly)."""
    monkeypatch.setattr(backends, "cpu_flags", lambda *a, **k: frozenset({"avx2", "amx_bf16"}))


@pytest.fixture()
def plain_cpu(monkeypatch):
    monkeypatch.setattr(backends, "cpu_flags", lambda *a, **k: ZEN3)


def test_detection_reads_the_flags_it_is_given(tmp_path):
    assert cpu_bf16_support(ZEN3) is None
    assert cpu_bf16_support(ZEN3 | {"avx512_bf16"}) == "avx512_bf16"
    assert cpu_bf16_support(ZEN3 | {"amx_bf16", "avx512_bf16"}) == "amx_bf16"
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert cpu_flags(x86) >= {"avx2", "amx_bf16"} and cpu_bf16_support(cpu_flags(x86))
    assert cpu_bf16_support(cpu_flags(arm)) == "bf16"
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_check_precision_refuses_in_one_line():
    assert check_precision("fp32", "cpu", flags=ZEN3) == "fp32"
    assert check_precision("bf16", "cpu", flags={"amx_bf16"}) == "bf16"
    with pytest.raises(ConfigError, match=r"no native bf16 \(AMX or AVX512-BF16") as err:
        check_precision("bf16", "cpu", flags=ZEN3)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="unknown precision 'fp16'; choose one of: fp32, bf16"):
        check_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="runs on cpu or cuda, not mps"):
        check_precision("bf16", "mps", flags={"amx_bf16"})


def test_bf16_runs_under_autocast_and_mostly_agrees(bf16_cpu):
    model = _model()
    backend = backends.make_backend(model, "auto", precision="bf16")
    assert isinstance(backend, Bf16Model) and "bf16" in backend.backend
    dtypes = []
    conv = next(m for m in backend.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    vol = np.random.default_rng(0).random((1, 3, 40, 44), dtype=np.float32)
    got = predict_volume(backend, vol, 32, batch_size=4)
    ref = predict_volume(model, vol, 32, batch_size=4)
    assert dtypes and set(dtypes) == {torch.bfloat16}  # the convolutions ran in bf16
    assert backend(torch.zeros(1, 1, 32, 32)).dtype == torch.float32
    assert got.shape == ref.shape and (got == ref).mean() > 0.9
    # the caller's model is untouched (fp32, NCHW)
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(ConfigError, match="use --backend auto or torch"):
        backends.make_backend(model, "onnxruntime", precision="bf16")


def test_fp32_stays_the_default(bf16_cpu):
    model = _model()
    assert backends.make_backend(model, "torch") is model  # never bf16 unless asked


def _checkpoint(path):
    from ckpt_helpers import save_model_checkpoint

    return save_model_checkpoint(path, _model(), class_names=["background", "a", "b"],
                                 dataset="phantom")


@pytest.mark.parametrize("command", ["test", "predict"])
def test_cli_refuses_bf16_on_a_cpu_without_it(command, plain_cpu, tmp_path, capsys):
    from unetzoo.cli.main import main

    argv = ["--checkpoint", str(tmp_path / "x.pt"), "--precision", "bf16", "--device", "cpu"]
    argv = ["test", *argv] if command == "test" else ["predict", "in.nii.gz", *argv,
                                                     "--output", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --precision bf16: this CPU") and "\n" not in err
    assert "use --precision fp32" in err


def test_cli_unknown_precision_is_one_line(tmp_path, capsys):
    from unetzoo.cli.main import main

    assert main(["test", "--checkpoint", str(tmp_path / "x.pt"), "--precision", "half",
                 "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: unknown precision 'half'; choose one of: fp32, bf16")


def test_cli_predict_bf16_with_a_capable_cpu(bf16_cpu, tmp_path, capsys):
    import nibabel as nib

    from unetzoo.cli.main import main

    ckpt = _checkpoint(tmp_path / "ck" / "best.pt")
    img = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(1).random((40, 44, 3)).astype(np.float32),
                             np.eye(4)), img)
    maps = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert main(["predict", str(img), "--checkpoint", str(ckpt), "--output", str(out),
                     "--device", "cpu", "--overlays", "0", "--precision", precision]) == 0
        maps[precision] = np.asarray(nib.load(out / "case.nii.gz").dataobj)
    assert "torch bf16 autocast" in capsys.readouterr().out
    assert (maps["bf16"] == maps["fp32"]).mean() > 0.9


class _OneCase:
    """A one-case in-memory test split for ``run_test``."""

    name = "mem"
    num_classes = 3
    in_channels = 1
    class_names = ["background", "a", "b"]
    root = "."

    def splits(self):
        return ["test"]

    def cases(self, split):
        return ["c0"]

    def load_case(self, cid, split):
        from unetzoo.data.base import Case

        lab = np.zeros((2, 32, 32), np.int64)
        lab[:, 8:20, 8:20] = 1
        return Case(id=cid, image=lab[None].astype(np.float32), label=lab,
                    spacing=(1.0, 1.0, 1.0), affine=None, class_names=list(self.class_names))


def test_run_test_records_the_precision(bf16_cpu, tmp_path):
    from unetzoo.engine.checkpoint import read_checkpoint
    from unetzoo.engine.evaluation import run_test

    ckpt = read_checkpoint(_checkpoint(tmp_path / "best.pt"))
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        run_test(ckpt, dataset=_OneCase(), out_dir=out, overlays=0, device="cpu",
                 precision=precision, verbose=False)
        assert json.loads((out / "summary.json").read_text())["precision"] == precision


def test_config_precision_field(tiny_cfg):
    assert tiny_cfg().precision == "fp32"
    assert tiny_cfg(precision="bf16").precision == "bf16"
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        tiny_cfg(precision="fp8")
    with pytest.raises(ConfigError, match="exclude each other"):
        tiny_cfg(precision="bf16", amp=True)


def test_train_bf16_autocast_steps(bf16_cpu, tiny_cfg):
    import csv
    from pathlib import Path

    from unetzoo.engine.trainer import train

    dtypes = set()

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d) and module.training:
            dtypes.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        summary = train(tiny_cfg(precision="bf16", max_epochs=1))
    finally:
        handle.remove()
    assert dtypes == {torch.bfloat16}  # every training convolution ran under bf16 autocast
    with open(Path(summary["run_dir"]) / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and np.isfinite(float(rows[0]["loss"]))


def test_train_bf16_refused_without_it(plain_cpu, tiny_cfg):
    from unetzoo.engine.trainer import train

    with pytest.raises(ConfigError, match="no native bf16"):
        train(tiny_cfg(precision="bf16", max_epochs=1))


def test_cli_train_refuses_bf16_before_the_run_folder(plain_cpu, tiny_root, tmp_path, capsys):
    from unetzoo.cli.main import main

    out = tmp_path / "run"
    opts = [x for kv in ("n_train=3", "n_test=1", "shape=[4,32,32]", "seed=0")
            for x in ("--dataset-option", kv)]
    assert main(["train", "--dataset", "phantom", "--data-root", str(tiny_root),
                 *opts, "--output", str(out), "--device", "cpu",
                 "--precision", "bf16"]) == 2
    assert "--precision bf16: this CPU" in capsys.readouterr().err
    assert not out.exists()
