"""The A(i)DAPT GANs: scalers, the noisy-label loss, residual folding, frozen folding in unfolding."""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.multiprocessing as mp

from datamodules.aidapt import AIDAPTDataModule
from hepgen.errors import CheckpointError, HepgenError
from hepgen.models.aidapt import FoldingGAN, UnfoldingGAN
from hepgen.nn.scaling import MinMaxScaler
from tests.conftest import AIDAPT_EVENTS, ROOT, tiny_folding_gan, with_lazy_training_split


def _data(folder, kind="ps", batch_size=2000) -> AIDAPTDataModule:
    data = AIDAPTDataModule(
        data_dir=str(folder), source="made", made_events=AIDAPT_EVENTS, kind=kind, batch_size=batch_size
    )
    data.prepare_data()
    data.setup("fit")
    return data


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    settings = dict(
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        accelerator="cpu", default_root_dir=tmp_path, limit_val_batches=0,
    )  # fmt: skip
    settings.update(kwargs)
    return L.Trainer(**settings)


def test_minmax_scaler_maps_onto_unit_interval_and_back():
    x = torch.randn(1000, 3, dtype=torch.float64) * torch.tensor([1.0, 50.0, 1e-3]) + 7.0
    scaler = MinMaxScaler(3).fit(x)
    scaled = scaler(x)
    assert torch.allclose(scaled.min(0).values, -torch.ones(3, dtype=torch.float64))
    assert torch.allclose(scaled.max(0).values, torch.ones(3, dtype=torch.float64))
    assert torch.allclose(scaler.inverse(scaled), x, rtol=0, atol=1e-12)
    with pytest.raises(RuntimeError, match="never refits"):
        scaler.fit(x)


def test_scalers_are_fitted_on_training_data_and_restored_from_the_checkpoint(aidapt_dir, tmp_path):
    data = _data(aidapt_dir)
    model = tiny_folding_gan()
    trainer = _trainer(tmp_path, max_steps=1)
    trainer.fit(model, data)
    train = data.datasets["train"].tensors
    assert torch.allclose(model.v_scaler.data_min, train["vertex"].double().min(0).values)
    assert torch.allclose(model.d_scaler.data_min + model.d_scaler.data_range, train["detector"].double().max(0).values)
    # the detector resolution in scaled units is about 1% of the range of each invariant
    assert ((model.resolution > 1e-3) & (model.resolution < 3e-2)).all(), model.resolution

    path = tmp_path / "folding.ckpt"
    trainer.save_checkpoint(path)
    restored = FoldingGAN.load_from_checkpoint(path)
    for name in ("v_scaler", "d_scaler", "s_scaler"):
        original, loaded = getattr(model, name), getattr(restored, name)
        assert torch.equal(original.data_min, loaded.data_min) and torch.equal(original.data_range, loaded.data_range)
    assert torch.equal(model.resolution, restored.resolution)
    test = data.datasets["test"].tensors
    model.eval(), restored.eval()
    folded = [m.fold(test["vertex"], test["s_vertex"], torch.Generator().manual_seed(3)) for m in (model, restored)]
    assert torch.equal(*folded)


def test_noisy_labels_above_one_train_with_bce_on_logits(aidapt_dir, tmp_path):
    # Targets 1 + U(0, 0.5) > 1: F.binary_cross_entropy would reject them, the logit form must not.
    with pytest.raises(RuntimeError, match="between 0 and 1"):
        torch.nn.functional.binary_cross_entropy(torch.full((2,), 0.5), torch.tensor([0.2, 1.3]))
    model = tiny_folding_gan(label_noise=0.5)
    trainer = _trainer(tmp_path, max_steps=2 * (model.hparams.n_disc + 1))
    trainer.fit(model, _data(aidapt_dir))
    assert trainer.global_step == 12  # 2 batches x (5 D + 1 G) optimizer steps
    # a loss against targets above 1 can be below 0: the sign the reference's D loss drifts to
    losses = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([40.0]), torch.tensor([1.05]))
    assert losses.item() == pytest.approx(-2.0, abs=1e-5)
    assert math.isfinite(trainer.callback_metrics["train/d_loss"].item())


def test_residual_folding_starts_as_the_identity_and_keeps_alpha_periodic(aidapt_dir, tmp_path):
    data = _data(aidapt_dir)
    model = tiny_folding_gan()
    _trainer(tmp_path, max_steps=0).fit(model, data)  # fits the scalers only
    model.eval()
    val = data.datasets["val"].tensors
    folded = model.fold(val["vertex"], val["s_vertex"])
    # an untrained residual head corrects nothing: the detector repeats the vertex values
    assert torch.allclose(folded, val["vertex"], atol=1e-4)
    # alpha just below 2 pi, moved up by a migration, comes back near 0 (not beyond 2 pi)
    scaled = torch.tensor([[0.0, 0.0, 0.0, 0.999], [0.0, 0.0, 0.0, -0.999]])
    from hepgen.models.aidapt import _wrap_periodic

    wrapped = _wrap_periodic(scaled + torch.tensor([0.0, 0.0, 0.0, 0.01]))
    assert wrapped[0, 3].item() == pytest.approx(-0.991, abs=1e-6)
    assert wrapped[1, 3].item() == pytest.approx(-0.989, abs=1e-6)


def test_trained_folding_gan_learns_the_detector_resolution(aidapt_dir, tmp_path):
    """After training, the generated migration detector - vertex has the simulated width (the
    untrained generator, the baseline, has none)."""
    torch.manual_seed(0)
    data = _data(aidapt_dir, batch_size=1000)
    model = tiny_folding_gan(
        optimizer_g=lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.5, 0.999)),
        optimizer_d=lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.5, 0.999)),
        generator_bn="batch",
    )
    _trainer(tmp_path, max_epochs=8).fit(model, data)
    model.eval()
    val = data.datasets["val"].tensors
    folded = model.fold(val["vertex"], val["s_vertex"], torch.Generator().manual_seed(0))
    true_width = (val["detector"] - val["vertex"])[:, :3].std(0)
    generated_width = (folded - val["vertex"])[:, :3].std(0)
    ratio = generated_width / true_width
    assert ((ratio > 0.5) & (ratio < 1.6)).all(), ratio


def test_unfolding_never_changes_the_folding_generator(aidapt_dir, folding_ckpt, tmp_path):
    model = UnfoldingGAN(
        folding_ckpt=str(folding_ckpt), noise_dim=8, generator_widths=(32, 32), discriminator_widths=(32, 16),
        optimizer_g=lambda p: torch.optim.Adam(p, lr=1e-2), optimizer_d=lambda p: torch.optim.Adam(p, lr=1e-2),
    )  # fmt: skip
    before = {k: v.clone() for k, v in model.folding.state_dict().items()}
    outer_before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    _trainer(tmp_path, max_steps=10).fit(model, _data(aidapt_dir, kind="realistic"))
    after = model.folding.state_dict()
    assert before.keys() == after.keys()
    for key in before:  # weights, BatchNorm running statistics and scalers alike
        assert torch.equal(before[key], after[key]), key
    assert any(not torch.equal(outer_before[k], v) for k, v in model.generator.state_dict().items())
    # the outer generator's gradient did flow through the folding generator
    assert all(p.grad is None for p in model.folding.parameters())


def test_missing_folding_checkpoint_is_a_one_line_error_naming_the_option(tmp_path):
    with pytest.raises(HepgenError) as error:
        UnfoldingGAN(folding_ckpt=str(tmp_path / "nothing.ckpt"))
    message = str(error.value)
    assert message.startswith("folding_ckpt: ") and "nothing.ckpt" in message and "\n" not in message
    assert "experiments/aidapt/inner.yaml" in message  # says what to do


def test_cli_run_keeps_the_newest_epoch_in_last_ckpt_and_resumes_from_it(aidapt_dir, tmp_path):
    """last.ckpt must be the final epoch even when the monitored chi2 did not improve then
    (Lightning >= 2.6 ties save_last to an improvement), and a resume continues from it."""
    from hepgen.cli import main
    from tests.conftest import ROOT

    args = [
        "-c", str(ROOT / "tests" / "conf" / "aidapt_tiny.yaml"),
        "--data.init_args.data_dir", str(aidapt_dir),
        "--run.root", str(tmp_path), "--run.experiment", "tiny", "--run.version", "v0",
    ]  # fmt: skip
    main(["fit", *args])
    checkpoints = tmp_path / "tiny" / "v0" / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", weights_only=False)
    assert last["epoch"] == 2 and last["global_step"] == 3 * 2 * 6
    assert len(list(checkpoints.glob("best-*.ckpt"))) == 1
    history = next(v for k, v in last["callbacks"].items() if "GANMonitor" in k)["history"]
    assert [r["epoch"] for r in history["train"]] == [1, 2, 3]

    main(["fit", *args, "--ckpt_path", "last", "--trainer.max_epochs", "4"])
    resumed = torch.load(checkpoints / "last.ckpt", weights_only=False)
    assert resumed["epoch"] == 3 and resumed["global_step"] == 4 * 2 * 6
    history = next(v for k, v in resumed["callbacks"].items() if "GANMonitor" in k)["history"]
    assert [r["epoch"] for r in history["train"]] == [1, 2, 3, 4]


def test_last_ckpt_is_written_every_epoch_when_validation_is_less_frequent(aidapt_dir, tmp_path):
    """With check_val_every_n_epoch > 1 Lightning would write last.ckpt only at validation, before
    the epoch-end hooks: the newest epochs and the epoch's monitor record would be lost."""
    from hepgen.cli import main
    from tests.conftest import ROOT

    args = [
        "-c", str(ROOT / "tests" / "conf" / "aidapt_tiny.yaml"),
        "--data.init_args.data_dir", str(aidapt_dir),
        "--run.root", str(tmp_path), "--run.experiment", "tiny", "--run.version", "v0",
        "--trainer.check_val_every_n_epoch", "2",
    ]  # fmt: skip
    main(["fit", *args])
    checkpoints = tmp_path / "tiny" / "v0" / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", weights_only=False)
    assert last["epoch"] == 2 and last["global_step"] == 3 * 2 * 6  # epoch 3 has no validation
    history = next(v for k, v in last["callbacks"].items() if "GANMonitor" in k)["history"]
    assert [r["epoch"] for r in history["train"]] == [1, 2, 3]

    # The best checkpoint is written at validation end, inside epoch 2: Lightning resumes it at
    # on_train_epoch_end without calling on_train_epoch_start (GANMonitor used to fail there).
    (best,) = checkpoints.glob("best-*.ckpt")
    main(["fit", *args, "--ckpt_path", str(best), "--trainer.max_epochs", "4", "--run.version", "v1"])
    resumed = torch.load(tmp_path / "tiny" / "v1" / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["epoch"] == 3 and resumed["global_step"] == 4 * 2 * 6
    history = next(v for k, v in resumed["callbacks"].items() if "GANMonitor" in k)["history"]
    assert [r["epoch"] for r in history["train"]][-2:] == [3, 4]

    # a checkpoint file with a config of other sizes: one line naming the tensor and the run's config
    with pytest.raises(CheckpointError, match=rf"generator.*\[32, 12\] in the checkpoint.*-c {tmp_path}/tiny/v0/config.yaml"):
        main(["test", *args, "--model.init_args.noise_dim", "4", "--ckpt_path", str(best), "--run.version", "v0"])


def test_lr_decay_reaches_zero_at_max_epochs(aidapt_dir, tmp_path):
    adam = lambda p: torch.optim.Adam(p, lr=1e-3)  # noqa: E731
    model = tiny_folding_gan(lr_decay=True, optimizer_g=adam, optimizer_d=adam)
    trainer = _trainer(tmp_path, max_epochs=4, limit_train_batches=1)
    lrs = []

    class Record(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            lrs.append([o.param_groups[0]["lr"] for o in trainer.optimizers])

    trainer.callbacks.append(Record())
    trainer.fit(model, _data(aidapt_dir))
    assert lrs == [pytest.approx([1e-3 * (1 - e / 4)] * 2) for e in range(4)]
    assert [o.param_groups[0]["lr"] for o in trainer.optimizers] == pytest.approx([0.0, 0.0])


def test_lr_scheduler_from_the_command_line_replaces_lr_decay(aidapt_dir, tmp_path):
    from hepgen.cli import HepgenCLI

    scheduler = '{"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 1, "gamma": 0.5}}'
    cli = HepgenCLI(args=[
        "-c", str(ROOT / "tests" / "conf" / "aidapt_tiny.yaml"), "--data.init_args.data_dir", str(aidapt_dir),
        "--model.init_args.lr_scheduler_d", scheduler,
    ], run=False)  # fmt: skip
    model = cli.model
    model.trainer = SimpleNamespace(max_epochs=3)
    optimizers, schedulers = model.configure_optimizers()
    assert len(optimizers) == 2 and len(schedulers) == 1  # only D's learning rate is scheduled
    assert isinstance(schedulers[0], torch.optim.lr_scheduler.StepLR) and schedulers[0].gamma == 0.5
    assert schedulers[0].optimizer is optimizers[1]
    assert "lr_scheduler_d" not in model.hparams  # factories are not hyperparameters


# --- the evaluation protocol (C3) ----------------------------------------------------------------


def _first(split: dict, n: int = 300) -> dict:
    return {k: v[:n] for k, v in split.items()}


def test_folding_evaluation_samples(aidapt_dir, folding_ckpt):
    model = FoldingGAN.load_from_checkpoint(folding_ckpt).eval()
    batch = _first(_data(aidapt_dir).datasets["val"].tensors)
    samples = model.evaluation_samples(batch, torch.Generator().manual_seed(5))
    other = model.evaluation_samples(batch, torch.Generator().manual_seed(6))
    assert list(samples) == ["detector", "detector_scaled", "detector_condition", "detector_s"]
    assert all(s.shape == (300, 4) for name, pair in samples.items() if name != "detector_s" for s in pair)
    assert torch.equal(samples["detector_s"][0], batch["s_detector"]) and torch.equal(samples["detector_s"][1], batch["s_vertex"])
    # the reference sides are the data, whatever the generator
    reference, generated = samples["detector"]
    assert torch.equal(reference, batch["detector"])
    assert torch.equal(samples["detector_scaled"][0], model.d_scaler(batch["detector"]))
    for name in samples:
        assert torch.equal(samples[name][0], other[name][0]), name
    # the generated side draws exactly as fold() does
    assert torch.equal(generated, model.fold(batch["vertex"], batch["s_vertex"], torch.Generator().manual_seed(5)))
    assert not torch.equal(generated, other["detector"][1])
    torch.testing.assert_close(samples["detector_scaled"][1], model.d_scaler(generated))
    condition = samples["detector_condition"]
    assert torch.equal(condition[0], condition[1]) and torch.equal(condition[0], model.discriminator_label(batch))


def test_unfolding_evaluation_samples_with_and_without_truth(aidapt_dir, folding_ckpt):
    model = UnfoldingGAN(
        folding_ckpt=str(folding_ckpt), noise_dim=8, generator_widths=(16,), discriminator_widths=(16,)
    )
    model.eval()
    batch = _first(_data(aidapt_dir, kind="realistic").datasets["val"].tensors)
    samples = model.evaluation_samples(batch, torch.Generator().manual_seed(5))
    names = [f"{level}{suffix}" for level in ("detector", "vertex") for suffix in ("", "_scaled", "_condition", "_s")]
    assert list(samples) == names
    assert torch.equal(samples["vertex_s"][0], batch["s_vertex"]) and torch.equal(samples["vertex_s"][1], batch["s_detector"])
    assert samples["detector_condition"][0].shape == (300, 1)
    assert torch.equal(samples["detector_condition"][0], model.s_scaler(batch["s_detector"]))
    assert torch.equal(samples["vertex"][0], batch["vertex"]) and torch.equal(samples["detector"][0], batch["detector"])
    # the unfolding draws first: the unfolded vertex events are unfold()'s
    assert torch.equal(samples["vertex"][1], model.unfold(batch["s_detector"], torch.Generator().manual_seed(5)))
    other = model.evaluation_samples(batch, torch.Generator().manual_seed(6))
    assert all(torch.equal(samples[k][0], other[k][0]) for k in samples)
    assert not torch.equal(samples["detector"][1], other["detector"][1])

    measured = {k: v for k, v in batch.items() if k != "vertex"}  # real data: no truth
    assert list(model.evaluation_samples(measured, torch.Generator().manual_seed(5))) == [
        "detector", "detector_scaled", "detector_condition", "detector_s"
    ]  # fmt: skip


# --- statistics only through training_sample (C2) -------------------------------------------------


_LazyAIDAPT = with_lazy_training_split(AIDAPTDataModule)


def test_folding_scalers_are_fitted_through_training_sample(aidapt_dir, tmp_path):
    data = _LazyAIDAPT(data_dir=str(aidapt_dir), source="made", made_events=AIDAPT_EVENTS, batch_size=2000)
    model = tiny_folding_gan()
    _trainer(tmp_path, max_steps=0).fit(model, data)
    assert data.samples_taken == 1
    train = data._train
    assert torch.equal(model.v_scaler.data_min, train["vertex"].double().min(0).values)
    s = train["s_vertex"].double()
    assert torch.equal(model.s_scaler.data_range, s.max(0).values - s.min(0).values)


# --- validation chi2 under DDP (C3: model-internal evaluation) -----------------------------------


def _validate(model: FoldingGAN, batches: list[dict], rank: int, world_size: int) -> dict[str, float]:
    """The logged val metrics of ``model`` on ``batches`` as rank ``rank`` of ``world_size`` sees them."""
    logged = {}
    model.log_dict = lambda values, **kwargs: logged.update(values)
    model.trainer = SimpleNamespace(world_size=world_size, global_rank=rank)
    model.on_validation_epoch_start()
    with torch.no_grad():
        for batch_idx, batch in enumerate(batches[rank::world_size]):  # the C2 evaluation sampler
            model.validation_step(batch, batch_idx)
    model.on_validation_epoch_end()
    return logged


def _ddp_validate(rank: int, world_size: int, init_file: str, ckpt: str, batches: list, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model = FoldingGAN.load_from_checkpoint(ckpt).eval()
        torch.save(_validate(model, batches, rank, world_size), f"{out}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_validation_chi2_on_two_ranks_equals_the_single_process_value(aidapt_dir, folding_ckpt, tmp_path):
    val = _first(_data(aidapt_dir).datasets["val"].tensors, 857)
    size = 200  # 5 batches, the last one short: rank 0 gets 3, rank 1 gets 2
    batches = [{k: v[i : i + size] for k, v in val.items()} for i in range(0, 857, size)]
    assert len(batches) == 5 and len(batches[-1]["vertex"]) == 57
    single = _validate(FoldingGAN.load_from_checkpoint(folding_ckpt).eval(), batches, rank=0, world_size=1)
    out = tmp_path / "logged"
    # two real gloo ranks; forked, so they start in a fraction of a second (no re-import)
    args = (2, str(tmp_path / "pg"), str(folding_ckpt), batches, str(out))
    mp.start_processes(_ddp_validate, args=args, nprocs=2, start_method="fork")
    for rank in (0, 1):
        assert torch.load(f"{out}.{rank}") == single, rank  # exact: same noise per event, same sample
    assert set(single) >= {"val/chi2", "val/disc_acc", "val/chi2/alpha"}


def test_frozen_batchnorm_statistics_never_move_in_fit(aidapt_dir):
    """generator_bn: frozen is BatchNorm as Keras ran it: a learned affine map on the 0/1 statistics."""
    import lightning as L

    model = tiny_folding_gan(generator_bn="frozen")
    trainer = L.Trainer(max_steps=12, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, accelerator="cpu", limit_val_batches=1)  # fmt: skip
    trainer.fit(model, _data(aidapt_dir))
    norms = [m for m in model.generator.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert norms and all(int(m.num_batches_tracked) == 0 for m in norms)
    assert all(torch.equal(m.running_mean, torch.zeros_like(m.running_mean)) for m in norms)
    assert any(not torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)  # the affine part learns (2 G steps)
