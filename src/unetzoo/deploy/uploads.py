"""Reading untrusted uploads: size limits, type by content, one clear error each.

The file name of an upload is never trusted: the type comes from the first bytes (PNG,
JPEG, TIFF, gzip-wrapped or plain NIfTI-1/2) and the file must then actually decode.
Compressed NIfTI is inflated with a cap so a small gzip bomb cannot exhaust memory.
Downloads are written under a fresh temporary folder with a sanitised name, so no part
of a client-supplied name can point outside it.
"""

from __future__ import annotations

import io
import re
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unetzoo.data.io import RGB_TO_GREY
from unetzoo.data.medio import save_case_nifti
from unetzoo.errors import DataError

MAX_UPLOAD_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 64 * 1024 * 1024  # H * W * D after decoding
IMAGE_KINDS = ("png", "jpeg", "tiff")
ACCEPTED = "PNG, JPEG, TIFF or NIfTI (.nii / .nii.gz)"


@dataclass
class Upload:
    """A decoded upload.

    Attributes:
        kind: ``"png"``, ``"jpeg"``, ``"tiff"`` or ``"nifti"``.
        array: raw intensities ``(C, D, H, W)`` float32 (``D = 1`` for 2-D images).
        spacing: voxel size along ``(D, H, W)`` in mm (1.0 where the format has none).
        affine: the NIfTI file's affine (4x4, file ``(i, j, k)`` indices) or None.
        name: a sanitised stem of the original file name, safe for a download name.
        bit_depth: for integer 2-D images the maximum of their dtype (255, 65535), else None.
        axes: for volumes, the file axis each of ``D, H, W`` came from (``predict``'s
            slicing rule, :func:`unetzoo.data.geometry.volume_to_cdhw`), else None.
    """

    kind: str
    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray | None
    name: str
    bit_depth: int | None = None
    axes: tuple[int, int, int] | None = None

    @property
    def is_volume(self) -> bool:
        return self.kind == "nifti"


def safe_stem(name: str | None, default: str = "upload") -> str:
    """A file-name stem with only ``[A-Za-z0-9._-]``, no leading dots, at most 64 chars.

    Folder parts are dropped first, so ``"../../etc/passwd"`` becomes ``"passwd"``.
    """
    base = re.split(r"[\\/]", str(name or ""))[-1]
    for ext in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gz"):
        if base.lower().endswith(ext):
            base = base[: -len(ext)]
            break
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip("._")[:64]
    return stem or default


def sniff(head: bytes) -> str | None:
    """The type of a file from its first bytes: png, jpeg, tiff, gzip, nifti or None."""
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
    return None


def _is_nifti_header(head: bytes) -> bool:
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return True
    return len(head) >= 12 and head[4:8] in (b"n+2\x00", b"ni2\x00")


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


def _bit_depth(arr: np.ndarray) -> int | None:
    # Unsigned integer pixels are display renderings; signed ones (CT in HU) are raw.
    if np.issubdtype(arr.dtype, np.unsignedinteger) or arr.dtype == np.bool_:
        return 1 if arr.dtype == np.bool_ else int(np.iinfo(arr.dtype).max)
    return None


def _decode_pil(data: bytes, label: str, kind: str) -> tuple[np.ndarray, int | None]:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > MAX_PIXELS:
            raise DataError(
                f"{label}: {img.width} x {img.height} pixels is over the limit; downsample it"
            )
        img.load()
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
        raise DataError(
            f"{label}: looks like {kind.upper()} but cannot be decoded ({exc}); the file is "
            "truncated or corrupt"
        ) from exc
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "RGBA"):
        img = img.convert(img.mode[:-1])  # drop alpha: it is not an image channel
    if img.mode == "1":
        img = img.convert("L")
    arr = np.asarray(img)
    depth = _bit_depth(arr)
    if img.mode in ("I;16", "I;16B", "I;16L"):
        depth = 65535
    return arr, depth


def _decode_tiff(data: bytes, label: str) -> tuple[np.ndarray, int | None]:
    import tifffile

    try:
        arr = tifffile.imread(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types
        try:  # some TIFF flavours only PIL reads
            return _decode_pil(data, label, "tiff")
        except DataError:
            raise DataError(
                f"{label}: looks like TIFF but cannot be decoded ({exc}); the file is "
                "truncated or corrupt"
            ) from exc
    arr = np.asarray(arr)
    if arr.size == 0:
        raise DataError(f"{label}: looks like TIFF but cannot be decoded (no image pages); "
                        "the file is truncated or corrupt")
    if arr.size > MAX_PIXELS:
        raise DataError(f"{label}: {arr.shape} is too large; downsample it")
    return arr, _bit_depth(arr)


def _image_to_cdhw(arr: np.ndarray, label: str) -> np.ndarray:
    """``(H, W)``, ``(H, W, C)`` (C <= 4) or ``(C, H, W)`` -> ``(C, 1, H, W)`` float32."""
    if arr.ndim == 2:
        out = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] <= 4 and arr.shape[0] > 4:
        out = np.moveaxis(arr, -1, 0)
    elif arr.ndim == 3 and arr.shape[0] <= 4:
        out = arr
    else:
        raise DataError(
            f"{label}: image of shape {arr.shape} is not a single 2-D image (H, W) or "
            "(H, W, C); upload one image, or a NIfTI file for a volume"
        )
    if not np.all(np.isfinite(out)):
        raise DataError(f"{label}: the image holds NaN or Inf values")
    return np.ascontiguousarray(out[:, None], dtype=np.float32)


def _decode_nifti(
    data: bytes, label: str, axes: tuple[int, int, int] | None = None
) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, tuple[int, int, int]]:
    """``(array (C, D, H, W), spacing, file affine, axes)``: sliced as `unetzoo predict`
    slices (:func:`unetzoo.data.geometry.volume_to_cdhw`), or along ``axes`` when given."""
    import nibabel as nib

    from unetzoo.data.geometry import volume_to_cdhw

    try:
        cls = nib.Nifti2Image if data[4:8] in (b"n+2\x00", b"ni2\x00") else nib.Nifti1Image
        img = cls.from_bytes(data)
        vol = np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types
        raise DataError(
            f"{label}: looks like NIfTI but cannot be read ({exc}); the file is truncated "
            "or the header is damaged"
        ) from exc
    if vol.ndim == 2:
        vol = vol[..., None]
    if vol.ndim == 5 and vol.shape[3] == 1:  # (X, Y, Z, 1, C): NIfTI's vector-valued layout
        vol = vol[:, :, :, 0]
    if vol.ndim not in (3, 4):
        raise DataError(
            f"{label}: NIfTI data of shape {vol.shape} is not a volume (X, Y, Z) or "
            "(X, Y, Z, channels)"
        )
    if vol.size > MAX_PIXELS:
        raise DataError(f"{label}: volume of shape {vol.shape} is too large; crop it")
    if not (np.issubdtype(vol.dtype, np.number) or vol.dtype == np.bool_) or np.iscomplexobj(vol):
        raise DataError(f"{label}: voxels of type {vol.dtype} are not intensities")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3]) + (1.0, 1.0, 1.0)
    affine = np.asarray(img.affine, dtype=np.float64)
    cdhw, order, spacing = volume_to_cdhw(vol, affine, zooms[:3], axes)
    arr = np.ascontiguousarray(cdhw, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{label}: the volume holds NaN or Inf values")
    return arr, spacing, affine, order


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
        an :class:`Upload` with raw intensities ``(C, D, H, W)``.

    Raises:
        DataError: too big, empty, not one of the accepted types, or undecodable.
    """
    label = Path(name or path).name
    data = read_bytes(path, max_bytes)
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
    stem = safe_stem(name or Path(path).name)
    if kind == "nifti":
        arr, spacing, affine, order = _decode_nifti(data, label, axes)
        return Upload("nifti", arr, spacing, affine, stem, axes=order)
    arr, depth = _decode_tiff(data, label) if kind == "tiff" else _decode_pil(data, label, kind)
    return Upload(kind, _image_to_cdhw(arr, label), (1.0, 1.0, 1.0), None, stem, depth)


def match_channels(upload: Upload, in_channels: int) -> np.ndarray:
    """The upload's ``(C, D, H, W)`` array with ``C == in_channels``.

    2-D colour images go to grey (ITU-R 601 luma) for one-channel models, and grey
    images are repeated for three-channel models; anything else is an error.
    """
    arr = upload.array
    c = arr.shape[0]
    if c == in_channels:
        return arr
    if not upload.is_volume:
        if c == 3 and in_channels == 1:
            w = np.array(RGB_TO_GREY, dtype=np.float32)[:, None, None, None]
            return (arr * w).sum(0, keepdims=True)
        if c == 1 and in_channels == 3:
            return np.repeat(arr, 3, axis=0)
    what = "volume" if upload.is_volume else "image"
    raise DataError(
        f"{upload.name}: the {what} has {c} channel(s) but the model takes {in_channels}; "
        f"upload a {in_channels}-channel {what} or pick a model trained on {c} channel(s)"
    )


def to_model_input(upload: Upload, in_channels: int, preprocessing: dict[str, Any]) -> np.ndarray:
    """Normalised ``(C, D, H, W)`` float32 input for a model.

    Volumes and float images get the checkpoint's preprocessing spec (raw intensities,
    e.g. CT in HU). Integer 2-D images (PNG/JPEG/TIFF) are display renderings: they are
    scaled to [0, 1] by their bit depth, except under a ``"range"`` spec (which names
    its own scale) or per-image statistics (``"zscore"``, ``"percentile"``).
    """
    from unetzoo.data.preprocessing import normalize_picture

    # The same rule as `unetzoo predict` (one home: data.preprocessing).
    return normalize_picture(match_channels(upload, in_channels),
                             preprocessing or {"kind": "none"}, upload.bit_depth)


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
    """Save ``labels`` ``(D, H, W)`` as ``<stem>_labels.png`` (2-D) or ``.nii.gz`` (volume).

    Volumes go through the project's one label writer
    (:func:`unetzoo.data.medio.save_case_nifti`): the upload's shape, voxel order and
    affine, as ``unetzoo predict`` writes them. The name comes from :func:`safe_stem`,
    and the result is checked to lie inside ``folder``.
    """
    folder = Path(folder).resolve()
    stem = safe_stem(upload.name)
    suffix = ".nii.gz" if upload.is_volume else ".png"
    target = (folder / f"{stem}_labels{suffix}").resolve()
    if folder not in target.parents:
        raise DataError("refusing to write a download outside its folder")
    if upload.is_volume:
        from unetzoo.engine.logging.display import file_to_array_affine

        affine = upload.affine if upload.affine is not None else np.eye(4)
        axes = upload.axes or (2, 1, 0)
        return save_case_nifti(labels, file_to_array_affine(affine, axes), target, axes)
    from PIL import Image

    Image.fromarray(labels[0].astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)).save(target)
    return target
