"""The model registry: the one place the CLI, tests and benchmarks find models.

A model family module registers configurations of its class; the class is the builder
(its ``__init__`` signature gives the options, their types and defaults)::

    register_model("unet", UNet, description="...", source="Ronneberger et al. 2015",
                   taps=Taps(encoder=("enc1", ...), decoder=("dec1", ...), final="dec4"))
    register_model("resunet_v0_3", ResUnet, defaults={"stem_maxpool": False}, ...)

``create_model(name, in_channels=1, num_classes=2, **options)`` merges, in order, the
class's own keyword defaults, the entry's ``defaults`` (registry data) and the caller's
options.

Family discovery lives in ``unetzoo.models`` (the package imports every family module,
and Python runs it before any of its submodules can be used), so this module imports no
family and nothing of the package: imports flow families -> registry, never back.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from unetzoo.errors import ModelError, UnetzooError


@dataclass(frozen=True)
class Taps:
    """Feature tap points of a model, as dotted module names (``model.get_submodule``).

    ``encoder`` and ``decoder`` list block outputs from shallow to deep (encoder) and
    deep to shallow (decoder); ``final`` is the last decoder feature (before the head),
    the teacher of feature distillation. Forward hooks collect their outputs.
    """

    encoder: tuple[str, ...]
    decoder: tuple[str, ...]
    final: str


TapsSpec = Taps | Callable[[nn.Module], Taps]


@dataclass(frozen=True)
class PublishedParams:
    """A parameter count published for one configuration, checked by a test."""

    count: int
    config: dict[str, Any]
    source: str


@dataclass(frozen=True)
class PretrainedSource:
    """Where the weights an ``encoder_weights`` value names come from (registry data, as
    timm's pretrained cfgs). ``encoder_weights=tag`` reads ``$TORCH_HOME/hub/checkpoints/
    <filename>`` (downloaded there from ``url`` when absent), checks its hash and loads it
    without unpickling (:func:`unetzoo.models.weights_maps.pretrained_file`); any other
    string is a local file the user passes.
    """

    tag: str  # the ``encoder_weights`` value that names this file (``"imagenet"``)
    url: str
    filename: str
    hash_prefix: str | None = None  # torchvision-style: the file's sha256 starts with it
    sha256: str | None = None  # the full SHA-256 where it is known (preferred to the prefix)
    #: The official training script always starts from this file (``--recipe`` and
    #: ``--paper-protocol`` then refuse a random encoder unless asked for one).
    paper_default: bool = False
    note: str = ""


@dataclass(frozen=True)
class ModelEntry:
    """One registered model: a builder plus metadata."""

    name: str
    builder: Callable[..., nn.Module]
    description: str
    source: str
    family: str
    defaults: dict[str, Any] = field(default_factory=dict)
    taps: TapsSpec | None = None
    aliases: tuple[str, ...] = ()
    published: tuple[PublishedParams, ...] = ()
    pretrained: tuple[PretrainedSource, ...] = ()

    def default_options(self) -> dict[str, Any]:
        """Builder keyword defaults overridden by the entry's defaults."""
        options: dict[str, Any] = {}
        for p in inspect.signature(self.builder).parameters.values():
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.default is p.empty:
                continue
            options[p.name] = p.default
        options.update(self.defaults)
        return options

    def accepted_options(self) -> set[str] | None:
        """Option names the builder accepts, or None if it takes ``**kwargs``."""
        params = inspect.signature(self.builder).parameters.values()
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        return {p.name for p in params if p.kind is not p.VAR_POSITIONAL}

    def paper_weights(self) -> PretrainedSource | None:
        """The pretrained file the official training script always loads, if any."""
        return next((s for s in self.pretrained if s.paper_default), None)

    def taps_for(self, model: nn.Module) -> Taps | None:
        if self.taps is None or isinstance(self.taps, Taps):
            return self.taps
        return self.taps(model)


_REGISTRY: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}


def register_model(
    name: str,
    builder: Callable[..., nn.Module] | None = None,
    *,
    description: str,
    source: str,
    defaults: dict[str, Any] | None = None,
    taps: TapsSpec | None = None,
    aliases: tuple[str, ...] = (),
    published: tuple[PublishedParams, ...] = (),
    family: str | None = None,
    pretrained: tuple[PretrainedSource, ...] = (),
) -> Any:
    """Register the model class ``builder`` under ``name``; a decorator when it is None.

    Only ``nn.Module`` classes are accepted: a builder function would re-type the class's
    signature (the options, their types and defaults), and the copies drift apart.
    """

    def _register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not (inspect.isclass(fn) and issubclass(fn, nn.Module)):
            raise TypeError(
                f"register_model({name!r}): register the model class itself, not {fn!r}; "
                "put option defaults in `defaults=`"
            )
        key = name.lower()
        if key in _REGISTRY or key in _ALIASES:
            raise RuntimeError(f"model name {name!r} is registered twice")
        fam = family or getattr(fn, "__module__", "").rsplit(".", 1)[-1]
        _REGISTRY[key] = ModelEntry(
            name=key,
            builder=fn,
            description=description,
            source=source,
            family=fam,
            defaults=dict(defaults or {}),
            taps=taps,
            aliases=tuple(a.lower() for a in aliases),
            published=tuple(published),
            pretrained=tuple(pretrained),
        )
        for alias in aliases:
            if alias.lower() in _REGISTRY or alias.lower() in _ALIASES:
                raise RuntimeError(f"model alias {alias!r} is registered twice")
            _ALIASES[alias.lower()] = key
        return fn

    if builder is not None:
        _register(builder)
        return builder
    return _register


def _closest(name: str) -> list[str]:
    names = sorted(set(_REGISTRY) | set(_ALIASES))
    return difflib.get_close_matches(name.lower(), names, n=3, cutoff=0.5)


def get_entry(name: str) -> ModelEntry:
    """Return the registry entry for ``name`` (or an alias); one-line error if unknown."""
    if not isinstance(name, str):
        raise ModelError(f"model name must be a string, got {type(name).__name__}")
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        close = _closest(name)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(
            f"unknown model {name!r}{hint} (`unetzoo list-models` shows all names)"
        )
    return _REGISTRY[key]


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names (aliases excluded), sorted; ``pattern`` takes wildcards."""
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern.lower())]
    return names


# ------------------------------------------------------------------ option types
# Builders annotate their options (``int``, ``bool | None``, ``tuple[int, ...]``); the
# annotation is the contract. Without a check ``base_channels=2.5`` silently built 2 and
# stored 2.5, and ``num_classes=2.7`` built two outputs.


def _split_union(annotation: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in annotation:
        if ch == "|" and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        depth += ch == "["
        depth -= ch == "]"
        cur += ch
    parts.append(cur.strip())
    return [p.removeprefix("Optional[").removesuffix("]") if p.startswith("Optional[") else p
            for p in parts]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def _coerce_one(value: Any, kind: str) -> Any:
    """``value`` as ``kind`` or raise ``TypeError`` saying what was expected."""
    if kind == "bool":
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise TypeError("true or false")
    if kind == "int":
        if _is_number(value) and isinstance(value, (int, np.integer)):
            return int(value)
        if _is_number(value) and math.isfinite(value) and float(value).is_integer():
            return int(value)
        raise TypeError("a whole number")
    if kind == "float":
        # An int is a valid float (PEP 484's numeric tower): keep it, as the builder
        # defaults do (EMCAD's mlp_ratios are ints).
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            return int(value)
        if _is_number(value) and math.isfinite(value):
            return float(value)
        raise TypeError("a finite number")
    if kind == "str":
        if isinstance(value, str):
            return value
        raise TypeError("a string")
    if kind.startswith("Sequence[") and kind.endswith("]"):
        kind = f"tuple[{kind[len('Sequence['):-1]}, ...]"
    if kind.startswith("tuple[") and kind.endswith("]"):
        inner = [t.strip() for t in kind[len("tuple["):-1].split(",")]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"a list of {inner[0]}")
        if len(inner) == 2 and inner[1] == "...":
            kinds = [inner[0]] * len(value)
        elif len(inner) != len(value):
            raise TypeError(f"a list of {len(inner)} values")
        else:
            kinds = inner
        # Always a tuple: classes registered directly receive what YAML/JSON gave (lists).
        return tuple(_coerce(v, k) for v, k in zip(value, kinds))
    return value  # an annotation this check does not model (a class, Any): pass through


def _coerce(value: Any, annotation: str) -> Any:
    kinds = _split_union(annotation)
    if value is None:
        if "None" in kinds or "Any" in kinds:
            return None
        raise TypeError(" or ".join(k for k in kinds if k != "None"))
    wanted = []
    for kind in kinds:
        if kind == "None":
            continue
        try:
            return _coerce_one(value, kind)
        except TypeError as exc:
            wanted.append(str(exc))
    raise TypeError(" or ".join(wanted) + (" or null" if "None" in kinds else ""))


def _annotation(param: inspect.Parameter) -> str | None:
    ann = param.annotation
    if ann is param.empty:
        default = param.default
        if isinstance(default, bool):
            return "bool"
        if isinstance(default, int):
            return "int"
        return None
    return ann if isinstance(ann, str) else inspect.formatannotation(ann)


#: Spellings of "no pretrained weights" accepted for ``encoder_weights`` (CLI, YAML, JSON).
_NO_WEIGHTS = frozenset({"none", "null"})


def check_option_types(entry: ModelEntry, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with each value checked against the builder's annotation.

    Ints stay ints (``2.0`` becomes ``2``); a float with a fractional part, a bool where
    a number is expected, a number where a bool is expected, or a non-finite number is
    one :class:`ModelError` naming the option.
    """
    params = inspect.signature(entry.builder).parameters
    out = dict(options)
    for key, value in options.items():
        if key == "encoder_weights" and isinstance(value, str) and value.lower() in _NO_WEIGHTS:
            # None cannot be typed on the command line: `encoder_weights=none` is random init.
            out[key] = value = None
        param = params.get(key)
        ann = None if param is None else _annotation(param)
        if ann is None:
            continue
        try:
            out[key] = _coerce(value, ann)
        except TypeError as exc:
            raise ModelError(
                f"model {entry.name!r} option {key}={value!r} is not valid: expected {exc}"
            ) from None
    return out


def resolve_options(name: str, **options: Any) -> dict[str, Any]:
    """The full option set ``create_model(name, **options)`` would build with (types
    checked, see :func:`check_option_types`)."""
    entry = get_entry(name)
    accepted = entry.accepted_options()
    if accepted is not None:
        unknown = sorted(set(options) - accepted)
        if unknown:
            valid = ", ".join(sorted(accepted))
            raise ModelError(
                f"model {entry.name!r} has no option {', '.join(map(repr, unknown))}; "
                f"valid options: {valid}"
            )
    merged = entry.default_options()
    merged.update(options)
    return check_option_types(entry, merged)


def create_model(
    name: str, in_channels: int = 1, num_classes: int = 2, **options: Any
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models` (or an alias), case-insensitive.
        in_channels: input channels ``C`` of ``(N, C, H, W)``.
        num_classes: output channels of the logits ``(N, num_classes, H, W)``.
        **options: architecture options of that model (see ``get_entry(name)``).
    """
    for value in (in_channels, num_classes):
        try:
            ok = _coerce(value, "int") >= 1
        except TypeError:
            ok = False
        if not ok:
            raise ModelError(
                "in_channels and num_classes must be whole numbers >= 1, got "
                f"{in_channels!r} and {num_classes!r}"
            )
    entry = get_entry(name)
    merged = resolve_options(
        entry.name, in_channels=int(in_channels), num_classes=int(num_classes), **options
    )
    try:
        model = entry.builder(**merged)
    except UnetzooError:  # already one clear line (e.g. CheckpointError for weights)
        raise
    except (TypeError, ValueError) as exc:
        raise ModelError(f"cannot build {entry.name!r} with {options}: {exc}") from exc
    except (MemoryError, RuntimeError) as exc:
        # Absurd widths: the allocator gives up. Say so, with the size it would have had.
        text = str(exc).lower()
        if not isinstance(exc, MemoryError) and "alloc" not in text and "overflow" not in text:
            raise
        raise ModelError(
            f"cannot build {entry.name!r} with {options}: its weights do not fit in memory "
            f"({_size_hint(entry.name, merged)}); use smaller widths"
        ) from None
    model.unetzoo_name = entry.name  # type: ignore[assignment]
    model.unetzoo_options = merged  # type: ignore[assignment]
    return model


def _size_hint(name: str, merged: dict[str, Any]) -> str:
    try:
        n = parameter_count(name, **merged)
    except Exception:  # noqa: BLE001 - only a hint for the message
        return "size unknown"
    return f"{n:,} parameters, {n * 4 / 2**30:.1f} GiB in float32"


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def parameter_count(name: str, in_channels: int = 1, num_classes: int = 2, **options: Any) -> int:
    """Parameter count of a configuration, built on the meta device (no memory, fast)."""
    with torch.device("meta"):
        model = create_model(name, in_channels=in_channels, num_classes=num_classes, **options)
    return count_parameters(model)
