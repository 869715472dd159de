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
``version`` to the SLURM job id (``<array job>_<task>`` for arrays) or else the next free ``v<N>``.
The resolved values are written into the saved config, so
``hepgen fit -c runs/.../config.yaml --ckpt_path last`` comes back to the same folder.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from hepgen.errors import HepgenError

#: Set by the launching process so that DDP ranks it starts re-use its run directory.
RUN_DIR_ENV = "HEPGEN_RUN_DIR"
#: The parts of a config that define what is trained; a run directory refuses a change in them.
IDENTITY_KEYS = ("model", "data", "seed_everything")


@dataclass
class RunSettings:
    """Where a run writes (the ``run:`` section of every config).

    Args:
        root: folder that holds all runs.
        experiment: name of the experiment (default: the config file's path below ``experiments/``).
        version: name of this run (default: SLURM job id, else the next free ``v<N>``).
        checkpoint_every_n_epochs: how often ``last.ckpt`` and the best checkpoint are written.
    """

    root: str = "runs"
    experiment: Optional[str] = None
    version: Optional[str] = None
    checkpoint_every_n_epochs: int = 1


class RunDirectoryError(HepgenError, RuntimeError):
    """A run directory cannot be used as asked (config collision, missing checkpoint, ...)."""


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


def slurm_run_id() -> str | None:
    """The SLURM job id that survives a requeue (array jobs: ``<array job id>_<task id>``)."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def reserve_next_version(experiment_dir: Path) -> Path:
    """Create and return ``experiment_dir/v<N>`` for the smallest free N (``mkdir`` is atomic)."""
    experiment_dir.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in experiment_dir.iterdir() if (m := re.fullmatch(r"v(\d+)", p.name))]
    n = max(taken, default=-1) + 1
    while True:
        try:
            (experiment_dir / f"v{n}").mkdir()
            return experiment_dir / f"v{n}"
        except FileExistsError:
            n += 1


def resolve_run_dir(settings: Namespace, config_files: list | None) -> Path:
    """Fill in ``settings.experiment`` and ``settings.version`` and return the (created) run directory."""
    settings.experiment = settings.experiment or experiment_from_config_files(config_files)
    if os.environ.get(RUN_DIR_ENV) and int(os.environ.get("LOCAL_RANK", "0")) > 0:
        # a DDP rank started by Lightning's launcher: the launching process chose the folder
        run_dir = Path(os.environ[RUN_DIR_ENV])
        settings.version = run_dir.name
        return run_dir
    experiment_dir = Path(settings.root) / settings.experiment
    settings.version = settings.version or slurm_run_id()
    if settings.version is None:
        run_dir = reserve_next_version(experiment_dir)
        settings.version = run_dir.name
    else:
        run_dir = experiment_dir / str(settings.version)
        run_dir.mkdir(parents=True, exist_ok=True)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    return run_dir


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def check_config_collision(run_dir: Path, config: dict) -> None:
    """Refuse to train a *different* model or data set in an existing run directory.

    ``config`` is the new resolved config as a plain dict. Only :data:`IDENTITY_KEYS` are compared:
    trainer options (more epochs, other devices) may change when a run is resumed.
    """
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    old = _flatten({k: saved.get(k) for k in IDENTITY_KEYS})
    new = _flatten({k: config.get(k) for k in IDENTITY_KEYS})
    diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:5])
        raise RunDirectoryError(
            f"Config collision: {run_dir} was created with a different config ({shown}"
            f"{'; ...' if len(diff) > 5 else ''}). Start a new run with another --run.version "
            f"(or leave it unset to get the next free one), or resume this run with its own config: "
            f"hepgen fit -c {saved_path} --ckpt_path last"
        )


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The most recent of ``last.ckpt`` and SLURM's ``hpc_ckpt_<n>.ckpt`` in a run directory."""
    candidates = [*run_dir.glob("hpc_ckpt_*.ckpt"), *(run_dir / "checkpoints").glob("last*.ckpt")]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def resolve_ckpt_path(run_dir: Path, ckpt_path: str | None, subcommand: str) -> str | None:
    """Turn ``last``/``best`` into this run's own files, and guard against silent restarts.

    Lightning alone would look for ``last`` in the logger's folder and, finding nothing, start
    from scratch with a warning; here a missing checkpoint is an error that names the folder.
    """
    ckpt_dir = run_dir / "checkpoints"
    if ckpt_path in ("last", "best"):
        found = (
            newest_checkpoint(run_dir)
            if ckpt_path == "last"
            else max(ckpt_dir.glob("best*.ckpt"), key=lambda p: p.stat().st_mtime, default=None)
        )
        if found is None:
            raise RunDirectoryError(
                f"--ckpt_path {ckpt_path}: no {ckpt_path} checkpoint in {ckpt_dir}. Give the run's "
                f"config (hepgen {subcommand} -c <run dir>/config.yaml ...) or a checkpoint file."
            )
        return str(found)
    if ckpt_path is not None:
        if not Path(ckpt_path).is_file():
            raise RunDirectoryError(f"--ckpt_path {ckpt_path}: no such checkpoint file.")
        return ckpt_path
    existing = newest_checkpoint(run_dir) if subcommand == "fit" else None
    if existing is not None:
        if int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0:
            return str(existing)  # requeued job: continue where it stopped
        raise RunDirectoryError(
            f"{run_dir} already holds checkpoints; starting again there would overwrite them. "
            f"Resume with --ckpt_path last, or start a new run with another --run.version."
        )
    return None


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
    attaches to the same W&B run, while two runs never share one (unless a sweep agent chose
    the id through ``WANDB_RUN_ID``).
    """
    for logger in _loggers(trainer_cfg):
        args = logger.init_args
        name = logger.class_path.rsplit(".", 1)[-1]
        args.save_dir = str(run_dir)
        if name == "WandbLogger":
            use_wandb_offline_without_key()
            args.name = args.get("name") or f"{experiment}/{version}"
            if not os.environ.get("WANDB_RUN_ID"):
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
    the second run there.
    """

    def save_config(self, trainer, pl_module, stage: str) -> None:
        path = next_free_path(Path(trainer.default_root_dir) / "config.yaml")
        self.parser.save(self.config, path, multifile=False)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update({"cli_config": self.parser.dump(self.config)}, allow_val_change=True)


def resolve_checkpoint(spec: str | Path, root: str | Path = "runs") -> Path:
    """A checkpoint file from a path or a run reference ``run:<experiment>[@<version>|@latest]:<last|best>``.

    Raises :class:`RunDirectoryError` naming the reference when nothing matches.
    """
    path = Path(spec)
    if not path.is_file():
        raise RunDirectoryError(f"checkpoint {spec}: no such file.")
    return path
