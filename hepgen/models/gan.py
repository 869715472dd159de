"""The plumbing every adversarial method shares, and no training step.

:class:`AdversarialModule` is a manual-optimization LightningModule whose networks and optimizers
are addressed by name. A method subclasses it, builds its networks as attributes named as in
:attr:`AdversarialModule.optimizer_names` and writes its own ``training_step`` with the helpers
here:

* optimizers injected from YAML (``OptimizerCallable``), one per name, and optional schedulers
  (``LRSchedulerCallable``) stepped once per epoch; ``lr_decay: true`` is the linear decay to 0
  at ``trainer.max_epochs`` (:class:`LinearDecayLR`);
* :meth:`AdversarialModule.take_step` (zero_grad, backward, step, and the
  :meth:`AdversarialModule.after_discriminator_step` hook after every discriminator step, e.g.
  WGAN weight clipping);
* averaged copies of networks (EMA or SWA, :class:`torch.optim.swa_utils.AveragedModel`),
  updated by :meth:`AdversarialModule.update_averages` after each step, saved in checkpoints and
  used for evaluation;
* :meth:`AdversarialModule.noise`: the latent noise, different on every DDP rank and reproducible;
* :func:`load_frozen`: a trained model of another run as a frozen part of this one.

``training_step`` returns a dict whose keys ending in ``_loss`` are losses (plus an optional
``disc_acc``); :attr:`AdversarialModule.loss_equilibrium` tells monitors where those losses sit
when the discriminator cannot tell real from generated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from hepgen.errors import ConfigValueError, HepgenError
from hepgen.models.seeding import reseed_for_rank
from hepgen.run import resolve_checkpoint

AveragingKind = Literal["ema", "swa"]


def gan_adam(params: Iterable) -> torch.optim.Adam:
    """The common GAN optimizer (DCGAN): Adam with lr 2e-4 and beta_1 0.5."""
    return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))


def linear_decay_factor(epoch: int, total_epochs: int) -> float:
    """The learning-rate factor ``max(0, 1 - epoch / total_epochs)`` after ``epoch`` epochs."""
    return max(0.0, 1.0 - epoch / total_epochs)


class LinearDecayLR(torch.optim.lr_scheduler.LambdaLR):
    """lr(e) = lr_0 * max(0, 1 - e / total_epochs): linear decay to 0 after ``total_epochs`` epochs.

    The late, small steps let a generator-discriminator pair settle instead of oscillating
    around the equilibrium, so the last epoch is a converged model. The factor is a
    :func:`functools.partial`, whose ``total_epochs`` is not restored from a checkpoint: a run
    resumed with more epochs decays to 0 at its new end (the behaviour of A(i)DAPT's
    ``lr_decay``).

    Args:
        optimizer: the optimizer whose learning rates decay.
        total_epochs: epochs after which the learning rate is 0 (>= 1).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_epochs: int, last_epoch: int = -1) -> None:
        if total_epochs < 1:
            raise ConfigValueError(f"LinearDecayLR total_epochs={total_epochs}: must be at least 1.")
        super().__init__(optimizer, partial(linear_decay_factor, total_epochs=total_epochs), last_epoch)


def ema_decay_at(decay: float, n_averaged: int) -> float:
    """The warmed-up EMA decay min(decay, (1 + n) / (10 + n)) after n updates (n >= 1)."""
    return min(decay, (1.0 + n_averaged) / (10.0 + n_averaged))


def warmup_ema_multi_avg_fn(decay: float) -> Callable:
    """An :class:`~torch.optim.swa_utils.AveragedModel` update whose decay warms up (:func:`ema_decay_at`)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        d = ema_decay_at(decay, int(n_averaged))
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:  # integer buffers (e.g. BatchNorm's batch count), as torch's own EMA treats them
            for old, new in zip(averaged, current):
                old.copy_(old * d + new * (1.0 - d))

    return update


class AdversarialModule(LightningModule):
    """Base of hepgen's GANs: named networks and optimizers, schedulers, averages, noise.

    A subclass sets :attr:`optimizer_names` (each name is also the attribute holding that
    network, unless :meth:`parameters_of` says otherwise) and :attr:`discriminator_names`, builds
    its networks in ``__init__`` after ``super().__init__(...)``, calls :meth:`build_averages`
    once they exist, and writes ``training_step`` with :meth:`optimizer`, :meth:`take_step`,
    :meth:`noise` and :meth:`update_averages`. Generation code reaches a network through
    :meth:`network`, which gives the averaged copy in evaluation when one is configured.
    Overrides of ``on_fit_start``, ``on_train_start``, ``on_train_epoch_end`` and ``train`` call
    ``super()``: the base checks the averages, reseeds DDP ranks, steps the schedulers and keeps
    frozen parts in evaluation mode there.

    Args:
        optimizers: optimizer factory per name in :attr:`optimizer_names`; a missing name or
            ``None`` gets :attr:`default_optimizer`.
        lr_schedulers: optional scheduler factory per name, stepped once per epoch.
        lr_decay: linear decay of every learning rate to 0 at ``trainer.max_epochs``
            (:class:`LinearDecayLR`), for the names without a scheduler in ``lr_schedulers``.
        averaged: network name -> ``ema`` (exponential moving average, starting from the
            initial weights) or ``swa`` (running mean of all iterates).
        ema_decay: weight of the old average in each EMA update.
        ema_warmup: cap the EMA decay at (1 + n) / (10 + n) after n updates, so the average forgets
            its random start within a few hundred updates instead of 1 / (1 - ema_decay) (with
            decay 0.9999 a plain EMA still holds 37 % of the initial weights after 10k updates).
        evaluate_averaged: evaluate (validation, test, predict) with the averaged copies.
    """

    automatic_optimization = False
    #: Optimizers in the order of ``configure_optimizers`` (monitors rely on it).
    optimizer_names: tuple[str, ...] = ("generator", "discriminator")
    #: Optimizers after whose steps :meth:`after_discriminator_step` runs.
    discriminator_names: tuple[str, ...] = ("discriminator",)
    #: The factory for names without a configured optimizer.
    default_optimizer: Callable[[Iterable], torch.optim.Optimizer] = staticmethod(gan_adam)
    #: Value of the ``*_loss`` entries when D cannot separate real from generated (ln 2 for
    #: binary cross-entropy); ``None`` when the loss family has no such value.
    loss_equilibrium: float | None = None
    #: The DDP strategy the hepgen CLI picks for ``--trainer.strategy auto`` on several processes
    #: (the sbatch scripts' case). Each update's backward reaches only its own network (a critic
    #: step leaves the generator without gradients), and plain DDP would wait for the missing ones.
    ddp_strategy: str = "ddp_find_unused_parameters_true"

    def __init__(
        self,
        optimizers: Mapping[str, OptimizerCallable | None] | None = None,
        lr_schedulers: Mapping[str, LRSchedulerCallable | None] | None = None,
        lr_decay: bool = False,
        averaged: Mapping[str, AveragingKind] | None = None,
        ema_decay: float = 0.999,
        evaluate_averaged: bool = True,
        ema_warmup: bool = False,
    ) -> None:
        super().__init__()
        optimizers, lr_schedulers, averaged = dict(optimizers or {}), dict(lr_schedulers or {}), dict(averaged or {})
        for option, names in (("optimizers", optimizers), ("lr_schedulers", lr_schedulers)):
            unknown = sorted(set(names) - set(self.optimizer_names))
            if unknown:
                raise ConfigValueError(
                    f"{option}: no optimizer named {', '.join(unknown)}; "
                    f"{type(self).__name__} has {', '.join(self.optimizer_names)}."
                )
        if lr_decay and any(lr_schedulers.values()):
            raise ConfigValueError("lr_decay: true and a learning-rate scheduler were both given; choose one.")
        for name, kind in averaged.items():
            if kind not in ("ema", "swa"):
                raise ConfigValueError(f"averaged.{name}={kind!r}: choose 'ema' or 'swa'.")
        if not 0.0 <= ema_decay < 1.0:
            raise ConfigValueError(f"ema_decay={ema_decay}: must be in [0, 1).")
        self.optimizer_factories = {n: optimizers.get(n) or self.default_optimizer for n in self.optimizer_names}
        self.lr_scheduler_factories = {n: lr_schedulers.get(n) for n in self.optimizer_names}
        self.lr_decay = lr_decay
        self.averaging = averaged
        self.ema_decay = ema_decay
        self.ema_warmup = ema_warmup
        self.evaluate_averaged = evaluate_averaged
        # filled by build_averages(); a ModuleDict, so the averages are part of the state dict
        self.averages = nn.ModuleDict()

    # --- networks and optimizers by name -----------------------------------------------------
    def parameters_of(self, name: str) -> Iterable[nn.Parameter]:
        """The parameters optimizer ``name`` updates (default: those of the attribute ``name``)."""
        return getattr(self, name).parameters()

    def configure_optimizers(self):
        optimizers = [self.optimizer_factories[n](self.parameters_of(n)) for n in self.optimizer_names]
        schedulers, self._scheduled_names = [], []
        for name, optimizer in zip(self.optimizer_names, optimizers):
            scheduler = self._scheduler(name, optimizer)
            if scheduler is not None:
                schedulers.append(scheduler)
                self._scheduled_names.append(name)
        return (optimizers, schedulers) if schedulers else optimizers

    def _scheduler(self, name: str, optimizer: torch.optim.Optimizer):
        factory = self.lr_scheduler_factories[name]
        if factory is not None:
            return factory(optimizer)
        if self.lr_decay:
            return LinearDecayLR(optimizer, max(int(self.trainer.max_epochs or 1), 1))
        return None

    def optimizer(self, name: str):
        """The (Lightning-wrapped) optimizer ``name``."""
        optimizers = self.optimizers()
        if not isinstance(optimizers, (list, tuple)):
            optimizers = [optimizers]
        return optimizers[self.optimizer_names.index(name)]

    def lr_scheduler(self, name: str):
        """The scheduler of optimizer ``name``, or ``None``."""
        if name not in getattr(self, "_scheduled_names", ()):
            return None
        schedulers = self.lr_schedulers()
        if not isinstance(schedulers, (list, tuple)):
            schedulers = [schedulers]
        return schedulers[self._scheduled_names.index(name)]

    def on_train_epoch_end(self) -> None:
        # manual optimization: Lightning never steps the schedulers, so they step here, once per epoch
        for name in getattr(self, "_scheduled_names", ()):
            self.lr_scheduler(name).step()

    def take_step(self, name: str, loss: torch.Tensor, clip_norm: float | None = None) -> torch.Tensor | None:
        """One update of optimizer ``name`` on ``loss``: zero_grad, backward, step (and the hook).

        Gradients are set to None first, so whatever an earlier pass left in them is not added.
        With ``clip_norm`` the gradients of all the optimizer's parameters together are rescaled
        to at most that norm before the step (through Lightning, which unscales mixed-precision
        gradients first), and the norm before clipping is returned: a clip that binds on every
        step turns Adam into a normalised-gradient method, which is worth seeing in the logs.
        """
        optimizer = self.optimizer(name)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        norm = None
        if clip_norm is not None:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else None
            self.clip_gradients(optimizer, gradient_clip_val=clip_norm, gradient_clip_algorithm="norm")
        optimizer.step()
        if name in self.discriminator_names:
            self.after_discriminator_step()
        return norm

    def after_discriminator_step(self) -> None:
        """Runs after every discriminator step (e.g. weight clipping for a Lipschitz critic)."""

    # --- averaged copies ---------------------------------------------------------------------
    def build_averages(self) -> None:
        """Create the averaged copies of the networks named in ``averaged``; call once they exist.

        Copies average buffers (BatchNorm statistics) too. They take no gradients and no
        optimizer sees them. EMA starts from the initial weights (its first update already
        blends), SWA is the running mean of the weights after each update.
        """
        for name, kind in self.averaging.items():
            network = getattr(self, name, None)
            if not isinstance(network, nn.Module):
                raise ConfigValueError(f"averaged: {type(self).__name__} has no network named {name!r}.")
            multi_avg_fn = None
            if kind == "ema":
                multi_avg_fn = warmup_ema_multi_avg_fn(self.ema_decay) if self.ema_warmup else get_ema_multi_avg_fn(self.ema_decay)
            average = AveragedModel(network, multi_avg_fn=multi_avg_fn, use_buffers=True)
            average.requires_grad_(False)
            if kind == "ema":
                average.n_averaged.fill_(1)  # the copy already holds the initial weights
            self.averages[name] = average

    def should_update_averages(self, name: str) -> bool:
        """Whether :meth:`update_averages` updates ``name`` now (override to start SWA late)."""
        return True

    @torch.no_grad()
    def update_averages(self) -> None:
        """Blend the current weights into the averaged copies; call after each training step."""
        for name, average in self.averages.items():
            if self.should_update_averages(name):
                average.update_parameters(getattr(self, name))

    def network(self, name: str) -> nn.Module:
        """Network ``name`` for generation: its averaged copy in evaluation mode, if configured
        and already averaged (an SWA copy holds the initial weights until its first update)."""
        average = self.averages[name] if name in self.averages else None
        if not self.training and self.evaluate_averaged and average is not None and int(average.n_averaged) > 0:
            return average.module
        return getattr(self, name)

    def on_fit_start(self) -> None:
        missing = sorted(set(self.averaging) - set(self.averages))
        if missing:
            raise RuntimeError(f"{type(self).__name__} did not call build_averages() for {', '.join(missing)}.")

    # --- noise -------------------------------------------------------------------------------
    def noise(self, shape: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal latent noise of ``shape`` on the model's device.

        Without ``generator`` it comes from the global stream, which :meth:`on_train_start`
        reseeds on DDP ranks > 0 (:func:`hepgen.models.seeding.reseed_for_rank`): each rank
        draws different noise (and label noise, dropout), and a rerun draws the same again.
        Rank 0 keeps the stream Lightning seeds it with (under DDP Lightning reseeds after the
        model is built, so it is not the stream of a single-process run).
        """
        return torch.randn(tuple(shape), generator=generator, device=self.device)

    def on_train_start(self) -> None:
        reseed_for_rank(self.trainer)

    # --- frozen parts ------------------------------------------------------------------------
    def train(self, mode: bool = True):
        # A frozen model (load_frozen) stays in evaluation mode, and so does any frozen part:
        # its BatchNorm layers keep their running statistics whatever its parent does.
        mode = mode and not getattr(self, "hepgen_frozen", False)
        super().train(mode)
        if mode:
            for module in self.modules():
                if module is not self and getattr(module, "hepgen_frozen", False):
                    module.eval()
        return self

    @classmethod
    def load_frozen(cls, spec: str | Path, option: str = "checkpoint", hint: str = "", root: str | Path | None = None):
        """A trained ``cls`` from a checkpoint path or run reference, frozen; see :func:`load_frozen`."""
        return load_frozen(cls, spec, option=option, hint=hint, root=root)


class FrozenModelError(HepgenError):
    """A model to load frozen is missing, unreadable or of another class (names the option)."""


def load_frozen(
    cls: type[LightningModule],
    spec: str | Path,
    option: str = "checkpoint",
    hint: str = "",
    root: str | Path | None = None,
) -> LightningModule:
    """A trained ``cls`` from ``spec``, frozen: no gradients, evaluation mode, kept so by its parent.

    ``spec`` is a checkpoint file or a run reference ``run:<experiment>[@<version>|@latest]:<last|best>``
    (resolved by :func:`hepgen.run.resolve_checkpoint` under ``root``). A reference that
    resolves to nothing, a missing or truncated file and a checkpoint of another class raise
    :class:`FrozenModelError`, one line that names ``option`` (the config key holding ``spec``)
    and ends with ``hint`` (what to do).
    """
    try:
        path = resolve_checkpoint(spec) if root is None else resolve_checkpoint(spec, root)
    except HepgenError as err:
        raise FrozenModelError(_one_line(f"{option}: {err} {hint}")) from None
    # LightningCLI instantiates the outer model inside a context that hands *its* init arguments
    # to every save_hyperparameters() call; without clearing it the inner model would record
    # the outer's hyperparameters as its own.
    token = _given_hyperparameters.set(None)
    try:
        model = cls.load_from_checkpoint(path, map_location="cpu")
    except (KeyError, RuntimeError, TypeError) as err:
        raise FrozenModelError(
            _one_line(f"{option}: {path} is not a {cls.__name__} checkpoint ({type(err).__name__}: {err}). {hint}")
        ) from None
    finally:
        _given_hyperparameters.reset(token)
    model.requires_grad_(False)
    model.hepgen_frozen = True
    return model.eval()


def _one_line(message: str, limit: int = 400) -> str:
    """``message`` on one line, cut at ``limit`` characters (a state-dict mismatch lists every key)."""
    line = " ".join(message.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
