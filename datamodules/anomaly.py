"""The signal-region classification task of weakly supervised anomaly detection.

Every method ends in the same task: in the signal region (SR), tell "data" (label 1) from a
background reference (label 0), then judge the classifier on a separate test set with truth
labels, SR signal (1) vs SR background (0). What differs is the reference:

* ``ideal``: an independent sample of the true SR background (the idealized AD, the ceiling a
  background template can reach);
* ``supervised``: no data at all, signal (1) vs background (0), the fully supervised reference;
* ``template``: a background template a method built from the control region, read from a
  ``.npz`` with ``samples`` (N, D) rows (context then features, as the data) and optional
  ``weights`` (N,).

One more task uses the same classifier outside the SR: ``reweight`` (SALAD, and the context
weights of Generate and Morph) tells data (1) from the simulation, MC (0), in the control region;
with equal class totals its output f gives w = f / (1 - f) = p_data / p_MC, which ``hepgen
predict`` evaluates on the MC in the signal region to make a weighted template
(:class:`callbacks.anomaly.ReweightTemplateWriter`). Its test set is 10 % of the control region
held out (data vs MC: an AUC near 0.5 after reweighting would mean the classifier has nothing left
to learn, it is a diagnostic, not a signal metric).

And one checks a method where the truth is known: ``closure`` tells the held-out control-region
data (1), which no method trained on, from the method's template of the same events' region (0,
weighted): if the template describes the background, the test AUC is 0.5 (the closure test).

Two layouts are read:

* ``study``: the seed's folder (hep-lbdl/non-resonant-AD-extrapolation, final era), which
  ``hepgen data make ad_toy`` writes with known truth: ``seed{g}/data_{s}.npz``,
  ``ideal_bkg_events.npz``, ``fullsup_SR.npz``, ``test_SR.npz`` (:mod:`hepgen.io.anomaly`);
* ``lhco_sr``: the CATHODE-style ``.npy`` files of LHCO R&D signal-region events
  (``sr_data_train``, ``sr_data_val``, ``sr_signal``; 6 columns, m_jj first, label last). The
  test set is held out from the files: ``lhco_test_background`` label-0 rows of
  ``sr_data_val`` and ``lhco_test_signal`` rows of ``sr_signal``, or, with ``test_folds`` k, the
  ``test_fold``-th of k folds of each (k runs then score every event once, each by a classifier
  that never saw it: k-fold testing, which trains on (k - 1)/k of the scarce true background
  instead of a third); the rest of each is the
  training reference (Ideal's background, Supervised's signal).

The classes' summed weights are made equal, as in the seed, so the classifier output f
estimates p_1/(p_0 + p_1) with equal priors. Train and validation are one seeded split of the
training pool (the seed: 33 % validation, ``random_state`` 42), the same for every ensemble
member; the test events never enter it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.base import HepDataModule, _already_batched
from datamodules.datasets import ArrayDictDataset
from datamodules.samplers import EvaluationSampler
from datamodules.splits import check_nonempty
from hepgen.errors import ConfigValueError
from hepgen.io import DataFileError
from hepgen.io.anomaly import AD_COLUMNS, data_file_name, read_cathode_npy, read_npz_arrays, read_seed_study, read_template

METHODS = ("ideal", "supervised", "template", "reweight", "closure")
#: 1 in this many control-region events of data and MC is held out: no method trains on them; they
#: are the closure test's events (and Reweight's own test set).
HELD_OUT_DENOMINATOR = 10
#: What the classifier sees of a row: the features, the context, or both.
INPUTS = ("features", "context", "all")
LAYOUTS = ("study", "lhco_sr")
#: The CATHODE-style signal-region files and what each holds.
LHCO_SR_FILES = ("sr_data_train.npy", "sr_data_val.npy", "sr_signal.npy")
#: Made studies record their toy (parameters, context columns, optimum) here.
TOY_RECORD = "ad_toy.json"
#: Context columns of each toy: Toy NR (c1, c2), Toy R (m).
TOY_CONTEXT = {"nr": 2, "r": 1}


def make_toy_study(
    folder: Path, missing: list[Path], kind: str, events: int, noise_features: int,
    signal_fraction: float, injection_seed: int, seed: int,
) -> None:
    """``source: made`` of a study folder: a toy study with the one injection ``seed{g}/data_{s}.npz``.

    Every datamodule that reads a study (the SR classifier, the region density estimators) makes
    it through here, so two configs with the same settings share one folder. A folder that already
    holds a made study (its ``ad_toy.json``) is never added to: the missing file was made with
    other fractions or seeds, and a second :func:`make_ad_toy` would refuse its existing files.

    Raises:
        DataFileError: the folder holds a made study without ``missing[0]``.
    """
    from hepgen.synth.ad_toy import make_ad_toy

    if (folder / TOY_RECORD).is_file():
        raise DataFileError(
            f"{missing[0]} is missing from the made study in {folder}: it was made with other signal "
            f"fractions or seeds. Make a study that has it (hepgen data make ad_toy --signal-fractions "
            f"{signal_fraction} --seeds {injection_seed} --out NEW_DIR) and point data.data_dir there."
        )
    make_ad_toy(
        folder, kind=kind, events=events, noise_features=noise_features,
        signal_fractions=(signal_fraction,), seeds=(injection_seed,), seed=seed,
    )  # fmt: skip


def check_toy_study_file(folder: Path, path: Path) -> None:
    """Raise unless ``folder``, which holds ``path``, is a hepgen-made study (has ``ad_toy.json``)."""
    if not (folder / TOY_RECORD).is_file():
        raise DataFileError(
            f"{folder} holds {path.name} but no {TOY_RECORD}: it is not a hepgen-made study, and made "
            "data never mixes with other files. Use source: real for it, or another data_dir."
        )


def study_files(folder: Path, signal_fraction: float, injection_seed: int, made: bool) -> list[Path]:
    """The files of the seed's study layout that one injection (s, g) reads (and the made record)."""
    files = [
        folder / "mc_events.npz",
        folder / "ideal_bkg_events.npz",
        folder / f"seed{injection_seed}" / data_file_name(signal_fraction),
        folder / "test_SR.npz",
        folder / "fullsup_SR.npz",
    ]
    return [*files, folder / TOY_RECORD] if made else files


def study_context_columns(folder: Path, toy_kind: str, made: bool, context_columns: int) -> int:
    """C of a study: from its made record, else the made toy's, else the configured ``context_columns``."""
    record = folder / TOY_RECORD
    if record.is_file():
        return int(json.loads(record.read_text())["n_context"])
    return TOY_CONTEXT[toy_kind] if made else context_columns


def study_columns(folder: Path, toy_kind: str, made: bool, noise_features: int, hint: str) -> int:
    """C + D of a study's rows, known before a ``made`` study is written (the CLI links it early)."""
    test = folder / "test_SR.npz"
    if test.is_file():
        return read_npz_arrays(test, ["bkg_events_SR"])["bkg_events_SR"].shape[1]
    if made:
        return TOY_CONTEXT[toy_kind] + 4 + noise_features
    raise DataFileError(f"data file not found: {test}. {hint}")


def control_region_hold_out(study: dict[str, np.ndarray], split_seed: int) -> dict[str, np.ndarray]:
    """The control region's data and MC split into held-out (1 in 10, seeded) and training events.

    Returns ``data_held``, ``data_rest``, ``mc_held``, ``mc_rest`` (rows (N, C + D)). Reweight
    trains on the rest and tests on the held-out events; the closure test compares a method's
    control-region template with ``data_held``, which no method trained on. One function, so both
    draw the same events from the same ``split_seed``.
    """
    rng = np.random.default_rng(split_seed + 3)
    out = {}
    for name in ("data", "mc"):
        rows = study[f"{name}_cr"]
        rows = rows[rng.permutation(len(rows))]
        n = len(rows) // HELD_OUT_DENOMINATOR
        out[f"{name}_held"], out[f"{name}_rest"] = rows[:n], rows[n:]
    return out


def fold(rows: np.ndarray, folds: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(fold ``index`` of ``folds`` contiguous folds of ``rows``, the other folds): k-fold testing's cut.

    The folds are as equal as can be (sizes differ by at most one) and together hold every row once.
    """
    edges = np.linspace(0, len(rows), folds + 1).round().astype(int)
    lo, hi = edges[index], edges[index + 1]
    return rows[lo:hi], np.concatenate([rows[:lo], rows[hi:]])


def equalise_classes(label: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Weights rescaled so that each class sums to half the number of events (N/2 each)."""
    weight = weight.astype(np.float64).copy()
    for value in (0, 1):
        cls = label == value
        total = weight[cls].sum()
        if total <= 0:
            raise DataFileError(f"the class with label {value} has no events with positive weight.")
        weight[cls] *= 0.5 * len(label) / total
    return weight


class WeakSupervisionDataModule(HepDataModule):
    """SR "data vs background reference" for training, SR "signal vs background" for test.

    Batches: ``features`` (B, F) float32 (the ``inputs`` columns of the rows), ``label`` (B,) float32 (train/val: 1 data or signal, 0 reference; test:
    the truth, 1 signal), ``weight`` (B,) float32.

    Args:
        data_dir: the study folder (``layout: study``) or the folder of the ``.npy`` files.
        source: ``real`` (files must exist) or ``made`` (``study`` only: hepgen makes a toy study).
        layout: ``study`` or ``lhco_sr`` (see the module docstring).
        method: ``ideal``, ``supervised``, ``template``, ``reweight`` or ``closure`` (see the module docstring).
        signal_fraction: the injected signal fraction s of the study's ``data_{s}.npz``.
        injection_seed: g of ``seed{g}/``.
        template: ``.npz`` with the background template (``method: template``; for ``closure`` a
            control-region template).
        context_columns: leading context columns of the study's rows (made studies record it;
            the seed's physics files: 2, HT and MET).
        inputs: what the classifier sees: ``features`` (the SR classifier of the seed's physics runs
            and of CATHODE), ``all`` (context and features: the seed's toy era, and its Reweight
            classifier) or ``context`` (the context weights).
        toy_kind: the toy a ``made`` study holds (``nr`` or ``r``).
        made_noise_features: extra N(0, 1) features of a ``made`` study (robustness).
        max_train_events: at most this many events of each class in the training pool (seeded
            subsamples): a template larger than the data (Generate's oversampled one) is thinned
            without thinning the data, whose few signal events the classifier has to find.
        lhco_test_background: SR background events held out for testing (``lhco_sr``).
        lhco_test_signal: signal events held out for testing (``lhco_sr``).
        test_folds: k of k-fold testing (``lhco_sr``): the background and signal are cut into k
            seeded folds and fold ``test_fold`` is the test set (``lhco_test_*`` are then unused);
            ``None``: the fixed held-out sizes above. ``hepgen ad run`` combines the k runs' scores.
        test_fold: the fold tested in this run, 0 <= test_fold < test_folds.
        predict_file: a ``.npy`` in the 6-column LHCO signal-region layout (``lhco_sr``) whose rows
            ``hepgen predict`` scores; unset, it scores the test split.
        val_fraction, split_seed, batch_size, num_workers, made_events, made_seed: as :class:`HepDataModule`;
            ``made_events`` is the data background in the SR of a made study.
    """

    download_hint = (
        "Make a toy study with `hepgen data make ad_toy --out DIR` (or source: made), get the seed's files "
        "(Zenodo record 10154213), or, for layout lhco_sr, the CATHODE signal-region files."
    )

    def __init__(
        self,
        data_dir: str = "data/ad_toy_nr",
        source: str = "made",
        layout: str = "study",
        method: str = "ideal",
        signal_fraction: float = 0.01,
        injection_seed: int = 1,
        template: str | None = None,
        context_columns: int = 2,
        inputs: str = "features",
        toy_kind: str = "nr",
        made_noise_features: int = 0,
        max_train_events: int | None = None,
        lhco_test_background: int = 40_000,
        lhco_test_signal: int = 20_000,
        test_folds: int | None = None,
        test_fold: int = 0,
        predict_file: str | None = None,
        val_fraction: float = 0.33,
        split_seed: int = 42,
        batch_size: int = 256,
        num_workers: int = 0,
        made_events: int = 100_000,
        made_seed: int = 0,
    ) -> None:
        super().__init__(
            data_dir, source, made_events, made_seed, val_fraction, 0.0, split_seed, batch_size, num_workers
        )
        if layout not in LAYOUTS:
            raise ConfigValueError(f"data.layout={layout!r}: choose one of {', '.join(LAYOUTS)}.")
        if method not in METHODS:
            raise ConfigValueError(f"data.method={method!r}: choose one of {', '.join(METHODS)}.")
        if inputs not in INPUTS:
            raise ConfigValueError(f"data.inputs={inputs!r}: choose one of {', '.join(INPUTS)}.")
        if method == "reweight" and layout != "study":
            raise ConfigValueError("data.method=reweight needs the MC sample of a study (layout: study).")
        if method in ("template", "closure") and template is None:
            raise ConfigValueError(f"data.method={method} needs data.template: the .npz of a background template.")
        if method == "closure" and layout != "study":
            raise ConfigValueError("data.method=closure needs the control region of a study (layout: study).")
        if layout == "lhco_sr" and source == "made":
            raise ConfigValueError("data.layout=lhco_sr reads real LHCO files; for made data use layout: study.")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigValueError(f"data.val_fraction={val_fraction}: give a fraction in (0, 1).")
        self.layout = layout
        self.method = method
        self.signal_fraction = signal_fraction
        self.injection_seed = injection_seed
        self.template = template
        self.context_columns = context_columns
        self.inputs = inputs
        if toy_kind not in TOY_CONTEXT:
            raise ConfigValueError(f"data.toy_kind={toy_kind!r}: choose nr (non-resonant) or r (resonant).")
        self.toy_kind = toy_kind
        self.made_noise_features = made_noise_features
        self.max_train_events = max_train_events
        self.lhco_test_background = lhco_test_background
        self.lhco_test_signal = lhco_test_signal
        if test_folds is not None and (layout != "lhco_sr" or test_folds < 2 or not 0 <= test_fold < test_folds):
            raise ConfigValueError(
                f"data.test_folds={test_folds}, data.test_fold={test_fold}: k-fold testing needs layout: lhco_sr, "
                "test_folds >= 2 and 0 <= test_fold < test_folds."
            )
        self.test_folds, self.test_fold = test_folds, test_fold
        if predict_file is not None and layout != "lhco_sr":
            raise ConfigValueError("data.predict_file reads the 6-column LHCO layout: use it with layout: lhco_sr.")
        self.predict_file = predict_file
        self._n_pool: int | None = None

    # --- files -------------------------------------------------------------------------------
    def required_files(self) -> list[Path]:
        d = self.data_dir
        if self.layout == "lhco_sr":
            return [d / name for name in LHCO_SR_FILES]
        return study_files(d, self.signal_fraction, self.injection_seed, self.source == "made")

    def make_files(self, missing: list[Path]) -> None:
        make_toy_study(
            self.data_dir, missing, self.toy_kind, self.made_events, self.made_noise_features,
            self.signal_fraction, self.injection_seed, self.made_seed,
        )  # fmt: skip

    def check_made_file(self, path: Path) -> None:
        check_toy_study_file(self.data_dir, path)

    @property
    def toy_record(self) -> dict | None:
        """The made study's record (toy parameters and its optimal SIC), ``None`` for other data."""
        path = self.data_dir / TOY_RECORD
        return json.loads(path.read_text()) if path.is_file() else None

    @property
    def optimal_max_sic(self) -> float | None:
        """The optimal classifier's max SIC on this made toy with the classifier's inputs (``None``
        for other data, or where it is not known, e.g. Toy R with its context)."""
        record = self.toy_record
        if record is None:
            return None
        if self.method in ("reweight", "closure") or self.inputs == "context":
            return None
        entry = record["optimal"].get("features_and_context" if self.inputs == "all" else "features")
        return None if entry is None else float(entry["max_sic"])

    # --- events --------------------------------------------------------------------------------
    @property
    def n_context(self) -> int:
        if self.layout == "lhco_sr":
            return 1  # m_jj
        return study_context_columns(self.data_dir, self.toy_kind, self.source == "made", self.context_columns)

    def _columns(self, rows: np.ndarray) -> np.ndarray:
        """The classifier's inputs of (N, C + D) rows (``inputs``: features, context or all)."""
        return {"features": rows[:, self.n_context :], "context": rows[:, : self.n_context], "all": rows}[self.inputs]

    def _study_pools(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(label-1 rows, label-0 rows, label-0 weights, test rows with truth in the last column)."""
        study = read_seed_study(self.data_dir, self.signal_fraction, self.injection_seed)
        if self.method == "reweight":
            return self._control_region_pools(study)
        if self.method == "closure":
            return self._closure_pools(study)
        if self.method == "supervised":
            ones, zeros = study["fullsup_sig"], study["fullsup_bkg"]
            weights = np.ones(len(zeros))
        elif self.method == "ideal":
            ones, zeros = study["data_sr"], study["ideal_sr"]
            weights = np.ones(len(zeros))
        else:
            ones = study["data_sr"]
            zeros, weights = self._template(ones.shape[1])
        test = np.concatenate(
            [
                np.c_[study["test_sig"], np.ones(len(study["test_sig"]))],
                np.c_[study["test_bkg"], np.zeros(len(study["test_bkg"]))],
            ]
        )
        return ones, zeros, weights, test

    def _control_region_pools(self, study: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Reweight: data (1) vs MC (0) in the control region; the held-out 10 % of each is the test set."""
        cr = control_region_hold_out(study, self.split_seed)
        data, mc = cr["data_held"], cr["mc_held"]
        test = np.concatenate([np.c_[data, np.ones(len(data))], np.c_[mc, np.zeros(len(mc))]])
        return cr["data_rest"], cr["mc_rest"], np.ones(len(cr["mc_rest"])), test

    def _closure_pools(self, study: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Closure: held-out control-region data (1) vs a control-region template (0).

        Both are split the same way into the classifier's pool and a test set (a third of
        each, seeded); the test rows carry their template weights (:attr:`_test_weights`), so the
        test AUC is that of data vs the *weighted* template: 0.5 when the template closes.
        """
        data = control_region_hold_out(study, self.split_seed)["data_held"]
        template, weights = self._template(data.shape[1])
        rng = np.random.default_rng(self.split_seed + 5)
        data, order = data[rng.permutation(len(data))], rng.permutation(len(template))
        template, weights = template[order], weights[order]
        n_data, n_template = len(data) // 3, len(template) // 3
        test = np.concatenate([np.c_[data[:n_data], np.ones(n_data)], np.c_[template[:n_template], np.zeros(n_template)]])
        self._test_weights = np.r_[np.ones(n_data), weights[:n_template]]
        return data[n_data:], template[n_template:], weights[n_template:], test

    def _template(self, columns: int) -> tuple[np.ndarray, np.ndarray]:
        return read_template(self.template, columns)

    def _lhco_pools(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        data, val, signal = (read_cathode_npy(self.data_dir / name) for name in LHCO_SR_FILES)
        rng = np.random.default_rng(self.split_seed)
        background = val[val[:, -1] == 0]
        background = background[rng.permutation(len(background))]
        signal = signal[rng.permutation(len(signal))]
        if self.test_folds is None:
            n_bkg, n_sig = self.lhco_test_background, self.lhco_test_signal
            for name, need, have in (("lhco_test_background", n_bkg, len(background)), ("lhco_test_signal", n_sig, len(signal))):
                if need >= have:
                    raise ConfigValueError(
                        f"data.{name}={need}: the files hold {have} such events, and some must remain for training."
                    )
            (test_bkg, rest_bkg), (test_sig, rest_sig) = (background[:n_bkg], background[n_bkg:]), (signal[:n_sig], signal[n_sig:])
        else:
            (test_bkg, rest_bkg), (test_sig, rest_sig) = (fold(rows, self.test_folds, self.test_fold) for rows in (background, signal))
        test = np.concatenate([test_sig, test_bkg])[:, :-1]
        test = np.c_[test, np.r_[np.ones(len(test_sig)), np.zeros(len(test_bkg))]]
        zeros = rest_bkg[:, :-1]
        ones = (rest_sig if self.method == "supervised" else data)[:, :-1]
        if self.method == "template":
            zeros, weights = self._template(ones.shape[1])
        else:
            weights = np.ones(len(zeros))
        return ones, zeros, weights, test

    def load_events(self) -> dict[str, torch.Tensor]:
        self._test_weights = None  # the closure's template weights of its test rows
        ones, zeros, weights, test = self._lhco_pools() if self.layout == "lhco_sr" else self._study_pools()
        where = self.template if self.method in ("template", "closure") else self.data_dir
        for name, rows in (("label-1 (data or signal)", ones), ("label-0 (background reference)", zeros)):
            if len(rows) == 0:
                raise DataFileError(
                    f"{where}: the {name} sample of method {self.method} has no events in its region; "
                    "check the region cuts, the signal fraction and the files."
                )
        label = np.r_[np.ones(len(ones)), np.zeros(len(zeros))]
        weight = equalise_classes(label, np.r_[np.ones(len(ones)), weights])
        pool = np.concatenate([ones, zeros])
        if self.max_train_events is not None:
            rng = np.random.default_rng(self.split_seed + 7)
            keep = [rng.permutation(np.flatnonzero(label == value))[: self.max_train_events] for value in (1, 0)]
            keep = np.sort(np.concatenate(keep))
            pool, label, weight = pool[keep], label[keep], equalise_classes(label[keep], weight[keep])
        self._n_pool = len(pool)
        # signal and background interleaved, so that every test batch holds both
        order = np.random.default_rng(self.split_seed + 11).permutation(len(test))
        test = test[order]
        test_weight = np.ones(len(test)) if self._test_weights is None else self._test_weights[order]
        rows = np.concatenate([pool, test[:, :-1]])
        return {
            "features": torch.as_tensor(self._columns(rows), dtype=torch.float32),
            "label": torch.as_tensor(np.r_[label, test[:, -1]], dtype=torch.float32),
            "weight": torch.as_tensor(np.r_[weight, test_weight], dtype=torch.float32),
        }

    def splits(self, n_events: int) -> dict[str, np.ndarray]:
        pool = self._n_pool
        order = np.random.default_rng(self.split_seed).permutation(pool)
        n_val = int(round(pool * self.val_fraction))
        parts = {"train": order[n_val:], "val": order[:n_val], "test": np.arange(pool, n_events)}
        check_nonempty(parts, str(self.data_dir), "Use more events or another val_fraction.")
        return parts

    @property
    def n_features(self) -> int:
        """F, the classifier's inputs: known before the files are read (the CLI links it into the model)."""
        if self.layout == "lhco_sr":
            columns = len(AD_COLUMNS) - 1  # m_jj and the 4 features; the label is not an input
        else:
            made = self.source == "made"
            columns = study_columns(self.data_dir, self.toy_kind, made, self.made_noise_features, self.download_hint)
        return {"features": columns - self.n_context, "context": self.n_context, "all": columns}[self.inputs]

    # --- predict: scores for the rows of a file, in its order -------------------------------
    def predict_dataloader(self) -> DataLoader:
        """``predict_file`` (or the test split) with ``row``, each event's row in it, for the writer.

        For ``method: reweight`` it is the MC sample in the signal region, then the held-out MC
        of the control region, whole rows included (``rows``, physical units) and ``region`` (0
        SR, 1 CR), which the template writer weights by f / (1 - f) into the SR template and the
        CR template of the closure test.
        """
        if self.method == "reweight":
            study = read_seed_study(self.data_dir, self.signal_fraction, self.injection_seed)
            mc_sr, mc_held = study["mc_sr"], control_region_hold_out(study, self.split_seed)["mc_held"]
            mc = np.concatenate([mc_sr, mc_held])
            events = {
                "features": torch.as_tensor(self._columns(mc), dtype=torch.float32),
                "label": torch.zeros(len(mc)),
                "weight": torch.ones(len(mc)),
                "rows": torch.as_tensor(mc, dtype=torch.float64),
                "region": torch.as_tensor(np.r_[np.zeros(len(mc_sr)), np.ones(len(mc_held))], dtype=torch.int8),
            }
        elif self.predict_file is None:
            self.setup("test")
            dataset = self.datasets["test"]
            events = dataset.head()
        else:
            rows = read_cathode_npy(Path(self.predict_file))
            events = {
                "features": torch.as_tensor(self._columns(rows[:, :-1]), dtype=torch.float32),
                "label": torch.as_tensor(rows[:, -1], dtype=torch.float32),
                "weight": torch.ones(len(rows)),
            }
        events["row"] = torch.arange(len(events["label"]))
        dataset = ArrayDictDataset(events)
        world, rank = self._world()
        sampler = EvaluationSampler(dataset, self.batch_size, num_replicas=world, rank=rank)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=_already_batched)
