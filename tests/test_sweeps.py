"""W&B sweeps: every sweep file's parameters are options of its method, and the local controller runs trials."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml

from callbacks.sweep import SweepTrial
from hepgen.cli import HepgenCLI
from hepgen.errors import ConfigValueError
from hepgen.sweep import load_sweep, read_trials, run_agent, trial_arguments, write_trial
from tests.conftest import ROOT, TINY_CALO

SWEEPS = sorted((ROOT / "experiments" / "sweeps").glob("*.yaml"))


class _Parsed(Exception):
    """Raised by :class:`_ParseOnly` once the command line has parsed."""


class _ParseOnly(HepgenCLI):
    """hepgen's parser, stopping before any class is built or any run directory made."""

    def before_instantiate_classes(self) -> None:
        raise _Parsed(self.config)


def test_every_method_has_a_sweep():
    assert {p.stem for p in SWEEPS} == {"calo_vae", "aidapt", "sde_gan", "uvcgan_s", "ad"}


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_parameters_are_valid_options_of_the_method(path):
    """Three of the values the search may choose (first, middle, last of each range), as W&B's
    agent writes them, parse as options of the experiment the sweep trains; its metric is the one
    that picks the method's best checkpoint."""
    config = load_sweep(path)
    assert config["program"] == "hepgen" and config["method"] == "bayes"
    assert config["early_terminate"]["type"] == "hyperband"
    for pick in (0, 1, -1):
        values = {}
        for name, spec in config["parameters"].items():
            if "values" in spec:
                values[name] = spec["values"][pick if pick != 1 else len(spec["values"]) // 2]
            else:
                values[name] = {0: spec["min"], 1: (spec["min"] * spec["max"]) ** 0.5, -1: spec["max"]}[pick]
        args = trial_arguments(config, values)
        assert args[1:4] == ["-m", "hepgen", "fit"]
        with pytest.raises(_Parsed) as parsed:
            _ParseOnly(args=args[3:])
        fit = parsed.value.args[0]["fit"]
        for name, value in values.items():
            assert fit[name] == value, name
    model_class = yaml.safe_load(Path(ROOT / args[args.index("--config") + 1]).read_text())["model"]["class_path"]
    from hepgen import models

    model = getattr(models, model_class)
    monitor = getattr(model, "monitor", None)
    if not isinstance(monitor, str):  # set per instance: the __init__ default
        import inspect

        monitor = inspect.signature(model.__init__).parameters["monitor"].default
    assert config["metric"]["name"] == monitor


def test_a_sweep_option_the_method_does_not_have_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HEPGEN_DEBUG", "0")
    config = load_sweep(ROOT / "experiments" / "sweeps" / "calo_vae.yaml")
    args = trial_arguments(config, {"model.init_args.latentdim": 8})
    with pytest.raises(SystemExit):
        _ParseOnly(args=args[3:])
    assert "unknown option --model.init_args.latentdim for CaloVAE; closest: latent_dim" in capsys.readouterr().err


def tiny_sweep(tmp_path: Path, data_dir: Path, **changes) -> Path:
    """A Bayesian sweep of the tiny CaloVAE (2 epochs), with Hyperband from the first validation."""
    sweep = {
        "program": "hepgen", "name": "tiny", "method": "bayes",
        "metric": {"name": "val/objective", "goal": "minimize"},
        "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
        "parameters": {
            "model.init_args.latent_dim": {"values": [2, 4, 8]},
            "model.init_args.kl_beta_max": {"distribution": "log_uniform_values", "min": 0.01, "max": 1.0},
        },
        "command": ["${env}", "${interpreter}", "-m", "hepgen", "fit", "--config", str(TINY_CALO), "${args}",
                    "--data.init_args.data_dir", str(data_dir), "--run.root", str(tmp_path / "runs")],
    }  # fmt: skip
    sweep.update(changes)
    path = tmp_path / "tiny_sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_local_controller_runs_trials_each_an_ordinary_run_reporting_its_metric(calogan_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = tiny_sweep(tmp_path, calogan_dir)
    trials = run_agent(sweep, count=3, root=tmp_path / "runs", extra=["--trainer.logger", "WandbLogger"])
    assert [t["name"] for t in trials] == ["tiny-0", "tiny-1", "tiny-2"]
    assert len({json.dumps(t["values"], sort_keys=True) for t in trials}) == 3  # three different points
    run_dirs = {t["run_dir"] for t in trials}
    assert len(run_dirs) == 3
    for trial in trials:
        assert trial["state"] in ("finished", "stopped") and trial["exitcode"] == 0
        history = [h["val/objective"] for h in trial["history"]]
        assert 1 <= len(history) <= 2 and trial["summary"]["val/objective"] == history[-1]
        run_dir = Path(trial["run_dir"])
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        for name, value in trial["values"].items():
            section, _, key = name.partition(".init_args.")
            assert saved[section]["init_args"][key] == value  # the trial trained what it reports
        assert list((run_dir / "wandb").glob(f"offline-run-*-{trial['name']}"))  # its own W&B run


def _trial(index: int, losses: list[float], state: str) -> dict:
    return {"index": index, "name": f"tiny-{index}", "state": state, "values": {"model.init_args.latent_dim": 4},
            "history": [{"val/objective": x, "epoch": e} for e, x in enumerate(losses)],
            "summary": {"val/objective": losses[-1]} if losses else {}, "run_dir": None}  # fmt: skip


@pytest.mark.parametrize("loss, stops", [(9.0, True), (1.0, False)])
def test_hyperband_stops_a_trial_worse_than_the_others_at_its_band(tmp_path, calogan_dir, loss, stops):
    """Bands at 1, 2, 4 validations (min_iter 1, eta 2): at its second validation a trial goes on
    only if it is in the better half of the trials that reached two."""
    sweep = load_sweep(tiny_sweep(tmp_path, calogan_dir))
    folder = tmp_path / "runs" / "sweeps" / "tiny"
    folder.mkdir(parents=True)
    (folder / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    for index, losses in enumerate([[5.0, 2.0], [5.0, 3.0], [5.0, 4.0]]):
        write_trial(folder, _trial(index, losses, "finished"))
    path = write_trial(folder, _trial(3, [5.0], "running"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        callback = SweepTrial(path)
        assert callback._report(loss, epoch=1, run_dir=str(tmp_path)) is stops
    saved = json.loads(path.read_text())
    assert saved["state"] == ("stopped" if stops else "running") and saved["history"][-1]["val/objective"] == loss


def test_a_trial_of_a_wandb_sweep_trains_in_the_folder_of_its_wandb_run(calogan_dir, tmp_path, monkeypatch):
    """W&B's agent sets WANDB_SWEEP_ID and WANDB_RUN_ID for each trial; a requeued agent that is
    handed the same run again (or a second trial in the same SLURM job) must not land elsewhere."""
    from hepgen.cli import main
    from tests.conftest import tiny_args

    monkeypatch.setenv("WANDB_SWEEP_ID", "abc123")
    monkeypatch.setenv("WANDB_RUN_ID", "run7x")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # no Lightning SLURM environment in a local test
    main(tiny_args("fit", calogan_dir, tmp_path, "--trainer.max_epochs", "1"))
    assert (tmp_path / "tiny" / "run7x" / "checkpoints" / "last.ckpt").is_file()


def test_a_requeued_agent_resumes_its_own_trial_and_runs_only_what_is_left(tmp_path, monkeypatch):
    """Agent of SLURM job 77 with --count 3, requeued after finishing trial 0 and in the middle of
    trial 1 (another agent's trial 2 is running): it reruns trial 1, draws one new trial, stops."""
    sweep = {
        "program": "hepgen", "name": "s", "method": "random", "metric": {"name": "m", "goal": "minimize"},
        "parameters": {"x": {"values": [1, 2, 3]}},
        "command": ["${interpreter}", "-c", "import sys; sys.exit(0)", "${args}"],
    }  # fmt: skip
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(sweep))
    folder = tmp_path / "sweeps" / "s"
    for index, (agent, state) in enumerate([("77", "finished"), ("77", "running"), ("88", "running")]):
        write_trial(folder, {"index": index, "name": f"s-{index}", "state": state, "values": {"x": 1},
                             "history": [], "summary": {}, "run_dir": None, "agent": agent})  # fmt: skip
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    trials = run_agent(path, count=3, root=tmp_path)
    assert [t["name"] for t in trials] == ["s-1", "s-3"]
    states = {t["name"]: t["state"] for t in read_trials(folder)}
    assert states == {"s-0": "finished", "s-1": "finished", "s-2": "running", "s-3": "finished"}


@pytest.mark.parametrize(
    "change, message",
    [
        (None, "no such sweep file"),
        ({"metric": None}, "a W&B sweep file needs metric"),
        ({"command": ["${interpreter}", "-m", "hepgen", "fit"]}, "command must contain ${args}"),
    ],
    ids=["missing_file", "missing_key", "no_args"],
)
def test_a_bad_sweep_file_is_one_line_naming_it(tmp_path, capsys, monkeypatch, change, message):
    from hepgen.cli import main

    monkeypatch.setenv("HEPGEN_DEBUG", "0")
    path = tmp_path / "bad.yaml"
    if change is not None:
        sweep = yaml.safe_load((ROOT / "experiments" / "sweeps" / "calo_vae.yaml").read_text())
        sweep.update(change)
        path.write_text(yaml.safe_dump({k: v for k, v in sweep.items() if v is not None}))
    with pytest.raises(SystemExit) as stopped:
        main(["sweep", "agent", str(path), "--root", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"hepgen: error: {path}") and message in err[0]


def test_a_changed_sweep_under_the_same_name_is_refused(calogan_dir, tmp_path):
    """The folder's trials were drawn for the first settings; a second agent must not mix others in."""
    sweep = tiny_sweep(tmp_path, calogan_dir)
    folder = tmp_path / "runs" / "sweeps" / "tiny"
    folder.mkdir(parents=True)
    changed = yaml.safe_load(sweep.read_text())
    changed["method"] = "random"
    (folder / "sweep.yaml").write_text(yaml.safe_dump(changed))
    with pytest.raises(ConfigValueError, match="holds sweep 'tiny' with other settings"):
        run_agent(sweep, count=1, root=tmp_path / "runs")
    assert not (folder / "trials").exists()
