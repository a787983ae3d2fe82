"""SelfReg feature distillation (Zhu et al., "Rethinking UNet", MICCAI 2024, arXiv 2406.14896).

Two regularisers on the features a :class:`~unetzoo.models.taps.FeatureTapper` collects,
added to the segmentation loss with no new parameters:

- **SCR** (semantic consistency regularisation): every tapped encoder and decoder feature
  is pulled towards the last decoder feature, a *detached* teacher. The larger of the two
  maps is average-pooled to the smaller ``(h, w)`` (adaptive pooling, each axis on its own,
  so non-square maps work) and ``min(C_s, C_t)`` channels of each are compared by MSE.
- **IFD** (internal feature distillation): a feature's channels are ranked by the mean of
  their spatially L2-normalised maps (normalise each ``(H, W)`` map, then average over
  batch and space), and the top half is compared with the bottom half by MSE. Nothing is
  detached: both halves receive gradients.

``total = lambda_ifd * IFD + lambda_scr * SCR``; the training loss is ``main + total``.

Groupings follow the reference ``KDloss``: IFD is the mean over the encoder taps plus the
mean over the decoder taps (U-Net: 4 and 3), SCR the mean over all of them (7). When a
model taps the first and the last block of each stage (Swin-UNet, ``taps_per_stage=2``),
each position in the stage forms its own group and the group terms are summed, exactly as
the reference sums its "first block" and "last block" terms.

Usage (what ``unetzoo train --distill`` does)::

    distill = FeatureDistillationLoss(0.015, 0.015, generator=run_generator)
    tapper = FeatureTapper(model)
    with tapper:
        logits = model(x)
    main, terms = seg_loss(logits, y)
    extra, dterms = distill(tapper.features)     # dterms == {"ifd": ..., "scr": ...}
    (main + extra).backward()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unetzoo.errors import ConfigError
from unetzoo.models.taps import FeatureTapper, taps_for_model

__all__ = [
    "FeatureDistillationLoss",
    "FeatureTapper",
    "ifd_loss",
    "pool_to_common",
    "scr_loss",
    "select_channels",
    "taps_for_model",
]

CHANNEL_SELECTIONS = ("random", "first")


def _f32(t: torch.Tensor) -> torch.Tensor:
    # Half-precision features (AMP) are compared in float32: MSE of small differences.
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def pool_to_common(
    f_s: torch.Tensor, f_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool both maps to ``(min(H_s, H_t), min(W_s, W_t))``.

    Args:
        f_s, f_t: ``(N, C_s, H_s, W_s)`` and ``(N, C_t, H_t, W_t)``.

    Returns:
        the two maps at the common size; a map already at that size is returned as is.
    Each axis is handled separately, so a 14 x 28 map against a 56 x 112 one pools the
    latter to 14 x 28 (the reference pools to ``H x H`` and fails on such maps).
    """
    size = (min(f_s.shape[-2], f_t.shape[-2]), min(f_s.shape[-1], f_t.shape[-1]))
    if tuple(f_s.shape[-2:]) != size:
        f_s = F.adaptive_avg_pool2d(f_s, size)
    if tuple(f_t.shape[-2:]) != size:
        f_t = F.adaptive_avg_pool2d(f_t, size)
    return f_s, f_t


def select_channels(
    c_s: int,
    c_t: int,
    mode: str = "random",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the ``k = min(c_s, c_t)`` student and teacher channels SCR compares.

    ``"random"``: ``k`` channels of each, drawn without replacement and independently for
    student and teacher (the paper's code, ``random.sample``), from ``generator`` (the
    global torch RNG when None). ``"first"``: channels ``0..k-1`` of both.
    Returns two int64 tensors of length ``k`` on ``device``.
    """
    k = min(c_s, c_t)
    if mode == "first":
        idx = torch.arange(k, device=device)
        return idx, idx
    if mode != "random":
        raise ConfigError(
            f"channel_selection must be one of {', '.join(CHANNEL_SELECTIONS)}, got {mode!r}"
        )
    gdev = generator.device if generator is not None else "cpu"
    idx_s = torch.randperm(c_s, generator=generator, device=gdev)[:k]
    idx_t = torch.randperm(c_t, generator=generator, device=gdev)[:k]
    return idx_s.to(device), idx_t.to(device)


class _SelectedMSE(torch.autograd.Function):
    """``mean((a[:, idx_a] - b[:, idx_b]) ** 2)`` with a hand-written backward.

    ``b=None`` means ``b`` is ``a`` (IFD: two disjoint channel sets of one map). Autograd's
    chain (two gathers, a difference, a square) costs two full-size scatter-adds in the
    backward; here the backward writes each selected channel once. Half precision is
    computed in float32.
    """

    @staticmethod
    def forward(ctx, a, idx_a, b, idx_b):  # noqa: D102
        same = b is None
        src_b = a if same else b
        d = _f32(a.index_select(1, idx_a))
        d.sub_(_f32(src_b.index_select(1, idx_b)))
        loss = torch.linalg.vector_norm(d).square() / max(1, d.numel())
        ctx.save_for_backward(d, idx_a, idx_b)
        ctx.same = same
        ctx.a_meta = (a.shape, a.dtype)
        ctx.b_meta = None if same else (b.shape, b.dtype)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):  # noqa: D102
        d, idx_a, idx_b = ctx.saved_tensors
        gd = d * (2.0 * g / max(1, d.numel()))
        grad_a = grad_b = None
        shape, dtype = ctx.a_meta
        if ctx.needs_input_grad[0]:
            covered = idx_a.numel() + (idx_b.numel() if ctx.same else 0) == shape[1]
            grad_a = (torch.empty if covered else torch.zeros)(shape, dtype=dtype, device=d.device)
            grad_a.index_copy_(1, idx_a, gd.to(dtype))
            if ctx.same:
                grad_a.index_copy_(1, idx_b, gd.neg_().to(dtype))
        if not ctx.same and ctx.needs_input_grad[2]:
            bshape, bdtype = ctx.b_meta
            grad_b = torch.zeros(bshape, dtype=bdtype, device=d.device)
            grad_b.index_copy_(1, idx_b, gd.neg().to(bdtype))
        return grad_a, None, grad_b, None


def scr_loss(
    f_s: torch.Tensor,
    f_t: torch.Tensor,
    channel_selection: str = "random",
    generator: torch.Generator | None = None,
    _pooled_teacher: dict[tuple[int, int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Semantic consistency term of one tap: MSE(student, detached teacher).

    Args:
        f_s: a tapped feature ``(N, C_s, H_s, W_s)`` (receives the gradient).
        f_t: the last decoder feature ``(N, C_t, H_t, W_t)``; detached here.
        channel_selection: ``"random"`` (paper) or ``"first"``; see :func:`select_channels`.
        generator: the run's ``torch.Generator`` for ``"random"``.

    Returns:
        a scalar: mean squared error over ``N x k x h x w`` elements, ``k = min(C_s, C_t)``,
        ``(h, w)`` the smaller spatial size (see :func:`pool_to_common`).
    """
    size = (min(f_s.shape[-2], f_t.shape[-2]), min(f_s.shape[-1], f_t.shape[-1]))
    # Pool, then select channels: the same numbers (pooling is per channel), and the
    # student's pooling reads a map autograd keeps anyway instead of a fresh copy.
    s = f_s if tuple(f_s.shape[-2:]) == size else F.adaptive_avg_pool2d(f_s, size)
    cache = _pooled_teacher if _pooled_teacher is not None else {}
    t = cache.get(size)
    if t is None:
        with torch.no_grad():
            t = f_t.detach()
            t = t if tuple(t.shape[-2:]) == size else F.adaptive_avg_pool2d(t, size)
        cache[size] = t
    idx_s, idx_t = select_channels(
        f_s.shape[1], f_t.shape[1], channel_selection, generator, f_s.device
    )
    return _SelectedMSE.apply(s, idx_s, t, idx_t)


def ifd_loss(f: torch.Tensor) -> torch.Tensor | None:
    """Internal feature distillation term of one feature ``(N, C, H, W)``.

    Channels are ranked (descending) by ``mean_{n,h,w} f[n,c] / ||f[n,c]||_2`` (the L2 norm
    over ``(H, W)``); with ``h = C // 2`` the MSE is taken between the ``h`` top-ranked
    channels and the next ``h``. For odd ``C`` the single lowest-ranked channel is left out
    (the reference slices ``[h:C]``, ``h + 1`` channels, which does not match ``h``).
    Returns None for ``C < 2`` (no pair to compare; the caller skips the tap).
    """
    c = f.shape[1]
    if c < 2:
        return None
    with torch.no_grad():
        acc = torch.float32 if f.dtype in (torch.float16, torch.bfloat16) else f.dtype
        norms = torch.linalg.vector_norm(f, dim=(2, 3), dtype=acc)
        sums = f.sum(dim=(2, 3), dtype=acc)
        score = (sums / norms.clamp_min(1e-12)).mean(0)  # clamp as F.normalize does
        order = torch.argsort(score, descending=True)
    half = c // 2
    return _SelectedMSE.apply(f, order[:half], None, order[half : 2 * half])


def _mean(values: Sequence[torch.Tensor]) -> torch.Tensor | None:
    return torch.stack(list(values)).mean() if values else None


def _groups(n: int, per_stage: int) -> list[list[int]]:
    """Indices of taps listed stage by stage, grouped by position within the stage."""
    k = max(1, int(per_stage))
    if n % k:
        k = 1  # not a whole number of stages: treat as one group
    return [list(range(g, n, k)) for g in range(k)]


class FeatureDistillationLoss(nn.Module):
    """SelfReg loss ``lambda_ifd * IFD + lambda_scr * SCR`` over tapped features.

    Args:
        lambda_ifd: weight of internal feature distillation (default 0.015).
        lambda_scr: weight of semantic consistency regularisation (default 0.015).
        channel_selection: SCR channels, ``"random"`` (the paper: a fresh random subset of
            ``min(C_s, C_t)`` channels of student and teacher at every call, drawn without
            replacement from ``generator``) or ``"first"`` (channels ``0..k-1``: no
            randomness, the same pairing every step; the reference's commented-out line).
        generator: ``torch.Generator`` for ``"random"`` (the run's, for reproducible
            runs); None uses the global torch RNG.
        taps_per_stage: ``(encoder, decoder)`` override of the grouping; default: the
            ``"taps_per_stage"`` entry of the features (set by ``FeatureTapper``), else 1.

    Call with the ``features`` dict of :class:`FeatureTapper` (``{"encoder": [Tensor
    (N, C, H, W)], "decoder": [...], "final": Tensor}``). Returns ``(total, terms)``:
    ``total`` a scalar tensor with gradient, ``terms = {"ifd": float, "scr": float}`` the
    *unweighted* IFD and SCR values (0.0 for a term with nothing to compare).
    """

    def __init__(
        self,
        lambda_ifd: float = 0.015,
        lambda_scr: float = 0.015,
        channel_selection: str = "random",
        generator: torch.Generator | None = None,
        taps_per_stage: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if channel_selection not in CHANNEL_SELECTIONS:
            raise ConfigError(
                f"channel_selection must be one of {', '.join(CHANNEL_SELECTIONS)}, "
                f"got {channel_selection!r}"
            )
        for label, value in (("lambda_ifd", lambda_ifd), ("lambda_scr", lambda_scr)):
            if not float(value) >= 0.0:
                raise ConfigError(f"{label} must be a number >= 0, got {value!r}")
        self.lambda_ifd = float(lambda_ifd)
        self.lambda_scr = float(lambda_scr)
        self.channel_selection = channel_selection
        self.generator = generator
        self.taps_per_stage = taps_per_stage

    def extra_repr(self) -> str:
        return (
            f"lambda_ifd={self.lambda_ifd}, lambda_scr={self.lambda_scr}, "
            f"channel_selection={self.channel_selection!r}"
        )

    def terms(self, features: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Unweighted ``(IFD, SCR)`` as scalar tensors (see the class doc)."""
        enc = list(features.get("encoder") or [])
        dec = list(features.get("decoder") or [])
        final = features.get("final")
        ke, kd = self.taps_per_stage or features.get("taps_per_stage") or (1, 1)
        ref = final if final is not None else (enc + dec)[0] if enc or dec else None
        if ref is None:
            raise ConfigError(
                "feature distillation got no features; run the forward pass inside "
                "`with FeatureTapper(model):` and pass tapper.features"
            )
        zero = ref.new_zeros((), dtype=torch.float32)
        genc, gdec = _groups(len(enc), ke), _groups(len(dec), kd)
        pooled: dict[tuple[int, int], torch.Tensor] = {}  # teacher pooled once per size
        ifd, scr = zero, zero
        for g in range(max(len(genc), len(gdec))):
            e = [enc[i] for i in genc[g]] if g < len(genc) else []
            d = [dec[i] for i in gdec[g]] if g < len(gdec) else []
            for side in (e, d):
                vals = [v for v in (ifd_loss(f) for f in side) if v is not None]
                m = _mean(vals)
                if m is not None:
                    ifd = ifd + m
            if final is not None:
                m = _mean([
                    scr_loss(f, final, self.channel_selection, self.generator, pooled)
                    for f in e + d
                ])
                if m is not None:
                    scr = scr + m
        return ifd, scr

    def forward(self, features: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """``(lambda_ifd * IFD + lambda_scr * SCR, {"ifd": IFD, "scr": SCR})``."""
        ifd, scr = self.terms(features)
        total = self.lambda_ifd * ifd + self.lambda_scr * scr
        values = torch.stack([ifd.detach(), scr.detach()]).tolist()  # one device sync
        return total, {"ifd": float(values[0]), "scr": float(values[1])}
