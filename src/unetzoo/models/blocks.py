"""Building blocks shared by the U-Net family: convolution units, up-sampling, cropping.

Conventions: ``batch_norm`` switches BatchNorm after every 3x3 convolution; ``bias=None``
means "bias only where there is no BatchNorm" (a bias in front of BatchNorm is redundant).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def resolve_bias(bias: bool | None, batch_norm: bool) -> bool:
    """``bias=None`` -> True without BatchNorm, False with it."""
    return (not batch_norm) if bias is None else bool(bias)


def conv_unit(
    in_channels: int,
    out_channels: int,
    *,
    kernel_size: int = 3,
    padding: int = 1,
    batch_norm: bool = True,
    bias: bool | None = None,
) -> nn.Sequential:
    """Conv ``kernel_size`` -> optional BatchNorm -> ReLU. Shape ``(N, in, H, W) -> (N, out, H', W')``."""
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            padding=padding,
            bias=resolve_bias(bias, batch_norm),
        )
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class DoubleConv(nn.Sequential):
    """Two (3x3 conv -> [BatchNorm] -> ReLU) units: ``in -> mid -> out`` channels.

    Args:
        in_channels, out_channels: channel counts.
        mid_channels: width of the first convolution's output (default ``out_channels``).
        batch_norm: BatchNorm after each convolution (default True).
        bias: convolution bias; None = only without BatchNorm.
        padding: 1 keeps H, W ("same"); 0 shrinks each side by 2 in total ("valid").
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int | None = None,
        *,
        batch_norm: bool = True,
        bias: bool | None = None,
        padding: int = 1,
    ) -> None:
        mid = mid_channels or out_channels
        super().__init__(
            *conv_unit(in_channels, mid, padding=padding, batch_norm=batch_norm, bias=bias),
            *conv_unit(mid, out_channels, padding=padding, batch_norm=batch_norm, bias=bias),
        )


def kaiming_init(*modules: nn.Module) -> None:
    """gyb357's ``init_weights=True`` (torchvision ResNet's own init): Kaiming normal
    (fan-out, ReLU) on every ``nn.Conv2d`` of ``modules`` with its bias (if any) 0,
    BatchNorm weight 1 and bias 0; transposed convolutions (not ``nn.Conv2d``) keep
    PyTorch's default. ``resnet*_unet`` and the ResUnet decoders use it.

    PyTorch's default (Kaiming uniform, a = sqrt(5)) draws weights sqrt(6) times smaller;
    in ``resnet34_unet``'s decoder that stalled learning on real MRI (benchmarks/README.md,
    "Real MRI learning benchmark"). Decoders built from these blocks can call this.
    """
    init_conv_bn(
        *modules,
        conv_init=lambda w: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"),
    )


def he_fan_in_init(*modules: nn.Module) -> None:
    """He's Gaussian, std sqrt(2 / fan_in), on every ``nn.Conv2d`` of ``modules`` (bias 0,
    BatchNorm 1 / 0): the U-Net paper's init (std sqrt(2 / N), N = k*k*C_in) and Keras'
    ``he_normal`` (UNet++'s official code) up to its truncation at two std."""
    init_conv_bn(
        *modules,
        conv_init=lambda w: nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu"),
    )


def init_conv_bn(*modules: nn.Module, conv_init: Callable[[torch.Tensor], object]) -> None:
    """``conv_init`` on the weight of every ``nn.Conv2d`` of ``modules`` (bias 0), and
    BatchNorm weight 1 and bias 0, in module order (the random draws are reproducible)."""
    for root in modules:
        for m in root.modules():
            if isinstance(m, nn.Conv2d):
                conv_init(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the centre ``size`` (H, W) of ``x`` (the U-Net paper's crop-and-concat)."""
    h, w = x.shape[-2:]
    th, tw = size
    top, left = (h - th) // 2, (w - tw) // 2
    return x[..., top : top + th, left : left + tw]


def match_size(x: torch.Tensor, size: tuple[int, int], *, crop: bool) -> torch.Tensor:
    """Bring ``x`` to spatial ``size``: centre crop (valid U-Net) or bilinear resize."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if crop:
        return center_crop(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class UpBlock(nn.Module):
    """Decoder step: up-sample by 2, concatenate the skip, double convolution.

    ``forward(x (N, in_channels, h, w), skip (N, skip_channels, H, W)) -> (N, out_channels, H, W)``
    where ``H, W`` are the skip's size ("same") or ``2h - 4, 2w - 4`` ("valid", the skip is
    centre-cropped to ``2h, 2w`` first).

    Args:
        in_channels: channels of the deeper input.
        skip_channels: channels of the encoder skip.
        out_channels: output channels.
        up_channels: channels after up-sampling (transposed convolution only; default
            ``out_channels``). Bilinear up-sampling keeps ``in_channels``.
        mid_channels: width of the double convolution's middle (default ``out_channels``).
        bilinear: bilinear up-sampling instead of a 2x2 transposed convolution.
        up_bias: bias of the transposed convolution (None = only without BatchNorm).
        upsample: ``"transpose"``, ``"bilinear"`` or ``"nearest"`` (smp's Unet decoder);
            None follows ``bilinear``. Interpolation keeps ``in_channels``.

    ``skip_channels=0`` builds a block without a skip (smp's last, full-resolution step);
    call it with ``skip=None``.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        *,
        up_channels: int | None = None,
        mid_channels: int | None = None,
        bilinear: bool = False,
        batch_norm: bool = True,
        bias: bool | None = None,
        up_bias: bool | None = None,
        padding: int = 1,
        upsample: str | None = None,
    ) -> None:
        super().__init__()
        mode = upsample or ("bilinear" if bilinear else "transpose")
        if mode not in ("transpose", "bilinear", "nearest"):
            raise ValueError(f"upsample must be transpose, bilinear or nearest, got {mode!r}")
        if mode == "bilinear":
            self.up: nn.Module = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            up_out = in_channels
        elif mode == "nearest":
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            up_out = in_channels
        else:
            up_out = up_channels or out_channels
            self.up = nn.ConvTranspose2d(
                in_channels,
                up_out,
                kernel_size=2,
                stride=2,
                bias=resolve_bias(up_bias if up_bias is not None else bias, batch_norm),
            )
        self.crop = padding == 0
        self.conv = DoubleConv(
            up_out + skip_channels,
            out_channels,
            mid_channels,
            batch_norm=batch_norm,
            bias=bias,
            padding=padding,
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if skip is None:
            return self.conv(x)
        if self.crop:
            skip = center_crop(skip, tuple(x.shape[-2:]))
        else:
            # Same padding on padded inputs gives equal sizes; resize only as a safety net.
            x = match_size(x, tuple(skip.shape[-2:]), crop=False)
        return self.conv(torch.cat([x, skip], dim=1))
