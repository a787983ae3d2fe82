"""TransUNet: parameter count against the official config, shapes, the R50+ViT .npz key
map (on a file this test writes in Google's release layout), a training step and taps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unetzoo.errors import CheckpointError, ModelError
from unetzoo.models import create_model, get_entry, parameter_count

SMALL = dict(
    img_size=64, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64,
    resnet_layers=(1, 1, 1), resnet_width=32, decoder_channels=(32, 16, 16, 8),
    head_channels=32,
)


def official_count(
    num_classes=9, img_size=224, hidden=768, mlp=3072, layers=12, res_layers=(3, 4, 9),
    width=64, dec=(256, 128, 64, 16), head_ch=512, n_skip=3,
) -> int:
    """By hand from Beckschen/TransUNet vit_seg_configs.get_r50_b16_config and the modules of
    vit_seg_modeling.py / vit_seg_modeling_resnet_skip.py (no biases in StdConv2d, GroupNorm
    scale+bias, q/k/v/out Linears with bias, conv-BN-ReLU decoder convs without bias)."""
    p = 3 * width * 49 + 2 * width  # root conv + GN
    cin = width
    for i, n in enumerate(res_layers):
        cout, cmid = width * 4 * 2**i, width * 2**i
        unit = cmid * (cin + 9 * cmid + cout) + 4 * cmid + 2 * cout
        p += unit + cin * cout + 2 * cout  # first unit has the projection
        p += (n - 1) * (cmid * (cout + 9 * cmid + cout) + 4 * cmid + 2 * cout)
        cin = cout
    p += cin * hidden + hidden + (img_size // 16) ** 2 * hidden  # patch embed + pos embed
    p += layers * (4 * (hidden * hidden + hidden) + 2 * hidden * mlp + mlp + hidden + 4 * hidden)
    p += 2 * hidden  # encoder_norm
    p += hidden * head_ch * 9 + 2 * head_ch  # conv_more
    skips = [width * 8, width * 4, width, 16][:n_skip] + [0] * (4 - n_skip)
    for ci, co, s in zip([head_ch, *dec[:-1]], dec, skips):
        p += (ci + s) * co * 9 + 2 * co + co * co * 9 + 2 * co
    return p + dec[-1] * num_classes * 9 + num_classes


def test_parameter_count_matches_official_config():
    # Source: Beckschen/TransUNet networks/vit_seg_configs.py (R50-ViT-B_16, n_skip=3) and
    # vit_seg_modeling.py VisionTransformer(config, img_size=224, num_classes=9).
    published = get_entry("transunet").published[0]
    assert published.count == official_count()
    assert parameter_count("transunet", **published.config) == published.count
    assert round(published.count / 1e6, 2) == 105.28  # the figure papers quote
    # The hand count tracks the config, so it also checks a non-default build.
    small = dict(num_classes=3, **{k: v for k, v in SMALL.items()})
    got = parameter_count("transunet", in_channels=1, **small)
    assert got == official_count(
        num_classes=3, img_size=64, hidden=32, mlp=64, layers=2, res_layers=(1, 1, 1),
        width=32, dec=(32, 16, 16, 8), head_ch=32,
    )


def test_output_shapes_and_input_handling():
    torch.manual_seed(0)
    m = create_model("transunet", in_channels=1, num_classes=3, **SMALL)
    assert m.fixed_input_size == 64
    assert m(torch.randn(2, 1, 64, 64)).shape == (2, 3, 64, 64)
    # Not a multiple of 16 and not square: padded, pos embedding interpolated, cropped.
    assert m(torch.randn(1, 1, 50, 70)).shape == (1, 3, 50, 70)
    with pytest.raises(ModelError, match="input channel"):
        m(torch.randn(1, 3, 64, 64))
    m3 = create_model("transunet", in_channels=4, num_classes=2, **SMALL)
    assert m3.hybrid.root.conv.in_channels == 4
    assert m3(torch.randn(1, 4, 32, 32)).shape == (1, 2, 32, 32)


def test_gray_input_is_repeated_to_three_channels():
    torch.manual_seed(0)
    m = create_model("transunet", in_channels=1, num_classes=2, **SMALL).eval()
    m3 = create_model("transunet", in_channels=3, num_classes=2, **SMALL).eval()
    m3.load_state_dict(m.state_dict())
    x = torch.randn(1, 1, 32, 32)
    torch.testing.assert_close(m(x), m3(x.repeat(1, 3, 1, 1)))


@pytest.mark.parametrize("bad", [dict(img_size=60), dict(num_heads=5), dict(resnet_width=48)])
def test_bad_options_are_one_line_model_errors(bad):
    with pytest.raises(ModelError) as info:
        create_model("transunet", **{**SMALL, **bad})
    assert "\n" not in str(info.value)


def write_release_npz(path, *, hidden=32, heads=2, mlp=64, layers=2, res=(1, 1, 1), width=32,
                      grid=4, seed=0):
    """A file with the names and shapes of Google's R50+ViT-B_16.npz (Flax: HWIO kernels,
    q/k/v kernels (hidden, heads, head_dim), a class token in the position embedding)."""
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    a = {"conv_root/kernel": r(7, 7, 3, width), "gn_root/scale": r(width), "gn_root/bias": r(width)}
    cin = width
    for b, n in enumerate(res, start=1):
        cout, cmid = width * 4 * 2 ** (b - 1), width * 2 ** (b - 1)
        for u in range(1, n + 1):
            k = f"block{b}/unit{u}/"
            ci = cin if u == 1 else cout
            a[k + "conv1/kernel"] = r(1, 1, ci, cmid)
            a[k + "conv2/kernel"] = r(3, 3, cmid, cmid)
            a[k + "conv3/kernel"] = r(1, 1, cmid, cout)
            for g, c in (("gn1", cmid), ("gn2", cmid), ("gn3", cout)):
                a[k + g + "/scale"], a[k + g + "/bias"] = r(1, 1, 1, c), r(1, 1, 1, c)
            if u == 1:
                a[k + "conv_proj/kernel"] = r(1, 1, ci, cout)
                a[k + "gn_proj/scale"], a[k + "gn_proj/bias"] = r(1, 1, 1, cout), r(1, 1, 1, cout)
        cin = cout
    a["embedding/kernel"], a["embedding/bias"] = r(1, 1, cin, hidden), r(hidden)
    a["cls"] = r(1, 1, hidden)
    a["Transformer/posembed_input/pos_embedding"] = r(1, 1 + grid * grid, hidden)
    hd = hidden // heads
    for i in range(layers):
        k = f"Transformer/encoderblock_{i}/"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            a[k + ln + "/scale"], a[k + ln + "/bias"] = r(hidden), r(hidden)
        att = k + "MultiHeadDotProductAttention_1/"
        for n in ("query", "key", "value"):
            a[att + n + "/kernel"], a[att + n + "/bias"] = r(hidden, heads, hd), r(heads, hd)
        a[att + "out/kernel"], a[att + "out/bias"] = r(heads, hd, hidden), r(hidden)
        a[k + "MlpBlock_3/Dense_0/kernel"], a[k + "MlpBlock_3/Dense_0/bias"] = r(hidden, mlp), r(mlp)
        a[k + "MlpBlock_3/Dense_1/kernel"], a[k + "MlpBlock_3/Dense_1/bias"] = r(mlp, hidden), r(hidden)
    a["Transformer/encoder_norm/scale"], a["Transformer/encoder_norm/bias"] = r(hidden), r(hidden)
    a["head/kernel"], a["head/bias"] = r(hidden, 1000), r(1000)
    np.savez(path, **a)
    return a


def _official_block(a, i, x, heads):
    """The official Block.forward (vit_seg_modeling.py) written on the raw npz arrays."""
    k = f"Transformer/encoderblock_{i}/"
    att = k + "MultiHeadDotProductAttention_1/"
    t = {n: torch.from_numpy(v) for n, v in a.items() if n.startswith(k)}
    hidden = x.shape[-1]

    def ln(y, name):
        return torch.nn.functional.layer_norm(y, (hidden,), t[k + name + "/scale"],
                                              t[k + name + "/bias"], eps=1e-6)

    def dense(y, name):
        return y @ t[name + "/kernel"].reshape(hidden, -1) + t[name + "/bias"].reshape(-1)

    h = ln(x, "LayerNorm_0")
    q, kk, v = (dense(h, att + n).view(*x.shape[:2], heads, -1).transpose(1, 2)
                for n in ("query", "key", "value"))
    w = torch.softmax(q @ kk.transpose(-1, -2) / q.shape[-1] ** 0.5, -1)
    ctx = (w @ v).transpose(1, 2).reshape(x.shape)
    x = x + ctx @ t[att + "out/kernel"].reshape(hidden, hidden) + t[att + "out/bias"]
    h = ln(x, "LayerNorm_2")
    h = torch.nn.functional.gelu(h @ t[k + "MlpBlock_3/Dense_0/kernel"] + t[k + "MlpBlock_3/Dense_0/bias"])
    return x + h @ t[k + "MlpBlock_3/Dense_1/kernel"] + t[k + "MlpBlock_3/Dense_1/bias"]


def test_npz_key_map_loads_release_layout(tmp_path):
    path = tmp_path / "R50+ViT-B_16.npz"
    a = write_release_npz(path)
    m = create_model("transunet", in_channels=1, num_classes=2, encoder_weights=str(path), **SMALL)
    # Conv kernels HWIO -> OIHW; GroupNorm (1,1,1,C) -> (C,).
    torch.testing.assert_close(m.hybrid.root.conv.weight,
                               torch.from_numpy(a["conv_root/kernel"].transpose(3, 2, 0, 1)))
    torch.testing.assert_close(m.hybrid.body.block2.unit1.gn_proj.weight,
                               torch.from_numpy(a["block2/unit1/gn_proj/scale"].reshape(-1)))
    torch.testing.assert_close(m.hybrid.body.block3.unit1.downsample.weight,
                               torch.from_numpy(a["block3/unit1/conv_proj/kernel"].transpose(3, 2, 0, 1)))
    torch.testing.assert_close(m.patch_embed.bias, torch.from_numpy(a["embedding/bias"]))
    # The class token row is dropped (grid 4x4 at 64 px).
    torch.testing.assert_close(
        m.pos_embed, torch.from_numpy(a["Transformer/posembed_input/pos_embedding"][:, 1:]))
    # Each Transformer block computes what the official block computes on the raw arrays.
    m.eval()
    x = torch.randn(2, 16, 32)
    for i in range(2):
        torch.testing.assert_close(m.blocks[i](x), _official_block(a, i, x, heads=2),
                                   rtol=1e-4, atol=1e-4)


def test_imagenet_is_the_hub_npz_checked_by_its_sha256(monkeypatch):
    """``encoder_weights="imagenet"``: $TORCH_HOME/hub/checkpoints/R50+ViT-B_16.npz (conftest
    gives each test an empty one), refused unless its SHA-256 is the release's."""
    import dataclasses

    from unetzoo.models import transunet as transunet_mod
    from unetzoo.models.weights_maps import hub_checkpoint, sha256_file

    src = transunet_mod.TRANSUNET_WEIGHTS
    path = hub_checkpoint(src)
    path.parent.mkdir(parents=True)
    a = write_release_npz(path)
    with pytest.raises(CheckpointError, match="is not the released R50\\+ViT-B_16.npz") as info:
        create_model("transunet", encoder_weights="imagenet", **SMALL)
    assert "\n" not in str(info.value) and src.sha256[:16] in str(info.value)
    monkeypatch.setattr(transunet_mod, "TRANSUNET_WEIGHTS",
                        dataclasses.replace(src, sha256=sha256_file(path)))
    m = create_model("transunet", encoder_weights="imagenet", **SMALL)
    torch.testing.assert_close(m.patch_embed.bias, torch.from_numpy(a["embedding/bias"]))


def test_npz_position_embedding_is_resized_to_the_model_grid(tmp_path):
    path = tmp_path / "vit.npz"
    a = write_release_npz(path, grid=14)  # the release grid at 224 px
    m = create_model("transunet", encoder_weights=str(path), **SMALL)  # grid 4x4
    pos = torch.from_numpy(a["Transformer/posembed_input/pos_embedding"][:, 1:])
    want = torch.nn.functional.interpolate(
        pos.reshape(1, 14, 14, 32).permute(0, 3, 1, 2), size=(4, 4), mode="bilinear",
        align_corners=False).permute(0, 2, 3, 1).reshape(1, 16, 32)
    torch.testing.assert_close(m.pos_embed, want)


def test_bad_weight_files_are_one_line_checkpoint_errors(tmp_path):
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not a zip archive")
    wrong = tmp_path / "wrong.npz"
    write_release_npz(wrong, hidden=48, heads=2, mlp=64)  # hidden size differs
    short = tmp_path / "short.npz"
    a = write_release_npz(short)
    del a["Transformer/encoderblock_1/LayerNorm_0/scale"]
    np.savez(short, **a)
    for path, hint in ((tmp_path / "missing.npz", "does not exist"), (corrupt, "cannot read"),
                       (wrong, "shape"), (short, "lacks")):
        with pytest.raises(CheckpointError, match=hint) as info:
            create_model("transunet", encoder_weights=str(path), **SMALL)
        assert "\n" not in str(info.value)


def test_training_step_reduces_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    m = create_model("transunet", in_channels=1, num_classes=3, **SMALL)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    x, y = torch.randn(2, 1, 32, 32), torch.randint(0, 3, (2, 32, 32))
    losses = []
    for _ in range(4):
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert m.pos_embed.grad is not None and m.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_taps_resolve_to_modules():
    m = create_model("transunet", **SMALL)
    taps = get_entry("transunet").taps_for(m)
    assert len(taps.encoder) == 4 and len(taps.decoder) == 4
    for name in (*taps.encoder, *taps.decoder, taps.final):
        m.get_submodule(name)
