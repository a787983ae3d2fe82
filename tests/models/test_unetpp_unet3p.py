"""UNet++ and UNet 3+: shapes, deep supervision, CGM, ResNet encoders, published counts."""

from __future__ import annotations

import pytest
import torch

from unetzoo.models import create_model, get_entry, parameter_count

SMALL = {"unetpp": {"base_channels": 4}, "unet3p": {"base_channels": 4, "cat_channels": 4}}


@pytest.mark.parametrize("name", ["unetpp", "unet3p"])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_small_plain_encoder(check_segmentation, name, in_channels):
    model = create_model(name, in_channels=in_channels, num_classes=3, **SMALL[name])
    check_segmentation(model, in_channels, 3, 37, 45)


@pytest.mark.parametrize("name, heads", [("unetpp", 4), ("unet3p", 5)])
def test_deep_supervision_train_list_eval_tensor(check_segmentation, name, heads):
    model = create_model(name, 1, 2, deep_supervision=True, **SMALL[name])
    check_segmentation(model, 1, 2, 35, 40)  # checks every element is full size
    model.train()
    out = model(torch.randn(2, 1, 35, 40))
    assert isinstance(out, list) and len(out) == heads
    model.eval()
    with torch.no_grad():
        final_eval = model(torch.randn(2, 1, 35, 40))
    assert isinstance(final_eval, torch.Tensor)


def test_deep_supervision_final_is_last():
    # The last training output must be the same map the eval forward returns.
    model = create_model("unetpp", 1, 2, deep_supervision=True, base_channels=4)
    x = torch.randn(1, 1, 32, 32)
    model.eval()
    with torch.no_grad():
        final = model(x)
        model.training = True  # toggle only the flag: BatchNorm stays in eval statistics
        outs = model(x)
    assert torch.allclose(outs[-1], final)
    assert not torch.allclose(outs[0], final)


def test_unetpp_accurate_mode_averages_the_heads_probabilities():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32)
    for classes, act in ((3, lambda o: torch.softmax(o, 1)), (1, torch.sigmoid)):
        model = create_model("unetpp", 1, classes, deep_supervision=True, accurate=True,
                             base_channels=4).eval()
        with torch.no_grad():
            avg = model(x)
            model.training = True  # the four heads, BatchNorm in eval statistics
            heads = model(x)
        expected = torch.stack([act(h) for h in heads]).mean(0)
        assert torch.allclose(act(avg), expected, atol=1e-5)
        assert not torch.allclose(act(heads[-1]), expected, atol=1e-3)  # not fast mode


def test_unet_heads_rebuilt_for_inference():
    # Deep supervision is recorded off: the inference model ignores the trained
    # auxiliary heads (it failed on unexpected keys), and accurate=True keeps them.
    for name in ("unetpp", "unet3p"):
        trained = create_model(name, 1, 2, deep_supervision=True, **SMALL[name])
        plain = create_model(name, 1, 2, **SMALL[name])
        plain.load_state_dict(trained.state_dict())
    trained = create_model("unetpp", 1, 2, deep_supervision=True, base_channels=4)
    accurate = create_model("unetpp", 1, 2, accurate=True, base_channels=4)
    accurate.load_state_dict(trained.state_dict())
    assert torch.equal(accurate.aux_heads[0].weight, trained.aux_heads[0].weight)


@pytest.mark.parametrize("name", ["unetpp", "unet3p"])
def test_resnet_encoder_option(check_segmentation, name):
    model = create_model(name, 1, 2, encoder="resnet18")
    check_segmentation(model, 1, 2, 33, 47)
    taps = get_entry(name).taps_for(model)
    assert taps.encoder[0] == "encoder.stem"
    for tap in (*taps.encoder, *taps.decoder, taps.final):
        model.get_submodule(tap)


@pytest.mark.parametrize("name", ["unetpp", "unet3p"])
def test_plain_taps_name_real_modules(name):
    model = create_model(name, **SMALL[name])
    taps = get_entry(name).taps_for(model)
    assert len(taps.encoder) == 4 and len(taps.decoder) == 3
    for tap in (*taps.encoder, *taps.decoder, taps.final):
        model.get_submodule(tap)


def _force_cgm(model, present: bool) -> None:
    conv = model.cls_head[1]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([-5.0, 5.0] if present else [5.0, -5.0]))


def test_unet3p_cgm_official_multiplies_logits_in_train_and_eval():
    # ZJUGiveLab UNet_3Plus_DeepSup_CGM: d_i = dotProduct(d_i, argmax gate), both modes
    # (in training only with cgm_train_gate=True, see the next test).
    model = create_model("unet3p", 1, 3, cgm=True, deep_supervision=True,
                         cgm_train_gate=True, **SMALL["unet3p"])
    assert model.cgm_mode == "multiply"
    x = torch.randn(2, 1, 32, 32)
    model.train()
    _force_cgm(model, present=False)
    outs = model(x)
    assert len(outs) == 5 and all((o == 0).all() for o in outs)  # every head gated
    assert model.cgm_logits.shape == (2, 2) and model.cgm_logits.requires_grad
    _force_cgm(model, present=True)
    outs = model(x)
    assert all(o.abs().sum() > 0 for o in outs)
    sum(o.sum() for o in outs).backward()  # gradient flows through the open gate
    assert model.head.weight.grad.abs().sum() > 0
    model.eval()
    _force_cgm(model, present=False)
    with torch.no_grad():
        assert (model(x) == 0).all()  # zero logits, not background: as the official code
        _force_cgm(model, present=True)
        ungated = model(x)
    assert ungated.abs().sum() > 0 and ungated.abs().max() < 1e3


def test_unet3p_cgm_default_gates_in_eval_only_so_no_image_loses_its_gradient():
    # An untrained classifier that calls every image "absent" must not zero the
    # training logits (it did: 3-8 of 8 images per batch, all 8 for some seeds).
    model = create_model("unet3p", 1, 3, cgm=True, deep_supervision=True, **SMALL["unet3p"])
    x = torch.randn(2, 1, 32, 32)
    model.train()
    _force_cgm(model, present=False)
    outs = model(x)
    assert all(o[i].abs().sum() > 0 for o in outs for i in range(2))  # no image zeroed
    sum(o.sum() for o in outs).backward()
    assert model.head.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert (model(x) == 0).all()  # the official gate at inference


def test_unet3p_cgm_auxiliary_loss_is_bce_on_foreground_presence():
    import torch.nn.functional as F

    model = create_model("unet3p", 1, 3, cgm=True, cgm_loss_weight=0.5, **SMALL["unet3p"])
    model.train()
    model(torch.randn(2, 1, 32, 32))
    target = torch.zeros(2, 32, 32, dtype=torch.long)
    target[1, 3, 4] = 2  # image 1 has foreground, image 0 none
    total, terms = model.auxiliary_loss(target)
    expected = F.binary_cross_entropy_with_logits(
        model.cgm_logits, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert torch.allclose(total, 0.5 * expected) and terms["cgm"] == pytest.approx(
        float(expected.detach()), rel=1e-5)
    total.backward()
    assert model.cls_head[1].weight.grad.abs().sum() > 0  # the branch gets a gradient
    assert create_model("unet3p", **SMALL["unet3p"]).auxiliary_loss(target) is None
    from unetzoo.errors import ModelError

    with pytest.raises(ModelError, match="cgm_loss_weight"):
        create_model("unet3p", cgm=True, cgm_loss_weight=0, **SMALL["unet3p"])


def test_unet3p_cgm_branch_learns_in_a_short_training():
    # A tiny dataset: half the images hold a bright square (foreground), half none.
    from unetzoo.losses import build_loss, supervised_loss

    torch.manual_seed(0)
    x = torch.randn(16, 1, 32, 32) * 0.1
    y = torch.zeros(16, 32, 32, dtype=torch.long)
    x[8:, :, 8:20, 8:20] += 2.0
    y[8:, 8:20, 8:20] = 1
    model = create_model("unet3p", 1, 2, cgm=True, deep_supervision=True, **SMALL["unet3p"])
    crit = build_loss("ce_dice", 2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    bce, acc = [], []
    for _ in range(30):
        model.train()
        outs = model(x)
        assert all(o[i].abs().sum() > 0 for o in outs for i in range(16))  # none zeroed
        seg, _ = supervised_loss(crit, outs, y, "sum")
        aux, terms = model.auxiliary_loss(y)
        opt.zero_grad()
        (seg + aux).backward()
        opt.step()
        bce.append(terms["cgm"])
        acc.append(terms["cgm_acc"])
    assert sum(bce[-5:]) / 5 < 0.5 * sum(bce[:5]) / 5  # the BCE falls
    model.eval()
    with torch.no_grad():
        model(x)
    assert (model.cgm_logits.argmax(1) == torch.tensor([0] * 8 + [1] * 8)).all()


def test_unet3p_cgm_background_mode_gates_in_eval_only():
    model = create_model("unet3p", 1, 3, cgm=True, cgm_mode="background", **SMALL["unet3p"])
    x = torch.randn(2, 1, 32, 32)
    model.train()
    _force_cgm(model, present=False)
    out = model(x)
    assert out.shape == (2, 3, 32, 32) and out.abs().sum() > 0  # no gate in training
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == 0).all()  # "absent": background everywhere
        _force_cgm(model, present=True)
        assert model(x).abs().max() < 1e3


def test_unet3p_bad_cgm_mode_or_init_is_one_line_error():
    from unetzoo.errors import ModelError

    with pytest.raises(ModelError, match="cgm_mode"):
        create_model("unet3p", cgm=True, cgm_mode="gate", **SMALL["unet3p"])
    with pytest.raises(ModelError, match="init"):
        create_model("unet3p", init="xavier", **SMALL["unet3p"])


def test_unet3p_official_kaiming_init():
    torch.manual_seed(0)
    model = create_model("unet3p", 1, 2, base_channels=8, cat_channels=8)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    w = torch.cat([m.weight.detach() for m in bns])
    # BatchNorm weight N(1, 0.02) (PyTorch's default is exactly 1), bias 0.
    assert 0.005 < w.std() < 0.04 and abs(w.mean() - 1) < 0.01
    assert all((m.bias == 0).all() for m in bns)
    # Convolution weights: kaiming_normal_(fan_in) -> std sqrt(2 / fan_in) (PyTorch's
    # default kaiming_uniform_(a=sqrt(5)) gives std 1 / sqrt(3 * fan_in), 2.4x smaller).
    conv = model.decoder[0].fuse[0]
    fan_in = conv.weight[0].numel()
    assert conv.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)
    plain = create_model("unet3p", 1, 2, base_channels=8, cat_channels=8, init="pytorch")
    bns = [m for m in plain.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all((m.weight == 1).all() for m in bns)


def test_unetpp_official_parameter_count():
    # MrGiovanni/UNetPlusPlus model.py, Nest_Net docstring: "Total params: 9,041,601"
    # (Keras; widths 32-512, no BatchNorm, biases, 1 input channel, 1 sigmoid output).
    # Our default adds BatchNorm (bias-free); batch_norm=False reproduces the code.
    assert parameter_count("unetpp", 1, 1, batch_norm=False) == 9_041_601
    pub = get_entry("unetpp").published[0]
    assert parameter_count("unetpp", **pub.config) == pub.count == 9_041_601
    # Deep supervision adds three 1x1 heads (32 weights + 1 bias each).
    assert parameter_count("unetpp", 1, 1, batch_norm=False, deep_supervision=True) == (
        9_041_601 + 3 * 33
    )


def test_unet3p_official_parameter_count():
    # ZJUGiveLab/UNet-Version models/UNet_3Plus.py: UNet_3Plus(in_channels=3, n_classes=1)
    # has 26,971,777 parameters (paper Table 1: 26.97M). UNet_3Plus_DeepSup_CGM adds four
    # 3x3 heads (3 x (320*9+1) + (1024*9+1)) and the 1x1 classifier (1024*2+2).
    assert parameter_count("unet3p", 3, 1) == 26_971_777
    pub = get_entry("unet3p").published[0]
    assert parameter_count("unet3p", **pub.config) == pub.count
    ds_cgm = 26_971_777 + 3 * (320 * 9 + 1) + (1024 * 9 + 1) + (1024 * 2 + 2)
    assert parameter_count("unet3p", 3, 1, deep_supervision=True, cgm=True) == ds_cgm
