"""SDEGAN: the critic's Lipschitz constraint, the update schedules, SWA, resume, and learning."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from datamodules.datasets import ArrayDictDataset
from datamodules.timeseries import OUDataModule
from hepgen.cli import main
from hepgen.errors import ConfigValueError
from hepgen.models.sde_gan import SDEGAN
from hepgen.nn.sde import CDEDiscriminator, SDEGenerator, StepInnovations, with_quadratic_variation
from hepgen.synth.ou import MU, SIGMA, THETA, simulate_ou

T = 8


def random_walks(n: int, t_size: int = T, channels: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch in the time-series contract: times (n, T), values (n, T, C), path (n, T, 1 + C)."""
    gen = torch.Generator().manual_seed(seed)
    times = torch.arange(t_size, dtype=torch.float32).expand(n, -1).contiguous()
    values = torch.randn(n, t_size, channels, generator=gen).cumsum(1) * 0.3 + 1.0
    path = torch.cat([times[..., None], values], -1)
    return {"times": times, "values": values, "path": path}


def tiny_model(cls: type[SDEGAN] = SDEGAN, **overrides) -> SDEGAN:
    args = dict(data_size=1, t_size=T, initial_noise=2, noise=2, hidden=4, width=4, swa_start=0)
    args.update(overrides)
    model = cls(**args)
    model.fit_normalization(random_walks(64)["values"])
    return model


def trainer(steps: int, callbacks=(), **kwargs) -> Trainer:
    return Trainer(
        accelerator="cpu", max_epochs=100, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks), **kwargs,
    )  # fmt: skip


def _loader(data: dict, batch_size: int) -> DataLoader:
    dataset = ArrayDictDataset(data)
    sampler = torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(dataset), batch_size, drop_last=False)
    # the loader's own generator: starting its iterator must not draw from the global stream
    return DataLoader(dataset, sampler=sampler, batch_size=None, generator=torch.Generator())


def fit(model: SDEGAN, optimizer_steps: int, callbacks=(), n: int = 64, batch_size: int = 16) -> SDEGAN:
    torch.manual_seed(0)
    trainer(optimizer_steps, callbacks).fit(model, _loader(random_walks(n), batch_size))
    return model


# --- networks ---------------------------------------------------------------------------------
def test_reference_sizes_have_the_reference_parameter_counts():
    # torchsde examples/sde_gan.py with data_size 1: generator 2,049, discriminator 1,169
    assert sum(p.numel() for p in SDEGenerator(1).parameters()) == 2049
    assert sum(p.numel() for p in CDEDiscriminator(1).parameters()) == 1169


def test_generator_paths_are_reproducible_from_their_noise():
    g = SDEGenerator(2, initial_noise=2, noise=2, hidden=4, width=4)
    ts, v = torch.arange(6.0), torch.randn(3, 2)
    a, b, c = g(ts, v, 11), g(ts, v, 11), g(ts, v, 12)
    assert a.shape == (3, 6, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)  # the entropy decides the Brownian path


def _gradients(network: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
    network.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in network.parameters()])


def test_adjoint_and_backprop_through_the_steps_give_the_same_gradients():
    """``adjoint: false`` (the quickstart's, 3x faster on CPU) must train the same model: the
    reversible-Heun adjoint reconstructs the forward steps exactly, so both give the gradient of
    the discretised solve; the critic's adjoint, over an interpolated control, to about 1e-3."""
    ts = torch.arange(float(T))
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    grads = []
    for adjoint in ("adjoint_reversible_heun", None):
        torch.manual_seed(0)
        generator = SDEGenerator(1, initial_noise=2, noise=2, hidden=4, width=4, adjoint_method=adjoint)
        grads.append(_gradients(generator, generator(ts, noise, entropy=7).square().mean()))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)

    for quadratic_variation in (False, True):
        path = random_walks(16)["path"].requires_grad_(True)
        grads, path_grads = [], []
        for adjoint in (True, False):
            torch.manual_seed(0)
            critic = CDEDiscriminator(
                1, hidden=4, width=4, adjoint=adjoint, quadratic_variation=float(quadratic_variation)
            )
            grads.append(_gradients(critic, critic(path).mean()))
            path_grads.append(path.grad.clone())
            path.grad = None
        assert ((grads[0] - grads[1]).norm() / grads[1].norm()) < 1e-2
        assert grads[1].norm() > 0
        # what reaches the generator: the gradient with respect to the (unaugmented) path
        assert ((path_grads[0] - path_grads[1]).norm() / path_grads[1].norm()) < 1e-2


def test_quadratic_variation_channel_is_the_running_sum_of_squared_increments():
    # two value channels observed at irregular times: the time channel is left alone
    path = torch.tensor([[[0.0, 1.0, 0.0], [0.5, 3.0, -1.0], [2.0, 2.0, 1.0], [2.5, 2.5, 1.0]]])
    augmented = with_quadratic_variation(path)
    assert torch.equal(augmented[..., :3], path)
    expected = torch.tensor([[0.0, 0.0], [4.0, 1.0], [5.0, 5.0], [5.25, 5.0]])
    torch.testing.assert_close(augmented[0, :, 3:], expected)
    torch.testing.assert_close(with_quadratic_variation(path, 0.5)[0, :, 3:], 0.5 * expected)
    # the critic reads the augmented control: C more channels in its first layer and its field
    plain = CDEDiscriminator(2, hidden=4, width=4)
    augmented_critic = CDEDiscriminator(2, hidden=4, width=4, quadratic_variation=1.0)
    assert augmented_critic.initial[0].in_features == plain.initial[0].in_features + 2
    assert augmented_critic.field.channels == plain.field.channels + 2


def _ou_path(n: int, t_size: int, seed: int) -> torch.Tensor:
    values = torch.from_numpy(simulate_ou(n, t_size, seed=seed)).float()[..., None]
    return torch.cat([torch.arange(float(t_size)).expand(n, -1)[..., None], values], -1)


def test_innovations_of_exact_ou_paths_are_the_drift_and_the_fresh_noise():
    """Fitted on exact OU paths (dy = (mu t - theta y) dt + sigma(t) dW, sigma(t) = 2 sigma t / T),
    the per-step predictor is the exact transition: slope e^-theta - 1, offset the drift's
    integral, scale the standard deviation of the noise integral."""
    t_size = 16
    innovations = StepInnovations(t_size, 1)
    innovations.fit(_ou_path(20000, t_size, seed=3))
    t = np.arange(t_size - 1.0)
    s = t[:, None] + np.linspace(0.0, 1.0, 2001)  # each step's interval, (T - 1, 2001)
    decay = np.exp(-THETA * (t[:, None] + 1.0 - s))
    offset = np.trapezoid(decay * MU * s, s, axis=1)
    noise_sd = np.sqrt(np.trapezoid(decay**2 * (2 * SIGMA * s / t_size) ** 2, s, axis=1))
    np.testing.assert_allclose(innovations.slope[:, 0], np.exp(-THETA) - 1.0, atol=0.01)
    np.testing.assert_allclose(innovations.offset[:, 0], offset, atol=0.01)
    np.testing.assert_allclose(innovations.scale[:, 0], noise_sd, rtol=0.03)
    assert float(innovations.scale[0, 0]) < 0.2 * float(innovations.scale[-1, 0])  # quiet start, loud end


def test_innovation_channel_sees_early_noise_that_the_quadratic_variation_hardly_does():
    """A generator with too much noise while OU is almost all drift (t < 8): the running
    innovations grow about ten times faster there, the plain running quadratic variation less
    than twice, and at the end of the path it differs by a few per cent."""
    t_size, n = 64, 4000
    critic = CDEDiscriminator(1, hidden=4, width=4, innovation_variation=1.0, t_size=t_size)
    critic.innovations.fit(_ou_path(n, t_size, seed=1))
    real = _ou_path(n, t_size, seed=2)
    noisy = real.clone()
    extra = 0.05 * torch.randn(n, 8, generator=torch.Generator().manual_seed(0))
    noisy[:, 1:9, 1] += extra.cumsum(1)
    noisy[:, 9:, 1] += extra.sum(1, keepdim=True)
    real_innovations, noisy_innovations = critic.innovations(real)[..., 0], critic.innovations(noisy)[..., 0]
    real_qv, noisy_qv = with_quadratic_variation(real)[..., 2], with_quadratic_variation(noisy)[..., 2]
    assert float(noisy_innovations[:, 8].mean() / real_innovations[:, 8].mean()) > 5
    assert float(noisy_qv[:, 8].mean() / real_qv[:, 8].mean()) < 2
    assert abs(float(noisy_qv[:, -1].mean() / real_qv[:, -1].mean()) - 1) < 0.05
    # on data the running sum grows by about 1 per step
    assert abs(float(real_innovations[:, -1].mean()) / (t_size - 1) - 1) < 0.05
    # the critic reads it as C more channels after the values; the reference critic has none
    augmented = critic(real)
    assert augmented.shape == (n,) and critic.field.channels == 3
    assert not any("innovations" in key for key in CDEDiscriminator(1).state_dict())


def test_an_unfitted_innovation_critic_says_so():
    critic = CDEDiscriminator(1, hidden=4, width=4, innovation_variation=1.0, t_size=T)
    with pytest.raises(RuntimeError, match="fit"):
        critic(random_walks(2)["path"])


def test_the_innovation_predictor_refuses_paths_of_another_length():
    # indexed by observation, it has nothing to say about a step it was not fitted on
    with pytest.raises(ValueError, match="t_size"):
        CDEDiscriminator(1, innovation_variation=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        StepInnovations(1, 1)
    with pytest.raises(ValueError, match=f"made for {T} observations, got {T + 1}"):
        StepInnovations(T, 1).fit(_ou_path(8, T + 1, seed=0))


def test_critic_depends_on_time_channel():
    # the CDE is driven by d(t, Y): the same values traversed twice as fast must score differently
    torch.manual_seed(0)
    d = CDEDiscriminator(1, hidden=4, width=4)
    values = torch.randn(2, T, 1)
    slow = torch.cat([torch.arange(T, dtype=torch.float32).expand(2, -1)[..., None], values], -1)
    fast = slow.clone()
    fast[..., 0] *= 0.5
    assert not torch.allclose(d(slow), d(fast))


def test_generated_paths_are_observed_at_the_real_times():
    # irregular times (GPS): the generated path carries the real path's time channel, and its
    # values are the SDE solution on the dt-grid read off linearly at those times
    model = tiny_model()
    times = torch.tensor([[0.0, 0.5, 2.0, 2.25, 3.0, 4.5, 6.0, 7.0], [0.0, 1.0, 1.5, 3.0, 4.0, 5.0, 6.5, 7.5]])
    torch.manual_seed(3)
    path = model._generate_normalized(2, times=times)
    assert torch.equal(path[..., 0], times)
    torch.manual_seed(3)
    on_grid = model._generate_normalized(2, times=torch.arange(9.0).expand(2, -1))[..., 1:]  # t = 0 .. 8
    lower = on_grid[1, 1]  # path 1 at t = 1.5: halfway between its values at t = 1 and t = 2
    assert torch.allclose(path[1, 2, 1:], 0.5 * (lower + on_grid[1, 2]), atol=1e-6)
    assert torch.allclose(path[0, 2, 1:], on_grid[0, 2], atol=1e-6)  # t = 2.0 lies on the grid


@pytest.mark.parametrize("mask_generated", [False, True])
def test_critic_sees_generated_paths_observed_like_their_real_partners(mask_generated):
    # with mask_generated, a generated value where the real partner is missing is replaced by the
    # interpolation of its neighbours (as the real path's was); by default the path stays complete
    model = tiny_model(mask_generated=mask_generated)
    batch = random_walks(4)
    batch["values"][:, 3] = float("nan")  # every path misses t = 3: filled halfway between t = 2 and 4
    batch["path"][:, 3, 1] = 0.5 * (batch["path"][:, 2, 1] + batch["path"][:, 4, 1])
    seen = []
    critic = model.discriminator.forward
    model.discriminator.forward = lambda path: seen.append(path.detach().clone()) or critic(path)
    trainer(1).fit(model, _loader(batch, 4))
    real, fake = seen[1], seen[0]  # critic_gap evaluates D(fake) first
    assert torch.equal(real, model.normalized(batch["path"]))
    halfway = 0.5 * (fake[:, 2, 1] + fake[:, 4, 1])
    assert torch.allclose(fake[:, 3, 1], halfway, atol=1e-6) == mask_generated
    assert torch.equal(fake[:, :, 0], real[:, :, 0])


# --- the Lipschitz constraint ------------------------------------------------------------------
class WeightRecorder(Callback):
    """The critic's linear weights after every training batch."""

    def __init__(self) -> None:
        self.bounds: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for m in pl_module.discriminator.modules():
            if isinstance(m, torch.nn.Linear):
                self.bounds.append(bool((m.weight.abs() <= 1.0 / m.out_features + 1e-7).all()))


@pytest.mark.parametrize("n_critic", [1, 3])
def test_clipping_keeps_every_critic_weight_within_one_over_out_features(n_critic):
    model = tiny_model(n_critic=n_critic)
    # start far outside the bound, so that an unclipped step would stay outside
    with torch.no_grad():
        for m in model.discriminator.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.fill_(3.0)
    recorder = WeightRecorder()
    fit(model, 8, [recorder])
    assert recorder.bounds and all(recorder.bounds)


def test_gradient_penalty_mode_does_not_clip_and_penalises_steep_critics():
    model = tiny_model(lipschitz="gp")
    assert not model.discriminator.adjoint  # its backward is differentiated again
    real, fake = (model.normalized(random_walks(8, seed=s)["path"]) for s in (1, 2))
    with torch.no_grad():
        for m in model.discriminator.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(0.0)  # a constant critic: |grad| = 0, penalty exactly 1
    assert model.gradient_penalty(real, fake).item() == pytest.approx(1.0)
    model.discriminator.readout.weight.data.fill_(3.0)
    model.after_discriminator_step()
    assert model.discriminator.readout.weight.abs().max().item() == 3.0  # gp mode leaves weights alone


# --- the update schedules ------------------------------------------------------------------
class BackwardSpy:
    """Wraps ``manual_backward``: the critic's gradients just before each backward, and which loss."""

    def __init__(self, model: SDEGAN) -> None:
        self.model, self.before = model, []
        original = model.manual_backward

        def spy(loss, *args, **kwargs):
            grads = [p.grad for p in model.discriminator.parameters()]
            self.before.append(any(g is not None and bool(g.abs().sum() > 0) for g in grads))
            return original(loss, *args, **kwargs)

        model.manual_backward = spy


class LeakyCritic(SDEGAN):
    """The seed's 5:1 loop: D's gradients are not cleared after the generator's backward."""

    def take_step(self, name, loss):
        optimizer = self.optimizer(name)
        self.manual_backward(loss)
        optimizer.step()
        optimizer.zero_grad()  # the seed zeroes after its steps, but never D after the G step
        if name in self.discriminator_names:
            self.after_discriminator_step()

    def toggled_optimizer(self, optimizer):  # the seed computes D's gradients in G's backward
        import contextlib

        return contextlib.nullcontext()


@pytest.mark.parametrize("cls,leaks", [(SDEGAN, False), (LeakyCritic, True)])
def test_critic_steps_start_from_zero_gradients(cls, leaks):
    model = tiny_model(cls, n_critic=2)
    spy = BackwardSpy(model)
    fit(model, 6)  # 4 critic and 2 generator steps: the critic backward after a generator step is the test
    assert int(model.critic_steps) == 4 and int(model.generator_steps) == 2
    critic_backwards = [before for i, before in enumerate(spy.before) if i % 3 != 2]
    assert any(critic_backwards) == leaks


def test_simultaneous_step_moves_generator_up_the_critic():
    # one step with plain SGD: D moved along -grad(gap), G along +grad(gap), both by lr * grad
    model = tiny_model(
        optimizer_g=lambda p: torch.optim.SGD(p, lr=0.1), optimizer_d=lambda p: torch.optim.SGD(p, lr=0.1)
    )
    reference = copy.deepcopy(model)
    fit(model, 2, n=16, batch_size=16)  # one batch, two optimizer steps
    batch = random_walks(16)
    torch.manual_seed(0)
    fake = reference._generate_normalized(16)
    gap = reference.critic_gap(reference.normalized(batch["path"]), fake)
    gap.backward()
    g_expected = reference.generator.readout.weight + 0.1 * reference.generator.readout.weight.grad
    d_expected = reference.discriminator.readout.weight - 0.1 * reference.discriminator.readout.weight.grad
    d_expected = d_expected.clamp(-1.0, 1.0)  # readout has out_features 1
    assert torch.allclose(model.generator.readout.weight, g_expected, atol=1e-6)
    assert torch.allclose(model.discriminator.readout.weight, d_expected, atol=1e-6)


# --- stochastic weight averaging -----------------------------------------------------------
class GeneratorSnapshots(Callback):
    def __init__(self) -> None:
        self.snapshots: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.snapshots.append({k: v.clone() for k, v in pl_module.generator.state_dict().items()})


def test_swa_average_is_the_mean_of_the_generator_iterates_from_swa_start():
    model = tiny_model(swa_start=2)
    snaps = GeneratorSnapshots()
    fit(model, 12, [snaps])  # 6 simultaneous steps
    averaged = model.averages["generator"].module.state_dict()
    assert int(model.averages["generator"].n_averaged) == 4  # steps 2, 3, 4, 5
    for key, value in averaged.items():
        expected = torch.stack([s[key] for s in snaps.snapshots[2:]]).mean(0)
        assert torch.allclose(value, expected, atol=1e-6), key


def test_evaluation_uses_the_live_networks_until_swa_starts():
    model = tiny_model(swa_start=100)
    fit(model, 4)
    model.eval()
    assert model.network("generator") is model.generator
    model = tiny_model(swa_start=0)
    fit(model, 4)
    model.eval()
    assert model.network("generator") is model.averages["generator"].module


# --- resume through the command line -------------------------------------------------------
TINY_SDE = Path(__file__).parent / "conf" / "sde_gan_tiny.yaml"


def sde_args(subcommand: str, root: Path, *extra: str) -> list[str]:
    return [subcommand, "-c", str(TINY_SDE), "--run.root", str(root), "--run.experiment", "tiny_sde", *extra]


@pytest.mark.parametrize("options", [[], ["--model.init_args.critic_innovation_variation", "0.1"]])
def test_resume_continues_training_and_swa_exactly(tmp_path, options):
    """fit 4 epochs straight == fit 2, then resume to 4: weights, SWA averages and step counters
    (and the critic's innovation predictor, fitted once on the training split and saved)."""
    main(sde_args("fit", tmp_path, "--trainer.max_epochs", "4", "--run.version", "straight", *options))
    main(sde_args("fit", tmp_path, "--trainer.max_epochs", "2", "--run.version", "split", *options))
    split = tmp_path / "tiny_sde" / "split"
    halfway = _weights(split / "checkpoints" / "last.ckpt")
    main(["fit", "-c", str(split / "config.yaml"), "--ckpt_path", "last", "--trainer.max_epochs", "4"])
    straight = _weights(tmp_path / "tiny_sde" / "straight" / "checkpoints" / "last.ckpt")
    resumed = _weights(split / "checkpoints" / "last.ckpt")
    # 4 batches per epoch, one generator step each, SWA from step 2
    assert int(halfway["generator_steps"]) == 8 and int(halfway["averages.generator.n_averaged"]) == 6
    assert int(resumed["averages.generator.n_averaged"]) == 14
    assert not torch.equal(halfway["averages.generator.module.readout.weight"],
                           resumed["averages.generator.module.readout.weight"])  # fmt: skip
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name
    if options:
        assert float(resumed["averages.discriminator.module.innovations.fitted"]) == 1.0
        assert torch.equal(resumed["discriminator.innovations.scale"],
                           resumed["averages.discriminator.module.innovations.scale"])  # fmt: skip
        assert not torch.equal(resumed["discriminator.innovations.scale"], torch.ones(11, 1))


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


# --- learning and predict ------------------------------------------------------------------
def test_critic_training_separates_ou_paths_from_the_untrained_generator():
    """Critic-only steps (the generator waits for n_critic batches) raise the critic's Wasserstein
    estimate mean D(real) - mean D(fake) on held-out OU paths well above the untrained critic's."""
    data = OUDataModule(t_size=12, made_events=400, batch_size=64)
    data.setup("fit")
    train, held_out = data.training_sample(), data.datasets["val"].head()
    torch.manual_seed(0)
    model = SDEGAN(data_size=1, t_size=12, hidden=8, width=8, n_critic=1000,
                   optimizer_d=lambda p: torch.optim.Adadelta(p, lr=0.5, weight_decay=0.01))  # fmt: skip
    model.fit_normalization(train["values"])

    def w1_estimate() -> float:
        with torch.no_grad():
            torch.manual_seed(1)
            real = model.normalized(held_out["path"])
            return -float(model.critic_gap(real, model._generate_normalized(len(real), times=real[..., 0])))

    before = w1_estimate()
    trainer(40).fit(model, _loader(train, 64))
    assert int(model.critic_steps) == 40 and int(model.generator_steps) == 0
    assert w1_estimate() > before + 1.0, (before, w1_estimate())  # 0.03 -> 7.0 when written


def test_predict_writes_generated_paths_at_the_test_split_times(tmp_path):
    main(sde_args("fit", tmp_path, "--trainer.max_epochs", "1", "--run.version", "p"))
    main(["predict", "-c", str(tmp_path / "tiny_sde" / "p" / "config.yaml"), "--ckpt_path", "last"])
    with np.load(tmp_path / "tiny_sde" / "p" / "predictions" / "paths.npz") as saved:
        times, values, names = saved["times"], saved["values"], list(saved["channel_names"])
    data = OUDataModule(t_size=12, made_events=160)  # the tiny config's data
    data.setup("fit")
    test = data.datasets["test"].head()
    assert names == ["y"] and values.shape == (16, 12, 1) and np.isfinite(values).all()
    assert np.array_equal(times, test["times"].numpy())
    assert not np.allclose(values, test["path"][..., 1:].numpy())  # generated, not copied


@pytest.mark.parametrize(
    "option, value",
    [
        ("n_critic", 0), ("t_size", 1), ("lipschitz", "spectral"), ("critic_quadratic_variation", -1.0),
        ("critic_innovation_variation", -1.0),
    ],  # fmt: skip
)
def test_bad_options_name_themselves(option, value):
    with pytest.raises(ConfigValueError, match=rf"^{option}="):
        SDEGAN(**{option: value})
