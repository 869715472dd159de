"""The control-region closure test: held-out data vs a method's weighted template, AUC 0.5 when it closes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from datamodules.anomaly import WeakSupervisionDataModule, control_region_hold_out
from hepgen.cli import main
from hepgen.io.anomaly import read_seed_study
from hepgen.metrics.roc import auc, roc_curve
from hepgen.synth.ad_toy import make_ad_toy, make_toy

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wide_cr_study(tmp_path_factory) -> Path:
    """Toy NR with its whole control region kept (cr_keep 1): about 15k held-out data events."""
    folder = tmp_path_factory.mktemp("closure") / "toy_nr"
    make_ad_toy(folder, kind="nr", events=4000, signal_fractions=(0.0,), seeds=(1,), cr_keep=1.0,
                test_background=2000, test_signal=500, fullsup_background=1000, fullsup_signal=500, progress=False)  # fmt: skip
    return folder


def _held_out(folder: Path) -> dict[str, np.ndarray]:
    return control_region_hold_out(read_seed_study(folder, 0.0, 1), split_seed=42)


def _write_template(path: Path, samples: np.ndarray, weights: np.ndarray) -> Path:
    np.savez(path, samples=samples, weights=weights)  # as any other code would write it
    return path


def test_held_out_events_are_reweights_test_set_and_never_its_training_set(wide_cr_study):
    held = _held_out(wide_cr_study)
    dm = WeakSupervisionDataModule(data_dir=str(wide_cr_study), source="real", signal_fraction=0.0,
                                   method="reweight", inputs="all")  # fmt: skip
    dm.setup("fit")
    train = dm.datasets["train"].head()["features"].double().numpy()
    test = dm.datasets["test"].head()
    test_data = test["features"][test["label"] == 1].double().numpy()
    as_set = lambda rows: {tuple(r) for r in np.asarray(rows, dtype=np.float32)}  # noqa: E731  (batches are float32)
    assert as_set(test_data) == as_set(held["data_held"])
    assert not as_set(train) & as_set(held["data_held"])
    assert len(held["data_held"]) == len(read_seed_study(wide_cr_study, 0.0, 1)["data_cr"]) // 10


def test_the_test_auc_weighs_the_template(wide_cr_study, tmp_path):
    """With the toy's exact data/MC weights the weighted MC is the data's background, so even the
    best data-vs-MC discriminant scores AUC 0.5 on the closure test set; unweighted it does not."""
    toy, held = make_toy("nr"), _held_out(wide_cr_study)
    log_w = toy.log_data_mc_weight(held["mc_held"])
    results = {}
    for name, weights in (("exact", np.exp(log_w)), ("raw", np.ones(len(log_w)))):
        template = _write_template(tmp_path / f"{name}.npz", held["mc_held"], weights)
        dm = WeakSupervisionDataModule(data_dir=str(wide_cr_study), source="real", signal_fraction=0.0,
                                       method="closure", template=str(template), inputs="all")  # fmt: skip
        dm.setup("test")
        test = dm.datasets["test"].head()
        score = toy.log_data_mc_weight(test["features"].double().numpy())  # the optimal discriminant
        eps_s, eps_b, _ = roc_curve(score, test["label"].numpy(), test["weight"].numpy())
        results[name] = auc(eps_s, eps_b)
    assert abs(results["exact"] - 0.5) < 0.02
    assert results["raw"] > 0.56


@pytest.mark.parametrize("weights, closes", [("exact", True), ("raw", False)])
def test_a_trained_closure_classifier_finds_what_the_template_misses(wide_cr_study, tmp_path, weights, closes):
    """`hepgen fit` + `test` with method closure: AUC (folded) <= 0.55 for the exactly weighted MC,
    clearly above for the raw MC (context width 1.2 instead of 1)."""
    held = _held_out(wide_cr_study)
    w = np.exp(make_toy("nr").log_data_mc_weight(held["mc_held"])) if weights == "exact" else np.ones(len(held["mc_held"]))
    template = _write_template(tmp_path / "template_cr.npz", held["mc_held"], w)
    common = [
        "-c", str(ROOT / "tests" / "conf" / "ad_tiny.yaml"), "--run.root", str(tmp_path), "--run.experiment", "closure",
        "--run.version", "v0",
    ]  # fmt: skip
    main(["fit", *common, "--data.init_args.data_dir", str(wide_cr_study), "--data.init_args.signal_fraction", "0.0",
          "--data.init_args.method", "closure", "--data.init_args.template", str(template),
          "--data.init_args.inputs", "all", "--trainer.max_epochs", "15", "--model.init_args.hidden", "[32, 32]"])  # fmt: skip
    main(["test", "-c", str(tmp_path / "closure" / "v0" / "config.yaml"), "--ckpt_path", "last"])
    result = json.loads((tmp_path / "closure" / "v0" / "metrics.json").read_text())["test"]
    folded = max(result["auc"], 1 - result["auc"])
    assert "optimal_max_sic" not in result  # no signal here: the toy's optimum does not apply
    assert (folded <= 0.55) if closes else (folded > 0.58)


def test_reweight_predict_writes_the_control_region_template_of_the_held_out_mc(wide_cr_study, tmp_path):
    args = ["-c", str(ROOT / "tests" / "conf" / "ad_reweight_tiny.yaml"), "--run.root", str(tmp_path),
            "--run.experiment", "rw", "--run.version", "v0"]  # fmt: skip
    main(["fit", *args, "--data.init_args.data_dir", str(wide_cr_study), "--data.init_args.signal_fraction", "0.0"])
    main(["predict", "-c", str(tmp_path / "rw" / "v0" / "config.yaml"), "--ckpt_path", "last"])
    predictions = tmp_path / "rw" / "v0" / "predictions"
    study, held = read_seed_study(wide_cr_study, 0.0, 1), _held_out(wide_cr_study)
    with np.load(predictions / "template.npz") as sr, np.load(predictions / "template_cr.npz") as cr:
        np.testing.assert_array_equal(sr["samples"], study["mc_sr"])  # the SR template as before
        np.testing.assert_array_equal(cr["samples"], held["mc_held"])
        assert cr["weights"].shape == (len(held["mc_held"]),) and np.all(cr["weights"] >= 0)
        # the classifier learnt the MC's too-wide context: events far out weigh less than central ones
        r = np.hypot(cr["samples"][:, 0], cr["samples"][:, 1])
        assert cr["weights"][r > 2.5].mean() < cr["weights"][r < 1.0].mean()


@pytest.mark.parametrize("sample", ["data", "mc"])
def test_density_methods_never_train_on_the_held_out_events(wide_cr_study, sample):
    from datamodules.ad_regions import RegionDataModule

    held = _held_out(wide_cr_study)
    dm = RegionDataModule(data_dir=str(wide_cr_study), source="real", sample=sample, region="cr",
                          signal_fraction=0.0, test_sample=None)  # fmt: skip
    dm.setup("fit")
    pool = np.concatenate([
        np.c_[dm.datasets[k].head()["context"].numpy(), dm.datasets[k].head()["features"].numpy()] for k in ("train", "val")
    ])  # fmt: skip
    as_set = lambda rows: {tuple(r) for r in np.asarray(rows, dtype=np.float32)}  # noqa: E731
    assert len(pool) == len(held[f"{sample}_rest"])
    assert not as_set(pool) & as_set(held[f"{sample}_held"])
