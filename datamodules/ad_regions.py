"""One sample of a weak-supervision study in one region: the training data of a density estimator.

The background-template methods of weakly supervised anomaly detection learn a conditional
density p(x | c) of the features x given the context c outside the signal region (SR) and
evaluate or sample it inside. Generate (CATHODE, Hallin et al. 2022; the seed's
``run_generate.py``) fits a flow to the data in the control region (CR; for a resonance, the
sidebands) and samples it at SR contexts; Morph (FETA) fits the simulation ("MC") first. This
datamodule serves one such sample of the seed's study layout (:func:`hepgen.io.anomaly.read_seed_study`):
``sample`` (data, mc or ideal background) in ``region`` (cr or sr).

* fit: a seeded train/validation split of the sample (the seed: 80/20);
* test: another sample of the study, by default ``ideal_sr``, the true SR background that the
  CR-trained flow never saw: its likelihood there is the test of the interpolation (resonant) or
  extrapolation (non-resonant) that the template rests on;
* predict: the SR contexts a template is sampled at (:meth:`RegionDataModule.sr_contexts`),
  with a weight per context when ``context_weights`` is given, and, when they are SR events
  (``mc_sr``, ``data_sr``), those events' features too: Morph transports them (Generate ignores them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.anomaly import (
    TOY_CONTEXT, check_toy_study_file, control_region_hold_out, make_toy_study, study_columns,
    study_context_columns, study_files,
)
from datamodules.base import HepDataModule
from datamodules.datasets import ArrayDictDataset
from datamodules.splits import split_indices
from hepgen.errors import ConfigValueError
from hepgen.io import DataFileError
from hepgen.io.anomaly import STUDY_EVENTS, read_seed_study

SAMPLES = ("data", "mc", "ideal")
REGIONS = ("cr", "sr")
#: Where a template's SR contexts come from: the simulation's SR events (the seed's non-resonant
#: Generate, to be reweighted to the data's context), the data's own SR events, or draws from a
#: kernel density estimate of the data's SR contexts (CATHODE's resonant case).
CONTEXT_SOURCES = ("mc_sr", "data_sr", "kde_sr")
#: The held-out control-region events a closure template is made of (:func:`control_region_hold_out`):
#: the data's contexts (Generate samples at them) or the MC's events (Morph transports them).
CLOSURE_EVENTS = ("data_held", "mc_held")
#: Samples of a study a test split can hold.
TEST_SAMPLES = tuple(sorted({*STUDY_EVENTS, "data_cr", "data_sr"}))


def kde_sr_contexts(
    contexts: np.ndarray, n: int, rng: np.random.Generator, bandwidth: float | None = None
) -> np.ndarray:
    """``n`` draws (n, C) from a Gaussian KDE of SR contexts (N, C), inside their range.

    CATHODE's "realistic conditional": m_jj of the template is drawn from a KDE of the data's SR
    m_jj, not taken from the data events themselves (the template would then share the data's
    fluctuations) nor drawn flat. As there, the KDE lives in logit space, z = logit(u) with
    u = (c - min) / (max - min) per context column: Gaussian kernels would spill over the window
    edges, while every draw mapped back through the sigmoid lies strictly inside [min, max] of
    the fitted contexts, so inside the SR.

    Args:
        contexts: (N, C) SR contexts, physical units, N >= 2.
        n: draws.
        rng: the random stream.
        bandwidth: scipy's ``bw_method`` factor (kernel covariance = factor^2 x the data's
            covariance in logit space); ``None`` is Scott's rule, N^(-1/(C + 4)).
    """
    from scipy.stats import gaussian_kde

    contexts = np.asarray(contexts, dtype=np.float64)
    if len(contexts) < 2:
        raise DataFileError(f"a KDE of the SR contexts needs at least 2 events, got {len(contexts)}.")
    low, width = contexts.min(0), np.ptp(contexts, axis=0)
    width = np.where(width > 0, width, 1.0)
    u = np.clip((contexts - low) / width, 1e-6, 1.0 - 1e-6)  # the two extreme events, nudged off the edges
    kde = gaussian_kde(np.log(u / (1.0 - u)).T, bw_method=bandwidth)
    z = kde.resample(n, seed=rng).T.reshape(n, contexts.shape[1])
    return low + width / (1.0 + np.exp(-z))


def read_event_weights(path: str | Path, events: int, what: str) -> np.ndarray:
    """``weights`` (events,) float64 of an ``.npz``, one per event of ``what`` in its order, finite and >= 0."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"weights not found: {path} (an .npz with 'weights', one per event of {what}).")
    with np.load(path, allow_pickle=False) as archive:
        if "weights" not in archive.files:
            raise DataFileError(f"{path}: key 'weights' missing (found {sorted(archive.files)}).")
        weights = np.asarray(archive["weights"], dtype=np.float64)
    if weights.shape != (events,):
        raise DataFileError(
            f"{path}: 'weights' has shape {weights.shape}, but {what} holds {events} events; "
            "give one weight per event, in file order."
        )
    if not np.all(np.isfinite(weights) & (weights >= 0)):
        raise DataFileError(f"{path}: 'weights' must be finite and >= 0.")
    return weights


class RegionDataModule(HepDataModule):
    """``sample`` in ``region`` of a study, for conditional density estimation p(x | c).

    Batches: ``context`` (B, C) and ``features`` (B, D), float32, in the study's units (the
    seed's files hold min-max scaled values; the toys are dimensionless). Predict batches:
    ``context`` (B, C) float64, ``weight`` (B,) float64 and ``row`` (B,) int64, the index of the
    context in :meth:`sr_contexts`; for ``mc_sr`` and ``data_sr`` also the SR events' ``features``
    (B, D) float64 (what :class:`~hepgen.models.ad_morph.MorphFlow` transports; KDE draws have none).

    Args:
        data_dir: the study folder (``seed{g}/data_{s}.npz``, ``mc_events.npz``, ...).
        source: ``real`` (files must exist) or ``made`` (hepgen makes a toy study, as
            :class:`~datamodules.anomaly.WeakSupervisionDataModule` does: the same settings make
            the same folder, which both can then read).
        sample: ``data``, ``mc`` or ``ideal`` (background).
        region: ``cr`` or ``sr``.
        signal_fraction: s of the data file ``data_{s}.npz``.
        injection_seed: g of ``seed{g}/``.
        toy_kind: the toy a made study holds (``nr`` or ``r``).
        context_columns: C, the leading context columns of a study without ``ad_toy.json`` (the
            seed's physics files: 2, HT and MET).
        made_noise_features: extra N(0, 1) features of a made study.
        max_events: at most this many events of the sample (a seeded subsample, for speed).
        test_sample: the study's sample for ``hepgen test`` (``ideal_sr``, ``mc_cr``, ...;
            ``None``: no test split).
        predict_contexts: ``mc_sr``, ``data_sr`` or ``kde_sr`` (see :data:`CONTEXT_SOURCES`).
        predict_events: contexts to predict at: the first so many SR events (``mc_sr``,
            ``data_sr``) or the number of KDE draws (``kde_sr``; default as many as data SR events).
        context_weights: ``.npz`` whose ``weights`` (N,) weigh the contexts of ``mc_sr`` or
            ``data_sr``, one per SR event in file order (the seed's context weights p_data(c) /
            p_MC(c), learnt in the CR), carried with every sample drawn at that context.
        kde_bandwidth: the KDE's bandwidth factor (:func:`kde_sr_contexts`).
        closure_events: also predict at the held-out control-region events (``data_held`` or
            ``mc_held``, see :data:`CLOSURE_EVENTS`), flagged ``region`` 1, so that the template
            writer adds ``template_cr.npz``, the method's template of events it never trained on
            (the closure test's). ``None``: the SR template only.
        closure_weights: ``.npz`` whose ``weights`` weigh the ``mc_held`` events, in their order
            (a context-weights run's ``template_cr.npz``).
        predict_batch_size: contexts per ``hepgen predict`` batch. Sampling a MAF (or running
            Morph's inverse) is one network pass per feature and transform whatever the batch, so
            a large batch is many times faster than the training batch.
        val_fraction, split_seed, batch_size, num_workers, made_events, made_seed: as
            :class:`HepDataModule`; ``made_events`` is the data background in the SR of a made
            study. The seed split 80/20; ``split_seed`` also seeds the subsample and the KDE draws.
    """

    download_hint = (
        "Make a toy study with `hepgen data make ad_toy --out DIR` (or source: made), or get the seed's files "
        "(Zenodo record 10154213)."
    )

    def __init__(
        self,
        data_dir: str = "data/ad_toy_nr",
        source: str = "made",
        sample: str = "data",
        region: str = "cr",
        signal_fraction: float = 0.01,
        injection_seed: int = 1,
        toy_kind: str = "nr",
        context_columns: int = 2,
        made_noise_features: int = 0,
        max_events: int | None = None,
        test_sample: str | None = "ideal_sr",
        predict_contexts: str = "mc_sr",
        predict_events: int | None = None,
        context_weights: str | None = None,
        kde_bandwidth: float | None = None,
        closure_events: str | None = None,
        closure_weights: str | None = None,
        predict_batch_size: int = 4096,
        val_fraction: float = 0.2,
        split_seed: int = 42,
        batch_size: int = 256,
        num_workers: int = 0,
        made_events: int = 100_000,
        made_seed: int = 0,
    ) -> None:
        super().__init__(
            data_dir, source, made_events, made_seed, val_fraction, 0.0, split_seed, batch_size, num_workers
        )
        choices = {"sample": (sample, SAMPLES), "region": (region, REGIONS), "toy_kind": (toy_kind, tuple(TOY_CONTEXT)),
                   "predict_contexts": (predict_contexts, CONTEXT_SOURCES)}  # fmt: skip
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ConfigValueError(f"data.{name}={value!r}: choose one of {', '.join(allowed)}.")
        if test_sample is not None and test_sample not in TEST_SAMPLES:
            raise ConfigValueError(
                f"data.test_sample={test_sample!r}: choose one of {', '.join(TEST_SAMPLES)} or null (no test split)."
            )
        if test_sample == f"{sample}_{region}":
            raise ConfigValueError(
                f"data.test_sample={test_sample} is the training sample itself; test on another one (e.g. ideal_sr)."
            )
        if not 0.0 < val_fraction < 1.0:
            raise ConfigValueError(f"data.val_fraction={val_fraction}: give a fraction in (0, 1).")
        if closure_events is not None and closure_events not in CLOSURE_EVENTS:
            raise ConfigValueError(
                f"data.closure_events={closure_events!r}: choose one of {', '.join(CLOSURE_EVENTS)} or null."
            )
        if predict_batch_size < 1:
            raise ConfigValueError(f"data.predict_batch_size={predict_batch_size}: give at least 1.")
        self.predict_batch_size = predict_batch_size
        if closure_weights is not None and closure_events != "mc_held":
            raise ConfigValueError("data.closure_weights weigh the held-out MC events: set data.closure_events mc_held.")
        if closure_events == "mc_held" and predict_contexts == "kde_sr":
            raise ConfigValueError(
                "data.closure_events=mc_held carries events with features, KDE draws (kde_sr) have none; "
                "use data_held (Generate) or SR events (mc_sr, data_sr)."
            )
        if context_weights is not None and predict_contexts == "kde_sr":
            raise ConfigValueError(
                "data.context_weights weigh the SR events of mc_sr or data_sr; KDE draws (kde_sr) have none."
            )
        for name, value in (("max_events", max_events), ("predict_events", predict_events)):
            if value is not None and value < 1:
                raise ConfigValueError(f"data.{name}={value}: give at least 1 or null (all).")
        if context_columns < 1:
            raise ConfigValueError(f"data.context_columns={context_columns}: a study has at least one context column.")
        self.sample, self.region = sample, region
        self.signal_fraction = signal_fraction
        self.injection_seed = injection_seed
        self.toy_kind = toy_kind
        self.context_columns = context_columns
        self.made_noise_features = made_noise_features
        self.max_events = max_events
        self.test_sample = test_sample
        self.predict_contexts = predict_contexts
        self.predict_events = predict_events
        self.context_weights = context_weights
        self.kde_bandwidth = kde_bandwidth
        self.closure_events = closure_events
        self.closure_weights = closure_weights
        self._n_pool: int | None = None

    # --- files -------------------------------------------------------------------------------
    def required_files(self) -> list[Path]:
        return study_files(self.data_dir, self.signal_fraction, self.injection_seed, self.source == "made")

    def make_files(self, missing: list[Path]) -> None:
        make_toy_study(
            self.data_dir, missing, self.toy_kind, self.made_events, self.made_noise_features,
            self.signal_fraction, self.injection_seed, self.made_seed,
        )  # fmt: skip

    def check_made_file(self, path: Path) -> None:
        check_toy_study_file(self.data_dir, path)

    # --- shapes, known before the files are read (the CLI links them into the model) ----------
    @property
    def n_context(self) -> int:
        """C, the context columns."""
        return study_context_columns(self.data_dir, self.toy_kind, self.source == "made", self.context_columns)

    @property
    def n_features(self) -> int:
        """D, the feature columns after the context."""
        made = self.source == "made"
        columns = study_columns(self.data_dir, self.toy_kind, made, self.made_noise_features, self.download_hint)
        if columns <= self.n_context:
            test = self.data_dir / "test_SR.npz"
            raise DataFileError(f"{test}: {columns} columns leave no features after {self.n_context} context columns.")
        return columns - self.n_context

    # --- events --------------------------------------------------------------------------------
    def _study(self) -> dict[str, np.ndarray]:
        return read_seed_study(self.data_dir, self.signal_fraction, self.injection_seed)

    def load_events(self) -> dict[str, torch.Tensor]:
        study = self._study()
        pool = study[f"{self.sample}_{self.region}"]
        if self.region == "cr" and self.sample in ("data", "mc"):
            # never the held-out events: they are the closure test's (the same seeded draw there)
            pool = control_region_hold_out(study, self.split_seed)[f"{self.sample}_rest"]
        if len(pool) == 0:
            where = f"{self.data_dir}: the {self.sample} sample"
            raise DataFileError(f"{where} has no events in the {self.region.upper()}; check the files and region cuts.")
        if self.max_events is not None and self.max_events < len(pool):
            keep = np.random.default_rng(self.split_seed + 7).permutation(len(pool))[: self.max_events]
            pool = pool[np.sort(keep)]
        self._n_pool = len(pool)
        test = study[self.test_sample] if self.test_sample else pool[:0]
        rows = np.concatenate([pool, test])
        c = self.n_context
        return {
            "context": torch.as_tensor(rows[:, :c], dtype=torch.float32),
            "features": torch.as_tensor(rows[:, c:], dtype=torch.float32),
        }

    def splits(self, n_events: int) -> dict[str, np.ndarray]:
        parts = split_indices(self._n_pool, self.val_fraction, 0.0, self.split_seed, str(self.data_dir))
        parts["test"] = np.arange(self._n_pool, n_events)  # the test sample, stored after the pool
        return parts

    # --- predict: the SR contexts of a template ------------------------------------------------
    def sr_contexts(self, source: str | None = None) -> np.ndarray:
        """The SR contexts (N, C) float64 a template is sampled at, in physical units.

        ``mc_sr``: the MC sample's SR events, in file order (the seed's non-resonant Generate);
        ``data_sr``: the data's SR events; ``kde_sr``: ``predict_events`` draws (default: as many as
        data SR events) from :func:`kde_sr_contexts` of the data's SR contexts, seeded by
        ``split_seed``. ``predict_events`` also cuts ``mc_sr`` and ``data_sr`` to their first rows.
        """
        source = self.predict_contexts if source is None else source
        if source not in CONTEXT_SOURCES:
            raise ConfigValueError(f"SR contexts {source!r}: choose one of {', '.join(CONTEXT_SOURCES)}.")
        return self._contexts(self._study(), source)

    def _contexts(self, study: dict[str, np.ndarray], source: str) -> np.ndarray:
        c = self.n_context
        if source == "kde_sr":
            data = study["data_sr"][:, :c]
            n = self.predict_events or len(data)
            return kde_sr_contexts(data, n, np.random.default_rng(self.split_seed + 13), self.kde_bandwidth)
        return study[source][: self.predict_events, :c]

    def _weights(self, n: int, events: int) -> np.ndarray:
        """Weights (n,) of the first n of ``events`` SR contexts: ones, or ``context_weights``."""
        if self.context_weights is None:
            return np.ones(n)
        return read_event_weights(self.context_weights, events, self.predict_contexts)[:n]

    def _closure_events(self, study: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The held-out CR rows (N, C + D) of ``closure_events`` and their weights (N,)."""
        rows = control_region_hold_out(study, self.split_seed)[self.closure_events]
        if self.closure_weights is None:
            return rows, np.ones(len(rows))
        return rows, read_event_weights(self.closure_weights, len(rows), "the held-out CR MC (mc_held)")

    def predict_dataloader(self) -> DataLoader:
        study = self._study()
        contexts = self._contexts(study, self.predict_contexts)
        available = len(study[self.predict_contexts]) if self.predict_contexts in study else len(contexts)
        events = {
            "context": torch.as_tensor(contexts, dtype=torch.float64),
            "weight": torch.as_tensor(self._weights(len(contexts), available), dtype=torch.float64),
            "row": torch.arange(len(contexts)),
        }
        if self.predict_contexts != "kde_sr":  # SR events: their features beside their contexts
            features = study[self.predict_contexts][: self.predict_events, self.n_context :]
            events["features"] = torch.as_tensor(features, dtype=torch.float64)
        if self.closure_events is not None:  # then the held-out CR events, flagged region 1
            rows, weights = self._closure_events(study)
            held = {
                "context": torch.as_tensor(rows[:, : self.n_context], dtype=torch.float64),
                "weight": torch.as_tensor(weights, dtype=torch.float64),
                "row": torch.arange(len(contexts), len(contexts) + len(rows)),
                "features": torch.as_tensor(rows[:, self.n_context :], dtype=torch.float64),
            }
            events = {k: torch.cat([v, held[k]]) for k, v in events.items()}
            events["region"] = torch.cat([torch.zeros(len(contexts)), torch.ones(len(rows))]).to(torch.int8)
        return self.dataloader(ArrayDictDataset(events), shuffle=False, batch_size=self.predict_batch_size)
