"""The model registry: the one place the CLI, tests and benchmarks find models.

A model family module registers thin configurations over one class::

    @register_model("unet", description="...", source="Ronneberger et al. 2015",
                    taps=Taps(encoder=("enc1", ...), decoder=("dec1", ...), final="dec4"))
    def unet(in_channels: int = 1, num_classes: int = 2, **options) -> UNet:
        return UNet(in_channels, num_classes, **options)

    register_model("resunet_v0_3", ResUnet, defaults={"stem_maxpool": False}, ...)

``create_model(name, in_channels=1, num_classes=2, **options)`` merges, in order, the
builder's own keyword defaults, the entry's ``defaults`` and the caller's options.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
) -> Any:
    """Register ``builder`` under ``name``; usable as a decorator when builder is None."""

    def _register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
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


def _ensure_loaded() -> None:
    # Importing the package imports every family module, which registers its models.
    import unetzoo.models  # noqa: F401


def _closest(name: str) -> list[str]:
    names = sorted(set(_REGISTRY) | set(_ALIASES))
    return difflib.get_close_matches(name.lower(), names, n=3, cutoff=0.5)


def get_entry(name: str) -> ModelEntry:
    """Return the registry entry for ``name`` (or an alias); one-line error if unknown."""
    _ensure_loaded()
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
    _ensure_loaded()
    names = sorted(_REGISTRY)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern.lower())]
    return names


def model_info(name: str) -> ModelEntry:
    """Description, source, family, default options, taps and published counts."""
    return get_entry(name)


def resolve_options(name: str, **options: Any) -> dict[str, Any]:
    """The full option set ``create_model(name, **options)`` would build with."""
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
    return merged


def create_model(
    name: str, in_channels: int = 1, num_classes: int = 2, **options: Any
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models` (or an alias), case-insensitive.
        in_channels: input channels ``C`` of ``(N, C, H, W)``.
        num_classes: output channels of the logits ``(N, num_classes, H, W)``.
        **options: architecture options of that model (see ``model_info(name)``).
    """
    if int(in_channels) < 1 or int(num_classes) < 1:
        raise ModelError(
            f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}"
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
    model.unetzoo_name = entry.name  # type: ignore[assignment]
    model.unetzoo_options = merged  # type: ignore[assignment]
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def parameter_count(name: str, in_channels: int = 1, num_classes: int = 2, **options: Any) -> int:
    """Parameter count of a configuration, built on the meta device (no memory, fast)."""
    with torch.device("meta"):
        model = create_model(name, in_channels=in_channels, num_classes=num_classes, **options)
    return count_parameters(model)
