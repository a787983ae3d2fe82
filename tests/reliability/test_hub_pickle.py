"""No code from the torch hub cache: a pickle planted at ``$TORCH_HOME/hub/checkpoints/
<the file torchvision would fetch>`` never runs, from any entry point.

``encoder_weights="imagenet"`` (the ResUnet rung default) used to load through torchvision's
``load_state_dict_from_url``, which unpickles that file without a hash check; and rebuilding
a trained checkpoint whose stored options left ``encoder_weights`` out fetched the ImageNet
weights it then overwrote. Now the file's hash is checked before it is read, it is read with
``weights_only=True``, and a trained checkpoint never reads it at all. The payload is a
``torch.save`` of an object whose unpickling touches a marker file; conftest points
``$TORCH_HOME`` at an empty folder per test and disables downloads.
"""

from __future__ import annotations

import dataclasses
import pathlib
from pathlib import Path

import pytest
import torch

from unetzoo.cli.main import main
from unetzoo.models import encoders
from unetzoo.models.weights_maps import hub_checkpoint, sha256_file

TINY_DATA = ["--dataset-option", "n_train=3", "--dataset-option", "n_test=1",
             "--dataset-option", "shape=[4, 32, 32]"]
#: ResUnet v0.2 (ImageNet by default) at test size: a ResNet-18 encoder, 1/8 decoder widths.
RUNG = ["--model-option", "encoder=resnet18", "--model-option", "width_scale=0.125"]
FAST = ["--img-size", "32", "--batch-size", "4", "--max-epochs", "1", "--device", "cpu",
        "--no-progress", "--no-test"]


class _Touch:
    """Unpickling this calls ``Path.touch(marker)``: a stand-in for any code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> Path:
    from unetzoo.data.phantom import generate_phantom

    return generate_phantom(tmp_path_factory.mktemp("hub") / "ct", n_train=3, n_test=1,
                            shape=(4, 32, 32), seed=0)


@pytest.fixture
def planted(tmp_path) -> Path:
    """The payload at the hub path of torchvision's ResNet-18 ImageNet file; the marker
    it would touch must not exist after the test."""
    marker = tmp_path / "PWNED"
    path = hub_checkpoint(encoders.imagenet_source(18))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_Touch(marker), path)
    yield path
    assert not marker.exists(), "the planted pickle ran"


def _one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_payload_is_live(planted, tmp_path):
    """The planted file does run its code under the old loader (weights_only=False)."""
    torch.load(planted, weights_only=False)
    marker = tmp_path / "PWNED"
    assert marker.exists(), "the payload no longer runs: the tests below are void"
    marker.unlink()


def test_train_refuses_planted_pickle_by_its_hash(ct, planted, tmp_path, capsys):
    rc = main(["train", "--dataset", "phantom", "--data-root", str(ct), *TINY_DATA,
               "--model", "resunet_v0_2", *RUNG, *FAST, "--output", str(tmp_path / "run")])
    err = _one_line_error(capsys, rc)
    assert "is not the released resnet18-f37072fd.pth" in err and str(planted) in err


def test_a_matching_hash_still_never_unpickles(ct, planted, tmp_path, capsys, monkeypatch):
    # Even a pickle that met the 32-bit prefix (brute force is feasible) is only read
    # with weights_only=True: refused in one line, never run.
    forged = dataclasses.replace(encoders.imagenet_source(18),
                                 hash_prefix=sha256_file(planted)[:8])
    monkeypatch.setattr(encoders, "imagenet_source", lambda depth: forged)
    rc = main(["train", "--dataset", "phantom", "--data-root", str(ct), *TINY_DATA,
               "--model", "resunet_v0_2", *RUNG, *FAST, "--output", str(tmp_path / "run")])
    assert "cannot read encoder weights" in _one_line_error(capsys, rc)


def test_ablate_refuses_planted_pickle(ct, planted, tmp_path, capsys):
    # The phantom folder is an nnU-Net dataset (dataset.json, imagesTr, ...).
    rc = main(["ablate", "--ladder", "resunet", "--rungs", "v0_2", "--dataset", "nnunet",
               "--data-root", str(ct), *RUNG, *FAST,
               "--output-dir", str(tmp_path / "ladder")])
    assert "is not the released resnet18-f37072fd.pth" in _one_line_error(capsys, rc)


@pytest.fixture(scope="module")
def trained(ct, tmp_path_factory) -> dict[str, Path]:
    """A trained v0.2 checkpoint as older runs stored it: ``encoder_weights`` left out of
    its options (the rung default, "imagenet", applies), and one saying "imagenet"."""
    import dataclasses

    from unetzoo.engine.checkpoint import read_checkpoint, write_checkpoint

    out = tmp_path_factory.mktemp("trained")
    assert main(["train", "--dataset", "phantom", "--data-root", str(ct), *TINY_DATA,
                 "--model", "resunet_v0_2", *RUNG, "--encoder-weights", "none", *FAST,
                 "--output", str(out / "run")]) == 0
    ck = read_checkpoint(out / "run" / "checkpoints" / "latest.pt")
    assert ck.spec.options["encoder_weights"] is None
    files = {}
    for name, value in (("missing", ...), ("imagenet", "imagenet")):
        options = dict(ck.spec.options)
        options.pop("encoder_weights")
        if value is not ...:
            options["encoder_weights"] = value
        spec = dataclasses.replace(ck.spec, options=options)
        files[name] = write_checkpoint(dataclasses.replace(ck, spec=spec), out / f"{name}.pt")
    return files


@pytest.fixture
def no_hub(monkeypatch):
    """Any read of a pretrained file fails the test."""
    from unetzoo.models import weights_maps

    def touched(*args, **kwargs):
        raise AssertionError("a trained checkpoint read the pretrained weight file")

    monkeypatch.setattr(encoders, "pretrained_file", touched)
    monkeypatch.setattr(weights_maps, "pretrained_file", touched)


@pytest.mark.parametrize("stored", ["missing", "imagenet"])
def test_trained_checkpoint_rebuilds_offline(trained, stored, planted, no_hub):
    from unetzoo.engine.checkpoint import read_checkpoint

    model = read_checkpoint(trained[stored]).build_model()
    assert model.unetzoo_options["encoder_weights"] is None


@pytest.mark.parametrize("stored", ["missing", "imagenet"])
def test_predict_test_export_of_trained_checkpoint_never_touch_the_hub(
    trained, stored, ct, planted, no_hub, tmp_path
):
    ckpt = str(trained[stored])
    image = next((ct / "imagesTs").glob("*.nii.gz"))
    assert main(["predict", str(image), "--checkpoint", ckpt, "--output", str(tmp_path / "p")]) == 0
    assert main(["test", "--checkpoint", ckpt, "--dataset", "phantom", "--data-root", str(ct),
                 "--output", str(tmp_path / "t"), "--overlays", "0"]) == 0
    assert main(["export", "--checkpoint", ckpt, "--output", str(tmp_path / "m.onnx")]) == 0


def test_no_torchvision_unpickling_loader_in_sources():
    """torchvision's weight loaders unpickle (weights_only=False, no full hash check):
    nothing in src/ calls them; pretrained files go through weights_maps.pretrained_file."""
    root = Path(__file__).resolve().parents[2] / "src" / "unetzoo"
    hits = [
        f"{f.name}:{n}"
        for f in root.rglob("*.py")
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
        if any(s in line.split("#")[0] for s in ("load_state_dict_from_url", ".get_state_dict(",
                                                  "load_url("))
    ]
    assert not hits, hits
