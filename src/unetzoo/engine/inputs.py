"""Model inputs of decoded images: channels matched to the model, intensities
normalised, far-off intensities flagged; and the one rule for writing outputs.

Files are read by the registry (:mod:`unetzoo.data.imageio`: :func:`~unetzoo.data.imageio.read_header`
checks sizes once from the header, :func:`~unetzoo.data.imageio.decode` gives a
:class:`~unetzoo.data.imageio.Decoded` in the file's dtype); :func:`model_input` matches
the model's channels (:func:`match_channels`) and normalises with the inference spec's
preprocessing (:func:`unetzoo.data.preprocessing.normalize`; 8-bit and 16-bit pictures by
their bit depth, :func:`unetzoo.data.preprocessing.normalize_picture`). ``predict``,
``test``'s inputs and the demo's uploads all come here.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from unetzoo.data.imageio import Decoded
from unetzoo.errors import DataError

#: ITU-R BT.601 luma weights (R, G, B): the one RGB -> grey rule of ``predict`` and the demo.
RGB_TO_GREY = (0.299, 0.587, 0.114)


def match_channels(image: Decoded, in_channels: int, case: str | None = None) -> np.ndarray:
    """``image.array`` with ``in_channels`` channels (dtype kept).

    Pictures: alpha is dropped, colour goes to grey (ITU-R 601 luma, rounded back to the
    integer type so the bit-depth rule still applies) for one-channel models, grey is
    repeated for three-channel models. Volumes must have the model's channels.
    """
    arr, where = image.array, image.where
    c = arr.shape[0]
    if not image.picture:
        if c != in_channels:
            fix = (f"give them as {case}_0000 ... {case}_{in_channels - 1:04d}" if case else
                   f"give a volume with {in_channels} channel(s) (a last axis in the file)")
            raise DataError(
                f"{where}: the volume has {c} channel(s) but the model takes {in_channels}; "
                f"{fix}, or use a model trained on {c} channel(s)"
            )
        return arr
    if c > 4 and c != in_channels:  # e.g. a multi-page TIFF read as (pages, H, W)
        raise DataError(
            f"{where}: array of shape {arr.shape[2:] + arr.shape[:1]} is not one 2-D image; "
            "predict takes one image per file (save a stack as a NIfTI volume)"
        )
    if c == 4 and in_channels in (1, 3):  # drop alpha
        arr, c = arr[:3], 3
    if c == in_channels:
        return arr
    if in_channels == 1 and c == 3:
        luma = np.tensordot(np.array(RGB_TO_GREY, dtype=np.float32), arr.astype(np.float32), 1)
        return (luma.round().astype(arr.dtype) if arr.dtype.kind == "u" else luma)[None]
    if in_channels == 3 and c == 1:
        return np.repeat(arr, 3, axis=0)
    raise DataError(
        f"{where}: image has {c} channel(s) but the model takes {in_channels}; convert it"
    )


def model_input(
    image: Decoded, in_channels: int, spec: dict[str, Any], case: str | None = None
) -> np.ndarray:
    """Normalised ``(C, D, H, W)`` float32 model input of a :class:`Decoded` input.

    Volumes, float and signed pictures (raw intensities) get ``spec``; 8/16-bit pictures
    the bit-depth rule (:func:`unetzoo.data.preprocessing.normalize_picture`).
    """
    return _normalised(image, match_channels(image, in_channels, case), spec)


def _normalised(image: Decoded, arr: np.ndarray, prep: dict[str, Any]) -> np.ndarray:
    from unetzoo.data.preprocessing import normalize, normalize_picture

    if image.picture:
        return normalize_picture(arr[:, 0], prep, image.bit_depth)[:, None]
    return normalize(arr.astype(np.float32), prep)


def prepare(image: Decoded, spec: Any, case: str | None = None,
            strict: bool = False) -> tuple[np.ndarray, str | None]:
    """``predict``'s one step from a decoded input (in the model's orientation) to the
    model: :func:`model_input` under ``spec`` (an :class:`~unetzoo.engine.spec.InferenceSpec`)
    and :func:`intensity_warning` (raw intensities of a volume, the model input of a
    picture). Returns ``(model input, warning or None)``."""
    arr = match_channels(image, spec.in_channels, case)
    if image.picture:
        x = _normalised(image, arr, dict(spec.preprocessing))
        return x, intensity_warning(x, True, spec, image.where, strict)
    warning = intensity_warning(arr, False, spec, image.where, strict)
    return _normalised(image, arr, dict(spec.preprocessing)), warning


def intensity_warning(
    array: np.ndarray, picture: bool, spec: Any, where: str, strict: bool = False
) -> str | None:
    """One warning line when an input is far outside the training data's intensities
    (``spec.intensity``, :func:`unetzoo.data.preprocessing.intensity_mismatch`: CT into
    an MRI model, MRI into a CT model, 12-bit data read as 16 bits), else None; with
    ``strict`` (``--strict-inputs``) a :class:`DataError` instead. ``array`` is a volume's
    raw ``(C, ...)`` intensities, or a picture's model input (picture datasets store the
    fingerprint of their normalised pixels, ``"space": "normalised"``); a picture into a
    volume model, or a spec without a fingerprint (older checkpoints), checks nothing."""
    from unetzoo.data.preprocessing import intensity_mismatch, scale_free

    fingerprint = getattr(spec, "intensity", None)
    if not fingerprint or (fingerprint.get("space") == "normalised") != picture:
        return None
    why = intensity_mismatch(np.asarray(array, dtype=np.float32), fingerprint,
                             scale_free(dict(spec.preprocessing)) and not picture)
    if why is None:
        return None
    modality = fingerprint.get("modality")
    text = (f"{where}: far outside the intensities the model was trained on"
            f"{f' ({modality})' if modality else ''}: {why}; its labels are likely wrong")
    if strict:
        raise DataError(f"{text} (refused under --strict-inputs)")
    return f"warning: {text} (--strict-inputs refuses such inputs)"


def write_output(target: Path, write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """``write(*args, **kwargs)`` into a temporary file beside ``target`` (the argument
    naming ``target`` is swapped for it), then renamed onto ``target``
    (:func:`unetzoo.data.io.atomic_path`): an existing file is replaced, never rewritten in
    place, and a kill leaves no truncated file under its name. A full disk or an
    unwritable folder is one line naming ``target``."""
    from unetzoo.data.io import atomic_path

    try:
        with atomic_path(target) as tmp:
            def swap(a: Any) -> Any:
                if isinstance(a, (str, Path)) and Path(a) == Path(target):
                    return str(tmp) if isinstance(a, str) else tmp
                return a

            write(*map(swap, args), **{k: swap(v) for k, v in kwargs.items()})
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DataError(f"disk full at {target}; free space or choose another --output") from None
        raise DataError(f"cannot write {target}: {exc.strerror or exc}") from None


def progress_printer(name: str) -> Callable[[int, int], None]:
    """Sliding-window progress on stderr: a line rewritten in place on a terminal, at
    most one line per 10 % in a log file."""
    tty = sys.stderr.isatty()
    shown = {"step": -1}

    def report(done: int, total: int) -> None:
        if total <= 1:
            return
        step = done * 10 // total
        if not tty and step == shown["step"]:
            return
        shown["step"] = step
        text = f"{name}: {done}/{total} windows ({100 * done // total} %)"
        if tty:
            print("\r" + text, end="\n" if done == total else "", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    return report
