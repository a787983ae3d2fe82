"""Reading untrusted uploads: size limits, type by content, one clear error each.

What is upload-specific lives here: byte limits, the type sniffed from the first bytes
(PNG, JPEG, TIFF, NRRD, MetaImage, gzip-wrapped or plain NIfTI-1/2; the client's file
name is never trusted), a capped inflate so a small gzip bomb cannot exhaust memory,
NRRD/MetaImage headers that would read a second (server-side) file refused, and safe
download names. The bytes are then written to a private file with the sniffed suffix and
read by ``unetzoo predict``'s reader (the registry of :mod:`unetzoo.data.imageio`, with
the demo's size :class:`~unetzoo.data.imageio.Limits`, then
:func:`unetzoo.engine.inputs.model_input`): the same array, slicing axis, spacing,
affine, checks and messages, in the one decoded type
(:class:`~unetzoo.data.imageio.Decoded`). Downloads are written under a fresh temporary folder with a
sanitised name, so no part of a client-supplied name can point outside it.
"""

from __future__ import annotations

import re
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from unetzoo.data import imageio
from unetzoo.data.imageio import Decoded
from unetzoo.engine import inputs
from unetzoo.errors import DataError

MAX_UPLOAD_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 64 * 1024 * 1024  # H * W * D (x channels), from the header before decoding
MAX_SLICES = 1024  # slices of an upload (each one model run), from the header
ACCEPTED = "PNG, JPEG, TIFF, NIfTI (.nii / .nii.gz), NRRD (.nrrd) or MetaImage (.mha)"
#: The sniffed type -> (suffix the reader knows it by, name in messages).
SUFFIX = {"png": (".png", "PNG"), "jpeg": (".jpg", "JPEG"), "tiff": (".tif", "TIFF"),
          "nifti": (".nii", "NIfTI"), "nrrd": (".nrrd", "NRRD"), "mha": (".mha", "MetaImage")}
VOLUME_KINDS = ("nifti", "nrrd", "mha")


def safe_stem(name: str | None, default: str = "upload") -> str:
    """A file-name stem with only ``[A-Za-z0-9._-]``, no leading dots, at most 64 chars.

    Folder parts are dropped first, so ``"../../etc/passwd"`` becomes ``"passwd"``.
    """
    base = re.split(r"[\\/]", str(name or ""))[-1]
    base = imageio.strip_ending(base)
    if base.lower().endswith(".gz"):
        base = base[:-3]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip("._")[:64]
    return stem or default


def sniff(head: bytes) -> str | None:
    """The type of a file from its first bytes: png, jpeg, tiff, gzip, nifti, nrrd, mha
    or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if _is_nifti_header(head):
        return "nifti"
    if head.startswith(b"NRRD000"):
        return "nrrd"
    if re.match(rb"(ObjectType|NDims|Comment)\s*=", head):  # MetaImage: text "Key = Value"
        return "mha"
    return None


def _is_nifti_header(head: bytes) -> bool:
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return True
    return len(head) >= 12 and head[4:8] in (b"n+2\x00", b"ni2\x00")


def _check_attached(data: bytes, kind: str, label: str) -> None:
    """NRRD / MetaImage headers may name another file to read the voxels from (``data
    file:``, ``ElementDataFile = /etc/...``): only data inside the upload is accepted."""
    if kind == "nrrd":
        header = data.split(b"\n\n", 1)[0].lower()
        detached = re.search(rb"^data ?file\s*:", header, re.M) is not None
    else:
        m = re.search(rb"^ElementDataFile\s*=\s*(\S+)", data[:65536], re.M)
        detached = m is None or m.group(1) != b"LOCAL"
    if detached:
        raise DataError(f"{label}: the header reads its voxels from another file; upload "
                        f"one self-contained {SUFFIX[kind][1]} file (attached data)")


def _inflate(data: bytes, limit: int, label: str) -> bytes:
    d = zlib.decompressobj(wbits=31)  # gzip container
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise DataError(f"{label}: the gzip data is corrupt ({exc}); re-save the file") from exc
    if len(out) > limit:
        raise DataError(
            f"{label}: decompressed size exceeds {limit // 2**20} MiB; upload a smaller volume"
        )
    if not d.eof:
        raise DataError(f"{label}: the gzip data is truncated or corrupt; re-save the file")
    return out


def read_bytes(path: str | Path, max_bytes: int = MAX_UPLOAD_BYTES) -> bytes:
    """The file's bytes, or one clear error if it is missing, empty or too big."""
    p = Path(path)
    label = p.name
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise DataError(f"{label}: the upload cannot be read ({exc.strerror}); upload it again") from exc
    if size == 0:
        raise DataError(f"{label}: the file is empty; upload a {ACCEPTED} file")
    if size > max_bytes:
        raise DataError(
            f"{label}: {size / 2**20:.1f} MiB is over the {max_bytes / 2**20:.0f} MiB upload "
            "limit; crop or downsample the image"
        )
    return p.read_bytes()


def _sniffed(data: bytes, label: str, max_bytes: int) -> tuple[str, bytes]:
    """``(kind, bytes)``: a gzip upload is inflated (capped) and must hold a NIfTI."""
    kind = sniff(data[:352])
    if kind == "gzip":
        data = _inflate(data, max_bytes * 8, label)
        kind = "nifti" if _is_nifti_header(data[:352]) else None
        if kind is None:
            raise DataError(f"{label}: a gzip file that holds no NIfTI volume; upload {ACCEPTED}")
    if kind is None:
        raise DataError(
            f"{label}: not a supported file (the content is not {ACCEPTED}, whatever the "
            "file name says)"
        )
    if kind in ("nrrd", "mha"):
        _check_attached(data, kind, label)
    return kind, data


def _limits() -> imageio.Limits:
    """The demo's size rules (:func:`unetzoo.data.imageio.check_size`): the whole upload
    within :data:`MAX_PIXELS`, each slice one model run, so :data:`MAX_SLICES`."""
    return imageio.Limits(max_pixels=MAX_PIXELS, max_voxels=MAX_PIXELS,
                          max_axis=MAX_SLICES * 4, max_slices=MAX_SLICES, owner="the demo")


def _decode(data: bytes, kind: str, label: str, axes: tuple[int, int, int] | None) -> Decoded:
    """``predict``'s reader on the upload's bytes, from a private file named by the sniffed
    type; messages name the client's file, never the server's path."""
    suffix, what = SUFFIX[kind]
    with tempfile.TemporaryDirectory(prefix="unetzoo-upload-") as tmp:
        file = Path(tmp) / f"upload{suffix}"
        file.write_bytes(data)
        try:
            imageio.read_header(file, _limits())  # the one size check, before decoding
            dec = imageio.decode(file, axes=axes, where=label)
            # nibabel memory-maps an uncompressed .nii: own the voxels before the file goes.
            dec.array = np.array(dec.array)
            dec.source = ()  # the private file is gone
            return dec
        except DataError as exc:
            # One line (decoders' messages may hold newlines), naming the client's file.
            msg = " ".join(str(exc).replace(str(file), label).replace(tmp, "").split())
            if "unreadable or truncated" in msg or "cannot read" in msg:
                verb = "decoded" if kind not in VOLUME_KINDS else "read"
                msg = f"{label}: looks like {what} but cannot be {verb}: {msg.removeprefix(label + ': ')}"
            raise DataError(msg) from None


def read_upload(
    path: str | Path, name: str | None = None, max_bytes: int = MAX_UPLOAD_BYTES,
    axes: tuple[int, int, int] | None = None,
) -> Decoded:
    """Decode an uploaded image or volume, checking its type by content.

    Args:
        path: where the upload was stored.
        name: the client's file name (only its sanitised stem is kept); default the
            stored name.
        max_bytes: size limit of the file (and of an inflated ``.nii.gz``).
        axes: slice a volume along these file axes (default: predict's rule).

    Returns:
        the :class:`~unetzoo.data.imageio.Decoded` upload (``where``: the client's file
        name; ``ending``: the sniffed type's).

    Raises:
        DataError: too big, empty, not one of the accepted types, or undecodable.
    """
    label = Path(name or path).name
    kind, data = _sniffed(read_bytes(path, max_bytes), label, max_bytes)
    return _decode(data, kind, label, axes)


def to_model_input(upload: Decoded, in_channels: int, preprocessing: dict[str, Any]) -> np.ndarray:
    """Normalised ``(C, D, H, W)`` float32 input for a model: ``unetzoo predict``'s rule
    (:func:`unetzoo.engine.inputs.model_input`). Volumes and float images get the
    checkpoint's preprocessing; 8/16-bit pictures are scaled by their bit depth."""
    return inputs.model_input(upload, in_channels, preprocessing or {"kind": "none"})


def read_mask(path: str | Path, shape: tuple[int, int, int], num_classes: int,
              name: str | None = None, max_bytes: int = MAX_UPLOAD_BYTES,
              axes: tuple[int, int, int] | None = None) -> np.ndarray:
    """A ground-truth label map ``(D, H, W)`` int64 matching ``shape``.

    A NIfTI mask is sliced along ``axes`` (its image's ``Decoded.order``), so it lines up
    with the image whatever its header's spacing says. PNG/TIFF masks with values 0/255
    are mapped to 0/1 for binary models.
    """
    up = read_upload(path, name=name, max_bytes=max_bytes, axes=axes)
    arr = up.array
    label = Path(name or path).name
    if arr.shape[0] != 1:
        if up.picture and arr.shape[0] == 3 and np.all(arr == arr[:1]):
            arr = arr[:1]
        else:
            raise DataError(f"{label}: a label map needs one channel, got {arr.shape[0]}")
    mask = arr[0]
    if not np.all(mask == np.round(mask)):
        raise DataError(f"{label}: the mask holds non-integer values; upload a label map")
    mask = mask.astype(np.int64)
    uniq = np.unique(mask)
    if num_classes == 2 and set(uniq.tolist()) <= {0, 255}:
        mask = (mask > 0).astype(np.int64)
        uniq = np.unique(mask)
    if uniq.min(initial=0) < 0 or uniq.max(initial=0) >= num_classes:
        raise DataError(
            f"{label}: mask values {uniq.tolist()[:10]} are outside the model's classes "
            f"0..{num_classes - 1}"
        )
    if tuple(mask.shape) != tuple(shape):
        raise DataError(
            f"{label}: the mask has shape {tuple(mask.shape)} but the image has "
            f"{tuple(shape)}; upload the mask of this image"
        )
    return mask


def download_dir() -> Path:
    """A fresh private folder for files offered for download."""
    return Path(tempfile.mkdtemp(prefix="unetzoo-demo-"))


def download_dir_under(root: Path) -> Path:
    """A fresh sub-folder of ``root``: one per result, so names never collide."""
    return Path(tempfile.mkdtemp(prefix="r", dir=root))


def write_label_map(labels: np.ndarray, upload: Decoded, folder: Path) -> Path:
    """Save ``labels`` ``(D, H, W)`` as ``<stem>_labels.png`` (2-D), ``.nrrd`` / ``.mha``
    (an NRRD / MetaImage volume: its own format, as ``predict`` writes) or ``.nii.gz``,
    through the one label writer (:func:`unetzoo.data.imageio.write_labels`): the
    upload's shape, voxel order and affine, as ``unetzoo predict`` writes them. The stem
    comes from :func:`safe_stem` of the client's name, and the result is checked to lie
    inside ``folder``."""
    folder = Path(folder).resolve()
    ending = {".nrrd": ".nrrd", ".mha": ".mha"}.get(upload.ending, ".nii.gz")
    suffix = ".png" if upload.picture else ending
    target = (folder / f"{safe_stem(upload.where)}_labels{suffix}").resolve()
    if folder not in target.parents:
        raise DataError("refusing to write a download outside its folder")
    return imageio.write_labels(labels, upload, target)
