"""U-Net with a torchvision ResNet encoder (the gyb357/UNet-Segmentation ResUNet layout).

Encoder: :class:`~unetzoo.models.encoders.ResNetEncoder` -- stem (/2), layer1 (/4),
layer2 (/8), layer3 (/16), layer4 (/32). Decoder (``decoder="gyb357"``, the default): four
:class:`UpBlock` steps (2x2 transposed convolution to the block width, concatenate the
encoder skip, double 3x3 convolution with BatchNorm; bias-free) of widths 512-256-128-64,
fed by layer4 and the layer3 / layer2 / layer1 / stem skips. Head, as gyb357's
``OutputBlock``: a 2x2 transposed convolution 64 -> 32 (with bias) back to full resolution
and a bias-free 1x1 convolution to the classes, with nothing between them.

Deviations from the official code, each switchable (docs/unets.md has the table):

- ``shortcuts="torchvision"`` (default): torchvision's residual blocks, identity shortcut in
  every block. gyb357's blocks add the residual only where a downsample projection exists
  (a bug: layer1 of ResNet-18/34 and every non-first block have no shortcut at all);
  ``shortcuts="gyb357"`` reproduces it. The default is the deviation because ImageNet
  weights are trained with true shortcuts.
- ``init="kaiming"`` (default): gyb357's own ``init_weights=True`` switch -- Kaiming
  normal (fan-out, ReLU) on the decoder's and head's ``Conv2d``, BN 1/0 (transposed
  convolutions keep PyTorch's default); the encoder keeps torchvision's init. gyb357's
  default is ``init_weights=False``: ``init="pytorch"`` (PyTorch's defaults in decoder and
  head; the seed's behaviour), ``init="gyb357"`` (PyTorch's defaults in the encoder too, as
  gyb357's own ResNet). Measured on real MRI (benchmarks/README.md "Real MRI learning
  benchmark"): with PyTorch's default decoder init ``resnet34_unet`` learned 1 of 12
  classes in 196 iterations (mean Dice 0.05, training loss stuck at 0.60) where
  ``init="kaiming"`` learned 11 (0.41, as smp.Unet's 0.40): the default is this named
  deviation from gyb357's default, not from its code. ``init="smp"`` is smp's decoder init
  (Kaiming uniform fan-in, BN 1/0, Xavier head).
- ``head_relu=True`` restores the seed's extra ReLU between the head's transposed
  convolution and its bias-free classifier (not in gyb357; it slowed learning on real MRI,
  see benchmarks/README.md "Real MRI learning benchmark").
- ``decoder="smp"``: smp's Unet decoder instead (widths 256-128-64-32-16, nearest 2x
  up-sampling + two conv-BN-ReLU per step, a fifth step to full resolution without a skip,
  a 3x3 classifier with bias, smp's init): the same encoder with smp's decoder, for
  like-for-like comparisons with ``smp.Unet("resnet34")``. Not a published configuration.

Parameter counts at 3 input channels and 1 class reproduce the seed's table exactly:
resnet18 20,777,344; resnet34 30,885,504; resnet50 40,899,456; resnet101 59,891,584;
resnet152 75,535,232.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from unetzoo.errors import ModelError
from unetzoo.models.base import SegmentationModel
from unetzoo.models.blocks import UpBlock, init_conv_bn, kaiming_init
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


DECODERS = ("gyb357", "smp")
SHORTCUTS = ("torchvision", "gyb357")
INITS = ("kaiming", "pytorch", "gyb357", "smp")
SMP_DECODER_CHANNELS = (256, 128, 64, 32, 16)
GYB357_DECODER_CHANNELS = (512, 256, 128, 64)


class _ProjectionOnlyBasicBlock(torchvision.models.resnet.BasicBlock):
    """gyb357's ``Bottleneck2Conv``: the residual is added only where a downsample exists."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.downsample is not None:
            out = out + self.downsample(x)
        return self.relu(out)


class _ProjectionOnlyBottleneck(torchvision.models.resnet.Bottleneck):
    """gyb357's ``Bottleneck3Conv``: the residual is added only where a downsample exists."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            out = out + self.downsample(x)
        return self.relu(out)


def use_gyb357_shortcuts(encoder: ResNetEncoder) -> None:
    """Switch every residual block of ``encoder`` to gyb357's projection-only shortcut.

    Same parameters and state-dict keys; only ``forward`` changes (class swap in place).
    """
    swap = {
        torchvision.models.resnet.BasicBlock: _ProjectionOnlyBasicBlock,
        torchvision.models.resnet.Bottleneck: _ProjectionOnlyBottleneck,
    }
    for module in encoder.modules():
        if type(module) in swap:
            module.__class__ = swap[type(module)]


def init_smp(decoder: nn.Module, head: nn.Module) -> None:
    """smp's ``initialize_decoder`` / ``initialize_head`` (segmentation_models_pytorch.base)."""
    init_conv_bn(
        decoder,
        conv_init=lambda w: nn.init.kaiming_uniform_(w, mode="fan_in", nonlinearity="relu"),
    )
    init_conv_bn(head, conv_init=nn.init.xavier_uniform_)


class ResNetUNet(SegmentationModel):
    """ResNet encoder + U-Net decoder.

    ``forward(x (N, in_channels, H, W)) -> logits (N, num_classes, H, W)``; H, W that are
    not multiples of 32 are padded and cropped back.

    Args:
        in_channels: input channels (conv1 is adapted; see ResNetEncoder).
        num_classes: output channels.
        encoder: ``"resnet18"`` ... ``"resnet152"``.
        encoder_weights: None, ``"imagenet"`` or a local torchvision checkpoint path.
        decoder_channels: widths of the decoder blocks, deep to shallow (default 512-256-
            128-64 for ``decoder="gyb357"``, 256-128-64-32-16 for ``decoder="smp"``).
        freeze_encoder: set ``requires_grad=False`` on every encoder parameter.
        decoder: ``"gyb357"`` (published) or ``"smp"`` (see the module docstring).
        head_relu: the seed's extra ReLU inside the gyb357 head (off: as published).
        shortcuts: ``"torchvision"`` (identity shortcuts) or ``"gyb357"`` (projection only).
        init: ``"kaiming"``, ``"pytorch"``, ``"gyb357"`` or ``"smp"`` (module docstring).
    """

    fixed_input_size: int | None = None  # any size; padded to size_multiple

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        *,
        encoder: str = "resnet34",
        encoder_weights: str | Path | None = None,
        decoder_channels: tuple[int, ...] | None = None,
        freeze_encoder: bool = False,
        decoder: str = "gyb357",
        head_relu: bool = False,
        shortcuts: str = "torchvision",
        init: str = "kaiming",
    ) -> None:
        super().__init__()
        for label, value, valid in (
            ("decoder", decoder, DECODERS),
            ("shortcuts", shortcuts, SHORTCUTS),
            ("init", init, INITS),
        ):
            if value not in valid:
                raise ModelError(f"{label} must be one of {', '.join(valid)}; got {value!r}")
        if decoder_channels is None:
            decoder_channels = SMP_DECODER_CHANNELS if decoder == "smp" else GYB357_DECODER_CHANNELS
        dec = tuple(int(c) for c in decoder_channels)
        n_blocks = 5 if decoder == "smp" else 4
        if len(dec) != n_blocks or min(dec) < 1:
            raise ModelError(
                f"decoder_channels needs {n_blocks} positive widths for decoder={decoder!r}, "
                f"got {decoder_channels}"
            )
        if head_relu and decoder != "gyb357":
            raise ModelError("head_relu applies to decoder='gyb357' only")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.encoder = ResNetEncoder(
            parse_resnet_name(encoder), in_channels, weights=encoder_weights
        )
        if init == "gyb357" and encoder_weights is None:
            # gyb357's ResNet(init_weights=False): PyTorch's default init, not torchvision's.
            for m in self.encoder.modules():
                if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
                    m.reset_parameters()
        if shortcuts == "gyb357":
            use_gyb357_shortcuts(self.encoder)
        self.size_multiple = self.encoder.reductions[-1]
        ch = self.encoder.channels
        skips = [ch[3], ch[2], ch[1], ch[0]]
        if decoder == "smp":
            ins = [ch[4], *dec[:4]]
            self.decoder = nn.ModuleList(
                UpBlock(cin, skip, cout, batch_norm=True, bias=False, upsample="nearest")
                for cin, skip, cout in zip(ins, [*skips, 0], dec)
            )
            self.head = nn.Sequential(nn.Conv2d(dec[4], num_classes, kernel_size=3, padding=1))
        else:
            ins = [ch[4], *dec[:3]]
            self.decoder = nn.ModuleList(
                UpBlock(cin, skip, cout, batch_norm=True, bias=False)
                for cin, skip, cout in zip(ins, skips, dec)
            )
            head_mid = max(dec[3] // 2, 1)
            layers: list[nn.Module] = [
                nn.ConvTranspose2d(dec[3], head_mid, kernel_size=2, stride=2)
            ]
            if head_relu:
                layers.append(nn.ReLU(inplace=True))
            layers.append(nn.Conv2d(head_mid, num_classes, kernel_size=1, bias=False))
            self.head = nn.Sequential(*layers)
        if init == "smp" or decoder == "smp":
            init_smp(self.decoder, self.head)
        elif init == "kaiming":
            kaiming_init(self.decoder, self.head)
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        self.head_relu = head_relu
        self._register_load_state_dict_pre_hook(_adopt_seed_head, with_module=True)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        f0, f1, f2, f3, f4 = self.encoder(x)
        y = f4
        for block, skip in zip(self.decoder, (f3, f2, f1, f0, None)):
            y = block(y, skip)
        return self.head(y)


def _adopt_seed_head(module: ResNetUNet, state_dict, prefix: str, *args: Any) -> None:
    """Load weights saved with the seed's head (``head.2`` = classifier after a ReLU).

    Checkpoints written before the head followed gyb357 hold ``head.0`` and ``head.2``;
    the model takes that head back (ReLU included), so they keep their exact function
    instead of failing on a key mismatch or silently losing the ReLU.
    """
    seed_layout = f"{prefix}head.2.weight" in state_dict and f"{prefix}head.1.weight" not in state_dict
    if seed_layout and not module.head_relu and len(module.head) == 2:
        up, cls = module.head
        module.head = nn.Sequential(up, nn.ReLU(inplace=True), cls)
        module.head_relu = True
        options = getattr(module, "unetzoo_options", None)
        if isinstance(options, dict):
            options["head_relu"] = True


# The class is its own builder: the registry reads ResNetUNet.__init__ for the options;
# each depth is a registration whose only default is its encoder.
for _depth, _count in PUBLISHED.items():
    register_model(
        f"resnet{_depth}_unet",
        ResNetUNet,
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
