"""``predict DIR --output DIR``: the files unetzoo wrote there (its .unetzoo-outputs.json)
are never gathered as inputs, so a re-run predicts the same cases, and says in one stderr
line how many files it skipped (engine.predict_cases.gather_inputs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unetzoo.engine.predict_cases import gather_inputs, predict_cases
from unetzoo.errors import DataError


def _save(path: Path, seed: int) -> None:
    import nibabel as nib

    vol = np.random.default_rng(seed).normal(size=(12, 10, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 3.0, 1.0])), path)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "imagesTs"
    d.mkdir()
    for i, case in enumerate(("c1", "c2")):
        _save(d / f"{case}_0000.nii.gz", i)
    return d


def _predict(d: Path, model, meta: dict) -> list[str]:
    recs = predict_cases([d], model, meta, d, verbose=False, overlays=1)
    return [r["case"] for r in recs]


def test_a_folder_predicted_into_itself_twice(folder: Path, capsys, tiny_unet,
                                              tiny_meta) -> None:
    assert _predict(folder, tiny_unet, tiny_meta) == ["c1", "c2"]
    assert "skipped" not in capsys.readouterr().err  # nothing of ours there yet
    written = sorted(p.name for p in folder.iterdir() if not p.name.endswith("_0000.nii.gz"))
    assert "c1.nii.gz" in written and any(n.endswith(".png") for n in written)
    before = (folder / "c1.nii.gz").stat().st_mtime_ns
    # No case made of a label map or an overlay PNG of ours:
    assert _predict(folder, tiny_unet, tiny_meta) == ["c1", "c2"]
    err = capsys.readouterr().err.strip().splitlines()
    n_ours = len(written) - 1  # the manifest is hidden: never an input anyway
    assert err == [err[0]] and err[0].startswith(f"skipped {n_ours} file(s)"), err
    assert (folder / "c1.nii.gz").stat().st_mtime_ns != before  # replaced, no flag needed
    # A file of the user's beside them is still an input, named like a label map or not.
    _save(folder / "c3.nii.gz", 3)
    assert [c for c, _ in gather_inputs_cases(folder)] == ["c1", "c2", "c3"]


def gather_inputs_cases(d: Path) -> list[tuple[str, int]]:
    from unetzoo.data import imageio

    files, _ = gather_inputs([d])
    return [(c, len(f)) for c, f in imageio.group_cases(files).items()]


def test_a_file_named_on_its_own_is_always_an_input(folder: Path, tiny_unet,
                                                     tiny_meta) -> None:
    _predict(folder, tiny_unet, tiny_meta)
    files, skipped = gather_inputs([folder / "c1.nii.gz"])
    assert files == [folder / "c1.nii.gz"] and skipped == 0


def test_a_folder_of_only_our_files_is_one_line(folder: Path, tmp_path: Path, tiny_unet,
                                                 tiny_meta) -> None:
    out = tmp_path / "out"
    predict_cases([folder], tiny_unet, tiny_meta, out, verbose=False, overlays=0)
    with pytest.raises(DataError) as exc:
        gather_inputs([out])
    assert "written by unetzoo" in str(exc.value) and "\n" not in str(exc.value)


def test_cli_predict_into_the_input_folder_twice(folder: Path, tmp_path: Path, capsys,
                                                 tiny_unet, tiny_meta) -> None:
    from ckpt_helpers import save_model_checkpoint
    from unetzoo.cli.main import main

    ckpt = save_model_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", tiny_unet,
                                 **tiny_meta)
    argv = ["predict", str(folder), "--checkpoint", str(ckpt), "--output", str(folder),
            "--device", "cpu", "--backend", "torch", "--overlays", "1"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0
    cap = capsys.readouterr()
    assert sum("skipped" in line for line in cap.err.splitlines()) == 1, cap.err
    done = [line.split(" ")[0] for line in cap.out.splitlines() if " -> " in line]
    assert done == ["c1", "c2"], cap.out
