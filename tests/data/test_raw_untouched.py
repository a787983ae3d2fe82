"""An nnU-Net raw folder is read, never written: the slice cache lives in the user cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data_writers import write_nnunet  # noqa: E402

from unetzoo.cli.main import main  # noqa: E402
from unetzoo.data import get_dataset  # noqa: E402


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def test_train_and_test_leave_the_raw_folder_untouched(tmp_path, monkeypatch):
    cache = tmp_path / "user-cache"
    monkeypatch.setenv("UNETZOO_CACHE", str(cache))
    root = write_nnunet(tmp_path / "Dataset901_Raw", n_train=3, shape=(7, 16, 12))
    before = _snapshot(root)
    out = tmp_path / "run"
    rc = main([
        "train", "--dataset", "nnunet", "--data-root", str(root), "--model", "unet",
        "--model-option", "base_channels=4", "--img-size", "16", "--batch-size", "2",
        "--max-epochs", "1", "--eval-interval", "1", "--num-workers", "0",
        "--output", str(out), "--device", "cpu", "--no-progress",
    ])
    assert rc == 0
    assert main(["test", "--checkpoint", str(out / "checkpoints" / "best.pt"), "--device", "cpu",
                 "--output", str(tmp_path / "report2")]) == 0
    assert _snapshot(root) == before  # same files, sizes and mtimes
    assert any((cache / "nnunet").rglob("*.img.npy"))  # the cache went to the user cache


def test_cache_key_follows_the_absolute_root(tmp_path):
    a = write_nnunet(tmp_path / "a")
    b = write_nnunet(tmp_path / "b")
    da, db = get_dataset("nnunet", a), get_dataset("nnunet", b)
    assert da.cache_dir != db.cache_dir
    assert root_not_parent(a, da.cache_dir) and root_not_parent(b, db.cache_dir)


def test_cache_inside_the_raw_folder_only_when_asked(tmp_path):
    root = write_nnunet(tmp_path / "r")
    ds = get_dataset("nnunet", root, cache_dir=root / ".unetzoo_cache")
    ds.prepare()
    assert any((root / ".unetzoo_cache").rglob("*.img.npy"))


def root_not_parent(root: Path, path: Path) -> bool:
    return Path(root).resolve() not in Path(path).resolve().parents
