"""The sbatch scripts on a real SLURM (one node, this host): DDP under srun, requeue, bad input.

The cluster comes up once for the module (``tests/slurm_cluster.py``, about 2 s once the Debian
packages are installed, as ``.ci/run`` does) and is stopped by PID afterwards. Where the daemons
cannot start, the tests fail with the reason; only a user who is not root, outside CI, gets them
skipped (the daemons need root).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TINY_CALO
from tests.slurm_cluster import LocalSlurm, SlurmUnavailable, SubmitRefused

TINY_SDE = ROOT / "tests" / "conf" / "sde_gan_tiny.yaml"
#: What every test job gets besides the script's own lines: no GPUs on this node, one core a task.
CPU_ONLY = ["--gpus-per-node=0", "--cpus-per-task=1"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        cluster = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    except SlurmUnavailable as error:
        if os.geteuid() == 0 or os.environ.get("CI"):
            pytest.fail(f"a local SLURM could not start: {error}")
        pytest.skip(f"a local SLURM needs root: {error}")
    yield cluster
    cluster.stop()


def submit(
    slurm: LocalSlurm, tmp_path: Path, script: str, *args: str, sbatch_args: tuple = (), wandb: str = "disabled"
) -> str:
    """``sbatch [sbatch_args] sbatch/<script> args`` from the checkout, its log in ``tmp_path``."""
    env = {"HEPGEN_PYTHON": sys.executable, "WANDB_MODE": wandb, "HEPGEN_DEBUG": "0"}
    out = f"--output={tmp_path}/slurm-%j.out"
    return slurm.sbatch(*CPU_ONLY, out, *sbatch_args, f"sbatch/{script}", *args, cwd=ROOT, env=env)


def log(tmp_path: Path, job: str) -> str:
    return (tmp_path / f"slurm-{job}.out").read_text()


def _run_dirs(root: Path, experiment: str = "tiny") -> list[str]:
    folders = [p for p in (root / experiment).iterdir() if p.is_dir() and not p.is_symlink()]
    return sorted(p.name for p in folders if not p.name.startswith("."))


@pytest.mark.parametrize("script", ["fit.sbatch", "fit_multinode.sbatch"])
def test_fit_sbatch_trains_two_ranks_in_one_run_directory(slurm, calogan_dir, tmp_path, script):
    """srun starts 2 tasks; hepgen makes them one DDP group writing one run directory (the
    multi-node script on this one node: the same launch, with the nodes from the allocation)."""
    root = tmp_path / "runs"
    job = submit(slurm, tmp_path, script, str(TINY_CALO), "--data.init_args.data_dir", str(calogan_dir),
                 "--run.root", str(root), "--run.experiment", "tiny", "--trainer.max_epochs", "1",
                 "--data.init_args.batch_size", "32", "--trainer.callbacks+=tests.ddp_probe.WeightProbe",
                 sbatch_args=("--nodes=1", "--ntasks-per-node=2"))  # fmt: skip
    assert slurm.wait(job) == ["COMPLETED"], log(tmp_path, job)
    assert _run_dirs(root) == [job]  # named by the job id; no second folder from rank 1
    ranks = [torch.load(root / "tiny" / job / "probe" / f"fit_rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    for name, value in ranks[0]["state_dict"].items():
        assert torch.equal(value, ranks[1]["state_dict"][name]), name  # the ranks stayed in sync
    first = "decoder.trunk.0.weight"
    assert not torch.equal(ranks[0]["state_dict"][first], ranks[0]["initial_state_dict"][first])  # it trained
    assert (root / "tiny" / job / "checkpoints" / "last.ckpt").is_file()


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _wait_for(path: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout_s:.0f} s"
        time.sleep(0.2)


@pytest.mark.parametrize(
    "config, extra, tasks",
    [
        # CaloVAE: automatic optimization; 8 batches per epoch
        (TINY_CALO, ["--trainer.max_epochs", "6", "--trainer.callbacks.seconds=0.05"], 1),
        # SDE-GAN: two optimizers and SWA copies of both networks (from generator step 2)
        (TINY_SDE, ["--trainer.max_epochs", "12", "--trainer.callbacks.seconds=0.1"], 1),
        # CaloVAE on 2 ranks (batch 32 each, 8 steps per epoch): every rank's noise stream and its
        # place in the epoch's order continue (the two jobs run one after the other on 2 cores)
        (TINY_CALO, ["--trainer.max_epochs", "6", "--trainer.callbacks.seconds=0.05",
                     "--data.init_args.batch_size=32"], 2),  # fmt: skip
    ],
    ids=["calo_vae", "sde_gan_swa", "calo_vae_2_ranks"],
)
def test_time_limit_signal_requeues_the_job_and_it_ends_as_an_uninterrupted_run(
    slurm, calogan_dir, tmp_path, config, extra, tasks
):
    """SIGUSR1 to the job's tasks (what ``--signal=SIGUSR1@90`` sends before the time limit), sent
    once the first epoch's checkpoint exists; the job requeues itself, starts again and resumes
    from the step it stopped at. A second job, never signalled, is the reference."""
    data = str(calogan_dir) if config == TINY_CALO else str(tmp_path / "ou")
    common = [str(config), "--data.init_args.data_dir", data, "--run.experiment", "tiny", "--run.threads", "1",
              *extra[:2], "--trainer.callbacks+=tests.slurm_cluster.SleepEachBatch", *extra[2:]]  # fmt: skip
    per_job = {"sbatch_args": (f"--ntasks-per-node={tasks}",)}
    straight = submit(slurm, tmp_path, "fit.sbatch", *common, "--run.root", str(tmp_path / "straight"), **per_job)
    job = submit(slurm, tmp_path, "fit.sbatch", *common, "--run.root", str(tmp_path / "job"), **per_job)
    run_dir = tmp_path / "job" / "tiny" / job
    _wait_for(run_dir / "checkpoints" / "last.ckpt")
    slurm.scancel("--signal=USR1", job)
    assert slurm.wait(job) == ["COMPLETED"], log(tmp_path, job)
    assert slurm.wait(straight) == ["COMPLETED"], log(tmp_path, straight)

    info = slurm.job(job)
    assert info["Restarts"] == "1", log(tmp_path, job)
    text = log(tmp_path, job)
    assert re.search(rf"saved hpc_ckpt_1\.ckpt at step \d+ and requeued SLURM job {job}", text), text
    saved = _load(run_dir / "hpc_ckpt_1.ckpt")
    reference = _load(tmp_path / "straight" / "tiny" / straight / "checkpoints" / "last.ckpt")
    resumed = _load(run_dir / "checkpoints" / "last.ckpt")
    assert 0 < saved["global_step"] < reference["global_step"]  # stopped in the middle
    assert resumed["global_step"] == reference["global_step"]
    for name, value in reference["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name
    assert _run_dirs(tmp_path / "job") == [job]


@pytest.mark.parametrize(
    "script, args, sbatch_args, message",
    [
        ("fit.sbatch", [], (), "sbatch/fit.sbatch needs an experiment YAML"),
        ("fit_multinode.sbatch", ["experiments/calo_vae/nonexistent.yaml"], ("--nodes=1", "--ntasks-per-node=1"),
         "experiments/calo_vae/nonexistent.yaml: no such experiment YAML"),
        ("fit.sbatch", ["experiments/calo_vae/quickstart.yaml", "--trainer.devices", "4"], (),
         "--trainer.devices: the processes follow the allocation"),
        ("predict.sbatch", ["experiments/calo_vae/quickstart.yaml"], (), "predict.sbatch needs --ckpt_path"),
        ("study.sbatch", ["experiments/calo_vae/quickstart.yaml", "--trainer.num_nodes=2"], ("--array=0-1",),
         "--trainer.num_nodes=2: the processes follow the allocation"),
    ],
    ids=["no_yaml", "missing_yaml", "devices_override", "predict_without_checkpoint", "nodes_override_in_array"],
)
def test_bad_arguments_end_the_job_before_training_with_one_line(slurm, tmp_path, script, args, sbatch_args, message):
    job = submit(slurm, tmp_path, script, *args, "--run.root", str(tmp_path / "runs"), sbatch_args=sbatch_args)
    states = slurm.wait(job, timeout_s=60)
    assert set(states) == {"FAILED"}
    first = next(p for p in sorted(tmp_path.glob(f"slurm-{job}*.out")))
    lines = [line for line in first.read_text().splitlines() if line.strip()]
    assert lines == [f"hepgen: error: {lines[0].removeprefix('hepgen: error: ')}"] and message in lines[0], lines
    assert not (tmp_path / "runs").exists()  # nothing started, nothing left


def test_more_processes_than_the_node_has_cores_is_refused_at_submission(slurm, tmp_path):
    with pytest.raises(SubmitRefused, match="More processors requested than permitted"):
        submit(slurm, tmp_path, "fit.sbatch", str(TINY_CALO), sbatch_args=(f"--ntasks-per-node={os.cpu_count() + 1}",))


def _task_pid(job: str, rank: int) -> int | None:
    """PID of the hepgen process of ``job`` with SLURM_PROCID ``rank`` on this host."""
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        ours = f"SLURM_JOB_ID={job}".encode() in environ and f"SLURM_PROCID={rank}".encode() in environ
        if b"hepgen" in cmdline and ours:
            return int(proc.name)
    return None


def test_a_lost_rank_ends_the_job_at_once_naming_it(slurm, calogan_dir, tmp_path):
    """Rank 1 killed (as a lost node's process would vanish): rank 0 does not wait in a collective
    until the time limit; srun stops it and says which task died."""
    root = tmp_path / "runs"
    job = submit(slurm, tmp_path, "fit.sbatch", str(TINY_CALO), "--data.init_args.data_dir", str(calogan_dir),
                 "--run.root", str(root), "--run.experiment", "tiny", "--trainer.max_epochs", "50",
                 "--data.init_args.batch_size", "32", "--trainer.callbacks+=tests.slurm_cluster.SleepEachBatch",
                 "--trainer.callbacks.seconds=0.05", sbatch_args=("--ntasks-per-node=2",))  # fmt: skip
    _wait_for(root / "tiny" / job / "checkpoints" / "last.ckpt")
    pid = _task_pid(job, 1)
    assert pid is not None
    os.kill(pid, 9)
    killed = time.monotonic()
    assert slurm.wait(job, timeout_s=60) == ["FAILED"]
    assert time.monotonic() - killed < 30
    assert re.search(r"task 1: (Killed|Exited)", log(tmp_path, job)), log(tmp_path, job)


def test_an_array_of_two_sweep_agents_runs_a_trial_each_in_its_own_run_directory(slurm, calogan_dir, tmp_path):
    """The local controller's folder is shared by the array's tasks: each agent draws its own trial
    (no trial twice), trains it in its own run directory and logs it to its own offline W&B run."""
    from tests.test_sweeps import tiny_sweep

    sweep = tiny_sweep(tmp_path, calogan_dir, early_terminate=None)
    job = submit(slurm, tmp_path, "sweep_agent.sbatch", str(sweep), "1", "--trainer.logger", "WandbLogger",
                 sbatch_args=("--array=0-1", f"--output={tmp_path}/slurm-%A_%a.out"), wandb="offline")  # fmt: skip
    states = slurm.wait(job, timeout_s=180)
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob(f"slurm-{job}_*.out")))
    assert states == ["COMPLETED", "COMPLETED"], logs
    folder = tmp_path / "runs" / "sweeps" / "tiny" / "trials"
    trials = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    assert sorted(t["name"] for t in trials) == ["tiny-0", "tiny-1"]
    assert sorted(t["agent"] for t in trials) == [f"{job}_0", f"{job}_1"]
    for trial in trials:
        assert trial["state"] == "finished" and trial["summary"]["val/objective"] is not None
        run_dir = Path(trial["run_dir"])
        assert run_dir.name == trial["name"] and (run_dir / "checkpoints" / "last.ckpt").is_file()
        assert list((run_dir / "wandb").glob(f"offline-run-*-{trial['name']}")), logs


def test_study_sbatch_trains_a_seed_per_array_task_and_predict_sbatch_generates_with_one(slurm, calogan_dir, tmp_path):
    """``sbatch --array=3-4 study.sbatch <experiment>``: two runs seeded 3 and 4, in
    ``<array job>_3`` and ``<array job>_4``; then ``predict.sbatch`` with the first one's config."""
    import yaml

    root = tmp_path / "runs"
    job = submit(slurm, tmp_path, "study.sbatch", str(TINY_CALO), "--data.init_args.data_dir", str(calogan_dir),
                 "--run.root", str(root), "--run.experiment", "tiny", "--trainer.max_epochs", "1",
                 sbatch_args=("--array=3-4", f"--output={tmp_path}/slurm-%A_%a.out"))  # fmt: skip
    states = slurm.wait(job)
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob(f"slurm-{job}_*.out")))
    assert states == ["COMPLETED", "COMPLETED"], logs
    assert _run_dirs(root) == [f"{job}_3", f"{job}_4"]
    configs = [yaml.safe_load((root / "tiny" / f"{job}_{t}" / "config.yaml").read_text()) for t in (3, 4)]
    assert [c["seed_everything"] for c in configs] == [3, 4]
    weights = [_load(root / "tiny" / f"{job}_{t}" / "checkpoints" / "last.ckpt")["state_dict"] for t in (3, 4)]
    assert not torch.equal(weights[0]["decoder.trunk.0.weight"], weights[1]["decoder.trunk.0.weight"])

    run_dir = root / "tiny" / f"{job}_3"
    predict = submit(slurm, tmp_path, "predict.sbatch", str(run_dir / "config.yaml"), "--ckpt_path", "last",
                     "--trainer.callbacks+=CaloGANWriter")  # fmt: skip
    assert slurm.wait(predict) == ["COMPLETED"], log(tmp_path, predict)
    assert [p.name for p in (run_dir / "predictions").iterdir()] == ["eplus.hdf5"]
