"""SelfReg feature distillation: each term against a direct computation, and the hooks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unetzoo.errors import ConfigError, ModelError
from unetzoo.losses.distillation import (
    FeatureDistillationLoss,
    FeatureTapper,
    ifd_loss,
    pool_to_common,
    scr_loss,
    select_channels,
)
from unetzoo.models import registry
from unetzoo.models.registry import ModelEntry, Taps
from unetzoo.models.taps import infer_taps_per_stage, to_feature_map, token_grid

# ---------------------------------------------------------------- IFD


def _ifd_known() -> tuple[torch.Tensor, float]:
    """Four 4x4 channels with hand-computed ranking and loss.

    Scores (mean of the L2-normalised map): ch0 spike -5 -> -1/16, ch1 ones -> 1/4,
    ch2 spike +5 -> 1/16, ch3 zeros -> 0. Ranking ch1, ch2 | ch3, ch0, so
    MSE = [sum (1-0)^2 over 16 px + (5-0)^2 + (0+5)^2] / 32 = 66 / 32.
    """
    f = torch.zeros(1, 4, 4, 4)
    f[0, 0, 0, 0] = -5.0
    f[0, 1] = 1.0
    f[0, 2, 1, 1] = 5.0
    return f, 66.0 / 32.0


def test_ifd_matches_hand_computation():
    f, expected = _ifd_known()
    assert ifd_loss(f).item() == pytest.approx(expected)
    # The ranking, not the channel order, decides the halves.
    perm = torch.tensor([2, 0, 3, 1])
    assert ifd_loss(f[:, perm]).item() == pytest.approx(expected)
    # Batch duplicates leave the per-element mean unchanged.
    assert ifd_loss(f.repeat(3, 1, 1, 1)).item() == pytest.approx(expected)


def test_ifd_matches_normalize_sort_formula_on_random_maps():
    g = torch.Generator().manual_seed(3)
    f = torch.randn(2, 6, 5, 7, generator=g)
    score = F.normalize(f.flatten(2), p=2, dim=2).mean(dim=(0, 2))
    order = torch.sort(score, descending=True).indices
    s = f[:, order]
    expected = F.mse_loss(s[:, :3], s[:, 3:])
    assert ifd_loss(f).item() == pytest.approx(expected.item(), rel=1e-6)


def test_ifd_odd_channels_drop_the_lowest_ranked():
    f, expected = _ifd_known()
    lowest = -torch.ones(1, 1, 4, 4)  # score -1/4: ranked last
    f5 = torch.cat([lowest, f], dim=1).requires_grad_(True)
    loss = ifd_loss(f5)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert f5.grad[0, 0].abs().sum() == 0  # the dropped channel takes no part
    assert ifd_loss(torch.randn(1, 1, 3, 3)) is None


def test_ifd_gradients_reach_both_halves():
    f, _ = _ifd_known()
    f.requires_grad_(True)
    ifd_loss(f).backward()
    per_channel = f.grad.abs().sum(dim=(0, 2, 3))
    assert (per_channel > 0).all(), per_channel  # top (1, 2) and bottom (3, 0) halves


# ---------------------------------------------------------------- SCR


def _pool_by(t: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    n, c, h, w = t.shape
    return t.reshape(n, c, h // kh, kh, w // kw, kw).mean(dim=(3, 5))


def test_pool_non_square_maps_each_axis():
    g = torch.Generator().manual_seed(0)
    small = torch.randn(2, 3, 4, 6, generator=g)
    big = torch.randn(2, 5, 8, 18, generator=g)
    s, t = pool_to_common(small, big)
    assert s is small and t.shape == (2, 5, 4, 6)
    torch.testing.assert_close(t, _pool_by(big, 2, 3))
    # Crossed sizes (student taller, teacher wider): both pooled to the common minimum.
    tall, wide = torch.randn(1, 2, 8, 4, generator=g), torch.randn(1, 2, 4, 8, generator=g)
    a, b = pool_to_common(tall, wide)
    torch.testing.assert_close(a, _pool_by(tall, 2, 1))
    torch.testing.assert_close(b, _pool_by(wide, 1, 2))


def test_scr_first_channels_direct_non_square():
    g = torch.Generator().manual_seed(1)
    f_s = torch.randn(2, 3, 4, 6, generator=g, requires_grad=True)  # deep student
    f_t = torch.randn(2, 5, 8, 12, generator=g, requires_grad=True)  # full-res teacher
    got = scr_loss(f_s, f_t, "first")
    expected = ((f_s - _pool_by(f_t, 2, 2)[:, :3]) ** 2).mean()
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # Student larger than the teacher: the student is pooled.
    big = torch.randn(2, 8, 8, 12, generator=g)
    small_t = torch.randn(2, 4, 4, 6, generator=g)
    exp2 = ((_pool_by(big, 2, 2)[:, :4] - small_t) ** 2).mean()
    assert scr_loss(big, small_t, "first").item() == pytest.approx(exp2.item(), rel=1e-6)


def test_scr_teacher_is_detached():
    g = torch.Generator().manual_seed(2)
    f_s = torch.randn(2, 4, 4, 4, generator=g, requires_grad=True)
    f_t = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)
    scr_loss(f_s, f_t, "random", torch.Generator().manual_seed(0)).backward()
    assert f_t.grad is None
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0


def test_scr_random_selection_direct_and_reproducible():
    g = torch.Generator().manual_seed(4)
    f_s = torch.randn(2, 6, 4, 4, generator=g)
    f_t = torch.randn(2, 3, 4, 4, generator=g)
    idx_s, idx_t = select_channels(6, 3, "random", torch.Generator().manual_seed(7))
    assert len(set(idx_s.tolist())) == 3 and sorted(idx_t.tolist()) == [0, 1, 2]
    expected = F.mse_loss(f_s[:, idx_s], f_t[:, idx_t])
    got = scr_loss(f_s, f_t, "random", torch.Generator().manual_seed(7))
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    again = scr_loss(f_s, f_t, "random", torch.Generator().manual_seed(7))
    assert again.item() == got.item()
    draws = {
        round(scr_loss(f_s, f_t, "random", torch.Generator().manual_seed(s)).item(), 6)
        for s in range(8)
    }
    assert len(draws) > 1  # the generator seed does change the channel choice


# ---------------------------------------------------------------- the full loss


def _unet_like(seed: int = 0, n: int = 2):
    """4 encoder and 3 decoder taps (reference U-Net grouping), non-square maps."""
    g = torch.Generator().manual_seed(seed)
    enc = [
        torch.randn(n, c, 16 // s, 24 // s, generator=g, requires_grad=True)
        for c, s in ((4, 1), (8, 2), (16, 4), (32, 8))
    ]
    dec = [
        torch.randn(n, c, 16 // s, 24 // s, generator=g, requires_grad=True)
        for c, s in ((16, 4), (8, 2), (6, 1))
    ]
    final = torch.randn(n, 4, 16, 24, generator=g, requires_grad=True)
    return {"encoder": enc, "decoder": dec, "final": final}


def test_total_matches_reference_grouping():
    feats = _unet_like()
    loss = FeatureDistillationLoss(0.5, 0.25, channel_selection="first")
    total, terms = loss(feats)
    enc, dec, fin = feats["encoder"], feats["decoder"], feats["final"]
    ifd = sum(ifd_loss(f) for f in enc) / 4 + sum(ifd_loss(f) for f in dec) / 3
    scr = sum(scr_loss(f, fin, "first") for f in enc + dec) / 7
    assert terms["ifd"] == pytest.approx(ifd.item(), rel=1e-6)
    assert terms["scr"] == pytest.approx(scr.item(), rel=1e-6)
    assert total.item() == pytest.approx(0.5 * ifd.item() + 0.25 * scr.item(), rel=1e-6)
    assert set(terms) == {"ifd", "scr"} and all(isinstance(v, float) for v in terms.values())
    total.backward()
    assert fin.grad is None  # the teacher gets no gradient from distillation
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in enc + dec)


def test_first_and_last_block_groups_are_summed_like_the_reference():
    first, last = _unet_like(0), _unet_like(1)
    # Taps listed stage by stage as (first, last) pairs.
    enc = [t for pair in zip(first["encoder"], last["encoder"]) for t in pair]
    dec = [t for pair in zip(first["decoder"], last["decoder"]) for t in pair]
    fin = last["final"]
    feats = {"encoder": enc, "decoder": dec, "final": fin, "taps_per_stage": (2, 2)}
    lam = 0.01
    _, terms = FeatureDistillationLoss(lam, lam, channel_selection="first")(feats)

    def ifd_mean(fs):
        return sum(ifd_loss(f) for f in fs) / len(fs)

    def scr_mean(fs):
        return sum(scr_loss(f, fin, "first") for f in fs) / len(fs)

    ifd = sum(ifd_mean(g["encoder"]) + ifd_mean(g["decoder"]) for g in (first, last))
    scr = sum(scr_mean(g["encoder"] + g["decoder"]) for g in (first, last))
    assert terms["ifd"] == pytest.approx(ifd.item(), rel=1e-6)
    assert terms["scr"] == pytest.approx(scr.item(), rel=1e-6)
    # Without the stage grouping the same taps are averaged as one group (half as large).
    _, flat = FeatureDistillationLoss(lam, lam, "first", taps_per_stage=(1, 1))(feats)
    assert flat["scr"] == pytest.approx(scr.item() / 2, rel=1e-6)


def test_random_selection_reproducible_with_the_same_generator_seed():
    feats = _unet_like()

    def run(seed):
        loss = FeatureDistillationLoss(generator=torch.Generator().manual_seed(seed))
        return [loss(feats)[1]["scr"] for _ in range(3)]

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_bad_options_are_one_line_errors():
    with pytest.raises(ConfigError, match="channel_selection"):
        FeatureDistillationLoss(channel_selection="topk")
    with pytest.raises(ConfigError, match="lambda_scr"):
        FeatureDistillationLoss(lambda_scr=-1)
    with pytest.raises(ConfigError, match="FeatureTapper"):
        FeatureDistillationLoss()({"encoder": [], "decoder": [], "final": None})


# ---------------------------------------------------------------- hooks


class _Toy(nn.Module):
    """Conv encoder, a tuple-returning block, a token block and a conv decoder."""

    class _TupleBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return y, y.shape[-2:]

    class _Tokens(nn.Module):
        def __init__(self, resolution=None):
            super().__init__()
            self.lin = nn.Linear(8, 8)
            if resolution is not None:
                self.input_resolution = resolution

        def forward(self, x):
            n, c, h, w = x.shape
            return self.lin(x.flatten(2).transpose(1, 2))  # (N, L, C)

    def __init__(self, resolution=None):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.block = self._TupleBlock()
        self.tokens = self._Tokens(resolution)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y, _ = self.block(self.stem(x))
        t = self.tokens(y)
        n, length, c = t.shape
        t = t.transpose(1, 2).reshape(n, c, *y.shape[-2:])
        return self.head(self.up(t))


_TOY_TAPS = Taps(encoder=("stem", "block"), decoder=("tokens",), final="up")


@pytest.mark.parametrize("size", [(16, 16), (16, 32)])
def test_tapper_collects_tuples_and_tokens(size):
    model = _Toy()
    tapper = FeatureTapper(model, _TOY_TAPS)
    x = torch.randn(2, 1, *size)
    with tapper:
        model(x)
    f = tapper.features
    h, w = size[0] // 2, size[1] // 2
    assert [tuple(t.shape) for t in f["encoder"]] == [(2, 8, h, w)] * 2
    assert tuple(f["decoder"][0].shape) == (2, 8, h, w)  # tokens back on the grid
    assert tuple(f["final"].shape) == (2, 4, *size)
    # The token map is the token output, transposed, not a scrambled reshape.
    tok = model.tokens(model.block(model.stem(x))[0])
    torch.testing.assert_close(f["decoder"][0], tok.transpose(1, 2).reshape(2, 8, h, w))
    total, _ = FeatureDistillationLoss()(f)
    total.backward()
    assert model.stem.weight.grad is not None


def test_token_grid_prefers_the_module_resolution():
    class R(nn.Module):
        input_resolution = (4, 8)

    assert token_grid(32, R()) == (4, 8)
    assert token_grid(8, R()) == (2, 4)  # a patch-merging layer halves its input grid
    assert token_grid(9, R()) == (3, 3)
    assert token_grid(36) == (6, 6)
    assert token_grid(32, None, (16, 32)) == (4, 8)
    with pytest.raises(ModelError, match="grid"):
        to_feature_map(torch.randn(1, 7, 3), where="odd")


def test_hooks_removed_on_exit_and_on_error():
    model = _Toy()
    tapper = FeatureTapper(model, _TOY_TAPS)
    with tapper:
        assert model.stem._forward_hooks
        model(torch.randn(1, 1, 8, 8))
    assert not model.stem._forward_hooks and not model._forward_pre_hooks
    with pytest.raises(RuntimeError):
        with tapper:
            model(torch.randn(1, 3, 8, 8))  # wrong channel count fails inside the forward
    assert not model.stem._forward_hooks and not model.up._forward_hooks


def test_disabled_tapper_has_no_effect():
    model = _Toy()
    x = torch.randn(1, 1, 8, 8)
    ref = model(x)
    tapper = FeatureTapper(model, enabled=False)  # no taps needed when disabled
    with tapper:
        assert not model.stem._forward_hooks
        out = model(x)
    torch.testing.assert_close(out, ref)
    assert tapper.features == {"encoder": [], "decoder": [], "final": None}


def test_missing_taps_name_the_model(monkeypatch):
    model = _Toy()
    model.unetzoo_name = "toy_without_taps"
    entry = ModelEntry(
        name="toy_without_taps", builder=_Toy, description="t", source="t", family="t"
    )
    monkeypatch.setitem(registry._REGISTRY, "toy_without_taps", entry)
    with pytest.raises(ModelError, match="toy_without_taps.*declares no feature taps"):
        FeatureTapper(model)
    with pytest.raises(ModelError, match="no such submodule"):
        FeatureTapper(model, Taps(encoder=("stem", "nope"), decoder=(), final="up"))
    unnamed = _Toy()
    with pytest.raises(ModelError, match="_Toy"):
        FeatureTapper(unnamed)


def test_tap_that_does_not_run_is_reported():
    model = _Toy()
    model.extra = nn.Conv2d(1, 1, 1)  # never called in forward
    tapper = FeatureTapper(model, Taps(encoder=("stem", "extra"), decoder=(), final="up"))
    with pytest.raises(ModelError, match="extra.*did not run"):
        with tapper:
            model(torch.randn(1, 1, 8, 8))


def test_first_last_pairs_detected_from_names():
    swin = ("layers.0.blocks.0", "layers.0.blocks.1", "layers.1.blocks.0", "layers.1.blocks.1")
    assert infer_taps_per_stage(swin) == 2
    assert infer_taps_per_stage(("encoder.layer1", "encoder.layer2", "encoder.layer3",
                                 "encoder.layer4")) == 1
    assert infer_taps_per_stage(("inc", "down1", "down2", "down3")) == 1
    assert infer_taps_per_stage(swin[:3]) == 1


def test_hand_written_backward_matches_autograd():
    g = torch.Generator().manual_seed(5)
    f = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 6, 8, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(ifd_loss, (f,))
    assert torch.autograd.gradcheck(lambda s: scr_loss(s, t, "first"), (f,))
    assert torch.autograd.gradcheck(
        lambda s: scr_loss(s, t, "random", torch.Generator().manual_seed(0)), (f,)
    )


def test_half_precision_features_are_compared_in_float32():
    g = torch.Generator().manual_seed(6)
    f = torch.randn(2, 4, 6, 6, generator=g)
    fb = f.bfloat16().requires_grad_(True)
    loss = ifd_loss(fb)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ifd_loss(fb.detach().float()).item(), rel=1e-6)
    loss.backward()
    assert fb.grad.dtype == torch.bfloat16 and fb.grad.abs().sum() > 0
