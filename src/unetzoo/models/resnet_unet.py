"""U-Net with a torchvision ResNet encoder (the gyb357/UNet-Segmentation ResUNet layout).

Encoder: :class:`~unetzoo.models.encoders.ResNetEncoder` -- stem (/2), layer1 (/4),
layer2 (/8), layer3 (/16), layer4 (/32). Decoder: four :class:`UpBlock` steps (2x2
transposed convolution to the block width, concatenate the encoder skip, double 3x3
convolution with BatchNorm; bias-free) of widths 512-256-128-64, fed by layer4 and the
layer3 / layer2 / layer1 / stem skips. Head: a 2x2 transposed convolution 64 -> 32 back
to full resolution, ReLU, and a bias-free 1x1 convolution to the classes.

Parameter counts at 3 input channels and 1 class reproduce the seed's table exactly:
resnet18 20,777,344; resnet34 30,885,504; resnet50 40,899,456; resnet101 59,891,584;
resnet152 75,535,232.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from unetzoo.errors import ModelError
from unetzoo.models.base import SegmentationModel
from unetzoo.models.blocks import UpBlock
from unetzoo.models.encoders import ResNetEncoder, parse_resnet_name
from unetzoo.models.registry import PublishedParams, Taps, register_model

SEED_SOURCE = "gyb357/UNet-Segmentation (ResUNet18..152 table); He et al. 2016 ResNet encoders"
RESNET_UNET_TAPS = Taps(
    encoder=("encoder.stem", "encoder.layer1", "encoder.layer2", "encoder.layer3"),
    decoder=("decoder.0", "decoder.1", "decoder.2"),
    final="decoder.3",
)
PUBLISHED = {
    18: 20_777_344,
    34: 30_885_504,
    50: 40_899_456,
    101: 59_891_584,
    152: 75_535_232,
}


class ResNetUNet(SegmentationModel):
    """ResNet encoder + U-Net decoder.

    ``forward(x (N, in_channels, H, W)) -> logits (N, num_classes, H, W)``; H, W that are
    not multiples of 32 are padded and cropped back.

    Args:
        in_channels: input channels (conv1 is adapted; see ResNetEncoder).
        num_classes: output channels.
        encoder: ``"resnet18"`` ... ``"resnet152"``.
        encoder_weights: None, ``"imagenet"`` or a local torchvision checkpoint path.
        decoder_channels: widths of the four decoder blocks, deep to shallow.
        freeze_encoder: set ``requires_grad=False`` on every encoder parameter.
    """

    fixed_input_size: int | None = None  # any size; padded to size_multiple

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        *,
        encoder: str = "resnet34",
        encoder_weights: str | Path | None = None,
        decoder_channels: tuple[int, ...] = (512, 256, 128, 64),
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__()
        dec = tuple(int(c) for c in decoder_channels)
        if len(dec) != 4 or min(dec) < 1:
            raise ModelError(f"decoder_channels needs 4 positive widths, got {decoder_channels}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.encoder = ResNetEncoder(
            parse_resnet_name(encoder), in_channels, weights=encoder_weights
        )
        self.size_multiple = self.encoder.reductions[-1]
        ch = self.encoder.channels
        skips = [ch[3], ch[2], ch[1], ch[0]]
        ins = [ch[4], *dec[:3]]
        self.decoder = nn.ModuleList(
            UpBlock(cin, skip, cout, batch_norm=True, bias=False)
            for cin, skip, cout in zip(ins, skips, dec)
        )
        head_mid = max(dec[3] // 2, 1)
        self.head = nn.Sequential(
            nn.ConvTranspose2d(dec[3], head_mid, kernel_size=2, stride=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(head_mid, num_classes, kernel_size=1, bias=False),
        )
        if freeze_encoder:
            self.encoder.requires_grad_(False)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        f0, f1, f2, f3, f4 = self.encoder(x)
        y = f4
        for block, skip in zip(self.decoder, (f3, f2, f1, f0)):
            y = block(y, skip)
        return self.head(y)


def _build_resnet_unet(
    in_channels: int = 1,
    num_classes: int = 2,
    encoder: str = "resnet34",
    encoder_weights: str | None = None,
    decoder_channels: tuple[int, ...] = (512, 256, 128, 64),
    freeze_encoder: bool = False,
) -> ResNetUNet:
    return ResNetUNet(
        in_channels,
        num_classes,
        encoder=encoder,
        encoder_weights=encoder_weights,
        decoder_channels=decoder_channels,
        freeze_encoder=freeze_encoder,
    )


for _depth, _count in PUBLISHED.items():
    register_model(
        f"resnet{_depth}_unet",
        _build_resnet_unet,
        description=f"U-Net decoder 512-256-128-64 on a torchvision ResNet-{_depth} encoder",
        source=SEED_SOURCE,
        family="resnet_unet",
        defaults={"encoder": f"resnet{_depth}"},
        taps=RESNET_UNET_TAPS,
        aliases=(f"unet_resnet{_depth}",),
        published=(
            PublishedParams(
                _count,
                {"in_channels": 3, "num_classes": 1},
                f"gyb357/UNet-Segmentation README, ResUNet{_depth}",
            ),
        ),
    )
