"""The weakly supervised classifier ensemble, its SIC metrics and the signal-region datamodule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from callbacks.anomaly import ReweightTemplateWriter
from datamodules.anomaly import WeakSupervisionDataModule
from hepgen.cli import main
from hepgen.metrics.roc import roc_curve, sic_at_rejection, sic_floor
from hepgen.models.ad_classifier import TreeClassifier, WeakClassifier
from hepgen.nn.ensemble import EnsembleMLP
from tests.conftest import ROOT
from tests.test_cli_runs import _one_line_error


def _member_as_mlp(ensemble: EnsembleMLP, m: int) -> nn.Sequential:
    """Member m of an ensemble as a plain torch MLP with the same weights."""
    layers = []
    for i, layer in enumerate(ensemble.layers):
        linear = nn.Linear(*layer.weight.shape[1:])
        with torch.no_grad():
            linear.weight.copy_(layer.weight[m].T)
            linear.bias.copy_(layer.bias[m, 0])
        layers.append(linear)
        if i < len(ensemble.layers) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def test_an_ensemble_member_trains_exactly_as_the_same_mlp_alone():
    """Members share nothing: member 1 of a 3-member ensemble follows the trajectory of the same
    MLP trained alone with Adam on the same batches (so the ensemble is 3 independent runs)."""
    torch.manual_seed(0)
    ensemble = EnsembleMLP(3, 4, (16, 8))
    alone = _member_as_mlp(ensemble, 1)
    opt_ensemble = torch.optim.Adam(ensemble.parameters(), lr=1e-2)
    opt_alone = torch.optim.Adam(alone.parameters(), lr=1e-2)
    for _ in range(20):
        x, y = torch.randn(64, 4), (torch.rand(64) < 0.5).float()
        loss_ensemble = nn.functional.binary_cross_entropy_with_logits(ensemble(x), y.expand(3, -1), reduction="none")
        loss_ensemble.mean(-1).sum().backward()
        nn.functional.binary_cross_entropy_with_logits(alone(x).squeeze(-1), y).backward()
        for opt in (opt_ensemble, opt_alone):
            opt.step()
            opt.zero_grad()
    x = torch.randn(100, 4)
    torch.testing.assert_close(ensemble(x)[1], alone(x).squeeze(-1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ensemble(x)[0], ensemble(x)[1])  # different initialisations


def test_ensemble_members_start_like_torch_linear_layers():
    torch.manual_seed(1)
    ensemble = EnsembleMLP(50, 10, (32,))
    weight = ensemble.layers[0].weight  # (M, in, out)
    bound = 1 / np.sqrt(10)
    assert float(weight.abs().max()) <= bound and float(weight.abs().max()) > 0.95 * bound
    assert abs(float(weight.std()) - bound / np.sqrt(3)) < 0.01  # uniform(-b, b) has std b/sqrt(3)


def test_sic_at_rejection_and_floor_on_hand_made_scores():
    # 10 signal events scored 10..19, 1000 background scored 0..999 (/100): a cut at 9.5 keeps all
    # signal and the 50 background events scored >= 9.5; at rejection 1000 one background event.
    signal = np.arange(1000, 1010) / 100.0
    background = np.arange(1000) / 100.0
    score = np.r_[signal, background]
    label = np.r_[np.ones(10), np.zeros(1000)]
    eps_s, eps_b, _ = roc_curve(score, label)
    # every signal score is above every background score: eps_s = 1 already at eps_b = 0
    assert sic_at_rejection(eps_s, eps_b, [1e3])[0] == pytest.approx(1.0 / np.sqrt(1e-3))
    assert sic_floor(200_000) == pytest.approx(3.125e-5)  # the seed's 40 % rule for 200k events
    # signal mixed into the background: a signal score 5.005 sits among background 0..9.99
    eps_s, eps_b, _ = roc_curve(np.r_[5.005, background], np.r_[1.0, np.zeros(1000)])
    assert sic_at_rejection(eps_s, eps_b, [2.0])[0] == pytest.approx(1.0 / np.sqrt(0.5), rel=1e-2)


def test_sic_at_rejection_interpolates_the_roc():
    eps_s = np.array([0.0, 0.2, 0.3, 0.6, 1.0])
    eps_b = np.array([0.0, 1e-4, 1e-4, 3e-3, 1.0])  # two cuts at eps_b = 1e-4: the one with more signal counts
    assert sic_at_rejection(eps_s, eps_b, 1e4) == pytest.approx(0.3 / np.sqrt(1e-4))
    eps_s_1e3 = 0.3 + (1e-3 - 1e-4) / (3e-3 - 1e-4) * 0.3
    assert sic_at_rejection(eps_s, eps_b, 1e3) == pytest.approx(eps_s_1e3 / np.sqrt(1e-3))


# --- the classifier on a made study ---------------------------------------------------------------
def ad_args(subcommand: str, study: Path, root: Path, *extra: str) -> list[str]:
    return [
        subcommand, "-c", str(ROOT / "tests" / "conf" / "ad_tiny.yaml"),
        "--data.init_args.data_dir", str(study), "--run.root", str(root), "--run.experiment", "ad", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def ideal_run(ad_study_dir, tmp_path_factory) -> Path:
    """The tiny ensemble trained as the idealized AD (data vs true background), then tested."""
    root = tmp_path_factory.mktemp("ad_ideal")
    main(ad_args("fit", ad_study_dir, root, "--trainer.max_epochs", "60"))
    main(ad_args("test", ad_study_dir, root, "--ckpt_path", "last"))
    return next((root / "ad").glob("v*"))


def test_weak_supervision_finds_the_signal_without_signal_labels(ideal_run):
    """Trained only on data (with 5 % signal) vs background, the ensemble separates signal from
    background on the truth-labelled test set: well above random, and a fair share of the optimum."""
    test = json.loads((ideal_run / "metrics.json").read_text())["test"]
    assert test["auc"] > 0.9  # random: 0.5; the optimal classifier: 0.994
    assert test["optimal_max_sic"] == pytest.approx(9.0, abs=0.3)  # the toy's own record
    assert test["max_sic_fraction"] > 0.25  # 4,000 background events: far from the optimum, far above random
    assert (ideal_run / "plots" / "test" / "sic.png").is_file()


def test_every_member_keeps_the_weights_of_its_best_validation_epoch(ideal_run, ad_study_dir):
    model = WeakClassifier.load_from_checkpoint(ideal_run / "checkpoints" / "last.ckpt")
    data = WeakSupervisionDataModule(data_dir=str(ad_study_dir), source="real", signal_fraction=0.05, batch_size=500)
    data.setup("fit")
    val = data.datasets["val"].head()
    with torch.no_grad():
        best_sums, total = model.member_losses(model.best, val)
        last_sums, _ = model.member_losses(model.net, val)
    torch.testing.assert_close((best_sums / total).double(), model.best_loss, rtol=1e-5, atol=1e-6)
    assert bool((last_sums / total >= best_sums / total - 1e-6).all())  # the best is never worse than the last
    # each member stopped patience (2) epochs after its own best, and the run ended when all had
    checkpoint = torch.load(ideal_run / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["epoch"] < 59 and bool((model.bad_epochs >= 2).all())
    assert int(model.best_epoch.max()) == checkpoint["epoch"] - 2


# --- the tree option, predict on a file, bad input -------------------------------------------------
def test_trees_score_the_rows_of_any_file_in_the_lhco_layout_beside_their_labels(lhco_sr_like_dir, tmp_path):
    """hepgen predict writes (score, label) per row of the given 6-column file, in its order, and
    never over an earlier output; the scores are those of the trained (checkpointed) trees."""
    args = [
        "-c", str(ROOT / "experiments" / "ad" / "supervised_lhco_sr.yaml"), "--model", "TreeClassifier",
        "--model.init_args.members", "2", "--model.init_args.max_iter", "30",
        "--model.init_args.min_samples_leaf", "150", "--model.init_args.l2_regularization", "1.0",
        "--data.init_args.data_dir", str(lhco_sr_like_dir), "--data.init_args.lhco_test_background", "1000",
        "--data.init_args.lhco_test_signal", "500", "--trainer.max_epochs", "1", "--trainer.logger", "false",
        "--run.root", str(tmp_path), "--run.version", "trees",
    ]  # fmt: skip
    main(["fit", *args])
    main(["test", *args, "--ckpt_path", "last"])
    run_dir = tmp_path / "ad" / "supervised_lhco_sr" / "trees"
    assert json.loads((run_dir / "metrics.json").read_text())["test"]["auc"] > 0.95  # Toy R signal vs background
    rows = np.load(lhco_sr_like_dir / "sr_data_val.npy")[:300]
    scored = tmp_path / "to_score.npy"
    np.save(scored, rows)
    for _ in range(2):
        main(["predict", *args, "--ckpt_path", "last", "--data.init_args.predict_file", str(scored)])
    table = np.load(run_dir / "predictions" / "scores.npy")
    assert np.array_equal(np.load(run_dir / "predictions" / "scores.1.npy"), table)
    assert table.shape == (300, 2) and np.array_equal(table[:, 1], rows[:, -1])
    model = TreeClassifier.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    expected = model.score(torch.as_tensor(rows[:, 1:5], dtype=torch.float32)).numpy()
    np.testing.assert_allclose(table[:, 0], expected, rtol=1e-6)
    assert len(model.trees) == 2 and table[rows[:, -1] == 1, 0].mean() > table[rows[:, -1] == 0, 0].mean() + 0.5
    # an ensemble, not two copies: each member early-stops on its own random half of the events
    first, second = (tree.predict_proba(rows[:, 1:5])[:, 1] for tree in model.trees)
    assert np.abs(first - second).max() > 1e-3
    # the regularisation reached scikit-learn: no leaf holds fewer than min_samples_leaf events
    leaves = [n for fit in model.trees for (tree,) in fit._predictors for n in tree.nodes if n["is_leaf"]]
    assert model.trees[0].l2_regularization == 1.0 and min(n["count"] for n in leaves) >= 150


@pytest.mark.parametrize("option", [("min_samples_leaf", "0"), ("l2_regularization", "-1")])
def test_a_bad_tree_regularisation_is_one_line_naming_the_option(option, tmp_path, capsys, monkeypatch):
    key, value = option
    args = ["fit", "-c", str(ROOT / "experiments" / "ad" / "ideal_lhco_sr_trees.yaml"),
            f"--model.init_args.{key}", value, "--trainer.logger", "false", "--run.root", str(tmp_path)]  # fmt: skip
    line = _one_line_error(capsys, args, monkeypatch)
    assert f"{key}={value}" in line and "TreeClassifier" in line
    # the failed start leaves nothing behind, and keeps the runs root that was there before it
    assert tmp_path.is_dir() and not any(tmp_path.iterdir())


def test_a_signal_region_without_events_is_one_line_naming_the_file(tmp_path):
    from hepgen.io import DataFileError

    rng = np.random.default_rng(0)
    events = lambda n: rng.normal(size=(n, 6))  # noqa: E731
    np.savez(tmp_path / "mc_events.npz", mc_events_cr=events(50), mc_events_sr=events(20))
    np.savez(tmp_path / "ideal_bkg_events.npz", ideal_bkg_events_cr=events(50), ideal_bkg_events_sr=events(20))
    (tmp_path / "seed1").mkdir()
    np.savez(tmp_path / "seed1" / "data_0.01.npz", data_events_cr=events(50), data_events_sr=events(0), sig_percent=0.01)
    for name in ("test_SR", "fullsup_SR"):
        np.savez(tmp_path / f"{name}.npz", bkg_events_SR=events(30), sig_events_SR=events(10))
    data = WeakSupervisionDataModule(data_dir=str(tmp_path), source="real", signal_fraction=0.01)
    with pytest.raises(DataFileError) as error:
        data.setup("fit")
    message = str(error.value)
    assert str(tmp_path) in message and "label-1 (data or signal) sample" in message and "\n" not in message


# --- Reweight ------------------------------------------------------------------------------------
def test_weights_of_a_perfect_classifier_recover_the_known_data_mc_weight():
    """f = p_data / (p_data + p_MC) (a perfect classifier with equal class totals) gives back the
    toy's exact weight p_data / p_MC; the seed's crop then zeroes exactly the weights above mean + 3 sigma."""
    from hepgen.synth.ad_toy import make_toy

    toy = make_toy("nr")
    mc = toy.sample_mc(20_000, np.random.default_rng(3))
    log_w = toy.log_data_mc_weight(mc)
    f = 1.0 / (1.0 + np.exp(-log_w))
    np.testing.assert_allclose(ReweightTemplateWriter(crop_sigma=None).weights(f), np.exp(log_w), rtol=1e-6)
    # the crop: 1,000 weights near 1 and one outlier at 50; only the outlier is above mean + 3 sigma
    w = np.r_[np.linspace(0.5, 1.5, 1000), 50.0]
    cropped = ReweightTemplateWriter(crop_sigma=3.0).weights(w / (1 + w))
    np.testing.assert_allclose(cropped, np.r_[w[:-1], 0.0], rtol=1e-6)


def test_reweighting_moves_the_mc_onto_the_data_in_the_control_region(ad_study_dir, tmp_path):
    """The Reweight classifier (data vs MC in the CR, context and features) gives MC weights under
    which held-out MC matches the data: the context variance (1.2^2 in the MC, 1 in the data)
    comes back to the data's."""
    args = ad_args(
        "fit", ad_study_dir, tmp_path, "--data.init_args.method", "reweight", "--data.init_args.inputs", "all",
        "--trainer.max_epochs", "12", "--model.init_args.hidden", "[32, 32]", "--data.init_args.max_train_events", "10000",
    )  # fmt: skip
    main(args)
    model = WeakClassifier.load_from_checkpoint(next((tmp_path / "ad").glob("v*")) / "checkpoints" / "last.ckpt")
    data = WeakSupervisionDataModule(
        data_dir=str(ad_study_dir), source="real", signal_fraction=0.05, method="reweight", inputs="all"
    )
    data.setup("test")
    test = data.datasets["test"].head()  # held-out CR: data (1) and MC (0)
    mc = test["features"][test["label"] == 0]
    w = torch.as_tensor(ReweightTemplateWriter(crop_sigma=None).weights(model.score(mc).numpy()))
    context = mc[:, :2].double()
    data_var = test["features"][test["label"] == 1][:, :2].double().var(0)  # held-out data in the CR
    raw_var = context.var(0)
    weighted_var = (w[:, None] * (context - (w[:, None] * context).sum(0) / w.sum()) ** 2).sum(0) / w.sum()
    assert bool((raw_var - data_var > 0.3).all())  # the MC's wider context (1.2^2 before the SR cut)
    # most of the gap closes (a perfect classifier closes all of it, up to ~0.04 statistics here)
    assert bool(((weighted_var - data_var).abs() < 0.4 * (raw_var - data_var)).all()), (weighted_var, data_var)


def test_the_classes_weigh_the_same_as_in_the_seed():
    from datamodules.anomaly import equalise_classes

    label = np.r_[np.ones(30), np.zeros(10)]
    weight = equalise_classes(label, np.r_[np.ones(30), np.linspace(1.0, 3.0, 10)])
    assert weight[label == 1].sum() == pytest.approx(20.0) and weight[label == 0].sum() == pytest.approx(20.0)
    assert weight[-1] / weight[30] == pytest.approx(3.0)  # the template's own weights keep their ratios


def test_the_training_cap_thins_a_large_template_and_keeps_every_data_event(ad_study_dir, tmp_path):
    """``max_train_events`` caps each class: an oversampled template (three rows per data event)
    is thinned to the cap while every SR data event, signal included, stays in the pool."""
    from datamodules.datasets import head

    def pool_labels(**kwargs) -> np.ndarray:
        data = WeakSupervisionDataModule(data_dir=str(ad_study_dir), source="real", signal_fraction=0.05, **kwargs)
        data.setup("fit")
        return np.concatenate([head(data.datasets[s])["label"].numpy() for s in ("train", "val")])

    n_data = int((pool_labels(method="ideal") == 1).sum())
    rows = np.load(ad_study_dir / "ideal_bkg_events.npz")["ideal_bkg_events_sr"]
    template = tmp_path / "template.npz"
    np.savez(template, samples=rows[np.random.default_rng(0).integers(0, len(rows), 3 * n_data)])
    labels = pool_labels(method="template", template=str(template), max_train_events=n_data)
    assert (labels == 1).sum() == n_data  # no data event lost
    assert (labels == 0).sum() == n_data  # the template thinned from 3 n_data to the cap


def test_logged_training_loss_is_the_mean_over_the_epochs_events(ad_study_dir, tmp_path):
    """train/loss is averaged in the step and logged once an epoch: with the learning rate at 0
    it is the members' mean weighted BCE over every training event under the initial weights,
    each event counted once (the last, smaller batch weighs less than the others)."""
    from lightning.pytorch import Trainer

    data = WeakSupervisionDataModule(data_dir=str(ad_study_dir), source="real", signal_fraction=0.05, batch_size=300)
    data.setup("fit")
    train = data.datasets["train"].head()
    assert len(train["label"]) % 300 > 0
    torch.manual_seed(0)
    model = WeakClassifier(n_features=train["features"].shape[1], hidden=(8,), members=3, lr=0.0)
    trainer = Trainer(
        max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(model, data)
    with torch.no_grad():
        sums, _ = model.member_losses(model.net, train)
    expected = sums.double().mean() / len(train["label"])
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(float(expected), rel=1e-5)
