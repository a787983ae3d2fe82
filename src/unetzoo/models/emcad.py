"""EMCAD (Rahman et al., CVPR 2024): a PVTv2-B2 encoder and the EMCAD decoder.

Layout of the official code (SLDGroup/EMCAD, ``lib/networks.py`` ``EMCADNet`` and
``lib/decoders.py`` ``EMCAD``), defaults kernel sizes (1, 3, 5), expansion 2, parallel
depth-wise convs, additive aggregation, LGAG kernel 3, activation ReLU6 in the MSCBs
(``activation``) and ReLU in every EUCB and LGAG (``gate_activation``: the official
``EMCAD`` builds them without passing its activation, so their own default ``'relu'``
applies; ``gate_activation=None`` uses ``activation`` there too):

- a grayscale input goes through a learned 1x1 conv (1 -> 3) + BatchNorm + ReLU;
- encoder: PVTv2-B2 (timm's ``PyramidVisionTransformerV2``), four maps at 1/4 .. 1/32;
- decoder, deep to shallow: MSCAM (CAB channel attention, SAB spatial attention, MSCB
  multi-scale depth-wise conv block) on the 1/32 map; then per scale an EUCB (x2 upsample,
  depth-wise conv, 1x1 conv), an LGAG (large-kernel grouped attention gate) on the skip,
  additive aggregation and an MSCAM. One SAB is shared by all four MSCAMs.
- four 1x1 heads (deep supervision) upsampled bilinearly to full size. Inference uses the
  last (finest, 1/4) head, like the official ``test_single_volume`` (``P[-1]``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.pvt_v2 import PyramidVisionTransformerV2
from torch import nn

from unetzoo.errors import ModelError
from unetzoo.models.base import SegmentationModel
from unetzoo.models.registry import PretrainedSource, PublishedParams, Taps, register_model
from unetzoo.models.weights_maps import load_into, pvt_v2_state_dict, read_torch, resolve_weights

_ACTS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "gelu": nn.GELU, "hswish": nn.Hardswish}


def _act(name: str) -> nn.Module:
    if name not in _ACTS:
        raise ModelError(f"emcad: unknown activation {name!r}; choose one of {sorted(_ACTS)}")
    return _ACTS[name]() if name == "gelu" else _ACTS[name](inplace=True)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups (ShuffleNet); ``(N, C, H, W)`` in and out."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _bn_act(c: int, act: str | None) -> list[nn.Module]:
    return [nn.BatchNorm2d(c)] + ([_act(act)] if act else [])


class MSDC(nn.Module):
    """Multi-scale depth-wise convs (one per kernel size), parallel or cascaded."""

    def __init__(self, channels: int, kernel_sizes: tuple[int, ...], activation: str,
                 dw_parallel: bool) -> None:
        super().__init__()
        self.dw_parallel = dw_parallel
        self.dwconvs = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, k, 1, k // 2, groups=channels, bias=False),
                *_bn_act(channels, activation),
            )
            for k in kernel_sizes
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for dw in self.dwconvs:
            y = dw(x)
            outs.append(y)
            if not self.dw_parallel:
                x = x + y
        return outs


class MSCB(nn.Module):
    """Multi-scale convolution block: 1x1 expand, MSDC, add/concat, shuffle, 1x1 project,
    residual."""

    def __init__(self, cin: int, cout: int, kernel_sizes: tuple[int, ...], expansion: float,
                 dw_parallel: bool, add: bool, activation: str) -> None:
        super().__init__()
        ex = int(cin * expansion)
        self.add = add
        self.pconv1 = nn.Sequential(nn.Conv2d(cin, ex, 1, bias=False), *_bn_act(ex, activation))
        self.msdc = MSDC(ex, kernel_sizes, activation, dw_parallel)
        combined = ex if add else ex * len(kernel_sizes)
        self.shuffle_groups = math.gcd(combined, cout)
        self.pconv2 = nn.Sequential(nn.Conv2d(combined, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.conv1x1 = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = self.msdc(self.pconv1(x))
        d = sum(outs[1:], outs[0]) if self.add else torch.cat(outs, 1)
        out = self.pconv2(channel_shuffle(d, self.shuffle_groups))
        return (x if self.conv1x1 is None else self.conv1x1(x)) + out


class EUCB(nn.Module):
    """Efficient up-convolution: nearest x2, 3x3 depth-wise conv-BN-act, 1x1 conv (bias).

    The official shuffle with ``groups = channels`` is the identity, so it is left out.
    """

    def __init__(self, cin: int, cout: int, activation: str, kernel_size: int = 3) -> None:
        super().__init__()
        self.up_dwc = nn.Sequential(
            nn.Upsample(scale_factor=2),
            nn.Conv2d(cin, cin, kernel_size, 1, kernel_size // 2, groups=cin, bias=False),
            *_bn_act(cin, activation),
        )
        self.pwc = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pwc(self.up_dwc(x))


class LGAG(nn.Module):
    """Large-kernel grouped attention gate: ``x * sigmoid(BN(psi(act(Wg g + Wx x))))``."""

    def __init__(self, f_g: int, f_l: int, f_int: int, kernel_size: int, groups: int,
                 activation: str) -> None:
        super().__init__()
        if kernel_size == 1:
            groups = 1
        pad = kernel_size // 2
        self.W_g = nn.Sequential(nn.Conv2d(f_g, f_int, kernel_size, 1, pad, groups=groups),
                                 nn.BatchNorm2d(f_int))
        self.W_x = nn.Sequential(nn.Conv2d(f_l, f_int, kernel_size, 1, pad, groups=groups),
                                 nn.BatchNorm2d(f_int))
        self.psi = nn.Sequential(nn.Conv2d(f_int, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())
        self.activation = _act(activation)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x * self.psi(self.activation(self.W_g(g) + self.W_x(x)))


class CAB(nn.Module):
    """Channel attention (avg- and max-pooled MLP, ratio 16, ReLU); returns the gate."""

    def __init__(self, channels: int, ratio: int = 16) -> None:
        super().__init__()
        ratio = min(ratio, channels)
        self.fc1 = nn.Conv2d(channels, channels // ratio, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // ratio, channels, 1, bias=False)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc2(self.activation(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        mx = self.fc2(self.activation(self.fc1(F.adaptive_max_pool2d(x, 1))))
        return torch.sigmoid(avg + mx)


class SAB(nn.Module):
    """Spatial attention: 7x7 conv over channel mean and max; returns the gate."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return torch.sigmoid(self.conv(pooled))


class EMCADDecoder(nn.Module):
    """The EMCAD decoder over encoder channels ``(c1/32, c1/16, c1/8, c1/4)`` (deep first).

    ``forward(x, skips)`` returns ``[d4, d3, d2, d1]`` (1/32 .. 1/4).
    """

    def __init__(self, channels: tuple[int, int, int, int], kernel_sizes: tuple[int, ...],
                 expansion: float, dw_parallel: bool, add: bool, lgag_ks: int,
                 activation: str, gate_activation: str | None = "relu") -> None:
        super().__init__()
        gate_act = gate_activation or activation
        mscb = dict(kernel_sizes=kernel_sizes, expansion=expansion, dw_parallel=dw_parallel,
                    add=add, activation=activation)
        c = channels
        self.mscb4 = MSCB(c[0], c[0], **mscb)
        for k, i in ((3, 1), (2, 2), (1, 3)):
            setattr(self, f"eucb{k}", EUCB(c[i - 1], c[i], gate_act))
            setattr(self, f"lgag{k}", LGAG(c[i], c[i], c[i] // 2, lgag_ks, c[i] // 2, gate_act))
            setattr(self, f"mscb{k}", MSCB(c[i], c[i], **mscb))
        for k, i in ((4, 0), (3, 1), (2, 2), (1, 3)):
            setattr(self, f"cab{k}", CAB(c[i]))
        self.sab = SAB()

    def _mscam(self, k: int, d: torch.Tensor) -> torch.Tensor:
        d = getattr(self, f"cab{k}")(d) * d
        d = self.sab(d) * d
        return getattr(self, f"mscb{k}")(d)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = [self._mscam(4, x)]
        for k, skip in zip((3, 2, 1), skips):
            d = getattr(self, f"eucb{k}")(outs[-1])
            d = d + getattr(self, f"lgag{k}")(g=d, x=skip)
            outs.append(self._mscam(k, d))
        return outs


class EMCADNet(SegmentationModel):
    """PVTv2 + EMCAD; ``(N, C, H, W)`` -> logits ``(N, num_classes, H, W)``.

    H and W are padded to a multiple of 32 and cropped back (no fixed size).

    Args:
        in_channels: 3 is used as is; any other count passes a learned 1x1 conv to 3
            channels + BatchNorm + ReLU first (the official grayscale path).
        num_classes: output classes.
        embed_dims, depths, num_heads, sr_ratios, mlp_ratios: PVTv2-B2 ((64, 128, 320, 512),
            (3, 4, 6, 3), (1, 2, 5, 8), (8, 4, 2, 1), (8, 8, 4, 4)).
        drop_path_rate: encoder stochastic depth (0.1, as the official pvt_v2_b2).
        kernel_sizes, expansion_factor, dw_parallel, add, lgag_ks, activation: decoder
            ((1, 3, 5), 2, True, True, 3, "relu6"); ``activation`` is the MSCBs'.
        gate_activation: activation of the EUCBs and LGAGs ("relu", as the official
            code); None = ``activation``.
        deep_supervision: in training mode return the four full-size logits, finest last.
        encoder_weights: None (random init), ``"imagenet"`` (the official ``pvt_v2_b2.pth``
            from the torch hub cache) or a path to it.
    """

    size_multiple = 32
    fixed_input_size = None
    deep_supervision_loss = "mutation"  # train_synapse.py: --supervision mutation (default)

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        embed_dims: tuple[int, int, int, int] = (64, 128, 320, 512),
        depths: tuple[int, int, int, int] = (3, 4, 6, 3),
        num_heads: tuple[int, int, int, int] = (1, 2, 5, 8),
        sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1),
        mlp_ratios: tuple[float, ...] = (8, 8, 4, 4),
        drop_path_rate: float = 0.1,
        kernel_sizes: tuple[int, ...] = (1, 3, 5),
        expansion_factor: float = 2,
        dw_parallel: bool = True,
        add: bool = True,
        lgag_ks: int = 3,
        activation: str = "relu6",
        deep_supervision: bool = False,
        encoder_weights: str | Path | None = None,
        gate_activation: str | None = "relu",
    ) -> None:
        super().__init__()
        if not (len(embed_dims) == len(depths) == len(num_heads) == len(sr_ratios) == 4):
            raise ModelError("emcad: embed_dims, depths, num_heads and sr_ratios need 4 stages")
        for d, h in zip(embed_dims, num_heads):
            if d % h:
                raise ModelError(f"emcad: width {d} is not divisible by {h} heads")
        if any(d % 2 for d in embed_dims):
            raise ModelError(f"emcad: embed_dims must be even (LGAG halves them), got {embed_dims}")
        for act in (activation, gate_activation or activation):
            if act not in _ACTS:
                raise ModelError(
                    f"emcad: unknown activation {act!r}; choose one of {sorted(_ACTS)}"
                )
        if any(k % 2 == 0 for k in (*kernel_sizes, lgag_ks)):
            raise ModelError("emcad: kernel_sizes and lgag_ks must be odd")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.deep_supervision = deep_supervision
        if in_channels != 3:
            self.conv = nn.Sequential(nn.Conv2d(in_channels, 3, 1), nn.BatchNorm2d(3),
                                      nn.ReLU(inplace=True))
        else:
            self.conv = None
        self.backbone = PyramidVisionTransformerV2(
            in_chans=3, num_classes=0, global_pool="", depths=tuple(depths),
            embed_dims=tuple(embed_dims), num_heads=tuple(num_heads), sr_ratios=tuple(sr_ratios),
            mlp_ratios=tuple(mlp_ratios), qkv_bias=True, drop_path_rate=drop_path_rate,
        )
        channels = tuple(reversed(embed_dims))
        self.decoder = EMCADDecoder(channels, tuple(kernel_sizes), expansion_factor, dw_parallel,
                                    add, lgag_ks, activation, gate_activation)
        self.out_heads = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in channels)
        self._init_decoder()
        if encoder_weights:
            self.load_encoder_weights(encoder_weights)

    def _init_decoder(self) -> None:
        # Official decoder init: conv weights N(0, 0.02), zero biases; BatchNorm (1, 0).
        for m in self.decoder.modules():
            if isinstance(m, nn.Conv2d) and m.weight.device.type != "meta":
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def load_encoder_weights(self, path: str | Path) -> list[str]:
        """Load the official ``pvt_v2_b2.pth`` into ``backbone``; returns the loaded keys."""
        path = resolve_weights(path, PVT_V2_B2_WEIGHTS)  # "imagenet": the hash-checked hub file
        state = pvt_v2_state_dict(read_torch(path), path)
        loaded = load_into(self.backbone, state, path, "encoder weights",
                           ("patch_embed.", "stages."))
        return ["backbone." + k for k in loaded]

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        size = x.shape[-2:]
        if self.conv is not None:
            x = self.conv(x)
        feats = []
        x = self.backbone.patch_embed(x)
        for stage in self.backbone.stages:
            x = stage(x)
            feats.append(x)
        dec = self.decoder(feats[3], [feats[2], feats[1], feats[0]])
        if self.training and self.deep_supervision:
            return [
                F.interpolate(head(d), size=size, mode="bilinear", align_corners=False)
                for head, d in zip(self.out_heads, dec)
            ]
        return F.interpolate(self.out_heads[-1](dec[-1]), size=size, mode="bilinear",
                             align_corners=False)


EMCAD_TAPS = Taps(
    encoder=tuple(f"backbone.stages.{i}" for i in range(4)),
    decoder=("decoder.mscb4", "decoder.mscb3", "decoder.mscb2"),
    final="decoder.mscb1",
)

# EMCADNet(num_classes=9, encoder='pvt_v2_b2') with the defaults above, in_channels=1 (the
# grayscale conv counts); tests/models/test_emcad.py recomputes the decoder by hand and
# the encoder with timm's pvt_v2_b2. The paper's 26.76M is the 1-class (polyp) build.
EMCAD_PVT_B2_PARAMS = 26_772_635
EMCAD_PVT_B2_1CLASS_PARAMS = 26_764_411


#: ``encoder_weights="imagenet"``: the PVTv2-B2 ImageNet-1k release, which the official
#: EMCADNet always loads (pretrained_pth/pvt/pvt_v2_b2.pth). No SHA-256 is published for
#: it: the file is read with weights_only=True (a foreign file cannot run code), unchecked.
PVT_V2_B2_WEIGHTS = PretrainedSource(
    tag="imagenet",
    url="https://github.com/whai362/PVT/releases/download/v2/pvt_v2_b2.pth",
    filename="pvt_v2_b2.pth",
    paper_default=True,
    note="PVTv2-B2 ImageNet-1k release (whai362/PVT), as in SLDGroup/EMCAD",
)


# The class is its own builder: the registry reads EMCADNet.__init__ for defaults.
register_model(
    "emcad",
    EMCADNet,
    pretrained=(PVT_V2_B2_WEIGHTS,),
    description="EMCAD: PVTv2-B2 encoder, multi-scale convolutional attention decoder",
    source="Rahman et al., CVPR 2024; code SLDGroup/EMCAD",
    taps=EMCAD_TAPS,
    published=(
        PublishedParams(
            EMCAD_PVT_B2_PARAMS,
            {"in_channels": 1, "num_classes": 9},
            "SLDGroup/EMCAD lib/networks.py EMCADNet(num_classes=9, encoder='pvt_v2_b2', "
            "kernel_sizes=[1,3,5], expansion_factor=2, dw_parallel=True, add=True, lgag_ks=3, "
            "activation='relu6')",
        ),
        PublishedParams(
            EMCAD_PVT_B2_1CLASS_PARAMS,
            {"in_channels": 1, "num_classes": 1},
            "Rahman et al. CVPR 2024 Table (PVT-EMCAD-B2, 26.76M); EMCADNet default num_classes=1",
        ),
    ),
)
