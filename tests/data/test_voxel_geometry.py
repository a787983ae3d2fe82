"""unetzoo.data.geometry: the slicing rule and its inverse, on arrays and affines only."""

from __future__ import annotations

import numpy as np
import pytest

from unetzoo.data import geometry
from unetzoo.errors import DataError


def _affine(zooms: tuple[float, float, float]) -> np.ndarray:
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # an oblique rotation
    aff = np.eye(4)
    aff[:3, :3] = q @ np.diag(zooms)
    aff[:3, 3] = (10.0, -20.0, 30.0)
    return aff


def _world(aff: np.ndarray, index: tuple[int, ...]) -> np.ndarray:
    return aff[:3, :3] @ np.asarray(index, dtype=float) + aff[:3, 3]


@pytest.mark.parametrize("zooms, slicing", [((1.0, 1.0, 3.0), 2), ((0.7, 4.0, 0.7), 1),
                                            ((5.0, 1.0, 1.0), 0), ((1.0, 1.0, 1.0), 2)])
def test_volume_to_cdhw_and_array_to_file_round_trip(zooms, slicing):
    shape = (5, 6, 7)
    vol = np.arange(np.prod(shape)).reshape(shape)
    aff = _affine(zooms)
    cdhw, axes, spacing = geometry.volume_to_cdhw(vol, aff, zooms)
    assert axes[0] == slicing and spacing[0] == zooms[slicing] and cdhw.shape[0] == 1
    # The (d, h, w) affine puts every voxel where the file affine puts it.
    arr_aff = geometry.file_to_array_affine(aff, axes)
    d, h, w = 3, 1, 4
    file_index = [0, 0, 0]
    for pos, file_axis in zip((d, h, w), axes):
        file_index[file_axis] = pos
    assert cdhw[0, d, h, w] == vol[tuple(file_index)]
    np.testing.assert_allclose(_world(arr_aff, (d, h, w)), _world(aff, tuple(file_index)))
    back, back_aff = geometry.array_to_file(cdhw[0], arr_aff, axes)
    np.testing.assert_array_equal(back, vol)
    np.testing.assert_allclose(back_aff, aff)


def test_reorient_affine_is_file_to_array_affine():
    aff, zooms = _affine((1.0, 2.0, 3.0)), (1.0, 2.0, 3.0)
    vol = np.zeros((4, 5, 6, 2))  # trailing channel axis kept last
    out, out_aff, spacing, order = geometry.reorient(vol, aff, zooms, None)
    assert order == (2, 1, 0) and out.shape == (6, 5, 4, 2) and spacing == (3.0, 2.0, 1.0)
    np.testing.assert_array_equal(out_aff, geometry.file_to_array_affine(aff, order))
    assert geometry.file_to_array_affine(None, order) is None
    assert geometry.reorient(vol, aff, zooms, 0)[3] == (0, 2, 1)


def test_check_same_geometry_tolerance_and_message(tmp_path):
    aff = _affine((1.0, 1.0, 2.0))
    geometry.check_same_geometry(aff, aff + 5e-4, tmp_path / "b.nii.gz", tmp_path / "a.nii.gz")
    with pytest.raises(DataError) as err:
        geometry.check_same_geometry(aff, aff + 2e-3, tmp_path / "b.nii.gz", "a.nii.gz",
                                     "the channels must be co-registered")
    text = str(err.value)
    assert "\n" not in text and "b.nii.gz" in text and "a.nii.gz" in text
    assert text.endswith("the channels must be co-registered")
