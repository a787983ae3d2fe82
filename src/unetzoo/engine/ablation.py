"""Ablation ladders: train every rung with one recipe and one seed, compare in one table.

``run_ladder("resunet", dataset=ds, flag_values={...})`` trains each rung of the ladder
through :func:`unetzoo.engine.trainer.train` (the same pipeline as ``unetzoo train``),
each in ``<output>/<rung>/``, then writes ``<output>/ablation.md`` and
``<output>/ablation.csv``: mean Dice and HD95 on the test split, per-class Dice,
parameters, MACs and training time.

Resuming: a rung whose ``<output>/<rung>/result.json`` exists (written after its test)
is not retrained; a rung with a ``checkpoints/latest.pt`` but no result continues from
that checkpoint (the trainer's exact resume); other rungs train from scratch. A finished
rung trained under a different recipe is an error (use another output folder or
``retrain=True``), so one table never mixes recipes.

MACs are counted with fvcore's ``FlopCountAnalysis``, which counts one multiply-add as
one "flop" (so its total is MACs), for one ``(1, C, img_size, img_size)`` input; ops it
has no formula for (e.g. bilinear resizing, element-wise additions) contribute 0.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from unetzoo.errors import ConfigError, UnetzooError

if TYPE_CHECKING:
    from unetzoo.engine.config import TrainConfig

#: Registered ladders: name -> rung model names, in order.
LADDERS: dict[str, tuple[str, ...]] = {}


def _ladders() -> dict[str, tuple[str, ...]]:
    if not LADDERS:
        from unetzoo.models.resunet import LADDER_NAMES

        LADDERS["resunet"] = LADDER_NAMES
    return LADDERS


def ladder_rungs(ladder: str, rungs: list[str] | None = None) -> list[str]:
    """The rung names of ``ladder``, optionally a subset (``rungs``: names or ``v0_3``/``0.3``).

    Raises ConfigError for an unknown ladder or rung.
    """
    table = _ladders()
    if ladder not in table:
        raise ConfigError(f"unknown ladder {ladder!r}; choose one of {', '.join(sorted(table))}")
    names = list(table[ladder])
    if not rungs:
        return names
    chosen: list[str] = []
    for item in rungs:
        for part in str(item).split(","):
            key = part.strip().lower()
            if not key:
                continue
            short = key.removeprefix(f"{ladder}_").removeprefix("v").replace(".", "_")
            match = [n for n in names if n == key or n.endswith(f"_v{short}")]
            if not match:
                short_names = ", ".join(n.removeprefix(f"{ladder}_") for n in names)
                raise ConfigError(f"ladder {ladder!r} has no rung {part!r}; rungs: {short_names}")
            if match[0] not in chosen:
                chosen.append(match[0])
    return [n for n in names if n in chosen]  # ladder order


def count_macs(model: torch.nn.Module, in_channels: int, img_size: int) -> int:
    """Multiply-adds of one forward pass on ``(1, in_channels, img_size, img_size)`` (fvcore,
    through :func:`unetzoo.measure.count_macs`, the one MAC counter)."""
    from unetzoo.measure import count_macs as fvcore_macs

    model = model.eval()
    return int(fvcore_macs(model, torch.zeros(1, in_channels, img_size, img_size))[0])


def _last_time(history: list[dict[str, Any]]) -> float:
    return float(history[-1].get("time_s", 0.0) or 0.0) if history else 0.0


def _recipe_key(cfg: TrainConfig) -> dict[str, Any]:
    """The parts of a resolved config that must agree across rungs of one table."""
    skip = {"model", "output", "progress", "device", "num_workers"}
    return {k: v for k, v in cfg.to_dict().items() if k not in skip}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def run_ladder(
    ladder: str,
    dataset=None,
    *,
    data_root: str | Path | None = None,
    output: str | Path | None = None,
    rungs: list[str] | None = None,
    file_values: dict[str, Any] | None = None,
    flag_values: dict[str, Any] | None = None,
    encoder_weights: str | None = "default",
    retrain: bool = False,
    verbose: bool = True,
    train: Callable[..., dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Train and test every rung of ``ladder``; write the comparison table.

    Args:
        ladder: a key of :data:`LADDERS` (``"resunet"``).
        dataset: an opened ``SegDataset``, a dataset name, or None (the phantom).
        data_root: dataset folder when ``dataset`` is a name.
        output: ladder folder (default ``runs/ablate-<ladder>-<dataset>``).
        rungs: train only these rungs (names, ``v0_3`` or ``0.3``); the table lists every
            finished rung found in ``output``.
        file_values, flag_values: training options as for ``unetzoo train`` (YAML values,
            then flags); ``model`` and ``output`` are set per rung.
        encoder_weights: ``"default"`` keeps each rung's own (ImageNet for v0.2+);
            ``None`` / ``"none"`` or a checkpoint path replaces it on rungs whose default
            is pretrained (offline runs). The choice is part of the recipe.
        retrain: train the chosen rungs again even when finished.
        train: the trainer, called as ``train(cfg, dataset=, resume=, overwrite=)``
            (default :func:`unetzoo.engine.trainer.train`).

    Returns:
        The table rows (one dict per finished rung, ladder order).
    """
    from unetzoo.data import get_dataset
    from unetzoo.engine.run_folder import check_output_dir

    names = ladder_rungs(ladder, rungs)
    flags = dict(flag_values or {})
    for key in ("model", "output"):
        if key in flags:
            raise ConfigError(f"ablate sets {key} per rung; drop --{key} (use --output-dir)")
    ds = dataset if dataset is not None and not isinstance(dataset, str) else get_dataset(
        dataset, data_root
    )
    out = Path(output) if output is not None else Path("runs") / f"ablate-{ladder}-{ds.name}"
    check_output_dir(out)
    weights = encoder_weights
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None

    for name in names:
        cfg = rung_config(name, ds, out / name, file_values, flags, weights)
        recipe = _jsonable(_recipe_key(cfg))
        if not retrain and _kept_earlier(name, out, recipe, verbose):
            continue
        summary, earlier = train_rung(cfg, ds, retrain=retrain, verbose=verbose, train=train)
        result = rung_result(cfg, ds, summary, earlier, recipe)
        (out / name / "result.json").write_text(json.dumps(result, indent=2))

    rows = collect_results(ladder, out)
    write_tables(rows, out)
    if verbose:
        print(f"[ablate] table: {out / 'ablation.md'} and {out / 'ablation.csv'}", flush=True)
    return rows


def rung_config(
    name: str, ds, run_dir: Path, file_values: dict[str, Any] | None,
    flags: dict[str, Any], weights: str | None,
) -> TrainConfig:
    """The resolved config of one rung: the shared recipe, this rung's model and folder,
    and exactly the model options given (the recipe's belong to another model), with
    ``encoder_weights`` replaced on pretrained rungs unless ``weights`` is ``"default"``."""
    from unetzoo.engine.config import resolve_config
    from unetzoo.models import get_entry

    options = dict((file_values or {}).get("model_options") or {})
    options.update(flags.get("model_options") or {})
    if weights != "default" and get_entry(name).default_options().get("encoder_weights") is not None:
        options["encoder_weights"] = weights
    rung_flags = {**flags, "model": name, "output": str(run_dir), "model_options": options}
    cfg = resolve_config(ds.recipe, copy.deepcopy(file_values or {}), rung_flags)
    return dataclasses.replace(cfg, model_options=options, dataset=ds.name)


def _kept_earlier(name: str, out: Path, recipe: dict[str, Any], verbose: bool) -> bool:
    """True when the rung has a ``result.json`` under the same recipe (kept as it is);
    a different recipe is an error, so one table never mixes recipes."""
    result_path = out / name / "result.json"
    if not result_path.exists():
        return False
    old = json.loads(result_path.read_text())
    if old.get("recipe") != recipe:
        diff = sorted(
            k for k in set(old.get("recipe", {})) | set(recipe)
            if old.get("recipe", {}).get(k) != recipe.get(k)
        )
        raise ConfigError(
            f"rung {name} in {out} was trained with another recipe (differs in "
            f"{', '.join(diff)}); use another --output-dir or --retrain"
        )
    if verbose:
        print(f"[ablate] {name}: finished earlier, kept ({result_path})", flush=True)
    return True


def _history(path: Path) -> list[dict[str, Any]]:
    """The metrics rows a run's checkpoint records ([] for an inference-only file)."""
    from unetzoo.engine.checkpoint import read_checkpoint

    state = read_checkpoint(path).train_state
    return [] if state is None else list(state.history)


def train_rung(
    cfg: TrainConfig, ds, *, retrain: bool, verbose: bool,
    train: Callable[..., dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], float]:
    """Train (or resume from ``latest.pt``) and test one rung with ``train`` (default the
    trainer's); returns its summary and the training seconds of earlier, interrupted
    segments."""
    from unetzoo.engine.run_folder import RunLayout
    from unetzoo.engine.trainer import train as trainer_train

    train = train or trainer_train

    layout = RunLayout(cfg.output)
    latest = layout.latest
    resume = latest if latest.exists() and not retrain else None
    # Training time over interrupted segments: each resume adds the time the previous
    # segment had reached at its last checkpoint (the trainer's clock restarts).
    clock = layout.root / "train_time.json"
    earlier = 0.0
    if resume is not None:
        earlier = json.loads(clock.read_text())["seconds"] if clock.exists() else 0.0
        earlier += _last_time(_history(resume))
    layout.root.mkdir(parents=True, exist_ok=True)
    clock.write_text(json.dumps({"seconds": earlier}))
    if verbose:
        how = f"resuming from {latest}" if resume else "training"
        print(f"[ablate] {cfg.model}: {how}", flush=True)
    # The rung folder is the ladder's (it also holds train_time.json): a rung that is
    # not resumed replaces any earlier run there.
    summary = train(cfg, dataset=ds, resume=resume, overwrite=resume is None)
    if not summary.get("test"):
        raise UnetzooError(
            f"rung {cfg.model} trained but was not tested (no test split in {ds.name!r}, "
            "or --no-test); the ablation table needs test metrics"
        )
    return summary, earlier


def rung_result(
    cfg: TrainConfig, ds, summary: dict[str, Any], earlier: float, recipe: dict[str, Any]
) -> dict[str, Any]:
    """One row of the table (``result.json``): size, MACs, time, test metrics, recipe."""
    from unetzoo.engine.run_folder import RunLayout
    from unetzoo.models import create_model, get_entry

    name, options = str(cfg.model), dict(cfg.model_options)
    entry = get_entry(name)
    history = _history(RunLayout(cfg.output).latest)
    with torch.device("meta"):
        n_params = sum(
            p.numel()
            for p in create_model(
                name, in_channels=ds.in_channels, num_classes=ds.num_classes, **options
            ).parameters()
        )
    macs_model = create_model(
        name,
        in_channels=ds.in_channels,
        num_classes=ds.num_classes,
        **{**options, "encoder_weights": None},  # weights do not change MACs
    )
    test = summary["test"]
    return {
        "rung": name,
        "description": entry.description,
        "params": int(n_params),
        "macs": count_macs(macs_model, ds.in_channels, int(cfg.img_size)),
        "img_size": int(cfg.img_size),
        "train_seconds": round(earlier + _last_time(history), 1),
        "epochs": int(summary["epochs"]),
        "best_epoch": int(summary["best_epoch"]),
        "mean_dice": float(test["mean_dice"]),
        "mean_hd95": float(test["mean_hd95"]),
        "hd95_unit": test.get("hd95_unit", ""),
        "per_class_dice": {k: float(v["dice"]) for k, v in test["per_class"].items()},
        "test_cases": int(test.get("cases", 0)),
        "dataset": ds.name,
        "encoder_weights": options.get(
            "encoder_weights", entry.default_options().get("encoder_weights")
        ),
        "recipe": recipe,
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def collect_results(ladder: str, out: str | Path) -> list[dict[str, Any]]:
    """Every finished rung's ``result.json`` under ``out``, in ladder order."""
    rows = []
    for name in ladder_rungs(ladder):
        path = Path(out) / name / "result.json"
        if path.exists():
            rows.append(json.loads(path.read_text()))
    return rows


def _fmt(value: float, scale: float = 1.0, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value * scale:.{digits}f}"


def write_tables(rows: list[dict[str, Any]], out: str | Path) -> tuple[Path, Path]:
    """Write ``ablation.md`` and ``ablation.csv`` for ``rows`` into ``out``."""
    out = Path(out)
    classes: list[str] = []
    for r in rows:
        classes += [c for c in r["per_class_dice"] if c not in classes]
    unit = rows[0]["hd95_unit"] if rows else ""
    size = rows[0]["img_size"] if rows else 0
    head = [
        "Rung", "Params (M)", f"MACs (G, {size}px)", "Train time (s)", "Epochs",
        "DSC (%)", f"HD95 ({unit})", *classes,
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["rung"], _fmt(r["params"], 1e-6), _fmt(r["macs"], 1e-9), _fmt(r["train_seconds"], 1, 0),
            str(r["epochs"]), _fmt(r["mean_dice"], 100), _fmt(r["mean_hd95"]),
            *[_fmt(r["per_class_dice"].get(c, float("nan")), 100) for c in classes],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    dataset = rows[0]["dataset"] if rows else "?"
    md = (
        f"# Ablation on {dataset}\n\n"
        "Test-split metrics of each rung's best-validation checkpoint; one recipe and seed "
        "for all rungs. MACs: fvcore FlopCountAnalysis (one multiply-add = 1).\n\n"
        + "\n".join(lines) + "\n"
    )
    md_path, csv_path = out / "ablation.md", out / "ablation.csv"
    md_path.write_text(md)
    fields = [
        "rung", "params", "macs", "img_size", "train_seconds", "epochs", "best_epoch",
        "mean_dice", "mean_hd95", "hd95_unit", "encoder_weights", "dataset",
        *[f"dice_{c}" for c in classes],
    ]
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in rows:
            rec = {k: r.get(k) for k in fields if not k.startswith("dice_")}
            rec.update({f"dice_{c}": r["per_class_dice"].get(c) for c in classes})
            writer.writerow(rec)
    return md_path, csv_path
