"""The registry's DICOM SEG writer (:mod:`unetzoo.data.imageio`): a label map of a
DICOM series as a DICOM Segmentation object, through highdicom.

One segment per foreground class, numbered as the classes (``class_names[k]`` is
segment ``k``), labelled with the checkpoint's class names (dataset.json's labels);
every frame references its source image of the series (the same patient, study and
frame of reference). The SEG is BINARY (one bit per pixel per segment), the type
every SEG viewer reads (OHIF, 3D Slicer, highdicom); empty frames are kept so that
each segment has one frame per source slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unetzoo.errors import DataError


def _highdicom():
    try:
        import highdicom
    except ImportError:  # an optional extra
        raise DataError("DICOM SEG output needs highdicom: pip install 'unetzoo[dicom]'") from None
    return highdicom


def _descriptions(hd, class_names: Sequence[str]) -> list:
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="unetzoo", version=_version(), family=codes.cid7162.ArtificialIntelligence)
    return [
        hd.seg.SegmentDescription(
            segment_number=k, segment_label=str(name)[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm)
        for k, name in enumerate(class_names) if k > 0
    ]


class DicomSegIO:
    """Writer only: ``write_seg(labels, source_files, class_names, path)``."""

    endings = (".seg.dcm",)
    what = "DICOM SEG"

    @staticmethod
    def write_seg(labels: np.ndarray, source_files: Sequence[str | Path],
                  class_names: Sequence[str], path: Path) -> None:
        """``labels`` in file order ``(i, j[, k])`` of the series whose slice ``k`` is
        ``source_files[k]`` (:meth:`~unetzoo.data.imageio.volumes.DicomIO.series_files`)."""
        import pydicom

        hd = _highdicom()
        arr = labels if labels.ndim == 3 else labels[:, :, None]
        if arr.shape[2] != len(source_files):
            raise DataError(f"{path}: {arr.shape[2]} label slices for {len(source_files)} "
                            "source images; a DICOM SEG needs the label map of that series")
        if arr.size and int(arr.max()) >= len(class_names):
            raise DataError(f"{path}: label {int(arr.max())} has no class name "
                            f"({len(class_names)} classes)")
        sources = [pydicom.dcmread(str(f)) for f in source_files]
        frames = np.ascontiguousarray(np.transpose(arr, (2, 1, 0)))  # (k, rows=j, cols=i)
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=frames.astype(np.uint16 if len(class_names) > 256 else np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_descriptions(hd, class_names),
            series_instance_uid=hd.UID(), series_number=900,
            sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="unetzoo", manufacturer_model_name="unetzoo",
            software_versions=_version(), device_serial_number="0",
            series_description="unetzoo segmentation", omit_empty_frames=False,
        )
        seg.save_as(str(path))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("unetzoo")
    except PackageNotFoundError:  # a source tree on PYTHONPATH
        return "unknown"
