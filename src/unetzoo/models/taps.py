"""Forward hooks that collect a model's declared feature taps.

A model declares its tap points once, in its registry entry (``Taps``: dotted module
names of encoder block outputs, decoder block outputs and the final decoder feature).
:class:`FeatureTapper` hooks those modules for the duration of a ``with`` block::

    tapper = FeatureTapper(model)              # taps from the model's registry entry
    with tapper:
        logits = model(x)
    feats = tapper.features                    # {"encoder": [...], "decoder": [...],
                                               #  "final": Tensor, "taps_per_stage": (ke, kd)}

Every collected feature is converted to ``(N, C, H, W)``:

- a module that returns a tuple or list contributes its first tensor element
  (recursively, so ``((x, H, W), extra)`` works);
- a Transformer token sequence ``(N, L, C)`` is reshaped to ``(N, C, H, W)``. The grid
  ``(H, W)`` comes from, in order: the module's own resolution attribute
  (``output_resolution``, ``input_resolution``, ``resolution``, ``patches_resolution``;
  for ``input_resolution`` also its half and double, for patch merging / expanding
  layers), then the aspect ratio of the model input (the grid ``(H_in / s, W_in / s)``
  with ``H * W == L``), then ``H = W = sqrt(L)`` when ``L`` is a square. If none fits,
  a :class:`~unetzoo.errors.ModelError` names the tap.
- channels-last maps ``(N, H, W, C)`` cannot be told apart from ``(N, C, H, W)`` in
  general; a tap whose declared module returns them is reported by the tap test.

**Taps per stage.** The SelfReg reference taps the first *and* the last block of every
stage and averages each of those two groups separately. When a model lists its taps as
``(first, last)`` pairs per stage, the pairing is detected from the names: consecutive
pairs that share a parent module (``layers.0.blocks.0``, ``layers.0.blocks.1``), with a
different parent for every pair. A ``Taps`` object (or subclass) with a ``per_stage``
attribute overrides the detection; so does ``FeatureTapper(..., taps_per_stage=(ke, kd))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from unetzoo.errors import ModelError
from unetzoo.models.registry import Taps, get_entry

_RES_ATTRS = ("output_resolution", "input_resolution", "resolution", "patches_resolution")


def model_name(model: nn.Module) -> str:
    """The registry name stamped by ``create_model``, or the class name."""
    return str(getattr(model, "unetzoo_name", type(model).__name__))


def taps_for_model(model: nn.Module) -> Taps:
    """The ``Taps`` declared in ``model``'s registry entry.

    Raises:
        ModelError: the model was not built by ``create_model`` or its entry declares no
            taps (the message names the model and says how to declare them).
    """
    name = getattr(model, "unetzoo_name", None)
    if name is None:
        raise ModelError(
            f"cannot find feature taps for a {type(model).__name__} that was not built by "
            "unetzoo.create_model; pass taps=Taps(...) to FeatureTapper"
        )
    taps = get_entry(name).taps_for(model)
    if taps is None:
        raise ModelError(
            f"model {name!r} declares no feature taps, so feature distillation cannot "
            "hook it; add taps=Taps(encoder=..., decoder=..., final=...) to its "
            "register_model entry"
        )
    return taps


def _parent(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def infer_taps_per_stage(names: Sequence[str]) -> int:
    """2 when ``names`` are ``(first, last)`` pairs per stage, else 1 (see module doc)."""
    if len(names) < 2 or len(names) % 2:
        return 1
    pairs = [(names[i], names[i + 1]) for i in range(0, len(names), 2)]
    parents = [_parent(a) for a, _ in pairs]
    if any(_parent(b) != p or not p for (_, b), p in zip(pairs, parents)):
        return 1
    return 2 if len(set(parents)) == len(parents) else 1


def resolve_taps_per_stage(taps: Taps) -> tuple[int, int]:
    """``(encoder, decoder)`` taps per stage: a ``per_stage`` attribute, else detection."""
    declared = getattr(taps, "per_stage", None)
    if declared is not None:
        if isinstance(declared, int):
            return int(declared), int(declared)
        ke, kd = declared
        return int(ke), int(kd)
    return infer_taps_per_stage(taps.encoder), infer_taps_per_stage(taps.decoder)


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for item in out:
            t = _first_tensor(item)
            if t is not None:
                return t
    if isinstance(out, dict):
        for item in out.values():
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


def _as_pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        try:
            return int(value[0]), int(value[1])
        except (TypeError, ValueError):
            return None
    return None


def token_grid(
    length: int, module: nn.Module | None = None, input_hw: tuple[int, int] | None = None
) -> tuple[int, int] | None:
    """The ``(H, W)`` grid of ``length`` tokens, or None (rules in the module doc)."""
    if module is not None:
        for attr in _RES_ATTRS:
            res = _as_pair(getattr(module, attr, None))
            if res is None:
                continue
            cands = [res]
            if attr == "input_resolution":
                cands += [(res[0] // 2, res[1] // 2), (res[0] * 2, res[1] * 2)]
            for h, w in cands:
                if h > 0 and w > 0 and h * w == length:
                    return h, w
    if input_hw is not None:
        hin, win = input_hw
        for s in (1, 2, 4, 8, 16, 32, 64):
            if hin % s == 0 and win % s == 0 and (hin // s) * (win // s) == length:
                return hin // s, win // s
    side = math.isqrt(length)
    if side * side == length:
        return side, side
    return None


def to_feature_map(
    out: Any, module: nn.Module | None = None, input_hw: tuple[int, int] | None = None,
    where: str = "tap",
) -> torch.Tensor:
    """Convert a module output to a feature map ``(N, C, H, W)``.

    Args:
        out: the module output: a tensor ``(N, C, H, W)`` or ``(N, L, C)``, or a
            tuple / list / dict whose first tensor is one.
        module: the module that produced it (its resolution attributes place tokens).
        input_hw: ``(H, W)`` of the model input, used to place tokens on a non-square grid.
        where: a name for the error message.
    """
    t = _first_tensor(out)
    if t is None:
        raise ModelError(f"feature tap {where!r} returned no tensor ({type(out).__name__})")
    if t.dim() == 4:
        return t
    if t.dim() == 3:
        n, length, c = t.shape
        grid = token_grid(length, module, input_hw)
        if grid is None:
            raise ModelError(
                f"feature tap {where!r} returned {length} tokens that fit no (H, W) grid; "
                "give the module an input_resolution attribute or tap a 4-D output"
            )
        h, w = grid
        return t.transpose(1, 2).reshape(n, c, h, w)
    raise ModelError(
        f"feature tap {where!r} returned a {t.dim()}-D tensor {tuple(t.shape)}; "
        "taps must output (N, C, H, W) maps or (N, L, C) tokens"
    )


class FeatureTapper:
    """Context manager that collects the outputs of a model's tapped modules.

    Args:
        model: the model to hook.
        taps: the tap points; default: the model's registry entry
            (``get_entry(model.unetzoo_name).taps_for(model)``).
        enabled: when False, ``with tapper:`` registers nothing and ``features`` stays
            empty (``{"encoder": [], "decoder": [], "final": None}``).
        taps_per_stage: ``(encoder, decoder)`` taps per stage; default from ``taps``.

    After a forward inside the ``with`` block, ``tapper.features`` is
    ``{"encoder": [Tensor (N, C_i, H_i, W_i), ...], "decoder": [...], "final": Tensor,
    "taps_per_stage": (ke, kd)}`` in declaration order. Hooks are removed on exit, also
    when the block raises. A module called twice in one forward keeps its last output.

    Raises:
        ModelError: no taps declared, or a declared module name does not exist.
    """

    def __init__(
        self,
        model: nn.Module,
        taps: Taps | None = None,
        enabled: bool = True,
        taps_per_stage: tuple[int, int] | None = None,
    ) -> None:
        self.model = model
        self.enabled = bool(enabled)
        self.features: dict[str, Any] = self._empty()
        self._handles: list[Any] = []
        self._input_hw: tuple[int, int] | None = None
        if not self.enabled:
            self.taps = taps
            self.modules: dict[str, nn.Module] = {}
            self.taps_per_stage = taps_per_stage or (1, 1)
            return
        self.taps = taps if taps is not None else taps_for_model(model)
        self.taps_per_stage = taps_per_stage or resolve_taps_per_stage(self.taps)
        self.modules = {}
        for name in (*self.taps.encoder, *self.taps.decoder, self.taps.final):
            try:
                self.modules[name] = model.get_submodule(name)
            except AttributeError as exc:
                raise ModelError(
                    f"model {model_name(model)!r} declares feature tap {name!r}, but it has "
                    "no such submodule; fix the Taps in its register_model entry"
                ) from exc

    @staticmethod
    def _empty() -> dict[str, Any]:
        return {"encoder": [], "decoder": [], "final": None}

    def __enter__(self) -> FeatureTapper:
        self.remove()
        self.features = self._empty()
        if not self.enabled:
            return self
        self._store: dict[str, torch.Tensor] = {}
        self._handles.append(self.model.register_forward_pre_hook(self._pre_hook))
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._make_hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
        if self.enabled and exc[0] is None:
            self._assemble()

    def remove(self) -> None:
        """Remove every hook this tapper registered (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def _pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        x = _first_tensor(args)
        if x is not None and x.dim() == 4:
            self._input_hw = (int(x.shape[-2]), int(x.shape[-1]))

    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            self._store[name] = to_feature_map(out, module, self._input_hw, where=name)

        return hook

    def _assemble(self) -> None:
        store = getattr(self, "_store", {})
        if not store:  # the with-block ran no forward
            return
        taps = self.taps
        missing = [n for n in (*taps.encoder, *taps.decoder, taps.final) if n not in store]
        if missing:
            raise ModelError(
                f"model {model_name(self.model)!r}: feature tap(s) {', '.join(missing)} "
                "did not run in the forward pass; fix the Taps in its register_model entry"
            )
        self.features = {
            "encoder": [store[n] for n in taps.encoder],
            "decoder": [store[n] for n in taps.decoder],
            "final": store[taps.final],
            "taps_per_stage": tuple(self.taps_per_stage),
        }
        self._store = {}
