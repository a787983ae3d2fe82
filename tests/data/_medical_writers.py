"""Writers of medical image files for the tests (SimpleITK), shared by tests/data and
tests/engine / tests/cli (import with ``tests/data`` on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path


def write_dicom_series(img, folder: Path, series_uid: str = "1.2.826.0.1.3680043.2.1125.1") -> Path:
    """Write a 3-D SimpleITK image (int16/uint16 pixels) as a DICOM series, one file per
    slice, with the position and orientation tags a series reader sorts by."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = img.GetDirection()
    orientation = "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        sl.SetMetaData("0008|0060", "CT")
        sl.SetMetaData("0020|000e", series_uid)
        sl.SetMetaData("0020|0037", orientation)
        pos = img.TransformIndexToPhysicalPoint((0, 0, k))
        sl.SetMetaData("0020|0032", "\\".join(str(v) for v in pos))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
    return folder
