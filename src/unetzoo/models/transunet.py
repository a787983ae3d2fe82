"""TransUNet (Chen et al. 2021): an R50-ViT-B/16 hybrid encoder and a cascaded upsampler.

Layout of the official code (Beckschen/TransUNet, ``networks/vit_seg_modeling.py`` and
``vit_seg_modeling_resnet_skip.py``, config ``R50-ViT-B_16``):

- hybrid stem: ResNet-50 v2-style root (7x7 StdConv, GroupNorm, ReLU, 3x3 max pool without
  padding) and the first three stages (3, 4, 9 bottleneck units; weight-standardised
  convs, GroupNorm(32)); its 1/2, 1/4 and 1/8 outputs are the skips;
- a 1x1 patch embedding of the 1/16 feature map, learned position embeddings and 12
  Transformer blocks (hidden 768, MLP 3072, 12 heads; timm's ``Block``);
- decoder: a 3x3 conv to 512 channels, four (bilinear x2 upsample, concat skip, 2x conv-BN-
  ReLU) blocks with 256, 128, 64, 16 channels and three skips, a 3x3 segmentation head.

A 1-channel input is repeated to 3 channels, as the official forward does.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import StdConv2d
from timm.models.vision_transformer import Block
from torch import nn

from unetzoo.errors import ModelError
from unetzoo.models.base import SegmentationModel, check_input, crop_to, pad_to_multiple
from unetzoo.models.registry import PretrainedSource, PublishedParams, Taps, register_model
from unetzoo.models.weights_maps import (
    load_into,
    read_npz,
    resize_pos_embed,
    resolve_weights,
    vit_npz_to_state_dict,
)

# The official StdConv2d standardises with eps 1e-5 (timm's default is 1e-6).
_StdConv = partial(StdConv2d, eps=1e-5)


class PreActBottleneck(nn.Module):
    """The TransUNet R50 unit: conv1x1-GN-ReLU, conv3x3(stride)-GN-ReLU, conv1x1-GN, add, ReLU.

    The official class is named pre-activation but normalises after each conv; the
    projection shortcut (conv1x1 + GroupNorm(cout, cout)) appears when shape changes.
    """

    def __init__(self, cin: int, cout: int, cmid: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _StdConv(cin, cmid, 1, bias=False)
        self.gn1 = nn.GroupNorm(32, cmid, eps=1e-6)
        self.conv2 = _StdConv(cmid, cmid, 3, stride=stride, padding=1, bias=False)
        self.gn2 = nn.GroupNorm(32, cmid, eps=1e-6)
        self.conv3 = _StdConv(cmid, cout, 1, bias=False)
        self.gn3 = nn.GroupNorm(32, cout, eps=1e-6)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or cin != cout:
            self.downsample = _StdConv(cin, cout, 1, stride=stride, bias=False)
            self.gn_proj = nn.GroupNorm(cout, cout)
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.gn_proj(self.downsample(x))
        y = self.relu(self.gn1(self.conv1(x)))
        y = self.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return self.relu(residual + y)


class ResNetV2Hybrid(nn.Module):
    """Root + three ResNet stages; returns the 1/16 map and skips ``[1/8, 1/4, 1/2]``."""

    def __init__(self, in_channels: int, layers: tuple[int, int, int], width: int) -> None:
        super().__init__()
        self.width = width
        self.root = nn.Sequential(OrderedDict([
            ("conv", _StdConv(in_channels, width, 7, stride=2, padding=3, bias=False)),
            ("gn", nn.GroupNorm(32, width, eps=1e-6)),
            ("relu", nn.ReLU(inplace=True)),
        ]))
        # The official pool has no padding, so stage 1 comes out one pixel short and is
        # zero-padded (bottom/right) back to H/4 for the skip; reproduced in forward.
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0)
        stages = []
        cin = width
        for i, n in enumerate(layers):
            cout, cmid = width * 4 * 2**i, width * 2**i
            units = [("unit1", PreActBottleneck(cin, cout, cmid, stride=1 if i == 0 else 2))]
            units += [(f"unit{j}", PreActBottleneck(cout, cout, cmid)) for j in range(2, n + 1)]
            stages.append((f"block{i + 1}", nn.Sequential(OrderedDict(units))))
            cin = cout
        self.body = nn.Sequential(OrderedDict(stages))
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, w = x.shape[-2:]
        x = self.root(x)
        features = [x]
        x = self.pool(x)
        for i, stage in enumerate(list(self.body)[:-1]):
            x = stage(x)
            th, tw = h // (4 * 2**i), w // (4 * 2**i)
            feat = x
            if x.shape[-2:] != (th, tw):
                feat = F.pad(x, (0, tw - x.shape[-1], 0, th - x.shape[-2]))
            features.append(feat)
        x = self.body[-1](x)
        return x, features[::-1]


class Conv2dReLU(nn.Sequential):
    """conv (no bias) -> BatchNorm -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    """Bilinear x2 (align_corners=True, as nn.UpsamplingBilinear2d), concat skip, 2 convs."""

    def __init__(self, cin: int, cout: int, skip: int = 0) -> None:
        super().__init__()
        self.conv1 = Conv2dReLU(cin + skip, cout)
        self.conv2 = Conv2dReLU(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class DecoderCup(nn.Module):
    """3x3 conv from the hidden size to ``head_channels``, then the cascaded blocks."""

    def __init__(
        self, hidden: int, head_channels: int, decoder_channels: tuple[int, ...],
        skip_channels: list[int],
    ) -> None:
        super().__init__()
        self.conv_more = Conv2dReLU(hidden, head_channels)
        ins = [head_channels, *decoder_channels[:-1]]
        self.blocks = nn.ModuleList(
            DecoderBlock(i, o, s) for i, o, s in zip(ins, decoder_channels, skip_channels)
        )

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        x = self.conv_more(x)
        for i, block in enumerate(self.blocks):
            x = block(x, skips[i] if i < len(skips) else None)
        return x


class TransUNet(SegmentationModel):
    """R50-ViT-B/16 TransUNet; ``(N, C, H, W)`` -> logits ``(N, num_classes, H, W)``.

    Args:
        in_channels: input channels; 1 is repeated to 3 (official), 3 is used as is, any
            other count gets its own root conv (the pretrained root then does not apply).
        num_classes: output classes.
        img_size: the input size the position embedding is built for (224); the pipeline
            resizes to ``fixed_input_size``. Other sizes are padded to a multiple of 16 and
            the position embedding is interpolated bilinearly.
        hidden_size, num_layers, num_heads, mlp_dim: Transformer (768, 12, 12, 3072).
        resnet_layers, resnet_width: units per R50 stage (3, 4, 9) and root width (64).
        decoder_channels: cascaded upsampler widths (256, 128, 64, 16).
        n_skip: how many skips the decoder uses (3: 1/8, 1/4, 1/2).
        head_channels: channels of the conv after the Transformer (512).
        dropout, attention_dropout: 0.1 on embeddings and MLPs, 0.0 on attention.
        encoder_weights: None (random init), ``"imagenet"`` (``R50+ViT-B_16.npz``, Google's
            ImageNet-21k release, from the torch hub cache, SHA-256 checked) or a path to it.
    """

    size_multiple = 16

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        img_size: int = 224,
        hidden_size: int = 768,
        num_layers: int = 12,
        num_heads: int = 12,
        mlp_dim: int = 3072,
        resnet_layers: tuple[int, int, int] = (3, 4, 9),
        resnet_width: int = 64,
        decoder_channels: tuple[int, ...] = (256, 128, 64, 16),
        n_skip: int = 3,
        head_channels: int = 512,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        encoder_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        if img_size % 16:
            raise ModelError(f"transunet: img_size must be a multiple of 16, got {img_size}")
        if hidden_size % num_heads:
            raise ModelError(
                f"transunet: hidden_size {hidden_size} is not divisible by num_heads {num_heads}"
            )
        if len(resnet_layers) != 3 or resnet_width % 32:
            raise ModelError(
                "transunet: resnet_layers needs 3 stages and resnet_width a multiple of 32 "
                f"(GroupNorm(32)); got {tuple(resnet_layers)} and {resnet_width}"
            )
        if len(decoder_channels) != 4 or not 0 <= n_skip <= 3:
            raise ModelError("transunet: decoder_channels needs 4 widths and n_skip 0..3")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.fixed_input_size = img_size
        self.img_size = img_size
        self.repeat_gray = in_channels == 1
        stem_in = 3 if in_channels in (1, 3) else in_channels

        self.hybrid = ResNetV2Hybrid(stem_in, tuple(resnet_layers), resnet_width)
        self.patch_embed = nn.Conv2d(self.hybrid.out_channels, hidden_size, kernel_size=1)
        self.grid = (img_size // 16, img_size // 16)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], hidden_size))
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(
                hidden_size, num_heads, mlp_ratio=mlp_dim / hidden_size, qkv_bias=True,
                proj_drop=dropout, attn_drop=attention_dropout,
                norm_layer=partial(nn.LayerNorm, eps=1e-6),
            )
            for _ in range(num_layers)
        )
        for blk in self.blocks:
            # Official: dropout after the attention projection uses the attention rate.
            blk.attn.proj_drop = nn.Dropout(attention_dropout)
        self.encoder_norm = nn.LayerNorm(hidden_size, eps=1e-6)

        w = resnet_width
        skips = [w * 8, w * 4, w][:n_skip] + [0] * (4 - n_skip)
        self.n_skip = n_skip
        self.decoder = DecoderCup(hidden_size, head_channels, tuple(decoder_channels), skips)
        self.head = nn.Conv2d(decoder_channels[-1], num_classes, kernel_size=3, padding=1)
        self._init_weights()
        if encoder_weights:
            self.load_encoder_weights(encoder_weights)

    def _init_weights(self) -> None:
        if self.pos_embed.device.type == "meta":
            return
        # Official: xavier-uniform MLP weights, N(0, 1e-6) biases; zero position embedding.
        for blk in self.blocks:
            for fc in (blk.mlp.fc1, blk.mlp.fc2):
                nn.init.xavier_uniform_(fc.weight)
                nn.init.normal_(fc.bias, std=1e-6)

    def load_encoder_weights(self, path: str | Path) -> list[str]:
        """Load an ``R50+ViT-B_16.npz`` (see docs/comparison_models.md); returns loaded keys."""
        path = resolve_weights(path, TRANSUNET_WEIGHTS)  # "imagenet": the hash-checked hub file
        arrays = read_npz(path)
        state = vit_npz_to_state_dict(arrays, len(self.blocks), self.grid, path)
        prefixes = ("patch_embed.", "pos_embed", "blocks.", "encoder_norm.")
        if not self.repeat_gray and self.in_channels != 3:
            state.pop("hybrid.root.conv.weight", None)  # root built for other channel counts
            prefixes += ("hybrid.body.",)
        else:
            prefixes += ("hybrid.",)
        return load_into(self, state, path, "encoder weights", prefixes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D401
        """``(N, C, H, W)`` -> ``(N, num_classes, H, W)``; H, W padded to 16 and cropped."""
        check_input(x, self.in_channels, "transunet")
        x, size = pad_to_multiple(x, self.size_multiple)
        return crop_to(self.forward_padded(x), size)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat_gray:
            x = x.repeat(1, 3, 1, 1)
        feat, skips = self.hybrid(x)
        tok = self.patch_embed(feat)
        n, c, gh, gw = tok.shape
        pos = self.pos_embed
        if (gh, gw) != self.grid:
            pos = resize_pos_embed(pos, (gh, gw))
        tok = self.pos_drop(tok.flatten(2).transpose(1, 2) + pos)
        for blk in self.blocks:
            tok = blk(tok)
        tok = self.encoder_norm(tok)
        y = tok.transpose(1, 2).reshape(n, c, gh, gw)
        y = self.decoder(y, skips[: self.n_skip])
        return self.head(y)


def _transunet_taps(model: nn.Module) -> Taps:
    n_stages = len(model.hybrid.body)
    return Taps(
        encoder=("hybrid.root",) + tuple(f"hybrid.body.block{i + 1}" for i in range(n_stages)),
        decoder=("decoder.conv_more", "decoder.blocks.0", "decoder.blocks.1", "decoder.blocks.2"),
        final="decoder.blocks.3",
    )


# Parameter count of the official VisionTransformer(get_r50_b16_config(), img_size=224,
# num_classes=9) with n_skip=3, derived from vit_seg_configs.py / vit_seg_modeling*.py
# (tests/models/test_transunet.py recomputes it from the config by hand).
TRANSUNET_R50_B16_PARAMS = 105_277_081


#: ``encoder_weights="imagenet"``: Google's R50+ViT-B/16 ImageNet-21k release, which the
#: official train.py always loads. Google publishes no SHA-256 for its bucket; this digest
#: is the one two independent copies record for the 461,217,452-byte file (a git-lfs
#: pointer and a pinned download manifest found with the project's code search).
TRANSUNET_WEIGHTS = PretrainedSource(
    tag="imagenet",
    url="https://storage.googleapis.com/vit_models/imagenet21k/R50%2BViT-B_16.npz",
    filename="R50+ViT-B_16.npz",
    sha256="ff009bf39bb4f9198b834cfe46aba2bfdaf730e933ab3e3c4b1edf4226eaafbe",
    paper_default=True,
    note="Google's ViT release (ImageNet-21k), as in Beckschen/TransUNet's README",
)


# The class is its own builder: the registry reads TransUNet.__init__ for defaults.
register_model(
    "transunet",
    TransUNet,
    pretrained=(TRANSUNET_WEIGHTS,),
    description="TransUNet: R50-ViT-B/16 hybrid encoder, cascaded upsampler with 3 skips",
    source="Chen et al. 2021, arXiv:2102.04306; code Beckschen/TransUNet",
    taps=_transunet_taps,
    published=(
        PublishedParams(
            TRANSUNET_R50_B16_PARAMS,
            {"in_channels": 1, "num_classes": 9, "img_size": 224},
            "Beckschen/TransUNet networks/vit_seg_configs.py get_r50_b16_config (n_skip=3), "
            "vit_seg_modeling.py VisionTransformer(img_size=224, num_classes=9)",
        ),
    ),
)
