"""A training run's folder: its layout (one place for every file name), its guard, and
the writable-folder check every command that writes a folder uses.

Layout (:class:`RunLayout`)::

    RUN/
      config.yaml             the resolved configuration (``unetzoo train --config`` reads it)
      plans.json              the plan of a planned run (:mod:`unetzoo.data.plan`)
      metrics.csv             one row per epoch (rewritten atomically via metrics.csv.tmp)
      checkpoints/latest.pt   written every epoch, first
      checkpoints/best.pt     written when the epoch improved the validation Dice, second
      checkpoints/final.pt    the last epoch, written when training ends (what is scored)
      plots/                  the training curves
      tensorboard/            scalars, per-class Dice, overlays
      splits_final.json       the fold split (``--fold`` runs only; an input, never deleted)
      report/                 the final test (:class:`ReportLayout`)
      .unetzoo-run.json       the run marker (``running`` / ``finished``)
      .lock                   the flock held while a training writes here

:class:`RunFolder` guards that folder: one training at a time (``flock``), no writing into
a folder that is not this run's, ``--overwrite`` deleting only what unetzoo wrote (a file
the user put in ``report/`` or ``checkpoints/`` stays), and temporary files of interrupted
writes removed on the next run. Nothing here imports the trainer or the evaluator, so every stage can use it.

:class:`OutputFolder` guards the folders that ``predict`` and ``test`` write files into
(often beside files that are not theirs): ``.unetzoo-outputs.json`` lists what unetzoo wrote
there, so a re-run replaces its own files, and a file of the user's under a target name is
refused before any work unless ``overwrite`` is given.
"""

from __future__ import annotations

import errno
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unetzoo.data.folds import SPLITS_FILE
from unetzoo.engine.checkpoint import is_checkpoint, read_train_state
from unetzoo.errors import CheckpointError, ConfigError
from unetzoo.runs.outputs import OUTPUTS_MANIFEST, OutputFolder, prune_empty, walk_files

CHECKPOINTS = "checkpoints"
BEST = "best.pt"
FINAL = "final.pt"
LATEST = "latest.pt"
CONFIG = "config.yaml"
PLANS = "plans.json"
METRICS_CSV = "metrics.csv"
PLOTS = "plots"
TENSORBOARD = "tensorboard"
REPORT = "report"
RUN_MARKER = ".unetzoo-run.json"
LOCK_NAME = ".lock"


@dataclass(frozen=True)
class ReportLayout:
    """The files of a test report folder (``RUN/report`` or ``unetzoo test --output``)."""

    root: Path

    @property
    def summary_md(self) -> Path:
        return self.root / "summary.md"

    @property
    def summary_json(self) -> Path:
        return self.root / "summary.json"

    @property
    def cases_csv(self) -> Path:
        return self.root / "cases.csv"

    @property
    def cases_json(self) -> Path:
        return self.root / "cases.json"

    @property
    def overlays(self) -> Path:
        return self.root / "overlays"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"


@dataclass(frozen=True)
class RunLayout:
    """Where each file of a run folder lives; ``RunLayout(root)`` computes paths only."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @classmethod
    def of_checkpoint(cls, ckpt: str | Path) -> RunLayout:
        """The run folder of a checkpoint: ``RUN`` for ``RUN/checkpoints/best.pt``; a
        checkpoint outside a ``checkpoints/`` folder counts its own folder as the run."""
        parent = Path(ckpt).parent
        return cls(parent.parent if parent.name == CHECKPOINTS else parent)

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def best(self) -> Path:
        return self.checkpoints / BEST

    @property
    def latest(self) -> Path:
        return self.checkpoints / LATEST

    @property
    def final(self) -> Path:
        return self.checkpoints / FINAL

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def plans(self) -> Path:
        return self.root / PLANS

    @property
    def metrics_csv(self) -> Path:
        return self.root / METRICS_CSV

    @property
    def plots(self) -> Path:
        return self.root / PLOTS

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    @property
    def splits(self) -> Path:
        return self.root / SPLITS_FILE

    @property
    def report_dir(self) -> Path:
        return self.root / REPORT

    @property
    def report(self) -> ReportLayout:
        return ReportLayout(self.report_dir)

    @property
    def marker(self) -> Path:
        return self.root / RUN_MARKER

    @property
    def lock(self) -> Path:
        return self.root / LOCK_NAME


def check_output_dir(path: str | Path) -> Path:
    """Create ``path`` and prove it is writable; one line if it is not."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".unetzoo-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"output folder {p} is not writable ({exc.strerror or exc}); pass --output "
            "with a folder you can write to"
        ) from exc
    return p


def is_run_folder(path: str | Path) -> bool:
    """True when ``path`` holds a unetzoo training run: its ``.unetzoo-run.json`` marker,
    or (a run from before markers existed) a checkpoint that loads as ours."""
    lay = RunLayout(path)
    if lay.marker.is_file():
        return True
    return any(is_checkpoint(p) for p in (lay.latest, lay.best, lay.final))


# Everything a training run writes into its folder; nothing else is ever deleted.
RUN_ENTRIES = frozenset({
    CONFIG, PLANS, METRICS_CSV, METRICS_CSV + ".tmp", CHECKPOINTS, PLOTS, TENSORBOARD,
    REPORT, RUN_MARKER, RUN_MARKER + ".tmp", LOCK_NAME,
})
# What a run writes *inside* its sub-folders (regular expressions on the name relative to
# the sub-folder, matched in full): ``--overwrite`` deletes these and nothing else there,
# so a file the user keeps beside them stays, and a sub-folder goes only if it ends empty.
_STEM = r"(best|latest|final)"
RUN_SUBFOLDER_FILES: dict[str, tuple[str, ...]] = {
    CHECKPOINTS: (
        rf"{_STEM}\.(pt|onnx|pt2)",  # the checkpoints; `unetzoo export`'s default outputs
        rf"{_STEM}\.[0-9a-f]{{16}}\.onnx",  # the onnxruntime backend's cached export
        r"\.unetzoo-onnx-cache\.json",  # its SHA-256 record (engine.backends.CACHE_RECORD)
        r"\.unetzoo-outputs\.json",  # what `unetzoo export` wrote there (OutputFolder)
        rf"\.{_STEM}\..+\.tmp(\.onnx)?",  # temporaries of interrupted writes
        # `unetzoo postprocess`'s plan (engine.postprocess.PLAN_FILE): the old model's
        # plan would be applied to the new one
        r"postprocessing\.json",
    ),
    PLOTS: (r"(loss|val_metrics)\.png",),
    TENSORBOARD: (r"events\.out\.tfevents\..+",),
}
# The files a report is made of (:class:`ReportLayout`, ``run_test``'s targets): what
# ``--overwrite`` deletes from a report folder that has no readable manifest.
REPORT_FILES: tuple[str, ...] = (
    r"summary\.(md|json)", r"cases\.(csv|json)", r"overlays/[^/]+_slice\d{3,}\.png",
    r"predictions/[^/]+\.nii\.gz",
)
# Written by every test: a user's file under one of these names would stop the run's final
# test, so ``--overwrite`` refuses it up front instead of after the training.
REPORT_ALWAYS = ("summary.md", "summary.json", "cases.csv")
# Files a run may find already in place and reads (a fold split that the caller or the
# user stored there): they neither make a folder "not empty" nor are ever deleted.
RUN_INPUTS = frozenset({SPLITS_FILE})


class RunFolder:
    """The output folder of one training run: locked, checked, recorded.

    On entry: create the folder, take an exclusive ``flock`` on ``DIR/.lock`` (held
    until exit; the kernel drops it when the process dies, so a killed run leaves no
    stale lock), then decide whether this run may write there:

    - empty, or a run of ours that died before its first checkpoint: start;
    - ``resume``: continue whatever is there (the caller resumes a checkpoint);
    - a run of ours (``.unetzoo-run.json``, or a legacy folder whose checkpoint loads)
      with ``overwrite``: delete *that run's* entries (:data:`RUN_ENTRIES`; inside its
      sub-folders only the files unetzoo writes there, :func:`run_files`) and start;
      files the user added stay, at the top or inside ``report/``, ``checkpoints/`` ...;
    - files unetzoo did not write: refused, or with ``overwrite`` left untouched beside
      the new run, unless one is named like a run file (then refused: it would be
      overwritten);
    - a finished or resumable run without a flag: refused, with the flag to pass.

    Temporary files of interrupted checkpoint writes are removed. The folder is marked
    ``running`` until :meth:`finish`.
    """

    def __init__(self, path: str | Path, *, resume: bool = False, overwrite: bool = False):
        self.path = Path(path)
        self.layout = RunLayout(self.path)
        self.resume = bool(resume)
        self.overwrite = bool(overwrite)
        self._fd: int | None = None
        self.notes: list[str] = []

    # -------------------------------------------------------------- context manager
    def __enter__(self) -> RunFolder:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(
                f"output folder {self.path} is not writable ({exc.strerror or exc}); pass "
                "--output with a folder you can write to"
            ) from exc
        self._lock()
        try:
            self._check_and_clean()
            self._write_marker("running")
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._unlock()

    def finish(self) -> None:
        """Record the run as finished (all epochs and the final test done)."""
        self._write_marker("finished")

    # -------------------------------------------------------------- lock
    def _lock(self) -> None:
        lock = self.layout.lock
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise CheckpointError(
                f"output folder {self.path} is not writable ({exc.strerror or exc}); pass "
                "--output with a folder you can write to"
            ) from exc
        try:
            import fcntl
        except ImportError:  # no flock on this platform: run unlocked
            self._fd = fd
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = ""
            try:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            except OSError:
                pass
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                who = f" (process {holder})" if holder.isdigit() else ""
                raise CheckpointError(
                    f"output folder {self.path} is in use by another unetzoo training{who}; "
                    "wait for it to end or pass another --output"
                ) from exc
            raise CheckpointError(f"cannot lock {lock}: {exc.strerror or exc}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def _unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock; the file stays (harmless, reused)
            self._fd = None

    # -------------------------------------------------------------- checks
    def marker(self) -> dict[str, Any] | None:
        """The folder's ``.unetzoo-run.json`` (None when absent or unreadable)."""
        try:
            data = json.loads(self.layout.marker.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _is_our_run(self) -> bool:
        return self.marker() is not None or is_run_folder(self.path)

    def _check_and_clean(self) -> None:
        entries = sorted(e.name for e in self.path.iterdir()
                         if e.name != LOCK_NAME and e.name not in RUN_INPUTS)
        if entries and not self.resume:
            ours = self._is_our_run()
            own = [e for e in entries if e in RUN_ENTRIES]
            foreign = [e for e in entries if e not in RUN_ENTRIES]
            has_ckpt = self.layout.latest.is_file()
            status = (self.marker() or {}).get("status")
            # Only a folder a run marked as its own (.unetzoo-run.json) has files to
            # delete: a copied best.pt beside the user's config.yaml proves nothing.
            marked = self.marker() is not None
            if ours and marked and (self.overwrite or (status == "running" and not has_ckpt)):
                self._remove(own)  # that run's own files only
            elif own and ours and self.overwrite:
                names = ", ".join(own[:5])
                raise CheckpointError(
                    f"output folder {self.path} holds {names} but no {RUN_MARKER} recording "
                    "a unetzoo run, so --overwrite deletes none of them; move them or pass "
                    "another --output"
                )
            elif own and not ours:
                names = ", ".join(own[:5])
                raise CheckpointError(
                    f"output folder {self.path} holds {names}, which unetzoo did not write; "
                    "a run would overwrite them, so pass another --output"
                    + ("" if self.overwrite else " (--overwrite never replaces your files)")
                )
            elif ours:
                done = status == "finished"
                if status is None and has_ckpt:  # legacy folder: judge by the checkpoint
                    latest = read_train_state(self.layout.latest)
                    done = latest is not None and latest.iteration >= max(latest.max_iterations, 1)
                what = "a finished run" if done or not has_ckpt else "an unfinished run"
                hint = ("continue it with --resume, or start over with --overwrite"
                        if what == "an unfinished run" else
                        "pass another --output, or --overwrite to replace that run")
                raise CheckpointError(
                    f"output folder {self.path} holds {what}; {hint} (--overwrite deletes "
                    "only the run's own files)"
                )
            elif foreign and not self.overwrite:
                names = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
                raise CheckpointError(
                    f"output folder {self.path} is not empty ({names}) and is not a unetzoo "
                    "run; pass an empty or new --output, or --overwrite to write the run's "
                    "files beside yours (yours are never touched)"
                )
        self._clean_temporary()

    def _remove(self, names: list[str]) -> None:
        """Delete the run's entries among ``names``: a file (or link) as a whole, a
        sub-folder only the files unetzoo writes there (:func:`run_files`), then the
        folders those files leave empty. Everything is checked before anything goes."""
        plan: list[tuple[Path, list[Path] | None]] = []
        for name in names:
            if name not in RUN_ENTRIES or name == LOCK_NAME:
                continue
            p = self.path / name
            folder = p.is_dir() and not p.is_symlink()
            plan.append((p, run_files(self.path, name) if folder else None))
        for p, files in plan:
            if files is None:
                p.unlink(missing_ok=True)
                continue
            for f in files:
                f.unlink(missing_ok=True)
            prune_empty(p, files)

    def _clean_temporary(self) -> None:
        """Remove ``.latest.pt.*.tmp`` & co. that a killed write left (we hold the lock)."""
        ck = self.layout.checkpoints
        stale = list(ck.glob(".*.pt.*.tmp")) if ck.is_dir() else []
        stale += [p for p in (self.path / (METRICS_CSV + ".tmp"),) if p.exists()]
        for p in stale:
            p.unlink(missing_ok=True)
        if stale:
            self.notes.append(
                f"removed {len(stale)} temporary file(s) of an interrupted write in {self.path}"
            )

    def _write_marker(self, status: str) -> None:
        data = {"tool": "unetzoo", "status": status, "pid": os.getpid()}
        tmp = self.path / (RUN_MARKER + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.layout.marker)


def run_files(root: str | Path, entry: str) -> list[Path]:
    """The files in the run sub-folder ``root/entry`` that unetzoo wrote (what
    ``--overwrite`` deletes): :data:`RUN_SUBFOLDER_FILES` by name; for ``report/`` the
    files its manifest lists that are still unetzoo's (:meth:`OutputFolder.written`) and
    the manifest itself, or, with no readable manifest (a report from before manifests),
    the names a report is made of (:data:`REPORT_FILES`).

    Raises:
        CheckpointError: a file of the user's in ``report/`` under a name the final test
            always writes (it would stop the run at its end).
    """
    folder = Path(root) / entry
    if not folder.is_dir():
        return []
    if entry != REPORT:
        patterns = RUN_SUBFOLDER_FILES.get(entry, ())
        return [folder / n for n in walk_files(folder) if any(re.fullmatch(p, n) for p in patterns)]
    names = OutputFolder(folder).written()
    if names is None:
        names = [n for n in walk_files(folder) if any(re.fullmatch(p, n) for p in REPORT_FILES)]
    names += [n for n in walk_files(folder) if n.startswith(OUTPUTS_MANIFEST)]
    for kept in sorted(set(REPORT_ALWAYS) - set(names)):
        if os.path.lexists(folder / kept):
            raise CheckpointError(
                f"{folder / kept} was not written by unetzoo and the run's final test "
                "writes that name; move it, or pass another --output"
            )
    return [folder / n for n in sorted(set(names))]


