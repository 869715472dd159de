"""Made time-dependent Ornstein–Uhlenbeck paths: the SDE-GAN reference's data, with its exact moments.

The process (Itô, scalar noise; torchsde's ``examples/sde_gan.py``):

    dY = (mu t - theta Y) dt + sigma (2 t / T) dW,    Y_0 ~ U(-1, 1),

observed at t = 0, 1, ..., T - 1 (T = ``t_size``), with mu = 0.02, theta = 0.1, sigma = 0.4.

The SDE is linear, so the transition over a step h from s is exactly Gaussian:

    Y_{s+h} = e^{-theta h} Y_s + mu [s A + h/theta - A/theta] + N(0, k J(s, h)),
    A = (1 - e^{-theta h}) / theta,   k = (2 sigma / T)^2,
    J(s, h) = int_0^h e^{-2 theta u} (s + h - u)^2 du   (closed form in :func:`_noise_integral`).

:func:`simulate_ou` steps with that transition on a grid of ``sim_dt`` (default 0.1, the
reference's solver step). Because each step is exact, the paths have no discretisation bias
for any ``sim_dt`` (the reference's SRK solver has a small one); ``sim_dt`` only sets where the
Brownian path is resolved. :func:`ou_moments` gives the exact marginal mean and variance:

    m(t) = (mu / theta) [t - (1 - e^{-theta t}) / theta],        (m' = mu t - theta m, m(0) = 0)
    v(t) = e^{-2 theta t} / 3 + k J(0, t).                        (v' = -2 theta v + k t^2, v(0) = 1/3)
"""

from __future__ import annotations

import numpy as np

#: The reference's parameters.
MU, THETA, SIGMA = 0.02, 0.1, 0.4


def _noise_integral(s: np.ndarray | float, h: float | np.ndarray, theta: float) -> np.ndarray:
    """J(s, h) = int_0^h e^{-2 theta u} (s + h - u)^2 du, from the moments I_n = int_0^h u^n e^{-b u} du."""
    b = 2.0 * theta
    c = np.asarray(s, dtype=np.float64) + h
    e = np.exp(-b * np.asarray(h, dtype=np.float64))
    bh = b * np.asarray(h, dtype=np.float64)
    i0 = (1.0 - e) / b
    i1 = (1.0 - e * (1.0 + bh)) / b**2
    i2 = (2.0 - e * (bh**2 + 2.0 * bh + 2.0)) / b**3
    return c**2 * i0 - 2.0 * c * i1 + i2


def ou_moments(
    t: np.ndarray | float, t_size: int = 64, mu: float = MU, theta: float = THETA, sigma: float = SIGMA
) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean and variance of Y_t (any shape of ``t``, in the model's time units)."""
    t = np.asarray(t, dtype=np.float64)
    mean = (mu / theta) * (t - (1.0 - np.exp(-theta * t)) / theta)
    k = (2.0 * sigma / t_size) ** 2
    var = np.exp(-2.0 * theta * t) / 3.0 + k * _noise_integral(0.0, t, theta)
    return mean, var


def simulate_ou(
    n: int,
    t_size: int = 64,
    seed: int = 0,
    sim_dt: float = 0.1,
    drop_fraction: float = 0.0,
    mu: float = MU,
    theta: float = THETA,
    sigma: float = SIGMA,
) -> np.ndarray:
    """``n`` paths observed at t = 0..t_size-1: (n, t_size) float64, NaN where a value was dropped.

    ``drop_fraction``: exactly ``int(drop_fraction * n * t_size)`` values become NaN (as the
    reference drops a fixed number of the flattened values), chosen at random except that every
    path keeps at least one value: a path without any observation cannot be interpolated (torchcde
    would make it a constant 0, a value the process never had).

    Raises:
        ValueError: n < 1, t_size < 2, sim_dt not in (0, 1], drop_fraction not in [0, 1 - 1/t_size].
    """
    if n < 1 or t_size < 2:
        raise ValueError(f"simulate_ou: need n >= 1 and t_size >= 2, got n={n}, t_size={t_size}.")
    if not 0.0 < sim_dt <= 1.0:
        raise ValueError(f"sim_dt={sim_dt}: choose a step in (0, 1] (observations are 1 apart).")
    if not 0.0 <= drop_fraction <= 1.0 - 1.0 / t_size:
        raise ValueError(f"drop_fraction={drop_fraction}: choose it in [0, 1 - 1/t_size] (every path keeps one value).")
    rng = np.random.default_rng(seed)
    substeps = int(np.ceil(1.0 / sim_dt - 1e-9))  # a whole number of steps between observations
    h = 1.0 / substeps
    decay = np.exp(-theta * h)
    a = (1.0 - decay) / theta
    k = (2.0 * sigma / t_size) ** 2
    y = rng.uniform(-1.0, 1.0, size=n)
    out = np.empty((n, t_size))
    out[:, 0] = y
    for i in range(1, t_size):
        for j in range(substeps):
            s = (i - 1) + j * h
            drift = mu * (s * a + h / theta - a / theta)
            y = decay * y + drift + np.sqrt(k * _noise_integral(s, h, theta)) * rng.standard_normal(n)
        out[:, i] = y
    n_drop = int(drop_fraction * out.size)
    if n_drop:
        # one kept value per path, then the dropped ones among all the others
        kept = rng.integers(0, t_size, size=n)
        droppable = np.ones(out.shape, dtype=bool)
        droppable[np.arange(n), kept] = False
        others = np.flatnonzero(droppable)
        out.ravel()[rng.choice(others, size=n_drop, replace=False)] = np.nan
    return out
