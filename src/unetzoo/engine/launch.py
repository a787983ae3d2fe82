"""A training run from what a user gave: flags, a YAML file, ``--resume``, a budget.

``unetzoo train`` parses its flags and calls :func:`train_from_flags`; everything between
(checking the values, reading the resumed checkpoint's configuration, opening and
planning the dataset, resolving the recipe, refusing an unsupported precision) is
:func:`resolve_run`, so the command line and the Python API decide a run the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unetzoo.engine.config import (
    TrainConfig,
    check_values,
    load_yaml,
    require_pretrained_encoder,
    resolve_config,
)
from unetzoo.errors import ConfigError


@dataclass(frozen=True)
class ResolvedRun:
    """What :func:`unetzoo.engine.trainer.train` needs: the configuration, the opened
    (and possibly planned) dataset, and the checkpoint to resume from (None: a new run)."""

    config: TrainConfig
    dataset: Any
    resume: Path | None


def _resume_path(resume: str | Path | None, output: str | None) -> Path | None:
    """``"latest"`` -> ``<output>/checkpoints/latest.pt``; a path as is."""
    if resume is None:
        return None
    if str(resume) != "latest":
        return Path(resume)
    if not output:
        raise ConfigError("bare --resume needs --output (the run folder to continue)")
    from unetzoo.engine.run_folder import RunLayout

    return RunLayout(output).latest


def _plan(ds, name, root, ds_opts, file_values, flags, resumed, budget):
    """A dataset without a source recipe gets a plan (:mod:`unetzoo.data.plan`); a
    resumed planned run keeps its checkpoint's."""
    from unetzoo.data.plan import plan_training, wants_plan

    if resumed is not None:
        if resumed.spec.plan is not None:
            ds.plan = resumed.spec.plan
        return ds, file_values
    if wants_plan(ds, file_values, flags):
        from unetzoo.engine.distributed import resolve_device

        device = str(resolve_device(flags.get("device", file_values.get("device"))))
        return plan_training(name, root, ds_opts, file_values, flags, device=device, **budget)
    given = [f"--{k.replace('_', '-')}" for k, v in budget.items() if v is not None]
    if given:
        raise ConfigError(f"{' and '.join(given)} size(s) a planned run (an nnU-Net folder "
                          "on the default recipe); this run follows a recipe: use "
                          "--max-epochs")
    return ds, file_values


def resolve_run(
    flags: dict[str, Any],
    *,
    config_file: str | Path | None = None,
    resume: str | Path | None = None,
    iterations: int | None = None,
    time_budget: float | None = None,
) -> ResolvedRun:
    """Decide a run as ``unetzoo train`` does.

    Args:
        flags: configuration keys given explicitly (``None`` values = not given).
        config_file: a YAML file of keys (the flags win over it).
        resume: a checkpoint to continue, or ``"latest"`` (``<output>``'s latest.pt);
            its configuration sits under the file's and the flags'.
        iterations, time_budget: the budget of a planned run (:mod:`unetzoo.data.plan`).

    Raises:
        ConfigError, CheckpointError, DataError: one line, before the run folder exists.
    """
    from unetzoo.data import get_dataset
    from unetzoo.models import get_entry

    check_values(flags)  # a bad value is one line before any dataset is read
    file_values = load_yaml(config_file) if config_file else {}
    path = _resume_path(resume, flags.get("output") or file_values.get("output"))
    ck = None
    if path is not None:
        from unetzoo.engine.checkpoint import read_checkpoint

        ck = read_checkpoint(path)
        file_values = {**ck.config, **file_values}
    if "model" in flags or "model" in file_values:
        get_entry(flags.get("model") or file_values["model"])  # unknown model: fail fast
    name = flags.get("dataset", file_values.get("dataset"))
    root = flags.get("data_root", file_values.get("data_root"))
    ds_opts = {**(file_values.get("dataset_options") or {}), **flags.get("dataset_options", {})}
    ds = get_dataset(name, root, **ds_opts)
    budget = {"iterations": iterations, "time_budget": time_budget}
    ds, file_values = _plan(ds, name, root, ds_opts, file_values, flags, ck, budget)
    cfg = require_pretrained_encoder(resolve_config(ds.recipe, file_values, flags))
    if cfg.precision != "fp32":  # refused in one line before the run folder is made
        from unetzoo.engine.backends import check_precision
        from unetzoo.engine.distributed import resolve_device

        check_precision(cfg.precision, resolve_device(cfg.device))
    return ResolvedRun(cfg, ds, path)


def train_from_flags(
    flags: dict[str, Any],
    *,
    config_file: str | Path | None = None,
    resume: str | Path | None = None,
    overwrite: bool = False,
    iterations: int | None = None,
    time_budget: float | None = None,
) -> dict[str, Any]:
    """:func:`resolve_run`, then :func:`unetzoo.engine.trainer.train`; its summary.

    ``resume`` and ``overwrite`` exclude each other (one continues the run folder, the
    other replaces it).
    """
    from unetzoo.engine.trainer import train

    if resume is not None and overwrite:
        raise ConfigError("--resume continues the run in --output and --overwrite replaces it; "
                          "pass one of them")
    run = resolve_run(flags, config_file=config_file, resume=resume, iterations=iterations,
                      time_budget=time_budget)
    return train(run.config, dataset=run.dataset, resume=run.resume, overwrite=overwrite)
