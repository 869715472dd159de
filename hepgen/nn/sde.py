"""Neural SDE generator and neural CDE discriminator (Kidger et al. 2021, arXiv:2102.03657).

The generator is a Stratonovich SDE in a hidden space,

    X_0 = zeta(V),  V ~ N(0, I);   dX_t = mu(t, X_t) dt + sigma(t, X_t) o dW_t;   Y_t = A X_t + b,

and the discriminator a controlled differential equation driven by the path (t, Y_t),

    H_0 = xi(t_0, Y_0);   dH_t = f(t, H_t) d(t, Y_t);   D(Y) = m . H_T.

Time is a channel of the control: without it the CDE could not tell how fast a path is
traversed (the CDE solution is invariant under reparametrisation of the control). Both solve
with reversible Heun, whose exact adjoint gives O(1)-memory gradients through the solve.

Shapes: B paths, T observation times, C data channels, ``hidden`` state size, ``noise``
Brownian channels. Times are in the model's time units (observation index for regular series).
"""

from __future__ import annotations

import torch
import torchcde
import torchsde
from torch import nn

from hepgen.nn.mlp import mlp


class LipSwish(nn.Module):
    """0.909 * x * sigmoid(x): SiLU scaled to Lipschitz constant 1 (needed for a Lipschitz critic)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.909 * nn.functional.silu(x)


def lipswish_mlp(n_in: int, n_out: int, width: int, layers: int, tanh: bool = False) -> nn.Sequential:
    """``layers`` hidden layers of ``width`` with LipSwish; a final tanh bounds the output to (-1, 1).

    The tanh on drift and diffusion bounds the rate of change of the hidden state, which keeps
    the untrained SDE from blowing up over tens of solver steps.
    """
    net = mlp([n_in, *[width] * layers, n_out], activation=LipSwish)
    return nn.Sequential(*net, nn.Tanh()) if tanh else net


class _GeneratorField(nn.Module):
    """Drift mu(t, X) (B, hidden) and diffusion sigma(t, X) (B, hidden, noise) of the generator SDE."""

    sde_type = "stratonovich"
    noise_type = "general"

    def __init__(self, hidden: int, noise: int, width: int, layers: int) -> None:
        super().__init__()
        self.hidden, self.noise = hidden, noise
        self.drift = lipswish_mlp(1 + hidden, hidden, width, layers, tanh=True)
        self.diffusion = lipswish_mlp(1 + hidden, hidden * noise, width, layers, tanh=True)

    def _input(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([t.expand(x.shape[0], 1), x], dim=1)

    def f_and_g(self, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tx = self._input(t, x)
        return self.drift(tx), self.diffusion(tx).view(x.shape[0], self.hidden, self.noise)

    # torchsde's adjoint asks for f and g separately as well
    def f(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.drift(self._input(t, x))

    def g(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.diffusion(self._input(t, x)).view(x.shape[0], self.hidden, self.noise)


class SDEGenerator(nn.Module):
    """Paths Y (B, T, C) from initial noise V (B, initial_noise) and a Brownian motion (B, noise).

    Args:
        data_size: C, channels of the generated paths.
        initial_noise: size of V.
        noise: Brownian channels.
        hidden: size of the SDE state X.
        width, layers: the MLPs' hidden width and number of hidden layers.
        initial_scale, field_scale: factors on the initial weights of zeta and of (mu, sigma),
            chosen in the reference so that the untrained model's spread at t = 0 and its
            growth over time roughly match normalised data (3 and 0.5).
        method, adjoint_method: torchsde solvers; ``adjoint_method=None`` backpropagates
            through the solver steps instead (needed for a gradient penalty's double backward).
        dt: fixed solver step, in time units.
    """

    def __init__(
        self,
        data_size: int,
        initial_noise: int = 5,
        noise: int = 3,
        hidden: int = 16,
        width: int = 16,
        layers: int = 1,
        initial_scale: float = 3.0,
        field_scale: float = 0.5,
        method: str = "reversible_heun",
        adjoint_method: str | None = "adjoint_reversible_heun",
        dt: float = 1.0,
    ) -> None:
        super().__init__()
        self.initial_noise, self.noise_size = initial_noise, noise
        self.method, self.adjoint_method, self.dt = method, adjoint_method, dt
        self.initial = lipswish_mlp(initial_noise, hidden, width, layers)
        self.field = _GeneratorField(hidden, noise, width, layers)
        self.readout = nn.Linear(hidden, data_size)
        with torch.no_grad():
            for p in self.initial.parameters():
                p.mul_(initial_scale)
            for p in self.field.parameters():
                p.mul_(field_scale)

    def forward(self, ts: torch.Tensor, initial_noise: torch.Tensor, entropy: int) -> torch.Tensor:
        """Paths at the times ``ts`` (T,) from ``initial_noise`` (B, initial_noise): (B, T, C).

        ``entropy`` seeds the Brownian motion (a torchsde BrownianInterval), so the caller's
        random stream decides every random number of a path.
        """
        x0 = self.initial(initial_noise)
        bm = torchsde.BrownianInterval(
            t0=ts[0], t1=ts[-1], size=(x0.shape[0], self.noise_size), dtype=x0.dtype, device=x0.device, entropy=entropy
        )
        if self.adjoint_method is None:
            xs = torchsde.sdeint(self.field, x0, ts, bm=bm, method=self.method, dt=self.dt)
        else:
            xs = torchsde.sdeint_adjoint(
                self.field, x0, ts, bm=bm, method=self.method, adjoint_method=self.adjoint_method, dt=self.dt
            )
        return self.readout(xs.transpose(0, 1))  # (T, B, hidden) -> (B, T, C)


class _CDEField(nn.Module):
    """f(t, H) (B, hidden, 1 + C): how the state responds to each channel of d(t, Y)."""

    def __init__(self, hidden: int, channels: int, width: int, layers: int) -> None:
        super().__init__()
        self.hidden, self.channels = hidden, channels
        self.net = lipswish_mlp(1 + hidden, hidden * channels, width, layers, tanh=True)

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        th = torch.cat([t.expand(h.shape[0], 1), h], dim=1)
        return self.net(th).view(h.shape[0], self.hidden, self.channels)


def with_quadratic_variation(path: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
    """(B, T, 1 + C) = (time, values) -> (B, T, 1 + 2C): the running sums of the squared
    increments of each value channel, times ``factor``, appended; zero at the first observation.

    The realised quadratic variation measures how much noise a path carries. The signature of a
    piecewise-linear path, and so a CDE driven by it, sees it only through high-order iterated
    integrals (the level-2 term of a value channel with itself is (Y_T - Y_0)^2 / 2, however rough
    the path), so a small critic is nearly blind to a generator that makes too little noise. As a
    channel of the control it enters the critic's first order. The map is injective (the original
    channels are kept), so a critic on the augmented paths still compares the laws of the paths.
    """
    values = path[..., 1:]
    squared = (values[:, 1:] - values[:, :-1]).square().cumsum(dim=1) * factor
    return torch.cat([path, nn.functional.pad(squared, (0, 0, 1, 0))], dim=-1)


class StepInnovations(nn.Module):
    """Running sums of the standardised squared innovations of each value channel.

    The innovation of step t (observation index t -> t + 1) is what a linear one-step predictor
    misses: e_t = (Y_{t+1} - Y_t) - (a_t Y_t + b_t), per channel, with a_t, b_t and the scale s_t
    of e_t fitted by least squares on training paths at each index (:meth:`fit`). For a linear
    SDE such as Ornstein-Uhlenbeck, a_t Y_t + b_t is the drift's share of the step and e_t its
    fresh noise. The running sum of (e_t / s_t)^2 grows by about 1 per step on data, wherever
    the data are quiet or loud: a generator whose noise is off at early times, where the OU
    diffusion 0.4 * 2t / T is near zero and the steps are almost all drift, shows there as
    clearly as late, whereas the plain quadratic variation (:func:`with_quadratic_variation`)
    is dominated by the largest, latest steps. Regular series only: the predictor is indexed by
    observation, so every path must have the ``t_size`` observations it was fitted on.

    Buffers (saved with the critic): ``slope`` a_t, ``offset`` b_t, ``scale`` s_t, each
    (t_size - 1, C) in the units of the values it is fitted on; ``fitted``.
    """

    def __init__(self, t_size: int, channels: int) -> None:
        super().__init__()
        if t_size < 2:
            raise ValueError(f"t_size={t_size}: innovations need at least 2 observations.")
        self.register_buffer("slope", torch.zeros(t_size - 1, channels))
        self.register_buffer("offset", torch.zeros(t_size - 1, channels))
        self.register_buffer("scale", torch.ones(t_size - 1, channels))
        # 1.0 once fitted; a float, because averaged copies (SWA, EMA) average buffers too
        self.register_buffer("fitted", torch.tensor(0.0))

    @torch.no_grad()
    def fit(self, path: torch.Tensor) -> None:
        """Least-squares a_t, b_t and the residuals' standard deviation s_t from training paths
        (N, T, 1 + C) = (time, values), NaN-free (filled as the critic sees them)."""
        if path.shape[1] != len(self.slope) + 1:
            raise ValueError(f"StepInnovations: made for {len(self.slope) + 1} observations, got {path.shape[1]}")
        values = path[..., 1:].double()
        y, step = values[:, :-1], values[:, 1:] - values[:, :-1]
        y_mean, step_mean = y.mean(0), step.mean(0)
        variance = (y - y_mean).square().mean(0).clamp_min(1e-12)
        slope = ((y - y_mean) * (step - step_mean)).mean(0) / variance
        offset = step_mean - slope * y_mean
        residual = step - slope * y - offset
        self.slope.copy_(slope)
        self.offset.copy_(offset)
        # a floor keeps a step the data never move (an interpolated stretch in every path) finite
        self.scale.copy_(residual.std(0).clamp_min(1e-4))
        self.fitted.fill_(1.0)

    def forward(self, path: torch.Tensor) -> torch.Tensor:
        """(B, T, 1 + C) -> (B, T, C): the running sums, zero at the first observation."""
        if float(self.fitted) != 1.0:
            raise RuntimeError("StepInnovations: call fit(training paths) before use.")
        values = path[..., 1:]
        innovation = values[:, 1:] - values[:, :-1] - self.slope * values[:, :-1] - self.offset
        return nn.functional.pad((innovation / self.scale).square().cumsum(dim=1), (0, 0, 1, 0))


class CDEDiscriminator(nn.Module):
    """Critic score (B,) of paths given as (B, T, 1 + C) = (time, values), NaN-free.

    The path is the control of the CDE through its linear interpolation over the observation
    index; irregular observation times enter through the time channel.

    Args:
        data_size: C.
        hidden, width, layers: CDE state size and its vector field's MLP.
        adjoint: solve with the reversible-Heun adjoint (O(1) memory); ``False`` backpropagates
            through the steps (needed for the gradient penalty).
        dt: fixed solver step, in observation-index units.
        quadratic_variation: if > 0, drive the CDE with C more channels, the running quadratic
            variation of each value channel (:func:`with_quadratic_variation`) times this factor,
            which sets its weight against the value channels under the critic's Lipschitz bound.
            0 (default) is the reference.
        innovation_variation: if > 0, C more channels after those: the running sums of the
            standardised squared innovations (:class:`StepInnovations`, fitted with
            ``innovations.fit`` before use) times this factor. 0 (default): off.
        t_size: observations per path; needed with ``innovation_variation``.
    """

    def __init__(self, data_size: int, hidden: int = 16, width: int = 16, layers: int = 1, adjoint: bool = True,
                 dt: float = 1.0, quadratic_variation: float = 0.0, innovation_variation: float = 0.0,
                 t_size: int | None = None) -> None:  # fmt: skip
        super().__init__()
        self.adjoint, self.dt, self.quadratic_variation = adjoint, dt, quadratic_variation
        self.innovation_variation = innovation_variation
        if quadratic_variation < 0 or innovation_variation < 0:
            raise ValueError(
                f"quadratic_variation={quadratic_variation}, innovation_variation={innovation_variation}: "
                "factors >= 0 (0: off)."
            )
        if innovation_variation > 0:
            if t_size is None:
                raise ValueError("innovation_variation > 0 needs t_size, the observations per path.")
            self.innovations = StepInnovations(t_size, data_size)
        channels = 1 + data_size * (1 + (quadratic_variation > 0) + (innovation_variation > 0))
        self.initial = lipswish_mlp(channels, hidden, width, layers)
        self.field = _CDEField(hidden, channels, width, layers)
        self.readout = nn.Linear(hidden, 1)

    def forward(self, path: torch.Tensor) -> torch.Tensor:
        # innovations first: they read every channel after time, which the QV channels are about to join
        extra = self.innovations(path) * self.innovation_variation if self.innovation_variation > 0 else None
        if self.quadratic_variation > 0:
            path = with_quadratic_variation(path, self.quadratic_variation)
        if extra is not None:
            path = torch.cat([path, extra], dim=-1)
        control = torchcde.LinearInterpolation(path)  # no NaN: the coefficients are the path itself
        h0 = self.initial(control.evaluate(control.interval[0]))
        options = dict(method="reversible_heun", backend="torchsde", dt=self.dt)
        if self.adjoint:  # the adjoint solve carries gradients for what the vector field reads
            params = tuple(p for p in self.field.parameters() if p.requires_grad)
            options.update(adjoint_method="adjoint_reversible_heun", adjoint_params=(path, *params))
        hs = torchcde.cdeint(X=control, func=self.field, z0=h0, t=control.interval, adjoint=self.adjoint, **options)
        return self.readout(hs[:, -1]).squeeze(1)

    @torch.no_grad()
    def clip_weights(self) -> None:
        """|W_ij| <= 1 / out_features for every linear layer (biases free): with LipSwish and
        tanh, each layer and so the critic is Lipschitz, as a Wasserstein critic must be."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                bound = 1.0 / module.out_features
                module.weight.clamp_(-bound, bound)
