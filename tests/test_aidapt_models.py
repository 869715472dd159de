"""The A(i)DAPT GANs: scalers, the noisy-label loss, residual folding, frozen folding in unfolding."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from datamodules.aidapt import AIDAPTDataModule
from hepgen.models.aidapt import FoldingGAN, UnfoldingGAN, load_folding_gan
from hepgen.nn.scaling import MinMaxScaler
from tests.conftest import AIDAPT_EVENTS, tiny_folding_gan


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


def test_missing_folding_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.ckpt"):
        load_folding_gan(tmp_path / "nothing.ckpt")


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
