"""Run directories, config collision, resume and W&B: the pitfalls of lightning_ecosystem.md as tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from hepgen.cli import main
from hepgen.run import RunDirectoryError, experiment_from_config_files
from tests.conftest import tiny_args


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def test_experiment_name_from_config_path():
    assert experiment_from_config_files(["experiments/calo_vae/quickstart.yaml"]) == "calo_vae/quickstart"
    assert experiment_from_config_files(["/somewhere/my_run.yaml"]) == "my_run"


def test_runs_get_their_own_versions_and_configs(calogan_dir, tmp_path):
    main(tiny_args("fit", calogan_dir, tmp_path, "--trainer.max_epochs", "1"))
    # a second run of the same config must not die on "config.yaml already exists"
    main(tiny_args("fit", calogan_dir, tmp_path, "--trainer.max_epochs", "1"))
    runs = sorted(p.name for p in (tmp_path / "tiny").iterdir() if not p.is_symlink())
    assert runs == ["v0", "v1"]
    assert (tmp_path / "tiny" / "latest").resolve() == (tmp_path / "tiny" / "v1").resolve()
    for run in runs:
        saved = yaml.safe_load((tmp_path / "tiny" / run / "config.yaml").read_text())
        assert saved["run"]["version"] == run and saved["run"]["experiment"] == "tiny"
        assert (tmp_path / "tiny" / run / "checkpoints" / "last.ckpt").is_file()
        assert list((tmp_path / "tiny" / run / "checkpoints").glob("best-*.ckpt"))


def test_resume_is_exact(calogan_dir, tmp_path):
    """fit 4 epochs straight == fit 2, then resume from the run's own config to 4."""
    main(tiny_args("fit", calogan_dir, tmp_path, "--trainer.max_epochs", "4", "--run.version", "straight"))
    main(tiny_args("fit", calogan_dir, tmp_path, "--trainer.max_epochs", "2", "--run.version", "split"))
    split = tmp_path / "tiny" / "split"
    halfway = _weights(split / "checkpoints" / "last.ckpt")
    main(["fit", "-c", str(split / "config.yaml"), "--ckpt_path", "last", "--trainer.max_epochs", "4"])

    straight = _weights(tmp_path / "tiny" / "straight" / "checkpoints" / "last.ckpt")
    resumed = _weights(split / "checkpoints" / "last.ckpt")
    assert not torch.equal(halfway["decoder.trunk.0.weight"], resumed["decoder.trunk.0.weight"])
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name
    # the resume recorded its own config next to the first one
    assert (split / "config.1.yaml").is_file()
    ckpt = torch.load(split / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 3
    # the best checkpoint too is the uninterrupted run's, with no stale one from before the resume
    # (`--ckpt_path best` takes the newest best-*.ckpt)
    def best(run: str) -> list[str]:
        return sorted(p.name for p in (tmp_path / "tiny" / run / "checkpoints").glob("best-*.ckpt"))

    assert best("split") == best("straight")


def test_ckpt_last_without_checkpoint_is_an_error(calogan_dir, tmp_path):
    with pytest.raises(RunDirectoryError, match="no last checkpoint"):
        main(tiny_args("fit", calogan_dir, tmp_path, "--run.version", "fresh", "--ckpt_path", "last"))


def test_restart_in_a_run_with_checkpoints_needs_ckpt_path(calogan_dir, tmp_path):
    args = tiny_args("fit", calogan_dir, tmp_path, "--trainer.max_epochs", "1", "--run.version", "a")
    main(args)
    before = (tmp_path / "tiny" / "a" / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(RunDirectoryError, match="already holds checkpoints"):
        main(args)
    assert (tmp_path / "tiny" / "a" / "checkpoints" / "last.ckpt").read_bytes() == before


def test_slurm_requeue_resumes_without_ckpt_path(calogan_dir, tmp_path, monkeypatch):
    args = tiny_args("fit", calogan_dir, tmp_path, "--trainer.max_epochs", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # keep Lightning's own SLURM environment out of a local test
    main(args)
    run = tmp_path / "tiny" / "4242"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    main([*args[:-2], "--trainer.max_epochs", "2"])
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1  # continued from epoch 0 instead of starting over


def test_config_collision_is_refused(calogan_dir, tmp_path):
    main(tiny_args("fit", calogan_dir, tmp_path, "--trainer.max_epochs", "1", "--run.version", "x"))
    with pytest.raises(RunDirectoryError, match=r"Config collision.*model.init_args.latent_dim"):
        main(tiny_args("fit", calogan_dir, tmp_path, "--run.version", "x", "--model.init_args.latent_dim", "5",
                       "--ckpt_path", "last"))


def test_wandb_without_key_goes_offline(calogan_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    main(tiny_args("fit", calogan_dir, tmp_path, "--trainer.max_epochs", "1", "--run.version", "wb",
                   "--trainer.logger", "WandbLogger", "--trainer.logger.project", "hepgen-test"))
    assert "logging to W&B offline" in capsys.readouterr().out
    run = tmp_path / "tiny" / "wb"
    assert list((run / "wandb").glob("offline-run-*")), "no offline W&B run in the run directory"
    assert (run / "checkpoints" / "last.ckpt").is_file()
