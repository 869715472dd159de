"""Networks for calorimeter showers read out in separate layers (no padded common canvas).

A shower is represented the way it is generated back, so that energy and sparsity are modelled
honestly rather than through a soft penalty:

* layer energies ``E_l`` as standardised ``y_l = log(E_l / E_inc + eps)`` (Gaussian head),
* which cells are hit (``x > 0``; Bernoulli head per cell),
* how the layer energy is shared among the hit cells (a softmax over hit cells, or log-normal
  fractions per cell, :func:`sample_cells`),
* in chosen layers, first the brightest cells: their shares, then where they are
  (:func:`brightest_cell_nll`), the other cells sharing the rest.

Decoding multiplies the three, so each generated layer holds exactly its sampled energy and
exactly its sampled set of hit cells. Cell energies are in MeV, incident energies in GeV.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hepgen.nn.mlp import mlp

#: log(2 pi), in every Gaussian log-density.
LOG_2PI = math.log(2 * math.pi)
#: Floor added to E_l / E_inc before the log: layers with no energy sit at log(1e-6), far below data.
LOG_FRACTION_EPS = 1e-6
#: Largest layer energy over incident energy that decoding returns (physically at most ~1).
MAX_LAYER_FRACTION = 2.0
#: Incident energies are mapped by log10(E / 10 GeV): 1-100 GeV -> [-1, 1].
ENERGY_SCALE_GEV = 10.0


def condition_features(energy_gev: torch.Tensor, particle: torch.Tensor, num_particles: int) -> torch.Tensor:
    """Condition vector (B, 1 + num_particles if > 1) from E_inc (B, 1) GeV and particle labels (B,)."""
    x = energy_gev / ENERGY_SCALE_GEV
    # torch.onnx writes log10 with ln 10 rounded to float32 (up to 1e-5 apart in the draws of a float64
    # graph's tails); spelt out, the constant is one hepgen.export restores exactly
    features = [torch.log(x) / math.log(10.0) if torch.compiler.is_exporting() else torch.log10(x)]
    if num_particles > 1:
        features.append(nn.functional.one_hot(particle.long(), num_particles).to(energy_gev.dtype))
    return torch.cat(features, dim=1)


class ShowerRepresentation(nn.Module):
    """MeV showers <-> (standardised log layer fractions, hit masks, sharing fractions).

    The standardisation statistics are buffers fitted once on training data
    (:meth:`fit`) and stored with the model's weights, so evaluation never refits them.

    Args:
        layer_cells: number of cells in each layer, e.g. ``[288, 144, 72]``.
    """

    def __init__(self, layer_cells: list[int]) -> None:
        super().__init__()
        self.layer_cells = list(layer_cells)
        n = len(layer_cells)
        self.register_buffer("y_mean", torch.zeros(n))
        self.register_buffer("y_std", torch.ones(n))
        self.register_buffer("fitted", torch.tensor(False))

    def layer_log_fractions(self, layers: list[torch.Tensor], energy_gev: torch.Tensor) -> torch.Tensor:
        """Unstandardised ``log(E_l / E_inc + eps)``, (B, n_layers), from cells (B, n_l) in MeV."""
        e_layer = torch.stack([x.sum(1) for x in layers], dim=1)
        return torch.log(e_layer / (1000.0 * energy_gev) + LOG_FRACTION_EPS)

    @torch.no_grad()
    def fit(self, layers: list[torch.Tensor], energy_gev: torch.Tensor) -> None:
        y = self.layer_log_fractions(layers, energy_gev)
        self.y_mean.copy_(y.mean(0))
        self.y_std.copy_(y.std(0).clamp_min(1e-3))
        self.fitted.fill_(True)

    def encode_energies(self, layers: list[torch.Tensor], energy_gev: torch.Tensor) -> torch.Tensor:
        """Standardised layer energies, (B, n_layers)."""
        return (self.layer_log_fractions(layers, energy_gev) - self.y_mean) / self.y_std

    def decode_energies(self, y: torch.Tensor, energy_gev: torch.Tensor) -> torch.Tensor:
        """Layer energies in MeV, (B, n_layers), from standardised values.

        A layer holds at most ``MAX_LAYER_FRACTION`` of the incident energy: a far-tail draw of a
        layer whose log-fraction spreads over decades (a hadronic layer that photons rarely reach)
        would otherwise overflow float32 to inf, and inf times a zero cell is NaN.
        """
        log_fraction = (y * self.y_std + self.y_mean).clamp(max=math.log(MAX_LAYER_FRACTION))
        fraction = torch.exp(log_fraction) - LOG_FRACTION_EPS
        return fraction.clamp_min(0.0) * (1000.0 * energy_gev)

    @staticmethod
    def sharing_fractions(x: torch.Tensor) -> torch.Tensor:
        """Fraction of the layer energy in each cell, (B, n_l); rows of empty layers are 0."""
        total = x.sum(1, keepdim=True)
        return torch.where(total > 0, x / total.clamp_min(1e-30), torch.zeros_like(x))

    @staticmethod
    def shape_features(sharing: torch.Tensor) -> torch.Tensor:
        """Encoder input per cell: the sharing fractions (B, n_l) on a log scale in [0, 1]."""
        return torch.log1p(1000.0 * sharing) / math.log(1001.0)


class LayerCentroids(nn.Module):
    """Where the energy of chosen layers sits: the energy-weighted mean cell index along each axis
    of each layer's (rows, columns) grid, standardised, (B, 2 k) for k layers.

    The centre moves with the particle's impact point by a fraction of a cell (CaloGAN layer 1:
    0.17 cells r.m.s., and layer 0's fine strips follow it with correlation 0.92), and it decides
    how the core cells share the layer. Given to the decoder with the layer energies, the cells
    are drawn for a centre drawn first, so the impact point does not have to be found in z: a
    VAE whose codes do not carry it (a stall that some seeds never leave in 40 epochs) makes every
    shower centred. An empty layer sits at its grid's middle. Statistics are buffers fitted once on
    training data (:meth:`fit`), as in :class:`ShowerRepresentation`.

    Args:
        shapes: (rows, columns) of each layer, e.g. ``[(3, 96), (12, 12)]``.
    """

    def __init__(self, shapes: list[tuple[int, int]]) -> None:
        super().__init__()
        self.shapes = [tuple(shape) for shape in shapes]
        self.register_buffer("c_mean", torch.zeros(2 * len(shapes)))
        self.register_buffer("c_std", torch.ones(2 * len(shapes)))
        self.register_buffer("fitted", torch.tensor(False))

    def centres(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """Unstandardised centres (B, 2 k) in cell indices, rows then columns of each layer, from the
        layers' cells (B, rows * columns) in any energy unit."""
        centres = []
        for x, (rows, cols) in zip(layers, self.shapes):
            grid = x.reshape(-1, rows, cols)
            total = grid.sum((1, 2))
            weights = grid / total.clamp_min(1e-30)[:, None, None]
            for axis, n in ((2, rows), (1, cols)):
                index = torch.arange(n, dtype=x.dtype, device=x.device)
                centre = (weights.sum(axis) * index).sum(1)  # a sum, not a matmul: full precision under autocast
                centres.append(torch.where(total > 0, centre, torch.full_like(centre, (n - 1) / 2)))
        return torch.stack(centres, dim=1)

    @torch.no_grad()
    def fit(self, layers: list[torch.Tensor]) -> None:
        c = self.centres(layers)
        self.c_mean.copy_(c.mean(0))
        self.c_std.copy_(c.std(0).clamp_min(1e-3))
        self.fitted.fill_(True)

    def forward(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """Standardised centres, (B, 2 k)."""
        return (self.centres(layers) - self.c_mean) / self.c_std


class LayerwiseEncoder(nn.Module):
    """q(z | shower, condition): one MLP branch per layer, merged with energies and condition.

    Input: cells ``[(B, n_0), (B, n_1), ...]``, standardised energies (B, L), condition (B, C).
    Output: mean and log-variance of z, each (B, latent_dim).
    """

    def __init__(self, layer_cells: list[int], cond_dim: int, latent_dim: int, hidden: int, branch: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(mlp([n, branch, branch], final_activation=True) for n in layer_cells)
        merged = branch * len(layer_cells) + len(layer_cells) + cond_dim
        self.trunk = mlp([merged, hidden, hidden, 2 * latent_dim])

    def forward(self, shapes: list[torch.Tensor], energies: torch.Tensor, cond: torch.Tensor):
        h = torch.cat([b(s) for b, s in zip(self.branches, shapes)] + [energies, cond], dim=1)
        mean, log_var = self.trunk(h).chunk(2, dim=1)
        return mean, log_var.clamp(-12.0, 8.0)


class LayerwiseDecoder(nn.Module):
    """p(shower | z, condition): a shared trunk, an energy head and one branch per layer.

    Output: energy mean and log-variance (B, L) each, and per layer the hit logits (B, n_l) and
    the sharing parameters (B, share_params * n_l): per cell, a softmax logit (``share_params``
    1), the mean and log-scale of its log-fraction (2, see :func:`lognormal_sharing_nll`) or the
    weights, means and log-scales of a mixture (3 K, :func:`lognormal_mixture_sharing_nll`);
    ``share_params`` is one number for all layers or one per layer.

    With ``given_energies`` the layer branches also see the standardised layer energies (B, L):
    the cells are drawn for the layer energies drawn first, p(E | z) p(cells | z, E), as the two
    stages of CaloFlow. A layer's energy says much about its cells that z need not carry: in the
    last CaloGAN layer, 0.1 % of the shower, whether a shower particle reached it at all.
    ``extra_summaries`` more per-shower numbers (the layers' centres, :class:`LayerCentroids`) are
    drawn with the energies by the same head and seen by the branches the same way: the head's
    output is then (B, L + extra_summaries) each, energies first; the ``mixture_summaries`` last of
    them are drawn instead from a mixture of ``summary_components`` Gaussians each
    (:meth:`summary_mixture`), for a summary whose values gather in separate modes, and the head
    leaves them out; each of these after the first is drawn given the ones before it (a small
    network of h and those values adds to its mixture's parameters), so the second brightest cell's
    share can follow the first's. ``extra_outputs`` (one count per layer) more outputs of a layer's
    branch follow its sharing parameters (the location logits of :func:`brightest_cell_nll`).
    """

    def __init__(
        self,
        layer_cells: list[int],
        cond_dim: int,
        latent_dim: int,
        hidden: int,
        branch: int,
        share_params: int | list[int] = 1,
        given_energies: bool = False,
        extra_summaries: int = 0,
        extra_outputs: list[int] | None = None,
        mixture_summaries: int = 0,
        summary_components: int = 3,
    ) -> None:
        super().__init__()
        if extra_summaries and not given_energies:
            raise ValueError("extra per-shower summaries are drawn for the cells: they need given_energies.")
        self.layer_cells = list(layer_cells)
        self.share_params = [share_params] * len(layer_cells) if isinstance(share_params, int) else list(share_params)
        self.given_energies = given_energies
        # more parameters per shower appended to a layer's sharing parameters (a brightest-cell head)
        self.extra_outputs = list(extra_outputs or [0] * len(layer_cells))
        n_summaries = len(layer_cells) + extra_summaries
        self.trunk = mlp([latent_dim + cond_dim, hidden, hidden], final_activation=True)
        self.energy_head = nn.Linear(hidden, 2 * (n_summaries - mixture_summaries))
        # the last summaries, each a mixture of Gaussians (weight logits, means, log-scales)
        self.summary_components = summary_components
        self.mixture_head = nn.Linear(hidden, 3 * summary_components * mixture_summaries) if mixture_summaries else None
        # and each after the first also from the ones before it (the next brightest cell's share
        # depends on the first's: two particles or one), drawn in turn
        self.mixture_context = nn.ModuleList(
            mlp([hidden + j, 64, 3 * summary_components]) for j in range(1, mixture_summaries)
        )
        branch_in = hidden + (n_summaries if given_energies else 0)
        self.branches = nn.ModuleList(
            mlp([branch_in, branch, (1 + p) * n + extra])
            for n, p, extra in zip(layer_cells, self.share_params, self.extra_outputs)
        )

    def energies(self, z: torch.Tensor, cond: torch.Tensor, trunk_bfloat16: bool = False):
        """The trunk's features h (B, hidden) and the layer energies' mean and log-variance (B, L),
        (B, L + extra_summaries) with the extra summaries, all float32 (float64 in a float64 model);
        ``trunk_bfloat16`` runs the trunk (under autocast) in bfloat16, the energy head still in float32."""
        with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=trunk_bfloat16):
            h = widened(self.trunk(torch.cat([z, cond], dim=1)))
        e_mean, e_log_var = self.energy_head(h).chunk(2, dim=1)
        return h, e_mean, e_log_var.clamp(-10.0, 5.0)

    def summary_mixture(self, h: torch.Tensor, previous: torch.Tensor):
        """The weight logits, means and log-scales (B, K, m) of the ``mixture_summaries`` last
        summaries, each a mixture of K = ``summary_components`` Gaussians, from the trunk's features
        and, for summary j, the values of the summaries before it (``previous[:, :j]`` of (B, m))."""
        head = self.mixture_head(h).unflatten(1, (3, self.summary_components, -1))
        params = [self._summary_params(head, h, previous, j) for j in range(head.shape[-1])]
        return torch.stack(params, dim=-1).unbind(1)

    def summary_mixture_from_uniform(self, h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The mixture summaries (B, m) drawn one after the other, each from its uniforms ``v[:, j]``
        of (B, m)."""
        head = self.mixture_head(h).unflatten(1, (3, self.summary_components, -1))
        drawn = []
        for j in range(head.shape[-1]):
            previous = torch.cat(drawn, 1) if drawn else None  # summary 0 has none before it
            logits, mean, log_scale = self._summary_params(head, h, previous, j).unsqueeze(-1).unbind(1)
            drawn.append(gaussian_mixture_from_uniform(logits, mean, log_scale, v[:, j : j + 1]))
        return torch.cat(drawn, 1)

    def _summary_params(
        self, head: torch.Tensor, h: torch.Tensor, previous: torch.Tensor | None, j: int
    ) -> torch.Tensor:
        """Summary j's (B, 3, K) mixture parameters: the head's (B, 3, K, m), plus for j > 0 what
        its context network makes of h and the summaries before it."""
        if j == 0:
            return head[..., 0]
        return head[..., j] + self.mixture_context[j - 1](torch.cat([h, previous[:, :j]], 1)).unflatten(1, (3, -1))

    def cells(self, h: torch.Tensor, energies: torch.Tensor | None = None):
        """Per layer the hit logits (B, n_l) and sharing parameters, given the trunk's features and,
        with ``given_energies``, the standardised layer energies (B, L) the cells are drawn for."""
        if self.given_energies:
            if energies is None:
                raise ValueError("this decoder draws the cells given the layer energies: pass energies (B, L).")
            h = torch.cat([h, energies], dim=1)
        heads = [
            b(h).split([n, p * n + extra], dim=1)
            for b, n, p, extra in zip(self.branches, self.layer_cells, self.share_params, self.extra_outputs)
        ]
        return [hl for hl, _ in heads], [sp for _, sp in heads]

    @torch.no_grad()
    def fold_two_component_logits(self) -> None:
        """For generation only: in every layer whose cells are mixtures of two Gaussians (6 sharing
        parameters), replace the two weight logits' output rows of its branch by one row, their
        difference (all that the mixture's weights depend on), leaving 5 parameters per cell
        (:func:`two_gaussians_from_uniform`). The cells drawn are the same up to rounding, from a
        seventh fewer outputs of the largest matrices; the likelihoods of training no longer apply."""
        for i, (branch, n) in enumerate(zip(self.branches, self.layer_cells)):
            if self.share_params[i] != 6:
                continue
            last = branch[-1]
            weight, bias = last.weight.clone(), last.bias.clone()
            # rows: n hit logits, then logit 0 and logit 1 of each cell, then means, log-scales, extra
            weight[2 * n : 3 * n] -= weight[n : 2 * n]
            bias[2 * n : 3 * n] -= bias[n : 2 * n]
            keep = torch.cat([torch.arange(n), torch.arange(2 * n, len(bias))])
            # the same layer shrunk in place: a new nn.Linear would draw its initial weights from the
            # global random stream, and predict draws the showers from that stream
            last.weight, last.bias = nn.Parameter(weight[keep]), nn.Parameter(bias[keep])
            last.out_features = len(keep)
            self.share_params[i] = 5

    def forward(self, z: torch.Tensor, cond: torch.Tensor, energies: torch.Tensor | None = None):
        h, e_mean, e_log_var = self.energies(z, cond)
        hit_logits, share_params = self.cells(h, energies)
        return e_mean, e_log_var, hit_logits, share_params


#: Bounds of the log-scale of a cell's log-fraction: 1e-3 (a cell fixed by z) to e^2 (a factor of 7).
LOG_SCALE_RANGE = (-7.0, 2.0)


class _ClampPullingBack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.low, ctx.high = low, high
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        # a descent step moves x by -grad: outside the range, keep only gradients that move x back
        pushes_out = ((x > ctx.high) & (grad < 0)) | ((x < ctx.low) & (grad > 0))
        return grad.masked_fill(pushes_out, 0.0), None, None


def clamp_pulling_back(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """``x.clamp(low, high)`` whose gradient can pull an out-of-range value back into the range.

    A plain clamp has zero gradient outside its range, so a network output that one early step
    pushed past a bound stays there for good, whatever the data say later. For a cell's log-scale
    this happened in training: a few layer-1 cells of some showers stuck at the ceiling e^2 with a
    real spread of e^-1, an almost flat density whose draws give one cell the whole layer. Here the
    gradient is kept where a descent step moves x towards the range and dropped where it would
    push x further out; inside the range it is the clamp's (and training is unchanged).
    """
    return _ClampPullingBack.apply(x, low, high)


#: EM steps that find the normalisation shift of a mixture sharing (one Gaussian per cell needs none).
SHIFT_EM_STEPS = 5


def lognormal_sharing_nll(params: torch.Tensor, sharing: torch.Tensor, hit: torch.Tensor) -> torch.Tensor:
    """-log p of the hit cells' fractions of their layer energy, (B,), nats.

    Each hit cell's log-fraction log(x_i / E_l) is Gaussian given z, with mean and log-scale from
    ``params`` (B, 2 n): the shape comes from z, the cell-to-cell fluctuations around it (a
    brightest cell a little brighter, a neighbour a little fainter) from the per-cell noise, which
    a softmax sharing cannot produce. Cells not hit contribute nothing.

    Args:
        params: (B, 2 n), the means then the log-scales.
        sharing: (B, n) fractions of the layer energy (:meth:`ShowerRepresentation.sharing_fractions`).
        hit: (B, n) bool, the cells with energy.
    """
    mean, log_scale = params.chunk(2, dim=1)
    log_scale = clamp_pulling_back(log_scale, *LOG_SCALE_RANGE)
    u = torch.log(sharing.clamp_min(1e-30))
    nll = 0.5 * ((u - mean) * torch.exp(-log_scale)) ** 2 + log_scale + 0.5 * LOG_2PI
    return (nll * hit).sum(1)


def gaussian_mixture_nll(logits: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, y: torch.Tensor):
    """-log p (B, m) nats of values ``y`` (B, m), each from a mixture of K Gaussians with weight
    logits, means and log-scales (B, K, m)."""
    log_scale = clamp_pulling_back(log_scale, *LOG_SCALE_RANGE)
    log_density = -0.5 * ((y.unsqueeze(1) - mean) * torch.exp(-log_scale)) ** 2 - log_scale - 0.5 * LOG_2PI
    return -torch.logsumexp(torch.log_softmax(logits, dim=1) + log_density, dim=1)


def lognormal_mixture_sharing_nll(params: torch.Tensor, sharing: torch.Tensor, hit: torch.Tensor) -> torch.Tensor:
    """-log p of the hit cells' fractions of their layer energy, (B,), nats, for a mixture per cell.

    Each hit cell's log-fraction is drawn from a mixture of K Gaussians with weights, means and
    log-scales from ``params`` (B, 3 K n): a cell of a real shower is either reached only by soft
    photons (a deposit of a fraction of an MeV, whatever the layer holds) or by one of the shower's
    few energetic particles (a large share of the layer). One Gaussian in log-fraction spreads
    over both and makes every cell a little of each; a mixture keeps the two apart, so a layer
    whose energy one particle brought has one bright cell, as in the data. Like
    :func:`lognormal_sharing_nll` it scores log s as the cells' log-energies
    (:func:`shift_marginal_sharing_nll` integrates their common shift out).

    Args:
        params: (B, 3 K n): the K weight logits of every cell, then the K means, then the K
            log-scales; within each block component k of cell i at k * n + i.
        sharing: (B, n) fractions of the layer energy.
        hit: (B, n) bool, the cells with energy.
    """
    logits, mean, log_scale = params.unflatten(1, (3, -1, sharing.shape[1])).unbind(1)  # each (B, K, n)
    nll = gaussian_mixture_nll(logits, mean, log_scale, torch.log(sharing.clamp_min(1e-30)))
    return (nll * hit).sum(1)


def shift_marginal_sharing_nll(
    params: torch.Tensor, sharing: torch.Tensor, hit: torch.Tensor, components: int = 1
) -> torch.Tensor:
    """-log p of the hit cells' fractions (B,), nats: the density of what :func:`sample_cells`
    draws (exact for one Gaussian per cell, by Laplace's method for a mixture), with ``params`` as
    :func:`lognormal_sharing_nll` (B, 2 n) or as :func:`lognormal_mixture_sharing_nll` (B, 3 K n)
    for ``components`` K.

    The fractions only show differences of the cells' log-energies u (u = log s + c for any c), so
    the shift c is integrated out (:func:`_shift_marginal_nll`). The two functions above score
    log s as if it were u: they count the shower-to-shower spread of the normalisation as per-cell
    noise, and fitted to fractions drawn from known parameters they return faint cells too noisy and
    bright ones too steady. A layer with fewer than two hit cells scores 0 here.
    """
    if components == 1:
        mean, log_scale = (p.unsqueeze(1) for p in params.chunk(2, dim=1))  # (B, 1, n)
        log_weights = torch.zeros_like(mean)
    else:
        logits, mean, log_scale = params.unflatten(1, (3, components, sharing.shape[1])).unbind(1)  # (B, K, n)
        log_weights = torch.log_softmax(logits, dim=1)
    steps = 0 if components == 1 else SHIFT_EM_STEPS
    return _shift_marginal_nll(log_weights, mean, clamp_pulling_back(log_scale, *LOG_SCALE_RANGE), sharing, hit, steps)


def _shift_marginal_nll(
    log_weights: torch.Tensor,
    mean: torch.Tensor,
    log_scale: torch.Tensor,
    sharing: torch.Tensor,
    hit: torch.Tensor,
    em_steps: int,
) -> torch.Tensor:
    """-log p (B,) of fractions s = softmax(u) (B, n), each u_i from a mixture with log-weights,
    means and log-scales (B, K, n), the unseen shift c in u = log s + c integrated out.

    Laplace's method: f(c) = sum_i log m_i(log s_i + c) is maximised by EM (each step the
    responsibility- and precision-weighted mean of mu - log s) and

        -log p = -f(c*) + 1/2 log(-f''(c*) / 2 pi)

    (up to the Jacobian prod 1/s_i, free of parameters). For one Gaussian per cell f is quadratic
    and the start, c* = sum w (mu - log s) / sum w with w = 1/sigma^2, is exact:
    -log p = 1/2 sum w (mu - log s - c*)^2 + sum log sigma + (n - 1)/2 log 2 pi + 1/2 log sum w.
    c* is not differentiated: at a maximum f'(c*) = 0, so the gradient of f(c*) is exact; that of
    the curvature term leaves out its dependence through c* (exact for one Gaussian per cell).
    """
    hit = hit.to(mean.dtype)
    log_s = torch.log(sharing.clamp_min(1e-30)).unsqueeze(1)  # (B, 1, n)
    precision = torch.exp(-2.0 * log_scale)

    def log_terms(c: torch.Tensor) -> torch.Tensor:  # log w_k + log N(log s + c; mu_k, sigma_k): (B, K, n)
        return log_weights - 0.5 * precision * (log_s + c.view(-1, 1, 1) - mean) ** 2 - log_scale - 0.5 * LOG_2PI

    with torch.no_grad():
        # start: the shift for one Gaussian per cell with the mixture's mean and variance
        weights = log_weights.exp()
        cell_mean = (weights * mean).sum(1, keepdim=True)
        cell_var = (weights * (precision.reciprocal() + (mean - cell_mean) ** 2)).sum(1, keepdim=True)
        inverse_var = hit.unsqueeze(1) / cell_var
        c = (inverse_var * (cell_mean - log_s)).sum((1, 2)) / inverse_var.sum((1, 2)).clamp_min(1e-30)
        for _ in range(em_steps):
            em_weight = torch.softmax(log_terms(c), dim=1) * precision * hit.unsqueeze(1)
            c = (em_weight * (mean - log_s)).sum((1, 2)) / em_weight.sum((1, 2)).clamp_min(1e-30)
    terms = log_terms(c)
    f = (torch.logsumexp(terms, dim=1) * hit).sum(1)
    # -f''(c) = sum_i [E_r(w) - Var_r(score)] over each cell's responsibilities r, with the score
    # w (mu - log s - c) of each component; the centred variance keeps float32 from cancelling
    # two terms of up to e^14 each when a component is narrow
    r = torch.softmax(terms, dim=1)
    score = precision * (mean - log_s - c.view(-1, 1, 1))
    score_var = (r * (score - (r * score).sum(1, keepdim=True)) ** 2).sum(1)
    em_curvature = ((r * precision).sum(1) * hit).sum(1)
    curvature = (((r * precision).sum(1) - score_var) * hit).sum(1)
    # after a few EM steps a broad, overlapping mixture may not sit at a maximum yet (f'' >= 0 there);
    # a floor at a thousandth of the always-positive EM term caps the spurious gain at 3.5 nats
    curvature = torch.maximum(curvature, 1e-3 * em_curvature)
    nll = -f + 0.5 * torch.log(curvature.clamp_min(1e-30)) - 0.5 * LOG_2PI
    # one hit cell holds the whole layer whatever the parameters (Laplace's method would miss the
    # other components' mass there); an empty layer has nothing to share
    return torch.where(hit.sum(1) > 1, nll, torch.zeros_like(nll))


#: Smallest uniform fed to the Gaussian inverse CDF (and 1 minus it the largest): 2^-24, the spacing
#: of torch's float32 uniforms, so a draw of exactly 0 gives -5.3 sigma instead of -inf.
_UNIFORM_FLOOR = 2.0**-24

# Giles' single-precision erfinv (M. Giles, "Approximating the erfinv function", GPU Computing Gems
# Jade Edition, 2011): a polynomial in w - 2.5 for the central region (w < 5) and in sqrt(w) - 3 for
# the tails, w = -log(1 - x^2), highest power first
_ERFINV_CENTRAL = (
    2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
    -0.00125372503, -0.00417768164, 0.246640727, 1.50140941,
)  # fmt: skip
_ERFINV_TAIL = (
    -0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
    -0.0076224613, 0.00943887047, 1.00167406, 2.83297682,
)  # fmt: skip


def widened(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 (from bfloat16 network outputs), or as it is in float64: sampling computes in
    at least float32, and in float64 throughout in a model exported in float64 (:mod:`hepgen.export`)."""
    return x if x.dtype == torch.float64 else x.float()


def _horner(coefficients: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    """The polynomial with ``coefficients`` (highest power first) at ``x``."""
    result = torch.full_like(x, coefficients[0])
    for c in coefficients[1:]:
        result = result * x + c
    return result


def standard_normal_quantile(v: torch.Tensor) -> torch.Tensor:
    """Standard normal draws from uniforms ``v`` on [0, 1) by inversion: sqrt(2) erfinv(2 v - 1).

    Run eagerly it is ``torch.erfinv``, one vectorised kernel (``torch.special.ndtri`` takes 3.6
    times as long on a CPU). Compiled (:class:`~hepgen.models.calo_vae.CompiledShowerGenerator`)
    it is Giles' polynomial, element-wise arithmetic that fuses with the rest of a cell's draw: the
    compiler has no vectorised erfinv, and its scalar one took the fused draw of 4,096 showers'
    layer-0 cells from 2.3 to 38 ms (2 threads). The two agree within float32 erfinv's error: about
    1e-6, up to 0.04 beyond 5 sigma, where 2 v - 1 rounds (the polynomial, with 1 - x^2 taken as
    4 v (1 - v), is within 1.3e-6 of the float64 quantile for every float32 v).
    """
    v = v.clamp(_UNIFORM_FLOOR, 1.0 - _UNIFORM_FLOOR)
    if not torch.compiler.is_compiling():
        return torch.erfinv(2.0 * v - 1.0) * math.sqrt(2.0)
    w = -torch.log(4.0 * v * (1.0 - v))
    erfinv_over_x = torch.where(
        w < 5.0, _horner(_ERFINV_CENTRAL, w - 2.5), _horner(_ERFINV_TAIL, torch.sqrt(w) - 3.0)
    )
    return erfinv_over_x * (2.0 * v - 1.0) * math.sqrt(2.0)


def gaussian_mixture_from_uniform(
    logits: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """One draw (B, n) from each of n mixtures of K Gaussians, with weight logits, means and
    log-scales (B, K, n), made from one uniform each ``v`` (B, n) by inversion: the component is the
    first whose cumulative weight exceeds v, and (v - W_{k-1}) / w_k, again uniform on [0, 1) and
    independent of the choice, gives its Gaussian through the inverse CDF.

    The component's parameters are picked by comparisons, not gathered, so the whole draw is
    element-wise (and fuses when compiled).
    """
    weight = torch.softmax(widened(logits), dim=1)
    upper, width = weight[:, 0], weight[:, 0]
    low = torch.zeros_like(v)
    mu, sigma_log = widened(mean[:, 0]), widened(log_scale[:, 0])
    for k in range(1, weight.shape[1]):
        beyond = v >= upper  # past component k - 1: component k or later
        low = torch.where(beyond, upper, low)
        width = torch.where(beyond, weight[:, k], width)
        mu = torch.where(beyond, widened(mean[:, k]), mu)
        sigma_log = torch.where(beyond, widened(log_scale[:, k]), sigma_log)
        upper = upper + weight[:, k]
    return _gaussian_from_uniform(((v - low) / width).clamp(0.0, 1.0), mu, sigma_log)


def _gaussian_from_uniform(v: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Draws of N(mean, exp(log_scale)^2) from uniforms ``v``, all (B, n), the scale kept in range."""
    return standard_normal_quantile(v) * torch.exp(log_scale.clamp(*LOG_SCALE_RANGE)) + mean


def sample_gaussian_mixture(
    logits: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draws (B, m) from the mixtures of :func:`gaussian_mixture_nll`, one uniform each
    (:func:`gaussian_mixture_from_uniform`)."""
    v = torch.rand(mean[:, 0].shape, generator=generator, device=mean.device)
    return gaussian_mixture_from_uniform(logits, mean, log_scale, v)


def two_gaussians_from_uniform(
    logit_difference: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """:func:`gaussian_mixture_from_uniform` for K = 2, given only the difference d = l_1 - l_0 (B, n)
    of the two weight logits (all a softmax of two sees): w_0 = 1 / (1 + e^d), so component 1 is
    drawn when t = v (1 + e^d) = v / w_0 reaches 1, and its uniform is (v - w_0) / w_1 =
    v - (1 - v) / e^d; component 0's is t. One exponential and one division per cell, where the
    softmax takes two and two. |d| is capped at 80 (a weight of 2e-35 instead of 0), so that e^d
    stays finite and a uniform of exactly 0 gives no 0 * inf.

    Args:
        logit_difference: (B, n); mean, log_scale: (B, 2, n); v: (B, n) uniforms on [0, 1).
    """
    e = torch.exp(widened(logit_difference).clamp(-80.0, 80.0))
    t = v * (1.0 + e)
    second = t >= 1.0
    v_component = torch.where(second, v - (1.0 - v) / e, t)
    mu = torch.where(second, widened(mean[:, 1]), widened(mean[:, 0]))
    sigma_log = torch.where(second, widened(log_scale[:, 1]), widened(log_scale[:, 0]))
    return _gaussian_from_uniform(v_component, mu, sigma_log)


def cells_from_uniform(
    hit_logits: torch.Tensor, params: torch.Tensor, share_params: int, u: torch.Tensor
) -> torch.Tensor:
    """A layer's cells (:func:`sample_cells`) drawn with the uniforms ``u`` (B, n) given, one per cell.

    ``share_params`` 5 is the two-Gaussian mixture (6) with its weight logits folded into their
    difference, (d, means, log-scales) per cell: the parameters of a decoder folded for generation
    (:meth:`LayerwiseDecoder.fold_two_component_logits`), which draws the same cells.
    """
    n = hit_logits.shape[1]
    # v = u / p with p = sigmoid(logit), as u (1 + e^-logit), with no division: the cell is hit when
    # v < 1. A logit below -80 (p < 2e-35, and -inf where a cell is ruled out) is never hit and its
    # e^-logit is capped, so that nothing here is inf or NaN: inductor compiles its C++ assuming
    # finite math, where a comparison with NaN is not reliable
    logit = widened(hit_logits)
    v = u * (1.0 + torch.exp((-logit).clamp(max=80.0)))
    hits = (v < 1.0) & (logit > -80.0)
    if share_params == 1:
        log_fraction = widened(params)
    else:
        v = v.clamp(max=1.0)  # uniform on [0, 1) given a hit: the pass that reuses u
        if share_params == 2:
            mean, log_scale = widened(params).chunk(2, dim=1)
            log_fraction = _gaussian_from_uniform(v, mean, log_scale)
        elif share_params in (5, 6):
            logits, means, log_scales = params.split([(share_params - 4) * n, 2 * n, 2 * n], dim=1)
            d = logits if share_params == 5 else widened(logits[:, n:]) - widened(logits[:, :n])
            means, log_scales = means.unflatten(1, (2, n)), log_scales.unflatten(1, (2, n))
            log_fraction = two_gaussians_from_uniform(d, means, log_scales, v)
        else:
            logits, means, log_scales = params.unflatten(1, (3, -1, n)).unbind(1)  # (B, K, n)
            log_fraction = gaussian_mixture_from_uniform(logits, means, log_scales, v)
    return torch.softmax(log_fraction.masked_fill(~hits, -1e4), dim=1) * hits


def sample_cells(
    hit_logits: torch.Tensor,
    params: torch.Tensor,
    share_params: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A layer's cells drawn from the decoder's heads: fractions (B, n) of the layer energy, 0 in the
    cells not hit and summing to 1 over the hit ones (all 0 when none is hit).

    Each cell is hit with probability sigmoid(``hit_logits``) (B, n). Among the hit cells the layer
    energy is shared by a softmax of ``params`` (B, n) (``share_params`` 1); with 2 per cell each
    hit cell's log-fraction is drawn from its Gaussian and the fractions are renormalised, so the
    layer keeps exactly its sampled energy (a logistic-normal sharing,
    :func:`lognormal_sharing_nll`); with 3 K from its mixture of K Gaussians
    (:func:`lognormal_mixture_sharing_nll`), renormalised the same way.

    One uniform u per cell makes all three draws, by inversion: the cell is hit if u < p, and then
    u / p is again uniform and independent of the hit; it picks the mixture component by the
    cumulative weights and, rescaled into that component's interval, gives the Gaussian through
    its inverse CDF (:func:`cells_from_uniform`). Generation is bound by torch's serial CPU
    random-number generator, and this draws one number per cell where hit, component and Gaussian
    drawn apart take three. Float32 uniforms come in steps of 2^-24, so a cell hit with probability
    p has a Gaussian resolved in 2^24 p levels (a cell hit once in a hundred reaches 4.4 sigma
    instead of 5.3).
    """
    u = torch.rand(hit_logits.shape, generator=generator, device=hit_logits.device)
    return cells_from_uniform(hit_logits, params, share_params, u)


# --- the brightest cells, drawn first -------------------------------------------------------------
class BrightestShares(nn.Module):
    """What the brightest cells of chosen layers hold, standardised (B, k r): for each layer the
    brightest cell's share of the layer energy, then the next one's share of what is left, and so
    on for ``ranks`` cells; 0 where a layer has no cell left.

    Drawn with the layer energies and given to the cells, like :class:`LayerCentroids`: in CaloGAN's
    last layer a shower with energy there holds one particle (brightest share 0.8-0.95, the rest
    soft photons spread thinly), two (0.4-0.6, and a second cell holding most of the rest) or none
    (below 0.4), and which it is decides how the other cells share the rest. Statistics are buffers
    fitted once on training data (:meth:`fit`).

    Args:
        layers: number of layers described; ranks: brightest cells per layer.
    """

    def __init__(self, layers: int, ranks: int = 1) -> None:
        super().__init__()
        self.ranks = ranks
        self.register_buffer("s_mean", torch.zeros(layers * ranks))
        self.register_buffer("s_std", torch.ones(layers * ranks))
        self.register_buffer("fitted", torch.tensor(False))

    def shares(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """Unstandardised shares (B, k r), layer by layer, from the layers' cells (B, n_l) in any unit."""
        shares = []
        for x in layers:
            left = ShowerRepresentation.sharing_fractions(x)
            for _ in range(self.ranks):
                top, cell = left.max(1, keepdim=True)
                shares.append(top.squeeze(1))
                left = ShowerRepresentation.sharing_fractions(left.scatter(1, cell, 0.0))
        return torch.stack(shares, dim=1)

    @torch.no_grad()
    def fit(self, layers: list[torch.Tensor]) -> None:
        s = self.shares(layers)
        self.s_mean.copy_(s.mean(0))
        self.s_std.copy_(s.std(0).clamp_min(1e-3))
        self.fitted.fill_(True)

    def forward(self, layers: list[torch.Tensor]) -> torch.Tensor:
        """Standardised shares, (B, k r)."""
        return (self.shares(layers) - self.s_mean) / self.s_std

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        """Shares (B, k r) in (0, 1] from standardised values (B, k r) drawn by the decoder."""
        return (y * self.s_std + self.s_mean).clamp(1e-3, 1.0)


def brightest_cell_nll(location: torch.Tensor, sharing: torch.Tensor, hit: torch.Tensor, ranks: int = 1):
    """-log p (B,) nats of where a layer's brightest cells are, and the cells left for the rest.

    Independent cells cannot make a layer whose energy one or two shower particles brought: which of
    the four cells around the impact point a particle lands in is a coin toss, and drawn cell by
    cell two of them light up as often as one. So the brightest cell is drawn first, from n + 1
    classes (class n: the layer is empty), then with ``ranks`` 2 the next brightest from the same
    logits with the first left out (class n: no other cell is hit), each holding its share given
    (:class:`BrightestShares`), and the other cells as any layer's cells, for the rest.

    Args:
        location: (B, n + 1) logits, one per cell, then "no cell (left)".
        sharing: (B, n) fractions of the layer energy; hit: (B, n) bool, the cells with energy.

    Returns:
        nll (B,); the other cells' fractions of what the brightest leave (B, n), 0 in those, and
        which of them are hit (B, n) bool, to be scored as any layer's cells; and the weights
        (B, n) of the per-cell hit cross-entropy: 0 for the cells drawn first and for every cell of a
        layer that ran out of cells before the last rank (the class "none" says they are not hit).
    """
    n = sharing.shape[1]
    nll = torch.zeros_like(sharing[:, 0])
    rest, rest_hit = sharing, hit
    done = torch.zeros_like(hit[:, :1])  # no cell left for this rank
    for _ in range(ranks):
        cell = rest.argmax(1, keepdim=True)
        none_left = done | ~rest_hit.any(1, keepdim=True)
        term = nn.functional.cross_entropy(location, torch.where(none_left, n, cell).squeeze(1), reduction="none")
        nll = nll + term.masked_fill(done.squeeze(1), 0.0)  # after the first "none" nothing more is drawn
        done = none_left
        rest_hit = rest_hit.scatter(1, cell, False)
        rest = torch.where(rest_hit, rest / (1.0 - rest.gather(1, cell)).clamp_min(1e-30), torch.zeros_like(rest))
        location = location.scatter(1, cell, -math.inf)  # the next rank among the other cells
    drawn = (sharing > 0) & ~rest_hit
    return nll, rest, rest_hit, (~drawn & ~done).to(sharing.dtype)


def sample_cells_brightest_first(
    hit_logits: torch.Tensor,
    params: torch.Tensor,
    share_params: int,
    location: torch.Tensor,
    shares: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A layer's cells drawn brightest first (:func:`brightest_cell_nll`): fractions (B, n) of the
    layer energy, as :func:`sample_cells` returns them.

    The brightest cells are drawn from ``location`` (B, n + 1) logits, one per column of ``shares``
    (B, r), each among the cells not drawn yet (or none: the layer has no more cells); the other
    cells by :func:`sample_cells` from ``hit_logits`` (B, n) and ``params`` (B, share_params * n)
    with those left out. Each drawn cell holds its share of what the cells before it left, or all of
    it when no cell after it is hit. Nothing forces the other cells below the drawn ones: drawn for
    their shares, they rarely pass them. The uniforms are drawn r for the locations, then one per
    cell (:func:`brightest_first_from_uniform`).
    """
    u_brightest = torch.rand((len(location), shares.shape[1]), generator=generator, device=location.device)
    u_cells = torch.rand(hit_logits.shape, generator=generator, device=hit_logits.device)
    return brightest_first_from_uniform(hit_logits, params, share_params, location, shares, u_brightest, u_cells)


def brightest_first_from_uniform(
    hit_logits: torch.Tensor,
    params: torch.Tensor,
    share_params: int,
    location: torch.Tensor,
    shares: torch.Tensor,
    u_brightest: torch.Tensor,
    u_cells: torch.Tensor,
) -> torch.Tensor:
    """:func:`sample_cells_brightest_first` with its uniforms given: ``u_brightest`` (B, r) pick
    the brightest cells' locations, ``u_cells`` (B, n) draw the other cells."""
    n, ranks = hit_logits.shape[1], shares.shape[1]
    location, hit_logits = widened(location), widened(hit_logits)
    cells, done = [], torch.zeros_like(u_brightest[:, :1], dtype=torch.bool)
    for j in range(ranks):
        upper = torch.softmax(location, dim=1).cumsum(dim=1)
        cell = (u_brightest[:, j : j + 1] >= upper).sum(1, keepdim=True).clamp_max(n)  # (B, 1); n: no cell left
        done = done | (cell == n)
        cell = cell.clamp_max(n - 1)
        cells.append((cell, done))
        location = location.scatter(1, cell, -math.inf)
        hit_logits = hit_logits.scatter(1, cell, -math.inf)
    fractions = cells_from_uniform(hit_logits.masked_fill(done, -math.inf), params, share_params, u_cells)
    whole_share = torch.ones_like(u_brightest[:, :1])  # what a drawn cell holds when no cell after it is hit
    for j in reversed(range(ranks)):
        cell, done = cells[j]
        share = torch.where(fractions.sum(1, keepdim=True) > 0, widened(shares[:, j : j + 1]), whole_share)
        fractions = (fractions * (1.0 - share)).scatter(1, cell, share).masked_fill(done, 0.0)
    return fractions
