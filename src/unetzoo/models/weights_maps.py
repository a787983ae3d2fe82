"""Pretrained encoder weights in their official release formats, read without unpickling.

The comparison models (TransUNet, Swin-UNet, EMCAD) and the ResNet encoders start from
ImageNet weights. ``encoder_weights`` is either a local file (``PATH``) or the tag of the
model's :class:`~unetzoo.models.registry.PretrainedSource` (``"imagenet"``), which names
``$TORCH_HOME/hub/checkpoints/<filename>``: :func:`pretrained_file` checks that file's
SHA-256 (the full digest where known, else the file-name prefix as torchvision's
``check_hash``) and downloads it from the release URL only when it is absent. Every file
is read with ``torch.load(weights_only=True)`` or ``np.load(allow_pickle=False)``: a pickle
planted in the hub cache is refused by its hash and could not run code if it were not.
This module reads those files and renames their keys to ours; docs/comparison_models.md
lists every key map.

- ``R50+ViT-B_16.npz`` (Google's ViT release, JAX/Flax names, HWIO conv kernels):
  :func:`vit_npz_to_state_dict`.
- ``swin_tiny_patch4_window7_224.pth`` (Microsoft Swin release, ``{"model": state_dict}``):
  :func:`swin_state_dict`.
- ``pvt_v2_b2.pth`` (PVTv2 release, a bare state dict): :func:`pvt_v2_state_dict`.

Every failure (missing, unreadable, foreign or mismatched file) is one
:class:`~unetzoo.errors.CheckpointError` line naming the file and what to do.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unetzoo.errors import CheckpointError
from unetzoo.models.registry import PretrainedSource

StateDict = dict[str, torch.Tensor]

#: Spellings of "no pretrained weights" (the registry maps them to None as well).
NO_WEIGHTS = frozenset({"none", "null", ""})


# --------------------------------------------------------------------------- hub cache


def hub_checkpoint(source: PretrainedSource) -> Path:
    """Where ``source``'s file lives in the torch hub cache (``$TORCH_HOME/hub/checkpoints``,
    torchvision's own place for it)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / source.filename


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_hash(path: Path, source: PretrainedSource) -> str:
    """``path``'s SHA-256 if it is the one ``source`` publishes (full digest, else the
    prefix; neither known: any), else one-line :class:`CheckpointError`."""
    digest = sha256_file(path)
    want = source.sha256 or source.hash_prefix
    if want and not digest.startswith(want.lower()):
        raise CheckpointError(
            f"{path} is not the released {source.filename}: its SHA-256 is {digest[:16]}..., "
            f"the release's {'is' if source.sha256 else 'starts with'} {want[:16]}; delete it "
            f"and download {source.url} again (or pass a file you trust as its path)"
        )
    return digest


def pretrained_file(source: PretrainedSource, download: bool = True) -> Path:
    """The verified hub-cache file of ``source``; fetched from ``source.url`` when absent
    and ``download`` (never in tests: they write the file themselves).

    Raises:
        CheckpointError: a file whose hash is not the release's (never loaded), or an
            absent file that cannot (or may not) be downloaded; one line naming the URL
            and the place to put the file.
    """
    path = hub_checkpoint(source)
    if not path.is_file():
        if not download:
            raise CheckpointError(missing_weights_line(source))
        _download(source, path)
    check_hash(path, source)
    return path


def missing_weights_line(source: PretrainedSource, what: str = "the encoder weights") -> str:
    return (f"{what} {source.filename} are not in the torch hub cache: download "
            f"{source.url} to {hub_checkpoint(source)} (or pass its path with "
            "--encoder-weights PATH)")


def _download(source: PretrainedSource, path: Path) -> None:
    """``torch.hub.download_url_to_file`` (a temporary file, then a rename) into the cache;
    a file that fails the hash is removed (it is ours)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(source.url, str(path), progress=True)
    except Exception as exc:  # network, proxy or disk failure: one line either way
        raise CheckpointError(
            f"cannot fetch {source.url} ({type(exc).__name__}: {str(exc)[:120]}); "
            f"{missing_weights_line(source)}"
        ) from exc
    try:
        check_hash(path, source)
    except CheckpointError:
        os.unlink(path)
        raise


def encoder_provenance(model: str, options: dict[str, Any]) -> dict[str, Any]:
    """What a report says about a model's encoder: ``{"encoder_weights": value}`` for a
    model that takes the option, plus ``"encoder_note"`` when its official recipe starts
    from a pretrained file and this one was trained from scratch; ``{}`` otherwise."""
    from unetzoo.models.registry import get_entry

    try:
        entry = get_entry(model)
    except Exception:  # noqa: BLE001 - an unknown name is reported elsewhere
        return {}
    if "encoder_weights" not in (entry.accepted_options() or options):
        return {}
    value = options.get("encoder_weights", entry.default_options().get("encoder_weights"))
    if isinstance(value, str) and value.lower() in NO_WEIGHTS:
        value = None
    out: dict[str, Any] = {"encoder_weights": value}
    source = entry.paper_weights()
    if value is None and source is not None:
        out["encoder_note"] = (
            f"encoder trained from scratch (encoder_weights=none): the official recipe "
            f"starts from the pretrained {source.filename}, so scores are not comparable "
            "with the paper's"
        )
    return out


def resolve_weights(value: str | Path, source: PretrainedSource | None) -> Path:
    """The file an ``encoder_weights`` value names: ``source.tag`` (``"imagenet"``) ->
    the verified hub-cache file; anything else -> that local path (checked to exist)."""
    if source is not None and isinstance(value, str) and value.lower() == source.tag.lower():
        return pretrained_file(source)
    return _check_path(value, "encoder weights")


def _check_path(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"{what} file {str(p)!r} does not exist; pass the path of the downloaded file")
    return p


def read_npz(path: str | Path, what: str = "encoder weights") -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file as a dict (one-line error if unreadable)."""
    p = _check_path(path, what)
    try:
        with np.load(p, allow_pickle=False) as data:
            return {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(
            f"cannot read {what} {str(p)!r} as a NumPy .npz archive ({exc}); "
            "download the official .npz file again"
        ) from exc


def read_torch(path: str | Path, what: str = "encoder weights") -> Any:
    """``torch.load`` a ``.pth`` file on the CPU with ``weights_only=True``."""
    p = _check_path(path, what)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt / pickled files
        raise CheckpointError(
            f"cannot read {what} {str(p)!r} as a PyTorch weight file "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "download the official .pth file again"
        ) from exc


def load_into(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | Path,
    what: str,
    required_prefixes: tuple[str, ...] = ("",),
) -> list[str]:
    """Copy ``state`` into ``module``'s parameters/buffers by name, checking shapes.

    Every parameter whose name starts with one of ``required_prefixes`` must be present
    with the right shape; other model keys may be absent (for example a decoder the
    release does not have). Keys of ``state`` the model lacks are ignored.

    Returns:
        the names that were loaded.
    """
    own = dict(module.named_parameters())
    own.update(dict(module.named_buffers()))
    missing = [
        k for k, _ in module.named_parameters()
        if any(k.startswith(p) for p in required_prefixes) and k not in state
    ]
    if missing:
        raise CheckpointError(
            f"{what} {str(path)!r} lacks {len(missing)} expected key(s), e.g. {missing[0]!r}; "
            "is it the right release file for this model configuration?"
        )
    loaded = []
    with torch.no_grad():
        for k, v in state.items():
            if k not in own:
                continue
            if not isinstance(v, torch.Tensor):
                raise CheckpointError(f"{what} {str(path)!r}: entry {k!r} is not a tensor")
            if tuple(v.shape) != tuple(own[k].shape):
                raise CheckpointError(
                    f"{what} {str(path)!r}: {k!r} has shape {tuple(v.shape)} but the model "
                    f"needs {tuple(own[k].shape)}; the file is for a different configuration"
                )
            own[k].copy_(v.to(own[k].dtype))
            loaded.append(k)
    return loaded


# --------------------------------------------------------------------------- ViT npz


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).float()


def _conv(a: np.ndarray) -> torch.Tensor:
    # Flax stores conv kernels HWIO; PyTorch wants OIHW.
    return _t(a.transpose(3, 2, 0, 1))


def vit_npz_to_state_dict(
    arrays: Mapping[str, np.ndarray], num_layers: int, grid: tuple[int, int], path: str | Path
) -> StateDict:
    """Rename Google ViT / R50+ViT ``.npz`` arrays to TransUNet's encoder keys.

    Args:
        arrays: the npz contents (``read_npz``).
        num_layers: Transformer blocks of the model; blocks beyond it are ignored, missing
            ones fail at :func:`load_into`.
        grid: the model's token grid ``(H/16, W/16)``; the position embedding is resized
            bilinearly when the release grid differs (14x14 at 224 px).

    Returns:
        a state dict with keys ``hybrid.*``, ``patch_embed.*``, ``pos_embed``,
        ``blocks.{i}.*`` and ``encoder_norm.*`` (see docs/comparison_models.md).
    """
    out: StateDict = {}
    try:
        for k, v in arrays.items():
            if k == "conv_root/kernel":
                out["hybrid.root.conv.weight"] = _conv(v)
            elif k.startswith("gn_root/"):
                out["hybrid.root.gn." + _norm_name(k)] = _t(v).reshape(-1)
            elif re.match(r"block\d+/unit\d+/", k):
                blk, unit, name, leaf = k.split("/")
                dst = f"hybrid.body.{blk}.{unit}."
                if name == "conv_proj":
                    out[dst + "downsample.weight"] = _conv(v)
                elif name.startswith("conv"):
                    out[dst + name + ".weight"] = _conv(v)
                else:  # gn1, gn2, gn3, gn_proj
                    out[dst + name + "." + _norm_name(leaf)] = _t(v).reshape(-1)
            elif k == "embedding/kernel":
                out["patch_embed.weight"] = _conv(v)
            elif k == "embedding/bias":
                out["patch_embed.bias"] = _t(v)
            elif k.startswith("Transformer/encoder_norm/"):
                out["encoder_norm." + _norm_name(k)] = _t(v)
        for i in range(num_layers):
            root = f"Transformer/encoderblock_{i}/"
            if root + "LayerNorm_0/scale" not in arrays:
                continue  # reported as missing by load_into
            att = root + "MultiHeadDotProductAttention_1/"
            dim = arrays[att + "out/bias"].shape[0]
            # q, k, v kernels are (dim, heads, head_dim); timm fuses them into one qkv Linear.
            qkv_w = [_t(arrays[att + f"{n}/kernel"]).reshape(dim, dim).t() for n in ("query", "key", "value")]
            qkv_b = [_t(arrays[att + f"{n}/bias"]).reshape(-1) for n in ("query", "key", "value")]
            dst = f"blocks.{i}."
            out[dst + "attn.qkv.weight"] = torch.cat(qkv_w, 0)
            out[dst + "attn.qkv.bias"] = torch.cat(qkv_b, 0)
            out[dst + "attn.proj.weight"] = _t(arrays[att + "out/kernel"]).reshape(dim, dim).t()
            out[dst + "attn.proj.bias"] = _t(arrays[att + "out/bias"])
            for src, name in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
                out[dst + name + ".weight"] = _t(arrays[root + src + "/scale"])
                out[dst + name + ".bias"] = _t(arrays[root + src + "/bias"])
            for src, name in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
                out[dst + f"mlp.{name}.weight"] = _t(arrays[root + f"MlpBlock_3/{src}/kernel"]).t()
                out[dst + f"mlp.{name}.bias"] = _t(arrays[root + f"MlpBlock_3/{src}/bias"])
        pos_key = "Transformer/posembed_input/pos_embedding"
        if pos_key in arrays:
            out["pos_embed"] = resize_pos_embed(_t(arrays[pos_key]), grid)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"encoder weights {str(path)!r} do not follow the R50+ViT-B/16 .npz layout ({exc}); "
            "use Google's ViT release file (e.g. R50+ViT-B_16.npz)"
        ) from exc
    return out


def _norm_name(key: str) -> str:
    return "weight" if key.endswith("scale") else "bias"


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a ``(1, N[+1], C)`` position embedding to ``(1, gh*gw, C)``.

    A leading class token (ViT releases have ``N + 1`` rows) is dropped, as in TransUNet;
    a square source grid is resized bilinearly to ``grid``.
    """
    n = pos.shape[1]
    side = int(round(n**0.5))
    if side * side != n:
        pos = pos[:, 1:]
        n -= 1
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"position embedding with {n + 1} tokens is not a square grid")
    if (side, side) == tuple(grid):
        return pos
    c = pos.shape[-1]
    img = pos.reshape(1, side, side, c).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=grid, mode="bilinear", align_corners=False)
    return img.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], c)


# --------------------------------------------------------------------------- Swin pth


def swin_state_dict(obj: Any, num_stages: int, path: str | Path) -> StateDict:
    """Keys of the official Swin-T ``.pth`` (``{"model": ...}``) for Swin-UNet.

    Encoder keys (``patch_embed.*``, ``layers.{i}.blocks.*``, ``layers.{i}.downsample.*``,
    ``norm.*``) keep their names. As in the Swin-Unet code, the blocks of encoder stage
    ``i`` also initialise decoder stage ``num_stages - 1 - i`` (``layers_up.{j}.blocks.*``);
    the classifier ``head.*`` and the recomputed buffers are dropped.
    """
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not any(str(k).startswith("layers.") for k in obj):
        raise CheckpointError(
            f"encoder weights {str(path)!r} are not a Swin Transformer checkpoint "
            "(expected {'model': {'layers.0.blocks.0...': ...}}); use "
            "swin_tiny_patch4_window7_224.pth from the Swin release"
        )
    out: StateDict = {}
    for k, v in obj.items():
        if k.startswith("head.") or k.endswith(("relative_position_index", "attn_mask")):
            continue
        out[k] = v
        m = re.match(r"layers\.(\d+)\.blocks\.(.*)$", k)
        if m:
            j = num_stages - 1 - int(m.group(1))
            if j >= 1:  # decoder stage 0 is a bare patch expanding layer
                out[f"layers_up.{j}.blocks.{m.group(2)}"] = v
    return out


# --------------------------------------------------------------------------- PVTv2 pth


def pvt_v2_state_dict(obj: Any, path: str | Path) -> StateDict:
    """Rename an official PVTv2 ``.pth`` (``patch_embed1``, ``block1.0``, ``norm1``) to timm's
    ``PyramidVisionTransformerV2`` keys (``patch_embed``, ``stages.0.blocks.0``,
    ``stages.0.norm``); files already in timm names pass through. ``head.*`` is dropped."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not any(
        str(k).startswith(("patch_embed1.", "patch_embed.")) for k in obj
    ):
        raise CheckpointError(
            f"encoder weights {str(path)!r} are not a PVTv2 checkpoint (no patch_embed1.* keys); "
            "use pvt_v2_b2.pth from the PVTv2 release"
        )
    out: StateDict = {}
    for k, v in obj.items():
        if k.startswith("head."):
            continue
        k = re.sub(r"^patch_embed1\.", "patch_embed.", k)
        k = re.sub(r"^patch_embed([234])\.", lambda m: f"stages.{int(m.group(1)) - 1}.downsample.", k)
        k = k.replace("dwconv.dwconv", "dwconv")
        k = re.sub(r"^block(\d+)\.(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}.", k)
        k = re.sub(r"^norm(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.norm.", k)
        out[k] = v
    return out
