"""The metric callbacks against a mocked Trainer, without a fit (anemoi style), and one tiny real fit.

The fake modules implement only the evaluation protocol (``evaluation_samples`` or
``evaluation_scores``): a callback that reached for anything method-specific would fail here.
DDP is imitated by running the ranks as threads of one process, with torch.distributed's
object collectives replaced by a barrier exchange.
"""

from __future__ import annotations

import json
import math
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule
from matplotlib.figure import Figure

from callbacks import AIDAPTMetrics, CaloMetrics, GANMonitor
from callbacks.base import PhysicsMetric, ScoreMetric
from hepgen.metrics.roc import roc_summary
from hepgen.physics.calo_geometry import LAYER_KEYS, LAYER_SHAPES
from hepgen.physics.kinematics import lab_to_invariants
from hepgen.synth.aidapt import simulate_sample
from tests.conftest import tiny_args

STAGE_HOOKS = {"val": "validation", "test": "test"}


def mock_trainer(root, **overrides) -> SimpleNamespace:
    settings = dict(
        world_size=1, global_rank=0, is_global_zero=True, current_epoch=0, global_step=7,
        sanity_checking=False, default_root_dir=root, loggers=[], datamodule=None,
    )  # fmt: skip
    settings.update(overrides)
    return SimpleNamespace(**settings)


class FakeModule(LightningModule):
    """A LightningModule with no method of its own; it records what a callback logs."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: dict[str, float] = {}
        self.log_options: dict = {}
        self.calls = 0

    def log_dict(self, values, **options) -> None:
        self.logged.update(values)
        self.log_options = options


def run_epoch(callback, trainer, module, batches, stage: str = "val", batch_indices=None) -> None:
    """Lightning's hook sequence of one val/test epoch."""
    hook = STAGE_HOOKS[stage]
    getattr(callback, f"on_{hook}_epoch_start")(trainer, module)
    for batch_idx, batch in zip(batch_indices or range(len(batches)), batches):
        getattr(callback, f"on_{hook}_batch_end")(trainer, module, None, batch, batch_idx)
    getattr(callback, f"on_{hook}_epoch_end")(trainer, module)


def read_metrics(root) -> dict:
    return json.loads((root / "metrics.json").read_text())


# --------------------------------------------------------------------- the PhysicsMetric contract


class NoiseModule(FakeModule):
    """reference = the batch's ``x``; generated = one uniform number per event from ``generator``."""

    def evaluation_samples(self, batch, generator):
        self.calls += 1
        x = batch["x"]
        return {"x": (x, torch.rand(len(x), generator=generator, dtype=torch.float64))}


class SumMetric(PhysicsMetric):
    def compute(self, reference, generated, stage):
        self.seen = reference, generated
        return {"n": len(reference["x"]), "x_sum": reference["x"].sum(), "gen_sum": generated["x"].sum()}

    def figures(self, reference, generated, stage):
        fig = Figure()
        fig.subplots().hist(generated["x"])
        return {"generated": fig}


def batches_of_ten(n_batches: int = 6) -> list[dict]:
    return [{"x": torch.arange(10 * i, 10 * i + 10, dtype=torch.float64)} for i in range(n_batches)]


def expected_noise(seed: int, n_batches: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([torch.rand(10, generator=generator, dtype=torch.float64) for _ in range(n_batches)]).numpy()


def test_physics_metric_keeps_max_events_in_total_and_generates_at_epoch_end(tmp_path):
    module, trainer = NoiseModule(), mock_trainer(tmp_path)
    metric = SumMetric(max_events=25, seed=3)
    metric.on_validation_epoch_start(trainer, module)
    for batch_idx, batch in enumerate(batches_of_ten()):
        metric.on_validation_batch_end(trainer, module, None, batch, batch_idx)
    assert module.calls == 0  # batches are only kept; generation waits for the epoch's end
    metric.on_validation_epoch_end(trainer, module)

    assert module.calls == 3  # ceil(25 / 10) batches
    reference, generated = metric.seen
    np.testing.assert_array_equal(reference["x"], np.arange(30))
    np.testing.assert_array_equal(generated["x"], expected_noise(3, 3))  # one generator, seeded once
    assert module.logged == {"val/n": 30.0, "val/x_sum": 435.0, "val/gen_sum": float(expected_noise(3, 3).sum())}
    assert not module.log_options.get("rank_zero_only", False)
    record = read_metrics(tmp_path)["val"]
    logged = {k.removeprefix("val/"): v for k, v in module.logged.items()}
    assert record == {**logged, "epoch": 0, "global_step": 7, "events": 30}
    assert (tmp_path / "plots" / "val" / "generated.png").stat().st_size > 0


def test_physics_metric_runs_only_on_due_epochs_and_never_in_the_sanity_check(tmp_path):
    module = NoiseModule()
    metric = SumMetric(max_events=10, every_n_epochs=2)
    run_epoch(metric, mock_trainer(tmp_path, sanity_checking=True, current_epoch=1), module, batches_of_ten(2))
    run_epoch(metric, mock_trainer(tmp_path, current_epoch=0), module, batches_of_ten(2))
    assert module.logged == {} and module.calls == 0 and not (tmp_path / "metrics.json").exists()
    run_epoch(metric, mock_trainer(tmp_path, current_epoch=1), module, batches_of_ten(2))
    run_epoch(metric, mock_trainer(tmp_path, current_epoch=2), module, batches_of_ten(2), stage="test")
    assert set(module.logged) == {f"{stage}/{k}" for stage in ("val", "test") for k in ("n", "x_sum", "gen_sum")}
    assert read_metrics(tmp_path)["val"]["epoch"] == 1 and read_metrics(tmp_path)["test"]["epoch"] == 2


class ThreadedGroup:
    """torch.distributed's object collectives for ranks that run as threads of one process."""

    def __init__(self, world_size: int) -> None:
        self.barrier = threading.Barrier(world_size, timeout=60)
        self.slots: list = [None] * world_size
        self.local = threading.local()

    def _exchange(self, obj) -> list:
        self.slots[self.local.rank] = obj
        self.barrier.wait()
        everything = list(self.slots)
        self.barrier.wait()
        return everything

    def all_gather_object(self, output, obj, group=None) -> None:
        output[:] = self._exchange(obj)

    def broadcast_object_list(self, objects, src=0, group=None, device=None) -> None:
        objects[:] = self._exchange(list(objects))[src]


def run_ranks(monkeypatch, world_size: int, run_rank) -> None:
    group = ThreadedGroup(world_size)
    monkeypatch.setattr(torch.distributed, "all_gather_object", group.all_gather_object)
    monkeypatch.setattr(torch.distributed, "broadcast_object_list", group.broadcast_object_list)
    errors = []

    def target(rank):
        group.local.rank = rank
        try:
            run_rank(rank)
        except BaseException as err:  # re-raised in the test's thread
            errors.append(err)
            group.barrier.abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def test_physics_metric_under_ddp_equals_one_process(tmp_path, monkeypatch):
    """2 ranks share the 6 batches as the DDP evaluation sampler does (rank r: global batches
    r, r + 2, ...): the values equal one process's, on every rank, and only rank 0 generates
    and writes."""
    single = NoiseModule()
    run_epoch(SumMetric(max_events=35), mock_trainer(tmp_path / "single"), single, batches_of_ten())

    batches = batches_of_ten()
    modules = [NoiseModule(), NoiseModule()]
    roots = [tmp_path / "rank0", tmp_path / "rank1"]

    def run_rank(rank):
        trainer = mock_trainer(roots[rank], world_size=2, global_rank=rank, is_global_zero=rank == 0)
        run_epoch(SumMetric(max_events=35), trainer, modules[rank], batches[rank::2])

    run_ranks(monkeypatch, 2, run_rank)
    assert single.logged["val/n"] == 40.0  # ceil(35 / 10) batches in total, not per rank
    assert modules[0].logged == modules[1].logged == single.logged
    assert modules[0].calls == 4 and modules[1].calls == 0
    assert read_metrics(roots[0]) == read_metrics(tmp_path / "single")
    assert not roots[1].exists()  # no plots, no metrics.json on rank 1


# --------------------------------------------------------------------- CaloMetrics


def random_showers(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Sparse showers (MeV) with incident energies (GeV): enough structure for every observable."""
    rng = np.random.default_rng(seed)
    batch = {"energy": torch.tensor(rng.uniform(1, 100, (n, 1)), dtype=torch.float32)}
    for key, shape in LAYER_SHAPES.items():
        cells = rng.exponential(50.0, (n, *shape)) * (rng.random((n, *shape)) < 0.3)
        batch[key] = torch.tensor(cells, dtype=torch.float32)
    return batch


class ShowerModule(FakeModule):
    """generated = ``scale`` x the reference showers, at the same incident energies."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def evaluation_samples(self, batch, generator):
        samples = {k: (batch[k], self.scale * batch[k]) for k in LAYER_KEYS}
        samples["energy"] = (batch["energy"], batch["energy"])
        return samples


def test_calo_metrics_of_identical_showers_are_zero(tmp_path):
    module = ShowerModule()
    showers = random_showers(120)
    batches = [{k: v[i : i + 40] for k, v in showers.items()} for i in range(0, 120, 40)]
    run_epoch(CaloMetrics(max_events=80), mock_trainer(tmp_path), module, batches)
    logged = {k.removeprefix("val/"): v for k, v in module.logged.items()}
    distances = [k for k in logged if k.startswith(("ks/", "sep/")) or k.endswith("_diff_pp")]
    assert len(distances) > 20 and all(logged[k] == 0.0 for k in distances)
    assert logged["response_ref"] == logged["response_gen"] > 0
    record = read_metrics(tmp_path)["val"]
    assert record["events"] == 80 and record["ks/E_tot"] == 0.0
    for name in ("observables", "mean_showers", "response"):
        assert (tmp_path / "plots" / "val" / f"{name}.png").stat().st_size > 0


def test_calo_metrics_see_a_scaled_response():
    metric, module = CaloMetrics(), ShowerModule(scale=2.0)
    reference, generated = metric.collect(module.evaluation_samples(random_showers(60), None))
    values = metric.compute(reference, generated, "val")
    assert values["response_gen"] == pytest.approx(2 * values["response_ref"], rel=1e-6)
    assert values["ks/E_tot"] > 0.1 and values["sparsity_0_diff_pp"] == 0.0


def test_calo_metrics_classifier_per_layer_finds_the_layer_that_is_off():
    """Generated showers: an independent sample of the reference's distribution, except that layer 2
    stays empty (a generator that never reaches it). The per-layer AUCs point at layer 2 alone."""
    metric = CaloMetrics(classifier_epochs=10)
    reference, other = random_showers(600, seed=0), random_showers(600, seed=1)
    samples = {k: (reference[k], other[k]) for k in LAYER_KEYS}
    samples["layer_2"] = (reference["layer_2"], torch.zeros_like(other["layer_2"]))
    samples["energy"] = (reference["energy"], other["energy"])
    values = metric.compute(*metric.collect(samples), "test")
    assert values["classifier_auc_layer_2"] > 0.9 and values["classifier_auc"] > 0.9
    assert abs(values["classifier_auc_layer_0"] - 0.5) < 0.1 and abs(values["classifier_auc_layer_1"] - 0.5) < 0.1


# --------------------------------------------------------------------- AIDAPTMetrics


@pytest.fixture(scope="module")
def aidapt_events() -> dict[str, torch.Tensor]:
    """120 true vertex events, used as the detector level: invariants (B, 4) and s (B, 1)."""
    inv = torch.from_numpy(lab_to_invariants(simulate_sample("ps", 120, seed=1)["vertex"]))
    unphysical = torch.zeros(120, dtype=torch.bool)
    unphysical[::10] = True  # 12 events: their generated s_pi+pi- is pushed out of the region
    return {"detector": inv[:, :4], "s_detector": inv[:, 4:], "unphysical": unphysical}


class FoldingModule(FakeModule):
    """generated = the reference, except that the batch's ``unphysical`` events get s_π+π− + 3 GeV²."""

    def __init__(self, events) -> None:
        super().__init__()
        self.low, self.high = events["detector"].min(0).values, events["detector"].max(0).values
        self.sample_sizes = []

    def scale(self, x):
        return 2 * (x - self.low) / (self.high - self.low) - 1

    def evaluation_samples(self, batch, generator):
        self.sample_sizes.append(len(batch["detector"]))
        ref = batch["detector"]
        gen = ref.clone()
        gen[batch["unphysical"], 1] += 3.0
        s, condition = batch["s_detector"], self.scale(ref)
        return {
            "detector": (ref, gen), "detector_scaled": (self.scale(ref), self.scale(gen)),
            "detector_condition": (condition, condition), "detector_s": (s, s),
        }  # fmt: skip


def test_aidapt_metrics_chi2_floor_and_unphysical_fraction(tmp_path, aidapt_events):
    module = FoldingModule(aidapt_events)
    datamodule = SimpleNamespace(training_sample=lambda n: {k: v[:n] for k, v in aidapt_events.items()})
    trainer = mock_trainer(tmp_path, datamodule=datamodule)
    batches = [{k: v[i : i + 40] for k, v in aidapt_events.items()} for i in range(0, 120, 40)]
    metric = AIDAPTMetrics(max_events=100, classifier_epochs=1)
    run_epoch(metric, trainer, module, batches)
    logged = {k.removeprefix("val/detector/"): v for k, v in module.logged.items()}
    # identical histograms: only the empty target bins count, with the reference's 1e-6 each
    for name in ("sppim", "tpip", "alpha"):  # untouched by the generator
        assert logged[f"chi2/{name}"] < 1e-4 and logged[f"chi2_ndf/{name}"] == 0.0
    assert logged["chi2/spipm"] > 1.0
    # the independent sample: the reference side of the first 120 training events, which here
    # are the evaluated events themselves
    assert module.sample_sizes[-1] == 120
    assert all(logged[f"chi2_floor/{name}"] < 1e-4 for name in ("sppim", "spipm", "tpip", "alpha"))
    assert logged["unphysical_fraction"] == pytest.approx(12 / 120, abs=1e-15)
    assert logged["unphysical_fraction_ref"] == 0.0
    assert read_metrics(tmp_path)["val"]["detector/unphysical_fraction"] == logged["unphysical_fraction"]
    assert (tmp_path / "plots" / "val" / "distributions.png").stat().st_size > 0

    run_epoch(metric, trainer, module, batches, stage="test")
    assert 0.0 <= module.logged["test/detector/classifier_auc"] <= 1.0
    assert module.logged["test/detector/unphysical_fraction"] == logged["unphysical_fraction"]


# --------------------------------------------------------------------- ScoreMetric


class ScoreModule(FakeModule):
    def evaluation_scores(self, batch):
        return batch["score"], batch["label"], batch["weight"]


def test_score_metric_gathers_all_batches_before_the_roc(tmp_path):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, 200)
    data = {
        "score": torch.tensor(rng.normal(label.astype(float), 1.0)),
        "label": torch.tensor(label),
        "weight": torch.tensor(rng.uniform(0.5, 2.0, 200)),
    }
    batches = [{k: v[i : i + 50] for k, v in data.items()} for i in range(0, 200, 50)]
    module = ScoreModule()
    metric = ScoreMetric(max_events=120, signal_efficiencies=(0.3,), min_background_efficiency=0.0)
    run_epoch(metric, mock_trainer(tmp_path), module, batches)
    expected = roc_summary(*(v[:150].numpy() for v in data.values()), signal_efficiencies=(0.3,))
    assert module.logged == {f"val/{k}": v for k, v in expected.items()}
    assert set(expected) == {"auc", "max_sic", "sic_at_0.3"} and 0.6 < expected["auc"] < 0.9
    assert read_metrics(tmp_path)["val"]["events"] == 150
    for name in ("roc", "sic"):
        assert (tmp_path / "plots" / "val" / f"{name}.png").stat().st_size > 0


def test_score_metric_is_not_a_command_line_choice():
    import callbacks

    assert "ScoreMetric" not in callbacks.__all__


# --------------------------------------------------------------------- GANMonitor


class ThreeNetworks(FakeModule):
    """Two generators and a discriminator, as in UVCGAN-S, with a loss of unknown equilibrium."""

    optimizer_names = ("gen_a", "gen_b", "disc")
    loss_equilibrium = None

    def __init__(self) -> None:
        super().__init__()
        self.gen_a, self.gen_b, self.disc = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1), torch.nn.Linear(3, 1)


def gan_trainer(root, module) -> SimpleNamespace:
    optimizers = [torch.optim.SGD(getattr(module, n).parameters(), lr=0.1) for n in ("gen_a", "gen_b", "disc")]
    return mock_trainer(root, optimizers=optimizers, callback_metrics={})


def train_step(monitor, trainer, module, updates, outputs) -> None:
    """``updates``: (optimizer index, value of every gradient entry) per optimizer step, in order."""
    for index, value in updates:
        optimizer = trainer.optimizers[index]
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.full_like(p, value)
        monitor.on_before_optimizer_step(trainer, module, optimizer)
    monitor.on_train_batch_end(trainer, module, outputs, None, 0)


def test_gan_monitor_names_optimizers_and_keeps_each_ones_last_update(tmp_path):
    module = ThreeNetworks()
    trainer = gan_trainer(tmp_path, module)
    monitor = GANMonitor(plot_every_n_epochs=0)
    monitor.on_fit_start(trainer, module)
    monitor.on_train_epoch_start(trainer, module)
    losses = {"gen_a_loss": 1.0, "gen_b_loss": 2.0, "disc_loss": 3.0, "disc_acc": 0.5, "gradient_penalty": 9.0}
    # step 1: three critic updates (only the last, value 3, counts), step 2: one (value 5)
    train_step(monitor, trainer, module, [(2, 1.0), (2, 2.0), (2, 3.0), (0, 1.0), (1, 2.0)], losses)
    train_step(monitor, trainer, module, [(2, 5.0), (0, 1.0), (1, 2.0)], {k: 2 * v for k, v in losses.items()})
    monitor.on_train_epoch_end(trainer, module)
    monitor.on_train_end(trainer, module)

    assert monitor.history["train"] == [
        {"epoch": 1, "gen_a_loss": 1.5, "gen_b_loss": 3.0, "disc_loss": 4.5, "disc_acc": 0.75}
    ]
    (grad,) = monitor.history["grad"]
    # disc: weight (1, 3) filled with 4 on average -> 4 sqrt 3; bias 4; aggregate sqrt(48 + 16) = 8
    assert grad["disc.weight"] == pytest.approx(4 * math.sqrt(3)) and grad["disc.bias"] == pytest.approx(4.0)
    assert grad["disc/aggregate"] == pytest.approx(8.0)
    assert grad["gen_a/aggregate"] == pytest.approx(math.sqrt(6))
    assert grad["gen_b/aggregate"] == pytest.approx(math.sqrt(12))
    assert module.logged == pytest.approx(
        {"train/grad_norm/gen_a": math.sqrt(6), "train/grad_norm/gen_b": math.sqrt(12), "train/grad_norm/disc": 8.0}
    )
    plots = {p.name for p in (tmp_path / "plots" / "train").iterdir()}
    assert plots == {
        "training_analysis.png", "disc_acc_vs_epoch.png",
        "gen_a_layer_gradient_norms.png", "gen_b_layer_gradient_norms.png", "disc_layer_gradient_norms.png",
    }  # fmt: skip
    loss_axes = monitor.figures()["training_analysis"].axes[0]
    assert len(loss_axes.lines) == 3 and not loss_axes.texts  # no equilibrium line for an unknown loss


def test_gan_monitor_draws_the_equilibrium_and_names_unnamed_optimizers(tmp_path):
    module = ThreeNetworks()
    module.optimizer_names, module.loss_equilibrium = None, math.log(2)
    trainer = gan_trainer(tmp_path, module)
    monitor = GANMonitor(plot_every_n_epochs=0)
    monitor.on_fit_start(trainer, module)
    monitor.on_train_epoch_start(trainer, module)
    train_step(monitor, trainer, module, [(0, 1.0), (1, 1.0), (2, 1.0)], {"d_loss": 0.7, "g_loss": 0.8})
    monitor.on_train_epoch_end(trainer, module)
    figures = monitor.figures()
    assert {f"optimizer_{i}_layer_gradient_norms" for i in range(3)} <= set(figures)
    loss_axes = figures["training_analysis"].axes[0]
    assert [t.get_text() for t in loss_axes.texts] == ["ln 2 (equilibrium)"]
    assert [line.get_label() for line in loss_axes.get_legend().get_lines()] == ["discriminator", "generator"]


# --------------------------------------------------------------------- one real fit


def test_tiny_fit_writes_validation_metrics_and_plots(calogan_dir, tmp_path):
    from hepgen.cli import main

    extra = tmp_path / "metrics.yaml"
    extra.write_text(
        "trainer:\n  callbacks:\n    - class_path: CaloMetrics\n      init_args:\n        max_events: 100\n"
    )
    runs = tmp_path / "runs"
    main(tiny_args("fit", calogan_dir, runs, "-c", str(extra), "--trainer.max_epochs=1", "--run.version=v0"))
    run = runs / "tiny" / "v0"
    val = read_metrics(run)["val"]
    assert val["epoch"] == 0 and val["events"] == 60  # the whole val split (10 % of 600 events)
    assert 0.0 <= val["ks/E_tot"] <= 1.0 and 0.0 <= val["sep/shower_depth"] <= 1.0
    assert all(math.isfinite(v) for v in val.values())
    for name in ("observables", "mean_showers", "response"):
        assert (run / "plots" / "val" / f"{name}.png").stat().st_size > 0
