"""The inference spec: everything besides the weights that prediction needs, in one form.

Training builds it (:meth:`InferenceSpec.for_model`), the checkpoint stores it (its
``spec`` field, :class:`unetzoo.engine.checkpoint.Checkpoint`, as :meth:`to_dict` writes
it), ``unetzoo export`` embeds it in the ONNX file's metadata, and the one loader
(:func:`unetzoo.engine.predict.load_predictor`) reads it back from a ``.pt`` or an
``.onnx``.

The spec is plain data (strings, numbers, lists, dicts), so a checkpoint is read with
``torch.load(weights_only=True)`` and an ONNX file's metadata with ``json.loads``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from unetzoo.data.plan import SlicePlan
from unetzoo.errors import CheckpointError, DataError

#: Largest ``img_size`` a spec may name (the zoo trains at 224-512).
MAX_IMG_SIZE = 4096
MAX_IN_CHANNELS = 64

#: How a volume is cut into slices (:func:`unetzoo.data.geometry.volume_to_cdhw`).
SLICING_THROUGH_PLANE = "through-plane"
#: How slices are resized (:mod:`unetzoo.engine.inference`): TransUNet's protocol.
RESIZE_CUBIC_NEAREST = "cubic-in-nearest-out"
SLICING_RULES = (SLICING_THROUGH_PLANE,)
#: An input whose in-plane voxel size differs from the training median by more than this
#: factor (either way) is predicted with a one-line warning: the model sees its
#: structures at a scale it was not trained on.
SPACING_WARN_RATIO = 2.0
#: A planned model (:mod:`unetzoo.data.plan`): slices resampled to the plan's spacing.
RESIZE_PLANNED = "resample-to-plan"
RESIZE_RULES = (RESIZE_CUBIC_NEAREST, RESIZE_PLANNED)

#: The contract in words, stored beside the spec in exported files so that a deployer
#: holding only the file can reproduce ``unetzoo predict`` (docs/deploy.md does).
PROTOCOL_TEXT: dict[str, str] = {
    "slicing": (
        "A volume of file shape (i, j, k) is cut along one axis a: the first axis of size 1 "
        "if any, else the axis with the largest voxel spacing (ties: the later axis). The "
        "slices are taken as array.transpose(a, r1, r0) with (r0, r1) the other two axes in "
        "file order, i.e. (z, y, x) order: D = a, H = r1, W = r0; labels are transposed back. "
        "When 'orientation' is set (axcodes of the training (D, H, W) arrays in RAS+, e.g. "
        "'SAR'), the (D, H, W) array is then permuted and flipped so that its axcodes, read "
        "from the affine (nibabel.orientations.io_orientation), equal it, before "
        "normalisation; the labels are permuted and flipped back onto the input's grid."
    ),
    "resize": (
        "Each (H, W) slice is resized to (img_size, img_size) with "
        "scipy.ndimage.zoom(slice, (img_size / H, img_size / W), order=3) (cubic spline, "
        "mode 'constant', grid_mode False: the first and last pixel centres stay aligned); "
        "the label map (argmax over classes) is resized back with zoom(order=0) (nearest)."
    ),
    "normalisation": (
        "'preprocessing' is applied to the whole (C, D, H, W) volume before slicing: none; "
        "ct: clip to window [lo, hi] and (x - lo) / (hi - lo); range: (x - low) / (high - "
        "low); zscore: (x - mean) / max(std, 1e-8) over the volume (nonzero: over voxels != 0, "
        "zeros stay 0); percentile: clip to the lower/upper percentiles and scale to [0, 1]; "
        "channels: one spec per input channel."
    ),
    "spacing": (
        "'spacing' is the median (sz, sy, sx) voxel size in mm of the training cases (null "
        "when the training data had none). Without a plan inputs are not resampled to it: each "
        "slice is resized to img_size as in training; unetzoo predict warns when an input's in-plane "
        f"voxel size is more than {SPACING_WARN_RATIO:g}x off."
    ),
    "plan": (
        "With resize 'resample-to-plan', 'plan' holds target_spacing [sy, sx] (mm) and "
        "patch_size [h, w]: each (H, W) slice at in-plane spacing (sy0, sx0) is resized to "
        "(round(H * sy0 / sy), round(W * sx0 / sx)) with zoom(order=3) (no spacing: kept), "
        "zero-padded bottom/right to the patch (larger slices: Gaussian-weighted windows of "
        "the patch, half overlap), the softmax probabilities cropped and resized back to "
        "(H, W) with zoom(order=1), then argmax."
    ),
    "output": (
        "The model maps float32 (N, C, H, W) to logits (N, K, H, W); label = argmax over K of "
        "the float32 softmax, ties to the lower class (K = 1: a sigmoid head, probabilities "
        "[1 - p, p]). Class k is class_names[k]."
    ),
}


def _fail(where: str, text: str) -> CheckpointError:
    return CheckpointError(f"{where}: {text}")


def _whole(value: Any, key: str, lo: int, hi: int, where: str) -> int:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi
    if not (ok and float(value).is_integer()):  # the range check also rules out NaN
        raise _fail(where, f"{key} is {value!r}, expected a whole number in {lo}..{hi}; the "
                           "file is damaged or was not written by unetzoo")
    return int(value)


def _mm(values: Any) -> str:
    return " x ".join(f"{float(v):.3g}" for v in values)


def _plain(value: Any) -> Any:
    """JSON-able copy (tuples -> lists, enums -> str) so the spec survives weights_only."""
    return json.loads(json.dumps(value, default=str))


def _input_fields(data: Mapping[str, Any], where: str) -> tuple[str | None, dict | None]:
    """``orientation`` and ``intensity`` of a spec, checked (either may be None)."""
    from unetzoo.data.geometry import check_orientation_codes
    from unetzoo.data.preprocessing import check_fingerprint

    orientation = data.get("orientation")
    if orientation is not None and check_orientation_codes(orientation) is None:
        raise _fail(where, f"orientation {orientation!r} is not three axis codes naming each "
                           "world axis once (e.g. 'SAR'); the file is damaged")
    intensity = data.get("intensity")
    if intensity is not None:
        try:
            intensity = check_fingerprint(intensity)
        except DataError as exc:
            raise _fail(where, f"{exc}; the file is damaged") from None
    return orientation, intensity


@dataclass(frozen=True)
class InferenceSpec:
    """What a model needs at inference time besides its weights.

    Attributes:
        model: registry name of the architecture.
        options: its constructor options (JSON values; ``deep_supervision`` off).
            ``encoder_weights`` is kept as trained (provenance for reports); rebuilding
            ignores it (:func:`unetzoo.engine.checkpoint.offline_options`): the trained
            weights replace any pretrained encoder, so no weight file is read.
        class_names: one name per output class, background first.
        in_channels: input channels.
        img_size: the square slice size the model was trained on.
        preprocessing: the intensity spec of :mod:`unetzoo.data.preprocessing`.
        dataset: the training dataset's name (informative).
        spacing: median voxel spacing ``(sz, sy, sx)`` (mm) of the training cases, None
            when the training data has none (Synapse h5/npz, picture folders).
        slicing: the slicing-axis rule (:data:`SLICING_RULES`).
        resize: the resize protocol (:data:`RESIZE_RULES`).
        orientation: axcodes of the training ``(D, H, W)`` arrays (``"SAR"``: axial
            slices, rows toward A, columns toward R), from the training cases' affines;
            volumes are reoriented to it before slicing and the labels mapped back
            (:func:`unetzoo.data.geometry.reorientation`). None (data
            without affines): the file's own slicing rule.
        intensity: the training data's raw intensity fingerprint (modality, per-channel
            percentiles, mean, sd: :func:`unetzoo.data.preprocessing.intensity_fingerprint`)
            that inputs are checked against; None: no check.
        plan: a planned model's :class:`~unetzoo.data.plan.SlicePlan` (target spacing,
            patch size; ``resize`` is then :data:`RESIZE_PLANNED`); None: the TransUNet
            resize to ``img_size``.
    """

    model: str
    class_names: tuple[str, ...]
    in_channels: int
    img_size: int
    preprocessing: Mapping[str, Any] = field(default_factory=lambda: {"kind": "none"})
    options: Mapping[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    spacing: tuple[float, ...] | None = None
    slicing: str = SLICING_THROUGH_PLANE
    resize: str = RESIZE_CUBIC_NEAREST
    orientation: str | None = None
    intensity: Mapping[str, Any] | None = None
    plan: SlicePlan | None = None

    @property
    def num_classes(self) -> int:
        """Classes including background, ``len(class_names)`` (not the model's outputs)."""
        return len(self.class_names)

    # ------------------------------------------------------------------ builders
    @classmethod
    def for_model(
        cls,
        model: Any,
        *,
        class_names: list[str] | tuple[str, ...],
        in_channels: int,
        img_size: int,
        preprocessing: Mapping[str, Any] | None = None,
        dataset: str | None = None,
        spacing: tuple[float, ...] | None = None,
        orientation: str | None = None,
        intensity: Mapping[str, Any] | None = None,
        plan: SlicePlan | None = None,
    ) -> InferenceSpec:
        """The spec of a model built by the registry (``unetzoo_name`` /
        ``unetzoo_options``), as training records it. Deep supervision only shapes
        training: it is recorded off, so inference rebuilds the plain model."""
        options = dict(getattr(model, "unetzoo_options", {}) or {})
        if "deep_supervision" in options:
            options["deep_supervision"] = False
        return cls.from_dict({
            "model": {"name": getattr(model, "unetzoo_name", None) or type(model).__name__,
                      "options": options},
            "class_names": list(class_names), "in_channels": in_channels,
            "img_size": img_size, "preprocessing": dict(preprocessing or {"kind": "none"}),
            "dataset": dataset, "spacing": spacing, "orientation": orientation,
            "intensity": None if intensity is None else dict(intensity),
            **({"plan": plan.to_dict(), "resize": RESIZE_PLANNED} if plan else {}),
        }, "training")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "model metadata") -> InferenceSpec:
        """Read and check a spec (:meth:`to_dict` output, or an ONNX file's metadata, which
        holds the same keys); ``where`` names the source in errors.

        Raises:
            CheckpointError: one line when a value cannot be right (``img_size`` outside
                8..4096, no class names, an intensity spec that cannot be applied, an
                unknown slicing or resize rule).
        """
        from unetzoo.data.preprocessing import check_spec

        where = str(where)
        if not isinstance(data, Mapping):
            raise _fail(where, "holds no inference spec (a dict of model, class_names, ...)")
        model = data.get("model")
        name = model.get("name") if isinstance(model, Mapping) else None
        if not isinstance(name, str) or not name:
            raise _fail(where, "has no model name ('model': {'name', 'options'}); use a file "
                               "written by `unetzoo train` or `unetzoo export`")
        options = model.get("options") or {}
        if not isinstance(options, Mapping):
            raise _fail(where, f"model options must be a mapping, got {options!r}")
        names = data.get("class_names")
        if (not isinstance(names, (list, tuple)) or not names
                or not all(isinstance(n, str) for n in names)):
            raise _fail(where, f"class_names must be a non-empty list of names, got {names!r}")
        # A missing key is a hand-built spec (already normalised inputs); a stored null
        # is a damaged or hand-edited file: "no normalisation" would feed raw HU to a
        # CT-window model without a word.
        prep = data.get("preprocessing", {"kind": "none"})
        if prep is None:
            raise _fail(where, "preprocessing is null; the file is damaged or was edited (a "
                               "model of already normalised inputs stores {'kind': 'none'})")
        try:
            check_spec(prep)
        except DataError as exc:
            raise _fail(where, f"{exc}; the file is damaged") from None
        spacing = data.get("spacing")
        if spacing is not None:
            ok = isinstance(spacing, (list, tuple)) and all(
                isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s)
                and s > 0 for s in spacing)
            if not ok:
                raise _fail(where, f"spacing must be positive numbers, got {spacing!r}")
            spacing = tuple(float(s) for s in spacing)
        slicing = data.get("slicing") or SLICING_THROUGH_PLANE
        resize = data.get("resize") or RESIZE_CUBIC_NEAREST
        for key, value, known in (("slicing", slicing, SLICING_RULES),
                                  ("resize", resize, RESIZE_RULES)):
            if value not in known:
                raise _fail(where, f"{key} rule {value!r} is not one this unetzoo knows "
                                   f"({', '.join(known)}); upgrade unetzoo")
        plan = data.get("plan")
        if (plan is None) != (resize != RESIZE_PLANNED):
            raise _fail(where, f"resize rule {resize!r} and plan {plan!r} do not go together; "
                               "the file is damaged")
        if plan is not None:
            try:
                plan = SlicePlan.from_dict(plan, "plan")
            except DataError as exc:
                raise _fail(where, f"{exc}; the file is damaged") from None
        dataset = data.get("dataset")
        orientation, intensity = _input_fields(data, where)
        return cls(
            model=name, options=_plain(dict(options)), class_names=tuple(names),
            in_channels=_whole(data.get("in_channels"), "in_channels", 1, MAX_IN_CHANNELS, where),
            img_size=_whole(data.get("img_size"), "img_size", 8, MAX_IMG_SIZE, where),
            preprocessing=_plain(dict(prep)), dataset=None if dataset is None else str(dataset),
            spacing=spacing, slicing=slicing, resize=resize,
            orientation=orientation, intensity=intensity, plan=plan,
        )

    # ------------------------------------------------------------------ writers
    def to_dict(self) -> dict[str, Any]:
        """Plain values, keyed as a checkpoint stores them (``model`` = name + options)."""
        return {
            "model": {"name": self.model, "options": _plain(dict(self.options))},
            "class_names": list(self.class_names),
            "in_channels": self.in_channels,
            "img_size": self.img_size,
            "preprocessing": _plain(dict(self.preprocessing)),
            "dataset": self.dataset,
            "spacing": None if self.spacing is None else list(self.spacing),
            "slicing": self.slicing,
            "resize": self.resize,
            "orientation": self.orientation,
            "intensity": None if self.intensity is None else _plain(dict(self.intensity)),
            **({"plan": self.plan.to_dict()} if self.plan is not None else {}),
        }

    def spacing_warning(self, spacing: tuple[float, ...] | None, where: str) -> str | None:
        """One warning line when the in-plane voxel size ``(sy, sx)`` of ``spacing`` (an
        input's ``(sz, sy, sx)`` mm) differs from the training median by more than
        :data:`SPACING_WARN_RATIO` either way; None when close, or when either is unknown.
        Prediction does not resample (the slices are resized to ``img_size`` as in
        training), so this is a warning, never a refusal."""
        if self.plan is not None or self.spacing is None or spacing is None or len(spacing) < 2:
            return None  # a planned model resamples its inputs to the training spacing
        for have, trained in zip(spacing[-2:], self.spacing[-2:]):
            ratio = float(have) / trained if have > 0 else math.inf
            if not 1 / SPACING_WARN_RATIO <= ratio <= SPACING_WARN_RATIO:
                return (
                    f"warning: {where}: in-plane voxel size {_mm(spacing[-2:])} mm differs from "
                    f"the training median {_mm(self.spacing[-2:])} mm by more than "
                    f"{SPACING_WARN_RATIO:g}x; the prediction may be poor (resample the input "
                    "to the training spacing)"
                )
        return None
