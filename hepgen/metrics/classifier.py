"""The classifier two-sample test: how well a network trained to tell generated from reference does.

This is the field's strictest summary metric (CaloFlow arXiv:2106.05285, CaloChallenge
arXiv:2410.21611 ``cls-low``/``cls-high``): a perfect generator leaves the classifier at
AUC = 0.5, a trivially distinguishable one gives 1. The recipe here is a scaled-down version
of theirs (2 hidden LeakyReLU layers, BCE-with-logits, Adam), without best-epoch selection or
calibration, sized to run in seconds on a CPU during validation. The same held-out scores give
:func:`two_sample_auc` and :func:`two_sample_accuracy` (the SDE-GAN paper's real/fake
classification metric, arXiv:2102.03657).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from torchmetrics.functional.classification import binary_auroc


def _features(x: np.ndarray, name: str) -> np.ndarray:
    """A finite (N, D) float32 feature matrix; 1-D input is one feature."""
    x = np.asarray(x, dtype=np.float32)
    x = x.reshape(-1, 1) if x.ndim == 1 else x
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _balanced_split(
    x_ref: np.ndarray, x_gen: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Equal-size random subsets of both samples, split into (x, y) train and test sets.

    Label 1 = reference, 0 = generated. Both splits are balanced, so an AUC of 0.5 means
    "indistinguishable" without a prior to correct for.
    """
    n = min(len(x_ref), len(x_gen))
    n_test = int(round(test_fraction * n))
    if not 0 < n_test < n:
        raise ValueError(f"test_fraction={test_fraction} leaves an empty split of {n} events")
    ref = x_ref[rng.permutation(len(x_ref))[:n]]
    gen = x_gen[rng.permutation(len(x_gen))[:n]]

    def stack(r: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = np.concatenate([np.ones(len(r)), np.zeros(len(g))]).astype(np.float32)
        return np.concatenate([r, g]), y

    return stack(ref[n_test:], gen[n_test:]), stack(ref[:n_test], gen[:n_test])


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero mean, unit variance per feature, with the training split's statistics only."""
    mean, std = train.mean(axis=0), train.std(axis=0)
    # Constant features (e.g. cells never hit) carry no information; keep them at 0.
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (test - mean) / std


def _mlp(n_in: int, hidden: int) -> nn.Sequential:
    """Two hidden LeakyReLU layers and one logit."""
    return nn.Sequential(
        nn.Linear(n_in, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, 1),
    )


@contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch single-threaded, restoring the caller's thread count afterwards.

    The network is small, so intra-op threads spend more on synchronisation than they save;
    on a CPU shared with a training job or data loaders, two threads measured 7x slower
    than one. The result does not depend on the thread count.
    """
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n_threads)


def _train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
) -> None:
    """Minimise BCE-with-logits with Adam over shuffled minibatches."""
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            optimiser.zero_grad()
            loss_fn(model(x[idx]).squeeze(1), y[idx]).backward()
            optimiser.step()


def _held_out_scores(
    x_ref: np.ndarray,
    x_gen: np.ndarray,
    hidden: int,
    epochs: int,
    batch_size: int,
    lr: float,
    test_fraction: float,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train the MLP on a balanced split; its logits "is reference" on the held-out split.

    Returns:
        (logits (2 n_test,), labels (2 n_test,): 1 = reference, 0 = generated).
    """
    x_ref, x_gen = _features(x_ref, "x_ref"), _features(x_gen, "x_gen")
    if x_ref.shape[1] != x_gen.shape[1]:
        raise ValueError(f"feature counts differ: x_ref {x_ref.shape}, x_gen {x_gen.shape}")
    rng = np.random.default_rng(seed)
    (x_train, y_train), (x_test, y_test) = _balanced_split(x_ref, x_gen, test_fraction, rng)
    x_train, x_test = _standardise(x_train, x_test)

    # Callers may sit inside Lightning's test loop, which runs under inference mode.
    with torch.inference_mode(False), torch.enable_grad():
        generator = torch.Generator().manual_seed(seed)
        # nn.Linear draws its initial weights from the global generator: fork it so the caller's
        # RNG stream is restored afterwards, and seed the fork for reproducibility.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _mlp(x_train.shape[1], hidden)
        with _single_thread():
            _train(model, torch.from_numpy(x_train), torch.from_numpy(y_train), epochs, batch_size, lr, generator)
            model.eval()
            with torch.no_grad():
                scores = model(torch.from_numpy(x_test)).squeeze(1)
    return scores, torch.from_numpy(y_test)


def two_sample_auc(
    x_ref: np.ndarray,
    x_gen: np.ndarray,
    *,
    hidden: int = 128,
    epochs: int = 30,
    batch_size: int = 512,
    lr: float = 1e-3,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> float:
    """ROC AUC of an MLP separating reference from generated events, on a held-out split.

    The larger sample is subsampled to the size n of the smaller one; a fraction
    ``test_fraction`` of each is held out. Features are standardised with the training
    split's statistics. The AUC is that of the score "is reference" (label 1 = reference).

    Deterministic for a given ``seed``; the global numpy and torch RNG states and torch's
    thread count are left as they were (training runs single-threaded, see _single_thread).

    Args:
        x_ref: reference features, (N, D) (or (N,) for one feature), finite.
        x_gen: generated features, (M, D) (or (M,)), finite.
        hidden: width of the two hidden layers.
        epochs, batch_size, lr: Adam training schedule.
        test_fraction: held-out fraction of each class.
        seed: seeds the subsampling, the split, the initial weights and the batch order.

    Returns:
        AUC in [0, 1]: 0.5 for indistinguishable samples, 1 for perfectly separable ones.
        With n_test held-out events per class its statistical noise is about
        sqrt(1 / (6 n_test)) near 0.5.
    """
    scores, labels = _held_out_scores(x_ref, x_gen, hidden, epochs, batch_size, lr, test_fraction, seed)
    return float(binary_auroc(scores, labels.long()))


def two_sample_accuracy(
    x_ref: np.ndarray,
    x_gen: np.ndarray,
    *,
    hidden: int = 128,
    epochs: int = 30,
    batch_size: int = 512,
    lr: float = 1e-3,
    test_fraction: float = 0.3,
    seed: int = 0,
) -> float:
    """Held-out accuracy of the same classifier as :func:`two_sample_auc` (threshold p = 1/2).

    The SDE-GAN paper's real/fake classification metric (lower is better). Arguments,
    splitting, determinism and the restored global state are those of :func:`two_sample_auc`.

    Returns:
        Accuracy in [0, 1] on the balanced held-out split: 0.5 expected for indistinguishable
        samples (held-out labels are then independent of the features, whatever the network
        learnt), 1 for perfectly separable ones. With n_test held-out events per class its
        statistical noise near 0.5 is at most 0.5 / sqrt(2 n_test).
    """
    scores, labels = _held_out_scores(x_ref, x_gen, hidden, epochs, batch_size, lr, test_fraction, seed)
    return float(((scores > 0).float() == labels).float().mean())
