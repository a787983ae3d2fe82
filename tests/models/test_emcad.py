"""EMCAD: parameter count against the official code, shapes and deep supervision, the
official PVTv2 .pth key map on a self-written file, a training step and taps."""

from __future__ import annotations

import math
import re

import pytest
import timm
import torch

from unetzoo.errors import CheckpointError, ModelError
from unetzoo.models import create_model, get_entry, parameter_count
from unetzoo.models.emcad import MSCB, channel_shuffle

SMALL = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))


def official_decoder_count(channels=(512, 320, 128, 64), ks=(1, 3, 5), ex=2, lgag_ks=3) -> int:
    """By hand from SLDGroup/EMCAD lib/decoders.py (EMCAD, MSCB, EUCB, LGAG, CAB, SAB) with
    add=True; BatchNorm counts weight + bias."""

    def mscb(c):
        e = int(c * ex)
        return c * e + 2 * e + sum(e * k * k + 2 * e for k in ks) + e * c + 2 * c

    def eucb(ci, co):
        return ci * 9 + 2 * ci + ci * co + co

    def lgag(c):
        f_int, groups = c // 2, c // 2
        branch = f_int * (c // groups) * lgag_ks**2 + f_int + 2 * f_int
        return 2 * branch + f_int + 1 + 2

    def cab(c):
        red = c // min(16, c)
        return 2 * c * red

    p = mscb(channels[0]) + sum(cab(c) for c in channels) + 2 * 49  # one shared SAB
    for ci, co in zip(channels[:-1], channels[1:]):
        p += eucb(ci, co) + lgag(co) + mscb(co)
    return p


def test_parameter_count_matches_official_code():
    # Source: SLDGroup/EMCAD lib/networks.py EMCADNet(num_classes=9, encoder='pvt_v2_b2',
    # kernel_sizes=[1,3,5], expansion_factor=2, dw_parallel=True, add=True, lgag_ks=3,
    # activation='relu6'): grayscale conv (1->3 + BN) + PVTv2-B2 + EMCAD + 4 heads.
    with torch.device("meta"):
        pvt = timm.create_model("pvt_v2_b2", pretrained=False, num_classes=0)
    backbone = sum(p.numel() for p in pvt.parameters())
    channels = (512, 320, 128, 64)
    for classes, entry in zip((9, 1), get_entry("emcad").published):
        want = 12 + backbone + official_decoder_count() + sum(c * classes + classes for c in channels)
        assert entry.count == want and entry.config["num_classes"] == classes
        assert parameter_count("emcad", **entry.config) == want
    # The paper (Rahman et al. CVPR 2024) lists PVT-EMCAD-B2 at 26.76M parameters.
    assert round(get_entry("emcad").published[1].count / 1e6, 2) == 26.76


def test_decoder_count_tracks_options():
    got = parameter_count("emcad", in_channels=3, num_classes=2, kernel_sizes=(3, 5, 7),
                          expansion_factor=4, lgag_ks=5, **SMALL)
    with torch.device("meta"):
        m = create_model("emcad", in_channels=3, num_classes=2, **SMALL)
    backbone = sum(p.numel() for p in m.backbone.parameters())
    assert m.conv is None
    want = backbone + official_decoder_count((64, 48, 32, 16), (3, 5, 7), 4, 5) + (64 + 48 + 32 + 16) * 2 + 8
    assert got == want


def test_output_shapes_and_deep_supervision():
    torch.manual_seed(0)
    m = create_model("emcad", in_channels=1, num_classes=3, **SMALL)
    assert m.fixed_input_size is None
    assert m(torch.randn(2, 1, 64, 96)).shape == (2, 3, 64, 96)
    assert m(torch.randn(1, 1, 50, 70)).shape == (1, 3, 50, 70)  # padded to 32, cropped
    ds = create_model("emcad", in_channels=1, num_classes=3, deep_supervision=True, **SMALL)
    outs = ds(torch.randn(2, 1, 64, 64))
    assert isinstance(outs, list) and len(outs) == 4
    assert all(o.shape == (2, 3, 64, 64) for o in outs)
    ds.eval()
    with torch.no_grad():
        final = ds(torch.randn(1, 1, 64, 64))
    assert isinstance(final, torch.Tensor) and final.shape == (1, 3, 64, 64)
    with pytest.raises(ModelError, match="input channel"):
        m(torch.randn(1, 3, 64, 64))


def test_eval_output_is_the_finest_head():
    # Official test_single_volume uses P[-1], the 1/4-scale head, upsampled x4.
    torch.manual_seed(0)
    m = create_model("emcad", in_channels=1, num_classes=2, deep_supervision=True, **SMALL)
    x = torch.randn(1, 1, 64, 64)
    m.eval()
    with torch.no_grad():
        final = m(x)
        m.training = True  # list output, but every submodule stays in eval mode
        outs = m(x)
    torch.testing.assert_close(final, outs[-1])


@pytest.mark.parametrize("bad", [dict(activation="swish"), dict(lgag_ks=4),
                                 dict(embed_dims=(16, 32, 48, 63))])
def test_bad_options_are_one_line_model_errors(bad):
    with pytest.raises(ModelError) as info:
        create_model("emcad", **{**SMALL, **bad})
    assert "\n" not in str(info.value)


def test_mscb_shuffle_and_residual():
    torch.manual_seed(0)
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    block = MSCB(8, 8, (1, 3), 2, True, True, "relu6").eval()
    inp = torch.randn(1, 8, 5, 5)
    outs = block.msdc(block.pconv1(inp))
    want = inp + block.pconv2(channel_shuffle(outs[0] + outs[1], math.gcd(16, 8)))
    torch.testing.assert_close(block(inp), want)


def official_pvt_state(model) -> dict[str, torch.Tensor]:
    """The backbone's weights under the official PVTv2 names (pvt_v2_b2.pth), renamed by
    hand: patch_embed1..4, block{s}.{j}, mlp.dwconv.dwconv, norm{s}, plus an ImageNet head."""
    out = {}
    for k, v in model.backbone.state_dict().items():
        k = k.replace("patch_embed.", "patch_embed1.")
        k = re.sub(r"stages\.(\d)\.downsample\.", lambda m: f"patch_embed{int(m[1]) + 1}.", k)
        k = re.sub(r"stages\.(\d)\.blocks\.", lambda m: f"block{int(m[1]) + 1}.", k)
        k = re.sub(r"stages\.(\d)\.norm\.", lambda m: f"norm{int(m[1]) + 1}.", k)
        k = k.replace("mlp.dwconv.", "mlp.dwconv.dwconv.")
        out[k] = torch.randn_like(v) if v.is_floating_point() else v
    out["head.weight"] = torch.randn(1000, 64)
    out["head.bias"] = torch.randn(1000)
    return out


def test_pvt_pth_key_map_loads_official_names(tmp_path):
    torch.manual_seed(0)
    ref = create_model("emcad", **SMALL)
    sd = official_pvt_state(ref)
    assert "block2.0.mlp.dwconv.dwconv.weight" in sd and "patch_embed3.proj.weight" in sd
    path = tmp_path / "pvt_v2_b2.pth"
    torch.save(sd, path)
    m = create_model("emcad", in_channels=1, num_classes=2, encoder_weights=str(path), **SMALL)
    torch.testing.assert_close(m.backbone.patch_embed.proj.weight, sd["patch_embed1.proj.weight"])
    torch.testing.assert_close(m.backbone.stages[2].downsample.norm.bias, sd["patch_embed3.norm.bias"])
    torch.testing.assert_close(m.backbone.stages[1].blocks[0].mlp.dwconv.weight,
                               sd["block2.0.mlp.dwconv.dwconv.weight"])
    torch.testing.assert_close(m.backbone.stages[0].blocks[0].attn.sr.weight,
                               sd["block1.0.attn.sr.weight"])
    torch.testing.assert_close(m.backbone.stages[3].norm.weight, sd["norm4.weight"])
    n_backbone = sum(1 for k in sd if not k.startswith("head."))
    assert len(m.load_encoder_weights(path)) == n_backbone


def test_bad_pvt_files_are_one_line_checkpoint_errors(tmp_path):
    torch.manual_seed(0)
    ref = create_model("emcad", **SMALL)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04broken")
    foreign = tmp_path / "foreign.pth"
    torch.save({"model": {"layers.0.blocks.0.norm1.weight": torch.zeros(4)}}, foreign)
    b3 = tmp_path / "b3_like.pth"
    sd = official_pvt_state(ref)
    sd["patch_embed1.proj.weight"] = torch.zeros(32, 3, 7, 7)  # other width
    torch.save(sd, b3)
    short = tmp_path / "short.pth"
    sd = official_pvt_state(ref)
    del sd["block4.0.attn.q.weight"]
    torch.save(sd, short)
    for path, hint in ((tmp_path / "nope.pth", "does not exist"), (corrupt, "cannot read"),
                       (foreign, "not a PVTv2"), (b3, "shape"), (short, "lacks")):
        with pytest.raises(CheckpointError, match=hint) as info:
            create_model("emcad", encoder_weights=str(path), **SMALL)
        assert "\n" not in str(info.value)


def test_training_step_with_deep_supervision():
    torch.manual_seed(0)
    m = create_model("emcad", in_channels=1, num_classes=3, deep_supervision=True, **SMALL)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    x, y = torch.randn(2, 1, 64, 64), torch.randint(0, 3, (2, 64, 64))
    losses = []
    for _ in range(4):
        outs = m(x)
        loss = sum(torch.nn.functional.cross_entropy(o, y) for o in outs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert m.decoder.lgag1.W_g[0].weight.grad.abs().sum() > 0
    assert m.conv[0].weight.grad.abs().sum() > 0


def test_taps_resolve_to_modules():
    m = create_model("emcad", **SMALL)
    taps = get_entry("emcad").taps_for(m)
    assert len(taps.encoder) == 4 and len(taps.decoder) == 3
    for name in (*taps.encoder, *taps.decoder, taps.final):
        m.get_submodule(name)


def _act_types(module):
    return {type(m) for m in module.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6))}


def test_activations_as_official_relu6_in_mscb_relu_in_eucb_and_lgag():
    # SLDGroup/EMCAD lib/decoders.py: EMCAD passes `activation` (relu6) to the MSCBs only;
    # EUCB(...) and LGAG(...) are built without it, so their default 'relu' applies.
    dec = create_model("emcad", **SMALL).decoder
    for k in (1, 2, 3):
        assert _act_types(getattr(dec, f"eucb{k}")) == {torch.nn.ReLU}
        assert _act_types(getattr(dec, f"lgag{k}")) == {torch.nn.ReLU}
    for k in (1, 2, 3, 4):
        assert _act_types(getattr(dec, f"mscb{k}")) == {torch.nn.ReLU6}
    # The former behaviour, ReLU6 everywhere, is one option away.
    old = create_model("emcad", gate_activation=None, **SMALL).decoder
    assert _act_types(old.eucb1) == _act_types(old.lgag1) == {torch.nn.ReLU6}
    with pytest.raises(ModelError, match="unknown activation 'swish'"):
        create_model("emcad", gate_activation="swish", **SMALL)
