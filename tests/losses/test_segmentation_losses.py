"""build_loss: names, weights, hand-computed values, gradients, ignore_index, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unetzoo.errors import ConfigError, DataError
from unetzoo.losses import build_loss, deep_supervision_loss, list_losses


def _hand_dice_loss(logits, target, c, include_background=True):
    """TransUNet DiceLoss by hand: per class over the whole batch, squared denominators."""
    p = torch.softmax(logits, 1)
    losses = []
    for k in range(0 if include_background else 1, c):
        t = (target == k).float()
        inter = (p[:, k] * t).sum()
        d = (2 * inter + 1e-5) / ((p[:, k] ** 2).sum() + (t**2).sum() + 1e-5)
        losses.append(1 - d)
    return torch.stack(losses).mean()


def _data(n=2, c=4, h=6, w=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g), torch.randint(0, c, (n, h, w), generator=g)


def test_names_and_unknown_name():
    assert list_losses() == ["bce_dice", "ce", "ce_dice", "dice"]
    with pytest.raises(ConfigError, match="valid names: bce_dice, ce, ce_dice, dice"):
        build_loss("focal", 3)


def test_ce_dice_values_match_hand_computation():
    logits, target = _data()
    total, terms = build_loss("ce_dice", 4)(logits, target)
    ce = F.cross_entropy(logits, target)
    dl = _hand_dice_loss(logits, target, 4)
    assert terms["ce"] == pytest.approx(ce.item(), rel=1e-6)
    assert terms["dice"] == pytest.approx(dl.item(), rel=1e-6)
    assert total.item() == pytest.approx(0.4 * ce.item() + 0.6 * dl.item(), rel=1e-6)
    total, _ = build_loss("ce_dice", 4, weights=(0.3, 0.7))(logits, target)
    assert total.item() == pytest.approx(0.3 * ce.item() + 0.7 * dl.item(), rel=1e-6)
    total, _ = build_loss("ce_dice", 4, weights={"ce": 1.0, "dice": 0.0})(logits, target)
    assert total.item() == pytest.approx(ce.item(), rel=1e-6)


def test_dice_without_background():
    logits, target = _data(seed=1)
    _, terms = build_loss("dice", 4, include_background=False)(logits, target)
    hand = _hand_dice_loss(logits, target, 4, include_background=False)
    assert terms == {"dice": pytest.approx(hand.item(), rel=1e-6)}
    _, ce_terms = build_loss("ce", 4)(logits, target)
    assert set(ce_terms) == {"ce"}


@pytest.mark.parametrize("name", ["ce_dice", "dice", "ce"])
def test_gradient_flows_through_every_term(name):
    logits, target = _data(seed=2)
    logits.requires_grad_(True)
    total, _ = build_loss(name, 4)(logits, target)
    total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    if name == "dice":  # the Dice term alone carries a gradient (soft, not thresholded)
        assert torch.isfinite(logits.grad).all()


def test_perfect_prediction_gives_zero_dice_loss():
    _, target = _data(seed=3)
    logits = 50.0 * F.one_hot(target, 4).permute(0, 3, 1, 2).float()
    _, terms = build_loss("ce_dice", 4)(logits, target)
    assert terms["dice"] < 1e-6 and terms["ce"] < 1e-6
    _, terms = build_loss("ce_dice", 4)(-logits, target)
    assert terms["dice"] > 0.9


def test_ignore_index_excludes_pixels():
    logits, target = _data(seed=4)
    masked = target.clone()
    masked[:, :2] = 255
    _, t1 = build_loss("ce_dice", 4, ignore_index=255)(logits, masked)
    _, t2 = build_loss("ce_dice", 4)(logits[:, :, 2:], target[:, 2:])
    assert t1["ce"] == pytest.approx(t2["ce"], rel=1e-6)
    assert t1["dice"] == pytest.approx(t2["dice"], rel=1e-6)


@pytest.mark.parametrize("channels", [1, 2])
def test_bce_dice_one_or_two_channels(channels):
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, channels, 7, 6, generator=g, requires_grad=True)
    target = torch.randint(0, 2, (2, 7, 6), generator=g)
    total, terms = build_loss("bce_dice", channels)(logits, target)
    fg = logits[:, 0] if channels == 1 else logits[:, 1] - logits[:, 0]
    bce = F.binary_cross_entropy_with_logits(fg, target.float())
    p, t = torch.sigmoid(fg), target.float()
    dice = 1 - (2 * (p * t).sum() + 1e-5) / ((p * p).sum() + (t * t).sum() + 1e-5)
    assert terms["bce"] == pytest.approx(bce.item(), rel=1e-6)
    assert terms["dice"] == pytest.approx(dice.item(), rel=1e-6)
    assert total.item() == pytest.approx(0.5 * bce.item() + 0.5 * dice.item(), rel=1e-6)
    total.backward()
    assert logits.grad.abs().sum() > 0
    if channels == 2:  # BCE on l1 - l0 is 2-class cross-entropy
        assert terms["bce"] == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-5)


def test_target_with_channel_dim_and_deep_supervision():
    logits, target = _data(seed=6)
    loss = build_loss("ce_dice", 4)
    a, _ = loss(logits, target)
    b, _ = loss(logits, target.unsqueeze(1))
    assert a.item() == pytest.approx(b.item())
    total, terms = deep_supervision_loss(loss, [logits, logits * 2], target, weights=[1, 3])
    c, tc = loss(logits * 2, target)
    assert total.item() == pytest.approx(0.25 * a.item() + 0.75 * c.item(), rel=1e-6)
    assert set(terms) == set(tc)


def test_bad_inputs_raise_one_line_errors():
    logits, target = _data()
    with pytest.raises(ConfigError, match="2 weight"):
        build_loss("ce_dice", 4, weights=(1.0,))
    with pytest.raises(ConfigError, match=">= 0"):
        build_loss("ce_dice", 4, weights=(-1.0, 1.0))
    with pytest.raises(ConfigError, match="binary"):
        build_loss("bce_dice", 4)
    with pytest.raises(DataError, match="channels"):
        build_loss("ce_dice", 3)(logits, target)
    with pytest.raises(DataError, match="outside"):
        build_loss("ce_dice", 4)(logits, target + 4)
    with pytest.raises(DataError, match="shape"):
        build_loss("ce_dice", 4)(logits, target[:, :3])


def test_mutation_subsets_are_the_nonempty_powerset():
    from unetzoo.losses import mutation_subsets

    subsets = mutation_subsets(4)
    assert len(subsets) == 15 and len(set(subsets)) == 15  # 2**4 - 1, as EMCAD's 4 heads
    assert subsets[0] == (0,) and subsets[-1] == (0, 1, 2, 3)
    assert mutation_subsets(1) == [(0,)]


def test_mutation_loss_sums_the_loss_of_every_subset_of_summed_logits():
    # SLDGroup/EMCAD trainer.py, --supervision mutation: for s in powerset(heads), s != []:
    # iout = sum(P[i] for i in s); loss += w_ce * CE(iout) + w_dice * Dice(iout).
    from unetzoo.losses import mutation_loss

    torch.manual_seed(0)
    loss = build_loss("ce_dice", 3, weights=[0.3, 0.7])
    outs = [torch.randn(2, 3, 8, 8, requires_grad=True) for _ in range(3)]
    target = torch.randint(0, 3, (2, 8, 8))
    total, terms = mutation_loss(loss, outs, target)
    a, b, c = outs
    expected = sum(loss(x, target)[0] for x in (a, b, c, a + b, a + c, b + c, a + b + c))
    assert torch.allclose(total, expected)
    assert terms["ce"] == pytest.approx(
        sum(loss(x, target)[1]["ce"] for x in (a, b, c, a + b, a + c, b + c, a + b + c))
    )
    total.backward()
    assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in outs)
    single, _ = mutation_loss(loss, a, target)  # a bare tensor: the loss itself
    assert torch.allclose(single, loss(a, target)[0])


def test_supervised_loss_is_the_one_deep_supervision_home():
    """The trainer's objective: weighted heads log the final head's terms plus each head's
    total; mutation is EMCAD's; one tensor is the loss itself; bad weights: one line."""
    from unetzoo.losses import deep_supervision_weights, mutation_loss, supervised_loss

    logits, target = _data(seed=7)
    loss = build_loss("ce_dice", 4)
    outs = [logits, logits * 2, logits * 3]
    total, terms = supervised_loss(loss, outs, target, "weighted", [1, 1, 2])
    heads = [loss(o, target) for o in outs]
    assert total.item() == pytest.approx(
        0.25 * heads[0][0].item() + 0.25 * heads[1][0].item() + 0.5 * heads[2][0].item(), rel=1e-6)
    assert set(terms) == set(heads[2][1]) | {"head0", "head1", "head2"}
    assert terms["head1"] == pytest.approx(heads[1][0].item())
    assert terms["ce"] == pytest.approx(float(heads[2][1]["ce"]))  # the final head's term
    assert all(isinstance(v, float) for v in terms.values())
    m_total, _ = supervised_loss(loss, outs, target, "mutation")
    assert m_total.item() == pytest.approx(mutation_loss(loss, outs, target)[0].item())
    single, _ = supervised_loss(loss, logits, target)
    assert single.item() == pytest.approx(heads[0][0].item())
    assert deep_supervision_weights(2, None) == [0.5, 0.5]
    with pytest.raises(ConfigError, match="has 2 values but the model has 3 heads"):
        supervised_loss(loss, outs, target, "weighted", [1, 1])
    with pytest.raises(ConfigError, match="sum to a positive"):
        deep_supervision_weights(2, [0, 0])
    with pytest.raises(ConfigError, match="deep-supervision-loss 'powerset'"):
        supervised_loss(loss, outs, target, "powerset")


def test_sum_deep_supervision_adds_the_heads_losses_as_keras_multi_output():
    # MrGiovanni/UNetPlusPlus Nest_Net: a 4-output Keras model compiled with one loss;
    # Keras minimises the sum of the outputs' losses (loss_weights 1 each). The UNet 3+
    # paper adds its side outputs' losses the same way.
    from unetzoo.losses import supervised_loss

    logits, target = _data(seed=8)
    loss = build_loss("ce_dice", 4)
    outs = [logits, logits * 2, logits * 3, logits * 0.5]
    heads = [loss(o, target)[0].item() for o in outs]
    total, terms = supervised_loss(loss, outs, target, "sum")
    assert total.item() == pytest.approx(sum(heads), rel=1e-6)
    mean, _ = supervised_loss(loss, outs, target, "weighted")
    assert mean.item() == pytest.approx(sum(heads) / 4, rel=1e-6)
    weighted_sum, _ = supervised_loss(loss, outs, target, "sum", [1, 1, 1, 2])
    assert weighted_sum.item() == pytest.approx(sum(heads) + heads[3], rel=1e-6)  # not normalised
    assert terms["head3"] == pytest.approx(heads[3])


def test_binary_presence_loss_targets_images_with_foreground():
    import torch.nn.functional as F

    from unetzoo.losses import binary_presence_loss

    logits = torch.tensor([[2.0, -2.0], [-1.0, 3.0], [0.5, 0.2]])
    target = torch.zeros(3, 4, 4, dtype=torch.long)
    target[1, 0, 0] = 1
    target[2, 3, 3] = 5
    bce, terms = binary_presence_loss(logits, target)
    onehot = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert bce.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, onehot).item())
    assert terms["cgm_acc"] == pytest.approx(2 / 3)  # image 2 is present, called absent
