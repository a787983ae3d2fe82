"""Issue 26: the bad inputs that ended in a traceback, ran for minutes or gave silent
wrong numbers now end in one ``error: ...`` line and exit status 2 (or the right answer).
Tiny data; every file that would be huge is a header over a sparse or truncated file."""

from __future__ import annotations

import gzip
import json
import os
import stat

import numpy as np
import pytest
import torch
from _h4b_inputs import cli_error, save_tiny_checkpoint

from unetzoo.cli.main import main
from unetzoo.errors import DataError

TINY = ["--dataset-option", "n_train=3", "--dataset-option", "n_test=1",
        "--dataset-option", "shape=[4, 32, 32]"]



@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory):
    from unetzoo.data.phantom import generate_phantom

    return generate_phantom(tmp_path_factory.mktemp("ph") / "ct", n_train=3, n_test=1,
                            shape=(4, 32, 32), seed=0)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.pt")


def _train(root, out, *extra):
    return ["train", "--dataset", "phantom", "--data-root", root, *TINY, "--model", "unet",
            "--model-option", "base_channels=4", "--img-size", "32", "--batch-size", "4",
            "--max-epochs", "1", "--output", out, "--device", "cpu", "--no-progress",
            "--no-test", *extra]


# ------------------------------------------------------------------ flags and configs
@pytest.mark.parametrize("extra, needle", [
    (["--model-option", "num_classes=3"], "num_classes comes from the dataset"),
    (["--model-option", "in_channels=3"], "in_channels comes from the dataset"),
    (["--model-option", "base_channels=[1,"], "--model-option 'base_channels=[1,' is not valid YAML"),
    (["--model-option", "base_channels=!!python/object:os.system x"], "not valid YAML"),
    (["--dataset-option", "n_train={"], "--dataset-option 'n_train={' is not valid YAML"),
    (["--seed", "-1"], "seed must be a whole number in 0..4294967295"),
    (["--seed", str(2**70)], "seed must be a whole number in 0..4294967295"),
    (["--momentum", "5"], "momentum must be a number in [0, 1)"),
])
def test_bad_training_flags(tmp_path, capsys, phantom_root, extra, needle):
    line = cli_error(capsys, _train(phantom_root, tmp_path / "run", *extra))
    assert needle in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_batch_of_one_at_a_1x1_bottleneck(tmp_path, capsys, phantom_root):
    argv = _train(phantom_root, tmp_path / "run")
    argv[argv.index("--img-size") + 1] = "16"
    argv[argv.index("--batch-size") + 1] = "1"
    assert "BatchNorm cannot train on a batch of 1" in cli_error(capsys, argv)


@pytest.mark.parametrize("seed", ["-1", str(2**70)])
def test_prepare_phantom_seed_out_of_range(tmp_path, capsys, seed):
    line = cli_error(capsys, ["prepare", "phantom", "--output", tmp_path / "p", "--seed", seed])
    assert "seed must be a whole number in 0..4294967295" in line


def test_non_utf8_config(tmp_path, capsys, phantom_root):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"seed: 1\nmodel: \xff\xfe\n")
    line = cli_error(capsys, [*_train(phantom_root, tmp_path / "run"), "--config", cfg])
    assert "is not UTF-8 text" in line


def test_yaml_alias_bomb_in_model_options(tmp_path, capsys, phantom_root):
    levels = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    cfg = tmp_path / "bomb.yaml"  # 10**9 values once expanded, 1 KB on disk
    cfg.write_text("model_options:\n" + "".join(f"  {ln}\n" for ln in levels))
    line = cli_error(capsys, [*_train(phantom_root, tmp_path / "run"), "--config", cfg])
    assert "expands to more than 100,000 values" in line


def test_momentum_below_one_is_accepted():
    from unetzoo.engine.config import resolve_config

    assert resolve_config("phantom", {}, {"momentum": 0.99}).momentum == 0.99


# ------------------------------------------------------------------ dataset.json
def _nnunet_root(root, phantom_root, **meta_changes):
    import shutil

    shutil.copytree(phantom_root, root)
    meta = json.loads((root / "dataset.json").read_text())
    meta.update(meta_changes)
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("change, needle", [
    ({"numTraining": "four"}, "numTraining must be a whole number, got 'four'"),
    ({"labels": {f"c{i}": i for i in range(5000)}}, "5000 labels, more than the 512"),
])
def test_bad_dataset_json_values(tmp_path, capsys, phantom_root, change, needle):
    root = _nnunet_root(tmp_path / "ds", phantom_root, **change)
    line = cli_error(capsys, ["prepare", "nnunet", root, "--cache-dir", tmp_path / "cache"])
    assert needle in line


def test_dataset_json_nested_100000_deep(tmp_path, capsys, phantom_root):
    root = _nnunet_root(tmp_path / "ds", phantom_root)
    (root / "dataset.json").write_text("[" * 100_000 + "]" * 100_000)
    line = cli_error(capsys, ["prepare", "nnunet", root, "--cache-dir", tmp_path / "cache"])
    assert "nested too deeply" in line


def test_all_background_training_labels(tmp_path, capsys, phantom_root):
    import nibabel as nib

    root = _nnunet_root(tmp_path / "ds", phantom_root)
    for lab in (root / "labelsTr").glob("*.nii.gz"):
        img = nib.load(str(lab))
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), str(lab))
    argv = ["train", "--dataset", "nnunet", "--data-root", root, "--model", "unet", "--model-option",
            "base_channels=4", "--img-size", "32", "--batch-size", "4", "--max-epochs", "1",
            "--output", tmp_path / "run", "--device", "cpu", "--no-progress", "--no-test"]
    line = cli_error(capsys, argv)
    assert "is background (0), so there is nothing to learn" in line
    assert not (tmp_path / "run" / "checkpoints" / "latest.pt").exists()


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_version_not_a_number(tmp_path, capsys, ckpt):
    data = torch.load(ckpt, weights_only=True)
    data["version"] = "abc"
    bad = tmp_path / "v.pt"
    torch.save(data, bad)
    png = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.full((20, 20), 100, np.uint8)).save(png)
    line = cli_error(capsys, ["predict", "--checkpoint", bad, png, "--output", tmp_path / "o"])
    assert "checkpoint version 'abc', not a whole number" in line


def test_img_size_that_cannot_fit_in_memory(tmp_path, capsys, monkeypatch):
    from PIL import Image

    import unetzoo.engine.inference as inference

    big = save_tiny_checkpoint(tmp_path / "big.pt", img_size=4096)
    png = tmp_path / "x.png"
    Image.fromarray(np.full((40, 40), 100, np.uint8)).save(png)
    # The estimate for one 4096 px slice of this 4-wide U-Net is several GiB.
    monkeypatch.setattr(inference, "free_memory_bytes", lambda device: 2**30)
    line = cli_error(capsys, ["predict", "--checkpoint", big, png, "--output", tmp_path / "o",
                               "--device", "cpu"])
    assert "img_size 4096 needs about" in line and "GiB free" in line
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# ------------------------------------------------------------------ metrics
@pytest.mark.parametrize("spacing", [1e-320, 1e-300, 1e300])
def test_hd95_spacing_that_distances_cannot_carry(spacing):
    from unetzoo.metrics import hd95

    a = np.zeros((8, 8), bool)
    a[2:4, 2:4] = True
    b = np.zeros((8, 8), bool)
    b[5:7, 5:7] = True
    assert hd95(a, b, spacing=1.0) == pytest.approx(np.sqrt(18))
    with pytest.raises(DataError, match="outside 1e-09..1e\\+09"):
        hd95(a, b, spacing=spacing)


# ------------------------------------------------------------------ size caps
def _nifti_header_file(path, shape, dtype=np.int16, nifti2=False, data_bytes=None, gz=False):
    """A NIfTI whose header declares ``shape``; the data part is sparse (or absent)."""
    import nibabel as nib

    hdr = nib.Nifti2Header() if nifti2 else nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_sform(np.eye(4), 1)
    offset = 544 if nifti2 else 352
    hdr["vox_offset"] = offset
    head = hdr.binaryblock + b"\0" * (offset - len(hdr.binaryblock))
    if gz:
        path.write_bytes(gzip.compress(head + b"\0" * 1024))
        return path
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(offset + (data_bytes if data_bytes is not None else
                              int(np.prod(shape)) * np.dtype(dtype).itemsize))
    return path


def test_sparse_16_gib_nifti_is_refused_from_its_header(tmp_path, capsys, ckpt):
    nii = _nifti_header_file(tmp_path / "sparse.nii", (2048, 2048, 2048))
    assert nii.stat().st_size > 16 * 2**30 - 1 and nii.stat().st_blocks < 64
    line = cli_error(capsys, ["predict", "--checkpoint", ckpt, nii, "--output", tmp_path / "o"])
    assert "8,589,934,592 voxels" in line and "--max-voxels" in line


def test_gz_declaring_8_gib_is_refused_before_decompressing(tmp_path, capsys, ckpt):
    from unetzoo.data.imageio import read_file

    gz = _nifti_header_file(tmp_path / "bomb.nii.gz", (2048, 2048, 1024), gz=True)
    with pytest.raises(DataError, match="voxels .* over the limit"):
        read_file(gz)  # the dataset readers' path
    line = cli_error(capsys, ["predict", "--checkpoint", ckpt, gz, "--output", tmp_path / "o"])
    assert "--max-voxels" in line


def test_max_voxels_flag_lowers_the_cap(tmp_path, capsys, ckpt):
    from _h4b_inputs import ct_volume, save_volume

    nii = save_volume(ct_volume((3, 40, 40)), tmp_path / "ct.nii.gz")
    line = cli_error(capsys, ["predict", "--checkpoint", ckpt, nii, "--output", tmp_path / "o",
                               "--max-voxels", "1000"])
    assert "4,800 voxels" in line and "over the limit of 1,000" in line
    assert main(["predict", "--checkpoint", str(ckpt), str(nii), "--output",
                 str(tmp_path / "o"), "--max-voxels", "4800", "--device", "cpu"]) == 0


def test_nifti2_of_a_million_slices_is_refused(tmp_path, capsys, ckpt):
    nii = _nifti_header_file(tmp_path / "n2.nii", (8, 8, 1_000_000), np.uint8, nifti2=True)
    line = cli_error(capsys, ["predict", "--checkpoint", ckpt, nii, "--output", tmp_path / "o"])
    assert "an axis of 1,000,000 voxels" in line


def test_tiff_with_too_many_pages(tmp_path):
    import tifffile

    from unetzoo.data.imageio import load_image
    from unetzoo.data.imageio.pictures import MAX_TIFF_PAGES, PictureIO

    tif = tmp_path / "stack.tif"
    with tifffile.TiffWriter(tif) as w:
        for _ in range(MAX_TIFF_PAGES + 1):
            w.write(np.zeros((4, 4), np.uint8), contiguous=False)
    for read in (load_image, PictureIO.shape):
        with pytest.raises(DataError, match=f"more than {MAX_TIFF_PAGES} pages"):
            read(tif)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_and_device_are_refused_by_name(tmp_path, capsys, ckpt):
    fifo = tmp_path / "in.nii"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    line = cli_error(capsys, ["predict", "--checkpoint", ckpt, fifo, "--output", tmp_path / "o"])
    assert "is a FIFO (named pipe), not a file" in line
    line = cli_error(capsys, ["predict", "--checkpoint", ckpt, "/dev/zero", "--output",
                               tmp_path / "o"])
    assert "/dev/zero is a device, not a file" in line
    line = cli_error(capsys, ["export", "--checkpoint", "/dev/zero", "--output",
                               tmp_path / "m.onnx"])
    assert "checkpoint /dev/zero is a device, not a file" in line
    line = cli_error(capsys, ["train", "--config", fifo, "--output", tmp_path / "run"])
    assert "is a FIFO (named pipe), not a file" in line


# ------------------------------------------------------------------ the demo
def test_demo_refuses_a_million_slice_upload(tmp_path):
    from unetzoo.deploy import uploads

    nii = _nifti_header_file(tmp_path / "n2.nii", (8, 8, 1_000_000), np.uint8, nifti2=True)
    with pytest.raises(DataError, match="over the demo's limit"):
        uploads.read_upload(nii, name="n2.nii", max_bytes=2**30)


def test_demo_request_stops_at_its_time_limit():
    from unetzoo.deploy.webapp import DemoBackend

    class Slow:
        batch_size = 1

        def __init__(self):
            self.calls = 0

        def predict_volume(self, x):
            import time

            self.calls += 1
            time.sleep(0.05)
            return np.zeros(x.shape[1:], np.int64)

    backend = DemoBackend.__new__(DemoBackend)
    backend.max_seconds = 0.12
    slow = Slow()
    with pytest.raises(DataError, match="stopped after 0.12 s .* at slice"):
        backend._predict_in_time(slow, np.zeros((1, 50, 8, 8), np.float32))
    assert 2 <= slow.calls < 10  # stopped early, not after all 50 slices
    backend.max_seconds = 60.0
    out = backend._predict_in_time(Slow(), np.zeros((1, 3, 8, 8), np.float32))
    assert out.shape == (3, 8, 8)
