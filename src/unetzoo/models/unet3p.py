"""UNet 3+ (Huang et al., ICASSP 2020, arXiv:2004.08790): full-scale skip connections.

Every decoder stage ``hd_t`` (t = 4, 3, 2, 1 in the paper's numbering) gathers all five
scales: the finer encoder features ``h_1 .. h_t`` max-pooled down to its size, the coarser
decoder features ``hd_{t+1} .. hd_5`` (``hd_5`` is the deepest encoder feature)
bilinearly up-sampled, each through a 3x3 conv (``cat_channels``, BatchNorm, ReLU);
the five maps are concatenated (``5 * cat_channels``) and fused by one more 3x3 conv. The
head is a 3x3 convolution on ``hd_1``.

Defaults follow the official code (ZJUGiveLab/UNet-Version, ``models/UNet_3Plus.py``,
class ``UNet_3Plus``): encoder 64-128-256-512-1024, ``cat_channels = 64``, every
convolution with a bias *and* BatchNorm. At 3 input channels and 1 class this gives
exactly 26,971,777 parameters, the code's count (the paper's Table 1 lists 26.97M).

``deep_supervision=True`` adds 3x3 heads on ``hd_2 .. hd_5``; in training mode forward
returns ``[d5, d4, d3, d2, d1]`` (all bilinearly up-sampled to full size; the final
``d1`` last), in eval mode ``d1`` only. The paper supervises every side output with the
same loss and adds them up: the class declares ``deep_supervision_loss = "sum"``, what
the trainer's ``--deep-supervision-loss auto`` uses.

``cgm=True`` adds the classification-guided module: dropout 0.5, 1x1 conv on ``hd_5`` to
2 classes ("organ absent / present"), global max-pool. Forward still returns the
segmentation logits as above; the classifier's logits ``(N, 2)`` of the last forward are
stored in ``model.cgm_logits``. The paper trains the branch with BCE:
:meth:`UNet3Plus.auxiliary_loss` (called by the trainer after every forward) is
``cgm_loss_weight`` times the BCE of the two logits against "the label has foreground"
(:func:`binary_presence_loss`, re-exported by ``unetzoo.losses``). The gate is the classifier's arg-max (0
absent, 1 present; no gradient), applied as ``cgm_mode`` says:

- ``"multiply"`` (default, the official ``UNet_3Plus_DeepSup_CGM``): in evaluation every
  output is multiplied by the gate, so an image classified "absent" gets all-zero logits
  (sigmoid 0.5, softmax uniform). In training the gate applies only with
  ``cgm_train_gate=True`` (the official forward, which gates in both modes): a
  classifier that is still at its random initialisation zeroes the logits and the
  segmentation gradient of every image it calls empty (3-8 of 8 images per batch at
  the start, all of them for some seeds), so by default training supervises every image
  while the branch learns.
- ``"background"`` (unetzoo's variant): no gate in training; in evaluation an "absent"
  image gets background-only logits (class 0 for ``num_classes >= 2``; large negative
  logits for a single sigmoid channel), a definite "nothing here" prediction.

``init="kaiming"`` (default, the official ``init_weights(..., "kaiming")``): every
convolution weight ``kaiming_normal_(a=0, mode="fan_in")``, every BatchNorm weight
``N(1, 0.02)`` and bias 0; convolution biases keep PyTorch's default, as there. A ResNet
encoder keeps its own (torchvision or pretrained) weights. ``init="pytorch"``: PyTorch's
default initialisation everywhere.

``encoder="resnet34"`` (any ResNet) replaces the plain encoder; ``cat_channels`` then
defaults to 64, and the logits (at the stem's 1/2 resolution) are up-sampled to full size.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unetzoo.errors import ModelError
from unetzoo.models.base import SegmentationModel
from unetzoo.models.blocks import conv_unit, match_size
from unetzoo.models.encoders import ResNetEncoder, build_encoder, feature_taps
from unetzoo.models.registry import PublishedParams, Taps, register_model
from unetzoo.models.unetpp import drop_unused_heads

CGM_MODES = ("multiply", "background")
INITS = ("kaiming", "pytorch")


def binary_presence_loss(
    logits: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """UNet 3+'s classification loss: BCE of ``logits (N, 2)`` ("absent", "present", one
    sigmoid each, as the official ``cls_branch``) against whether each image's label has
    any foreground. Returns ``(bce, {"cgm": bce, "cgm_acc": arg-max accuracy})``."""
    present = (target.reshape(target.shape[0], -1) > 0).any(dim=1)
    onehot = F.one_hot(present.long(), 2).to(torch.float32)
    bce = F.binary_cross_entropy_with_logits(logits.float(), onehot)
    acc = (logits.detach().argmax(dim=1) == present.long()).float().mean()
    return bce, {"cgm": float(bce.detach()), "cgm_acc": float(acc)}


class FullScaleStage(nn.Module):
    """One UNet 3+ decoder stage: resize five sources to one scale, conv each, fuse.

    ``forward(sources: list of 5 tensors, fine to coarse) -> (N, 5 * cat_channels, h, w)``
    where ``(h, w)`` is the size of ``sources[target]``. Finer sources are max-pooled by
    their integer size ratio (ceil mode), coarser ones bilinearly up-sampled.
    """

    def __init__(
        self,
        source_channels: list[int],
        target: int,
        cat_channels: int,
        *,
        batch_norm: bool = True,
        bias: bool | None = True,
    ) -> None:
        super().__init__()
        self.target = target
        self.branches = nn.ModuleList(
            conv_unit(c, cat_channels, batch_norm=batch_norm, bias=bias) for c in source_channels
        )
        up = cat_channels * len(source_channels)
        self.fuse = conv_unit(up, up, batch_norm=batch_norm, bias=bias)

    def forward(self, sources: list[torch.Tensor]) -> torch.Tensor:
        size = tuple(sources[self.target].shape[-2:])
        maps = []
        for k, (src, branch) in enumerate(zip(sources, self.branches)):
            h = src.shape[-2]
            if k < self.target and h > size[0]:
                f = -(-h // size[0])
                src = F.max_pool2d(src, kernel_size=f, stride=f, ceil_mode=True)
            if tuple(src.shape[-2:]) != size:
                src = F.interpolate(src, size=size, mode="bilinear", align_corners=False)
            maps.append(branch(src))
        return self.fuse(torch.cat(maps, dim=1))


class UNet3Plus(SegmentationModel):
    """UNet 3+ with a plain (paper) or ResNet encoder; see the module docstring.

    ``forward(x (N, in_channels, H, W))`` -> logits ``(N, num_classes, H, W)``, or a list
    of five (final last) when ``deep_supervision`` and training.

    Args:
        in_channels, num_classes: input channels and classes.
        base_channels: plain encoder width (64 in the paper); scale i has ``b * 2**i``.
        encoder: None (plain) or ``"resnet18"`` ... ``"resnet152"``.
        encoder_weights: None, ``"imagenet"`` or a torchvision checkpoint path (ResNet).
        cat_channels: channels of each full-scale branch (default the first encoder width).
        batch_norm: BatchNorm after every 3x3 convolution.
        bias: convolution bias (default True, as the official code; None = only without BN).
        deep_supervision: heads on every decoder stage (see above).
        cgm: classification-guided module (see above).
        cgm_mode: ``"multiply"`` (official) or ``"background"`` (see above).
        cgm_loss_weight: weight of the branch's BCE in :meth:`auxiliary_loss` (> 0).
        cgm_train_gate: apply the ``"multiply"`` gate in training too (see above).
        init: ``"kaiming"`` (official) or ``"pytorch"`` (PyTorch's default, as the other models name it).
    """

    fixed_input_size: int | None = None  # any size; padded to size_multiple
    deep_supervision_loss = "sum"  # the paper adds the side outputs' losses

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        *,
        base_channels: int = 64,
        encoder: str | None = None,
        encoder_weights: str | Path | None = None,
        cat_channels: int | None = None,
        batch_norm: bool = True,
        bias: bool | None = True,
        deep_supervision: bool = False,
        cgm: bool = False,
        cgm_mode: str = "multiply",
        cgm_loss_weight: float = 1.0,
        cgm_train_gate: bool = False,
        init: str = "kaiming",
    ) -> None:
        super().__init__()
        if cgm_mode not in CGM_MODES:
            raise ModelError(f"cgm_mode must be one of {', '.join(CGM_MODES)}, got {cgm_mode!r}")
        weight = cgm_loss_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            # A branch without its loss stays random and its gate is noise.
            raise ModelError(f"cgm_loss_weight must be a number > 0, got {cgm_loss_weight!r}")
        if not isinstance(cgm_train_gate, bool):
            raise ModelError(f"cgm_train_gate must be true or false, got {cgm_train_gate!r}")
        self.cgm_loss_weight = float(weight)
        self.cgm_train_gate = cgm_train_gate
        if init not in INITS:
            raise ModelError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        self.cgm_mode = cgm_mode
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.deep_supervision = bool(deep_supervision)
        self.cgm = bool(cgm)
        self.cgm_logits: torch.Tensor | None = None
        self.encoder = build_encoder(
            encoder,
            in_channels,
            base_channels=int(base_channels),
            weights=encoder_weights,
            batch_norm=batch_norm,
            bias=bias,
        )
        enc = list(self.encoder.channels)
        cat = int(cat_channels or enc[0])
        if cat < 1:
            raise ModelError(f"cat_channels must be >= 1, got {cat_channels}")
        up = 5 * cat
        self.size_multiple = self.encoder.reductions[-1]
        # Stages hd4, hd3, hd2, hd1 (targets 3, 2, 1, 0): finer sources are encoder
        # features, coarser ones decoder stages (up channels) and the bottom (enc[4]).
        self.decoder = nn.ModuleList(
            FullScaleStage(
                enc[: t + 1] + [up] * (3 - t) + [enc[4]],
                t,
                cat,
                batch_norm=batch_norm,
                bias=bias,
            )
            for t in (3, 2, 1, 0)
        )
        self.head = nn.Conv2d(up, num_classes, kernel_size=3, padding=1)
        # Deep-supervision heads on hd5 (bottom), hd4, hd3, hd2.
        self.aux_heads = nn.ModuleList(
            nn.Conv2d(c, num_classes, kernel_size=3, padding=1)
            for c in ([enc[4], up, up, up] if self.deep_supervision else [])
        )
        self.cls_head = (
            nn.Sequential(
                nn.Dropout(p=0.5),
                nn.Conv2d(enc[4], 2, kernel_size=1),
                nn.AdaptiveMaxPool2d(1),
                nn.Flatten(1),
            )
            if self.cgm
            else None
        )
        if init == "kaiming":
            self._official_init()
        self.register_load_state_dict_pre_hook(drop_unused_heads)

    def auxiliary_loss(self, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]] | None:
        """The CGM branch's loss for the last forward: ``cgm_loss_weight`` times BCE
        against "``target`` has foreground" (per image), with the terms ``cgm`` (BCE) and
        ``cgm_acc`` (the gate's accuracy); None without CGM."""
        if self.cls_head is None or self.cgm_logits is None:
            return None
        bce, terms = binary_presence_loss(self.cgm_logits, target)
        return self.cgm_loss_weight * bce, terms

    def _official_init(self) -> None:
        # ZJUGiveLab init_weights(m, "kaiming") on every Conv2d / BatchNorm2d, except a
        # ResNet encoder's (torchvision's own init or pretrained weights).
        resnet = isinstance(self.encoder, ResNetEncoder)
        skip = {id(m) for m in self.encoder.modules()} if resnet else set()
        for m in self.modules():
            if id(m) in skip:
                continue
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def _gate(self, logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        background = torch.zeros_like(logits)
        if self.num_classes == 1:
            background -= 1e4
        else:
            background[:, 0] = 1e4
        return torch.where(present.view(-1, 1, 1, 1), logits, background)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        size = tuple(x.shape[-2:])
        feats = self.encoder(x)
        decoded = [feats[4]]  # hd5, hd4, hd3, hd2, hd1 as they are computed
        for t, stage in zip((3, 2, 1, 0), self.decoder):
            # sources fine to coarse: h_1..h_{t+1}, then hd_{t+2}..hd_5
            sources = feats[: t + 1] + decoded[::-1]
            decoded.append(stage(sources))
        final = match_size(self.head(decoded[-1]), size, crop=False)
        outputs = [final]
        if self.deep_supervision and self.training:
            aux = [match_size(h(d), size, crop=False) for h, d in zip(self.aux_heads, decoded[:4])]
            outputs = [*aux, final]
        if self.cls_head is not None:
            self.cgm_logits = self.cls_head(feats[4])
            present = self.cgm_logits.argmax(dim=1)  # hard gate: no gradient, as official
            if self.cgm_mode == "multiply" and (self.cgm_train_gate or not self.training):
                gate = present.to(outputs[0].dtype).view(-1, 1, 1, 1)
                outputs = [o * gate for o in outputs]
            elif not self.training:
                outputs = [self._gate(o, present.bool()) for o in outputs]
        return outputs if len(outputs) > 1 else outputs[0]


def unet3p_taps(model: nn.Module) -> Taps:
    """Encoder scales 0-3, decoder stages hd4, hd3, hd2, final hd1."""
    encoder = feature_taps(model.encoder)
    return Taps(encoder=encoder, decoder=("decoder.0", "decoder.1", "decoder.2"), final="decoder.3")


# The class is its own builder: the registry reads UNet3Plus.__init__ for defaults.
register_model(
    "unet3p",
    UNet3Plus,
    description="UNet 3+: full-scale skips, optional deep supervision and CGM",
    source="Huang et al., UNet 3+, ICASSP 2020 (arXiv:2004.08790); ZJUGiveLab/UNet-Version",
    family="unet3p",
    taps=unet3p_taps,
    aliases=("unet3+", "unet3plus", "unet_3plus"),
    published=(
        PublishedParams(
            26_971_777,
            {"in_channels": 3, "num_classes": 1},
            "ZJUGiveLab/UNet-Version models/UNet_3Plus.py, UNet_3Plus(in_channels=3, "
            "n_classes=1) (paper Table 1: 26.97M)",
        ),
    ),
)
