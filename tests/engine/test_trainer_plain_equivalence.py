"""The pipeline's training step is a textbook PyTorch loop, nothing more.

Real-MRI benchmark (issue 12): `resnet34_unet` through the pipeline trailed smp.Unet in a
40-line loop. This pins that the pipeline adds nothing to the loop's arithmetic: given the
same initial weights and the same batches, a hand-written AdamW + poly + CE/Dice loop
reproduces its losses and final weights, so a gap between the two can only come from the
random streams (initial weights, batch order, augmentation draws) or the network.
"""

from __future__ import annotations

import copy

import torch


def test_pipeline_step_equals_a_plain_loop(tiny_cfg, monkeypatch):
    import unetzoo.engine.trainer as trainer
    from unetzoo.engine.trainer import train
    from unetzoo.losses import build_loss

    cfg = tiny_cfg(optimizer="adamw", base_lr=1e-3, weight_decay=1e-4, lr_schedule="poly",
                   poly_power=0.9, loss="ce_dice", loss_weights=[0.5, 0.5], val_fraction=0.0,
                   max_epochs=2)
    rec: dict = {"init": None, "batches": [], "losses": []}
    step = trainer.train_step

    def spy(run, batch, epoch):
        if rec["init"] is None:
            rec["init"] = copy.deepcopy(run.model.state_dict())
            rec["model"], rec["classes"] = run.model, run.data.ds.num_classes
        rec["batches"].append((batch["image"].clone(), batch["label"].clone()))
        loss, terms = step(run, batch, epoch)
        rec["losses"].append(loss)
        return loss, terms

    monkeypatch.setattr(trainer, "train_step", spy)
    train(cfg)
    n = len(rec["batches"])
    assert n >= 4  # two epochs of several batches: the poly schedule moves

    model = copy.deepcopy(rec["model"])
    model.load_state_dict(rec["init"])
    model.train()
    criterion = build_loss("ce_dice", rec["classes"], weights=[0.5, 0.5])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    losses = []
    for it, (x, y) in enumerate(rec["batches"]):
        for group in opt.param_groups:
            group["lr"] = 1e-3 * (1 - it / n) ** 0.9
        loss, _ = criterion(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))

    assert max(abs(a - b) for a, b in zip(losses, rec["losses"])) < 1e-6
    trained = rec["model"].state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=1e-6)
