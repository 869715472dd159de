"""How events are split into train/val/test: building blocks for ``HepDataModule.splits``.

Each function returns ``{split name: (M,) int64 event indices}`` over all N events of the
datamodule (the concatenation of its files). Indices never overlap between splits; events in no
split are not used. A requested split that comes out empty is a :class:`DataFileError` that
names it and says what to do (training on nothing fails much later and less clearly).

* :func:`split_indices`: a seeded random permutation cut by fractions (the default).
* :func:`region_split`: by a boolean mask per split (e.g. sidebands train, signal region test).
* :func:`kfold_split`: fold k of K as test, the next fold as val (cross-validation).
* :func:`split_folders` + :func:`file_split`: splits fixed by the files, e.g. ``train/ val/ test/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from hepgen.errors import ConfigValueError
from hepgen.io import DataFileError

SPLITS = ("train", "val", "test")


def check_nonempty(parts: Mapping[str, np.ndarray], where: str, fix: str) -> None:
    """Raise a DataFileError naming the first empty split of ``parts`` and saying ``fix``."""
    for name, idx in parts.items():
        if len(idx) == 0:
            raise DataFileError(f"{where}: the '{name}' split is empty. {fix}")


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int, where: str) -> dict[str, np.ndarray]:
    """Seeded split of ``n`` events into train/val/test index arrays; an empty requested split is an error."""
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{name}={frac} must be in [0, 1).")
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    parts = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
    wanted = {"train": 1.0, "val": val_fraction, "test": test_fraction}
    for name, idx in parts.items():
        if wanted[name] > 0 and len(idx) == 0:
            raise DataFileError(
                f"{where}: the '{name}' split is empty ({n} events, val_fraction={val_fraction}, "
                f"test_fraction={test_fraction}). Use more events or larger fractions."
            )
    return parts


def region_split(masks: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """Splits by region: ``masks[name]`` is (N,) bool, True for the events of that split.

    Example: a bump hunt trains on the sidebands and tests in the signal region,
    ``region_split({"train": side & ~held_out, "val": side & held_out, "test": signal}, where)``.

    Raises:
        DataFileError: two regions share events, or a region holds none.
    """
    masks = {name: np.asarray(mask, dtype=bool) for name, mask in masks.items()}
    shared = np.sum([m.astype(np.int64) for m in masks.values()], axis=0) > 1
    if np.any(shared):
        raise DataFileError(
            f"{where}: {int(shared.sum())} event(s) fall in more than one of the regions {list(masks)}; "
            "make the region cuts exclusive (events in two splits would leak from training into evaluation)."
        )
    parts = {name: np.flatnonzero(mask) for name, mask in masks.items()}
    check_nonempty(parts, where, "No event falls in its region: widen the region cut or use more events.")
    return parts


def kfold_split(n: int, fold: int, n_folds: int, seed: int, where: str) -> dict[str, np.ndarray]:
    """K-fold cross-validation: a seeded permutation of ``n`` events cut into ``n_folds`` folds of
    nearly equal size; fold ``fold`` is test, fold ``(fold + 1) % n_folds`` is val, the rest train.

    Running ``fold = 0 .. n_folds - 1`` tests every event exactly once (with the same seed).
    """
    if n_folds < 3:
        raise ConfigValueError(f"n_folds={n_folds}: k-fold splits need at least 3 folds (train, val, test).")
    if not 0 <= fold < n_folds:
        raise ConfigValueError(f"fold={fold}: choose 0 <= fold < n_folds={n_folds}.")
    folds = np.array_split(np.random.default_rng(seed).permutation(n), n_folds)
    val_fold = (fold + 1) % n_folds
    train = np.concatenate([f for k, f in enumerate(folds) if k not in (fold, val_fold)])
    parts = {"train": train, "val": folds[val_fold], "test": folds[fold]}
    check_nonempty(parts, where, f"{n} events cannot fill {n_folds} folds: use more events or fewer folds.")
    return parts


def split_folders(root: str | Path, pattern: str = "*.h5", names: tuple[str, ...] = SPLITS) -> dict[str, list[Path]]:
    """The files of ``root/<name>/`` matching ``pattern``, sorted, for each split name.

    Raises:
        DataFileError: a split's folder is missing or holds no matching file.
    """
    root = Path(root)
    folders = {}
    for name in names:
        files = sorted((root / name).glob(pattern))
        if not files:
            raise DataFileError(
                f"{root}: the '{name}' split is empty: no {pattern} file in {root / name}/. "
                f"Put the {name} files there, or use a split that does not need that folder."
            )
        folders[name] = files
    return folders


def file_split(counts: Mapping[str, int], where: str) -> dict[str, np.ndarray]:
    """Splits fixed by the files: the events of each split are stored one after another, in the
    order of ``counts`` (e.g. the train files, then val, then test), ``counts[name]`` events each.

    Raises:
        DataFileError: a split holds no events.
    """
    starts = np.cumsum([0, *counts.values()])
    parts = {name: np.arange(starts[k], starts[k + 1]) for k, name in enumerate(counts)}
    check_nonempty(parts, where, "Its files hold no events: add events to them or remove the empty files.")
    return parts
