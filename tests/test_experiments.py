"""Every experiment YAML runs: fit, test and predict with fast_dev_run, on made data.

On CPU by default; ``HEPGEN_TEST_ACCELERATOR=gpu python3 -m pytest tests/test_experiments.py`` runs
the same on a GPU node (the check that every method's tensors, generators and metrics follow the
model onto the device).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from hepgen.cli import main
from hepgen.run import resolve_checkpoint
from tests.conftest import AIDAPT_EVENTS, ROOT, SPHENIX_EVENTS


def _is_study(path: Path) -> bool:
    """A study file (``hepgen ad run``) rather than one training's LightningCLI config."""
    return "study" in (yaml.safe_load(path.read_text()) or {})


#: the Trainer's accelerator for the smoke runs (``cpu`` unless the environment says otherwise)
ACCELERATOR = os.environ.get("HEPGEN_TEST_ACCELERATOR", "cpu")

# W&B sweep files (experiments/sweeps/) are not configs of one run: tests/test_sweeps.py parses them
ALL_YAML = sorted(p for p in (ROOT / "experiments").rglob("*.yaml") if "sweeps" not in p.parts)
EXPERIMENTS = [p for p in ALL_YAML if not _is_study(p)]
STUDIES = [p for p in ALL_YAML if _is_study(p)]


def test_there_are_experiments():
    families = {p.parent.name for p in EXPERIMENTS}
    assert {"calo_vae", "aidapt", "sde_gan", "ad", "uvcgan_s"} <= families


@pytest.fixture(scope="session")
def morph_base_ckpt(ad_study_dir, tmp_path_factory) -> Path:
    """Morph's base: experiments/ad/morph_base_toy_nr.yaml fitted for 2 steps (2 x 16) to the MC of
    the session's Toy NR study, in a root of its own; its last checkpoint, as morph_toy_nr.yaml's
    run reference finds it after a real step 1."""
    root = tmp_path_factory.mktemp("morph_base_runs")
    main([
        "fit", "-c", str(ROOT / "experiments" / "ad" / "morph_base_toy_nr.yaml"), "--run.root", str(root),
        "--data.init_args.data_dir", str(ad_study_dir), "--data.init_args.source", "real",
        "--data.init_args.signal_fraction", "0.05", "--data.init_args.max_events", "2000",
        "--model.init_args.transforms", "2", "--model.init_args.hidden", "16", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2", "--trainer.accelerator", "cpu", "--trainer.logger", "false",
    ])  # fmt: skip
    return resolve_checkpoint("run:ad/morph_base_toy_nr@latest:last", root)


@pytest.fixture(scope="session")
def control_region_template(ad_study_dir, tmp_path_factory) -> Path:
    """A control-region template for closure configs: the study's held-out CR MC, unweighted."""
    import numpy as np

    from datamodules.anomaly import control_region_hold_out
    from hepgen.io.anomaly import read_seed_study

    held = control_region_hold_out(read_seed_study(ad_study_dir, 0.05, 1), split_seed=42)["mc_held"]
    path = tmp_path_factory.mktemp("closure_template") / "template_cr.npz"
    np.savez(path, samples=held, weights=np.ones(len(held)))
    return path


def _data_overrides(config: Path, request) -> tuple[list[str], str]:
    """Arguments pointing a config at the session's made data, and the predictions glob.

    Real-data configs read the made files in the real format, through the real loading code.
    """
    spec = yaml.safe_load(config.read_text())
    data_class = spec["data"]["class_path"]
    if data_class == "CaloGANDataModule":
        folder = request.getfixturevalue("calogan_dir")
        args = ["--data.init_args.made_events", "600", "--data.init_args.predict_events", "64"]
        return ["--data.init_args.data_dir", str(folder), *args], "predictions/*.hdf5"
    if data_class == "CaloChallengeDataModule":
        folder = request.getfixturevalue("tmp_path_factory").mktemp("calochallenge")
        args = ["--data.init_args.source", "made", "--data.init_args.made_events", "400",
                "--data.init_args.predict_events", "64", "--trainer.callbacks.classifier_hidden", "16",
                "--trainer.callbacks.classifier_epochs", "2", "--trainer.callbacks.classifier_repeats", "1",
                "--trainer.callbacks.kpd_batch_size", "200", "--trainer.callbacks.fpd_min_samples", "100",
                "--trainer.callbacks.fpd_max_samples", "200"]  # fmt: skip
        return ["--data.init_args.data_dir", str(folder), *args], "predictions/*.hdf5"
    if data_class == "AIDAPTDataModule":
        folder = request.getfixturevalue("aidapt_dir")
        args = ["--data.init_args.data_dir", str(folder), "--data.init_args.made_events", str(AIDAPT_EVENTS)]
        if spec["model"]["class_path"] == "UnfoldingGAN":
            args += ["--model.init_args.folding_ckpt", str(request.getfixturevalue("folding_ckpt"))]
        return args, "predictions/*.npy"
    if data_class == "WeakSupervisionDataModule":
        ensemble = ["--model.init_args.members", "2"]
        if spec["model"]["class_path"] == "TreeClassifier":
            ensemble += ["--model.init_args.max_iter", "5"]
        if spec["data"]["init_args"]["layout"] == "lhco_sr":
            folder = request.getfixturevalue("lhco_sr_like_dir")
            sizes = ["--data.init_args.lhco_test_background", "1000", "--data.init_args.lhco_test_signal", "500"]
            return ["--data.init_args.data_dir", str(folder), *sizes, *ensemble], "predictions/scores.npy"
        folder = request.getfixturevalue("ad_study_dir")
        study = ["--data.init_args.source", "real", "--data.init_args.signal_fraction", "0.05"]
        if spec["data"]["init_args"]["method"] == "closure":
            study += ["--data.init_args.template", str(request.getfixturevalue("control_region_template"))]
        written = "predictions/template.npz" if spec["data"]["init_args"]["method"] == "reweight" else "predictions/scores.npy"
        return ["--data.init_args.data_dir", str(folder), *study, *ensemble], written
    if data_class == "RegionDataModule":
        sizes = ["--data.init_args.max_events", "2000", "--data.init_args.predict_events", "64"]
        if spec["data"]["init_args"].get("toy_kind") == "r":
            folder = request.getfixturevalue("tmp_path_factory").mktemp("ad_toy_r") / "study"
            made = ["--data.init_args.source", "made", "--data.init_args.made_events", "3000"]
        else:
            folder = request.getfixturevalue("ad_study_dir")
            made = ["--data.init_args.source", "real", "--data.init_args.signal_fraction", "0.05"]
        if spec["model"]["class_path"] == "MorphFlow":  # morphs with a base flow trained on the same study
            made += ["--model.init_args.base_ckpt", str(request.getfixturevalue("morph_base_ckpt"))]
        return ["--data.init_args.data_dir", str(folder), *made, *sizes], "predictions/template*.npz"
    if data_class == "SPhenixDataModule":
        # the session's made files through the real reader; the reference-size config reads them as real data
        folder = request.getfixturevalue("sphenix_dir")
        args = ["--data.init_args.data_dir", str(folder), "--data.init_args.made_events", str(SPHENIX_EVENTS),
                "--data.init_args.train_events", "8", "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
                "--data.init_args.source", "made" if spec["data"]["init_args"].get("source") == "made" else "real"]  # fmt: skip
        return args, "predictions/decomposition.h5"
    if data_class == "ToyMixDataModule":
        folder = request.getfixturevalue("tmp_path_factory").mktemp("toy_mix") / "made"
        made = ["--data.init_args.source", "made", "--data.init_args.made_events", "10", "--data.init_args.batch_size", "2"]
        return ["--data.init_args.data_dir", str(folder), *made], "predictions/decomposition.h5"
    # time series: few, short paths; real-data configs read made files in the real format
    series = ["--data.init_args.batch_size", "16", "--model.init_args.swa_start", "0"]
    if data_class == "OUDataModule":
        return [*series, "--data.init_args.made_events", "160", "--data.init_args.t_size", "16"], "predictions/*.npz"
    if data_class == "CSVSeriesDataModule":
        made = ["--data.init_args.source", "made", "--data.init_args.made_events", "600", "--data.init_args.window", "8"]
        folder = request.getfixturevalue("tmp_path_factory").mktemp("csv_series")
        return [*series, *made, "--data.init_args.data_dir", str(folder)], "predictions/*.npz"
    if data_class == "TrajectoryDataModule":
        made = ["--data.init_args.source", "made", "--data.init_args.made_events", "12", "--data.init_args.window", "16"]
        folder = request.getfixturevalue("tmp_path_factory").mktemp("geolife")
        return [*series, *made, "--data.init_args.data_dir", str(folder)], "predictions/*.npz"
    raise AssertionError(f"{config}: no made data for {data_class}; add it to this test")


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: str(p.relative_to(ROOT / "experiments")))
def test_experiment_runs(config: Path, request, tmp_path):
    data_args, predictions = _data_overrides(config, request)
    common = [
        "-c", str(config),
        *data_args,
        "--trainer.fast_dev_run", "1",
        "--trainer.accelerator", ACCELERATOR,
        "--run.root", str(tmp_path),
        "--run.version", "smoke",
    ]  # fmt: skip
    for subcommand in ("fit", "test", "predict"):
        main([subcommand, *common])
    assert list(tmp_path.rglob(predictions)), f"predict wrote no {predictions}"


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: str(p.relative_to(ROOT / "experiments")))
def test_study_files_chain_smoke_tested_experiments(study: Path, monkeypatch):
    """A study file parses (keys, placeholders, stage configs; tests/test_ad_study.py runs the
    machinery end to end) and every stage is an experiment the smoke test above runs."""
    from hepgen.study import load_study

    monkeypatch.chdir(ROOT)  # stage configs are relative to the repository root, where users run hepgen
    loaded = load_study(study)
    for method in loaded.methods.values():
        for stage in method.stages:
            if stage.reuse is not None:  # another method's stage, checked there
                assert stage.name in [s.name for s in loaded.methods[stage.reuse].stages]
                continue
            assert (ROOT / stage.config).resolve() in EXPERIMENTS, f"{study}: {stage.config} is not in experiments/"
