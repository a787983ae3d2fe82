"""Encoders that yield one feature map per scale, for any decoder that knows only channels.

Every encoder here is an ``nn.Module`` with

- ``channels: list[int]`` -- channels of each returned feature map, shallow to deep;
- ``reductions: list[int]`` -- the stride of each feature map w.r.t. the input;
- ``feature_modules: tuple[str, ...]`` -- the submodule whose output is each feature map
  (what ``Taps`` hook; :func:`feature_taps`);
- ``forward(x (N, C, H, W)) -> list[Tensor]`` -- the feature maps in the same order;
  feature ``i`` has shape ``(N, channels[i], H / reductions[i], W / reductions[i])`` when
  H and W are multiples of ``reductions[-1]`` (models pad to that; see models/base.py).

``ResNetEncoder`` (torchvision ResNet-18/34/50/101/152)::

    enc = ResNetEncoder(34, in_channels=1, weights="imagenet")   # or None, or a .pth path
    feats = enc(torch.randn(2, 1, 224, 224))
    enc.channels    # [64, 64, 128, 256, 512]     (50/101/152: [64, 256, 512, 1024, 2048])
    enc.reductions  # [2, 4, 8, 16, 32]           (stem_maxpool=False: [2, 2, 4, 8, 16])

Submodules: ``stem`` (conv1 7x7/2 -> bn1 -> relu), ``maxpool`` (identity when
``stem_maxpool=False``), ``layer1`` ... ``layer4`` (torchvision's own blocks). The feature
maps are the outputs of ``stem``, ``layer1``, ``layer2``, ``layer3``, ``layer4``; hook them
by these names (``Taps`` use e.g. ``"encoder.layer2"``).

Weights: ``None`` (random init), ``"imagenet"`` (torchvision's ``IMAGENET1K_V1`` file in the
torch hub cache, hash-checked and read with ``weights_only=True``; downloaded there once, only
when asked) or a path to a local torchvision checkpoint such as ``resnet34-b627a593.pth``
(``fc.*`` ignored).
With ``in_channels != 3`` the pretrained ``conv1`` filters are adapted: summed over RGB for
1 channel, otherwise repeated over the channels and scaled by ``3 / in_channels`` (as timm
does). A missing, corrupt or mismatched file raises a one-line ``CheckpointError``.

``PlainEncoder`` is the paper U-Net encoder (double 3x3 convolutions, 2x2 max-pooling):
``channels = [b, 2b, 4b, 8b, 16b]``, ``reductions = [1, 2, 4, 8, 16]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torchvision
from torch import nn

from unetzoo.errors import CheckpointError, ModelError
from unetzoo.models.blocks import DoubleConv
from unetzoo.models.registry import PretrainedSource
from unetzoo.models.weights_maps import pretrained_file

RESNET_DEPTHS = (18, 34, 50, 101, 152)
# Blocks per stage of each depth, used to recognise which ResNet a checkpoint holds.
_RESNET_LAYOUT = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}


def parse_resnet_name(name: str | int) -> int:
    """``"resnet34"`` / ``34`` -> 34; one-line ModelError otherwise."""
    text = str(name).lower().strip()
    m = re.fullmatch(r"(?:resnet)?(\d+)", text)
    if not m or int(m.group(1)) not in RESNET_DEPTHS:
        valid = ", ".join(f"resnet{d}" for d in RESNET_DEPTHS)
        raise ModelError(f"unknown encoder {name!r}; choose one of: {valid}")
    return int(m.group(1))


class PlainEncoder(nn.Module):
    """The U-Net paper encoder: five double-conv stages, 2x2 max-pooling between them.

    ``stages[0]`` is a :class:`DoubleConv`; ``stages[i]`` (i >= 1) is max-pool + DoubleConv.
    ``forward(x (N, C, H, W)) -> [(N, b, H, W), (N, 2b, H/2, W/2), ..., (N, 16b, H/16, W/16)]``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 64,
        *,
        depth: int = 4,
        batch_norm: bool = True,
        bias: bool | None = None,
    ) -> None:
        super().__init__()
        self.channels = [base_channels * 2**i for i in range(depth + 1)]
        self.reductions = [2**i for i in range(depth + 1)]
        stages: list[nn.Module] = [
            DoubleConv(in_channels, self.channels[0], batch_norm=batch_norm, bias=bias)
        ]
        for cin, cout in zip(self.channels[:-1], self.channels[1:]):
            stages.append(
                nn.Sequential(
                    nn.MaxPool2d(2),
                    DoubleConv(cin, cout, batch_norm=batch_norm, bias=bias),
                )
            )
        self.stages = nn.ModuleList(stages)
        self.feature_modules = tuple(f"stages.{i}" for i in range(depth + 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class ResNetEncoder(nn.Module):
    """torchvision ResNet as a five-scale encoder (see the module docstring).

    Args:
        depth: 18, 34, 50, 101 or 152 (or ``"resnet34"``-style names).
        in_channels: input channels; conv1 is rebuilt (and pretrained filters adapted).
        weights: None, ``"imagenet"`` or a path to a torchvision state-dict file.
        stem_maxpool: keep the 3x3/2 max-pool after the stem (False: layer1 stays at /2,
            every deeper feature is twice as large).
    """

    def __init__(
        self,
        depth: int | str = 34,
        in_channels: int = 3,
        weights: str | Path | None = None,
        stem_maxpool: bool = True,
    ) -> None:
        super().__init__()
        self.depth = parse_resnet_name(depth)
        self.in_channels = int(in_channels)
        net = getattr(torchvision.models, f"resnet{self.depth}")(weights=None)
        conv1 = net.conv1
        if self.in_channels != 3:
            conv1 = nn.Conv2d(self.in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.stem = nn.Sequential(conv1, net.bn1, net.relu)
        self.maxpool = net.maxpool if stem_maxpool else nn.Identity()
        self.layer1, self.layer2 = net.layer1, net.layer2
        self.layer3, self.layer4 = net.layer3, net.layer4
        expansion = 4 if self.depth >= 50 else 1
        self.channels = [64] + [w * expansion for w in (64, 128, 256, 512)]
        self.reductions = [2, 4, 8, 16, 32] if stem_maxpool else [2, 2, 4, 8, 16]
        self.feature_modules = ("stem", "layer1", "layer2", "layer3", "layer4")
        if weights is not None:
            self.load_torchvision_state_dict(load_resnet_weights(weights, self.depth))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f0 = self.stem(x)
        f1 = self.layer1(self.maxpool(f0))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [f0, f1, f2, f3, f4]

    def load_torchvision_state_dict(
        self, state: Mapping[str, torch.Tensor], source: str = "weights"
    ) -> None:
        """Load a torchvision ResNet state dict (``conv1.*``, ``bn1.*``, ``layerN.*``).

        ``fc.*`` is ignored; conv1 is adapted to ``in_channels``. Raises CheckpointError
        when keys or shapes do not match this depth.
        """
        mapped: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if key.startswith("fc."):
                continue
            if key.startswith("conv1."):
                key = "stem.0." + key[len("conv1.") :]
                if key == "stem.0.weight":
                    value = adapt_first_conv(value, self.in_channels)
            elif key.startswith("bn1."):
                key = "stem.1." + key[len("bn1.") :]
            mapped[key] = value
        own = self.state_dict()
        # The released torchvision .pth files predate BatchNorm's num_batches_tracked.
        for key in own:
            if key.endswith("num_batches_tracked") and key not in mapped:
                mapped[key] = own[key]
        missing = [k for k in own if k not in mapped]
        unexpected = [k for k in mapped if k not in own]
        bad_shape = [k for k in own if k in mapped and mapped[k].shape != own[k].shape]
        if missing or unexpected or bad_shape:
            found = guess_resnet_depth(state)
            what = (
                f"it looks like a resnet{found} checkpoint"
                if found
                else (
                    f"{len(missing)} missing, {len(unexpected)} unexpected, "
                    f"{len(bad_shape)} mis-shaped keys"
                )
            )
            raise CheckpointError(
                f"{source} does not fit a resnet{self.depth} encoder ({what}); pass the "
                f"torchvision resnet{self.depth} weights or pick encoder=resnet{found or '<depth>'}"
            )
        self.load_state_dict(mapped, strict=True)


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt RGB conv1 filters ``(64, 3, k, k)`` to ``(64, in_channels, k, k)``.

    1 channel: sum over RGB (a grey image equals R = G = B, so responses are preserved).
    Other counts: repeat the RGB filters cyclically and scale by ``3 / in_channels``.
    """
    if weight.shape[1] == in_channels:
        return weight
    if weight.shape[1] != 3:
        raise CheckpointError(
            f"conv1 of the weights has {weight.shape[1]} input channels; expected 3 (RGB)"
        )
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_channels // 3)
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (3.0 / in_channels)


def guess_resnet_depth(state: Mapping[str, torch.Tensor]) -> int | None:
    """Which torchvision ResNet depth a state dict holds, from its block counts."""
    blocks = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        blocks.append(max(idx) + 1 if idx else 0)
    bottleneck = any(re.match(r"layer1\.0\.conv3\.", k) for k in state)
    for depth, (layout, is_bottleneck) in _RESNET_LAYOUT.items():
        if tuple(blocks) == layout and bottleneck == is_bottleneck:
            return depth
    return None


def imagenet_source(depth: int) -> PretrainedSource:
    """torchvision's ``IMAGENET1K_V1`` file of ``resnet{depth}`` as registry data: its URL
    (torchvision's weights metadata; nothing is fetched here) and the SHA-256 prefix its
    file name carries (torchvision publishes no full digest)."""
    url = torchvision.models.get_model_weights(f"resnet{depth}").IMAGENET1K_V1.url
    filename = url.rsplit("/", 1)[-1]
    m = re.search(r"-([a-f0-9]+)\.", filename)  # torchvision's own HASH_REGEX
    return PretrainedSource(
        tag="imagenet", url=url, filename=filename, hash_prefix=m.group(1) if m else None,
        note=f"torchvision ResNet{depth}_Weights.IMAGENET1K_V1",
    )


def load_resnet_weights(weights: str | Path, depth: int) -> dict[str, torch.Tensor]:
    """Return a torchvision ResNet state dict from ``"imagenet"`` or a local file path.

    ``"imagenet"`` is torchvision's file in the torch hub cache, hash-checked
    (:func:`~unetzoo.models.weights_maps.pretrained_file`; downloaded when absent); every
    file is read with ``weights_only=True`` (torchvision's own loader unpickles).

    Raises CheckpointError (one line) for a missing, unreadable or non-state-dict file.
    """
    if isinstance(weights, str) and weights.lower() == "imagenet":
        weights = pretrained_file(imagenet_source(depth))  # hash-checked, then read below
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"encoder weights file {str(path)!r} not found; pass an existing torchvision "
            f"checkpoint (e.g. resnet{depth}-*.pth), 'imagenet' or None"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"cannot read encoder weights {str(path)!r}: the file is corrupt or not a "
            f"torch checkpoint ({type(exc).__name__})"
        ) from exc
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if (
        not isinstance(obj, Mapping)
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
        or not obj
    ):
        raise CheckpointError(
            f"encoder weights {str(path)!r} hold no state dict of tensors; pass a "
            f"torchvision resnet{depth} checkpoint"
        )
    # Checkpoints saved from nn.DataParallel prefix every key with "module.".
    return {k.removeprefix("module."): v for k, v in obj.items()}


def build_encoder(
    encoder: str | None,
    in_channels: int,
    *,
    base_channels: int = 64,
    weights: str | Path | None = None,
    batch_norm: bool = True,
    bias: bool | None = None,
) -> nn.Module:
    """``None``/``"plain"`` -> :class:`PlainEncoder`; ``"resnet18"``.. -> :class:`ResNetEncoder`."""
    if int(base_channels) < 1:
        raise ModelError(f"base_channels must be >= 1, got {base_channels}")
    if encoder is None or str(encoder).lower() in ("plain", "none", "unet"):
        if weights is not None:
            raise ModelError(
                "encoder_weights needs a ResNet encoder; pass encoder='resnet34' (or another depth)"
            )
        return PlainEncoder(in_channels, base_channels, batch_norm=batch_norm, bias=bias)
    return ResNetEncoder(parse_resnet_name(encoder), in_channels, weights=weights)


def feature_taps(encoder: nn.Module, prefix: str = "encoder", n: int = 4) -> tuple[str, ...]:
    """Dotted names (under ``prefix``) of the modules producing ``encoder``'s first ``n``
    feature maps, shallow to deep: the encoder ``Taps`` of the models built on it."""
    return tuple(f"{prefix}.{name}" for name in encoder.feature_modules[:n])
