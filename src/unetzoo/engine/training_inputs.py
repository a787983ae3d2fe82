"""What the inference spec records about the training inputs, so prediction can match
them: the orientation of the training arrays and the intensity fingerprint.

Readers opt in with two hooks: ``ds.case_affine(case_id, split)`` (the ``(d, h, w)``
affine of a case without reading its voxels; the nnU-Net reader's slice cache) and
``ds.raw_image(case_id, split)`` (a case's ``(C, ...)`` intensities before
normalisation: raw for volumes, the normalised pixels for 2-D picture folders, whose raw
scale is their bit depth). A reader without them records nothing, and its checkpoints
behave as before (the file's own slicing rule, no input check).
"""

from __future__ import annotations

import sys
from collections import Counter

from unetzoo.data.geometry import orientation_codes
from unetzoo.data.preprocessing import intensity_fingerprint

#: Training cases whose intensities make the fingerprint (spread over the list).
FINGERPRINT_CASES = 5


def training_orientation(ds, cases: list[str], split: str = "train") -> str | None:
    """The axcodes (``"SAR"``, ...) of the training ``(D, H, W)`` arrays: the most common
    over ``cases`` (one line on stderr when they differ); None when the reader has no
    ``case_affine`` or an affine is unknown."""
    affine_of = getattr(ds, "case_affine", None)
    if affine_of is None or not cases:
        return None
    codes = [orientation_codes(affine_of(cid, split)) for cid in cases]
    if any(c is None for c in codes):
        return None
    counts = Counter(codes).most_common()
    if len(counts) > 1:
        print(f"note: the training cases come in {len(counts)} orientations "
              f"({', '.join(f'{c}: {n}' for c, n in counts)}); inputs are sliced as {counts[0][0]}",
              file=sys.stderr, flush=True)
    return counts[0][0]


def training_intensity(ds, cases: list[str], split: str = "train") -> dict | None:
    """The intensity fingerprint (:func:`unetzoo.data.preprocessing.intensity_fingerprint`)
    of up to :data:`FINGERPRINT_CASES` training cases; None without ``ds.raw_image``."""
    raw = getattr(ds, "raw_image", None)
    if raw is None or not cases:
        return None
    picks = cases[:: max(1, len(cases) // FINGERPRINT_CASES)][:FINGERPRINT_CASES]
    space = "normalised" if getattr(ds, "spatial_dims", 3) == 2 else "raw"
    return intensity_fingerprint([raw(cid, split) for cid in picks],
                                 getattr(ds, "modality", None), space)
