"""U-Net (Ronneberger et al., MICCAI 2015, arXiv:1505.04597) and its common variants.

One class, :class:`UNet`, registered under three configurations:

- ``unet``: widths 64-128-256-512-1024, 2x2 transposed-convolution up-sampling, BatchNorm
  and bias-free convolutions everywhere (31,036,672 parameters at 3 in / 1 class).
- ``unet_paper``: the paper's own network, no BatchNorm, biases (31,030,658 at 1 in /
  2 classes). Pass ``padding="valid"`` for the paper's unpadded tiling (572 -> 388).
- ``unet_selfreg``: the bilinear variant used by SelfReg-UNet (Rethinking UNet, MICCAI 2024),
  i.e. the widespread milesial/Pytorch-UNet layout (17,262,345 at 1 in / 9 classes):
  ``align_corners=True`` up-sampling and ``[skip, up]`` concatenation as its ``Up`` block,
  so released weights load through :func:`selfreg_official_state_dict`.

Feature taps (SelfReg distillation), the same for all three: the official ``UNet_hd``
returns ``encoder = [x2, x3, x4, x5]``, the outputs of ``down1..down4`` (128@112, 256@56,
512@28, 512@14 for ``unet_selfreg`` at 224 px; the first block ``inc`` is not tapped),
``decoder = [up1, up2, up3]`` and ``final = up4`` (the feature before the 1x1 head).

``padding="valid"`` gives a *smaller* output than the input, as in the paper: each 3x3
convolution trims one pixel per side and the skips are centre-cropped before
concatenation. ``model.output_size(572) == 388``; for any input the logits cover the centre
``output_size(H) x output_size(W)`` of the input. Same padding ("same", the default) keeps
H, W; inputs that are not multiples of 16 are padded and the logits cropped back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from unetzoo.errors import ModelError
from unetzoo.models.base import SegmentationModel, check_input
from unetzoo.models.blocks import (
    DoubleConv,
    UpBlock,
    center_crop,
    he_fan_in_init,
    kaiming_init,
    match_size,
    resolve_bias,
)
from unetzoo.models.registry import PublishedParams, Taps, register_model

#: Weight initialisations (see :class:`UNet`'s ``init``).
INITS = ("pytorch", "kaiming", "paper")
UNET_SOURCE = "Ronneberger, Fischer, Brox: U-Net, MICCAI 2015 (arXiv:1505.04597)"
# As the official SelfReg ``UNet_hd``: encoder = [x2, x3, x4, x5] (down1..down4).
UNET_TAPS = Taps(
    encoder=("down1", "down2", "down3", "down4"),
    decoder=("up1", "up2", "up3"),
    final="up4",
)


class UNetUp(UpBlock):
    """:class:`~unetzoo.models.blocks.UpBlock` with two layout options of the U-Net family.

    Args:
        align_corners: of the bilinear up-sampling (milesial/SelfReg ``Up``: True).
        skip_first: concatenate ``[skip, up]`` (milesial/SelfReg) instead of ``[up, skip]``.
            Same parameter count either way; it decides which input channels each
            weight of the next convolution reads, so released weights need the right one.
        *args, **kwargs: as :class:`UpBlock`.
    """

    def __init__(self, *args, align_corners: bool = False, skip_first: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if kwargs.get("bilinear"):
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=align_corners)
        self.skip_first = bool(skip_first)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if self.crop:
            skip = center_crop(skip, tuple(x.shape[-2:]))
        else:
            x = match_size(x, tuple(skip.shape[-2:]), crop=False)
        return self.conv(torch.cat([skip, x] if self.skip_first else [x, skip], dim=1))


class UNet(SegmentationModel):
    """U-Net: four down stages, a bottom stage and four up stages with skip connections.

    ``forward(x (N, in_channels, H, W)) -> logits (N, num_classes, H, W)`` ("same") or
    ``(N, num_classes, output_size(H), output_size(W))`` ("valid").

    Args:
        in_channels: input channels.
        num_classes: output channels of the 1x1 head.
        base_channels: width of the first stage (64 in the paper); stage i has
            ``base_channels * 2**i`` channels.
        padding: ``"same"`` (zero-padded 3x3 convolutions) or ``"valid"`` (unpadded, the
            paper's overlap-tile layout, with crop-and-concat).
        batch_norm: BatchNorm after every 3x3 convolution.
        bias: bias of the 3x3 and transposed convolutions; None = only without BatchNorm.
        head_bias: bias of the 1x1 head; None = same as ``bias``.
        bilinear: bilinear up-sampling instead of 2x2 transposed convolutions. Since it
            keeps the channel count, the bottom stage has ``8 * base_channels`` channels
            and each up block narrows ``in -> in/2 -> out`` (the milesial/SelfReg layout).
        init: weight initialisation of every 3x3 / 1x1 convolution (transposed ones keep
            PyTorch's): ``"pytorch"`` (PyTorch's default, as gyb357's default
            ``init_weights=False`` and milesial/SelfReg; the default of ``unet`` and
            ``unet_selfreg``), ``"kaiming"`` (Kaiming normal, fan-out, BatchNorm 1 / 0:
            gyb357's ``init_weights=True``) or ``"paper"`` (Gaussian with std sqrt(2 / N),
            N = the incoming connections k*k*C_in: the paper's, Section 3; the default of
            ``unet_paper``). Unlike ``resnet34_unet``'s decoder, ``unet`` did not learn
            faster on real MRI with He init (benchmarks/README.md, "Real MRI learning
            benchmark"), so it keeps its source's default.
        align_corners: ``align_corners`` of the bilinear up-sampling.
        skip_first: concatenate ``[skip, up]`` in the up blocks (else ``[up, skip]``).
    """

    fixed_input_size: int | None = None  # any size; padded to size_multiple

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        *,
        base_channels: int = 64,
        padding: str = "same",
        batch_norm: bool = True,
        bias: bool | None = None,
        head_bias: bool | None = None,
        bilinear: bool = False,
        align_corners: bool = False,
        skip_first: bool = False,
        init: str = "pytorch",
    ) -> None:
        super().__init__()
        if padding not in ("same", "valid"):
            raise ModelError(f"padding must be 'same' or 'valid', got {padding!r}")
        if init not in INITS:
            raise ModelError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        if int(base_channels) < 1:
            raise ModelError(f"base_channels must be >= 1, got {base_channels}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.padding = padding
        self.size_multiple = 16 if padding == "same" else 1
        pad = 1 if padding == "same" else 0
        b = int(base_channels)
        w = [b, 2 * b, 4 * b, 8 * b, 16 * b]
        bottom = w[4] // 2 if bilinear else w[4]
        conv = {"batch_norm": batch_norm, "bias": bias, "padding": pad}
        layout = {"align_corners": bool(align_corners), "skip_first": bool(skip_first)}

        self.inc = DoubleConv(in_channels, w[0], **conv)
        self.down1 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(w[0], w[1], **conv))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(w[1], w[2], **conv))
        self.down3 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(w[2], w[3], **conv))
        self.down4 = nn.Sequential(nn.MaxPool2d(2), DoubleConv(w[3], bottom, **conv))

        if bilinear:
            # (input channels after concat, output channels) per up block, deep to shallow.
            outs = [w[2], w[1], w[0], w[0]]
            ins = [bottom, outs[0], outs[1], outs[2]]
            self.up1, self.up2, self.up3, self.up4 = (
                UNetUp(
                    cin, skip, cout, mid_channels=(cin + skip) // 2, bilinear=True, **conv, **layout
                )
                for cin, skip, cout in zip(ins, [w[3], w[2], w[1], w[0]], outs)
            )
        else:
            self.up1 = UNetUp(w[4], w[3], w[3], **conv, **layout)
            self.up2 = UNetUp(w[3], w[2], w[2], **conv, **layout)
            self.up3 = UNetUp(w[2], w[1], w[1], **conv, **layout)
            self.up4 = UNetUp(w[1], w[0], w[0], **conv, **layout)
        hb = resolve_bias(bias, batch_norm) if head_bias is None else bool(head_bias)
        self.head = nn.Conv2d(w[0], num_classes, kernel_size=1, bias=hb)
        if init == "kaiming":
            kaiming_init(self)
        elif init == "paper":
            he_fan_in_init(self)

    def output_size(self, input_size: int | tuple[int, int]) -> int | tuple[int, int]:
        """Spatial output size for an input size (an int or an (H, W) pair).

        "same": the input size. "valid": each stage trims 4 pixels, pooling floors, each
        up-sampling doubles; 572 -> 388 as in the paper. Values < 1 mean "too small".
        """
        if isinstance(input_size, (tuple, list)):
            return tuple(self.output_size(int(s)) for s in input_size)  # type: ignore[return-value]
        s = int(input_size)
        if self.padding == "same":
            return s
        s -= 4
        for _ in range(4):
            s = s // 2 - 4
        for _ in range(4):
            s = 2 * s - 4
        return s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "same":
            return super().forward(x)
        check_input(x, self.in_channels, type(self).__name__)
        out_hw = self.output_size(tuple(x.shape[-2:]))
        if min(out_hw) < 1:  # type: ignore[arg-type]
            raise ModelError(
                f"input {tuple(x.shape[-2:])} is too small for a valid-padding U-Net "
                f"(output would be {out_hw}); use at least 188 x 188 or padding='same'"
            )
        return self.forward_padded(x)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        y = self.up1(x5, x4)
        y = self.up2(y, x3)
        y = self.up3(y, x2)
        y = self.up4(y, x1)
        return self.head(y)


# The class is its own builder: the registry reads UNet.__init__'s signature for defaults.
register_model(
    "unet",
    UNet,
    description="U-Net 64-1024, transposed-conv up-sampling, BatchNorm, bias-free convs",
    source=UNET_SOURCE,
    family="unet",
    taps=UNET_TAPS,
    aliases=("unet2015",),
    published=(
        PublishedParams(
            31_036_672,
            {"in_channels": 3, "num_classes": 1},
            "gyb357/UNet-Segmentation README (U-Net 31.04M); BatchNorm, bias-free convolutions",
        ),
    ),
)

register_model(
    "unet_paper",
    UNet,
    description="U-Net as in the paper: no BatchNorm, biases (padding='valid' for 572->388)",
    source=UNET_SOURCE,
    family="unet",
    defaults={"batch_norm": False, "init": "paper"},
    taps=UNET_TAPS,
    published=(
        PublishedParams(
            31_030_658,
            {"in_channels": 1, "num_classes": 2},
            "Ronneberger et al. 2015, Fig. 1 network (1 input channel, 2 classes)",
        ),
    ),
)

register_model(
    "unet_selfreg",
    UNet,
    description="bilinear U-Net of SelfReg-UNet (512 at the bottom, halved middle widths)",
    source="Rethinking UNet / SelfReg-UNet, MICCAI 2024 (arXiv:2406.14896); "
    "milesial/Pytorch-UNet layout",
    family="unet",
    defaults={"bilinear": True, "head_bias": True, "align_corners": True, "skip_first": True},
    taps=UNET_TAPS,
    aliases=("unet_bilinear",),
    published=(
        PublishedParams(
            17_262_345,
            {"in_channels": 1, "num_classes": 9},
            "SelfReg-UNet's U-Net for Synapse (BatchNorm, bias-free 3x3 convs, 1x1 head "
            "with bias; 1 input channel, 9 classes)",
        ),
    ),
)


# Official (milesial/SelfReg ``unet_parts``) module names -> ours. Both DoubleConvs are
# (conv, BN, ReLU) x 2, so the indices inside a double convolution agree.
_SELFREG_KEY_MAP = (
    (re.compile(r"^inc\.double_conv\."), "inc."),
    (re.compile(r"^(down\d)\.maxpool_conv\.1\.double_conv\."), r"\1.1."),
    (re.compile(r"^(up\d)\.conv\.double_conv\."), r"\1.conv."),
    (re.compile(r"^outc\.conv\."), "head."),
)


def selfreg_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a state dict of the official SelfReg ``UNet_hd`` / milesial ``UNet`` to ours.

    ``model = create_model("unet_selfreg", 1, 9)`` then
    ``model.load_state_dict(selfreg_official_state_dict(torch.load(path, weights_only=True)))``.
    A ``module.`` prefix (``nn.DataParallel``) is dropped. Keys that match no rule are
    kept as they are, so ``load_state_dict`` names them if the file is something else.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = key[len("module."):] if key.startswith("module.") else key
        for pattern, repl in _SELFREG_KEY_MAP:
            new, n = pattern.subn(repl, new)
            if n:
                break
        out[new] = value
    return out
