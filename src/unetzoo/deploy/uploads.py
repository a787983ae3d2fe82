"""Reading untrusted uploads: size limits, type by content, one clear error each.

What is upload-specific lives here: byte limits, the type sniffed from the first bytes
(PNG, JPEG, TIFF, NRRD, MetaImage, gzip-wrapped or plain NIfTI-1/2; the client's file
name is never trusted), a capped inflate so a small gzip bomb cannot exhaust memory,
NRRD/MetaImage headers that would read a second (server-side) file refused, and safe
download names. The bytes are then written to a private file with the sniffed suffix and
read by ``unetzoo predict``'s reader (:func:`unetzoo.engine.inputs.decode` and
:func:`unetzoo.engine.inputs.model_input`): the same array, slicing axis, spacing,
affine, checks and messages. Downloads are written under a fresh temporary folder with a
sanitised name, so no part of a client-supplied name can point outside it.
"""

from __future__ import annotations

import math
import re
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unetzoo.data.medio import save_case_nifti
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


@dataclass
class Upload(inputs.Decoded):
    """A decoded upload: :class:`unetzoo.engine.inputs.Decoded` (``array`` ``(C, D, H, W)``
    raw intensities in the file's dtype, ``spacing``, ``affine``, ``order``, ...) plus

    Attributes:
        kind: the sniffed type (``"png"``, ``"jpeg"``, ``"tiff"``, ``"nifti"``, ``"nrrd"``,
            ``"mha"``).
        name: a sanitised stem of the original file name, safe for a download name.
    """

    kind: str = "png"
    name: str = "upload"

    @property
    def is_volume(self) -> bool:
        return not self.picture

    @property
    def axes(self) -> tuple[int, int, int] | None:
        """The file axis each of ``D, H, W`` came from (volumes), else None."""
        return self.order


def safe_stem(name: str | None, default: str = "upload") -> str:
    """A file-name stem with only ``[A-Za-z0-9._-]``, no leading dots, at most 64 chars.

    Folder parts are dropped first, so ``"../../etc/passwd"`` becomes ``"passwd"``.
    """
    base = re.split(r"[\\/]", str(name or ""))[-1]
    for ext in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nrrd", ".mha",
                ".gz"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
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


def _check_total_size(file: Path, kind: str, label: str) -> None:
    """The whole upload (all slices and channels) within :data:`MAX_PIXELS`, from its header."""
    from unetzoo.data.io import picture_shape
    from unetzoo.data.medio import image_shape

    shape = image_shape(file) if kind in VOLUME_KINDS else picture_shape(file)
    if math.prod(shape) > MAX_PIXELS:
        raise DataError(f"{label}: an image of shape {tuple(shape)} is too large; crop or "
                        "downsample it")
    if kind in VOLUME_KINDS and len(shape) >= 3 and min(shape[:3]) > MAX_SLICES:
        # Each slice is one model run at img_size: the work is the slice count.
        raise DataError(f"{label}: {min(shape[:3]):,} slices along every axis, over the "
                        f"demo's limit of {MAX_SLICES}; upload a cropped volume")
    if kind in VOLUME_KINDS and max(shape[:3]) > MAX_SLICES * 4:
        raise DataError(f"{label}: an axis of {max(shape[:3]):,} voxels is over the demo's "
                        f"limit of {MAX_SLICES * 4:,}; upload a cropped volume")


def _decode(data: bytes, kind: str, label: str, axes: tuple[int, int, int] | None) -> inputs.Decoded:
    """``predict``'s reader on the upload's bytes, from a private file named by the sniffed
    type; messages name the client's file, never the server's path."""
    suffix, what = SUFFIX[kind]
    with tempfile.TemporaryDirectory(prefix="unetzoo-upload-") as tmp:
        file = Path(tmp) / f"upload{suffix}"
        file.write_bytes(data)
        try:
            _check_total_size(file, kind, label)
            dec = inputs.decode(file, max_pixels=MAX_PIXELS, axes=axes, where=label)
            # nibabel memory-maps an uncompressed .nii: own the voxels before the file goes.
            dec.array = np.array(dec.array)
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
) -> Upload:
    """Decode an uploaded image or volume, checking its type by content.

    Args:
        path: where the upload was stored.
        name: the client's file name (only its sanitised stem is kept); default the
            stored name.
        max_bytes: size limit of the file (and of an inflated ``.nii.gz``).
        axes: slice a volume along these file axes (default: predict's rule).

    Returns:
        an :class:`Upload`: :func:`unetzoo.engine.inputs.decode`'s result for its bytes.

    Raises:
        DataError: too big, empty, not one of the accepted types, or undecodable.
    """
    label = Path(name or path).name
    kind, data = _sniffed(read_bytes(path, max_bytes), label, max_bytes)
    dec = _decode(data, kind, label, axes)
    return Upload(dec.array, dec.spacing, dec.affine, dec.order, dec.file_ndim, label,
                  dec.geometry_known, kind=kind, name=safe_stem(name or Path(path).name))


def to_model_input(upload: Upload, in_channels: int, preprocessing: dict[str, Any]) -> np.ndarray:
    """Normalised ``(C, D, H, W)`` float32 input for a model: ``unetzoo predict``'s rule
    (:func:`unetzoo.engine.inputs.model_input`). Volumes and float images get the
    checkpoint's preprocessing; 8/16-bit pictures are scaled by their bit depth."""
    return inputs.model_input(upload, in_channels, preprocessing or {"kind": "none"})


def read_mask(path: str | Path, shape: tuple[int, int, int], num_classes: int,
              name: str | None = None, max_bytes: int = MAX_UPLOAD_BYTES,
              axes: tuple[int, int, int] | None = None) -> np.ndarray:
    """A ground-truth label map ``(D, H, W)`` int64 matching ``shape``.

    A NIfTI mask is sliced along ``axes`` (its image's ``Upload.axes``), so it lines up
    with the image whatever its header's spacing says. PNG/TIFF masks with values 0/255
    are mapped to 0/1 for binary models.
    """
    up = read_upload(path, name=name, max_bytes=max_bytes, axes=axes)
    arr = up.array
    label = Path(name or path).name
    if arr.shape[0] != 1:
        if not up.is_volume and arr.shape[0] == 3 and np.all(arr == arr[:1]):
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


def write_label_map(labels: np.ndarray, upload: Upload, folder: Path) -> Path:
    """Save ``labels`` ``(D, H, W)`` as ``<stem>_labels.png`` (2-D), ``.nrrd`` / ``.mha``
    (an NRRD / MetaImage volume: its own format, as ``predict`` writes) or ``.nii.gz``.

    Volumes go through the project's one label writer
    (:func:`unetzoo.data.medio.save_case_nifti`): the upload's shape, voxel order and
    affine, as ``unetzoo predict`` writes them. The name comes from :func:`safe_stem`,
    and the result is checked to lie inside ``folder``.
    """
    folder = Path(folder).resolve()
    stem = safe_stem(upload.name)
    suffix = {"nrrd": ".nrrd", "mha": ".mha"}.get(upload.kind, ".nii.gz") if upload.is_volume else ".png"
    target = (folder / f"{stem}_labels{suffix}").resolve()
    if folder not in target.parents:
        raise DataError("refusing to write a download outside its folder")
    if upload.is_volume:
        from unetzoo.data.geometry import file_to_array_affine

        assert upload.order is not None and upload.affine is not None
        return save_case_nifti(labels, file_to_array_affine(upload.affine, upload.order),
                               target, upload.order)
    from PIL import Image

    Image.fromarray(labels[0].astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)).save(target)
    return target
