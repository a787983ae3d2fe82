"""Datasets: one reader per on-disk format, behind one registry.

    from unetzoo.data import get_dataset, list_datasets
    ds = get_dataset("phantom")            # generated on first use, then reused
    ds = get_dataset("synapse", "/data/Synapse")
    train = ds.slice_dataset("train", transform=build_train_transform(ds.recipe, 224))
    case = ds.load_case(ds.cases("test")[0], "test")

See docs/internals.md ("Data") for the contract and docs/data.md for the layouts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unetzoo.data.base import Case, SegDataset, SliceDataset
from unetzoo.errors import DataError


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    factory: Callable[..., SegDataset]
    description: str
    needs_root: bool = True


_REGISTRY: dict[str, DatasetEntry] = {}


def register_dataset(
    name: str, factory: Callable[..., SegDataset], *, description: str, needs_root: bool = True
) -> None:
    """Register a reader ``factory(root, **options) -> SegDataset`` under ``name``."""
    key = name.lower()
    if key in _REGISTRY:
        raise ValueError(f"dataset {name!r} is already registered")
    _REGISTRY[key] = DatasetEntry(key, factory, description, needs_root)


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return sorted(_REGISTRY)


def dataset_info(name: str) -> DatasetEntry:
    """The registry entry of ``name`` (DataError listing the known names if unknown)."""
    try:
        return _REGISTRY[name.lower()]
    except KeyError as exc:
        raise DataError(
            f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}"
        ) from exc


def guess_dataset(root: str | Path | None) -> str:
    """The reader for ``get_dataset(None, root)``: ``"nnunet"`` when ``root`` holds a
    ``dataset.json`` (nnU-Net v2 raw or MSD) and is not a phantom folder, else
    ``"phantom"`` (the embedded demo, generated into ``root``)."""
    if root is None:
        return "phantom"
    from unetzoo.data.phantom import read_stamp

    folder = Path(root)
    if (folder / "dataset.json").is_file() and read_stamp(folder) is None:
        return "nnunet"
    return "phantom"


def get_dataset(name: str | None = None, root: str | Path | None = None, **options: Any) -> SegDataset:
    """Open dataset ``name`` at ``root`` with reader ``options``.

    ``name=None`` picks the reader from ``root`` (:func:`guess_dataset`): a folder with a
    ``dataset.json`` is read as ``nnunet``, so ``unetzoo train --data-root DatasetNNN_X``
    needs no ``--dataset``; otherwise, as with ``"phantom"``, it is the embedded
    phantom, generated on first use into ``root`` or the cache folder
    (``$UNETZOO_CACHE`` or ``~/.cache/unetzoo``). Unknown options are a
    :class:`DataError`.
    """
    entry = dataset_info(guess_dataset(root) if name is None else name)
    if root is None and entry.needs_root:
        raise DataError(f"dataset {entry.name!r} needs a folder: pass root=... (--data-root)")
    try:
        return entry.factory(root, **options)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise DataError(f"dataset {entry.name!r}: {exc}") from exc
        raise


# -- built-in readers (imported lazily so `import unetzoo.data` stays light) -----------
def _phantom(
    root: str | Path | None = None,
    *,
    kind: str = "ct",
    n_train: int = 12,
    n_test: int = 4,
    shape: tuple[int, ...] | None = None,
    seed: int = 0,
    **reader_options: Any,
) -> SegDataset:
    from unetzoo.data.phantom import default_phantom_root, generate_phantom

    if root is None:
        root = default_phantom_root(kind, n_train, n_test, shape, seed)
    path = generate_phantom(root, kind=kind, n_train=n_train, n_test=n_test, shape=shape, seed=seed)
    if kind == "ct":
        from unetzoo.data.nnunet import NnUNetDataset

        ds: SegDataset = NnUNetDataset(path, **reader_options)
        ds.recipe = "phantom"
    else:
        from unetzoo.data.drive import DriveDataset

        ds = DriveDataset(path, **reader_options)
    ds.name = "phantom"
    return ds


def _nnunet(root, **options):
    from unetzoo.data.nnunet import NnUNetDataset

    return NnUNetDataset(root, **options)


def _synapse(root, **options):
    from unetzoo.data.listed import SynapseDataset

    return SynapseDataset(root, **options)


def _avt(root, **options):
    from unetzoo.data.listed import AVTDataset

    return AVTDataset(root, **options)


def _acdc(root, **options):
    from unetzoo.data.listed import ACDCDataset

    return ACDCDataset(root, **options)


def _drive(root, **options):
    from unetzoo.data.drive import DriveDataset

    return DriveDataset(root, **options)


def _folder(root, **options):
    from unetzoo.data.folder import FolderDataset

    return FolderDataset(root, **options)


register_dataset(
    "phantom", _phantom, needs_root=False,
    description="embedded synthetic CT abdomen (nnU-Net layout) or fundus (DRIVE layout)",
)
register_dataset("nnunet", _nnunet, description="nnU-Net v2 raw / MSD folders (NIfTI)")
register_dataset("synapse", _synapse, description="TransUNet Synapse npz/h5 layout, 9 classes")
register_dataset("avt", _avt, description="aortic vessel tree in the Synapse layout, 2 classes")
register_dataset("acdc", _acdc, description="ACDC npz layout (SelfReg-UNet/EMCAD), 4 classes")
register_dataset("drive", _drive, description="DRIVE retinal vessels (tif/gif), binary")
register_dataset("folder", _folder, description="generic 2-D image/mask folders")

__all__ = [
    "Case",
    "DatasetEntry",
    "SegDataset",
    "SliceDataset",
    "dataset_info",
    "get_dataset",
    "guess_dataset",
    "list_datasets",
    "register_dataset",
]
