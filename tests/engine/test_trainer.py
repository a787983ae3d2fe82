"""The training loop on a tiny phantom: exact resume, divergence, deep supervision, logs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from unetzoo.engine.checkpoint import read_checkpoint
from unetzoo.engine.config import poly_lr
from unetzoo.engine.trainer import TrainingDiverged, split_train_val, train


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_split_never_empty_and_deterministic():
    cases = [f"c{i}" for i in range(10)]
    tr, va = split_train_val(cases, 0.2, seed=1)
    assert len(va) == 2 and not set(tr) & set(va) and sorted(tr + va) == sorted(cases)
    assert split_train_val(cases, 0.2, seed=1) == (tr, va)
    assert split_train_val(["a", "b"], 0.1, seed=0)[1]  # at least one validation case
    assert split_train_val(["a"], 0.5, seed=0) == (["a"], [])


def test_train_writes_run_folder_and_poly_lr(tiny_cfg):
    cfg = tiny_cfg()
    summary = train(cfg)
    run = Path(summary["run_dir"])
    for rel in ("config.yaml", "metrics.csv", "checkpoints/latest.pt", "checkpoints/best.pt",
                "checkpoints/final.pt", "plots/loss.png", "plots/val_metrics.png"):
        assert (run / rel).is_file(), rel
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    rows = _rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"loss", "loss_ce", "loss_dice", "lr", "val_dice", "val_hd95"} <= set(rows[0])
    # lr logged after an epoch = the lr of that epoch's last step (poly, per iteration).
    its = summary["iterations"] // 2
    for epoch, row in enumerate(rows, 1):
        expected = poly_lr(cfg.base_lr, epoch * its - 1, 2 * its, 0.9)
        assert float(row["lr"]) == pytest.approx(expected, rel=1e-5)
    ck = read_checkpoint(run / "checkpoints" / "latest.pt")
    assert ck.epoch == 2 and ck.train_state.iteration == summary["iterations"]
    assert ck.spec.class_names[0] == "background" and ck.spec.img_size == 32
    assert ck.spec.preprocessing["kind"] == "ct" and ck.config["seed"] == cfg.seed
    # the training cases' median spacing (the phantom's 5 x 2.5 x 2.5 mm) is in the spec
    assert ck.spec.spacing == (5.0, 2.5, 2.5)


def test_max_iterations_is_an_exact_budget(tiny_cfg):
    per_epoch = train(tiny_cfg(max_epochs=1))["iterations"]
    budget = per_epoch + 1  # one step into a second epoch
    summary = train(tiny_cfg(max_epochs=99, max_iterations=budget, eval_interval=99,
                             output=tiny_cfg().output + "-budget"))
    assert summary["iterations"] == budget and summary["epochs"] == 2
    rows = _rows(Path(summary["run_dir"]))
    assert [int(r["iteration"]) for r in rows] == [per_epoch, budget]
    # poly decays over the budget, not over 99 epochs: the last step's lr
    assert float(rows[-1]["lr"]) == pytest.approx(poly_lr(0.01, budget - 1, budget, 0.9))
    assert read_checkpoint(Path(summary["run_dir"]) / "checkpoints" / "final.pt").epoch == 2


def test_resume_equals_uninterrupted_run(tiny_cfg, tmp_path):
    full = train(tiny_cfg(output=str(tmp_path / "full"), max_epochs=3, eval_interval=2))
    part_cfg = tiny_cfg(output=str(tmp_path / "part"), max_epochs=3, eval_interval=2)
    train(part_cfg.to_dict(), stop_after_epochs=1)
    latest = tmp_path / "part" / "checkpoints" / "latest.pt"
    assert read_checkpoint(latest).epoch == 1
    resumed = train(part_cfg.to_dict(), resume=latest)
    assert resumed["iterations"] == full["iterations"]
    a = read_checkpoint(tmp_path / "full" / "checkpoints" / "latest.pt")
    b = read_checkpoint(latest)
    assert a.epoch == b.epoch == 3
    for k, v in a.weights.items():
        assert torch.equal(v, b.weights[k]), k
    opt_a, opt_b = a.train_state.optimizer["state"], b.train_state.optimizer["state"]
    for k in opt_a:
        for name, t in opt_a[k].items():
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(opt_b[k][name]))
    assert a.train_state.best_metric == b.train_state.best_metric
    assert [r["loss"] for r in _rows(tmp_path / "full")] == [r["loss"] for r in _rows(tmp_path / "part")]


def test_nan_loss_stops_and_keeps_last_checkpoint(tiny_cfg):
    from unetzoo.engine.trainer import TrainHooks
    from unetzoo.losses import build_loss as real

    def poisoned(name, num_classes, weights=None):
        inner = real(name, num_classes, weights)
        calls = {"n": 0}

        def loss(logits, target):
            calls["n"] += 1
            total, terms = inner(logits, target)
            if calls["n"] == 4:
                total = total * float("nan")
            return total, terms

        return loss

    cfg = tiny_cfg(max_epochs=3)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, iteration 4") as info:
        train(cfg, hooks=TrainHooks(build_loss=poisoned))
    assert "latest.pt" in str(info.value) and "\n" not in str(info.value)
    ck = read_checkpoint(Path(cfg.output) / "checkpoints" / "latest.pt")
    assert ck.epoch == 1 and all(torch.isfinite(v).all() for v in ck.weights.values()
                                 if v.is_floating_point())


def test_deep_supervision_weighted_heads(tiny_cfg):
    cfg = tiny_cfg(model="unetpp", model_options={"base_channels": 4}, deep_supervision=True,
                   max_epochs=1, deep_supervision_weights=[1, 1, 1, 2],
                   deep_supervision_loss="weighted")
    summary = train(cfg)
    rows = _rows(Path(summary["run_dir"]))
    heads = [k for k in rows[0] if k.startswith("loss_head")]
    assert heads == ["loss_head0", "loss_head1", "loss_head2", "loss_head3"]
    expected = sum(w * float(rows[0][h]) for w, h in zip([0.2, 0.2, 0.2, 0.4], heads))
    assert float(rows[0]["loss"]) == pytest.approx(expected, rel=1e-4)
    ck = read_checkpoint(Path(summary["run_dir"]) / "checkpoints" / "final.pt")
    assert ck.spec.options["deep_supervision"] is False  # inference builds one head


def test_deep_supervision_auto_sums_unetpp_heads_and_the_test_loads_them(tiny_cfg, tiny_root):
    # Official UNet++ (Keras multi-output) sums the heads' losses: "auto" picks that.
    # The final test rebuilds the model without deep supervision from that checkpoint.
    cfg = tiny_cfg(model="unetpp", model_options={"base_channels": 4}, deep_supervision=True,
                   max_epochs=1, test=True)
    assert cfg.deep_supervision_loss == "auto"
    summary = train(cfg)
    row = _rows(Path(summary["run_dir"]))[0]
    heads = [float(row[f"loss_head{i}"]) for i in range(4)]
    assert float(row["loss"]) == pytest.approx(sum(heads), rel=1e-4)
    assert summary["test"] is not None  # it failed on the auxiliary heads' weights


def test_unet3p_cgm_branch_is_trained_by_the_trainer(tiny_cfg):
    cfg = tiny_cfg(model="unet3p", model_options={"base_channels": 4, "cat_channels": 4,
                                                  "cgm": True},
                   max_epochs=4, eval_interval=4, base_lr=0.01)
    rows = _rows(Path(train(cfg)["run_dir"]))
    bce = [float(r["loss_cgm"]) for r in rows]
    assert "loss_cgm_acc" in rows[0] and bce[-1] < bce[0]  # the branch learns
    assert all(float(r["loss"]) > float(r["loss_cgm"]) for r in rows)  # total includes it


def test_eval_from_epoch_validates_only_from_that_epoch_and_the_last(tiny_cfg):
    cfg = tiny_cfg(max_epochs=5, eval_interval=2, eval_from_epoch=3)
    rows = _rows(Path(train(cfg)["run_dir"]))
    assert [r["epoch"] for r in rows if r.get("val_dice")] == ["4", "5"]


def test_deep_supervision_weights_must_match_heads(tiny_cfg):
    from unetzoo.errors import ConfigError

    cfg = tiny_cfg(model="unetpp", model_options={"base_channels": 4}, deep_supervision=True,
                   max_epochs=1, deep_supervision_weights=[1, 2])
    with pytest.raises(ConfigError, match="4 heads"):
        train(cfg)


def test_distillation_terms_are_logged(tiny_cfg):
    pytest.importorskip("unetzoo.losses.distillation")
    cfg = tiny_cfg(max_epochs=1, distill_ifd=0.5, distill_scr=0.25)
    rows = _rows(Path(train(cfg)["run_dir"]))
    assert {"loss_distill_ifd", "loss_distill_scr"} <= set(rows[0])
    assert np.isfinite(float(rows[0]["loss_distill_ifd"]))


def test_training_spacing_is_the_median_or_none(tiny_root):
    from unetzoo.data import get_dataset
    from unetzoo.data.base import Case
    from unetzoo.engine.trainer import training_spacing

    ds = get_dataset("phantom", str(tiny_root), n_train=3, n_test=1, shape=[4, 32, 32], seed=0)
    cases = ds.cases("train")
    # the reader's metadata answer equals a full read of each case
    assert training_spacing(ds, cases) == (5.0, 2.5, 2.5)
    assert [ds.case_spacing(c, "train") for c in cases] == \
        [ds.load_case(c, "train").spacing for c in cases]

    class Plain:  # a reader without case_spacing: full reads, affine = known spacing
        def __init__(self, spacings, affine=True):
            self.spacings, self.affine = spacings, affine

        def load_case(self, cid, split):
            return Case(cid, np.zeros((1, 1, 2, 2), np.float32), None, self.spacings[cid],
                        np.eye(4) if self.affine else None)

    three = {"a": (1.0, 0.5, 0.5), "b": (3.0, 0.7, 0.9), "c": (2.0, 0.6, 0.8)}
    assert training_spacing(Plain(three), list(three)) == (2.0, 0.6, 0.8)
    assert training_spacing(Plain(three, affine=False), list(three)) is None  # h5/npz, PNG
    assert training_spacing(Plain(three), []) is None
