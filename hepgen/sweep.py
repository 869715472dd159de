"""W&B sweeps on nodes without the W&B server: a local sweep controller that agents share.

A sweep file (``experiments/sweeps/<method>.yaml``) is W&B's own format: the search method,
the metric to optimise, the parameters as the dotted ``hepgen fit`` options they set, Hyperband
early termination and the command. Online, W&B's server is the controller::

    wandb sweep experiments/sweeps/calo_vae.yaml            # prints the sweep id
    wandb agent <entity>/<project>/<sweep id> --count 10    # on any number of machines

Offline (compute nodes without internet, CI), ``hepgen sweep agent experiments/sweeps/calo_vae.yaml
--count 10`` takes the server's part with W&B's own search and stopping code (the ``sweeps``
package of ``pip install "wandb[sweeps]"``). The sweep lives in a folder (default
``runs/sweeps/<name>/``, below the trials' ``--run.root``): ``sweep.yaml`` and one
``trials/<k>.json`` per trial, with its parameters, state, the metric after each validation and
its run directory. Every agent that
points at the folder (the tasks of a SLURM array, ``sbatch/sweep_agent.sbatch``) draws the next
trial from all trials so far under a file lock, runs it as W&B's agent would (a ``hepgen fit``
subprocess with ``--<parameter>=<value>`` options), and the trial's own process reports each
validation and stops early when Hyperband says so (``callbacks.SweepTrial``). Each trial is an
ordinary hepgen run: its own run directory and W&B run (offline, id ``<sweep>-<k>``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import yaml

from hepgen.errors import ConfigValueError
from hepgen.io.files import write_atomically
from hepgen.run import slurm_requeued, slurm_run_id

#: The environment variable that tells a trial's ``hepgen fit`` which trial file it reports to.
TRIAL_ENV = "HEPGEN_SWEEP_TRIAL"
#: Keys of a W&B sweep file that hepgen's controller reads (others are kept for W&B).
REQUIRED_KEYS = ("method", "metric", "parameters", "command")


def load_sweep(path: str | Path) -> dict:
    """A sweep file, checked for what the controller needs; raises one line naming what is missing."""
    path = Path(path)
    if not path.is_file():
        raise ConfigValueError(f"{path}: no such sweep file (experiments/sweeps/<method>.yaml).")
    config = yaml.safe_load(path.read_text()) or {}
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise ConfigValueError(f"{path}: a W&B sweep file needs {', '.join(missing)} (see experiments/sweeps/).")
    if "${args}" not in config["command"]:
        raise ConfigValueError(f"{path}: command must contain ${{args}}, where the parameters go.")
    config.setdefault("name", path.stem)
    return config


def trial_arguments(config: dict, values: dict, extra: list[str] | None = None) -> list[str]:
    """The command of one trial, as W&B's agent builds it: ``${args}`` -> ``--<name>=<value>`` (str()).

    ``${env}`` becomes nothing (the environment is passed, not prefixed), ``${interpreter}`` this
    Python, ``${program}`` the file's ``program``; ``extra`` options go right after ``${args}``.
    """
    out: list[str] = []
    for word in config["command"]:
        if word == "${env}":
            continue
        if word == "${interpreter}":
            out.append(sys.executable)
        elif word == "${program}":
            out.append(str(config.get("program", "hepgen")))
        elif word == "${args}":
            out += [f"--{name}={value}" for name, value in values.items()] + list(extra or [])
        else:
            out.append(str(word))
    return out


# --- the sweep folder ----------------------------------------------------------------------------
def sweep_folder(config: dict, root: str | Path | None = None, extra: list[str] | None = None) -> Path:
    """``<root>/sweeps/<name>``; the root defaults to the trials' own ``--run.root`` (else ``runs``)."""
    if root is None:
        words = [str(w) for w in config["command"]] + list(extra or [])
        given = [b for a, b in zip(words, words[1:]) if a == "--run.root"]
        given += [w.split("=", 1)[1] for w in words if w.startswith("--run.root=")]
        root = given[-1] if given else "runs"
    return Path(root) / "sweeps" / str(config["name"])


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the sweep folder's lock (one agent or trial at a time reads and writes the trials)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_trials(folder: Path) -> list[dict]:
    """Every trial of the sweep, in the order they were drawn."""
    paths = sorted((folder / "trials").glob("*.json"), key=lambda p: int(p.stem))
    return [json.loads(p.read_text()) for p in paths]


def write_trial(folder: Path, trial: dict) -> Path:
    """Write a trial's record whole (a new file renamed over the old)."""
    path = folder / "trials" / f"{trial['index']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(trial, indent=1))
    os.replace(tmp, path)
    return path


def sweeps_package():
    """W&B's search and stopping code (``pip install "wandb[sweeps]"``), imported quietly: its
    pydantic models warn about pydantic-1 option names at import."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sweeps

    return sweeps


def as_sweep_runs(trials: list[dict]) -> list:
    """The trials as the ``sweeps`` package's runs (what W&B's server hands its search code)."""
    SweepRun = sweeps_package().SweepRun
    # the server's field names (sampledHistory, summaryMetrics): sweeps 0.2 under pydantic 2 takes no others
    return [
        SweepRun(
            name=t["name"], state=t["state"], config={k: {"value": v} for k, v in t["values"].items()},
            sampledHistory=t["history"], summaryMetrics=t["summary"],
        )  # fmt: skip
        for t in trials
    ]


def agent_id() -> str:
    """Who runs a trial: the SLURM job (``<array job>_<task>``, the same after a requeue), else host:PID."""
    return slurm_run_id() or f"{socket.gethostname()}:{os.getpid()}"


def draw_trial(config: dict, folder: Path) -> dict | None:
    """The next trial: this agent's own unfinished one after a SLURM requeue, else a new one by the
    sweep's method given every trial so far; ``None`` when a grid is done."""
    with locked(folder):
        trials = read_trials(folder)
        if slurm_requeued():
            mine = [t for t in trials if t["state"] == "running" and t["agent"] == agent_id()]
            if mine:
                return mine[0]  # its fit resumes from the checkpoint written before the requeue
        suggestion = sweeps_package().next_run(config, as_sweep_runs(trials))
        if suggestion is None:
            return None
        index = len(trials)
        trial = {
            "index": index, "name": f"{config['name']}-{index}", "state": "running",
            "values": {k: v["value"] for k, v in suggestion.config.items()},
            "history": [], "summary": {}, "run_dir": None, "agent": agent_id(),
        }  # fmt: skip
        write_trial(folder, trial)
    return trial


def finish_trial(folder: Path, index: int, returncode: int) -> dict:
    """Record how a trial's process ended (a trial that Hyperband stopped stays ``stopped``)."""
    with locked(folder):
        trial = json.loads((folder / "trials" / f"{index}.json").read_text())
        if trial["state"] == "running":
            trial["state"] = "finished" if returncode == 0 else "failed"
        trial["exitcode"] = returncode
        write_trial(folder, trial)
    return trial


def run_agent(
    sweep_file: str | Path, count: int, root: str | Path | None = None, extra: list[str] | None = None
) -> list[dict]:
    """Run ``count`` trials of a sweep, one after the other; the finished trials' records."""
    config = load_sweep(sweep_file)
    folder = sweep_folder(config, root, extra)
    with locked(folder):
        saved = folder / "sweep.yaml"
        if saved.is_file() and yaml.safe_load(saved.read_text()) != config:
            raise ConfigValueError(
                f"{folder} holds sweep '{config['name']}' with other settings ({saved}); "
                f"give the changed sweep another name: key."
            )
        if not saved.is_file():
            write_atomically(saved, lambda f: f.write(yaml.safe_dump(config, sort_keys=False).encode()))
        # a requeued agent counts the trials it finished before the requeue
        mine = [t for t in read_trials(folder) if t["agent"] == agent_id() and t["state"] != "running"]
        ended = len(mine) if slurm_requeued() else 0
    # SLURM's time-limit signal reaches every process of the job step: the trial's fit saves and
    # requeues the job (callbacks.SlurmRequeue); the agent itself must not die of it first
    if slurm_run_id() is not None:
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    done = []
    for _ in range(count - ended):
        trial = draw_trial(config, folder)
        if trial is None:
            print(f"hepgen sweep: {config['name']}: the grid is exhausted.")
            break
        # its own run directory, found again by this agent after a requeue: runs/<experiment>/<trial name>
        args = trial_arguments(config, trial["values"], [f"--run.version={trial['name']}", *(extra or [])])
        trial_file = folder / "trials" / f"{trial['index']}.json"
        env = {**os.environ, TRIAL_ENV: str(trial_file), "WANDB_RUN_ID": trial["name"]}
        shown = " ".join(f"--{k}={v}" for k, v in trial["values"].items())
        print(f"hepgen sweep: trial {trial['name']}: {shown}", flush=True)
        start = time.perf_counter()
        returncode = subprocess.run(args, env=env).returncode
        trial = finish_trial(folder, trial["index"], returncode)
        metric = config["metric"]["name"]
        print(f"hepgen sweep: trial {trial['name']} {trial['state']} in {time.perf_counter() - start:.0f} s, "
              f"{metric} = {trial['summary'].get(metric)}", flush=True)  # fmt: skip
        done.append(trial)
    return done


def main(argv: list[str]) -> None:
    """``hepgen sweep agent SWEEP.yaml [--count N] [--root DIR] [-- hepgen fit options]``."""
    parser = argparse.ArgumentParser(prog="hepgen sweep", description="W&B sweeps with a local controller (offline).")
    sub = parser.add_subparsers(dest="action", required=True)
    agent = sub.add_parser("agent", help="run trials of a sweep file, sharing its folder with other agents")
    agent.add_argument("sweep", help="the sweep file (experiments/sweeps/<method>.yaml)")
    agent.add_argument("--count", type=int, default=1, help="how many trials this agent runs")
    agent.add_argument("--root", help="the folder of sweeps/<name>/ (default: the trials' --run.root, else runs)")
    argv, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = parser.parse_args(argv)
    trials = run_agent(args.sweep, args.count, args.root, extra)
    if any(t["state"] == "failed" for t in trials):
        raise SystemExit(1)
