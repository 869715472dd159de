"""The GAN base (hepgen.models.gan): named optimizers, schedulers, averaged copies, the D-step hook,
per-rank noise and frozen loading, on a toy 1-D WGAN small enough for a CPU in seconds."""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch import seed_everything
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.utils.data import DataLoader

from hepgen.errors import ConfigValueError, HepgenError
from hepgen.models.gan import AdversarialModule, LinearDecayLR, load_frozen

#: Toy data: 64 events of a 1-D Gaussian, batches of 16.
N_EVENTS, BATCH = 64, 16
_FACTORIES = ["optimizer_g", "optimizer_d", "lr_scheduler_g", "lr_scheduler_d"]


class ToyGAN(AdversarialModule):
    """G: z (B, 2) -> x (B, 1) through a BatchNorm layer; D: a critic x (B, 1) -> (B, 1).

    Two critic steps per generator step (WGAN losses), optional weight clipping of D at ``clip``.
    """

    def __init__(
        self,
        optimizer_g: OptimizerCallable | None = None,
        optimizer_d: OptimizerCallable | None = None,
        lr_scheduler_g: LRSchedulerCallable | None = None,
        lr_scheduler_d: LRSchedulerCallable | None = None,
        lr_decay: bool = False,
        averaged: dict[str, str] | None = None,
        ema_decay: float = 0.9,
        clip: float | None = None,
        width: int = 8,
    ) -> None:
        super().__init__(
            optimizers={"generator": optimizer_g, "discriminator": optimizer_d},
            lr_schedulers={"generator": lr_scheduler_g, "discriminator": lr_scheduler_d},
            lr_decay=lr_decay,
            averaged=averaged,
            ema_decay=ema_decay,
        )
        self.save_hyperparameters(ignore=_FACTORIES)
        self.generator = nn.Sequential(
            nn.Linear(2, width), nn.LeakyReLU(0.2), nn.BatchNorm1d(width), nn.Linear(width, 1)
        )
        self.discriminator = nn.Sequential(nn.Linear(1, width), nn.LeakyReLU(0.2), nn.Linear(width, 1))
        self.build_averages()
        self.d_steps = 0

    def after_discriminator_step(self) -> None:
        self.d_steps += 1
        if self.hparams.clip is not None:
            with torch.no_grad():
                for p in self.discriminator.parameters():
                    p.clamp_(-self.hparams.clip, self.hparams.clip)

    def training_step(self, batch, batch_idx):
        for _ in range(2):
            fake = self.generator(self.noise((len(batch), 2))).detach()
            d_loss = self.discriminator(fake).mean() - self.discriminator(batch).mean()
            self.take_step("discriminator", d_loss)
        with self.toggled_optimizer(self.optimizer("generator")):
            g_loss = -self.discriminator(self.generator(self.noise((len(batch), 2)))).mean()
            self.take_step("generator", g_loss)
        self.update_averages()
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}


def _loader() -> DataLoader:
    data = 2.0 + 0.5 * torch.randn(N_EVENTS, 1, generator=torch.Generator().manual_seed(0))
    return DataLoader(data, batch_size=BATCH)


def _trainer(tmp_path, callbacks=(), **kwargs) -> L.Trainer:
    settings = dict(
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        accelerator="cpu", default_root_dir=tmp_path, max_epochs=1,
    )  # fmt: skip
    settings.update(kwargs)
    return L.Trainer(callbacks=list(callbacks), **settings)


class RecordStates(L.Callback):
    """The generator's and discriminator's weights after every training step (and the initial ones)."""

    def on_train_start(self, trainer, pl_module):
        self.states = {n: [_floats(getattr(pl_module, n))] for n in ("generator", "discriminator")}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for name, states in self.states.items():
            states.append(_floats(getattr(pl_module, name)))


class RecordLR(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        self.lrs = getattr(self, "lrs", []) + [[o.param_groups[0]["lr"] for o in trainer.optimizers]]


def _floats(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and floating buffers (not BatchNorm's integer step counter)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def test_ema_and_swa_copies_follow_the_weights_and_round_trip_through_a_checkpoint(tmp_path):
    seed_everything(0)
    model = ToyGAN(averaged={"generator": "ema", "discriminator": "swa"}, ema_decay=0.9)
    record = RecordStates()
    trainer = _trainer(tmp_path, [record], max_epochs=2)
    trainer.fit(model, _loader())
    steps = 2 * N_EVENTS // BATCH
    g_states, d_states = record.states["generator"], record.states["discriminator"]
    assert len(g_states) == steps + 1

    # EMA: starts from the initial weights, then e <- 0.9 e + 0.1 w after every step (buffers too)
    expected = dict(g_states[0])
    for state in g_states[1:]:
        expected = {k: 0.9 * expected[k] + 0.1 * state[k] for k in expected}
    ema = _floats(model.averages["generator"].module)
    for key, value in expected.items():
        torch.testing.assert_close(ema[key], value, rtol=1e-5, atol=1e-6)
    # SWA: the plain mean of the weights after each step (not the initial ones)
    swa = _floats(model.averages["discriminator"].module)
    for key in swa:
        torch.testing.assert_close(swa[key], torch.stack([s[key] for s in d_states[1:]]).mean(0), rtol=1e-5, atol=1e-6)
    assert not torch.equal(ema["3.weight"], g_states[-1]["3.weight"])  # an average, not a copy
    # the copies take no gradients and no optimizer updates them
    assert not any(p.requires_grad for p in model.averages.parameters())
    optimized = {id(p) for o in trainer.optimizers for g in o.param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in model.averages.parameters()}

    path = tmp_path / "toy.ckpt"
    trainer.save_checkpoint(path)
    restored = ToyGAN.load_from_checkpoint(path)
    for name in ("generator", "discriminator"):
        saved, loaded = model.averages[name].state_dict(), restored.averages[name].state_dict()
        assert saved.keys() == loaded.keys()
        assert all(torch.equal(saved[k], loaded[k]) for k in saved), name
    assert int(restored.averages["generator"].n_averaged) == steps + 1  # the initial weights count as one

    # evaluation generates with the averaged copy, training with the live network
    restored.eval()
    assert restored.network("generator") is restored.averages["generator"].module
    restored.train()
    assert restored.network("generator") is restored.generator


def test_averaging_an_unknown_network_or_kind_is_a_config_error():
    with pytest.raises(ConfigValueError, match="no network named 'critic'"):
        ToyGAN(averaged={"critic": "ema"})
    with pytest.raises(ConfigValueError, match="averaged.generator='mean'"):
        ToyGAN(averaged={"generator": "mean"})


def test_after_discriminator_step_runs_once_per_critic_step_and_clips(tmp_path):
    seed_everything(0)
    model = ToyGAN(clip=0.01, optimizer_d=lambda p: torch.optim.SGD(p, lr=0.5), width=16)
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, _loader())
    batches = N_EVENTS // BATCH
    assert model.d_steps == 2 * batches  # two critic steps per batch, none for the generator
    assert trainer.global_step == 3 * batches
    d_weights = torch.cat([p.detach().flatten() for p in model.discriminator.parameters()])
    assert d_weights.abs().max() <= 0.01
    # the large SGD steps did push the critic against the bound: the clipping acted
    assert (d_weights.abs() == 0.01).any()
    # only the critic is clipped
    g_weights = torch.cat([p.detach().flatten() for p in model.generator.parameters()])
    assert g_weights.abs().max() > 0.01


def test_schedulers_from_yaml_callables_step_once_per_epoch(tmp_path):
    # the form LightningCLI gives them: class_path/init_args resolved by jsonargparse
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ToyGAN, "model")
    config = parser.parse_object({"model": {
        "optimizer_d": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}},
        "lr_scheduler_d": {
            "class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 1, "gamma": 0.5}
        },
    }})  # fmt: skip
    model = parser.instantiate_classes(config).model
    record = RecordLR()
    trainer = _trainer(tmp_path, [record], max_epochs=3)
    trainer.fit(model, _loader())
    assert isinstance(model.lr_scheduler("discriminator"), torch.optim.lr_scheduler.StepLR)
    assert model.lr_scheduler("generator") is None
    # generator: the default optimizer, constant; discriminator: halved after every epoch (4 steps each)
    assert record.lrs == [[2e-4, 0.1], [2e-4, 0.05], [2e-4, 0.025]]
    assert model.optimizer("discriminator").optimizer.param_groups[0]["lr"] == 0.0125


def test_lr_decay_is_the_linear_decay_to_zero_at_max_epochs(tmp_path):
    model = ToyGAN(
        lr_decay=True,
        optimizer_g=lambda p: torch.optim.SGD(p, lr=0.3),
        optimizer_d=lambda p: torch.optim.SGD(p, lr=0.1),
    )
    record = RecordLR()
    epochs = 5
    trainer = _trainer(tmp_path, [record], max_epochs=epochs, limit_train_batches=1)
    trainer.fit(model, _loader())
    assert all(isinstance(model.lr_scheduler(n), LinearDecayLR) for n in ("generator", "discriminator"))
    assert record.lrs == [[0.3 * (1 - e / epochs), 0.1 * (1 - e / epochs)] for e in range(epochs)]
    assert [o.param_groups[0]["lr"] for o in trainer.optimizers] == [0.0, 0.0]
    with pytest.raises(ConfigValueError, match="lr_decay"):
        ToyGAN(lr_decay=True, lr_scheduler_g=lambda o: torch.optim.lr_scheduler.StepLR(o, 1))


def test_linear_decay_resumed_with_more_epochs_decays_to_the_new_end():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    first = LinearDecayLR(optimizer, total_epochs=4)
    for _ in range(2):  # two epochs
        optimizer.step()
        first.step()
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    resumed = LinearDecayLR(optimizer, total_epochs=8)  # the resumed run has max_epochs 8
    resumed.load_state_dict(first.state_dict())
    optimizer.step()
    resumed.step()
    assert resumed.get_last_lr() == [1.0 - 3 / 8]


def test_optimizers_are_addressed_by_name(tmp_path):
    model = ToyGAN(optimizer_d=lambda p: torch.optim.SGD(p, lr=0.1))
    _trainer(tmp_path, max_epochs=1, limit_train_batches=1).fit(model, _loader())
    d_params = {id(p) for g in model.optimizer("discriminator").param_groups for p in g["params"]}
    assert d_params == {id(p) for p in model.discriminator.parameters()}
    assert isinstance(model.optimizer("discriminator").optimizer, torch.optim.SGD)
    assert isinstance(model.optimizer("generator").optimizer, torch.optim.Adam)
    with pytest.raises(ConfigValueError, match="no optimizer named critic"):
        AdversarialModule(optimizers={"critic": None})


def test_loss_equilibrium_is_ln2_for_the_bce_gans_and_unknown_otherwise():
    from hepgen.models import FoldingGAN, UnfoldingGAN

    assert FoldingGAN.loss_equilibrium == UnfoldingGAN.loss_equilibrium == pytest.approx(math.log(2.0))
    assert ToyGAN.loss_equilibrium is None  # a WGAN critic loss has no fixed equilibrium value


def _noise_on_rank(rank: int, seed: int, step: int = 0) -> torch.Tensor:
    """The training noise a model draws on DDP rank ``rank`` after ``seed_everything(seed)``."""
    seed_everything(seed)
    model = ToyGAN()
    model.trainer = SimpleNamespace(global_rank=rank, world_size=2, global_step=step)
    model.on_train_start()
    return model.noise((4, 3))


def test_noise_differs_between_ranks_and_is_reproducible():
    rank0, rank1 = _noise_on_rank(0, seed=7), _noise_on_rank(1, seed=7)
    # rank 0 draws exactly what a single process would
    seed_everything(7)
    ToyGAN()  # the same initialisation draws
    assert torch.equal(rank0, torch.randn(4, 3))
    assert not torch.equal(rank0, rank1)
    assert torch.equal(rank1, _noise_on_rank(1, seed=7))  # reproducible
    assert not torch.equal(rank1, _noise_on_rank(2, seed=7))
    assert not torch.equal(rank1, _noise_on_rank(1, seed=8))
    assert not torch.equal(rank1, _noise_on_rank(1, seed=7, step=12))  # a resumed rank does not replay step 0
    # with an explicit generator (evaluation) the noise is the same on every rank
    seed_everything(7)
    model = ToyGAN()
    expected = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.noise((4, 3), torch.Generator().manual_seed(1)), expected)


def test_load_frozen_from_a_path_and_its_errors(tmp_path):
    seed_everything(0)
    model = ToyGAN()
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=2)
    trainer.fit(model, _loader())
    path = tmp_path / "toy.ckpt"
    trainer.save_checkpoint(path)

    frozen = ToyGAN.load_frozen(path)
    assert frozen.training is False and not any(p.requires_grad for p in frozen.parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), frozen.state_dict().values()))
    # a frozen part stays in evaluation mode (running BatchNorm statistics) when its parent trains
    parent = ToyGAN()
    parent.teacher = frozen
    parent.train()
    assert parent.training and parent.generator.training
    assert not frozen.training and not frozen.generator[2].training

    missing = tmp_path / "nothing.ckpt"
    with pytest.raises(HepgenError) as error:
        load_frozen(ToyGAN, missing, option="teacher_ckpt", hint="Train the teacher first.")
    message = str(error.value)
    assert "\n" not in message and message.startswith("teacher_ckpt: ")
    assert "nothing.ckpt" in message and message.endswith("Train the teacher first.")

    with pytest.raises(HepgenError, match=r"^teacher_ckpt: run:toy@latest:last") as error:
        load_frozen(ToyGAN, "run:toy@latest:last", option="teacher_ckpt", root=tmp_path / "runs")
    assert "\n" not in str(error.value)

    with pytest.raises(HepgenError, match=r"^teacher_ckpt: .*toy.ckpt is not a ToyGAN_wide checkpoint") as error:
        load_frozen(ToyGAN_wide, path, option="teacher_ckpt")
    assert "\n" not in str(error.value)


class ToyGAN_wide(ToyGAN):  # noqa: N801
    """A ToyGAN with other network sizes: a ToyGAN checkpoint does not fit it."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**{**kwargs, "width": 5})
