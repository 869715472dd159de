"""The CaloChallenge classifier test (``evaluate.py`` modes ``cls-low`` and ``cls-high``).

A fully connected network is trained to tell the reference (Geant4, label 1) from the generated
sample (label 0); a perfect generator leaves it at AUC 0.5. The protocol is the challenge's
(CaloChallenge/homepage ``code/evaluate.py``; arXiv:2410.21611):

1. Inputs: ``cls-low`` = [log10 E_inc, voxels / E_inc] after the readout threshold
   (:func:`low_level_inputs`); ``cls-high`` = the high-level feature vector
   (:func:`hepgen.physics.calochallenge_features.feature_vector`). No standardisation.
2. Each class is shuffled and split into train / test / val (ds 1 photons 80k/20k/21k, pions
   80k/20k/20.8k, ds 2 and 3 60k/20k/20k: :data:`CHALLENGE_SPLITS`; here as fractions).
3. Network: Linear(in, 2048), LeakyReLU, then 2 x [Linear(2048, 2048), LeakyReLU], Linear(2048, 1);
   dropout 0. BCE-with-logits, Adam lr 2e-4, batch 1000, 50 epochs.
4. After every epoch the accuracy on the test split (p > 1/2) is measured; the epoch with the best
   one is kept (training stops early at accuracy 1).
5. Its probabilities are calibrated by isotonic regression fitted on the test split
   (:class:`IsotonicCalibration`, clipped to [1e-6, 1 - 1e-6]).
6. On the val split: the AUC of the calibrated probabilities, and JSD = (ln 2 - BCE) / ln 2 with
   the BCE of the calibrated probabilities (0: indistinguishable; 1: separable).

The paper reports the mean (and std) of 10 trainings (:func:`classifier_test`, ``repeats``).

Differences from ``evaluate.py``, none of which changes the estimator: the two samples are
subsampled to a common size (the challenge requires equal sizes); the split is given as
fractions; the sigmoid is taken in float64 (float32 saturates at 1 for well-separated events,
which makes ties); the isotonic regression is implemented here (scikit-learn is not a dependency)
and matches ``sklearn.isotonic.IsotonicRegression(out_of_bounds="clip", y_min=1e-6,
y_max=1 - 1e-6)``; everything is seeded, and the global RNG states are restored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hepgen.io.calochallenge import apply_threshold
from hepgen.metrics.roc import auc, roc_curve

#: train / test / val events per class in the challenge's evaluation, per dataset.
CHALLENGE_SPLITS: dict[str, tuple[int, int, int]] = {
    "1-photons": (80_000, 20_000, 21_000),
    "1-pions": (80_000, 20_000, 20_800),
    "2": (60_000, 20_000, 20_000),
    "3": (60_000, 20_000, 20_000),
}


def challenge_split(dataset: str | None) -> tuple[float, float, float]:
    """The challenge's train/test/val proportions for ``dataset`` (0.6/0.2/0.2 when ``None``,
    ``evaluate.py``'s default)."""
    if dataset is None:
        return (0.6, 0.2, 0.2)
    counts = np.asarray(CHALLENGE_SPLITS[dataset], dtype=np.float64)
    return tuple(float(c) for c in counts / counts.sum())


def low_level_inputs(showers_mev: np.ndarray, incident_mev: np.ndarray, threshold_mev: float | None) -> np.ndarray:
    """The ``cls-low`` input: [log10 E_inc / MeV, voxel energies / E_inc], (N, 1 + n_voxels) float32.

    Voxels below ``threshold_mev`` are zeroed first (``None``: no threshold). Dividing by E_inc
    removes the trivial energy scale, so the network judges the sharing of energy among voxels.
    """
    e_inc = np.asarray(incident_mev, dtype=np.float32).reshape(-1, 1)
    showers = np.asarray(showers_mev, dtype=np.float32)  # float32 throughout: ds 3 is 40,500 voxels
    if threshold_mev is not None:
        showers = apply_threshold(showers, threshold_mev)
    return np.concatenate([np.log10(e_inc), showers / e_inc], axis=1)


# ------------------------------------------------------------------------------------ calibration
def pool_adjacent_violators(y: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to ``y`` in weighted least squares (PAVA).

    Adjacent blocks whose means decrease are pooled into their weighted mean until none does.

    Args:
        y: (n,) values in the order of the regressor.
        weight: (n,) positive weights.

    Returns:
        (n,) fitted values, non-decreasing.
    """
    means, weights, sizes = [], [], []
    for value, w in zip(y.tolist(), weight.tolist()):
        means.append(value)
        weights.append(w)
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            w_total = weights[-2] + weights[-1]
            means[-2] = (weights[-2] * means[-2] + weights[-1] * means[-1]) / w_total
            weights[-2] = w_total
            sizes[-2] += sizes[-1]
            del means[-1], weights[-1], sizes[-1]
    return np.repeat(np.asarray(means), sizes)


class IsotonicCalibration:
    """A monotone map from a classifier's probability to the observed frequency of label 1.

    Fit: the events are sorted by score; tied scores are merged into their mean label (weighted by
    count); PAVA makes the labels non-decreasing in the score; the result is clipped to
    [y_min, y_max] (so the BCE stays finite). Predict: linear interpolation between the fitted
    points, constant beyond them (scikit-learn's ``IsotonicRegression(out_of_bounds="clip")``).

    Args:
        y_min, y_max: the range of the calibrated probabilities.
    """

    def __init__(self, y_min: float = 1e-6, y_max: float = 1.0 - 1e-6) -> None:
        self.y_min, self.y_max = y_min, y_max
        self.x_: np.ndarray | None = None
        self.y_: np.ndarray | None = None

    def fit(self, score: np.ndarray, label: np.ndarray) -> IsotonicCalibration:
        """Fit on (n,) scores and (n,) labels in {0, 1}."""
        score = np.asarray(score, dtype=np.float64).reshape(-1)
        label = np.asarray(label, dtype=np.float64).reshape(-1)
        if score.size == 0 or score.size != label.size:
            raise ValueError(f"need as many labels as scores (> 0); got {score.size} and {label.size}")
        x, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
        mean_label = np.bincount(inverse, weights=label) / counts
        self.x_ = x
        self.y_ = np.clip(pool_adjacent_violators(mean_label, counts.astype(np.float64)), self.y_min, self.y_max)
        return self

    def predict(self, score: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of (n,) scores."""
        if self.x_ is None:
            raise RuntimeError("IsotonicCalibration.predict before fit")
        return np.interp(np.asarray(score, dtype=np.float64).reshape(-1), self.x_, self.y_)


def binary_cross_entropy(probability: np.ndarray, label: np.ndarray) -> float:
    """Mean BCE (nats) of probabilities in (0, 1) for labels in {0, 1}."""
    p, y = np.asarray(probability, dtype=np.float64), np.asarray(label, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def jsd_from_bce(bce: float) -> float:
    """The challenge's JSD estimate (ln 2 - BCE) / ln 2 of an optimal classifier's BCE."""
    return (math.log(2.0) - bce) / math.log(2.0)


# -------------------------------------------------------------------------------------- training
def challenge_dnn(n_in: int, hidden: int = 2048, n_layer: int = 2, dropout: float = 0.0) -> nn.Sequential:
    """The challenge's DNN: Linear(n_in, hidden), then ``n_layer`` hidden Linear(hidden, hidden),
    each followed by LeakyReLU (slope 0.01) and dropout, and one output logit."""
    layers: list[nn.Module] = [nn.Linear(n_in, hidden), nn.LeakyReLU(), nn.Dropout(dropout)]
    for _ in range(n_layer):
        layers += [nn.Linear(hidden, hidden), nn.LeakyReLU(), nn.Dropout(dropout)]
    layers.append(nn.Linear(hidden, 1))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class ClassifierResult:
    """One training of the challenge classifier, scored on the val split.

    Attributes:
        auc: ROC AUC of the calibrated probabilities (the reported number).
        jsd: (ln 2 - BCE) / ln 2 of the calibrated probabilities.
        accuracy: val accuracy of the calibrated probabilities at 1/2.
        auc_uncalibrated, jsd_uncalibrated: the same from the raw logits.
        best_epoch: the kept epoch (1-based), best accuracy on the test split.
        n_train, n_test, n_val: events per class in each split.
    """

    auc: float
    jsd: float
    accuracy: float
    auc_uncalibrated: float
    jsd_uncalibrated: float
    best_epoch: int
    n_train: int
    n_test: int
    n_val: int


def _inputs(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    x = x.reshape(-1, 1) if x.ndim == 1 else x
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf (a generator's NaN showers?)")
    return x


def _split(
    x_ref: np.ndarray, x_gen: np.ndarray, split: tuple[float, float, float], rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class: a random subset of n = min(N_ref, N_gen) events cut into train / test / val.

    Returns:
        ``[(x, y)] * 3`` for train, test, val, each with as many reference (y = 1) as generated
        (y = 0) events, so AUC 0.5 and JSD 0 mean "indistinguishable" without a prior.
    """
    if len(split) != 3 or min(split) <= 0 or sum(split) > 1.0 + 1e-9:
        raise ValueError(f"split must be three positive fractions summing to at most 1, got {split}")
    n = min(len(x_ref), len(x_gen))
    counts = (n * np.asarray(split)).astype(int)  # as evaluate.py's ttv_split
    if counts.min() < 1:
        raise ValueError(f"split {split} of {n} events per class leaves an empty part: {counts.tolist()}")
    cuts = np.cumsum(counts)[:-1]
    ref = np.split(x_ref[rng.permutation(len(x_ref))[: counts.sum()]], cuts)
    gen = np.split(x_gen[rng.permutation(len(x_gen))[: counts.sum()]], cuts)
    parts = []
    for r, g in zip(ref, gen):
        y = np.concatenate([np.ones(len(r)), np.zeros(len(g))]).astype(np.float32)
        parts.append((np.concatenate([r, g]), y))
    return parts


def _logits(model: nn.Module, x: torch.Tensor, chunk: int = 10_000) -> torch.Tensor:
    """Model logits (n,) in eval mode, in chunks (a 2048-wide net on 40k events is 1 GB of activations)."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(part).squeeze(1) for part in x.split(chunk)])


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float(((logits > 0).float() == y).float().mean())


def train_classifier(
    x_ref,
    x_gen,
    *,
    split: tuple[float, float, float] = (0.6, 0.2, 0.2),
    hidden: int = 2048,
    n_layer: int = 2,
    dropout: float = 0.0,
    epochs: int = 50,
    batch_size: int = 1000,
    lr: float = 2e-4,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> ClassifierResult:
    """Train the challenge classifier once and score it on the val split (module docstring).

    Deterministic for a seed on the CPU; the global torch and numpy RNG states are left as they
    were (the network's initial weights, dropout and the batch order draw from a fork). The
    thread count is the caller's: the 2048-wide layers profit from several threads.

    Args:
        x_ref: (N, D) reference inputs (label 1), finite.
        x_gen: (M, D) generated inputs (label 0), finite.
        split: train / test / val fractions of min(N, M) per class (:func:`challenge_split`).
        hidden, n_layer, dropout: the network (:func:`challenge_dnn`).
        epochs, batch_size, lr: Adam training schedule.
        seed: seeds the subsampling and split, the initial weights and the batch order.
        device: where to train (``"cuda"`` makes the challenge's sizes practical).

    Returns:
        The val-split scores (:class:`ClassifierResult`). The statistical noise of the AUC near
        0.5 is about sqrt(1 / (6 n_val)).
    """
    x_ref, x_gen = _inputs(x_ref, "x_ref"), _inputs(x_gen, "x_gen")
    if x_ref.shape[1] != x_gen.shape[1]:
        raise ValueError(f"feature counts differ: x_ref {x_ref.shape}, x_gen {x_gen.shape}")
    (x_train, y_train), (x_test, y_test), (x_val, y_val) = _split(x_ref, x_gen, split, np.random.default_rng(seed))
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    device = torch.device(device)

    # Callers may sit inside Lightning's test loop, which runs under inference mode.
    with torch.inference_mode(False), torch.enable_grad():
        fork = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork):
            torch.manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            tensors = [torch.from_numpy(a).to(device) for a in (x_train, y_train, x_test, y_test, x_val)]
            xt, yt, xs, ys, xv = tensors
            model = challenge_dnn(x_train.shape[1], hidden, n_layer, dropout).to(device)
            optimiser = torch.optim.Adam(model.parameters(), lr=lr)
            loss_fn = nn.BCEWithLogitsLoss()
            best_accuracy, best_epoch, best_state = -math.inf, 0, None
            for epoch in range(epochs):
                model.train()
                for idx in torch.randperm(len(xt), generator=generator).split(batch_size):
                    idx = idx.to(device)
                    optimiser.zero_grad()
                    loss_fn(model(xt[idx]).squeeze(1), yt[idx]).backward()
                    optimiser.step()
                accuracy = _accuracy(_logits(model, xs), ys)
                if accuracy > best_accuracy:
                    best_accuracy, best_epoch = accuracy, epoch + 1
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if accuracy == 1.0:
                    break
            model.load_state_dict(best_state)
            test_logits = _logits(model, xs).double().cpu().numpy()
            val_logits = _logits(model, xv).double().cpu().numpy()

    def sigmoid(z: np.ndarray) -> np.ndarray:
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free logistic function

    calibration = IsotonicCalibration().fit(sigmoid(test_logits), y_test)
    p_val = calibration.predict(sigmoid(val_logits))
    # BCE of the raw logits, log-sum-exp stable: softplus(z) - y z
    raw_bce = float(np.mean(np.logaddexp(0.0, val_logits) - y_val * val_logits))
    return ClassifierResult(
        auc=auc(*roc_curve(p_val, y_val)[:2]),
        jsd=jsd_from_bce(binary_cross_entropy(p_val, y_val)),
        accuracy=float(np.mean((p_val > 0.5) == (y_val == 1))),
        auc_uncalibrated=auc(*roc_curve(val_logits, y_val)[:2]),
        jsd_uncalibrated=jsd_from_bce(raw_bce),
        best_epoch=best_epoch,
        n_train=len(x_train) // 2,
        n_test=len(x_test) // 2,
        n_val=len(x_val) // 2,
    )


def classifier_test(x_ref, x_gen, *, repeats: int = 10, seed: int = 0, **kwargs) -> dict[str, float]:
    """Mean and spread of the challenge classifier over ``repeats`` trainings (seeds seed, seed+1, ...).

    Each training draws its own split, initial weights and batch order, as each run of
    ``evaluate.py`` does.

    Args:
        x_ref, x_gen: (N, D) and (M, D) inputs (reference = label 1).
        repeats: number of trainings (the paper: 10).
        seed: seed of the first training.
        **kwargs: see :func:`train_classifier`.

    Returns:
        ``auc``, ``auc_std``, ``jsd``, ``jsd_std`` (mean and sample standard deviation over the
        trainings; std 0 for one training), ``auc_uncalibrated`` (mean) and ``best_epoch`` (mean).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    results = [train_classifier(x_ref, x_gen, seed=seed + k, **kwargs) for k in range(repeats)]
    ddof = 1 if repeats > 1 else 0
    aucs = np.array([r.auc for r in results])
    jsds = np.array([r.jsd for r in results])
    return {
        "auc": float(aucs.mean()),
        "auc_std": float(aucs.std(ddof=ddof)),
        "jsd": float(jsds.mean()),
        "jsd_std": float(jsds.std(ddof=ddof)),
        "auc_uncalibrated": float(np.mean([r.auc_uncalibrated for r in results])),
        "best_epoch": float(np.mean([r.best_epoch for r in results])),
    }
