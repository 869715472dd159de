"""``hepgen ad run``: a study of many trainings that resumes, splits into jobs and reports truthfully."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from hepgen.cli import main
from hepgen.study import Point, StudyError, load_study, run_study, stage_arguments
from hepgen.study_report import collect, markdown, summarise

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER = str(ROOT / "tests" / "conf" / "ad_tiny.yaml")
REWEIGHT = str(ROOT / "tests" / "conf" / "ad_reweight_tiny.yaml")
#: A made Toy NR study small enough for seconds per training.
TOY = dict(source="made", toy_kind="nr", events=3000, test_background=6000, test_signal=1500,
           fullsup_background=3000, fullsup_signal=1500)  # fmt: skip


def study_spec(tmp_path: Path, **changes) -> dict:
    spec = {
        "study": "tiny",
        "root": str(tmp_path / "runs"),
        "data": {"data_dir": str(tmp_path / "toy"), **TOY},
        "signal_fractions": [0.05],
        "injection_seeds": [1, 2],
        "methods": {
            "ideal": {"stages": [{"name": "classifier", "config": CLASSIFIER, "commands": ["fit", "test", "predict"]}]},
            "reweight": {
                "stages": [
                    {"name": "weights", "config": REWEIGHT, "commands": ["fit", "predict"]},
                    {"name": "classifier", "config": CLASSIFIER, "commands": ["fit", "test", "predict"],
                     "args": {"data.init_args.method": "template",
                              "data.init_args.template": "{weights}/predictions/template.npz"}},
                ]
            },
        },
    }  # fmt: skip
    spec.update(changes)
    return spec


def write_spec(tmp_path: Path, spec: dict, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """The tiny study run to the end through the command line, as a user runs it."""
    tmp_path = tmp_path_factory.mktemp("ad_study_run")
    path = write_spec(tmp_path, study_spec(tmp_path))
    main(["ad", "run", "-c", str(path)])
    return load_study(path)


def test_every_point_trains_each_stage_once_and_the_template_stage_reads_its_own_weights(finished_study):
    study = finished_study
    assert len(study.points()) == 4
    for point in study.points():
        for stage in study.methods[point.method].stages:
            stage_dir = study.point_dir(point) / stage.name
            assert (stage_dir / "checkpoints" / "last.ckpt").is_file()
            assert all((stage_dir / ".study" / f"{c}.done").is_file() for c in stage.commands)
    # the placeholder became this point's own weights stage, not another seed's
    point = Point("reweight", 0.05, 2)
    saved = yaml.safe_load((study.point_dir(point) / "classifier" / "config.yaml").read_text())
    assert saved["data"]["init_args"]["template"] == str(study.point_dir(point) / "weights" / "predictions" / "template.npz")
    assert saved["data"]["init_args"]["injection_seed"] == 2


def test_report_is_the_median_of_the_points_test_metrics(finished_study):
    study = finished_study
    table = collect(study)
    for method in ("ideal", "reweight"):
        runs = [
            json.loads((study.point_dir(Point(method, 0.05, g)) / "classifier" / "metrics.json").read_text())["test"]
            for g in (1, 2)
        ]
        entry = table[method]["0.05"]
        assert entry["max_sic"]["median"] == pytest.approx(np.median([r["max_sic"] for r in runs]))
        assert entry["max_sic"]["n"] == 2
        assert entry["max_sic_fraction"]["median"] == pytest.approx(np.median([r["max_sic_fraction"] for r in runs]))
    report = study.folder / "report"
    saved = json.loads((report / "report.json").read_text())
    assert saved["methods"]["ideal"]["0.05"]["max_sic"]["median"] == pytest.approx(table["ideal"]["0.05"]["max_sic"]["median"])
    assert saved["optimal_max_sic"] == pytest.approx(runs[0]["optimal_max_sic"])
    for name in ("max_sic_vs_sb.png", "sic_vs_tpr.png", "roc.png", "report.md"):
        assert (report / name).stat().st_size > 0
    rows = [line for line in (report / "report.md").read_text().splitlines() if line.startswith("| ideal") or line.startswith("| reweight")]
    assert len(rows) == 2


def test_a_rerun_skips_finished_work_and_a_killed_fit_continues_from_its_checkpoint(finished_study):
    study = finished_study
    assert run_study(study) == []  # everything done: nothing runs again
    point = Point("reweight", 0.05, 1)
    stage_dir = study.point_dir(point) / "classifier"
    metrics_before = (stage_dir / "metrics.json").read_text()
    # as if the job was killed after the classifier's fit had written last.ckpt, before its marker
    for command in ("fit", "test", "predict"):
        (stage_dir / ".study" / f"{command}.done").unlink()
    weights_fit = (study.point_dir(point) / "weights" / ".study" / "fit.done").read_text()
    assert run_study(study) == [point]
    log = (study.point_dir(point) / "classifier.log").read_text()
    assert log.count("$ hepgen fit") == 2 and "--ckpt_path=last" in log.split("$ hepgen fit")[-1]
    assert (study.point_dir(point) / "weights" / ".study" / "fit.done").read_text() == weights_fit  # not redone
    assert sorted(p.name for p in study.point_dir(point).iterdir() if p.is_dir() and not p.is_symlink()) == ["classifier", "weights"]
    # the resumed fit had nothing left to train, so the test gives the same numbers again
    assert json.loads((stage_dir / "metrics.json").read_text())["test"] == json.loads(metrics_before)["test"]


def test_jobs_share_the_points_without_overlap(tmp_path):
    study = load_study(write_spec(tmp_path, study_spec(tmp_path, injection_seeds=[1, 2, 3])))
    points = study.points()
    shares = [[p for i, p in enumerate(points) if i % 2 == job] for job in (0, 1)]
    assert sorted(map(repr, shares[0] + shares[1])) == sorted(map(repr, points)) and not set(shares[0]) & set(shares[1])
    with pytest.raises(StudyError, match="--job 2 --jobs 2"):
        run_study(study, job=2, jobs=2)


def test_method_narrows_the_scan(tmp_path):
    spec = study_spec(tmp_path, signal_fractions=[0.0, 0.05])
    spec["methods"]["ideal"]["signal_fractions"] = [0.05]
    study = load_study(write_spec(tmp_path, spec))
    labels = sorted(f"{p.method}/{p.label}" for p in study.points())
    assert labels == ["ideal/s0.05_g1", "ideal/s0.05_g2", "reweight/s0.05_g1", "reweight/s0.05_g2",
                      "reweight/s0_g1", "reweight/s0_g2"]  # fmt: skip


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.update(sedds=[1]), "unknown key 'sedds' in the study"),
        (lambda s: s["methods"]["ideal"]["stages"][0].update(comands=["fit"]), "unknown key 'comands' in methods.ideal.stages"),
        (lambda s: s["methods"]["reweight"]["stages"][1]["args"].update({"x": "{wieghts}/t.npz"}), r"placeholder \{wieghts\}"),
        (lambda s: s["methods"]["ideal"]["stages"][0].update(config="nowhere.yaml"), "nowhere.yaml not found"),
        (lambda s: s["methods"]["ideal"]["stages"][0].update(commands=["test", "fit"]), "fit must come first"),
        (lambda s: s["methods"]["ideal"].update(report_stage="weights"), "report_stage 'weights'"),
        (lambda s: s["methods"]["ideal"]["stages"].insert(0, {"name": "weights", "reuse": "nowhere"}),
         "reuse: nowhere names no other method"),
        (lambda s: s["methods"]["ideal"]["stages"].insert(0, {"name": "weights", "reuse": "reweight", "config": CLASSIFIER}),
         "has only name and reuse"),
        (lambda s: s["methods"]["ideal"]["stages"].insert(0, {"name": "calib", "reuse": "reweight"}),
         "needs its own stage named 'calib'"),
        (lambda s: (s["methods"]["ideal"]["stages"].insert(0, {"name": "weights", "reuse": "reweight"}),
                    s["methods"]["ideal"].update(injection_seeds=[1, 3])), r"must scan every S/B, seed and fold of ideal \(it lacks \[3\]"),
    ],
)
def test_bad_study_files_get_one_line_naming_the_key(tmp_path, capsys, monkeypatch, change, message):
    spec = study_spec(tmp_path)
    change(spec)
    path = write_spec(tmp_path, spec)
    with pytest.raises(StudyError, match=message):
        load_study(path)
    monkeypatch.delenv("HEPGEN_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["ad", "run", "-c", str(path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hepgen: error:") and "Traceback" not in err[0]
    assert not (tmp_path / "runs").exists()  # refused before anything was made or trained


def test_a_failing_stage_names_itself_and_its_log_and_leaves_no_run_directory(tmp_path):
    spec = study_spec(tmp_path, injection_seeds=[1])
    spec["methods"] = {"ideal": {"stages": [{"name": "classifier", "config": CLASSIFIER,
                                             "args": {"model.init_args.hiden": [4]}}]}}  # fmt: skip
    path = write_spec(tmp_path, spec)
    with pytest.raises(StudyError, match=r"hepgen fit failed: .*hiden.*classifier\.log"):
        main(["ad", "run", "-c", str(path)])
    point_dir = load_study(path).point_dir(Point("ideal", 0.05, 1))
    assert (point_dir / "classifier.log").is_file() and not (point_dir / "classifier").exists()


def test_missing_data_file_of_a_made_study_is_named(tmp_path):
    first = write_spec(tmp_path, study_spec(tmp_path, injection_seeds=[1]), "first.yaml")
    from hepgen.study import prepare_data

    prepare_data(load_study(first))
    wider = load_study(write_spec(tmp_path, study_spec(tmp_path, injection_seeds=[1, 2]), "wider.yaml"))
    with pytest.raises(StudyError, match=r"seed2/data_0.05.npz is missing"):
        prepare_data(wider)


def test_summary_quantiles_on_known_values():
    summary = summarise([1.0, 2.0, 3.0, 4.0, 100.0, None, float("nan")])
    assert summary["median"] == 3.0 and summary["n"] == 5
    assert summary["q16"] == pytest.approx(np.quantile([1, 2, 3, 4, 100], 0.16))
    assert summarise([None]) is None
    table = {"m": {"0.01": {"signal_fraction": 0.01, "points": [{}], "max_sic": summary, "max_sic_fraction": None,
                            "sic_at_rejection_1e3": None, "auc": None, "closure_auc": None}}}  # fmt: skip
    assert "| m | 1 % | 1 | 3.00 [" in markdown(table, 9.0)


def test_a_shared_stage_is_one_run_that_every_point_reads(tmp_path):
    spec = study_spec(tmp_path, signal_fractions=[0.0, 0.05])
    spec["methods"]["reweight"]["stages"][0]["shared"] = True
    study = load_study(write_spec(tmp_path, spec))
    method = study.methods["reweight"]
    weights, classifier = method.stages
    shared = study.folder / "reweight" / "shared" / "weights"
    for point in (p for p in study.points() if p.method == "reweight"):
        dirs = {s.name: study.stage_dir(point, s) for s in method.stages}
        assert dirs["weights"] == shared and dirs["classifier"] == study.point_dir(point) / "classifier"
        args = stage_arguments(study, point, classifier, dirs)
        assert f"--data.init_args.template={shared}/predictions/template.npz" in args
        assert f"--data.init_args.injection_seed={point.injection_seed}" in args
        # the shared stage itself always trains at the method's first point
        own = stage_arguments(study, point, weights, dirs)
        assert "--data.init_args.signal_fraction=0.0" in own and "--data.init_args.injection_seed=1" in own
        assert "--run.experiment=reweight/shared" in own and "--run.version=weights" in own


def test_a_stage_with_its_own_signal_fractions_runs_only_there(tmp_path, monkeypatch):
    """A closure stage narrowed to S/B = 0 runs at the S/B = 0 points alone, and a point without
    it counts as done when the rest has finished; no stage may read a narrowed stage's output."""
    import hepgen.study as study_module

    spec = study_spec(tmp_path, signal_fractions=[0.0, 0.05])
    closure = {"name": "closure", "config": CLASSIFIER, "commands": ["fit", "test"], "signal_fractions": [0.0]}
    spec["methods"]["reweight"]["stages"].append(closure)
    study = load_study(write_spec(tmp_path, spec))
    ran = []

    def fake_stage(study, point, stage, stage_dirs):
        ran.append((point.label, stage.name))
        for command in stage.commands:  # what a finished command leaves
            marker = stage_dirs[stage.name] / ".study" / f"{command}.done"
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("{}")
        return {}

    monkeypatch.setattr(study_module, "run_stage", fake_stage)
    monkeypatch.setattr(study_module, "prepare_data", lambda study: None)
    run_study(study, methods=["reweight"])
    assert sorted(ran) == [(g, s) for g in ("s0.05_g1", "s0.05_g2") for s in ("classifier", "weights")] + [
        (g, s) for g in ("s0_g1", "s0_g2") for s in ("classifier", "closure", "weights")
    ]
    assert run_study(study, methods=["reweight"]) == []  # every point done, with or without closure

    spec["methods"]["reweight"]["stages"][1]["signal_fractions"] = [0.0]  # the classifier reads {weights}
    spec["methods"]["reweight"]["stages"][0]["signal_fractions"] = [0.0]
    with pytest.raises(StudyError, match=r"placeholder \{weights\} names a stage that runs only"):
        load_study(write_spec(tmp_path, spec, "narrowed.yaml"))


def _fake_stage(study, point, stage, stage_dirs, calls: Path | None = None, ran: list | None = None):
    """What ``run_stage`` leaves: one marker per command not done yet, after a moment's "training"."""
    import time

    done = {}
    for command in stage.commands:
        marker = stage_dirs[stage.name] / ".study" / f"{command}.done"
        if marker.is_file():
            continue
        if ran is not None:
            ran.append((point.method, point.label, stage.name, command))
        if calls is not None:
            with open(calls, "a") as out:
                out.write(f"{stage_dirs[stage.name]} {command}\n")
            time.sleep(0.5)  # long enough for the other job to arrive while this one trains
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("{}")
        done[command] = 0.0
    return done


def test_a_reused_stage_trains_once_and_both_methods_read_it(tmp_path, monkeypatch):
    import hepgen.study as study_module

    spec = study_spec(tmp_path)
    weighted = {"name": "classifier", "config": CLASSIFIER, "commands": ["fit", "test"],
                "args": {"data.init_args.template": "{weights}/predictions/template.npz"}}  # fmt: skip
    spec["methods"]["weighted"] = {"stages": [{"name": "weights", "reuse": "reweight"}, weighted]}
    study = load_study(write_spec(tmp_path, spec))
    ran = []
    monkeypatch.setattr(study_module, "run_stage", lambda *a: _fake_stage(*a, ran=ran))
    monkeypatch.setattr(study_module, "prepare_data", lambda study: None)
    run_study(study, methods=["weighted", "reweight"])
    for label in ("s0.05_g1", "s0.05_g2"):
        # trained at the reweight point, with that point's command line, once for both methods
        assert [r for r in ran if r[1] == label and r[2] == "weights"] == [
            ("reweight", label, "weights", "fit"), ("reweight", label, "weights", "predict")]  # fmt: skip
        point = Point("weighted", 0.05, int(label[-1]))
        dirs = {s.name: study.stage_dir(point, s) for s in study.methods["weighted"].stages}
        own = study.point_dir(Point("reweight", 0.05, int(label[-1]))) / "weights"
        assert dirs["weights"] == own and dirs["classifier"] == study.point_dir(point) / "classifier"
        args = stage_arguments(study, point, study.methods["weighted"].stages[1], dirs)
        assert f"--data.init_args.template={own}/predictions/template.npz" in args
    assert ("weighted", "s0.05_g1", "classifier", "fit") in ran
    assert run_study(study) == [p for p in study.points() if p.method == "ideal"]  # the rest is done


def test_two_jobs_reaching_a_shared_stage_at_once_train_it_once(tmp_path, monkeypatch):
    """Array tasks run different points of one method at the same time; its shared stage must be
    trained by one of them (the other waits for it), not by both in one run directory."""
    import multiprocessing

    import hepgen.study as study_module

    spec = study_spec(tmp_path)
    spec["methods"]["reweight"]["stages"][0]["shared"] = True
    study = load_study(write_spec(tmp_path, spec))
    calls = tmp_path / "calls.txt"
    monkeypatch.setattr(study_module, "run_stage", lambda *a: _fake_stage(*a, calls=calls))
    monkeypatch.setattr(study_module, "prepare_data", lambda study: None)
    fork = multiprocessing.get_context("fork")  # the children keep the monkeypatched stage
    jobs = [fork.Process(target=run_study, args=(study, job, 2, ["reweight"])) for job in (0, 1)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=60)
    assert [job.exitcode for job in jobs] == [0, 0]
    shared = study.folder / "reweight" / "shared" / "weights"
    lines = calls.read_text().splitlines()
    assert lines.count(f"{shared} fit") == 1 and lines.count(f"{shared} predict") == 1
    assert sorted(line for line in lines if "classifier" in line) == sorted(
        f"{study.point_dir(Point('reweight', 0.05, g)) / 'classifier'} {c}" for g in (1, 2) for c in ("fit", "test", "predict"))  # fmt: skip


# --- k-fold testing ------------------------------------------------------------------------------
def test_k_folds_test_every_event_once_and_never_train_on_it(lhco_sr_like_dir):
    from datamodules.anomaly import WeakSupervisionDataModule

    val = np.load(lhco_sr_like_dir / "sr_data_val.npy")
    signal = np.load(lhco_sr_like_dir / "sr_signal.npy")
    tested, k = [], 3
    for i in range(k):
        dm = WeakSupervisionDataModule(data_dir=str(lhco_sr_like_dir), source="real", layout="lhco_sr",
                                       method="supervised", test_folds=k, test_fold=i)  # fmt: skip
        dm.setup("fit")
        rows = lambda split: np.c_[dm.datasets[split].head()["features"].numpy(), dm.datasets[split].head()["label"].numpy()]  # noqa: E731
        test, train = rows("test"), np.concatenate([rows("train"), rows("val")])
        assert not {tuple(r[:-1]) for r in test} & {tuple(r[:-1]) for r in train}
        tested.append(test)
    tested = np.concatenate(tested)
    assert int(np.sum(tested[:, -1] == 0)) == int(np.sum(val[:, -1] == 0))  # every true background event once
    assert int(np.sum(tested[:, -1] == 1)) == len(signal)
    assert len({tuple(r) for r in tested}) == len(tested)
    with pytest.raises(Exception, match="test_fold"):
        WeakSupervisionDataModule(data_dir=str(lhco_sr_like_dir), layout="lhco_sr", source="real", test_folds=3, test_fold=3)


def test_a_k_fold_study_reports_the_folds_scores_together(lhco_sr_like_dir, tmp_path):
    from hepgen.metrics.roc import auc, max_sic, roc_curve, sic_floor
    from hepgen.study_report import fold_metrics

    spec = {
        "study": "lhco", "root": str(tmp_path / "runs"),
        "methods": {"supervised": {"folds": 2, "stages": [{
            "name": "classifier", "config": CLASSIFIER, "commands": ["fit", "predict"],
            "args": {"data.init_args.layout": "lhco_sr", "data.init_args.data_dir": str(lhco_sr_like_dir),
                     "data.init_args.method": "supervised", "model.init_args.members": 1}}]}},
    }  # fmt: skip
    study = load_study(write_spec(tmp_path, spec))
    assert [p.label for p in study.points()] == ["f0", "f1"]
    main(["ad", "run", "-c", str(tmp_path / "study.yaml")])
    parts = [np.load(study.point_dir(p) / "classifier" / "predictions" / "scores.npy") for p in study.points()]
    score, label = np.concatenate(parts)[:, 0], np.concatenate(parts)[:, 1]
    assert len(label) == int(np.sum(np.load(lhco_sr_like_dir / "sr_data_val.npy")[:, -1] == 0)) + 1500
    eps_s, eps_b, _ = roc_curve(score, label)
    combined = fold_metrics(study, study.points())
    assert combined["auc"] == pytest.approx(auc(eps_s, eps_b))
    assert combined["max_sic"] == pytest.approx(max_sic(eps_s, eps_b, sic_floor(int(np.sum(label == 0)))))
    report = json.loads((study.folder / "report" / "report.json").read_text())
    assert report["methods"]["supervised"]["all"]["points"][0]["folds"] == 2
    assert report["methods"]["supervised"]["all"]["max_sic"]["median"] == pytest.approx(combined["max_sic"])


def test_the_time_limit_signal_between_two_points_requeues_the_job_before_the_second(tmp_path, monkeypatch):
    """In a SLURM job (``sbatch/study.sbatch``), SIGUSR1 after the first point: the study asks for a
    requeue and stops before the second; the requeued job trains only the second."""
    import os
    import signal

    import hepgen.study as study_module

    monkeypatch.setenv("SLURM_JOB_ID", "31")
    requeues = []
    monkeypatch.setattr(study_module, "requeue_job", lambda: requeues.append(1) or (True, "requeued SLURM job 31"))
    monkeypatch.setattr(study_module, "wait_to_be_stopped", lambda stopped: None)  # no SLURM to stop us
    trained = study_module.run_point

    def run_point_then_signal(study, point):
        times = trained(study, point)
        os.kill(os.getpid(), signal.SIGUSR1)  # SLURM's --signal=SIGUSR1@90, right after this point
        return times

    monkeypatch.setattr(study_module, "run_point", run_point_then_signal)
    ideal_only = {"ideal": study_spec(tmp_path)["methods"]["ideal"]}
    study = load_study(write_spec(tmp_path, study_spec(tmp_path, methods=ideal_only)))
    first, second = study.points()
    try:
        with pytest.raises(SystemExit) as stopped:
            run_study(study)
        assert stopped.value.code == 0 and requeues == [1]
        assert study_module.point_done(study, first) and not study_module.point_done(study, second)
        monkeypatch.setattr(study_module, "run_point", trained)
        assert run_study(study) == [second]  # the requeued job
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
