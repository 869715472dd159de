"""The metric-callback contracts: sample-based physics metrics and score-based (ROC) metrics.

Both kinds call only the evaluation protocol of the model (no method-specific attribute):

* :class:`PhysicsMetric` calls ``pl_module.evaluation_samples(batch, generator)``, which maps a
  name to a pair ``(reference, generated)`` of tensors whose first dimension is the batch's
  events (physical units unless the name ends in ``_scaled``);
* :class:`ScoreMetric` calls ``pl_module.evaluation_scores(batch) -> (score, label, weight)``,
  each (B,), and measures how well the score separates label 1 (signal) from label 0.

Under DDP every rank sees a share of the val/test batches; a metric of all events is not the
mean of per-rank metrics (a chi2, a KS distance, a ROC are not additive). So the inputs are
gathered on rank 0, sorted by their batch index in the single-process order
(:func:`datamodules.base.global_batch_index`), computed there, and the values are broadcast and
logged by every rank: ``ModelCheckpoint`` on any rank can then monitor them. Plots (PNG in
``<run dir>/plots/<stage>/``, and W&B) and ``<run dir>/metrics.json`` are written by rank 0.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import WandbLogger
from matplotlib.figure import Figure

from datamodules.base import global_batch_index
from hepgen.distributed import gather_objects
from hepgen.metrics.roc import roc_curve, roc_summary, sic_curve
from hepgen.plotting import save_figure


def _concat(chunks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]} if chunks else {}


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def _batch_length(batch) -> int:
    """Events in a batch: a dict of tensors (hepgen's batches), a sequence of them, or a tensor."""
    if isinstance(batch, dict):
        batch = next(iter(batch.values()))
    elif isinstance(batch, (list, tuple)):
        batch = batch[0]
    return len(batch)


def _map_tensors(batch, fn):
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        return {k: _map_tensors(v, fn) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_map_tensors(v, fn) for v in batch)
    return batch


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
    parts = gather_objects(trainer, local)
    return {k: np.concatenate([p[k] for p in parts]) for k in local} if trainer.is_global_zero else None


class _EvaluationMetric(Callback):
    """What both metric kinds share: when to evaluate, which batches, gathering, publishing.

    Per val/test epoch the callback keeps, for each batch with single-process index
    ``i < ceil(max_events / len(batch 0))``, what :meth:`_keep` returns; at the epoch's end it
    gathers them on rank 0 in the order of ``i``, calls :meth:`_values` there, and publishes.
    """

    def __init__(self, max_events: int | None, every_n_epochs: int) -> None:
        self.max_events = max_events
        self.every_n_epochs = every_n_epochs
        self._kept: list[tuple[int, object]] = []
        self._limit: float | None = None

    # --- what a metric kind provides --------------------------------------------------------
    def _keep(self, pl_module, batch):
        """What to remember of one batch (small, picklable for the gather)."""
        raise NotImplementedError

    def _values(self, trainer, pl_module, kept: list, stage: str) -> tuple[dict[str, float], dict, int]:
        """From the kept items of all ranks (single-process order), on rank 0: (values, figures, events)."""
        raise NotImplementedError

    # --- the contract -------------------------------------------------------------------------
    def _due(self, trainer, stage: str) -> bool:
        if trainer.sanity_checking:
            return False
        return stage == "test" or (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def _start(self) -> None:
        self._kept, self._limit = [], None

    def _batch_limit(self, batch) -> float:
        """Batches needed for max_events (total over ranks): ceil(max_events / batch length)."""
        if self.max_events is None:
            return math.inf
        return math.ceil(self.max_events / max(_batch_length(batch), 1))

    def _batch(self, trainer, pl_module, batch, batch_idx: int, stage: str) -> None:
        if not self._due(trainer, stage):
            return
        if self._limit is None:  # this rank's first batch (rank 0's sets the final cut in _gather)
            self._limit = self._batch_limit(batch)
        index = global_batch_index(trainer, batch_idx)
        if index < self._limit:
            self._kept.append((index, self._keep(pl_module, batch)))

    def _gather(self, trainer) -> list | None:
        """All ranks' kept items, sorted by global batch index, on rank 0 (``None`` elsewhere)."""
        kept = self._kept
        if trainer.world_size > 1:
            local = [(i, _map_tensors(item, lambda t: t.cpu())) for i, item in kept]
            kept = [entry for part in gather_objects(trainer, local) for entry in part]
        self._kept = []
        if not trainer.is_global_zero:
            return None
        kept.sort(key=lambda entry: entry[0])
        if kept and kept[0][0] == 0:
            # A rank whose first batch was the short last one kept a few batches too many:
            # the cut of the single-process run is set by global batch 0.
            limit = self._batch_limit(kept[0][1])
            kept = [entry for entry in kept if entry[0] < limit]
        return [item for _, item in kept]

    def _end(self, trainer, pl_module, stage: str) -> None:
        if not self._due(trainer, stage):
            return
        kept = self._gather(trainer)
        result = self._values(trainer, pl_module, kept, stage) if kept else None
        values = None if result is None else {k: float(v) for k, v in result[0].items()}
        if trainer.world_size > 1:
            box = [values]
            torch.distributed.broadcast_object_list(box, src=0)
            values = box[0]
        if values is None:
            return
        # Every rank logs the same numbers, so a ModelCheckpoint on any rank can monitor them;
        # the max over identical values is exact (a mean over 3 ranks would round).
        pl_module.log_dict({f"{stage}/{k}": v for k, v in values.items()}, sync_dist=True, reduce_fx="max")
        if result is not None:
            self._publish(trainer, stage, values, result[1], result[2])

    def _publish(self, trainer, stage: str, values: dict, figures: dict, events: int) -> None:
        """Rank 0: the plots (PNG and W&B) and the ``metrics.json`` record."""
        run_dir = Path(trainer.default_root_dir)
        for name, fig in figures.items():
            caption = f"{stage} epoch {trainer.current_epoch}"
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image(key=f"{stage}/{name}", images=[fig], caption=[caption])
            save_figure(fig, run_dir / "plots" / stage / f"{name}.png")
        record = dict(values, epoch=trainer.current_epoch, global_step=trainer.global_step, events=events)
        update_metrics_json(run_dir, stage, record)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._start()

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._start()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch(trainer, pl_module, batch, batch_idx, "val")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._batch(trainer, pl_module, batch, batch_idx, "test")

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._end(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._end(trainer, pl_module, "test")


class PhysicsMetric(_EvaluationMetric):
    """Base of hepgen's physics-metric callbacks: reference vs generated samples.

    During validation and test it keeps the input batches (at most ``max_events`` events over
    all ranks); at the epoch's end rank 0 generates for them, batch by batch in the
    single-process order, with one ``torch.Generator`` seeded with ``seed``: the numbers do not
    depend on the number of ranks, and every evaluation of a run draws the same noise.
    Subclasses implement :meth:`compute` and :meth:`figures`, and :meth:`collect` where the
    metric needs other arrays than the ``evaluation_samples`` pairs as numpy.

    Args:
        max_events: events evaluated in total (all ranks together), reference and generated each.
        every_n_epochs: evaluate during validation every this many epochs (test always).
        seed: seed of the generation noise, so metrics of different epochs compare like with like.
    """

    def __init__(self, max_events: int = 10_000, every_n_epochs: int = 1, seed: int = 1234) -> None:
        super().__init__(max_events, every_n_epochs)
        self.seed = seed

    # --- what a metric provides ---------------------------------------------------------------
    def collect(self, samples: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[dict, dict]:
        """One batch's ``evaluation_samples`` as (reference, generated) dicts of numpy arrays."""
        return {k: _numpy(ref) for k, (ref, _) in samples.items()}, {k: _numpy(gen) for k, (_, gen) in samples.items()}

    def before_compute(self, trainer, pl_module, events: int) -> None:
        """Called on rank 0 before :meth:`compute` with the number of evaluated events
        (e.g. to draw a reference-only sample of the same size)."""

    def compute(self, reference: dict, generated: dict, stage: str) -> dict[str, float]:
        """Scalar metrics from all collected samples."""
        raise NotImplementedError

    def figures(self, reference: dict, generated: dict, stage: str) -> dict:
        """Named matplotlib figures from all collected samples."""
        return {}

    # --- the contract -----------------------------------------------------------------------
    def _keep(self, pl_module, batch):
        return _map_tensors(batch, torch.Tensor.detach)

    def samples(self, pl_module, batches: list) -> tuple[dict, dict]:
        """Generate for the kept input batches, in order, with one generator seeded once."""
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        reference, generated = [], []
        with torch.no_grad():
            for batch in batches:
                batch = _map_tensors(batch, lambda t: t.to(pl_module.device))
                ref, gen = self.collect(pl_module.evaluation_samples(batch, generator))
                reference.append(ref)
                generated.append(gen)
        return _concat(reference), _concat(generated)

    def _values(self, trainer, pl_module, batches, stage):
        reference, generated = self.samples(pl_module, batches)
        events = sum(_batch_length(b) for b in batches)
        self.before_compute(trainer, pl_module, events)
        values = self.compute(reference, generated, stage)
        return values, self.figures(reference, generated, stage), events


class ScoreMetric(_EvaluationMetric):
    """Base of score-based metrics: ROC, AUC and SIC of ``pl_module.evaluation_scores``.

    ``evaluation_scores(batch) -> (score, label, weight)``, each (B,): a larger score is more
    signal-like, label 1 is signal and 0 background, weight the event weight. Logged
    (``<stage>/auc``, ``<stage>/max_sic``, ``<stage>/sic_at_<eff>``) by every rank, computed on the
    scores of all ranks (see :mod:`hepgen.metrics.roc`). Plots: ``roc`` (background rejection
    1/eps_b vs signal efficiency) and ``sic`` (SIC vs signal efficiency).

    Args:
        max_events: events evaluated in total (``None``: all).
        every_n_epochs: evaluate during validation every this many epochs (test always).
        signal_efficiencies: where ``sic_at_<eff>`` is read off.
        min_background_efficiency: ``max_sic`` ignores tighter cuts (their eps_b is a handful of
            events, and SIC = eps_s / sqrt(eps_b) a statistical spike).
    """

    def __init__(
        self,
        max_events: int | None = None,
        every_n_epochs: int = 1,
        signal_efficiencies: tuple[float, ...] = (0.2, 0.5),
        min_background_efficiency: float = 1e-3,
    ) -> None:
        super().__init__(max_events, every_n_epochs)
        self.signal_efficiencies = tuple(signal_efficiencies)
        self.min_background_efficiency = min_background_efficiency

    def _keep(self, pl_module, batch):
        with torch.no_grad():
            score, label, weight = pl_module.evaluation_scores(batch)
        return {"score": _numpy(score), "label": _numpy(label), "weight": _numpy(weight)}

    def _values(self, trainer, pl_module, kept, stage):
        scores = _concat(kept)
        values = roc_summary(
            scores["score"], scores["label"], scores["weight"], self.signal_efficiencies, self.min_background_efficiency
        )
        return values, self.figures(scores, stage), len(scores["score"])

    def figures(self, scores: dict, stage: str) -> dict[str, Figure]:
        eps_s, eps_b, _ = roc_curve(scores["score"], scores["label"], scores["weight"])
        roc = Figure(figsize=(5, 4), layout="constrained")
        ax = roc.subplots()
        kept = eps_b > 0
        ax.plot(eps_s[kept], 1.0 / eps_b[kept], label="score")
        grid = np.linspace(0.01, 1.0, 100)
        ax.plot(grid, 1.0 / grid, linestyle="--", color="gray", label="random")
        ax.set(xlabel=r"signal efficiency $\epsilon_s$", ylabel=r"background rejection $1/\epsilon_b$", yscale="log")
        ax.set_title(f"ROC ({stage})")
        ax.legend(fontsize="small")
        sic = Figure(figsize=(5, 4), layout="constrained")
        ax = sic.subplots()
        ax.plot(*sic_curve(eps_s, eps_b), label="score")
        ax.plot(grid, np.sqrt(grid), linestyle="--", color="gray", label="random")
        ax.set(xlabel=r"signal efficiency $\epsilon_s$", ylabel=r"SIC $\epsilon_s/\sqrt{\epsilon_b}$")
        ax.set_title(f"significance improvement ({stage})")
        ax.legend(fontsize="small")
        return {"roc": roc, "sic": sic}
