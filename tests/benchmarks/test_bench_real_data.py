"""bench_real_data.py: tiny mode end to end, the nnU-Net Dice rule, specs and the summary."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks import bench_real_data as bench


def test_tiny_run_trains_both_sides_and_writes_json(tmp_path, capsys):
    pytest.importorskip("segmentation_models_pytorch")
    pytest.importorskip("nilearn")
    out = tmp_path / "real.json"
    result = bench.main(["--tiny", "--threads", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "Real MRI learning benchmark" in printed and "| smp |" in printed
    runs = result["runs"]
    assert [r["loop"] for r in runs] == ["plain", "pipeline"]
    # Both sides ran the same number of iterations on the same slices.
    assert runs[0]["iterations"] == runs[1]["iterations"] > 0
    for r in runs:
        assert 0.0 <= r["mean_dice"] <= 1.0 and r["scored_classes"] >= 6
        assert set(r["per_class"]) == set(result["setup"]["classes"][1:])
    data = json.loads(out.read_text())
    assert [r["model"] for r in data["runs"]] == ["smp", "unet:base_channels=4"]
    assert data["rows"][0]["vs_smp"] == 0


def test_class_dice_leaves_out_classes_absent_from_both():
    ref = np.array([[0, 1, 1], [2, 2, 0]])
    pred = np.array([[0, 1, 0], [0, 0, 0]])
    d = bench.class_dice(pred, ref, num_classes=4)
    assert d[0] == pytest.approx(2 / 3)  # class 1: one of two found
    assert d[1] == 0.0  # class 2: present, never predicted -> a failure, not left out
    assert math.isnan(d[2])  # class 3: absent from both -> left out


def test_parse_spec_and_split_specs():
    assert bench.parse_spec("smp") == ("plain", "smp", {})
    assert bench.parse_spec("unet") == ("pipeline", "unet", {})
    assert bench.parse_spec("plain:resnet34_unet:head_relu=true,decoder=smp") == (
        "plain", "resnet34_unet", {"head_relu": True, "decoder": "smp"})
    assert bench._split_specs("smp,unet:base_channels=4,init=smp,unetpp") == [
        "smp", "unet:base_channels=4,init=smp", "unetpp"]


def test_summary_mean_spread_and_gap_to_smp():
    runs = [{"model": m, "budget": 200, "mean_dice": v, "learned": 5}
            for m, v in [("smp", 0.5), ("smp", 0.7), ("unet", 0.55)]]
    smp_row, unet_row = bench.summary_rows(runs)
    assert smp_row["mean_dice"] == pytest.approx(0.6) and smp_row["sd"] > 0
    assert unet_row["vs_smp"] == pytest.approx(-0.05) and unet_row["seeds"] == 1
    assert bench.default_seeds("unetpp", [0, 1, 2]) == [0]
    assert bench.default_seeds("resnet34_unet:init=smp", [0, 1, 2]) == [0, 1, 2]


def test_plain_loop_augmentation_uses_the_pipeline_transform(tmp_path):
    pytest.importorskip("nilearn")
    import torch

    ds = bench.open_dataset(None, tmp_path, max_slices=24)
    x, y = bench.training_slices(ds, 32)
    idx = torch.arange(min(8, len(x)))
    # Recipe "none" is the pipeline's plain resize: the same tensors as the plain loop's.
    xn, yn = bench.augmented_batches(ds, "none", 32, seed=0)(idx)
    assert torch.equal(xn, x[idx]) and torch.equal(yn, y[idx])
    # The default recipe's augmentation changes some slices, keeps the shapes and labels.
    xa, ya = bench.augmented_batches(ds, "default", 32, seed=0)(idx)
    assert xa.shape == x[idx].shape and ya.shape == y[idx].shape
    assert not torch.equal(xa, x[idx])
    assert set(ya.unique().tolist()) <= set(y.unique().tolist())


def test_monai_unet_peer_is_plain_loop_and_the_classic_unet():
    pytest.importorskip("monai")
    assert bench.parse_spec("monai_unet") == ("plain", "monai_unet", {})
    small = bench.build_plain_model("monai_unet", {"features": [4, 8, 16, 32, 64, 4]}, 1, 5)
    import torch

    assert small(torch.zeros(2, 1, 32, 32)).shape == (2, 5, 32, 32)
    # The full-size peer is the same network as `unet` up to MONAI's conv biases and its
    # last up-block (which does not halve): parameter counts within 0.3 %.
    from unetzoo.models import create_model

    def count(m):
        return sum(p.numel() for p in m.parameters())

    peer = bench.build_plain_model("monai_unet", {}, 1, 13)
    ours = create_model("unet", in_channels=1, num_classes=13)
    assert count(peer) == 31_112_845 and count(ours) == 31_036_288
    assert abs(count(peer) / count(ours) - 1) < 0.003
    kinds = {type(m).__name__ for m in peer.modules()}
    assert {"BatchNorm2d", "ReLU", "ConvTranspose2d"} <= kinds and "InstanceNorm2d" not in kinds


def test_epoch_batches_visit_every_slice_once_per_epoch():
    import torch

    gen = torch.Generator().manual_seed(0)
    n, batch = 21, 4  # 5 batches per epoch, one slice dropped each pass like the DataLoader
    batches = list(bench.batch_indices(n, batch, iterations=10, gen=gen, mode="epochs"))
    assert all(len(b) == batch for b in batches)
    for epoch in (batches[:5], batches[5:]):
        seen = torch.cat(epoch).tolist()
        assert len(set(seen)) == 20  # no slice twice within a pass
    assert torch.cat(batches[:5]).tolist() != torch.cat(batches[5:]).tolist()  # reshuffled


def test_random_batches_draw_afresh_each_iteration():
    import torch

    gen = torch.Generator().manual_seed(0)
    batches = list(bench.batch_indices(21, 4, iterations=50, gen=gen, mode="random"))
    assert all(len(set(b.tolist())) == 4 for b in batches)  # distinct within a batch
    firsts = torch.cat(batches[:6]).tolist()  # 24 draws: a pass would hold 20 distinct
    assert len(set(firsts)) < 20  # with replacement across iterations, repeats appear
    with pytest.raises(ValueError, match="batch drawing"):
        next(bench.batch_indices(21, 4, 1, gen, mode="sequential"))


def test_plain_loop_with_the_loader_order_reproduces_the_pipeline(tmp_path):
    """Same seed, same initial weights, augmentation draws and batch order: the plain
    loop and the pipeline give the same model, so the pipeline adds nothing to the loop."""
    pytest.importorskip("nilearn")
    ds = bench.open_dataset(None, tmp_path, max_slices=24)
    slices = bench.training_slices(ds, 32)
    budget = 2 * bench.iterations_per_epoch(len(slices[0]), 4)
    pipe, same, other = (
        bench.run_one(spec, ds, slices, budget, 32, 4, 0, tmp_path, None, "default", batches)
        for spec, batches in (("unet:base_channels=4", "random"),
                              ("plain:unet:base_channels=4", "loader"),
                              ("plain:unet:base_channels=4", "epochs")))
    assert pipe["iterations"] == same["iterations"] == budget
    assert same["per_class"] == pipe["per_class"]
    assert same["mean_dice"] == pipe["mean_dice"]
    # Another order of the same batches gives another model (the check above can fail).
    assert other["per_class"] != pipe["per_class"]
