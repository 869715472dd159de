"""Run directories: one folder per run, found again on resume, never overwritten.

Every run writes to ``<root>/<experiment>/<version>/``::

    runs/calo_vae/quickstart/v0/
        config.yaml          the resolved config of the first start
        config.1.yaml ...    the config of each later start (resume, test, predict)
        checkpoints/         last.ckpt, best-*.ckpt
        wandb/ csv/ ...      logger files
        plots/ metrics.json  physics metrics
        predictions/         generated samples

``experiment`` defaults to the config file's path below ``experiments/`` (without ``.yaml``),
``version`` to the W&B run id of a W&B sweep's trial, the SLURM job id (``<array job>_<task>`` for
arrays) or else the next free ``v<N>``.
The resolved values are written into the saved config, so
``hepgen fit -c runs/.../config.yaml --ckpt_path last`` comes back to the same folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from hepgen.checkpoints import check_whole, find_checkpoint, newest_checkpoint, run_checkpoints
from hepgen.errors import CheckpointError, RunDirectoryError

#: Set by the launching process so that DDP ranks it starts re-use its run directory.
RUN_DIR_ENV = "HEPGEN_RUN_DIR"
#: The parts of a config that define what is trained; a run directory refuses a change in them.
IDENTITY_KEYS = ("model", "data", "seed_everything")
#: Settings inside those parts that change how data is loaded, not what is trained.
LOADER_KEYS = ("num_workers", "pin_memory", "persistent_workers", "prefetch_factor")


@dataclass
class RunSettings:
    """Where a run writes (the ``run:`` section of every config).

    Args:
        root: folder that holds all runs.
        experiment: name of the experiment (default: the config file's path below ``experiments/``).
        version: name of this run (default: a W&B sweep trial's run id, the SLURM job id, else the
            next free ``v<N>``).
        checkpoint_every_n_epochs: how often ``last.ckpt`` and the best checkpoint are written.
        threads: torch intra-op threads of each process (default: torch's choice, all cores; on
            a cluster, ``--cpus-per-task`` divided by the processes per node). Small models
            whose steps are many tiny operations (SDE-GAN) run as fast or faster on one.
    """

    root: str = "runs"
    experiment: Optional[str] = None
    version: Optional[str] = None
    checkpoint_every_n_epochs: int = 1
    threads: Optional[int] = None


def experiment_from_config_files(config_files: list | None) -> str:
    """``experiments/calo_vae/quickstart.yaml`` -> ``calo_vae/quickstart``; any other file -> its stem."""
    if not config_files:
        return "default"
    path = Path(str(config_files[0])).resolve()
    parts = path.with_suffix("").parts
    if "experiments" in parts:
        i = len(parts) - 1 - parts[::-1].index("experiments")
        return "/".join(parts[i + 1 :])
    return path.stem


def slurm_requeued() -> bool:
    """True in a SLURM job that was requeued (``SLURM_RESTART_COUNT`` > 0): it continues its runs."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0


def slurm_run_id() -> str | None:
    """The SLURM job id that survives a requeue (array jobs: ``<array job id>_<task id>``)."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


#: Run directories this process created (removed again if the start fails before training).
CREATED_RUN_DIRS: list[Path] = []
#: Folders above them that this process created (the runs root, experiment folders): removed with
#: a failed start's run directory when left empty, unlike folders that were there before.
CREATED_PARENT_DIRS: set[Path] = set()


def make_parents(path: Path) -> None:
    """``mkdir -p`` of ``path``, remembering which of its folders did not exist before."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    CREATED_PARENT_DIRS.update(missing)


def reserve_next_version(experiment_dir: Path) -> Path:
    """Create and return ``experiment_dir/v<N>`` for the smallest free N (``mkdir`` is atomic)."""
    make_parents(experiment_dir)
    taken = [int(m.group(1)) for p in experiment_dir.iterdir() if (m := re.fullmatch(r"v(\d+)", p.name))]
    n = max(taken, default=-1) + 1
    while True:
        try:
            (experiment_dir / f"v{n}").mkdir()
            CREATED_RUN_DIRS.append(experiment_dir / f"v{n}")
            return experiment_dir / f"v{n}"
        except FileExistsError:
            n += 1


def slurm_version(experiment_dir: Path, job: str) -> str:
    """The version of this ``fit`` in SLURM job ``job``: ``<job>``, then ``<job>.1``, ``<job>.2``, ...

    Several ``hepgen fit`` commands in one job (a sweep agent, a loop over seeds) are numbered in
    the order they start, by a counter per job and restart; a requeued job (``SLURM_RESTART_COUNT``
    one higher) runs the same commands in the same order and so finds each its own directory.
    """
    restart = os.environ.get("SLURM_RESTART_COUNT", "0")
    make_parents(experiment_dir)
    counter = experiment_dir / f".slurm-{job}-restart{restart}.count"
    with open(counter, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        n = int(f.read() or 0)
        f.seek(0)
        f.truncate()
        f.write(str(n + 1))
    return job if n == 0 else f"{job}.{n}"


def is_run_dir(path: Path) -> bool:
    """A run's folder (not the ``latest`` link, not hidden) that a start has configured."""
    return path.is_dir() and not path.is_symlink() and not path.name.startswith(".") and (path / "config.yaml").is_file()


def newest_run(experiment_dir: Path) -> Path | None:
    """The run of an experiment started last (by the time of its first config)."""
    runs = [p for p in experiment_dir.iterdir() if is_run_dir(p)] if experiment_dir.is_dir() else []
    return max(runs, key=lambda p: (p / "config.yaml").stat().st_mtime, default=None)


def update_latest_link(run_dir: Path) -> None:
    """Point ``<experiment dir>/latest`` at ``run_dir``, atomically (a new link renamed over the old)."""
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name, target_is_directory=True)
    os.replace(tmp, link)


# --- one run directory for all ranks of a launch ------------------------------------------------
def launch_rank() -> int:
    """This process's global rank as the launcher set it (torchrun: RANK, srun: SLURM_PROCID)."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def rendezvous_key() -> str | None:
    """A name shared by all ranks of one ``torchrun`` or ``srun`` launch, distinct between launches.

    These launchers start every rank as an independent process, so the run directory must be
    agreed on before the ranks choose one each. Lightning's own launcher passes it to the ranks
    it starts through :data:`RUN_DIR_ENV` instead.
    """
    env = os.environ
    if env.get("TORCHELASTIC_RUN_ID") is not None and int(env.get("WORLD_SIZE", "1")) > 1:
        parts = ["torchrun", env["TORCHELASTIC_RUN_ID"], env.get("MASTER_ADDR", ""), env.get("MASTER_PORT", "")]
        if env.get("LOCAL_WORLD_SIZE") == env.get("WORLD_SIZE"):
            parts.append(str(os.getppid()))  # one node: the torchrun agent that started every rank
        return re.sub(r"[^A-Za-z0-9_.-]", "-", "-".join(parts))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and env.get("SLURM_PROCID") is not None and env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}-{env.get('SLURM_STEP_ID', 'batch')}"
    return None


def _rendezvous_file(root: Path, key: str) -> Path:
    return Path(root) / ".rendezvous" / f"{key}.txt"


#: Rendezvous files this process published (removed when the command ends).
PUBLISHED_RENDEZVOUS: list[Path] = []


def publish_run_dir(root: Path, key: str, run_dir: Path) -> Path:
    """Rank 0: tell the other ranks of this launch which run directory it chose."""
    path = _rendezvous_file(root, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    tmp.write_text(str(run_dir))
    os.replace(tmp, path)
    PUBLISHED_RENDEZVOUS.append(path)
    return path


def withdraw_run_dirs() -> None:
    """Remove this process's rendezvous files, so a later launch with the same key cannot read them."""
    while PUBLISHED_RENDEZVOUS:
        PUBLISHED_RENDEZVOUS.pop().unlink(missing_ok=True)


def wait_for_run_dir(root: Path, key: str, timeout_s: float = 600.0) -> Path:
    """Ranks > 0: the run directory rank 0 of this launch chose."""
    path = _rendezvous_file(root, key)
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > deadline:
            raise RunDirectoryError(f"rank {launch_rank()} waited {timeout_s:.0f} s for rank 0 to choose a run directory ({path}).")
        time.sleep(0.2)
    return Path(path.read_text())


def _choose_run_dir(settings: Namespace, subcommand: str, ckpt_path: str | None) -> Path:
    experiment_dir = Path(settings.root) / settings.experiment
    if settings.version is not None:
        return experiment_dir / str(settings.version)
    if subcommand != "fit":
        if ckpt_path in ("last", "best"):
            run_dir = newest_run(experiment_dir)
            if run_dir is None:
                raise RunDirectoryError(
                    f"--ckpt_path {ckpt_path}: experiment '{settings.experiment}' has no run in {experiment_dir}. "
                    f"Train it first (hepgen fit -c <config>), or give --run.version or a checkpoint file."
                )
            print(f"hepgen: {subcommand} uses the newest run of {settings.experiment}: {run_dir} (choose another with --run.version)")
            return run_dir
        if ckpt_path is not None and Path(ckpt_path).resolve().parent.name == "checkpoints":
            run_dir = Path(ckpt_path).resolve().parent.parent
            if run_dir.parent == experiment_dir.resolve():
                return experiment_dir / run_dir.name  # the checkpoint's own run
    sweep_run = os.environ.get("WANDB_RUN_ID") if os.environ.get("WANDB_SWEEP_ID") else None
    if subcommand == "fit" and sweep_run:
        # a trial of a W&B sweep (its agent sets both): the W&B run's own folder, never another
        # trial's (the SLURM job's numbering would give a requeued agent's new trial an old folder)
        return experiment_dir / re.sub(r"[^A-Za-z0-9_.-]", "-", sweep_run)
    job = slurm_run_id()
    if subcommand == "fit" and job is not None:
        return experiment_dir / slurm_version(experiment_dir, job)
    return reserve_next_version(experiment_dir)


def resolve_run_dir(
    settings: Namespace, config_files: list | None, subcommand: str = "fit", ckpt_path: str | None = None
) -> Path:
    """Fill in ``settings.experiment`` and ``settings.version`` and return the (created) run directory.

    ``fit`` starts a new version (or the given one); ``test``, ``validate`` and ``predict`` with
    ``--ckpt_path last|best`` use the newest run of the experiment and say which. All ranks of one
    launch share the directory rank 0 chose.
    """
    settings.experiment = settings.experiment or experiment_from_config_files(config_files)
    if os.environ.get(RUN_DIR_ENV) and int(os.environ.get("LOCAL_RANK", "0")) > 0 and rendezvous_key() is None:
        run_dir = Path(os.environ[RUN_DIR_ENV])  # a rank started by Lightning's launcher
    elif (key := rendezvous_key()) is not None and launch_rank() > 0:
        run_dir = wait_for_run_dir(Path(settings.root), key)
    else:
        run_dir = _choose_run_dir(settings, subcommand, ckpt_path)
        if not run_dir.is_dir():
            make_parents(run_dir.parent)
            run_dir.mkdir()
            CREATED_RUN_DIRS.append(run_dir)
        if key is not None:
            publish_run_dir(Path(settings.root), key, run_dir)
    settings.version = run_dir.name
    os.environ[RUN_DIR_ENV] = str(run_dir)
    return run_dir


#: Configs this process saved (``config.N.yaml`` of a resume, test or predict in an existing run).
SAVED_CONFIGS: list[Path] = []

#: What a command leaves in a run directory besides its config: a config is worth keeping once any
#: of these was written after it.
RUN_OUTPUTS = ("checkpoints", "metrics.json", "plots", "predictions")


def _wrote_after(run_dir: Path, when: float) -> bool:
    paths = (q for name in RUN_OUTPUTS for q in ([run_dir / name] + list((run_dir / name).rglob("*"))))
    return any(q.exists() and q.stat().st_mtime >= when for q in paths)


def remove_unused_run_dirs() -> None:
    """Remove the run directories this process created if the start failed before training, and
    the configs it added to existing ones if the command wrote nothing after them.

    A directory is unused when it holds no checkpoint and no metrics: what a failed start leaves
    there (its config, an empty W&B folder) describes nothing that ran. The same holds for the
    ``config.N.yaml`` of a test whose checkpoint did not load.
    """
    while SAVED_CONFIGS:
        config = SAVED_CONFIGS.pop()
        if config.is_file() and not _wrote_after(config.parent, config.stat().st_mtime):
            config.unlink()
    while CREATED_RUN_DIRS:
        run_dir = CREATED_RUN_DIRS.pop()
        if not run_dir.is_dir() or run_checkpoints(run_dir) or (run_dir / "metrics.json").exists():
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in run_dir.parents:  # the folders this start created, if now empty
            if parent not in CREATED_PARENT_DIRS or any(not p.name.startswith(".slurm-") for p in parent.iterdir()):
                break
            shutil.rmtree(parent, ignore_errors=True)


# --- what a run directory may be reused for ------------------------------------------------------
def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def _changes_result(key: str) -> bool:
    return key.rsplit(".", 1)[-1] not in LOADER_KEYS


def check_config_collision(run_dir: Path, config: dict) -> None:
    """Refuse to train a *different* model or data set in an existing run directory.

    ``config`` is the new resolved config as a plain dict. Only what changes the result is
    compared (:data:`IDENTITY_KEYS`, without loader settings such as ``num_workers``): trainer
    options (more epochs, other devices) may change when a run is resumed.
    """
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    old = _flatten({k: saved.get(k) for k in IDENTITY_KEYS})
    new = _flatten({k: config.get(k) for k in IDENTITY_KEYS})
    diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and _changes_result(k))
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:5])
        raise RunDirectoryError(
            f"Config collision: {run_dir} was created with a different config ({shown}"
            f"{'; ...' if len(diff) > 5 else ''}). Start a new run with another --run.version "
            f"(or leave it unset to get the next free one), or resume this run with its own config: "
            f"hepgen fit -c {saved_path} --ckpt_path last"
        )


def resolve_ckpt_path(run_dir: Path, ckpt_path: str | None, subcommand: str) -> str | None:
    """Turn ``last``/``best`` into this run's own files, and guard against silent restarts.

    Lightning alone would look for ``last`` in the logger's folder and, finding nothing, start
    from scratch with a warning; here a missing or truncated checkpoint is an error that names
    the folder (and the newest good checkpoint).
    """
    if ckpt_path in ("last", "best"):
        return str(find_checkpoint(run_dir, ckpt_path))
    if ckpt_path is not None:
        if not Path(ckpt_path).is_file():
            raise CheckpointError(f"--ckpt_path {ckpt_path}: no such checkpoint file.")
        return str(check_whole(Path(ckpt_path)))
    existing = newest_checkpoint(run_dir) if subcommand == "fit" else None
    if existing is not None:
        if slurm_requeued():
            return str(check_whole(existing))  # requeued job: continue where it stopped
        raise RunDirectoryError(
            f"{run_dir} already holds checkpoints; starting again there would overwrite them. "
            f"Resume with --ckpt_path last, or start a new run with another --run.version."
        )
    return None


# --- references to other runs ----------------------------------------------------------------------
RUN_REFERENCE = re.compile(r"run:(?P<experiment>[^@:]+)(?:@(?P<version>[^:]+))?:(?P<which>last|best)")


def resolve_checkpoint(spec: str | Path, root: str | Path = "runs") -> Path:
    """A checkpoint file from a path or a run reference ``run:<experiment>[@<version>|@latest]:<last|best>``.

    ``@latest`` (the default) is the run that ``<experiment>/latest`` points to: the last ``fit``
    of that experiment that finished. Raises :class:`RunDirectoryError` naming the reference when
    nothing matches, and :class:`CheckpointError` for a truncated file.
    """
    text = str(spec)
    match = RUN_REFERENCE.fullmatch(text)
    if match is None:
        if text.startswith("run:"):
            raise RunDirectoryError(f"{text}: not a run reference; write run:<experiment>[@<version>|@latest]:<last|best>.")
        path = Path(text)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {text}: no such file.")
        return check_whole(path)
    experiment_dir = Path(root) / match["experiment"]
    version = match["version"] or "latest"
    run_dir = experiment_dir / version
    if not run_dir.is_dir():
        what = "no finished fit (no 'latest' link)" if version == "latest" else f"no run '{version}'"
        raise RunDirectoryError(f"{text}: experiment {match['experiment']} has {what} in {experiment_dir}. Train it first.")
    return find_checkpoint(run_dir.resolve(), match["which"])


def resolve_run_references(tree: Any, root: str | Path) -> Any:
    """Replace every ``run:...`` string in a config (Namespaces, lists, strings) by the checkpoint path it names.

    The saved config then records the concrete file a run used, so a later ``test`` or a resume
    reads the same model even after the experiment was trained again.
    """
    if isinstance(tree, str) and RUN_REFERENCE.fullmatch(tree):
        return str(resolve_checkpoint(tree, root))
    if isinstance(tree, Namespace):
        for key in tree.keys():  # the leaves, as dotted keys
            tree[key] = resolve_run_references(tree[key], root)
    elif isinstance(tree, list):
        return [resolve_run_references(value, root) for value in tree]
    return tree


def next_free_path(path: Path) -> Path:
    """``path`` if it does not exist, else ``<stem>.1<suffix>``, ``<stem>.2<suffix>``, ... (never overwrite)."""
    candidate, n = Path(path), 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
    return candidate


def _wandb_key_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def use_wandb_offline_without_key() -> bool:
    """Switch W&B to offline mode when no API key is configured and WANDB_MODE is unset.

    Without this, ``WandbLogger`` raises ``UsageError: No API key configured`` at the start of
    ``fit``. Returns True when the switch was made.
    """
    if os.environ.get("WANDB_MODE") or _wandb_key_available():
        return False
    os.environ["WANDB_MODE"] = "offline"
    print("hepgen: no W&B API key found, logging to W&B offline (sync later with `wandb sync <run dir>/wandb`).")
    return True


def _loggers(trainer_cfg: Namespace) -> list[Namespace]:
    logger = trainer_cfg.get("logger")
    items = logger if isinstance(logger, list) else [logger]
    return [x for x in items if isinstance(x, Namespace) and x.get("class_path")]


def place_loggers(trainer_cfg: Namespace, run_dir: Path, experiment: str, version: str) -> None:
    """Point every configured logger into the run directory.

    The W&B run id is derived from the run directory's path, so a resume or a SLURM requeue
    attaches to the same W&B run, while two runs never share one; an ``id`` set in the config
    and a sweep agent's ``WANDB_RUN_ID`` are kept.
    """
    for logger in _loggers(trainer_cfg):
        args = logger.init_args
        name = logger.class_path.rsplit(".", 1)[-1]
        args.save_dir = str(run_dir)
        if name == "WandbLogger":
            use_wandb_offline_without_key()
            args.name = args.get("name") or f"{experiment}/{version}"
            if not (os.environ.get("WANDB_RUN_ID") or args.get("id") or args.get("version")):
                digest = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:8]
                args.id = re.sub(r"[^A-Za-z0-9_-]", "-", f"{experiment}-{version}")[-55:] + f"-{digest}"
        elif name in ("CSVLogger", "TensorBoardLogger"):
            # a new version_<n> per start: CSVLogger would otherwise delete the metrics of the last start
            args.name, args.version = name.removesuffix("Logger").lower(), None


def place_checkpoint_callbacks(trainer_cfg: Namespace, run_dir: Path) -> bool:
    """Give configured ``ModelCheckpoint`` callbacks without ``dirpath`` the run's folder; True if any."""
    callbacks = trainer_cfg.get("callbacks") or []
    found = False
    for cb in callbacks if isinstance(callbacks, list) else [callbacks]:
        if isinstance(cb, Namespace) and cb.get("class_path", "").endswith("ModelCheckpoint"):
            found = True
            if cb.init_args.get("dirpath") is None:
                cb.init_args.dirpath = str(run_dir / "checkpoints")
    return found


class RunConfigSaver(SaveConfigCallback):
    """Save the resolved config of every start in the run directory, and in W&B.

    The first start writes ``config.yaml``; a resume, test or predict in the same folder adds
    ``config.1.yaml``, ``config.2.yaml``, ... so nothing is overwritten and nothing lost.
    Lightning's own callback would write ``config.yaml`` into the logger's folder and refuse
    the second run there. W&B receives the config as nested keys (``model.init_args.latent_dim``),
    so runs can be filtered and grouped by any hyperparameter. Lightning calls this on rank 0 only.
    """

    def save_config(self, trainer, pl_module, stage: str) -> None:
        path = next_free_path(Path(trainer.default_root_dir) / "config.yaml")
        self.parser.save(self.config, path, multifile=False)
        SAVED_CONFIGS.append(path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                nested = yaml.safe_load(self.parser.dump(self.config, skip_link_targets=False))
                logger.experiment.config.update(nested, allow_val_change=True)
