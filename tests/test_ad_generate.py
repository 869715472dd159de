"""Generate (CATHODE): the flow's likelihood on Toy R, template sampling, the best-epoch ensemble,
the template file, KDE contexts, and the fit -> predict -> classifier chain through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from scipy.stats import multivariate_normal

from callbacks.anomaly import TemplateWriter
from datamodules.ad_regions import RegionDataModule, kde_sr_contexts
from hepgen.cli import main
from hepgen.io.anomaly import read_template
from hepgen.models.ad_generate import ConditionalFlow
from hepgen.nn.maf import FlowPreprocessing
from hepgen.synth.ad_toy import make_ad_toy, make_toy
from tests.conftest import ROOT

#: A small Toy R study (S/B = 0): about 8,800 sideband events of data (half the CR kept).
TOY_R = dict(
    kind="r", events=3000, signal_fractions=(0.0,), seeds=(1,), cr_keep=0.5, test_background=2000,
    test_signal=500, fullsup_background=1000, fullsup_signal=500, progress=False,
)  # fmt: skip
EPOCHS = 8


def _trainer(root: Path, **kwargs) -> L.Trainer:
    settings = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                    accelerator="cpu", default_root_dir=root)  # fmt: skip
    return L.Trainer(**{**settings, **kwargs})


class _ValHistory(Callback):
    """The validation losses of every epoch (read after the model's own epoch-end hook)."""

    def __init__(self) -> None:
        self.nll: list[float] = []
        self.nll_physical: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.nll.append(float(trainer.callback_metrics["val/nll"]))
        self.nll_physical.append(float(trainer.callback_metrics["val/nll_physical"]))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: a MAF step is many small operations, and two threads sharing busy cores
    are up to 70 times slower (the experiments set run.threads 1 for the same reason)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy_r_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("generate") / "toy_r"
    make_ad_toy(folder, **TOY_R)
    return folder


def _region(folder: Path, **kwargs) -> RegionDataModule:
    return RegionDataModule(data_dir=str(folder), source="real", toy_kind="r", signal_fraction=0.0, **kwargs)


@pytest.fixture(scope="module")
def trained(toy_r_dir, tmp_path_factory):
    """A 4 x 64 MAF fitted for 8 epochs on the Toy R sidebands, keeping its 3 best epochs."""
    torch.manual_seed(0)
    data = _region(toy_r_dir, batch_size=256)
    model = ConditionalFlow(data.n_features, data.n_context, transforms=4, hidden=64, n_best=3, oversample=4)
    history = _ValHistory()
    _trainer(tmp_path_factory.mktemp("fit"), max_epochs=EPOCHS, callbacks=[history]).fit(model, data)
    return model.eval(), data, history


def test_flow_likelihood_beats_a_gaussian_on_toy_r_sidebands(trained):
    """The issue's bar: on held-out sideband events the flow's log p(x | m), in physical units, beats
    the best single Gaussian N(x; mu, Sigma) fitted to the training features, and comes close to the
    toy's exact N(x; A m, I). Physical units include the preprocessing's Jacobian: the logged
    val/nll_physical must equal the model's own log_prob, and differ from val/nll by it."""
    model, data, history = trained
    train, val = data.datasets["train"].tensors, data.datasets["val"].tensors
    x_val, m_val = val["features"].double().numpy(), val["context"].double().numpy()[:, 0]
    flow = model.log_prob(val["features"], val["context"], ensemble=False).numpy()
    x_train = train["features"].double().numpy()
    gaussian = multivariate_normal(x_train.mean(0), np.cov(x_train.T, bias=True)).logpdf(x_val)
    exact = multivariate_normal(np.zeros(4)).logpdf(x_val - m_val[:, None] * np.asarray(make_toy("r").a))
    error = (flow - gaussian).std() / math.sqrt(len(flow))
    assert flow.mean() - gaussian.mean() > max(0.1, 5 * error)  # about 0.2 nats: the features lean on m
    assert exact.mean() - flow.mean() < 0.05
    # the last validation ran on the current weights: the logged physical NLL is this likelihood
    assert history.nll_physical[-1] == pytest.approx(-flow.mean(), abs=2e-3)
    log_det = -float(torch.log(model.features.scaler.std).sum())  # standardising: log|dy/dx| = -sum log std
    assert history.nll[-1] - history.nll_physical[-1] == pytest.approx(log_det, abs=2e-3)


@pytest.mark.parametrize("kind", ["standard", "logit"])
def test_preprocessing_inverts_and_its_jacobian_is_the_determinant(kind):
    """y(x) and back is the identity, and log|det dy/dx| matches autograd's Jacobian (the logit's
    min-max, logit and standardisation each contribute)."""
    rng = np.random.default_rng(1)
    x = torch.as_tensor(rng.gamma(2.0, 1.0, (500, 3)) * [1.0, 10.0, 0.1], dtype=torch.float64)
    pre = FlowPreprocessing(3, kind).fit(x)
    y, log_det = pre(x[:5])
    assert torch.allclose(pre.inverse(y.double()), x[:5], rtol=1e-5, atol=1e-5)
    for i in range(5):
        def z(row):  # x -> the map before standardising
            return pre._logit(row[None])[0][0] if kind == "logit" else row

        jac = torch.autograd.functional.jacobian(z, x[i])
        jac = jac / pre.scaler.std[:, None]  # the standardisation after it
        assert float(torch.logdet(jac)) == pytest.approx(float(log_det[i]), abs=1e-4)


def test_sample_template_keeps_each_context_beside_its_own_samples(trained):
    """k = 4: row n k + j is context n with its j-th sample; the samples follow p(x | m) of Toy R
    (regressing x on the m beside it gives the slope A and unit scatter, also between the k copies of
    one context: none is a copy of another). The seed's flattening would put samples of other
    contexts beside m, and the slope would vanish."""
    model, _, _ = trained
    m = torch.linspace(0.2, 3.0, 1000, dtype=torch.float64)[:, None]
    rows = model.sample_template(m, oversample=4, generator=torch.Generator().manual_seed(3)).numpy()
    assert rows.shape == (4000, 5) and rows.dtype == np.float64
    np.testing.assert_array_equal(rows[:, 0], np.repeat(m[:, 0].numpy(), 4))
    design = np.c_[np.ones(len(rows)), rows[:, 0]]
    (intercept, slope), *_ = np.linalg.lstsq(design, rows[:, 1:], rcond=None)
    np.testing.assert_allclose(slope, make_toy("r").a, atol=0.1)
    np.testing.assert_allclose(intercept, 0.0, atol=0.15)
    copies = rows[:, 1:].reshape(1000, 4, 4)
    within = copies.var(axis=1, ddof=1).mean(0)  # scatter of one context's k samples
    np.testing.assert_allclose(within, 1.0, atol=0.15)


def test_best_epochs_are_the_lowest_and_draw_equal_shares(trained):
    """The kept epochs are the n_best lowest validation losses; copy j of context n comes from kept
    epoch (row k + j) mod E, each an equal share, drawn from the shared noise by that epoch's flow."""
    model, _, history = trained
    kept = model.kept_epochs()
    assert sorted(int(model.best_epoch[i]) for i in kept) == sorted(np.argsort(history.nll)[:3].tolist())
    np.testing.assert_allclose(sorted(model.best_nll.tolist()), sorted(history.nll)[:3], rtol=1e-6)

    rows = torch.arange(10, 310)  # a batch that does not start at 0
    member = ConditionalFlow.member_of(rows, 4, 3)
    assert np.bincount(member.numpy()).tolist() == [400, 400, 400]
    contexts = torch.rand(300, 1, dtype=torch.float64) + 0.5
    out = model.sample_template(contexts, 4, torch.Generator().manual_seed(5), rows)
    noise = torch.randn(1200, 4, generator=torch.Generator().manual_seed(5))
    c = model.context(contexts.repeat_interleave(4, 0)).float()
    for e, slot in enumerate(kept):
        pick = member == e
        x, _ = model.best[slot]._transform.inverse(noise[pick], context=c[pick])
        np.testing.assert_allclose(out[pick, 1:].numpy(), model.features.inverse(x).numpy(), rtol=1e-5, atol=1e-5)
    # the epochs' flows differ, so the assignment matters
    x_other, _ = model.best[kept[1]]._transform.inverse(noise[member == 0], context=c[member == 0])
    assert not np.allclose(out[member == 0, 1:].numpy(), model.features.inverse(x_other).numpy(), atol=1e-3)


def test_template_file_round_trips_with_context_weights(trained, toy_r_dir, tmp_path):
    """predict writes predictions/template.npz that read_template reads: rows [m, x] of the MC SR
    contexts in file order, each repeated k times beside its samples, weighed by its context weight;
    a second predict writes template.1.npz."""
    model, _, _ = trained
    mc_sr = np.load(toy_r_dir / "mc_events.npz")["mc_events_sr"]
    weights = np.random.default_rng(2).uniform(0.5, 2.0, len(mc_sr))
    np.savez(tmp_path / "w.npz", weights=weights)
    data = _region(toy_r_dir, predict_contexts="mc_sr", predict_events=50, context_weights=str(tmp_path / "w.npz"),
                   batch_size=16)  # fmt: skip
    trainer = _trainer(tmp_path, callbacks=[TemplateWriter()])
    trainer.predict(model, datamodule=data, return_predictions=False)
    samples, read_weights = read_template(tmp_path / "predictions" / "template.npz", 5)
    assert samples.shape == (200, 5)
    np.testing.assert_array_equal(samples[:, 0], np.repeat(mc_sr[:50, 0], 4))
    np.testing.assert_array_equal(read_weights, np.repeat(weights[:50], 4))
    trainer.predict(model, datamodule=data, return_predictions=False)
    assert (tmp_path / "predictions" / "template.1.npz").is_file()


def test_closure_template_is_sampled_at_the_held_out_sideband_contexts(trained, toy_r_dir, tmp_path):
    """With closure_events: data_held, predict adds template_cr.npz: k samples at each held-out
    sideband mass, in the held-out order, weight 1, beside the SR template (masses in the window)."""
    from datamodules.anomaly import control_region_hold_out
    from hepgen.io.anomaly import read_seed_study

    model, _, _ = trained
    held = control_region_hold_out(read_seed_study(toy_r_dir, 0.0, 1), split_seed=42)["data_held"]
    data = _region(toy_r_dir, predict_contexts="kde_sr", predict_events=40, closure_events="data_held", batch_size=64)
    _trainer(tmp_path, callbacks=[TemplateWriter()]).predict(model, datamodule=data, return_predictions=False)
    sr, _ = read_template(tmp_path / "predictions" / "template.npz", 5)
    cr, weights = read_template(tmp_path / "predictions" / "template_cr.npz", 5)
    assert sr.shape == (160, 5) and np.all((sr[:, 0] >= 1.0) & (sr[:, 0] <= 1.5))
    np.testing.assert_array_equal(cr[:, 0], np.repeat(held[:, 0], 4))
    np.testing.assert_array_equal(weights, np.ones(len(cr)))
    assert np.all((held[:, 0] < 1.0) | (held[:, 0] > 1.5))  # the sidebands


def test_context_weights_must_match_the_contexts(toy_r_dir, tmp_path):
    np.savez(tmp_path / "w.npz", weights=np.ones(7))
    data = _region(toy_r_dir, predict_contexts="mc_sr", context_weights=str(tmp_path / "w.npz"))
    with pytest.raises(Exception, match="one weight per event"):
        data.predict_dataloader()


def test_a_predict_batch_below_one_is_one_line_naming_the_option(toy_r_dir):
    from hepgen.errors import ConfigValueError

    with pytest.raises(ConfigValueError, match=r"data.predict_batch_size=0: give at least 1"):
        _region(toy_r_dir, predict_batch_size=0)


def test_kde_contexts_stay_in_the_signal_region(toy_r_dir):
    """KDE draws of the data's SR masses lie inside the SR window and follow the falling spectrum."""
    data = _region(toy_r_dir, predict_contexts="kde_sr", predict_events=20_000)
    sr = data._study()["data_sr"][:, :1]
    drawn = data.sr_contexts()
    assert drawn.shape == (20_000, 1)
    assert sr.min() <= drawn.min() and drawn.max() <= sr.max()
    assert 1.0 <= drawn.min() and drawn.max() <= 1.5
    assert np.mean(drawn) == pytest.approx(np.mean(sr), abs=0.01)
    below = np.mean(drawn < 1.25)  # Exp(1) in [1, 1.5]: 56 % below the middle
    assert below == pytest.approx(np.mean(sr < 1.25), abs=0.03)
    # a wide kernel still never leaves the window (the logit map), in two dimensions too
    rng = np.random.default_rng(0)
    box = rng.uniform([1.0, 1.0], [3.0, 2.0], (500, 2))
    wide = kde_sr_contexts(box, 5000, rng, bandwidth=1.0)
    assert np.all(wide >= box.min(0)) and np.all(wide <= box.max(0))


def test_fit_then_predict_writes_a_template_the_classifier_reads(tmp_path):
    """hepgen fit (generate_toy_r.yaml on a tiny made study) -> hepgen predict --ckpt_path last
    -> predictions/template.npz -> the SR classifier (method template) trains on it."""
    folder = tmp_path / "study"
    make_ad_toy(folder, kind="r", events=3000, signal_fractions=(0.0,), seeds=(1,), test_background=2000,
                test_signal=500, fullsup_background=1000, fullsup_signal=500, progress=False)  # fmt: skip
    config = ROOT / "experiments" / "ad" / "generate_toy_r.yaml"
    run = ["--run.root", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false"]
    main([
        "fit", "-c", str(config), *run, "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu",
        "--data.init_args.data_dir", str(folder), "--data.init_args.source", "real",
        "--data.init_args.signal_fraction", "0.0", "--data.init_args.predict_events", "300",
        "--model.init_args.hidden", "16",
    ])  # fmt: skip
    run_dir = tmp_path / "runs" / "ad" / "generate_toy_r" / "v0"
    main(["predict", "-c", str(run_dir / "config.yaml"), "--ckpt_path", "last"])
    template = run_dir / "predictions" / "template.npz"
    samples, weights = read_template(template, 5)
    assert samples.shape == (1200, 5) and np.all(weights == 1.0)
    assert np.all((samples[:, 0] >= 1.0) & (samples[:, 0] <= 1.5))  # KDE masses, inside the SR
    classifier = ROOT / "experiments" / "ad" / "ideal_toy_nr.yaml"
    main([
        "fit", "-c", str(classifier), *run, "--trainer.fast_dev_run", "1", "--trainer.accelerator", "cpu",
        "--data.init_args.data_dir", str(folder), "--data.init_args.source", "real", "--data.init_args.toy_kind", "r",
        "--data.init_args.signal_fraction", "0.0", "--data.init_args.method", "template",
        "--data.init_args.template", str(template), "--model.init_args.members", "2",
    ])  # fmt: skip


def test_logged_training_nll_is_the_mean_over_the_epochs_events(toy_r_dir, tmp_path):
    """train/nll is averaged in the step and logged once an epoch (a self.log per step cost a
    fifth of the step): with the learning rate at 0 it is the mean NLL of every training event
    under the initial weights, each event counted once (the last, smaller batch weighs less)."""
    torch.manual_seed(0)
    data = _region(toy_r_dir, batch_size=300)
    model = ConditionalFlow(data.n_features, data.n_context, transforms=2, hidden=16, lr=0.0)
    trainer = _trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(model, data)
    train = data.datasets["train"].tensors
    assert len(train["features"]) % 300 > 0
    with torch.no_grad():
        y, c, _ = model._standardised(train)
        expected = -model.flow.log_prob(y, context=c).double().mean()
    assert float(trainer.callback_metrics["train/nll"]) == pytest.approx(float(expected), rel=1e-5)
