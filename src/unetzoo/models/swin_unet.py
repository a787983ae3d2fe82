"""Swin-UNet (Cao et al. 2021): a pure Swin Transformer U-shape.

Layout of the official code (HuCaoFighting/Swin-Unet,
``networks/swin_transformer_unet_skip_expand_decoder_sys.py``, ``SwinTransformerSys``):

- patch embedding (4x4 conv + LayerNorm), four encoder stages of Swin blocks (Swin-T: embed
  96, depths 2-2-2-2, heads 3-6-12-24, window 7), patch merging after stages 1-3, a final
  LayerNorm (``norm``);
- decoder: a patch expanding layer (``layers_up.0``), then three stages that concat the
  mirrored encoder input, project back with a Linear (``concat_back_dim``), run Swin
  blocks (depths of the mirrored encoder stage) and expand (all but the last);
- LayerNorm (``norm_up``), a final 4x patch expanding (``up``) and a 1x1 conv without bias.

Blocks, windows and patch merging come from timm (NHWC tensors); patch expanding is here.
A 1-channel input is repeated to 3 channels, as the official ``SwinUnet.forward`` does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from timm.layers import PatchEmbed
from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock
from torch import nn

from unetzoo.errors import ModelError
from unetzoo.models.base import check_input, crop_to
from unetzoo.models.registry import PretrainedSource, PublishedParams, Taps, register_model
from unetzoo.models.weights_maps import load_into, read_torch, resolve_weights, swin_state_dict


class FeatureTap(nn.Identity):
    """A named point whose forward output (NCHW) feature-distillation hooks can read."""


class PatchExpand(nn.Module):
    """``(B, H, W, C)`` -> ``(B, 2H, 2W, C/2)``: Linear C->2C, pixel shuffle, LayerNorm.

    Channels are split as ``(p1 p2 c)`` like the official einops rearrange, so released
    decoder weights would line up.
    """

    def __init__(self, dim: int, scale: int = 2, norm_layer: type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.scale = scale
        # x2 doubles channels then splits into 4 (C/2 out); x4 keeps C out (16x expansion).
        out_dim = dim // 2 if scale == 2 else dim
        self.expand = nn.Linear(dim, out_dim * scale * scale, bias=False)
        self.norm = norm_layer(out_dim)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        s = self.scale
        x = self.expand(x).view(b, h, w, s, s, self.out_dim)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, h * s, w * s, self.out_dim)
        return self.norm(x)


class FinalPatchExpand(PatchExpand):
    """The final x4 expanding; returns NCHW (the last decoder feature, SelfReg's teacher)."""

    def __init__(self, dim: int, norm_layer: type[nn.Module] = nn.LayerNorm):
        super().__init__(dim, scale=4, norm_layer=norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).permute(0, 3, 1, 2)


class SwinStage(nn.Module):
    """Swin blocks (alternating W-MSA / SW-MSA) followed by an optional resampling layer.

    ``tap_first`` / ``tap_last`` see the NCHW outputs of the first and the last block.
    """

    def __init__(
        self,
        dim: int,
        resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        drop: float,
        attn_drop: float,
        drop_path: list[float],
        resample: str | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim=dim, input_resolution=resolution, num_heads=num_heads,
                window_size=window_size, shift_size=0 if i % 2 == 0 else window_size // 2,
                mlp_ratio=mlp_ratio, qkv_bias=True, proj_drop=drop, attn_drop=attn_drop,
                drop_path=drop_path[i],
            )
            for i in range(depth)
        )
        self.tap_first = FeatureTap()
        self.tap_last = FeatureTap()
        if resample == "down":
            self.downsample = PatchMerging(dim)
        elif resample == "up":
            self.upsample = PatchExpand(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i == 0:
                self.tap_first(x.permute(0, 3, 1, 2))
            if i == last:
                self.tap_last(x.permute(0, 3, 1, 2))
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


def _check_config(
    img_size: int, patch_size: int, embed_dim: int, depths: tuple[int, ...],
    num_heads: tuple[int, ...],
) -> None:
    """One-line ModelError for stage lists, sizes and head counts that cannot build."""
    n = len(depths)
    if len(num_heads) != n or n < 2:
        raise ModelError(
            f"swin_unet: depths and num_heads need the same length >= 2, got {depths}, {num_heads}"
        )
    unit = patch_size * 2 ** (n - 1)
    if img_size % unit:
        raise ModelError(
            f"swin_unet: img_size must be a multiple of patch_size * 2**(stages-1) = {unit}, "
            f"got {img_size}"
        )
    for i, h in enumerate(num_heads):
        if (embed_dim * 2**i) % h:
            raise ModelError(
                f"swin_unet: stage {i} width {embed_dim * 2**i} is not divisible by {h} heads"
            )


class SwinUNet(nn.Module):
    """Swin-UNet; ``(N, C, H, W)`` -> logits ``(N, num_classes, H, W)``.

    The window grid and the patch-merging pyramid bind the input to ``img_size``
    (``fixed_input_size``): smaller inputs are zero-padded (bottom/right) to it and the
    logits cropped back; larger ones are rejected with a :class:`ModelError`.

    Args:
        in_channels: 1 is repeated to 3 (official), 3 is used as is, other counts get their
            own patch embedding (the pretrained one then does not apply).
        num_classes: output classes.
        img_size: input side (224); must be a multiple of ``patch_size * 2**(stages-1)``.
        patch_size, embed_dim, depths, num_heads, window_size, mlp_ratio: Swin-T
            (4, 96, (2, 2, 2, 2), (3, 6, 12, 24), 7, 4.0).
        drop_rate, attn_drop_rate, drop_path_rate: 0.0, 0.0, 0.2 (DROP_PATH_RATE of the
            official configs/swin_tiny_patch4_window7_224_lite.yaml).
        encoder_weights: None (random init), ``"imagenet"`` (``swin_tiny_patch4_window7_224.pth``
            from the torch hub cache) or a path to it.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        img_size: int = 224,
        patch_size: int = 4,
        embed_dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 2, 2),
        num_heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        encoder_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        _check_config(img_size, patch_size, embed_dim, depths, num_heads)
        n = len(depths)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.img_size = img_size
        self.fixed_input_size = img_size
        self.num_stages = n
        self.repeat_gray = in_channels == 1
        stem_in = 3 if in_channels in (1, 3) else in_channels

        self.patch_embed = PatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=stem_in, embed_dim=embed_dim,
            norm_layer=nn.LayerNorm, output_fmt="NHWC",
        )
        self.pos_drop = nn.Dropout(drop_rate)
        res0 = img_size // patch_size
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        common = dict(window_size=window_size, mlp_ratio=mlp_ratio, drop=drop_rate,
                      attn_drop=attn_drop_rate)

        def stage_dpr(i: int) -> list[float]:
            return dpr[sum(depths[:i]):sum(depths[: i + 1])]

        self.layers = nn.ModuleList(
            SwinStage(
                embed_dim * 2**i, (res0 // 2**i, res0 // 2**i), depths[i], num_heads[i],
                drop_path=stage_dpr(i), resample="down" if i < n - 1 else None, **common,
            )
            for i in range(n)
        )
        self.norm = nn.LayerNorm(embed_dim * 2 ** (n - 1))

        self.layers_up = nn.ModuleList()
        self.concat_back_dim = nn.ModuleList()
        for j in range(n):
            i = n - 1 - j  # mirrored encoder stage
            dim = embed_dim * 2**i
            if j == 0:
                self.layers_up.append(PatchExpand(dim))
                self.concat_back_dim.append(nn.Identity())
            else:
                self.layers_up.append(SwinStage(
                    dim, (res0 // 2**i, res0 // 2**i), depths[i], num_heads[i],
                    drop_path=stage_dpr(i), resample="up" if j < n - 1 else None, **common,
                ))
                self.concat_back_dim.append(nn.Linear(2 * dim, dim))
        self.norm_up = nn.LayerNorm(embed_dim)
        self.up = FinalPatchExpand(embed_dim)
        self.output = nn.Conv2d(embed_dim, num_classes, kernel_size=1, bias=False)
        self.apply(self._init_weights)
        if encoder_weights:
            self.load_encoder_weights(encoder_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear) and m.weight.device.type != "meta":
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.weight.device.type != "meta":
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def load_encoder_weights(self, path: str | Path) -> list[str]:
        """Load ``swin_tiny_patch4_window7_224.pth``: the encoder, and its blocks into the
        mirrored decoder stages as the Swin-Unet code does; returns the loaded keys."""
        path = resolve_weights(path, SWIN_T_WEIGHTS)  # "imagenet": the hash-checked hub file
        state = swin_state_dict(read_torch(path), self.num_stages, path)
        prefixes: tuple[str, ...] = ("layers.", "norm.")
        if self.repeat_gray or self.in_channels == 3:
            prefixes += ("patch_embed.",)
        else:
            state = {k: v for k, v in state.items() if k != "patch_embed.proj.weight"}
        return load_into(self, state, path, "encoder weights", prefixes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` with H, W <= img_size -> ``(N, num_classes, H, W)``."""
        check_input(x, self.in_channels, "swin_unet")
        h, w = x.shape[-2:]
        s = self.img_size
        if h > s or w > s:
            raise ModelError(
                f"swin_unet was built for {s}x{s} inputs but got {h}x{w}; resize the images "
                f"to {s} (--img-size {s}) or rebuild the model with img_size >= {max(h, w)}"
            )
        if (h, w) != (s, s):
            x = nn.functional.pad(x, (0, s - w, 0, s - h))
        return crop_to(self.forward_padded(x), (h, w))

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat_gray:
            x = x.repeat(1, 3, 1, 1)
        x = self.pos_drop(self.patch_embed(x))
        skips = []
        for layer in self.layers:
            skips.append(x)
            x = layer(x)
        x = self.norm(x)
        for j, layer_up in enumerate(self.layers_up):
            if j > 0:
                x = self.concat_back_dim[j](torch.cat([x, skips[self.num_stages - 1 - j]], -1))
            x = layer_up(x)
        x = self.up(self.norm_up(x))
        return self.output(x)


def _swin_taps(model: nn.Module) -> Taps:
    n = model.num_stages
    enc = tuple(f"layers.{i}.tap_{w}" for i in range(n) for w in ("first", "last"))
    dec = tuple(f"layers_up.{j}.tap_{w}" for j in range(1, n) for w in ("first", "last"))
    return Taps(encoder=enc, decoder=dec, final="up")


SWIN_UNET_T_PARAMS = 27_168_900


#: ``encoder_weights="imagenet"``: Microsoft's Swin-T ImageNet-1k release, which the
#: official train.py always loads (MODEL.PRETRAIN_CKPT). No SHA-256 is published for it:
#: the file is read with weights_only=True (a foreign file cannot run code), unchecked.
SWIN_T_WEIGHTS = PretrainedSource(
    tag="imagenet",
    url="https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_tiny_patch4_window7_224.pth",
    filename="swin_tiny_patch4_window7_224.pth",
    paper_default=True,
    note="Microsoft Swin-T ImageNet-1k release, as in HuCaoFighting/Swin-Unet",
)


# The class is its own builder: the registry reads SwinUNet.__init__ for defaults.
register_model(
    "swin_unet",
    SwinUNet,
    pretrained=(SWIN_T_WEIGHTS,),
    description="Swin-UNet: Swin-T encoder, patch-expanding Swin decoder, 4x final expanding",
    source="Cao et al. 2021, arXiv:2105.05537; code HuCaoFighting/Swin-Unet",
    taps=_swin_taps,
    published=(
        PublishedParams(
            SWIN_UNET_T_PARAMS,
            {"in_channels": 1, "num_classes": 9, "img_size": 224},
            "HuCaoFighting/Swin-Unet networks/swin_transformer_unet_skip_expand_decoder_sys.py "
            "SwinTransformerSys (Swin-T, 224 px, 9 classes), as trained in "
            "ChongQingNoSubway/SelfReg-UNet",
        ),
    ),
)
