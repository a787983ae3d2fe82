"""Batched slice inference (TransUNet protocol) and sliding-window inference.

The TransUNet test protocol resizes every slice to ``img_size`` with
``scipy.ndimage.zoom(order=3)``, runs the network, takes the argmax and resizes the label
map back with ``zoom(order=0)``. Both zooms are separable linear maps, so here they are
precomputed once per (input size, output size) as 1-D matrices (cubic) or index vectors
(nearest) *taken from scipy itself* and applied to whole batches of slices on the model's
device. Results equal the per-slice scipy reference (see tests/engine/test_inference.py:
images to float32 rounding, label maps exactly).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from unetzoo.errors import ModelError


@functools.lru_cache(maxsize=64)
def cubic_zoom_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` float64 matrix ``M`` with ``M @ x == zoom(x, n_out / n_in, order=3)``.

    Built by zooming the identity along one axis (factor 1 on the other axis leaves it
    untouched), so it reproduces scipy's spline prefilter and boundary handling.
    """
    eye = np.eye(n_in, dtype=np.float64)
    m = ndimage.zoom(eye, (n_out / n_in, 1.0), order=3)
    if m.shape[0] != n_out:  # pragma: no cover - scipy rounds n_in * (n_out / n_in) to n_out
        raise RuntimeError(f"zoom from {n_in} to {n_out} gave {m.shape[0]} rows")
    return m


@functools.lru_cache(maxsize=64)
def linear_zoom_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` matrix of ``zoom(x, n_out / n_in, order=1)`` (rows sum to 1, so
    probabilities stay probabilities)."""
    return ndimage.zoom(np.eye(n_in, dtype=np.float64), (n_out / n_in, 1.0), order=1)


def resize_linear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``(..., H, W)`` like ``scipy.ndimage.zoom(order=1)`` per slice."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    my = torch.as_tensor(linear_zoom_matrix(x.shape[-2], size[0]), dtype=x.dtype, device=x.device)
    mx = torch.as_tensor(linear_zoom_matrix(x.shape[-1], size[1]), dtype=x.dtype, device=x.device)
    return my @ x @ mx.T


@functools.lru_cache(maxsize=64)
def nearest_zoom_index(n_in: int, n_out: int) -> np.ndarray:
    """Source indices (length ``n_out``) that ``zoom(x, n_out / n_in, order=0)`` picks.

    ``-1`` marks output positions that scipy maps (by float rounding) just outside the
    input; ``mode="constant"`` fills those with 0, so :func:`resize_nearest` does too.
    """
    idx = ndimage.zoom(np.arange(1, n_in + 1, dtype=np.float64), n_out / n_in, order=0)
    return np.rint(idx).astype(np.int64) - 1


def resize_cubic(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``(..., H, W)`` to ``(..., h, w)`` like ``scipy.ndimage.zoom(order=3)`` per slice."""
    h_in, w_in = x.shape[-2:]
    h, w = size
    if (h_in, w_in) == (h, w):
        return x
    dtype = x.dtype if x.is_floating_point() else torch.float32
    my = torch.as_tensor(cubic_zoom_matrix(h_in, h), dtype=dtype, device=x.device)
    mx = torch.as_tensor(cubic_zoom_matrix(w_in, w), dtype=dtype, device=x.device)
    return my @ x.to(dtype) @ mx.T


def resize_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``(..., H, W)`` to ``(..., h, w)`` like ``scipy.ndimage.zoom(order=0)`` per slice.

    Includes scipy's quirk of zero-filling a last row/column that float rounding places
    outside the input.
    """
    h_in, w_in = x.shape[-2:]
    h, w = size
    if (h_in, w_in) == (h, w):
        return x
    iy = torch.as_tensor(nearest_zoom_index(h_in, h), device=x.device)
    ix = torch.as_tensor(nearest_zoom_index(w_in, w), device=x.device)
    out = x.index_select(-2, iy.clamp_min(0)).index_select(-1, ix.clamp_min(0))
    if (iy < 0).any() or (ix < 0).any():
        outside = (iy < 0)[:, None] | (ix < 0)[None, :]
        out = out.masked_fill(outside, 0)
    return out


def _flips(tta: bool) -> list[tuple[int, ...]]:
    # Identity plus horizontal, vertical and both flips (dims of (N, C, H, W)).
    return [(), (3,), (2,), (2, 3)] if tta else [()]


@torch.no_grad()
def predict_probs(
    model: nn.Module, x: torch.Tensor, tta: bool = False, amp: bool = False
) -> torch.Tensor:
    """Softmax probabilities ``(N, K, H, W)`` for a batch ``x`` ``(N, C, H, W)``.

    With ``tta`` the probabilities of the four flips (none, W, H, both) are averaged.
    Binary models with one output channel get ``K = 2`` (background = 1 - sigmoid).
    """
    total = None
    flips = _flips(tta)
    for dims in flips:
        xin = torch.flip(x, dims) if dims else x
        with torch.autocast(x.device.type, enabled=amp and x.device.type == "cuda"):
            out = model(xin)
        if isinstance(out, (list, tuple)):
            out = out[-1]
        out = out.float()
        if out.shape[1] == 1:
            fg = torch.sigmoid(out)
            prob = torch.cat([1 - fg, fg], dim=1)
        else:
            prob = torch.softmax(out, dim=1)
        if dims:
            prob = torch.flip(prob, dims)
        total = prob if total is None else total + prob
    return total / len(flips)


@torch.no_grad()
def planned_probs(
    model: nn.Module, x: torch.Tensor, plan, spacing: Sequence[float] | None,
    tta: bool = False, amp: bool = False, batch_size: int = 8,
) -> torch.Tensor:
    """Probabilities ``(N, K, H, W)`` of slices ``x`` ``(N, C, H, W)`` on their own grid,
    under a :class:`~unetzoo.data.plan.SlicePlan`: resampled (cubic) from the in-plane
    ``spacing`` to the plan's, zero-padded to the patch (or Gaussian sliding windows of
    the patch when larger), the probabilities cropped and resampled back (linear)."""
    h, w = x.shape[-2:]
    th, tw = plan.resampled_shape((h, w), spacing)
    ph, pw = plan.patch_size
    xr = resize_cubic(x, (th, tw))
    if th <= ph and tw <= pw:
        xp = torch.nn.functional.pad(xr, (0, pw - tw, 0, ph - th))
        probs = predict_probs(model, xp, tta=tta, amp=amp)[..., :th, :tw]
    else:
        probs = torch.stack([sliding_window_probs(model, s, (ph, pw), batch_size=batch_size,
                                                  tta=tta, amp=amp) for s in xr])
    return resize_linear(probs, (h, w))


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    image: np.ndarray | torch.Tensor,
    img_size: int,
    batch_size: int = 16,
    tta: bool = False,
    device: str | torch.device | None = None,
    amp: bool = False,
    channels_last: bool = False,
    plan=None,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Label map of a volume, slice by slice, in the TransUNet protocol (or, with a
    ``plan``, resampled to the planned spacing: :func:`planned_probs`).

    Args:
        model: a segmentation model in eval mode.
        image: ``(C, D, H, W)`` normalised intensities (``D = 1`` for 2-D images).
        img_size: the training size; slices are resized to ``img_size`` x ``img_size``
            (cubic) and the predicted labels back to ``H x W`` (nearest).
        batch_size: slices per forward pass.
        tta: average the softmax over flips.
        plan: a :class:`~unetzoo.data.plan.SlicePlan`; ``spacing`` is then the volume's
            ``(sz, sy, sx)`` (None: already at the plan's spacing).

    Returns:
        ``(D, H, W)`` int64 labels.
    """
    if device is None:
        device = next(model.parameters()).device
    vol = torch.as_tensor(np.asarray(image, dtype=np.float32) if not torch.is_tensor(image) else image)
    vol = vol.float()
    c, d, h, w = vol.shape
    out = torch.empty((d, h, w), dtype=torch.int64)
    for start in range(0, d, batch_size):
        x = vol[:, start : start + batch_size].permute(1, 0, 2, 3).to(device)  # (b, C, H, W)
        if plan is not None:
            probs = planned_probs(model, x, plan, spacing, tta=tta, amp=amp, batch_size=batch_size)
            out[start : start + x.shape[0]] = probs.argmax(1).cpu()
            continue
        x = resize_cubic(x, (img_size, img_size))
        if channels_last and x.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        labels = predict_probs(model, x, tta=tta, amp=amp).argmax(1)
        out[start : start + x.shape[0]] = resize_nearest(labels, (h, w)).cpu()
    return out.numpy()


def gaussian_importance(size: tuple[int, int], sigma_scale: float = 0.125) -> torch.Tensor:
    """``(h, w)`` Gaussian weights peaking at the window centre (sigma = size / 8), min > 0."""
    axes = []
    for n in size:
        coords = torch.arange(n, dtype=torch.float32) - (n - 1) / 2
        sigma = max(n * sigma_scale, 1e-3)
        axes.append(torch.exp(-0.5 * (coords / sigma) ** 2))
    g = axes[0][:, None] * axes[1][None, :]
    g = g / g.max()
    # Floor the corners so pixels covered by a single window never divide by ~0.
    return g.clamp_min(1e-4)


def _starts(length: int, window: int, step: int) -> list[int]:
    if length <= window:
        return [0]
    n = math.ceil((length - window) / step) + 1
    return sorted({min(i * step, length - window) for i in range(n)})


@torch.no_grad()
def sliding_window_probs(
    model: nn.Module,
    image: torch.Tensor,
    window: int | Sequence[int],
    overlap: float = 0.5,
    batch_size: int = 8,
    tta: bool = False,
    amp: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Probabilities ``(K, H, W)`` of a 2-D image ``(C, H, W)`` by overlapping windows.

    Windows of ``window`` pixels step by ``window * (1 - overlap)``; each window's softmax
    is weighted by :func:`gaussian_importance` and the weighted sum is normalised by the
    summed weights. Images smaller than a window are zero-padded (bottom/right) and
    cropped back. ``progress(done, total)`` is called after each batch of windows.
    """
    wh, ww = (window, window) if isinstance(window, int) else tuple(window)
    c, h, w = image.shape
    ph, pw = max(wh - h, 0), max(ww - w, 0)
    x = torch.nn.functional.pad(image, (0, pw, 0, ph)) if (ph or pw) else image
    H, W = x.shape[-2:]
    step_h = max(1, int(round(wh * (1 - overlap))))
    step_w = max(1, int(round(ww * (1 - overlap))))
    positions = [(y, z) for y in _starts(H, wh, step_h) for z in _starts(W, ww, step_w)]
    weight = gaussian_importance((wh, ww)).to(x.device)
    acc = None
    norm = torch.zeros((H, W), device=x.device)
    for i in range(0, len(positions), batch_size):
        chunk = positions[i : i + batch_size]
        batch = torch.stack([x[:, y : y + wh, z : z + ww] for y, z in chunk])
        probs = predict_probs(model, batch, tta=tta, amp=amp)
        if acc is None:
            acc = torch.zeros((probs.shape[1], H, W), device=x.device)
        for (y, z), p in zip(chunk, probs):
            acc[:, y : y + wh, z : z + ww] += p * weight
            norm[y : y + wh, z : z + ww] += weight
        if progress is not None:
            progress(i + len(chunk), len(positions))
    return (acc / norm)[:, :h, :w]


def free_memory_bytes(device: torch.device) -> int:
    """Memory free for tensors on ``device``: the GPU's free memory, else the machine's
    available memory (``/proc/meminfo``'s MemAvailable where there is one)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def check_memory(model: nn.Module, img_size: int, in_channels: int, where: str) -> None:
    """Refuse, in one line, a model whose forward pass at ``img_size`` cannot fit in the
    free memory even for one slice (a checkpoint's ``img_size`` of 4096 on a 40 px
    picture ran out of memory with a traceback). The estimate: every layer's output
    summed over a 32 px pass, scaled to ``img_size`` (an upper bound on the peak)."""
    if getattr(model, "fixed_input_size", None) is not None or img_size <= 512:
        return
    device = next(model.parameters()).device
    total = [0]

    def add(_m: nn.Module, _x: Any, y: Any) -> None:
        if torch.is_tensor(y):
            total[0] += y.numel() * y.element_size()

    probe = 32
    hooks = [m.register_forward_hook(add) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, probe, probe, device=device))
    except (RuntimeError, ValueError):
        return  # a model that cannot take 32 px: no estimate (its own checks speak)
    finally:
        for h in hooks:
            h.remove()
    need = total[0] * (img_size / probe) ** 2
    free = free_memory_bytes(device)
    if need > free:
        raise ModelError(
            f"{where}: img_size {img_size} needs about {need / 2**30:.1f} GiB for one slice, "
            f"more than the {free / 2**30:.1f} GiB free on {device}; use a model trained at "
            "a smaller img_size, or a machine with more memory"
        )
