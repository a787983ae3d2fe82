"""Swin-UNet: parameter count against the Swin-Unet code, shapes and size handling, patch
merging/expanding layouts, the Swin-T .pth key map on a self-written file, a training step
and the SelfReg taps (first and last block of each stage)."""

from __future__ import annotations

import pytest
import torch

from unetzoo.errors import CheckpointError, ModelError
from unetzoo.models import create_model, get_entry, parameter_count
from unetzoo.models.swin_unet import PatchExpand

SMALL = dict(img_size=64, embed_dim=16, depths=(2, 2, 2, 1), num_heads=(1, 2, 2, 4), window_size=4)


def test_parameter_count_matches_swin_unet_code():
    # Source: HuCaoFighting/Swin-Unet networks/swin_transformer_unet_skip_expand_decoder_sys.py,
    # SwinTransformerSys(img_size=224, Swin-T, num_classes=9): 27,168,900 parameters, the
    # model SelfReg-UNet (ChongQingNoSubway/SelfReg-UNet) trains on Synapse.
    published = get_entry("swin_unet").published[0]
    assert published.count == 27_168_900
    assert parameter_count("swin_unet", **published.config) == 27_168_900
    # The classifier is a bias-free 1x1 conv: one more class adds exactly embed_dim weights.
    assert parameter_count("swin_unet", in_channels=1, num_classes=10) == 27_168_900 + 96


def test_output_shapes_padding_and_rejection():
    torch.manual_seed(0)
    m = create_model("swin_unet", in_channels=1, num_classes=3, **SMALL)
    assert m.fixed_input_size == 64
    assert m(torch.randn(2, 1, 64, 64)).shape == (2, 3, 64, 64)
    assert m(torch.randn(1, 1, 40, 64)).shape == (1, 3, 40, 64)  # padded to 64, cropped
    with pytest.raises(ModelError, match="built for 64x64") as info:
        m(torch.randn(1, 1, 96, 64))
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="multiple of"):
        create_model("swin_unet", **{**SMALL, "img_size": 72})
    with pytest.raises(ModelError, match="heads"):
        create_model("swin_unet", **{**SMALL, "num_heads": (3, 2, 2, 4)})


def test_gray_input_is_repeated_to_three_channels():
    torch.manual_seed(0)
    m = create_model("swin_unet", in_channels=1, num_classes=2, **SMALL).eval()
    m3 = create_model("swin_unet", in_channels=3, num_classes=2, **SMALL).eval()
    m3.load_state_dict(m.state_dict())
    x = torch.randn(1, 1, 64, 64)
    torch.testing.assert_close(m(x), m3(x.repeat(1, 3, 1, 1)))


def test_patch_expand_matches_official_rearrange():
    # Official: 'b h w (p1 p2 c) -> b (h p1) (w p2) c' after Linear(dim, 2 dim), then LayerNorm.
    torch.manual_seed(0)
    pe = PatchExpand(8)
    x = torch.randn(1, 3, 5, 8)
    e = pe.expand(x)  # (1, 3, 5, 16): 2 x 2 x 4 channels
    want = torch.empty(1, 6, 10, 4)
    for p1 in range(2):
        for p2 in range(2):
            c0 = (p1 * 2 + p2) * 4
            want[:, p1::2, p2::2, :] = e[..., c0:c0 + 4]
    torch.testing.assert_close(pe(x), pe.norm(want))


def test_patch_merging_order_matches_official():
    # Official PatchMerging concatenates x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2].
    m = create_model("swin_unet", **SMALL)
    merge = m.layers[0].downsample
    x = torch.randn(1, 4, 4, 16)
    cat = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    torch.testing.assert_close(merge(x), merge.reduction(merge.norm(cat)))


def release_state(embed=16, depths=(2, 2, 2, 1), heads=(1, 2, 2, 4), window=4, patch=4,
                  img=64, seed=0):
    """Keys and shapes of Microsoft's swin_tiny_patch4_window7_224.pth ``model`` dict,
    written out by hand (buffers and the ImageNet head included)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    sd = {"patch_embed.proj.weight": r(embed, 3, patch, patch), "patch_embed.proj.bias": r(embed),
          "patch_embed.norm.weight": r(embed), "patch_embed.norm.bias": r(embed)}
    res = img // patch
    for i, (d, h) in enumerate(zip(depths, heads)):
        dim = embed * 2**i
        for j in range(d):
            k = f"layers.{i}.blocks.{j}."
            w = min(window, res)
            for n in ("norm1", "norm2"):
                sd[k + n + ".weight"], sd[k + n + ".bias"] = r(dim), r(dim)
            sd[k + "attn.relative_position_bias_table"] = r((2 * w - 1) ** 2, h)
            sd[k + "attn.relative_position_index"] = torch.zeros(w * w, w * w, dtype=torch.long)
            sd[k + "attn.qkv.weight"], sd[k + "attn.qkv.bias"] = r(3 * dim, dim), r(3 * dim)
            sd[k + "attn.proj.weight"], sd[k + "attn.proj.bias"] = r(dim, dim), r(dim)
            sd[k + "mlp.fc1.weight"], sd[k + "mlp.fc1.bias"] = r(4 * dim, dim), r(4 * dim)
            sd[k + "mlp.fc2.weight"], sd[k + "mlp.fc2.bias"] = r(dim, 4 * dim), r(dim)
            if j % 2 and res > window:
                sd[k + "attn_mask"] = torch.zeros((res // w) ** 2, w * w, w * w)
        if i < len(depths) - 1:
            sd[f"layers.{i}.downsample.reduction.weight"] = r(2 * dim, 4 * dim)
            sd[f"layers.{i}.downsample.norm.weight"] = r(4 * dim)
            sd[f"layers.{i}.downsample.norm.bias"] = r(4 * dim)
        res //= 2
    last = embed * 2 ** (len(depths) - 1)
    sd["norm.weight"], sd["norm.bias"] = r(last), r(last)
    sd["head.weight"], sd["head.bias"] = r(1000, last), r(1000)
    return sd


def test_swin_pth_key_map_encoder_and_mirrored_decoder(tmp_path):
    sd = release_state()
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": sd}, path)
    m = create_model("swin_unet", in_channels=1, num_classes=4, encoder_weights=str(path), **SMALL)
    own = m.state_dict()
    for k, v in sd.items():
        if k.startswith("head.") or k.endswith(("relative_position_index", "attn_mask")):
            continue
        torch.testing.assert_close(own[k], v, msg=k)
    # As Swin-Unet's load_from: encoder stage i initialises decoder stage 3 - i (i = 0..2).
    for i in range(3):
        for j in range(2):
            for leaf in ("attn.qkv.weight", "attn.relative_position_bias_table", "mlp.fc2.bias"):
                torch.testing.assert_close(own[f"layers_up.{3 - i}.blocks.{j}.{leaf}"],
                                           sd[f"layers.{i}.blocks.{j}.{leaf}"])
    # The decoder's own layers (expanding, concat projections) keep their initialisation.
    assert not any(k.startswith("layers_up.0.") for k in sd)
    # A bare state dict (no 'model' wrapper) loads as well.
    torch.save(sd, tmp_path / "bare.pth")
    create_model("swin_unet", encoder_weights=str(tmp_path / "bare.pth"), **SMALL)


def test_bad_swin_files_are_one_line_checkpoint_errors(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00garbage")
    foreign = tmp_path / "foreign.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}}, foreign)
    wider = tmp_path / "wider.pth"
    torch.save({"model": release_state(embed=32, heads=(1, 2, 2, 4))}, wider)
    partial = tmp_path / "partial.pth"
    sd = release_state()
    del sd["layers.1.blocks.0.attn.qkv.weight"]
    torch.save({"model": sd}, partial)
    for path, hint in ((tmp_path / "none.pth", "does not exist"), (corrupt, "cannot read"),
                       (foreign, "not a Swin"), (wider, "shape"), (partial, "lacks")):
        with pytest.raises(CheckpointError, match=hint) as info:
            create_model("swin_unet", encoder_weights=str(path), **SMALL)
        assert "\n" not in str(info.value)


def test_training_step_reduces_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    m = create_model("swin_unet", in_channels=1, num_classes=3, **SMALL)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    x, y = torch.randn(2, 1, 64, 64), torch.randint(0, 3, (2, 64, 64))
    losses = []
    for _ in range(4):
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert m.layers[0].blocks[0].attn.relative_position_bias_table.grad.abs().sum() > 0


def test_taps_are_first_and_last_block_of_each_stage():
    torch.manual_seed(0)
    m = create_model("swin_unet", in_channels=1, num_classes=3, **SMALL)
    taps = get_entry("swin_unet").taps_for(m)
    # SelfReg-UNet trainer.py: feature[i][0] and feature[i][-1] for 4 encoder stages, the
    # same for 3 decoder stages, and the 4x-expanded feature before the output conv.
    assert len(taps.encoder) == 8 and len(taps.decoder) == 6 and taps.final == "up"
    seen = {}
    hooks = [
        m.get_submodule(n).register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, o))
        for n in (*taps.encoder, *taps.decoder, taps.final)
    ]
    m(torch.randn(2, 1, 64, 64))
    for h in hooks:
        h.remove()
    assert seen["layers.0.tap_first"].shape == (2, 16, 16, 16)
    assert seen["layers.3.tap_last"].shape == (2, 128, 2, 2)
    assert seen["layers_up.1.tap_first"].shape == (2, 64, 4, 4)
    assert seen["layers_up.3.tap_last"].shape == (2, 16, 16, 16)
    assert seen["up"].shape == (2, 16, 64, 64)
