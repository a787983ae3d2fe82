"""UNet++ (Zhou et al., DLMIA 2018, arXiv:1807.10165): nested, dense skip pathways.

Node ``X(i, j)`` sits at scale ``i`` (0 = finest) and column ``j``. ``X(i, 0)`` are the
encoder features; for ``j >= 1``, ``X(i, j)`` up-samples ``X(i+1, j-1)`` with a 2x2
transposed convolution, concatenates it with ``X(i, 0), ..., X(i, j-1)`` and applies a
double 3x3 convolution. The head is a 1x1 convolution on ``X(0, 4)``.

Defaults follow the paper and its official code (MrGiovanni/UNetPlusPlus, ``Nest_Net`` in
``model_logic.py``): widths 32-64-128-256-512 (``base_channels=32``). That code has no
BatchNorm; each 3x3 convolution is followed by ReLU (``act = "relu"``; earlier versions of
the repository used ELU) and dropout 0.5, with ``he_normal`` init and an L2 penalty of
1e-4 on every kernel. With ``batch_norm=False`` (biases then on) the count is exactly the
code's 9,041,601 at 1 input channel / 1 class. The default here adds BatchNorm (bias-free
convolutions) for stable training from scratch and has no dropout; the activations are
ReLU, as there; weights start from the code's ``he_normal`` (``init="kaiming"``; PyTorch's
default, ``init="pytorch"``, stalled on real MRI). docs/unets.md lists every difference.

``deep_supervision=True`` adds 1x1 heads on ``X(0, 1)``, ``X(0, 2)``, ``X(0, 3)``: in
training mode ``forward`` returns ``[out1, out2, out3, out4]`` (full-size logits, the
final ``X(0, 4)`` output last); in eval mode only the final output ("fast mode"). The
official Keras model compiles the four outputs with one loss, so Keras *sums* the heads'
losses: the class declares ``deep_supervision_loss = "sum"``, what the trainer's
``--deep-supervision-loss auto`` uses.

``accurate=True`` is "accurate mode" of the journal version (Zhou et al., IEEE TMI 2019): in
eval mode the four heads' probabilities are averaged (softmax, or sigmoid for one
class); the logits returned are the log of that average (logit for one class), so
softmax / sigmoid / argmax of them give the averaged prediction. It builds the heads
even when ``deep_supervision`` is off (inference rebuilds a trained model that way), so
train it with deep supervision.

``encoder="resnet34"`` (any ResNet) replaces the plain encoder; node widths then follow
the encoder's channels unless ``decoder_channels`` gives five widths, and the logits
(at 1/2 resolution, the ResNet stem's stride) are bilinearly up-sampled to full size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from unetzoo.errors import ModelError
from unetzoo.models.base import SegmentationModel
from unetzoo.models.blocks import DoubleConv, he_fan_in_init, match_size, resolve_bias
from unetzoo.models.encoders import ResNetEncoder, build_encoder, feature_taps
from unetzoo.models.registry import PublishedParams, Taps, register_model

#: ``"kaiming"``: the official ``he_normal`` (std sqrt(2 / fan_in)) on every convolution
#: but a ResNet encoder's; ``"pytorch"``: PyTorch's default (this port before it was
#: measured to stall on real MRI).
INITS = ("kaiming", "pytorch")


class NestedNode(nn.Module):
    """``X(i, j)``: up-sample the deeper node, concatenate same-scale nodes, double conv.

    ``forward(deeper (N, deep_channels, h, w), *same_scale (N, c_k, 2h, 2w))
    -> (N, out_channels, 2h, 2w)``.
    """

    def __init__(
        self,
        deep_channels: int,
        same_channels: int,
        out_channels: int,
        *,
        batch_norm: bool = True,
        bias: bool | None = None,
    ) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(
            deep_channels,
            out_channels,
            kernel_size=2,
            stride=2,
            bias=resolve_bias(bias, batch_norm),
        )
        self.conv = DoubleConv(
            same_channels + out_channels, out_channels, batch_norm=batch_norm, bias=bias
        )

    def forward(self, deeper: torch.Tensor, *same_scale: torch.Tensor) -> torch.Tensor:
        up = match_size(self.up(deeper), tuple(same_scale[0].shape[-2:]), crop=False)
        return self.conv(torch.cat([*same_scale, up], dim=1))


class UNetPlusPlus(SegmentationModel):
    """UNet++ with a plain (paper) or ResNet encoder; see the module docstring.

    ``forward(x (N, in_channels, H, W))`` -> logits ``(N, num_classes, H, W)``, or a list
    of four such tensors (final last) when ``deep_supervision`` and training.

    Args:
        in_channels, num_classes: input channels and classes.
        base_channels: plain encoder width (32 in the paper); scale i has ``b * 2**i``.
        encoder: None (plain) or ``"resnet18"`` ... ``"resnet152"``.
        encoder_weights: None, ``"imagenet"`` or a torchvision checkpoint path (ResNet).
        decoder_channels: widths of the nested nodes per scale (5 values, fine to coarse;
            only the first four are used); default the encoder's channels.
        batch_norm, bias: BatchNorm after each 3x3 conv; bias None = only without BN.
        deep_supervision: heads on every ``X(0, j)`` (see above).
        accurate: eval output = the average of the four heads (see above).
        init: ``"kaiming"`` (default; the official ``he_normal``, std sqrt(2 / fan_in), on
            every convolution but a ResNet encoder's) or ``"pytorch"`` (PyTorch's default).
    """

    fixed_input_size: int | None = None  # any size; padded to size_multiple
    deep_supervision_loss = "sum"  # Keras multi-output: the heads' losses add up

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        *,
        base_channels: int = 32,
        encoder: str | None = None,
        encoder_weights: str | Path | None = None,
        decoder_channels: tuple[int, ...] | None = None,
        batch_norm: bool = True,
        bias: bool | None = None,
        deep_supervision: bool = False,
        accurate: bool = False,
        init: str = "kaiming",
    ) -> None:
        super().__init__()
        if init not in INITS:
            raise ModelError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        if not isinstance(accurate, bool):
            raise ModelError(f"accurate must be true or false, got {accurate!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.deep_supervision = bool(deep_supervision)
        self.accurate = accurate
        self.encoder = build_encoder(
            encoder,
            in_channels,
            base_channels=int(base_channels),
            weights=encoder_weights,
            batch_norm=batch_norm,
            bias=bias,
        )
        enc = list(self.encoder.channels)
        if decoder_channels is None:
            width = enc
        else:
            width = [int(c) for c in decoder_channels]
            if len(width) != 5 or min(width) < 1:
                raise ModelError(
                    f"decoder_channels needs 5 positive widths (fine to coarse), got "
                    f"{decoder_channels}"
                )
        self.size_multiple = self.encoder.reductions[-1]
        self.nodes = nn.ModuleDict()
        for j in range(1, 5):
            for i in range(0, 5 - j):
                deep = enc[i + 1] if j == 1 else width[i + 1]
                same = enc[i] + (j - 1) * width[i]
                self.nodes[f"x{i}_{j}"] = NestedNode(
                    deep, same, width[i], batch_norm=batch_norm, bias=bias
                )
        head_bias = True  # the 1x1 heads always carry a bias, as in the official code
        self.head = nn.Conv2d(width[0], num_classes, kernel_size=1, bias=head_bias)
        self.aux_heads = nn.ModuleList(
            nn.Conv2d(width[0], num_classes, kernel_size=1, bias=head_bias)
            for _ in range(3 if self.deep_supervision or accurate else 0)
        )
        self.register_load_state_dict_pre_hook(drop_unused_heads)
        if init == "kaiming":  # the official he_normal; a ResNet encoder keeps its own
            resnet = isinstance(self.encoder, ResNetEncoder)
            he_fan_in_init(self.nodes, self.head, self.aux_heads,
                           *(() if resnet else (self.encoder,)))

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        size = tuple(x.shape[-2:])
        feats = self.encoder(x)
        grid: dict[tuple[int, int], torch.Tensor] = {(i, 0): f for i, f in enumerate(feats)}
        for j in range(1, 5):
            for i in range(0, 5 - j):
                same = [grid[(i, k)] for k in range(j)]
                grid[(i, j)] = self.nodes[f"x{i}_{j}"](grid[(i + 1, j - 1)], *same)
        final = match_size(self.head(grid[(0, 4)]), size, crop=False)
        heads = self.training and self.deep_supervision or not self.training and self.accurate
        if not heads:
            return final
        aux = [
            match_size(h(grid[(0, j)]), size, crop=False)
            for j, h in zip((1, 2, 3), self.aux_heads)
        ]
        if self.training:
            return [*aux, final]
        return average_heads([*aux, final])


def average_heads(logits: list[torch.Tensor]) -> torch.Tensor:
    """Logits whose softmax (sigmoid for one channel) is the mean of the heads' softmax
    (sigmoid): UNet++'s accurate mode, as logits."""
    if logits[0].shape[1] == 1:
        p = torch.stack([torch.sigmoid(o) for o in logits]).mean(0)
        return torch.logit(p, eps=1e-7)
    p = torch.stack([torch.softmax(o, dim=1) for o in logits]).mean(0)
    return torch.log(p.clamp_min(1e-12))


def drop_unused_heads(module: nn.Module, state_dict, prefix: str, *args) -> None:
    """Load-time hook: a checkpoint trained with deep supervision holds the auxiliary
    heads; the model rebuilt for inference without them (deep supervision is recorded
    off) ignores those weights instead of failing on unexpected keys."""
    if len(getattr(module, "aux_heads", ())) == 0:
        for key in [k for k in state_dict if k.startswith(prefix + "aux_heads.")]:
            del state_dict[key]


def unetpp_taps(model: nn.Module) -> Taps:
    """Encoder scales 0-3, decoder nodes X(3,1), X(2,2), X(1,3), final X(0,4)."""
    encoder = feature_taps(model.encoder)
    return Taps(
        encoder=encoder,
        decoder=("nodes.x3_1", "nodes.x2_2", "nodes.x1_3"),
        final="nodes.x0_4",
    )


# The class is its own builder: the registry reads UNetPlusPlus.__init__ for defaults.
register_model(
    "unetpp",
    UNetPlusPlus,
    description="UNet++: nested dense skip pathways, 32-512, optional deep supervision",
    source="Zhou et al., UNet++, DLMIA 2018 (arXiv:1807.10165); MrGiovanni/UNetPlusPlus",
    family="unetpp",
    taps=unetpp_taps,
    aliases=("unet++", "unetplusplus", "nested_unet"),
    published=(
        PublishedParams(
            9_041_601,
            {"in_channels": 1, "num_classes": 1, "batch_norm": False},
            "MrGiovanni/UNetPlusPlus model.py, Nest_Net 'Total params: 9,041,601' "
            "(Keras, no BatchNorm, 1 channel in, 1 output); paper Table 1: 9.04M",
        ),
    ),
)
