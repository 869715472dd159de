"""The metric-callback contract every physics metric follows.

A :class:`PhysicsMetric` collects reference and generated samples during validation and test
(up to ``max_events``), computes its metrics in physical units, logs the scalars
(``val/<name>``, ``test/<name>``), saves its plots as PNG in ``<run dir>/plots/<stage>/`` and
logs them to W&B, and records the latest values in ``<run dir>/metrics.json``. Subclasses
implement :meth:`collect`, :meth:`compute` and :meth:`figures`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger

from hepgen.plotting import save_figure


def _concat(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]} if chunks else {}


def update_metrics_json(run_dir: Path, stage: str, values: dict) -> Path:
    """Merge ``values`` into ``<run dir>/metrics.json`` under ``stage`` (written atomically)."""
    path = Path(run_dir) / "metrics.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.setdefault(stage, {}).update(values)
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def gather_predictions(trainer, predictions: list[dict], keys) -> dict[str, np.ndarray] | None:
    """Concatenate ``predict`` batches (dicts of tensors) over batches and ranks.

    Returns ``{key: array}`` on global rank 0 and ``None`` on the other ranks.
    """
    local = {k: torch.cat([p[k] for p in predictions]).cpu().numpy() for k in keys}
    if trainer.world_size > 1:
        parts = [None] * trainer.world_size
        torch.distributed.all_gather_object(parts, local)
        local = {k: np.concatenate([p[k] for p in parts]) for k in local}
    return local if trainer.is_global_zero else None


class PhysicsMetric(Callback):
    """Base of hepgen's physics-metric callbacks.

    Args:
        max_events: events collected per evaluation (reference and generated each).
        every_n_epochs: evaluate during validation every this many epochs (test always).
        seed: seed of the generation noise, so metrics of different epochs compare like with like.
    """

    def __init__(self, max_events: int = 10_000, every_n_epochs: int = 1, seed: int = 1234) -> None:
        self.max_events = max_events
        self.every_n_epochs = every_n_epochs
        self.seed = seed
        self._reference: list[dict[str, np.ndarray]] = []
        self._generated: list[dict[str, np.ndarray]] = []
        self._count = 0

    # --- what a metric provides ---------------------------------------------------------------
    def collect(self, pl_module, batch, generator: torch.Generator) -> tuple[dict, dict]:
        """Reference and generated samples for one batch, as dicts of numpy arrays."""
        raise NotImplementedError

    def compute(self, reference: dict, generated: dict, stage: str) -> dict[str, float]:
        """Scalar metrics from all collected samples."""
        raise NotImplementedError

    def figures(self, reference: dict, generated: dict, stage: str) -> dict:
        """Named matplotlib figures from all collected samples."""
        return {}

    # --- the contract -----------------------------------------------------------------------
    def _due(self, trainer, stage: str) -> bool:
        if trainer.sanity_checking:
            return False
        return stage == "test" or (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _start(self, pl_module) -> None:
        self._reference, self._generated, self._count = [], [], 0
        self._generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)

    def _batch(self, trainer, pl_module, batch, stage: str) -> None:
        if not self._due(trainer, stage) or self._count >= self.max_events:
            return
        reference, generated = self.collect(pl_module, batch, self._generator)
        self._reference.append(reference)
        self._generated.append(generated)
        self._count += len(next(iter(reference.values())))

    def _gathered(self, trainer) -> tuple[dict, dict]:
        local = (_concat(self._reference), _concat(self._generated))
        if trainer.world_size == 1:
            return local
        parts = [None] * trainer.world_size
        torch.distributed.all_gather_object(parts, local)
        return _concat([p[0] for p in parts]), _concat([p[1] for p in parts])

    def _end(self, trainer, pl_module, stage: str) -> None:
        if not self._due(trainer, stage) or self._count == 0:
            return
        reference, generated = self._gathered(trainer)
        self._reference, self._generated = [], []
        if not trainer.is_global_zero:
            return
        values = self.compute(reference, generated, stage)
        pl_module.log_dict({f"{stage}/{k}": float(v) for k, v in values.items()}, rank_zero_only=True)
        run_dir = Path(trainer.default_root_dir)
        for name, fig in self.figures(reference, generated, stage).items():
            caption = f"{stage} epoch {trainer.current_epoch}"
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image(key=f"{stage}/{name}", images=[fig], caption=[caption])
            save_figure(fig, run_dir / "plots" / stage / f"{name}.png")
        record = {k: float(v) for k, v in values.items()}
        record.update(epoch=trainer.current_epoch, global_step=trainer.global_step, events=self._count)
        update_metrics_json(run_dir, stage, record)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._start(pl_module)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start(pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch(trainer, pl_module, batch, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch(trainer, pl_module, batch, "test")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._end(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._end(trainer, pl_module, "test")
