"""engine.predict.predict_files with an .onnx file is the one prediction path: it refuses a
user's file."""

from __future__ import annotations

import pytest

from unetzoo.errors import ConfigError

USER_BYTES = b"the user's own segmentation"


def test_onnx_predict_files_keeps_a_user_file_unless_overwrite(dynamic_onnx, phantom_files,
                                                               tmp_path):
    from unetzoo.engine.predict import predict_files

    out = tmp_path / "out"
    out.mkdir()
    target = out / "phantom_case.nii.gz"
    target.write_bytes(USER_BYTES)
    with pytest.raises(ConfigError, match="phantom_case.nii.gz exists"):
        predict_files([phantom_files["nii"]], dynamic_onnx, out, overlays=0, verbose=False)
    assert target.read_bytes() == USER_BYTES
    recs = predict_files([phantom_files["nii"]], dynamic_onnx, out, overlays=0,
                         verbose=False, overwrite=True)
    assert [r["case"] for r in recs] == ["phantom_case"]
    assert target.read_bytes() != USER_BYTES
    # A second run replaces its own file without the flag.
    predict_files([phantom_files["nii"]], dynamic_onnx, out, overlays=0, verbose=False)
