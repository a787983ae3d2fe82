"""ResUNet++ (Jha et al., IEEE ISM 2019, arXiv:1911.07067).

ResUNet with four additions: full pre-activation residual units, squeeze-and-excitation
after every encoder unit, an ASPP bridge (and an ASPP before the head), and attention
blocks that gate the decoder input with the matching encoder feature.

The layout follows the authors' official code (DebeshJha/ResUNetPlusPlus: the Keras
``m_resunet.py`` and its PyTorch twin ``resunet++_pytorch.py``), which define the same
network:

- widths 16-32-64-128 in the encoder, 256 in the bridge; three /2 steps (``size_multiple``
  8);
- stem: 3x3 conv -> BN -> ReLU -> 3x3 conv, plus a 1x1 conv + BN shortcut, then SE;
- residual unit: BN -> ReLU -> 3x3 conv (stride s) -> BN -> ReLU -> 3x3 conv, plus a
  1x1 conv (stride s) + BN shortcut, then SE (reduction 8, bias-free linear layers);
- ASPP: four 3x3 convolutions with dilation 1, 6, 12, 18, each followed by BN, summed,
  then a 1x1 convolution;
- attention block (encoder feature g, decoder feature x): BN-ReLU-3x3 conv on g then 2x2
  max-pool, plus BN-ReLU-3x3 conv on x, then BN-ReLU-3x3 conv; the result multiplies x
  element-wise (a per-channel, per-pixel gate);
- decoder step: attention, nearest 2x up-sampling, concatenation with g, residual unit;
- head: ASPP(32 -> 16), then a 1x1 convolution to the classes (the official code has one
  sigmoid output; here logits for ``num_classes``).

All convolutions carry a bias, as in the official code (Keras' and PyTorch's default).
At 3 input channels and 1 class the network has 4,062,993 trainable parameters, the
count of the official PyTorch file. Keras' ``model.summary()`` of ``m_resunet.py`` reports
4,070,385 "Total params": it also counts the BatchNorm moving mean and variance (7,392
values, 2 per BatchNorm channel) as non-trainable parameters; here they are buffers.

The PyTorch port rishikksh20/ResUnet (``core/res_unet_plus.py``) is a different, larger
network (widths 32-256, a 512-wide ASPP bridge, 3x3 shortcuts, a one-channel attention
map, SE reduction 16); it is not what this module reproduces.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unetzoo.errors import ModelError
from unetzoo.models.base import SegmentationModel
from unetzoo.models.registry import PublishedParams, Taps, register_model

RESUNETPP_SOURCE = (
    "Jha et al.: ResUNet++: An Advanced Architecture for Medical Image Segmentation, "
    "IEEE ISM 2019 (arXiv:1911.07067); official code DebeshJha/ResUNetPlusPlus"
)


class SqueezeExcite(nn.Module):
    """Channel gate: global average pool -> Linear(c, c/r) -> ReLU -> Linear -> sigmoid.

    ``(N, C, H, W) -> (N, C, H, W)``.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


class ResidualUnit(nn.Module):
    """Residual unit + SE; ``(N, in, H, W) -> (N, out, H/stride, W/stride)``.

    ``preactivation=True``: BN-ReLU-conv-BN-ReLU-conv (the encoder/decoder units).
    ``preactivation=False``: conv-BN-ReLU-conv (the stem, which sees the raw image).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        *,
        preactivation: bool = True,
        se_reduction: int = 8,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if preactivation:
            layers += [nn.BatchNorm2d(in_channels), nn.ReLU(inplace=False)]
        layers += [
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        ]
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride),
            nn.BatchNorm2d(out_channels),
        )
        self.se = SqueezeExcite(out_channels, se_reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(self.body(x) + self.shortcut(x))


class ASPP(nn.Module):
    """Atrous spatial pyramid: parallel dilated 3x3 conv + BN branches, summed, 1x1 conv.

    ``(N, in, H, W) -> (N, out, H, W)``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, rates: Sequence[int] = (1, 6, 12, 18)
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 3, padding=r, dilation=r),
                nn.BatchNorm2d(out_channels),
            )
            for r in rates
        )
        self.project = nn.Conv2d(out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.branches[0](x)
        for branch in self.branches[1:]:
            y = y + branch(x)
        return self.project(y)


class AttentionGate(nn.Module):
    """Gate the decoder feature x with the (twice finer) encoder feature g.

    ``forward(g (N, cg, 2h, 2w), x (N, cx, h, w)) -> (N, cx, h, w)``.
    """

    def __init__(self, g_channels: int, x_channels: int) -> None:
        super().__init__()
        self.g_conv = nn.Sequential(
            nn.BatchNorm2d(g_channels),
            nn.ReLU(inplace=False),
            nn.Conv2d(g_channels, x_channels, 3, padding=1),
            nn.MaxPool2d(2),
        )
        self.x_conv = nn.Sequential(
            nn.BatchNorm2d(x_channels),
            nn.ReLU(inplace=False),
            nn.Conv2d(x_channels, x_channels, 3, padding=1),
        )
        self.gc_conv = nn.Sequential(
            nn.BatchNorm2d(x_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(x_channels, x_channels, 3, padding=1),
        )

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.gc_conv(self.g_conv(g) + self.x_conv(x)) * x


class DecoderStep(nn.Module):
    """Attention gate, nearest 2x up-sampling, concatenation with g, residual unit.

    ``forward(g (N, cg, H, W), x (N, cx, H/2, W/2)) -> (N, out, H, W)``.
    """

    def __init__(
        self, g_channels: int, x_channels: int, out_channels: int, se_reduction: int = 8
    ) -> None:
        super().__init__()
        self.attention = AttentionGate(g_channels, x_channels)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.unit = ResidualUnit(
            x_channels + g_channels, out_channels, se_reduction=se_reduction
        )

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        d = self.up(self.attention(g, x))
        return self.unit(torch.cat([d, g], dim=1))


class ResUnetPlusPlus(SegmentationModel):
    """ResUNet++ (see the module docstring).

    ``forward(x (N, in_channels, H, W)) -> logits (N, num_classes, H, W)`` (any H, W;
    padded to a multiple of 8 internally).

    Args:
        in_channels: input channels (3 in the official code).
        num_classes: output channels (1 sigmoid map in the official code).
        widths: ``(stem, enc1, enc2, enc3, bridge)`` widths, default
            ``(16, 32, 64, 128, 256)``.
            The decoder mirrors them: 128, 64, 32, and the output ASPP has ``widths[0]``.
        se_reduction: squeeze-and-excitation reduction ratio (8).
        aspp_rates: dilation rates of the ASPP branches ((1, 6, 12, 18)).
    """

    size_multiple = 8

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        *,
        widths: Sequence[int] = (16, 32, 64, 128, 256),
        se_reduction: int = 8,
        aspp_rates: Sequence[int] = (1, 6, 12, 18),
    ) -> None:
        super().__init__()
        w = [int(v) for v in widths]
        if len(w) != 5 or min(w) < 1:
            raise ModelError(
                f"widths must be five positive ints (stem, enc1, enc2, enc3, bridge), got "
                f"{tuple(widths)}"
            )
        if int(se_reduction) < 1 or not aspp_rates or min(int(r) for r in aspp_rates) < 1:
            raise ModelError(
                f"se_reduction and aspp_rates must be >= 1, got {se_reduction}, "
                f"{tuple(aspp_rates)}"
            )
        r = int(se_reduction)
        rates = tuple(int(v) for v in aspp_rates)
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.stem = ResidualUnit(self.in_channels, w[0], preactivation=False, se_reduction=r)
        self.enc1 = ResidualUnit(w[0], w[1], stride=2, se_reduction=r)
        self.enc2 = ResidualUnit(w[1], w[2], stride=2, se_reduction=r)
        self.enc3 = ResidualUnit(w[2], w[3], stride=2, se_reduction=r)
        self.bridge = ASPP(w[3], w[4], rates)
        self.dec1 = DecoderStep(w[2], w[4], w[3], r)
        self.dec2 = DecoderStep(w[1], w[3], w[2], r)
        self.dec3 = DecoderStep(w[0], w[2], w[1], r)
        self.aspp_out = ASPP(w[1], w[0], rates)
        self.head = nn.Conv2d(w[0], self.num_classes, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        c1 = self.stem(x)
        c2 = self.enc1(c1)
        c3 = self.enc2(c2)
        c4 = self.enc3(c3)
        b = self.bridge(c4)
        d = self.dec1(c3, b)
        d = self.dec2(c2, d)
        d = self.dec3(c1, d)
        return self.head(self.aspp_out(d))


#: Trainable parameters of the official ResUNet++ (3 input channels, 1 output map).
OFFICIAL_PARAMS = 4_062_993
#: Keras' "Total params" of the official m_resunet.py: trainable + BN moving statistics.
OFFICIAL_KERAS_TOTAL = 4_070_385

register_model(
    "resunetpp",
    ResUnetPlusPlus,  # the class is its own builder (defaults from __init__)
    description="ResUNet++: residual units + SE, ASPP bridge and output, attention-gated "
    "decoder (widths 16-256, official DebeshJha layout)",
    source=RESUNETPP_SOURCE,
    taps=Taps(
        encoder=("stem", "enc1", "enc2", "enc3"),
        decoder=("dec1", "dec2", "dec3"),
        final="aspp_out",
    ),
    aliases=("resunet++",),
    published=(
        PublishedParams(
            OFFICIAL_PARAMS,
            {"in_channels": 3, "num_classes": 1},
            "DebeshJha/ResUNetPlusPlus resunet++_pytorch.py (= m_resunet.py trainable "
            "params; Keras' total 4,070,385 adds 7,392 BatchNorm moving statistics)",
        ),
    ),
    family="resunetpp",
)
