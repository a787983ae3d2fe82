"""Stored, seeded k-fold cross-validation splits (nnU-Net's ``splits_final.json``).

The split is nnU-Net v2's: case ids sorted, then scikit-learn's
``KFold(n_splits=5, shuffle=True, random_state=12345)``; fold ``f`` validates on the f-th
block of a ``numpy.random.RandomState(seed)`` shuffle and trains on the rest, both lists
in sorted order. It is computed here with numpy alone (the test checks it equals
scikit-learn's), so the same ids give the same folds as nnU-Net.

The file is a JSON list of ``{"train": [...], "val": [...]}``, one entry per fold. It is
created once and then reused as is (a split must not change between the folds of one
cross-validation), in the user cache (``$UNETZOO_CACHE/splits/<dataset>-<hash of the
root>/splits_final.json``) or at a path the caller gives (a run folder) -- never in the
raw dataset folder, which stays untouched.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unetzoo.data import io
from unetzoo.errors import ConfigError, DataError

N_FOLDS = 5
SEED = 12345  # nnU-Net's
SPLITS_FILE = "splits_final.json"

Splits = list[dict[str, list[str]]]


def make_splits(case_ids: Sequence[str], n_folds: int = N_FOLDS, seed: int = SEED) -> Splits:
    """nnU-Net's k-fold split of ``case_ids`` (sorted first; see the module docstring)."""
    ids = sorted(str(c) for c in case_ids)
    if len(set(ids)) != len(ids):
        raise DataError("case ids must be unique to split them into folds")
    if n_folds < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got {n_folds}")
    if len(ids) < n_folds:
        raise DataError(
            f"{len(ids)} training case(s) cannot be split into {n_folds} folds; "
            f"add cases or use fewer folds"
        )
    order = np.arange(len(ids))
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(n_folds, len(ids) // n_folds)
    sizes[: len(ids) % n_folds] += 1
    splits: Splits = []
    start = 0
    for size in sizes:
        val_idx = order[start : start + size]
        start += size
        in_val = np.zeros(len(ids), dtype=bool)
        in_val[val_idx] = True
        splits.append(
            {
                "train": [ids[i] for i in np.flatnonzero(~in_val)],
                "val": [ids[i] for i in np.flatnonzero(in_val)],
            }
        )
    return splits


def splits_path(dataset: str, root: str | Path | None) -> Path:
    """Default place of a dataset's split: the user cache, keyed by name and root path."""
    key = str(Path(root).expanduser().resolve()) if root is not None else ""
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in dataset) or "dataset"
    return io.cache_root() / "splits" / f"{safe}-{digest}" / SPLITS_FILE


def _check(data: Any, path: Path) -> Splits:
    ok = isinstance(data, list) and data and all(
        isinstance(f, dict)
        and isinstance(f.get("train"), list)
        and isinstance(f.get("val"), list)
        and all(isinstance(c, str) for c in f["train"] + f["val"])
        for f in data
    )
    if not ok:
        raise DataError(
            f"{path}: not a splits file; expected a JSON list of "
            '{"train": [case ids], "val": [case ids]} (delete it to create a new split)'
        )
    return [{"train": list(f["train"]), "val": list(f["val"])} for f in data]


def load_splits(path: str | Path) -> Splits:
    """Read and check a ``splits_final.json`` (one-line DataError when malformed)."""
    p = Path(path)
    io.require_file(p, "splits file")
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{p}: not valid JSON ({exc}); delete it to create a new split") from exc
    return _check(data, p)


def save_splits(path: str | Path, splits: Splits) -> Path:
    """Write ``splits`` atomically (indent 4, as nnU-Net)."""
    p = Path(path)
    io.atomic_write_text(p, json.dumps(_check(splits, p), indent=4) + "\n")
    return p


def get_splits(
    case_ids: Sequence[str],
    path: str | Path,
    n_folds: int = N_FOLDS,
    seed: int = SEED,
) -> Splits:
    """The stored split at ``path``, created from ``case_ids`` on first use.

    A stored split is reused unchanged (the seed is then irrelevant), but it must cover
    exactly ``case_ids``: a dataset that gained or lost cases is a DataError naming the
    file, rather than a silent leak of validation cases into training.
    """
    p = Path(path)
    if p.is_file():
        splits = load_splits(p)
        stored = {c for f in splits for c in f["val"]}
        wanted = {str(c) for c in case_ids}
        if stored != wanted:
            extra, missing = sorted(wanted - stored), sorted(stored - wanted)
            raise DataError(
                f"{p}: the stored split does not match the dataset's training cases "
                f"(new: {extra[:3]}{'...' if len(extra) > 3 else ''}, gone: "
                f"{missing[:3]}{'...' if len(missing) > 3 else ''}); delete the file to "
                "split again"
            )
        return splits
    splits = make_splits(case_ids, n_folds=n_folds, seed=seed)
    save_splits(p, splits)
    return splits


def fold_cases(splits: Splits, fold: int) -> tuple[list[str], list[str]]:
    """``(train ids, val ids)`` of fold ``fold`` (0-based)."""
    if not isinstance(fold, (int, np.integer)) or not 0 <= int(fold) < len(splits):
        raise ConfigError(
            f"fold {fold!r} does not exist; this split has folds 0..{len(splits) - 1}"
        )
    f = splits[int(fold)]
    return list(f["train"]), list(f["val"])


def dataset_fold(
    ds: Any,
    fold: int,
    *,
    split: str = "train",
    path: str | Path | None = None,
    run_dir: str | Path | None = None,
    n_folds: int = N_FOLDS,
    seed: int = SEED,
) -> tuple[list[str], list[str], Path]:
    """``(train ids, val ids, splits file)`` of fold ``fold`` of a :class:`SegDataset`.

    The split covers ``ds.cases(split)`` and is stored at ``path`` or, by default, at
    :func:`splits_path` for the dataset's name and root. With ``run_dir`` a copy goes to
    ``run_dir/splits_final.json`` so the run folder records the split it trained on.
    """
    p = Path(path) if path is not None else splits_path(ds.name, ds.root)
    splits = get_splits(ds.cases(split), p, n_folds=n_folds, seed=seed)
    train, val = fold_cases(splits, fold)
    if run_dir is not None:
        save_splits(Path(run_dir) / SPLITS_FILE, splits)
    return train, val, p


def run_fold_cases(run_dir: str | Path, fold: int) -> tuple[list[str], list[str]]:
    """``(train ids, val ids)`` of a fold run from the ``splits_final.json`` it recorded."""
    return fold_cases(load_splits(Path(run_dir) / SPLITS_FILE), fold)
