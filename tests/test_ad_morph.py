"""Morph (FETA) on the small Toy NR study, whose data/MC difference is known: the frozen base never
changes, T starts at the identity, the morphed MC matches the data background in the signal region
better than the raw MC, the morph's likelihood beats the base's, and a bad base_ckpt is one line."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from callbacks.anomaly import TemplateWriter
from datamodules.ad_regions import RegionDataModule
from hepgen.cli import main
from hepgen.errors import ConfigValueError, HepgenError
from hepgen.io.anomaly import read_template
from hepgen.models.ad_generate import ConditionalFlow
from hepgen.models.ad_morph import MorphFlow
from hepgen.synth.ad_toy import make_toy
from tests.conftest import ROOT

EPOCHS = 10


def _trainer(root: Path, **kwargs) -> L.Trainer:
    settings = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                    accelerator="cpu", default_root_dir=root)  # fmt: skip
    return L.Trainer(**{**settings, **kwargs})


def _region(folder: Path, **kwargs) -> RegionDataModule:
    return RegionDataModule(data_dir=str(folder), source="real", signal_fraction=0.05, test_sample=None, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: a flow step is many small operations (see tests/test_ad_generate.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base_ckpt(ad_study_dir, tmp_path_factory) -> Path:
    """Stage 1: a 2 x 32 MAF fitted for 10 epochs to the MC control region (about 12,000 training
    events), keeping its 2 best epochs."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("morph_base")
    data = _region(ad_study_dir, sample="mc", region="cr")
    trainer = _trainer(folder, max_epochs=EPOCHS)
    trainer.fit(ConditionalFlow(data.n_features, data.n_context, transforms=2, hidden=32, n_best=2), data)
    trainer.save_checkpoint(folder / "base.ckpt")
    return folder / "base.ckpt"


class _Watch(Callback):
    """What training did to the base: its modes at every step, and the optimizer's parameters."""

    def __init__(self) -> None:
        self.base_modes: set[bool] = set()
        self.optimized: list[torch.nn.Parameter] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.optimized = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.base_modes |= {m.training for m in pl_module.base.modules()}


@pytest.fixture(scope="module")
def trained(base_ckpt, ad_study_dir, tmp_path_factory):
    """Stage 2: T (4 x 4, the seed's top flow) fitted for 10 epochs to the data control region."""
    torch.manual_seed(1)
    folder = tmp_path_factory.mktemp("morph")
    data = _region(ad_study_dir, sample="data", region="cr")
    model = MorphFlow(str(base_ckpt), data.n_features, data.n_context, transforms=4, hidden=4, lr=1e-3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    watch = _Watch()
    trainer = _trainer(folder, max_epochs=EPOCHS, callbacks=[watch])
    trainer.fit(model, data)
    trainer.save_checkpoint(folder / "morph.ckpt")
    return {"model": model.eval(), "data": data, "before": before, "watch": watch, "ckpt": folder / "morph.ckpt"}


def test_the_frozen_base_never_changes(trained):
    """After training the base's weights and buffers are bit-identical, none of its parameters was
    in the optimizer or got a gradient, and it stayed in evaluation mode at every step (also when
    the parent is put in training mode); T did move."""
    model, before, watch = trained["model"], trained["before"], trained["watch"]
    after = model.state_dict()
    base_keys = [k for k in before if k.startswith("base.")]
    assert base_keys and all(torch.equal(before[k], after[k]) for k in base_keys)
    base_params = {id(p) for p in model.base.parameters()}
    assert {id(p) for p in watch.optimized} == {id(p) for p in model.top.parameters()}
    assert not base_params & {id(p) for p in watch.optimized}
    assert all(not p.requires_grad and p.grad is None for p in model.base.parameters())
    assert watch.base_modes == {False}
    model.train()
    assert not any(m.training for m in model.base.modules()) and model.top.training
    model.eval()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("top."))


@pytest.mark.parametrize("transforms", [2, 3])
def test_before_training_the_template_is_the_mc_itself(base_ckpt, ad_study_dir, tmp_path, transforms):
    """T starts as the identity (an even and an odd number of layers: the reversals between them
    must cancel): predict writes the MC SR events themselves, to 1e-5, in file order, each with its
    context weight, and the morph's likelihood is the base's."""
    all_sr = np.load(ad_study_dir / "mc_events.npz")["mc_events_sr"]
    mc_sr, weights = all_sr[:300], np.random.default_rng(3).uniform(0.5, 2.0, len(all_sr))
    np.savez(tmp_path / "w.npz", weights=weights)
    data = _region(ad_study_dir, sample="data", region="cr", predict_contexts="mc_sr", predict_events=300,
                   context_weights=str(tmp_path / "w.npz"), batch_size=64)  # fmt: skip
    model = MorphFlow(str(base_ckpt), 4, 2, transforms=transforms, hidden=8)
    _trainer(tmp_path, callbacks=[TemplateWriter()]).predict(model, datamodule=data, return_predictions=False)
    samples, read_weights = read_template(tmp_path / "predictions" / "template.npz", 6)
    np.testing.assert_array_equal(samples[:, :2], mc_sr[:, :2])
    np.testing.assert_allclose(samples[:, 2:], mc_sr[:, 2:], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(read_weights, weights[:300])
    x, c = torch.as_tensor(mc_sr[:, 2:]), torch.as_tensor(mc_sr[:, :2])
    torch.testing.assert_close(model.log_prob(x, c), model.base.log_prob(x, c), rtol=0, atol=1e-5)


def test_the_closure_template_is_the_held_out_cr_mc_with_its_weights(base_ckpt, ad_study_dir, tmp_path):
    """closure_events: mc_held adds template_cr.npz, the held-out control-region MC through T^-1
    (the identity before training) with the weights of closure_weights, in the held-out order."""
    from datamodules.anomaly import control_region_hold_out
    from hepgen.io.anomaly import read_seed_study

    held = control_region_hold_out(read_seed_study(ad_study_dir, 0.05, 1), split_seed=42)["mc_held"]
    weights = np.random.default_rng(4).uniform(0.5, 2.0, len(held))
    np.savez(tmp_path / "w_cr.npz", weights=weights)
    data = _region(ad_study_dir, sample="data", region="cr", predict_contexts="mc_sr", predict_events=100,
                   closure_events="mc_held", closure_weights=str(tmp_path / "w_cr.npz"), batch_size=256)  # fmt: skip
    model = MorphFlow(str(base_ckpt), 4, 2, transforms=2, hidden=8)
    _trainer(tmp_path, callbacks=[TemplateWriter()]).predict(model, datamodule=data, return_predictions=False)
    samples, read_weights = read_template(tmp_path / "predictions" / "template_cr.npz", 6)
    np.testing.assert_array_equal(samples[:, :2], held[:, :2])
    np.testing.assert_allclose(samples[:, 2:], held[:, 2:], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(read_weights, weights)
    assert read_template(tmp_path / "predictions" / "template.npz", 6)[0].shape == (100, 6)
    np.savez(tmp_path / "short.npz", weights=weights[:-1])
    short = _region(ad_study_dir, sample="data", region="cr", predict_contexts="mc_sr",
                    closure_events="mc_held", closure_weights=str(tmp_path / "short.npz"))  # fmt: skip
    with pytest.raises(Exception, match=r"short.npz: 'weights' has shape .* held-out CR MC"):
        short.predict_dataloader()


def _residual_kl(events: np.ndarray) -> float:
    """KL(N(m, S) || N(0, I)) of the residuals r = x - B c of Toy NR rows [c, x] (N, 6): 0 for the
    data background, whose x | c ~ N(B c, I); the raw MC's N(delta, 1.1^2 I) gives about 0.05 nats."""
    c, x = events[:, :2], events[:, 2:]
    r = x - c @ np.asarray(make_toy("nr").b).T
    m, s = r.mean(0), np.cov(r.T)
    return 0.5 * float(np.trace(s) + m @ m - len(m) - np.linalg.slogdet(s)[1])


def test_the_morph_carries_the_mc_onto_the_data_background_in_the_signal_region(trained, ad_study_dir):
    """Toy NR's MC has x | c ~ N(B c + delta, 1.1^2 I) where the data background has N(B c, I). The
    morph learnt the difference in the control region only; transported through T^-1 at their own
    contexts, the MC's SR events must come much closer to x | c of the data: the Gaussian KL
    divergence of their residuals from N(0, I) and the mean error of the residuals' widths (raw:
    0.048 nats and 0.1) both fall below half the raw MC's (seen: 0.009-0.014 nats, 0.01-0.024 over
    three seeds; T extrapolates into the SR corner, so the SR does not close as well as the CR).
    In the CR, where T was fitted, the morph closes to a thousandth of a nat."""
    model = trained["model"]
    mc = np.load(ad_study_dir / "mc_events.npz")
    b = np.asarray(make_toy("nr").b)

    def morphed(rows: np.ndarray) -> np.ndarray:
        x = model.morph(torch.as_tensor(rows[:, 2:]), torch.as_tensor(rows[:, :2])).numpy()
        return np.c_[rows[:, :2], x]

    def width_error(rows: np.ndarray) -> float:
        return float(np.abs((rows[:, 2:] - rows[:, :2] @ b.T).std(0) - 1.0).mean())

    sr = mc["mc_events_sr"]
    raw_kl, morph_kl = _residual_kl(sr), _residual_kl(morphed(sr))
    assert raw_kl > 0.04
    assert morph_kl < raw_kl / 2, (raw_kl, morph_kl)
    assert width_error(morphed(sr)) < width_error(sr) / 2
    assert _residual_kl(morphed(mc["mc_events_cr"])) < 0.002


def test_the_morph_likelihood_beats_the_base_on_held_out_data(trained):
    """On the held-out validation events of the data CR, log p_data(x | c) of the morph beats the
    frozen MC flow alone by more than 0.02 nats per event (the true data/MC KL is 0.04) and five
    standard errors; the logged val/nll and val/base_nll are these numbers in the base's space."""
    model, data = trained["model"], trained["data"]
    val = data.datasets["val"].tensors
    morph = model.log_prob(val["features"], val["context"]).numpy()
    base = model.base.log_prob(val["features"], val["context"]).numpy()
    gain = morph - base
    assert gain.mean() > max(0.02, 5 * gain.std() / np.sqrt(len(gain))), (gain.mean(), gain.std())
    metrics = _trainer(trained["ckpt"].parent).validate(model, data, verbose=False)[0]
    assert metrics["val/base_nll"] - metrics["val/nll"] == pytest.approx(gain.mean(), abs=1e-4)
    assert metrics["val/nll_physical"] == pytest.approx(-morph.mean(), abs=1e-4)


def test_a_bad_base_checkpoint_is_one_line_naming_the_option(trained, ad_study_dir, tmp_path, capsys, monkeypatch):
    """A missing file (through the command line), a checkpoint of another class and a base of
    another study: each one line that starts with base_ckpt."""
    monkeypatch.delenv("HEPGEN_DEBUG", raising=False)
    missing = tmp_path / "nothing.ckpt"
    with pytest.raises(SystemExit):
        main([
            "fit", "-c", str(ROOT / "experiments" / "ad" / "morph_toy_nr.yaml"),
            "--model.init_args.base_ckpt", str(missing), "--data.init_args.data_dir", str(ad_study_dir),
            "--data.init_args.source", "real", "--data.init_args.signal_fraction", "0.05",
            "--run.root", str(tmp_path / "runs"), "--trainer.logger", "false",
        ])  # fmt: skip
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("hepgen: error: base_ckpt: ") and str(missing) in line
    assert "morph_base_toy_nr.yaml" in line  # says what to do
    with pytest.raises(HepgenError) as error:
        MorphFlow(str(trained["ckpt"]), 4, 2)  # a MorphFlow is not a ConditionalFlow
    message = str(error.value)
    assert message.startswith("base_ckpt: ") and "not a ConditionalFlow checkpoint" in message and "\n" not in message
    with pytest.raises(ConfigValueError, match=r"^base_ckpt: .* 4 features given 2 context variables, but .* 5 and 2"):
        MorphFlow(str(trained["model"].hparams.base_ckpt), 5, 2)


def test_logged_training_nll_is_the_mean_over_the_epochs_events(base_ckpt, ad_study_dir, tmp_path):
    """train/nll is averaged in the step and logged once an epoch, as ConditionalFlow's: with the
    learning rate at 0 it is the mean NLL of every training event under T's initial weights,
    each event counted once (the last, smaller batch weighs less than the others)."""
    torch.manual_seed(2)
    data = _region(ad_study_dir, sample="data", region="cr", batch_size=300)
    model = MorphFlow(str(base_ckpt), data.n_features, data.n_context, transforms=2, hidden=4, lr=0.0)
    trainer = _trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(model, data)
    train = data.datasets["train"].tensors
    assert len(train["features"]) % 300 > 0
    with torch.no_grad():
        log_p, _, _ = model._log_likelihoods(train)
    assert float(trainer.callback_metrics["train/nll"]) == pytest.approx(float(-log_p.mean()), rel=1e-5)
