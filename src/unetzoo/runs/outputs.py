"""Files unetzoo wrote into a folder it shares with the user: the one record of ownership.

``DIR/.unetzoo-outputs.json`` lists them (name, size, modification time); every writer
(``predict``, ``test``, ``export``, ``postprocess``, ``prepare``) claims its targets
through :class:`OutputFolder` before any work, so a file the user put there is refused
unless ``--overwrite``, and ``--overwrite`` of a build deletes only what the record lists.
A leaf: it imports nothing of unetzoo but its errors.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from unetzoo.errors import ConfigError

OUTPUTS_MANIFEST = ".unetzoo-outputs.json"


def walk_files(folder: Path) -> list[str]:
    """Every file and link under ``folder`` (links not followed), as names relative to it."""
    found = []
    for top, dirs, files in os.walk(folder):
        rel = Path(top).relative_to(folder)
        links = [d for d in dirs if os.path.islink(os.path.join(top, d))]
        found += [(rel / n).as_posix() for n in (*files, *links)]
    return sorted(found)


def prune_empty(folder: Path, removed: Iterable[Path]) -> None:
    """Remove the folders below ``folder`` that held a removed file and are now empty,
    then ``folder`` itself if empty (an empty folder of the user's elsewhere stays)."""
    dirs = {d for f in removed for d in f.parents if d == folder or folder in d.parents}
    for d in sorted(dirs | {folder}, key=lambda d: len(d.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:  # not empty (a user's file), or already gone
            pass


def _file_stamp(path: Path) -> dict[str, int] | None:
    """``{"size", "mtime_ns"}`` of a regular file (not a link); None otherwise."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


class OutputFolder:
    """A folder that ``predict`` / ``test`` write into, beside files that are not theirs.

    ``DIR/.unetzoo-outputs.json`` (JSON, written atomically) lists the files unetzoo wrote
    there, by name relative to ``DIR``, with the size and modification time each had when
    written: a file is unetzoo's only while it is still that regular file, so a file the
    user put in its place (or a link) is the user's again. :meth:`claim` refuses, before
    any work, every target that exists and is not unetzoo's, unless ``overwrite``;
    :meth:`record` adds what was written. Files that are not targets are never touched.
    """

    def __init__(self, root: str | Path, *, overwrite: bool = False) -> None:
        self.root = Path(root)
        self.overwrite = bool(overwrite)
        self.manifest = self.root / OUTPUTS_MANIFEST
        self._files = self._read()

    def _load(self) -> dict[str, dict[str, int]] | None:
        """The manifest's entries; None when it is absent or unreadable."""
        try:
            data = json.loads(self.manifest.read_text())
        except (OSError, ValueError):
            return None
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, dict):
            return None
        return {str(k): v for k, v in files.items() if isinstance(v, dict)}

    def _read(self) -> dict[str, dict[str, int]]:
        """The manifest's entries; an absent or unreadable manifest lists nothing (every
        existing file then counts as the user's: refused, never replaced silently)."""
        return self._load() or {}

    def written(self) -> list[str] | None:
        """The files the manifest lists that are still unetzoo's (each the same regular
        file it was when written; names that leave ``DIR`` are ignored), sorted; None
        without a readable manifest."""
        files = self._load()
        if files is None:
            return None
        out = []
        for name, stamp in files.items():
            try:
                rel = self._name(name)
            except ConfigError:  # "../x" or "/x" in a hand-edited manifest: never ours
                continue
            if _file_stamp(self.root / rel) == stamp:
                out.append(rel)
        return sorted(out)

    def _name(self, name: str | Path) -> str:
        """A name relative to ``DIR`` (an absolute path is made relative to it)."""
        p = Path(name)
        if p.is_absolute():
            p = Path(os.path.relpath(p, self.root.absolute()))
        if p.is_absolute() or ".." in p.parts:
            raise ConfigError(f"{name} is not inside the output folder {self.root}")
        return p.as_posix()

    def is_ours(self, name: str | Path) -> bool:
        """True when ``DIR/name`` is a file unetzoo wrote (and nobody replaced since)."""
        rel = self._name(name)
        stamp = _file_stamp(self.root / rel)
        if stamp is None:
            return False
        return self._files.get(rel) == stamp

    def existing(self, pattern: str, under: str = "") -> list[str]:
        """Names (relative to ``DIR``) of the files in ``DIR/under`` whose name matches the
        regular expression ``pattern`` in full: targets whose exact names are known only
        after the prediction (the overlay slices), claimed as a family."""
        folder = self.root / under
        if not folder.is_dir():
            return []
        rx = re.compile(pattern)
        try:
            found = [e.name for e in folder.iterdir() if rx.fullmatch(e.name)]
        except OSError:  # unreadable: check_output_dir says so in one line
            return []
        return sorted(self._name(Path(under) / n) for n in found)

    def claim(self, names: Iterable[str | Path]) -> None:
        """Refuse (one line) the first target that exists and is not unetzoo's, unless
        ``overwrite``; with ``overwrite`` a link at a target's name is removed, so that
        the write replaces the link, never the file it points to."""
        for name in names:
            rel = self._name(name)
            path = self.root / rel
            if not os.path.lexists(path):
                continue
            if path.is_dir() and not path.is_symlink():
                raise ConfigError(f"{path} is a folder where unetzoo writes a file; choose "
                                  "another --output folder")
            if self.is_ours(rel):
                continue
            if not self.overwrite:
                raise ConfigError(
                    f"{path} exists and was not written by unetzoo; choose another --output "
                    "folder or pass --overwrite"
                )
            if path.is_symlink():
                path.unlink()

    def record(self, names: Iterable[str | Path | None]) -> None:
        """Add the files just written to the manifest (re-read first, so that what another
        run recorded meanwhile stays; replaced atomically: tmp file, then rename)."""
        files = self._read()
        for name in names:
            if name is None:
                continue
            rel = self._name(name)
            stamp = _file_stamp(self.root / rel)
            if stamp is not None:
                files[rel] = stamp
        self._files = files
        data = {"tool": "unetzoo", "kind": "outputs", "version": 1,
                "files": dict(sorted(files.items()))}
        tmp = self.root / f"{OUTPUTS_MANIFEST}.{os.getpid()}.tmp"
        try:
            tmp.write_text(json.dumps(data, indent=1) + "\n")
            os.replace(tmp, self.manifest)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise ConfigError(f"cannot write {self.manifest}: {exc.strerror or exc}") from exc


def unrecorded(root: str | Path, subfolders: Iterable[str] = ("",)) -> list[str]:
    """The files under ``root/sub`` that ``root``'s ``.unetzoo-outputs.json`` does not
    list as unetzoo's (names relative to ``root``), sorted."""
    root = Path(root)
    ours = set(OutputFolder(root).written() or [])
    found = [n for sub in subfolders if (root / sub).is_dir()
             for n in (Path(sub, x).as_posix() if sub else x for x in walk_files(root / sub))]
    return sorted(n for n in found if n not in ours and not n.startswith(OUTPUTS_MANIFEST))


def clear_recorded(root: str | Path, subfolders: Iterable[str] = ("",)) -> None:
    """``--overwrite`` of a folder that a build wrote (``unetzoo prepare``): delete the
    files its ``.unetzoo-outputs.json`` lists that are still unetzoo's, and the manifest,
    then the folders they leave empty. Any other file under ``subfolders`` (relative to
    ``root``; ``""`` is all of it) is the user's: refused in one line, nothing deleted."""
    root = Path(root)
    outputs = OutputFolder(root)
    ours = set(outputs.written() or [])
    foreign = unrecorded(root, subfolders)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise ConfigError(
            f"{root} holds {foreign[0]}{more}, which unetzoo did not write there; "
            "--overwrite deletes only the files a build listed in its "
            f"{OUTPUTS_MANIFEST}: move them or choose another --output"
        )
    gone = [root / n for n in sorted(ours)] + [outputs.manifest]
    for f in gone:
        f.unlink(missing_ok=True)
    prune_empty(root, gone)


def record_tree(root: str | Path) -> None:
    """List every file under ``root`` in its ``.unetzoo-outputs.json``: a build that
    wrote the whole folder (``unetzoo prepare``), so that ``--overwrite`` may replace
    exactly these files later (:func:`clear_recorded`)."""
    root = Path(root)
    OutputFolder(root).record([n for n in walk_files(root) if not n.startswith(OUTPUTS_MANIFEST)])
