"""Checkpoint files of a run: which one ``last`` and ``best`` mean, and whether a file is whole.

A run directory holds ``checkpoints/last.ckpt`` (every epoch), ``checkpoints/best-*.ckpt`` (by the
model's monitor) and, after a SLURM requeue signal, ``hpc_ckpt_<n>.ckpt``. torch writes a checkpoint
as a zip archive whose directory sits at the end of the file, so a file cut short by a killed job
or a full disk is recognised without loading it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from hepgen.errors import CheckpointError


def is_whole(path: Path) -> bool:
    """True if ``path`` is a complete torch checkpoint (a zip archive with its central directory)."""
    return Path(path).is_file() and zipfile.is_zipfile(path)


def _by_age(paths) -> list[Path]:
    """Newest first."""
    return sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True)


def run_checkpoints(run_dir: Path, which: str = "any") -> list[Path]:
    """Checkpoints of a run, newest first: ``last`` (last*.ckpt and hpc_ckpt_*), ``best`` or ``any``."""
    run_dir = Path(run_dir)
    last = [*run_dir.glob("hpc_ckpt_*.ckpt"), *(run_dir / "checkpoints").glob("last*.ckpt")]
    best = list((run_dir / "checkpoints").glob("best*.ckpt"))
    return _by_age({"last": last, "best": best, "any": last + best}[which])


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The most recent of ``last.ckpt`` and SLURM's ``hpc_ckpt_<n>.ckpt`` in a run directory."""
    found = run_checkpoints(run_dir, "last")
    return found[0] if found else None


def _run_dir_of(path: Path) -> Path:
    path = Path(path)
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def check_whole(path: Path) -> Path:
    """Return ``path`` if it is a complete checkpoint; else raise naming the newest good one of its run."""
    path = Path(path)
    if is_whole(path):
        return path
    good = next((p for p in run_checkpoints(_run_dir_of(path)) if p != path and is_whole(p)), None)
    hint = f"the newest good checkpoint of this run is {good} (--ckpt_path {good})" if good else "no good checkpoint is left in its run"
    raise CheckpointError(f"checkpoint {path} is truncated or corrupt (not a complete torch checkpoint); {hint}.")


def find_checkpoint(run_dir: Path, which: str) -> Path:
    """``last`` or ``best`` of a run, checked to be whole; raise naming the folder if there is none."""
    found = run_checkpoints(run_dir, which)
    if not found:
        raise CheckpointError(
            f"no {which} checkpoint in {Path(run_dir) / 'checkpoints'}. Give the run's config "
            f"(-c <run dir>/config.yaml), --run.version of a trained run, or a checkpoint file."
        )
    return check_whole(found[0])


def check_matches(model: torch.nn.Module, path: Path) -> None:
    """Raise if a checkpoint's tensors do not fit ``model``: it was trained with another configuration.

    Only tensors present in both are compared (a method may build parts in ``setup``); Lightning's
    own strict load would end in a multi-line size-mismatch traceback instead.
    """
    saved = torch.load(path, map_location="cpu", mmap=True, weights_only=False)["state_dict"]
    for name, tensor in model.state_dict().items():
        if name in saved and saved[name].shape != tensor.shape:
            run_dir = _run_dir_of(Path(path))
            raise CheckpointError(
                f"--ckpt_path {path}: the checkpoint was trained with another model configuration "
                f"({name}: {list(saved[name].shape)} in the checkpoint, {list(tensor.shape)} in this config); "
                f"use its run's config: -c {run_dir / 'config.yaml'}."
            )
