"""How well an anomaly-detection classifier finds the signal: SIC, with the seed's conventions."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from matplotlib.figure import Figure

from callbacks.base import ScoreMetric, _concat, gather_predictions
from hepgen.io.files import write_atomically
from hepgen.metrics.roc import auc, max_sic, roc_curve, sic_at_rejection, sic_floor


class AnomalyMetrics(ScoreMetric):
    """ROC and significance improvement SIC = eps_s / sqrt(eps_b) on the SR test set (truth labels).

    Logged as ``<stage>/<name>``: ``auc``; ``max_sic`` over cuts keeping eps_b above the floor
    1/(relative_error^2 N_B,test) (the seed's 40 % rule, from the test set's own background
    count); ``sic_at_rejection_1e3`` and ``_1e4`` (SIC where 1/eps_b = 10^3, 10^4); and, when the
    datamodule knows the optimum (a made toy), ``optimal_max_sic`` and ``max_sic_fraction`` =
    max SIC / optimal. During validation the labels are data vs reference, so the numbers there
    measure only how well the two training samples are told apart. Plots: ``roc`` and ``sic``
    (SIC vs signal efficiency, the random classifier sqrt(eps_s) and the optimum as lines).

    Args:
        relative_error: the background count's largest relative error at the max-SIC cut.
        rejections: background rejections 1/eps_b at which the SIC is read off.
        every_n_epochs: evaluate during validation every this many epochs (test always).
    """

    def __init__(self, relative_error: float = 0.4, rejections: tuple[float, ...] = (1e3, 1e4), every_n_epochs: int = 1):
        super().__init__(max_events=None, every_n_epochs=every_n_epochs, signal_efficiencies=())
        self.relative_error = relative_error
        self.rejections = tuple(rejections)
        self._optimum: float | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._read_optimum(trainer)

    def on_test_start(self, trainer, pl_module) -> None:
        self._read_optimum(trainer)

    def _read_optimum(self, trainer) -> None:
        datamodule = trainer.datamodule
        self._optimum = getattr(datamodule, "optimal_max_sic", None) if datamodule is not None else None

    def _values(self, trainer, pl_module, kept, stage):
        scores = _concat(kept)
        eps_s, eps_b, _ = roc_curve(scores["score"], scores["label"], scores["weight"])
        n_background = int(np.sum(scores["label"] == 0))
        values = {"auc": auc(eps_s, eps_b), "max_sic": max_sic(eps_s, eps_b, sic_floor(n_background, self.relative_error))}
        for rejection, sic in zip(self.rejections, sic_at_rejection(eps_s, eps_b, self.rejections)):
            values[f"sic_at_rejection_{rejection:.0e}".replace("+0", "")] = float(sic)
        if self._optimum is not None and stage == "test":
            values["optimal_max_sic"] = self._optimum
            values["max_sic_fraction"] = values["max_sic"] / self._optimum
        return values, self.figures(scores, stage), len(scores["score"])

    def figures(self, scores: dict, stage: str) -> dict[str, Figure]:
        figures = super().figures(scores, stage)
        if self._optimum is not None and stage == "test":
            ax = figures["sic"].axes[0]
            ax.axhline(self._optimum, color="black", linestyle=":", label="optimal max SIC")
            ax.legend(fontsize="small")
        return figures


class AnomalyScoreWriter(BasePredictionWriter):
    """Write ``predict`` scores to ``<run dir>/predictions/scores.npy`` (never overwriting).

    (N, 2) float64 rows ``[score, label]`` in the order of the scored file (or test split), so
    row i is the classifier's score of input row i beside that row's label (1 signal, 0
    background, as the input says). An existing file gets the next free suffix ``scores.1.npy``.
    """

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        local = gather_predictions(trainer, predictions, ("score", "label", "row"))
        if local is None:
            return
        order = np.argsort(local["row"], kind="stable")  # DDP ranks score interleaved batches
        table = np.c_[local["score"][order], local["label"][order]].astype(np.float64)
        out = Path(trainer.default_root_dir) / "predictions"
        path, n = out / "scores.npy", 0
        while path.exists():
            n += 1
            path = out / f"scores.{n}.npy"
        write_atomically(path, partial(np.save, arr=table))
