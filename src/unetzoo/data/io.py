"""File readers that turn low-level failures into one-line :class:`DataError` messages
naming the file and the fix."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from unetzoo.errors import DataError


def special_file(path: str | Path) -> str | None:
    """``"a FIFO (named pipe)"``, ``"a socket"`` or ``"a device"`` when ``path`` (links
    followed) is one of those, else None: reading ``/dev/zero`` or a FIFO never ends, so
    every reader refuses them by name before opening them."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket"
            if stat.S_ISSOCK(mode) else "a device")


def require_file(path: Path, what: str, fix: str = "") -> Path:
    """Return ``path`` if it is a regular file (links followed), else raise ``DataError``
    naming it; a device or a FIFO is refused by name (:func:`special_file`)."""
    kind = special_file(path)
    if kind is not None:
        raise DataError(f"{path} is {kind}, not a file; give a regular {what}")
    if not path.is_file():
        raise DataError(f"missing {what}: {path}" + (f"; {fix}" if fix else ""))
    return path


@contextmanager
def unreadable_as_data_error(path: Path, what: str) -> Iterator[None]:
    """Turn whatever a decoder raises inside the block into one :class:`DataError`
    line naming ``path`` (``what``: "npz file", "NIfTI file", "image", ...)."""
    try:
        yield
    except DataError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError, EOFError, OSError ...
        detail = " ".join(str(exc).split())  # decoders' messages may span lines: keep one
        raise DataError(
            f"{path}: unreadable or truncated {what} ({type(exc).__name__}: {detail}); "
            "re-create or re-download it"
        ) from exc


def read_list(path: Path) -> list[str]:
    """Non-empty, stripped lines of a split list file."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise DataError(f"cannot read list file {path}: {exc.strerror or exc}") from exc
    return [ln.strip() for ln in lines if ln.strip()]


def load_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Arrays ``keys`` of an ``.npz`` file (unreadable file or missing key -> DataError)."""
    require_file(path, "npz file", "check the list file and the data folder")
    with unreadable_as_data_error(path, "npz file"), np.load(path, allow_pickle=False) as data:
        missing = [k for k in keys if k not in data.files]
        if missing:
            raise DataError(
                f"{path}: missing key(s) {missing} (file has {data.files}); "
                f"expected keys {list(keys)}"
            )
        return {k: np.asarray(data[k]) for k in keys}


def open_h5(path: Path):
    """Open an HDF5 file read-only (unreadable -> DataError)."""
    import h5py

    require_file(path, "HDF5 volume", "check the list file and the data folder")
    try:
        return h5py.File(path, "r")
    except Exception as exc:
        raise DataError(
            f"{path}: unreadable or truncated HDF5 file ({exc}); re-create or re-download it"
        ) from exc


def h5_dataset(handle: Any, key: str, path: Path):
    """``handle[key]`` or a DataError naming the file and the keys it has."""
    if key not in handle:
        raise DataError(
            f"{path}: missing key {key!r} (file has {sorted(handle.keys())})"
        )
    return handle[key]


def load_h5(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Whole arrays ``keys`` of an HDF5 file."""
    with open_h5(path) as f:
        try:
            return {k: np.asarray(h5_dataset(f, k, path)[()]) for k in keys}
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{path}: cannot read data ({exc}); the file may be truncated") from exc


def read_json(path: Path) -> dict[str, Any]:
    require_file(path, "JSON file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); fix the file") from exc
    except RecursionError:  # "[[[[..." 100,000 deep
        raise DataError(f"{path}: JSON nested too deeply; fix the file") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object at the top level")
    return data


def _atomic_write(path: Path, mode: str, suffix: str, write: Callable[[IO], object]) -> None:
    """``write(handle)`` into a temp file beside ``path``, then rename: readers (and other
    workers) see the old file or the whole new one, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, mode) as fh:  # the one rule (atomic_path)
        write(fh)


def _ending(name: str) -> str:
    """A file name's format ending, kept by temporary names (writers pick the format from
    it: ``.nii.gz``, ``.seg.dcm``, ``.npz``, ``.png``)."""
    for double in (".nii.gz", ".seg.dcm"):
        if name.lower().endswith(double):
            return name[-len(double):]
    return os.path.splitext(name)[1]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same folder, same ending) for a writer that takes
    a file name; on success it is renamed onto ``path``, on failure removed.

    The one rule every writer follows: a kill never leaves a truncated file under the
    final name, and the old file is replaced, never rewritten in place (a hard-linked
    backup of it, ``cp -al`` or ``rsync --link-dest``, keeps its content).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                               suffix=".tmp" + _ending(path.name))
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` (``.npy``) via a temp file + rename (safe for workers)."""
    _atomic_write(path, "wb", ".npy", lambda fh: np.save(fh, array))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file + rename."""
    _atomic_write(path, "w", "", lambda fh: fh.write(text))


def cache_root() -> Path:
    """``$UNETZOO_CACHE`` or ``~/.cache/unetzoo``."""
    env = os.environ.get("UNETZOO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "unetzoo"
