"""ResUnet (Pipaup/ResUnet): a ResNet-34 U-Net and its ablation ladder v0.1 -> v1.0.

One class, :class:`ResUnet`, whose options are the paper's changes; each rung of the
ladder is a registry entry over it (``resunet_v0_1`` ... ``resunet_v1_0``; ``resunet`` is
an alias of ``resunet_v1_0``):

====  ==========================  ===================================================
rung  paper role                  options (cumulative unless noted)
====  ==========================  ===================================================
v0.1  baseline Res34-UNet         ResNet-34, random init, stem 7x7/2 + max-pool,
                                  skips from all five scales, "fuse then compress"
v0.2  training configuration      + ``encoder_weights="imagenet"`` (same network)
v0.3  improvement 1               ``stem_maxpool=False``: stem /2 instead of /4,
                                  deepest feature /16 instead of /32
v0.4  improvement 2               ``layer1_skip=False``: layer1 no longer feeds the
                                  decoder (its fusion stage is removed)
v0.5  improvement 3a              ``bottleneck=True``: two 3x3 Conv+BN+ReLU at the
                                  encoder tail take over from layer4
v0.6  improvement 3b              ``preserve_layer3=True``: layer3 fusion 768 -> 512
v0.7  unused branch               v0.6 with ``layer1_skip=True`` again
v1.0  improvement 3c, final       ``preserve_up2=True``: up2 keeps 384 channels
====  ==========================  ===================================================

The seed repository's model files are not available to us, so the layout below is
derived from the figures its README gives, and every figure is met by the plan.

Channel plan (derivation)
-------------------------
Figures: ResNet-34 encoder; max-pool removed (16x maximum down-sampling); layer1 skip
dropped; a two-convolution bottleneck at the encoder tail; layer3 fusion 768 -> 512
(instead of 768 -> 256); up2 384 -> 384 (instead of 384 -> 192); only 3x3 Conv+BN+ReLU in
the new parts; 21.3M parameters.

1. The 21.3M total excludes layer4. Stem + layer1..layer4 of ResNet-34 already have
   21.28M parameters (21,278,400 with a 1-channel stem), and a 768 -> 512 3x3 fusion alone
   adds 3.54M, so v1.0 cannot contain layer4. Stem + layer1..layer3 have 8,164,032
   parameters; the remaining ~13.1M are bottleneck + decoder.
2. The bottleneck is the 16x level of v1.0: 3x3/2 Conv(256 -> 512)+BN+ReLU and 3x3
   Conv(512 -> 512)+BN+ReLU (3,540,992 parameters). Its 512 channels concatenated with
   layer3's 256 give the seed's 768 (= 512 + 256). It therefore replaces layer4 in v0.5
   (the only rung that touches the encoder tail); its output has layer4's width and
   stride, so the decoder is unchanged between v0.4 and v0.5.
3. Decoder stage = bilinear up-sampling of the deeper feature to the skip's size,
   concatenation, then two 3x3 Conv+BN+ReLU (``cat -> w`` "fuse", ``w -> w`` "refine").
   Baseline widths w = 256 (layer3), 192 (layer2), 128 (layer1), 64 (stem): the layer3
   fusion is 768 -> 256 and the layer2 fusion is (256 + 128 =) 384 -> 192, the seed's
   baseline figures. The stage output keeps w, which is what "layer3 keeps 512 channels"
   and "up2 keeps its channels" change: v0.6 sets the layer3 width to 512 (768 -> 512 ->
   512), v1.0 the layer2 ("up2") width to 384 (its refine convolution is the seed's
   384 -> 384; its fuse input is 512 + 128 = 640 because layer3 now keeps 512).
4. With these widths v1.0 has 8,164,032 (encoder) + 3,540,992 (bottleneck) +
   5,900,288 (layer3 stage) + 3,540,480 (layer2 stage) + 295,168 (stem stage) +
   585 (1x1 head) = 21,441,545 parameters for 1 input channel and 9 classes: 21.4M,
   0.7% above the quoted 21.3M. A plan that keeps every stage's output at the
   "compressed" width (768 -> 512 -> 256, 384 -> 384 -> 128) would read the seed's
   numbers even more literally but totals 18.4M (-14%), so the quoted count implies that
   the preserved widths carry through each stage.

The stem feature: in v0.3+ the stem output and layer1 both sit at /2. Without the layer1
skip (v0.4+) the stem feature stays as the decoder's only /2 skip (one 7x7 convolution
deep, it is the last full-detail cue; only layer1's residual output is dropped, the
feature the seed calls noise-contaminated). The layer1 stage is removed with its skip,
so the stem stage fuses the layer2 stage's output directly.

The 1x1 head is applied at /2 and the logits are up-sampled bilinearly (identical to
up-sampling the feature first, since a 1x1 convolution and bilinear interpolation
commute, but 4x cheaper).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unetzoo.errors import CheckpointError, ModelError
from unetzoo.models.base import SegmentationModel
from unetzoo.models.blocks import DoubleConv, kaiming_init, match_size
from unetzoo.models.encoders import (
    ResNetEncoder,
    feature_taps,
    imagenet_source,
    parse_resnet_name,
)
from unetzoo.models.registry import PublishedParams, Taps, register_model

RESUNET_SOURCE = (
    "Pipaup/ResUnet (ResUnet: Fixing ResNet's Adaptation Defects for Medical Image "
    "Segmentation, master's thesis, Shaoxing University, 2026)"
)

#: Stage widths of the baseline decoder (layer3, layer2, layer1, stem stages).
BASE_WIDTHS = {"layer3": 256, "layer2": 192, "layer1": 128, "stem": 64}
#: Widths the channel-preserving rungs use instead.
PRESERVED_WIDTHS = {"layer3": 512, "layer2": 384}
BOTTLENECK_WIDTH = 512


def _scaled(width: int, scale: float) -> int:
    return max(1, int(round(width * scale)))


class FusionStage(nn.Module):
    """One decoder stage: resize the deeper feature to the skip, concatenate, two convs.

    ``forward(x (N, in_channels, h, w), skip (N, skip_channels, H, W)) -> (N, width, H, W)``.
    ``skip_channels=0`` makes it a plain refinement stage (``skip`` must then be None and
    the output keeps ``x``'s size).
    """

    def __init__(self, in_channels: int, skip_channels: int, width: int) -> None:
        super().__init__()
        self.skip_channels = skip_channels
        # DoubleConv: 3x3 Conv(cat -> width)+BN+ReLU, 3x3 Conv(width -> width)+BN+ReLU.
        self.conv = DoubleConv(in_channels + skip_channels, width)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        if skip is not None:
            x = torch.cat([match_size(x, tuple(skip.shape[-2:]), crop=False), skip], dim=1)
        return self.conv(x)


class Bottleneck(nn.Sequential):
    """Encoder tail of v0.5+: 3x3/2 Conv+BN+ReLU then 3x3 Conv+BN+ReLU.

    ``(N, in_channels, H, W) -> (N, width, ceil(H/2), ceil(W/2))``.
    """

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )


def _building_on_meta() -> bool:
    # parameter_count() builds under `with torch.device("meta")`; weights are irrelevant
    # there and loading them would download.
    return torch.empty(0).device.type == "meta"


class ResUnet(SegmentationModel):
    """ResNet U-Net with the ResUnet ablation switches (see the module docstring).

    ``forward(x (N, in_channels, H, W)) -> logits (N, num_classes, H, W)``; H and W need
    not be multiples of the total stride (inputs are padded to ``size_multiple`` and the
    logits cropped back).

    Args:
        in_channels: input channels (the pretrained conv1 is adapted, see encoders.py).
        num_classes: output channels.
        encoder: ``"resnet34"`` (the paper) or another basic-block ResNet depth
            (``"resnet18"``, for quick tests).
        encoder_weights: None (random init), ``"imagenet"`` or a path to a torchvision
            ResNet checkpoint; loaded through :class:`ResNetEncoder`. Skipped when the
            model is built on the meta device (parameter counting). Offline, a rung
            whose default is ``"imagenet"`` fails with one line naming
            ``encoder_weights=none`` (the string is accepted for None by the registry).
        stem_maxpool: keep the stem's 3x3/2 max-pool (v0.1, v0.2).
        layer1_skip: fuse layer1's feature in the decoder (v0.1-v0.3, v0.7).
        bottleneck: replace layer4 with the two-convolution bottleneck (v0.5+).
        preserve_layer3: layer3 fusion stage width 512 instead of 256 (v0.6+).
        preserve_up2: layer2 ("up2") stage width 384 instead of 192 (v1.0).
        width_scale: multiplies every decoder and bottleneck width (1.0 = the paper;
            smaller values are for fast tests). The encoder is unaffected.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 9,
        *,
        encoder: str = "resnet34",
        encoder_weights: str | Path | None = None,
        stem_maxpool: bool = True,
        layer1_skip: bool = True,
        bottleneck: bool = False,
        preserve_layer3: bool = False,
        preserve_up2: bool = False,
        width_scale: float = 1.0,
    ) -> None:
        super().__init__()
        depth = parse_resnet_name(encoder)
        if depth >= 50:
            raise ModelError(
                f"ResUnet is defined on basic-block ResNets; encoder={encoder!r} is a "
                "bottleneck ResNet; use resnet18 or resnet34"
            )
        if not float(width_scale) > 0:
            raise ModelError(f"width_scale must be > 0, got {width_scale}")
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.layer1_skip = bool(layer1_skip)
        self.use_bottleneck = bool(bottleneck)
        if _building_on_meta():
            encoder_weights = None
        try:
            self.encoder = ResNetEncoder(
                depth, self.in_channels, weights=encoder_weights, stem_maxpool=bool(stem_maxpool)
            )
        except CheckpointError as exc:
            if not (isinstance(encoder_weights, str) and encoder_weights.lower() == "imagenet"):
                raise
            # Offline: say how to build the same network without the download, in one line.
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CheckpointError(
                f"{first}; or build with random init: --model-option encoder_weights=none "
                "(encoder_weights=None in Python)"
            ) from None
        c_stem, c1, c2, c3, c4 = self.encoder.channels
        s = float(width_scale)
        if self.use_bottleneck:
            # The two-conv tail takes over layer4's role (same /2 step, see docstring).
            self.encoder.layer4 = nn.Identity()
            c4 = _scaled(BOTTLENECK_WIDTH, s)
            self.bottleneck = Bottleneck(c3, c4)
        widths = dict(BASE_WIDTHS)
        if preserve_layer3:
            widths["layer3"] = PRESERVED_WIDTHS["layer3"]
        if preserve_up2:
            widths["layer2"] = PRESERVED_WIDTHS["layer2"]
        w = {k: _scaled(v, s) for k, v in widths.items()}
        self.widths = w
        self.dec3 = FusionStage(c4, c3, w["layer3"])
        self.dec2 = FusionStage(w["layer3"], c2, w["layer2"])
        prev = w["layer2"]
        if self.layer1_skip:
            self.dec1 = FusionStage(prev, c1, w["layer1"])
            prev = w["layer1"]
        self.dec0 = FusionStage(prev, c_stem, w["stem"])
        self.head = nn.Conv2d(w["stem"], self.num_classes, kernel_size=1)
        self.size_multiple = 16 if not stem_maxpool else 32
        # Everything but the encoder (torchvision's own init, or the loaded weights).
        kaiming_init(*(m for name, m in self.named_children() if name != "encoder"))

    def taps(self) -> Taps:
        """Encoder block outputs, decoder stage outputs (deep to shallow), final feature."""
        tail = "bottleneck" if self.use_bottleneck else "encoder.layer4"
        decoder = ("dec3", "dec2", "dec1") if self.layer1_skip else ("dec3", "dec2")
        return Taps(
            encoder=(*feature_taps(self.encoder), tail),
            decoder=decoder,
            final="dec0",
        )

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        f_stem, f1, f2, f3, f4 = self.encoder(x)
        if self.use_bottleneck:
            f4 = self.bottleneck(f3)  # encoder.layer4 is an identity here
        y = self.dec3(f4, f3)
        y = self.dec2(y, f2)
        if self.layer1_skip:
            y = self.dec1(y, f1)
        y = self.dec0(y, f_stem)
        logits = self.head(y)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _taps(model: nn.Module) -> Taps:
    if not isinstance(model, ResUnet):
        raise ModelError(f"resunet taps need a ResUnet, got {type(model).__name__}")
    return model.taps()


#: ``encoder_weights="imagenet"`` of the registered encoder (ResNet-34): torchvision's
#: IMAGENET1K_V1 file in the torch hub cache, hash-checked and read without unpickling.
IMAGENET_RESNET34 = imagenet_source(34)


#: The ladder: (rung name, options over the baseline, role, what the rung changes).
LADDER: tuple[tuple[str, dict, str, str], ...] = (
    (
        "resunet_v0_1",
        {},
        "baseline",
        "Res34-UNet: ResNet-34 without pretraining, full stem (7x7/2 conv + max-pool), "
        "skips from all five scales, fuse-then-compress decoder (768->256, 384->192)",
    ),
    (
        "resunet_v0_2",
        {"encoder_weights": "imagenet"},
        "training configuration (not an architecture change)",
        "v0.1 with the ImageNet-pretrained ResNet-34 encoder",
    ),
    (
        "resunet_v0_3",
        {"encoder_weights": "imagenet", "stem_maxpool": False},
        "improvement 1 (resolution preservation)",
        "v0.2 without the stem max-pool: stem down-samples 2x instead of 4x, deepest "
        "feature at 16x instead of 32x",
    ),
    (
        "resunet_v0_4",
        {"encoder_weights": "imagenet", "stem_maxpool": False, "layer1_skip": False},
        "improvement 2 (hierarchical feature selection)",
        "v0.3 without the layer1 skip: the decoder fuses the layer4/layer3/layer2 features "
        "and the stem feature; the layer1 fusion stage is removed",
    ),
    (
        "resunet_v0_5",
        {
            "encoder_weights": "imagenet",
            "stem_maxpool": False,
            "layer1_skip": False,
            "bottleneck": True,
        },
        "improvement 3a (bottleneck enhancement)",
        "v0.4 with two 3x3 Conv+BN+ReLU (256->512/2, 512->512) at the encoder tail in "
        "place of layer4",
    ),
    (
        "resunet_v0_6",
        {
            "encoder_weights": "imagenet",
            "stem_maxpool": False,
            "layer1_skip": False,
            "bottleneck": True,
            "preserve_layer3": True,
        },
        "improvement 3b (channel-preserving fusion)",
        "v0.5 whose layer3 fusion keeps 512 channels (768->512 instead of 768->256)",
    ),
    (
        "resunet_v0_7",
        {
            "encoder_weights": "imagenet",
            "stem_maxpool": False,
            "layer1_skip": True,
            "bottleneck": True,
            "preserve_layer3": True,
        },
        "unused branch (kept for reference)",
        "v0.6 with the layer1 skip re-introduced (the opposite of improvement 2)",
    ),
    (
        "resunet_v1_0",
        {
            "encoder_weights": "imagenet",
            "stem_maxpool": False,
            "layer1_skip": False,
            "bottleneck": True,
            "preserve_layer3": True,
            "preserve_up2": True,
        },
        "final model, improvement 3c (channel-preserving up-sampling)",
        "v0.6 whose up2 keeps its channels (384->384 instead of 384->192): all changes",
    ),
)

LADDER_NAMES: tuple[str, ...] = tuple(name for name, *_ in LADDER)

for _name, _defaults, _role, _change in LADDER:
    register_model(
        _name,
        ResUnet,  # the class is its own builder: defaults come from ResUnet.__init__
        description=f"ResUnet {_name[-3:].replace('_', '.')} [{_role}]: {_change}",
        source=RESUNET_SOURCE,
        defaults=_defaults,
        taps=_taps,
        aliases=("resunet",) if _name == "resunet_v1_0" else (),
        published=(
            (
                PublishedParams(
                    21_300_000,
                    {"in_channels": 1, "num_classes": 9},
                    "Pipaup/ResUnet README: 21.3M parameters (Synapse, 9 classes); "
                    "rounded, so checked within 1%",
                ),
            )
            if _name == "resunet_v1_0"
            else ()
        ),
        family="resunet",
        pretrained=(IMAGENET_RESNET34,),
    )
