"""How well an anomaly-detection classifier finds the signal: SIC, with the seed's conventions."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from matplotlib.figure import Figure

from callbacks.base import ScoreMetric, _concat, gather_predictions
from hepgen.io.files import write_atomically
from hepgen.run import next_free_path
from hepgen.metrics.roc import anomaly_summary


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
        values = anomaly_summary(scores["score"], scores["label"], scores["weight"], self.relative_error, self.rejections)
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
        path = next_free_path(Path(trainer.default_root_dir) / "predictions" / "scores.npy")
        write_atomically(path, partial(np.save, arr=table))


def write_template(trainer, samples: np.ndarray, weights: np.ndarray, filename: str = "template.npz") -> Path:
    """``<run dir>/predictions/<filename>`` with ``samples`` (N, C + D) and ``weights`` (N,), float64.

    The layout :func:`hepgen.io.anomaly.read_template` reads and the signal-region classifier
    takes as ``method: template``; an existing file gets the next free suffix (``template.1.npz``).
    """
    path = next_free_path(Path(trainer.default_root_dir) / "predictions" / filename)
    samples, weights = np.asarray(samples, np.float64), np.asarray(weights, np.float64)
    return write_atomically(path, partial(np.savez, samples=samples, weights=weights))


class TemplateWriter(BasePredictionWriter):
    """Write a density method's (Generate's) ``predict`` samples as a background template.

    Predict outputs are dicts with ``samples`` (rows [context, features], physical units),
    ``weight`` (one per sample: its context's weight, 1 without context weights) and ``row`` (the
    context's index), as :meth:`hepgen.models.ad_generate.ConditionalFlow.predict_step` returns.
    The file (:func:`write_template`) keeps the contexts in the order of the predict data and
    the k samples of each context together (row n k + j: context n, its j-th sample). Samples of
    held-out control-region events (``region`` 1, ``RegionDataModule(closure_events=...)``) go to
    ``<name>_cr.npz``, the template of the closure test.

    Args:
        filename: the file's name in ``predictions/``.
    """

    def __init__(self, filename: str = "template.npz") -> None:
        super().__init__(write_interval="epoch")
        if not filename.endswith(".npz"):
            raise ValueError(f"TemplateWriter filename={filename!r}: a template is an .npz file.")
        self.filename = filename

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        keys = ("samples", "weight", "row", "region") if "region" in predictions[0] else ("samples", "weight", "row")
        local = gather_predictions(trainer, predictions, keys)
        if local is None:
            return
        # DDP ranks sample interleaved batches; a stable sort keeps each context's copies in order
        order = np.argsort(local["row"], kind="stable")
        samples, weight = local["samples"][order], local["weight"][order]
        region = local["region"][order] if "region" in local else np.zeros(len(weight), dtype=np.int8)
        write_template(trainer, samples[region == 0], weight[region == 0], self.filename)
        if (region == 1).any():  # the held-out control region's template, for the closure test
            write_template(trainer, samples[region == 1], weight[region == 1], self.filename.replace(".npz", "_cr.npz"))


class ReweightTemplateWriter(BasePredictionWriter):
    """Turn a data-vs-MC classifier's scores on MC events into a weighted background template.

    With equal class totals in training the classifier output f estimates p_data/(p_data + p_MC),
    so w = f / (1 - f) is the density ratio p_data / p_MC (f is clipped to [1e-6, 1 - 1e-6]).
    As in the seed, weights above mean + ``crop_sigma`` standard deviations are set to 0: a few
    events with huge weights would otherwise make the template's statistics those of a handful of
    events. Writes ``<run dir>/predictions/template.npz`` (``samples``: the scored MC rows of the
    signal region in their order, physical units; ``weights``) with :func:`write_template`, and,
    when the predict data also hold the held-out control-region MC (``region`` 1), its weighted
    rows as ``template_cr.npz``, the template of the closure test (cropped by the same rule, on
    its own weights).

    Args:
        crop_sigma: the cut, in standard deviations above the mean weight (``None``: no cut).
    """

    def __init__(self, crop_sigma: float | None = 3.0) -> None:
        super().__init__(write_interval="epoch")
        self.crop_sigma = crop_sigma

    def weights(self, score: np.ndarray) -> np.ndarray:
        """(N,) classifier outputs f -> (N,) weights f / (1 - f), cropped."""
        f = np.clip(score.astype(np.float64), 1e-6, 1 - 1e-6)
        w = f / (1 - f)
        if self.crop_sigma is not None:
            w[w > w.mean() + self.crop_sigma * w.std()] = 0.0
        return w

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        keys = ("score", "rows", "row", "region") if "region" in predictions[0] else ("score", "rows", "row")
        local = gather_predictions(trainer, predictions, keys)
        if local is None:
            return
        order = np.argsort(local["row"], kind="stable")
        score, rows = local["score"][order], local["rows"][order]
        region = local["region"][order] if "region" in local else np.zeros(len(score), dtype=np.int8)
        sr, cr = region == 0, region == 1
        write_template(trainer, rows[sr], self.weights(score[sr]))
        if cr.any():
            write_template(trainer, rows[cr], self.weights(score[cr]), "template_cr.npz")
