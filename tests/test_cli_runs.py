"""The command line as a tool: one-line errors, newest-run lookup, run references, locks, launchers."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from jsonargparse import Namespace

from hepgen.checkpoints import newest_checkpoint
from hepgen.cli import HepgenCLI, main
from hepgen.errors import CheckpointError, ConfigValueError, RunDirectoryError
from hepgen.run import (
    check_config_collision,
    publish_run_dir,
    resolve_checkpoint,
    resolve_run_dir,
    resolve_run_references,
    wait_for_run_dir,
    withdraw_run_dirs,
)
from hepgen.run_lock import LOCK_NAME
from tests.conftest import ROOT, TINY_CALO, tiny_args


def _one_line_error(capsys, args: list[str], monkeypatch) -> str:
    """Run ``main(args)`` as a user would (no debug): it must exit 2 with one stderr line."""
    monkeypatch.delenv("HEPGEN_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hepgen: error: "), err
    return err[0]


@pytest.fixture(scope="module")
def two_runs(calogan_dir, tmp_path_factory) -> Path:
    """Runs root with two fits of the tiny CaloVAE: v0 (2 epochs) and v1 (1 epoch)."""
    root = tmp_path_factory.mktemp("runs")
    env = {"HEPGEN_DEBUG": "1", "WANDB_MODE": "disabled"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        main(tiny_args("fit", calogan_dir, root, "--trainer.max_epochs", "2"))
        main(tiny_args("fit", calogan_dir, root, "--trainer.max_epochs", "1"))
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        os.environ.pop("HEPGEN_RUN_DIR", None)
    return root


# --- errors --------------------------------------------------------------------------------------
def test_missing_data_is_one_line_and_leaves_no_run_directory(tmp_path, capsys, monkeypatch):
    line = _one_line_error(capsys, tiny_args("fit", tmp_path / "nodata", tmp_path / "runs", "--data.init_args.source", "real"), monkeypatch)
    assert "data file not found" in line and "eplus.hdf5" in line
    assert not (tmp_path / "runs" / "tiny").exists()


def test_unknown_options_name_the_closest_valid_ones(calogan_dir, tmp_path, capsys, monkeypatch):
    line = _one_line_error(capsys, tiny_args("fit", calogan_dir, tmp_path, "--model.init_args.latentdim", "3"), monkeypatch)
    assert "--model.init_args.latentdim" in line and "latent_dim" in line
    line = _one_line_error(capsys, tiny_args("fit", calogan_dir, tmp_path, "--trainer.maxx_epochs", "3"), monkeypatch)
    assert "--trainer.maxx_epochs" in line and "--trainer.max_epochs" in line
    assert not (tmp_path / "tiny").exists()


def test_the_command_exits_2_without_traceback_and_debug_shows_it(tmp_path):
    args = [sys.executable, "-m", "hepgen", "test", "-c", str(TINY_CALO), "--run.root", str(tmp_path), "--ckpt_path", "best"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("HEPGEN_DEBUG", None)
    quiet = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert quiet.stderr.strip().splitlines()[-1].startswith("hepgen: error: --ckpt_path best: experiment")
    loud = subprocess.run([*args, "--debug"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert loud.returncode != 0 and "Traceback" in loud.stderr
    assert list(tmp_path.iterdir()) == []  # no run directory left by either


# --- test/validate/predict find the run ----------------------------------------------------------
def test_test_with_best_uses_the_newest_run_and_says_which(two_runs, calogan_dir, capsys):
    main(tiny_args("test", calogan_dir, two_runs, "--ckpt_path", "best"))
    assert "uses the newest run of tiny" in capsys.readouterr().out
    names = sorted(p.name for p in (two_runs / "tiny").iterdir() if not p.name.startswith(".") and not p.is_symlink())
    assert names == ["v0", "v1"]  # no empty v2
    assert (two_runs / "tiny" / "v1" / "config.1.yaml").is_file()


def test_evaluating_without_a_checkpoint_warns(two_runs, calogan_dir):
    with pytest.warns(UserWarning, match="untrained model"):
        main(tiny_args("validate", calogan_dir, two_runs, "--run.version", "v1"))


def test_a_fast_dev_run_does_not_become_the_latest_run(two_runs, calogan_dir, tmp_path):
    # Lightning saves no checkpoint (and no config) in a fast_dev_run: run:<experiment>@latest must
    # keep naming the last real fit. A copy of the runs keeps the module's fixture as it was.
    root = tmp_path / "runs"
    shutil.copytree(two_runs, root, symlinks=True)
    main(tiny_args("fit", calogan_dir, root, "--trainer.fast_dev_run", "1"))
    assert (root / "tiny" / "v2").is_dir()  # the smoke run had its own folder
    assert (root / "tiny" / "latest").resolve() == (root / "tiny" / "v1").resolve()
    last_v1 = (root / "tiny" / "v1" / "checkpoints" / "last.ckpt").resolve()
    assert resolve_checkpoint("run:tiny@latest:last", root) == last_v1


def test_run_references_resolve_to_the_latest_finished_fit(two_runs):
    runs = two_runs / "tiny"
    assert (runs / "latest").resolve() == (runs / "v1").resolve()
    assert resolve_checkpoint("run:tiny@latest:last", two_runs) == (runs / "v1" / "checkpoints" / "last.ckpt").resolve()
    assert resolve_checkpoint("run:tiny:last", two_runs) == resolve_checkpoint("run:tiny@latest:last", two_runs)
    best_v0 = resolve_checkpoint("run:tiny@v0:best", two_runs)
    assert best_v0.parent == runs / "v0" / "checkpoints" and best_v0.name.startswith("best-")
    with pytest.raises(RunDirectoryError, match="no run 'v7'"):
        resolve_checkpoint("run:tiny@v7:last", two_runs)
    # a config that names another run's model records the concrete file it used
    cfg = Namespace(init_args=Namespace(folding_ckpt="run:tiny@latest:last", widths=[1, 2]))
    resolve_run_references(cfg, two_runs)
    assert cfg.init_args.folding_ckpt == str((runs / "v1" / "checkpoints" / "last.ckpt").resolve())


def test_a_truncated_checkpoint_names_the_newest_good_one(two_runs, tmp_path):
    run = tmp_path / "tiny" / "v0"
    shutil.copytree(two_runs / "tiny" / "v0", run)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:4096])  # a job killed while writing
    good = next((run / "checkpoints").glob("best-*.ckpt"))
    with pytest.raises(CheckpointError, match=rf"{last}.*truncated.*newest good checkpoint of this run is {good}"):
        main(["fit", "-c", str(run / "config.yaml"), "--run.root", str(tmp_path), "--ckpt_path", "last"])


def test_a_checkpoint_of_other_networks_is_one_line_and_leaves_no_config(two_runs, tmp_path, capsys, monkeypatch):
    """A checkpoint whose weights do not fit the model its own config builds (written by an older
    hepgen whose networks have changed since: one weight renamed here) is refused in one line
    naming it, and the test's config.N.yaml, which describes nothing that ran, is not left behind."""
    run = tmp_path / "tiny" / "v1"
    shutil.copytree(two_runs / "tiny" / "v1", run)
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    checkpoint["state_dict"]["decoder.old_trunk.bias"] = checkpoint["state_dict"].pop("decoder.trunk.0.bias")
    torch.save(checkpoint, last)
    before = sorted(p.name for p in run.iterdir())
    line = _one_line_error(capsys, ["test", "-c", str(run / "config.yaml"), "--run.root", str(tmp_path),
                                    "--ckpt_path", "last"], monkeypatch)  # fmt: skip
    assert "--ckpt_path last: its weights do not fit the model this config builds" in line
    assert "1 missing, 1 unexpected and 0 reshaped weights" in line and "decoder.trunk.0.bias" in line
    assert sorted(p.name for p in run.iterdir()) == before


# --- locks ---------------------------------------------------------------------------------------
def test_a_run_in_use_is_refused_and_a_stale_lock_taken_over(two_runs, tmp_path):
    run = tmp_path / "tiny" / "v1"
    shutil.copytree(two_runs / "tiny" / "v1", run)
    args = ["fit", "-c", str(run / "config.yaml"), "--run.root", str(tmp_path), "--ckpt_path", "last", "--trainer.max_epochs", "2"]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"host": socket.gethostname(), "pid": other.pid, "since": "earlier"}
        (run / LOCK_NAME).write_text(json.dumps(lock))
        before = sorted(run.rglob("*"))
        with pytest.raises(RunDirectoryError, match=rf"in use by another hepgen process .*PID {other.pid}"):
            main(args)
        assert sorted(run.rglob("*")) == before  # nothing written by the refused start
    finally:
        other.kill()
        other.wait()
    main(args)  # the holder is gone: its lock is stale
    # (the copied run's checkpoint callbacks remember the original folder, hence newest, not last.ckpt)
    assert torch.load(newest_checkpoint(run), weights_only=True)["epoch"] == 1
    assert not (run / LOCK_NAME).exists()  # released at the end


# --- launchers -----------------------------------------------------------------------------------
def _resolve_as_rank(rank: int, root: str, env: dict, out) -> None:
    os.environ.update({k: str(v) for k, v in env.items()}, RANK=str(rank), SLURM_PROCID=str(rank))
    settings = Namespace(root=root, experiment="tiny", version=None, checkpoint_every_n_epochs=1)
    out.put((rank, str(resolve_run_dir(settings, None, "fit"))))


@pytest.mark.parametrize(
    "launcher",
    [
        {"TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": 2, "LOCAL_WORLD_SIZE": 2, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": 29500},
        {"SLURM_NTASKS": 2, "SLURM_JOB_ID": 9001, "SLURM_STEP_ID": 0},
    ],
    ids=["torchrun", "srun"],
)
def test_ranks_started_by_another_launcher_share_one_run_directory(tmp_path, launcher):
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    ranks = [ctx.Process(target=_resolve_as_rank, args=(r, str(tmp_path), launcher, out)) for r in (1, 0)]
    for p in ranks:
        p.start()
    chosen = dict(out.get(timeout=60) for _ in ranks)
    for p in ranks:
        p.join(timeout=60)
    assert chosen[0] == chosen[1]
    assert [p.name for p in (tmp_path / "tiny").iterdir() if not p.name.startswith(".")] == [Path(chosen[0]).name]


def test_rank_0_withdraws_its_choice_when_the_command_ends(tmp_path):
    path = publish_run_dir(tmp_path, "launch", tmp_path / "tiny" / "v0")
    assert wait_for_run_dir(tmp_path, "launch", timeout_s=1) == tmp_path / "tiny" / "v0"
    withdraw_run_dirs()  # main() does this however the command ends
    assert not path.exists()  # a later launch with the same key cannot read a stale choice


def test_commands_in_one_slurm_job_get_distinct_directories_found_again_on_requeue(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")

    def version() -> str:
        settings = Namespace(root=str(tmp_path), experiment="sweep", version=None, checkpoint_every_n_epochs=1)
        return resolve_run_dir(settings, None, "fit").name

    assert [version(), version(), version()] == ["77", "77.1", "77.2"]
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # the requeued job runs the same commands again
    assert [version(), version()] == ["77", "77.1"]


# --- what a run directory accepts --------------------------------------------------------------
def test_collision_check_ignores_loader_settings(tmp_path):
    config = {"model": {"init_args": {"latent_dim": 4}}, "data": {"init_args": {"num_workers": 0, "batch_size": 64}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    faster = {"model": config["model"], "data": {"init_args": {"num_workers": 4, "batch_size": 64}}}
    check_config_collision(tmp_path, faster)
    other = {"model": config["model"], "data": {"init_args": {"num_workers": 0, "batch_size": 32}}}
    with pytest.raises(RunDirectoryError, match="batch_size"):
        check_config_collision(tmp_path, other)


# --- loggers and links ----------------------------------------------------------------------------
def test_csv_logger_can_be_chosen_on_the_command_line(calogan_dir, tmp_path):
    main(tiny_args("fit", calogan_dir, tmp_path, "--trainer.max_epochs", "1", "--trainer.logger", "CSVLogger"))
    assert (tmp_path / "tiny" / "v0" / "csv" / "version_0" / "metrics.csv").is_file()


def test_wandb_gets_the_config_as_nested_keys(calogan_dir, tmp_path, monkeypatch):
    import hepgen.run

    received = {}

    class FakeWandb:
        experiment = SimpleNamespace(config=SimpleNamespace(update=lambda d, allow_val_change: received.update(d)))

    monkeypatch.setattr(hepgen.run, "WandbLogger", FakeWandb)
    cli = HepgenCLI(args=["-c", str(TINY_CALO), "--data.init_args.data_dir", str(calogan_dir)], run=False)
    saver = hepgen.run.RunConfigSaver(cli.parser, cli.config, save_to_log_dir=False)
    saver.save_config(SimpleNamespace(default_root_dir=str(tmp_path), loggers=[FakeWandb()]), cli.model, "fit")
    assert received["model"]["init_args"]["latent_dim"] == 4
    assert received["data"]["init_args"]["batch_size"] == 64
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]["init_args"]["latent_dim"] == 4


def test_wandb_keeps_a_user_set_id(calogan_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    main(tiny_args("fit", calogan_dir, tmp_path, "--trainer.max_epochs", "1", "--trainer.logger", "WandbLogger",
                   "--trainer.logger.project", "t", "--trainer.logger.id", "my-own-id"))  # fmt: skip
    offline_runs = list((tmp_path / "tiny" / "v0" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and offline_runs[0].name.endswith("-my-own-id")


def test_num_particles_is_linked_from_the_datamodule(calogan_dir):
    args = ["-c", str(TINY_CALO), "--data.init_args.data_dir", str(calogan_dir), "--data.init_args.particles", "[eplus, gamma]"]
    cli = HepgenCLI(args=args, run=False)
    assert cli.datamodule.num_particles == 2
    assert cli.model.hparams.num_particles == 2


def test_experiment_yamls_name_no_hard_coded_run_version():
    for path in (ROOT / "experiments").rglob("*.yaml"):
        text = path.read_text()
        assert "/v0/" not in text, f"{path} names a fixed run version; use run:<experiment>@latest:last"
        assert "num_particles" not in text, f"{path} sets num_particles by hand; it is linked from the data"


def test_run_threads_sets_the_torch_threads_of_the_run(calogan_dir, tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        main(tiny_args("fit", calogan_dir, tmp_path, "--trainer.max_steps", "1", "--run.threads", "1"))
        assert torch.get_num_threads() == 1
        with pytest.raises(ConfigValueError, match="--run.threads 0: give at least 1 thread"):
            main(tiny_args("fit", calogan_dir, tmp_path, "--run.threads", "0"))
    finally:
        torch.set_num_threads(before)
