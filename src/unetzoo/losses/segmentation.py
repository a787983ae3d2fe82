"""Segmentation losses: cross-entropy, soft Dice, and their weighted sums.

Every loss is an ``nn.Module`` called as ``loss(logits, target)`` with logits
``(N, C, H, W)`` (or any number of spatial dims) and integer targets ``(N, H, W)``
(``(N, 1, H, W)`` is accepted too). It returns ``(total, terms)``: ``total`` is the
weighted sum to back-propagate and ``terms`` maps each unweighted term name (``"ce"``,
``"bce"``, ``"dice"``) to its value as a Python float, for logs.

The soft Dice follows TransUNet's ``DiceLoss``: on softmax probabilities against
one-hot targets, one Dice per class pooled over the batch and all pixels,
``(2 sum(p t) + eps) / (sum(p^2) + sum(t^2) + eps)`` with ``eps = 1e-5``, loss
``1 - dice`` averaged over classes. TransUNet includes the background class
(``include_background=True``, the default for ``ce_dice`` and ``dice``); set it to
False to average over the foreground classes only. It is computed on probabilities, so
it carries a gradient.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unetzoo.errors import ConfigError, DataError

LossTerms = dict[str, float]

#: Default (first term, Dice) weights per loss name when none are given: 0.4 CE + 0.6 Dice
#: is Swin-Unet's, SelfReg's and the ResUnet seed's weighting. The recipes pass their own
#: (TransUNet's and the Synapse recipe's 0.5 / 0.5, ACDC's and EMCAD's 0.3 / 0.7).
DEFAULT_WEIGHTS: dict[str, tuple[float, ...]] = {
    "ce_dice": (0.4, 0.6),
    "bce_dice": (0.5, 0.5),
    "ce": (1.0,),
    "dice": (1.0,),
}

_TERMS: dict[str, tuple[str, ...]] = {
    "ce_dice": ("ce", "dice"),
    "bce_dice": ("bce", "dice"),
    "ce": ("ce",),
    "dice": ("dice",),
}


def list_losses() -> list[str]:
    """Names accepted by :func:`build_loss`."""
    return sorted(_TERMS)


def _prepare_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.dim() == logits.dim() and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise DataError(
            f"target shape {tuple(target.shape)} does not match logits "
            f"{tuple(logits.shape)}; expected (N, *spatial) class indices"
        )
    if target.is_floating_point():
        target = target.round()
    return target.long()


def _check_range(target: torch.Tensor, n: int, ignore_index: int | None) -> torch.Tensor:
    """Boolean mask of the pixels that count; raises for labels outside ``[0, n)``."""
    if ignore_index is None:
        valid = torch.ones_like(target, dtype=torch.bool)
    else:
        valid = target != ignore_index
    labels = target[valid]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n):
        raise DataError(
            f"target holds labels outside [0, {n - 1}] (found {int(labels.min())}.."
            f"{int(labels.max())}); check num_classes and the label files"
        )
    return valid


def soft_dice_per_class(
    probs: torch.Tensor, onehot: torch.Tensor, smooth: float = 1e-5
) -> torch.Tensor:
    """Soft Dice of each channel, pooled over batch and space: ``(C,)`` in ``[0, 1]``.

    ``probs`` and ``onehot`` are ``(N, C, *spatial)`` of the same dtype; the denominator
    uses squares as TransUNet's ``DiceLoss``.
    """
    dims = (0, *range(2, probs.dim()))
    inter = (probs * onehot).sum(dims)
    denom = (probs * probs).sum(dims) + (onehot * onehot).sum(dims)
    return (2.0 * inter + smooth) / (denom + smooth)


class SegmentationLoss(nn.Module):
    """Weighted sum of cross-entropy and soft Dice on softmax probabilities (multi-class).

    Args:
        num_classes: channels of the logits.
        weights: ``{"ce": w, "dice": w}``; a term with weight 0 is still logged.
        include_background: include class 0 in the Dice mean (TransUNet: True).
        ignore_index: target value excluded from both terms (None: none).
        smooth: Dice smoothing constant.
    """

    def __init__(
        self,
        num_classes: int,
        weights: Mapping[str, float],
        include_background: bool = True,
        ignore_index: int | None = None,
        smooth: float = 1e-5,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.weights = dict(weights)
        self.include_background = include_background
        self.ignore_index = ignore_index
        self.smooth = smooth

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, LossTerms]:
        """``logits (N, C, *S)``, ``target (N, *S)`` -> ``(total, {"ce", "dice"})``."""
        if logits.shape[1] != self.num_classes:
            raise DataError(
                f"logits have {logits.shape[1]} channels but the loss was built for "
                f"num_classes={self.num_classes}"
            )
        target = _prepare_target(logits, target)
        valid = _check_range(target, self.num_classes, self.ignore_index)
        logits = logits.float()  # losses in fp32 under AMP
        parts: dict[str, torch.Tensor] = {}
        if "ce" in self.weights:
            ignore = self.ignore_index if self.ignore_index is not None else -100
            if bool(valid.any()):
                parts["ce"] = F.cross_entropy(logits, target, ignore_index=ignore)
            else:  # every pixel ignored: CE would be 0/0
                parts["ce"] = logits.sum() * 0.0
        if "dice" in self.weights:
            probs = torch.softmax(logits, dim=1)
            safe = torch.where(valid, target, torch.zeros_like(target))
            onehot = F.one_hot(safe, self.num_classes).movedim(-1, 1).to(probs.dtype)
            if self.ignore_index is not None:
                keep = valid.unsqueeze(1).to(probs.dtype)
                probs, onehot = probs * keep, onehot * keep
            dice = soft_dice_per_class(probs, onehot, self.smooth)
            if not self.include_background:
                dice = dice[1:]
            parts["dice"] = 1.0 - dice.mean()
        return _combine(parts, self.weights)


class BinarySegmentationLoss(nn.Module):
    """Weighted sum of binary cross-entropy and soft Dice for one foreground class.

    Logits may have 1 channel (foreground logit, sigmoid) or 2 channels (background,
    foreground; softmax). With 2 channels the foreground logit is ``l1 - l0``, since
    ``softmax(l)[1] == sigmoid(l1 - l0)``, so BCE equals 2-class cross-entropy. Targets
    are 0/1 (or ``ignore_index``). The Dice term is the foreground soft Dice; with
    ``include_background`` it is the mean of foreground and background Dice.
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        include_background: bool = False,
        ignore_index: int | None = None,
        smooth: float = 1e-5,
    ) -> None:
        super().__init__()
        self.weights = dict(weights)
        self.include_background = include_background
        self.ignore_index = ignore_index
        self.smooth = smooth

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, LossTerms]:
        """``logits (N, 1|2, *S)``, ``target (N, *S)`` -> ``(total, {"bce", "dice"})``."""
        if logits.shape[1] not in (1, 2):
            raise DataError(
                f"bce_dice takes logits with 1 or 2 channels, got {logits.shape[1]}; "
                "use ce_dice for more classes"
            )
        target = _prepare_target(logits, target)
        valid = _check_range(target, 2, self.ignore_index)
        logits = logits.float()
        fg = logits[:, 0] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]
        t = torch.where(valid, target, torch.zeros_like(target)).to(fg.dtype)
        keep = valid.to(fg.dtype)
        parts: dict[str, torch.Tensor] = {}
        if "bce" in self.weights:
            bce = F.binary_cross_entropy_with_logits(fg, t, reduction="none")
            parts["bce"] = (bce * keep).sum() / keep.sum().clamp_min(1.0)
        if "dice" in self.weights:
            p = torch.sigmoid(fg)
            probs = torch.stack(((1.0 - p) * keep, p * keep), dim=1)
            onehot = torch.stack(((1.0 - t) * keep, t * keep), dim=1)
            dice = soft_dice_per_class(probs, onehot, self.smooth)
            if not self.include_background:
                dice = dice[1:]
            parts["dice"] = 1.0 - dice.mean()
        return _combine(parts, self.weights)


def _combine(
    parts: Mapping[str, torch.Tensor], weights: Mapping[str, float]
) -> tuple[torch.Tensor, LossTerms]:
    total = sum(weights[k] * v for k, v in parts.items())
    terms = {k: float(v.detach()) for k, v in parts.items()}
    return total, terms  # type: ignore[return-value]


def _resolve_weights(name: str, weights: Sequence[float] | Mapping[str, float] | None):
    terms = _TERMS[name]
    if weights is None:
        values = DEFAULT_WEIGHTS[name]
    elif isinstance(weights, Mapping):
        extra = set(weights) - set(terms)
        if extra or set(weights) != set(terms):
            raise ConfigError(
                f"loss {name!r} takes weights for {', '.join(terms)}; got {sorted(weights)}"
            )
        values = tuple(float(weights[k]) for k in terms)
    else:
        if isinstance(weights, (int, float)):
            weights = (weights,)
        values = tuple(float(w) for w in weights)
        if len(values) != len(terms):
            raise ConfigError(
                f"loss {name!r} takes {len(terms)} weight(s) ({', '.join(terms)}); "
                f"got {len(values)}"
            )
    if any(not (w >= 0.0) or w == float("inf") for w in values) or sum(values) <= 0:
        raise ConfigError(f"loss weights {values} must be finite, >= 0 and not all 0")
    return dict(zip(terms, values))


def build_loss(
    name: str,
    num_classes: int,
    weights: Sequence[float] | Mapping[str, float] | None = None,
    *,
    include_background: bool | None = None,
    ignore_index: int | None = None,
    smooth: float = 1e-5,
) -> nn.Module:
    """Build a segmentation loss by name.

    Args:
        name: ``"ce_dice"`` (default weights 0.4 CE + 0.6 Dice), ``"bce_dice"`` (binary,
            0.5 BCE + 0.5 Dice, logits with 1 or 2 channels), ``"ce"`` or ``"dice"``.
        num_classes: number of classes including background (``bce_dice``: 1 or 2).
        weights: term weights in the order of the name (``(w_ce, w_dice)``) or a mapping
            ``{"ce": .., "dice": ..}``; None for the defaults above.
        include_background: Dice over class 0 too; default True for ``ce_dice``/``dice``
            (as TransUNet) and False for ``bce_dice`` (foreground Dice).
        ignore_index: target value left out of every term.
        smooth: Dice smoothing constant (1e-5 as TransUNet).

    Returns:
        An ``nn.Module``; ``loss(logits, target) -> (total, {term: float})``.
    """
    if name not in _TERMS:
        raise ConfigError(f"unknown loss {name!r}; valid names: {', '.join(list_losses())}")
    w = _resolve_weights(name, weights)
    if name == "bce_dice":
        if num_classes not in (1, 2):
            raise ConfigError(
                f"loss 'bce_dice' is binary (num_classes 1 or 2), got {num_classes}; "
                "use ce_dice"
            )
        return BinarySegmentationLoss(
            w, include_background=bool(include_background), ignore_index=ignore_index,
            smooth=smooth,
        )
    if num_classes < 2:
        raise ConfigError(f"loss {name!r} needs num_classes >= 2 (background included)")
    return SegmentationLoss(
        num_classes,
        w,
        include_background=True if include_background is None else include_background,
        ignore_index=ignore_index,
        smooth=smooth,
    )


def deep_supervision_weights(
    n: int, weights: Sequence[float] | None, *, normalise: bool = True
) -> list[float]:
    """Per-head weights (final head last): normalised to sum 1 (equal when None), or with
    ``normalise=False`` as given (all 1 when None: the plain sum of the heads' losses).

    Raises:
        ConfigError: a weight count that is not the number of heads, or a sum <= 0.
    """
    if weights is None:
        return [1.0 / n if normalise else 1.0] * n
    if len(weights) != n:
        raise ConfigError(
            f"deep-supervision-weights has {len(weights)} values but the model has {n} heads"
        )
    total = float(sum(weights))
    if total <= 0:
        raise ConfigError("deep-supervision-weights must sum to a positive number")
    return [float(w) / (total if normalise else 1.0) for w in weights]


def deep_supervision_loss(
    loss: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, LossTerms]],
    outputs: Sequence[torch.Tensor] | torch.Tensor,
    target: torch.Tensor,
    weights: Sequence[float] | None = None,
    *,
    per_head: bool = False,
    reduction: str = "mean",
) -> tuple[torch.Tensor, LossTerms]:
    """Weighted mean (``reduction="mean"``) or weighted sum (``"sum"``) of ``loss`` over
    deep-supervision heads (final output last).

    ``weights`` default to equal weights; for the mean they are normalised to sum to 1,
    for the sum used as given (:func:`deep_supervision_weights`). Terms are combined
    the same way; with ``per_head`` they are instead the final head's terms plus
    ``head{i}``, each head's total loss (what the trainer logs). A single tensor is passed
    straight to ``loss``.
    """
    if isinstance(outputs, torch.Tensor):
        return loss(outputs, target)
    if reduction not in ("mean", "sum"):
        raise ConfigError(f"deep-supervision reduction must be mean or sum, got {reduction!r}")
    outputs = list(outputs)
    w = deep_supervision_weights(len(outputs), weights, normalise=reduction == "mean")
    total = None
    terms: LossTerms = {}
    heads: LossTerms = {}
    for i, (wi, out) in enumerate(zip(w, outputs)):
        t, parts = loss(out, target)
        total = t * wi if total is None else total + t * wi
        heads[f"head{i}"] = float(t.detach().item())
        for k, v in parts.items():
            terms[k] = terms.get(k, 0.0) + v * wi
    if per_head:
        terms = {**{k: _as_float(v) for k, v in parts.items()}, **heads}
    return total, terms  # type: ignore[return-value]


def supervised_loss(
    loss: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, LossTerms]],
    outputs: Sequence[torch.Tensor] | torch.Tensor,
    target: torch.Tensor,
    mode: str = "weighted",
    weights: Sequence[float] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One training batch's loss: one output, or deep-supervision heads combined by
    ``mode`` (:data:`DEEP_SUPERVISION_LOSSES`): ``"sum"`` (weighted sum of the heads'
    losses: official UNet++, UNet 3+), ``"weighted"`` (weighted mean; see
    :func:`deep_supervision_loss`) or ``"mutation"`` (:func:`mutation_loss`). Outputs are
    scored in float32 (under autocast they may be half). Terms are plain floats.
    """
    if isinstance(outputs, torch.Tensor):
        total, terms = loss(outputs.float(), target)
    elif mode == "mutation":
        total, terms = mutation_loss(loss, [o.float() for o in outputs], target)
    elif mode in ("weighted", "sum"):
        total, terms = deep_supervision_loss(
            loss, [o.float() for o in outputs], target, weights, per_head=True,
            reduction="sum" if mode == "sum" else "mean",
        )
    else:
        raise ConfigError(f"unknown deep-supervision-loss {mode!r}; choose one of "
                          f"{', '.join(DEEP_SUPERVISION_LOSSES)}")
    return total, {k: _as_float(v) for k, v in terms.items()}


def _as_float(v: torch.Tensor | float) -> float:
    return float(v.detach().item() if torch.is_tensor(v) else v)


#: How deep-supervision heads are combined: ``"sum"`` (weighted sum of the heads' losses:
#: the official UNet++ Keras multi-output model, the UNet 3+ paper), ``"weighted"``
#: (weighted mean, :func:`deep_supervision_loss`) or ``"mutation"`` (EMCAD's,
#: :func:`mutation_loss`).
DEEP_SUPERVISION_LOSSES = ("sum", "weighted", "mutation")


def source_deep_supervision_loss(model: object) -> str:
    """The head combination the model's source trains with (its class attribute
    ``deep_supervision_loss``; ``"weighted"`` when it declares none): what the config
    value ``"auto"`` resolves to."""
    mode = getattr(model, "deep_supervision_loss", None)
    return mode if mode in DEEP_SUPERVISION_LOSSES else "weighted"


def mutation_subsets(n: int) -> list[tuple[int, ...]]:
    """The ``2**n - 1`` non-empty subsets of ``range(n)``, by size then order (EMCAD's
    ``powerset`` minus the empty set; the order does not change the sum)."""
    return [c for k in range(1, n + 1) for c in itertools.combinations(range(n), k)]


def mutation_loss(
    loss: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, LossTerms]],
    outputs: Sequence[torch.Tensor] | torch.Tensor,
    target: torch.Tensor,
) -> tuple[torch.Tensor, LossTerms]:
    """EMCAD's default "mutation" deep supervision (SLDGroup/EMCAD ``trainer.py``,
    ``--supervision mutation``): for every non-empty subset of the heads, the heads'
    *logits* are added and ``loss`` is applied to the sum; the losses are summed (not
    averaged: 15 terms for 4 heads). Terms are the same sums. A single tensor is passed
    straight to ``loss``.
    """
    if isinstance(outputs, torch.Tensor):
        return loss(outputs, target)
    outputs = list(outputs)
    if not outputs:
        raise ConfigError("mutation loss needs at least one output")
    total = None
    terms: LossTerms = {}
    for subset in mutation_subsets(len(outputs)):
        logits = outputs[subset[0]]
        for i in subset[1:]:
            logits = logits + outputs[i]
        t, parts = loss(logits, target)
        total = t if total is None else total + t
        for k, v in parts.items():
            terms[k] = terms.get(k, 0.0) + v
    return total, terms  # type: ignore[return-value]
