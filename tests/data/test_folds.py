"""Stored, seeded 5-fold splits (unetzoo.data.folds), nnU-Net's splits_final.json."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from unetzoo.data import folds
from unetzoo.errors import ConfigError, DataError

IDS = [f"case_{i:03d}" for i in (7, 3, 12, 1, 9, 4, 0, 11, 5, 2, 8, 6, 10)]


def test_equals_nnunet_sklearn_kfold():
    sk = pytest.importorskip("sklearn.model_selection")
    ids = sorted(IDS)
    ref = []
    for tr, va in sk.KFold(n_splits=5, shuffle=True, random_state=12345).split(ids):
        ref.append({"train": list(np.array(ids)[tr]), "val": list(np.array(ids)[va])})
    assert folds.make_splits(IDS) == ref  # unsorted input: sorted first, as nnU-Net


def test_folds_partition_the_cases():
    splits = folds.make_splits(IDS, n_folds=5, seed=3)
    assert len(splits) == 5
    vals = [c for f in splits for c in f["val"]]
    assert sorted(vals) == sorted(IDS)
    assert [len(f["val"]) for f in splits] == [3, 3, 3, 2, 2]
    for f in splits:
        assert set(f["train"]).isdisjoint(f["val"])
        assert sorted(f["train"] + f["val"]) == sorted(IDS)
    assert folds.make_splits(IDS, seed=3) == splits  # seeded
    assert folds.make_splits(IDS, seed=4) != splits


def test_created_once_then_reused(tmp_path):
    path = tmp_path / "run" / "splits_final.json"
    first = folds.get_splits(IDS, path, seed=1)
    data = json.loads(path.read_text())
    assert data == first and set(data[0]) == {"train", "val"}
    # A different seed does not re-split a stored split: the folds stay comparable.
    assert folds.get_splits(IDS, path, seed=2) == first


def test_changed_dataset_or_bad_file_is_refused(tmp_path):
    path = tmp_path / "splits_final.json"
    folds.get_splits(IDS, path)
    with pytest.raises(DataError, match="does not match"):
        folds.get_splits(IDS + ["case_099"], path)
    path.write_text('{"train": []}')
    with pytest.raises(DataError, match="not a splits file"):
        folds.load_splits(path)
    path.write_text("[{")
    with pytest.raises(DataError, match="not valid JSON"):
        folds.load_splits(path)
    with pytest.raises(DataError, match="cannot be split into 5 folds"):
        folds.make_splits(IDS[:4])


def test_fold_cases_range():
    splits = folds.make_splits(IDS)
    train, val = folds.fold_cases(splits, 4)
    assert val == splits[4]["val"] and train == splits[4]["train"]
    for bad in (5, -1, "1"):
        with pytest.raises(ConfigError, match="folds 0..4"):
            folds.fold_cases(splits, bad)


def test_dataset_fold_lives_in_the_cache_not_the_raw_folder(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("UNETZOO_CACHE", str(cache))
    raw = tmp_path / "Dataset001_X"
    raw.mkdir()
    (raw / "dataset.json").write_text("{}")
    before = sorted(p.name for p in raw.rglob("*"))
    ds = SimpleNamespace(name="nnunet", root=raw, cases=lambda split: list(IDS))
    run = tmp_path / "runs" / "fold2"
    train, val, path = folds.dataset_fold(ds, 2, run_dir=run)
    assert path.is_file() and cache in path.parents
    assert folds.run_fold_cases(run, 2) == (train, val)  # the run records its split
    assert sorted(p.name for p in raw.rglob("*")) == before
    assert (train, val) == folds.fold_cases(folds.load_splits(path), 2)
    # Another root of the same dataset name gets its own split file.
    other = SimpleNamespace(name="nnunet", root=tmp_path / "other", cases=lambda s: IDS[:6])
    assert folds.dataset_fold(other, 0)[2] != path
