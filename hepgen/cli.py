"""The ``hepgen`` command: LightningCLI for ``fit|validate|test|predict`` and ``export``, plus ``hepgen data``.

YAML configs name classes by their short names (``class_path: CaloVAE``); this works because
every plugin package is imported here and class names are unique across them.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Literal

import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

import callbacks
import datamodules
import hepgen.models
from callbacks.reproducibility import RNGStateCheckpoint
from callbacks.requeue import SlurmRequeue
from callbacks.sweep import SweepTrial
from hepgen.checkpoints import check_matches
from hepgen.errors import CheckpointError, ConfigValueError, HepgenError
from hepgen.run_lock import RunLock, release_run_locks
from hepgen.sweep import TRIAL_ENV
from hepgen.run import (
    CREATED_PARENT_DIRS,
    CREATED_RUN_DIRS,
    SAVED_CONFIGS,
    RunConfigSaver,
    RunSettings,
    check_config_collision,
    place_checkpoint_callbacks,
    launch_rank,
    place_loggers,
    remove_unused_run_dirs,
    resolve_ckpt_path,
    resolve_run_dir,
    resolve_run_references,
    slurm_requeued,
    update_latest_link,
    withdraw_run_dirs,
)


def _choices(pkg) -> str:
    """Class names a YAML may choose from a plugin package; bases that others extend are not choices."""
    classes = [getattr(pkg, name) for name in pkg.__all__]
    bases = {base for cls in classes for base in cls.__mro__[1:]}
    return ", ".join(sorted(cls.__name__ for cls in classes if cls not in bases))


def _catalogue() -> str:
    return (
        f"methods (--model): {_choices(hepgen.models)}\n"
        f"datamodules (--data): {_choices(datamodules)}\n"
        f"callbacks (--trainer.callbacks): {_choices(callbacks)}\n"
        "`hepgen fit --model CLASS --help` (or --data) shows a class's options.\n"
        "Errors print one line; --debug (or HEPGEN_DEBUG=1) shows the traceback."
    )


#: Loggers whose required ``save_dir`` hepgen fills in with the run directory after parsing.
_LOGGERS_PLACED_BY_HEPGEN = ("CSVLogger", "TensorBoardLogger")


def _with_logger_placeholders(argv: list[str]) -> list[str]:
    """Let ``--trainer.logger CSVLogger`` parse: give it the ``save_dir`` that hepgen replaces anyway."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg.startswith("--trainer.logger="):
            value = arg.split("=", 1)[1]
        elif i > 0 and argv[i - 1] == "--trainer.logger":
            value = arg
        else:
            continue
        if value.rsplit(".", 1)[-1] in _LOGGERS_PLACED_BY_HEPGEN:
            out += ["--trainer.logger.init_args.save_dir", "runs"]
    return out


class HepgenArgumentParser(LightningArgumentParser):
    """The parser of ``hepgen``: a bad option is one line naming it and its closest valid names."""

    def error(self, message: str, ex: Exception | None = None):
        if debug_requested() or not self.exit_on_error:  # nested parsers raise to their caller
            super().error(message, ex)
        print(f"hepgen: error: {self._short(message)}", file=sys.stderr)
        sys.exit(2)

    def _options(self) -> list[str]:
        parsers = [self, *getattr(getattr(self, "_subcommands_action", None), "_name_parser_map", {}).values()]
        return sorted({o for p in parsers for o in getattr(p, "_option_string_actions", {}) if o.startswith("--")})

    def _short(self, message: str) -> str:
        unknown = re.search(r"[Uu]nrecognized arguments: (.*)", message)
        if unknown:
            options = [a.split("=")[0] for a in unknown.group(1).split() if a.startswith("--")] or [unknown.group(1)]
            close = difflib.get_close_matches(options[0], self._options(), n=3, cutoff=0.6)
            hint = f"; closest: {', '.join(close)}" if close else ""
            return f"unknown option {options[0]}{hint} (see --help)"
        not_accepted = re.search(r'Parser key "([\w.]+)".*?class_path \'([\w.]+)\'.*?Option \'(\w+)\' is not accepted', message, re.S)
        if not_accepted:
            key, class_path, option = not_accepted.groups()
            names = _init_arg_names(class_path)
            close = difflib.get_close_matches(option, names, n=3, cutoff=0.6)
            hint = f"; closest: {', '.join(close)}" if close else f"; it takes: {', '.join(names)}"
            cls = class_path.rsplit(".", 1)[-1]
            return f"unknown option --{key}.init_args.{option} for {cls}{hint} (hepgen fit --{key} {cls} --help)"
        bad_value = re.match(r'Parser key "([\w.]+)":\s*(.*)', message, re.S)
        if bad_value:
            key, detail = bad_value.groups()
            expected = re.findall(r"Expected a <class '(\w+)'>", detail)
            given = re.search(r"Given value: (.*)", detail)
            if expected and given:
                return f"--{key}: {given.group(1).strip()!r} is not valid (expected {' or '.join(expected)})"
            return f"--{key}: {detail.strip().splitlines()[0]}"
        return " ".join(message.split())[:500]


def _init_arg_names(class_path: str) -> list[str]:
    """The ``__init__`` arguments of a class and of its bases that it passes ``**kwargs`` to."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    names: list[str] = []
    for klass in cls.__mro__:
        params = inspect.signature(klass.__init__).parameters.values() if "__init__" in vars(klass) else []
        names += [p.name for p in params if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind is p.VAR_KEYWORD for p in params) and "__init__" in vars(klass):
            break
    return sorted(set(names))


def debug_requested() -> bool:
    """``--debug`` on the command line or ``HEPGEN_DEBUG=1``: show tracebacks and jsonargparse's full messages."""
    return os.environ.get("HEPGEN_DEBUG", "") not in ("", "0")


class HepgenCLI(LightningCLI):
    """LightningCLI with hepgen's run directories, checkpoints and W&B conventions (see hepgen.run)."""

    def __init__(self, args=None, run: bool = True) -> None:
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunConfigSaver,
            save_config_kwargs={"save_to_log_dir": False},
            parser_class=HepgenArgumentParser,
            auto_configure_optimizers=False,  # methods with several optimizers configure their own
            seed_everything_default=0,
            parser_kwargs={
                "description": "hepgen: generative models for HEP and NP on PyTorch Lightning.",
                "epilog": _catalogue(),
                "formatter_class": argparse.RawDescriptionHelpFormatter,
            },
            args=args,
            run=run,
        )

    def _add_subcommands(self, parser, **kwargs) -> None:
        super()._add_subcommands(parser, **kwargs)
        # `hepgen data` and `hepgen ad` are dispatched before LightningCLI parses (see main); listed here for --help
        data = ArgumentParser(description="Make data in the real published formats.")
        parser._subcommands_action.add_subcommand(
            "data", data, help="Make data in the real formats: hepgen data list | hepgen data make NAME --out DIR."
        )
        # `hepgen export`: a run's config and checkpoint, as test and predict take them, and no Trainer method
        export = self.init_parser(description=_short_doc(HepgenCLI.export))
        self._add_arguments(export)
        self._subcommand_method_arguments["export"] = export.add_method_arguments(HepgenCLI, "export")
        self._subcommand_parsers["export"] = export
        parser._subcommands_action.add_subcommand("export", export, help=_short_doc(HepgenCLI.export))
        sweep = ArgumentParser(description="W&B sweeps with a local controller (offline nodes, tests).")
        parser._subcommands_action.add_subcommand(
            "sweep", sweep, help="W&B sweep agents without the server: hepgen sweep agent experiments/sweeps/<method>.yaml."
        )
        study = ArgumentParser(description="Weak-supervision anomaly-detection studies.")
        parser._subcommands_action.add_subcommand(
            "ad", study, help="Anomaly-detection studies: hepgen ad run|report -c experiments/ad/study_*.yaml."
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(RunSettings, "run")
        # values a model must match to its data come from the datamodule, never set twice by hand
        parser.link_arguments("data", "model.init_args.num_particles", compute_fn=_num_particles, apply_on="instantiate")
        parser.link_arguments("data", "model.init_args.data_size", compute_fn=_series_channels, apply_on="instantiate")
        parser.link_arguments("data", "model.init_args.t_size", compute_fn=_series_length, apply_on="instantiate")
        parser.link_arguments("data", "model.init_args.layer_shapes", compute_fn=_layer_shapes, apply_on="instantiate")
        parser.link_arguments("data", "model.init_args.n_features", compute_fn=_n_features, apply_on="instantiate")
        parser.link_arguments("data", "model.init_args.n_context", compute_fn=_n_context, apply_on="instantiate")
        parser.link_arguments("data", "model.init_args.image_shape", compute_fn=_image_shape, apply_on="instantiate")
        parser.link_arguments("data", "model.init_args.domain_channels", compute_fn=_domain_channels, apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        # Lightning would merge a checkpoint file's saved model arguments into the config. In
        # hepgen the configuration (the run's config.yaml) is the one source of truth, as it is
        # for --ckpt_path last|best; and the saved arguments hold every method's link targets
        # (t_size, layer_shapes, ...), which a method that does not take them fails to parse.
        return

    def before_instantiate_classes(self) -> None:
        if self.subcommand is None:
            return
        cfg = self.config[self.subcommand]
        if cfg.run.threads is not None:
            if cfg.run.threads < 1:
                raise ConfigValueError(f"--run.threads {cfg.run.threads}: give at least 1 thread.")
            torch.set_num_threads(cfg.run.threads)
        ckpt_path = cfg.get("ckpt_path")
        if self.subcommand == "export" and ckpt_path is None:
            raise ConfigValueError(
                "hepgen export needs --ckpt_path: best or last (of the run the config names, or the newest run "
                "of its experiment) or a checkpoint file."
            )
        self.run_dir = resolve_run_dir(cfg.run, cfg.get("config"), self.subcommand, ckpt_path)
        resolve_run_references(cfg.model, cfg.run.root)  # run:<experiment>@latest:last -> a file
        if self.subcommand == "fit":
            dumped = yaml.safe_load(self._parser(self.subcommand).dump(cfg))
            check_config_collision(self.run_dir, dumped)
            if _chooses_run_dir():
                RunLock(self.run_dir, wait_s=300.0 if slurm_requeued() else 0.0).acquire()
        elif ckpt_path is None:
            rank_zero_warn(
                f"hepgen {self.subcommand} without --ckpt_path evaluates an untrained model: its output is noise. "
                "Pass --ckpt_path best or last (the newest run of this experiment) or a checkpoint file."
            )
        cfg.ckpt_path = resolve_ckpt_path(self.run_dir, ckpt_path, self.subcommand)
        if self.subcommand == "export":
            cfg.trainer.logger = False  # nothing is trained or evaluated: no W&B run
        place_loggers(cfg.trainer, self.run_dir, cfg.run.experiment, str(cfg.run.version))
        self._has_checkpoint_callback = place_checkpoint_callbacks(cfg.trainer, self.run_dir)

    def _run_subcommand(self, subcommand: str) -> None:
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if ckpt_path is not None:
            check_matches(self.model, ckpt_path)
        if subcommand == "export":
            args = self.config_init[subcommand]
            self.export(**{k: args[k] for k in self._subcommand_method_arguments[subcommand]})
            return
        super()._run_subcommand(subcommand)
        trainer = self.trainer
        if subcommand == "fit" and trainer.is_global_zero and not trainer.interrupted and not trainer.fast_dev_run:
            # run:<experiment>@latest now means this run; a fast_dev_run saves no checkpoint to point at
            update_latest_link(self.run_dir)

    def export(
        self,
        ckpt_path: str | None = None,
        format: Literal["onnx"] = "onnx",
        precision: Literal["float64", "float32"] = "float64",
        out: Path | None = None,
    ) -> None:
        """Write a trained model's generators as ONNX graphs, with a JSON sidecar each.

        Args:
            ckpt_path: best, last or a checkpoint file (required).
            format: the file format (ONNX).
            precision: what the graphs compute in; float64 reproduces torch to rounding in ONNX
                Runtime, float32 is about twice as fast there (hepgen.export).
            out: a new folder for the files (default ``<run dir>/export/<checkpoint name>``).
        """
        from hepgen.export import check_exportable, checkpoint_source, export_onnx

        check_exportable(self.model)
        if out is None:
            if self.run_dir in CREATED_RUN_DIRS:  # a checkpoint from outside any run of this experiment
                raise ConfigValueError(
                    f"--ckpt_path {ckpt_path} is not in a run directory: say where to write, --out DIR."
                )
            out = self.run_dir / "export" / Path(ckpt_path).stem
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        self.model.on_load_checkpoint(checkpoint)
        self.model.load_state_dict(checkpoint["state_dict"])
        source = checkpoint_source(Path(ckpt_path), checkpoint, self.run_dir, self.config.get("config"))
        files = export_onnx(self.model, Path(out), precision, source)
        if not Path(out).resolve().is_relative_to(self.run_dir.resolve()):
            remove_unused_run_dirs()  # the run folder chosen for a checkpoint from elsewhere stays empty
        print(f"hepgen: exported {', '.join(f.name for f in files)} (each with a .json sidecar) to {out}")

    def instantiate_trainer(self, **kwargs):
        if self.subcommand is None:
            return super().instantiate_trainer(**kwargs)
        cfg = self._get(self.config_init, "trainer")
        extra = [RNGStateCheckpoint(), SlurmRequeue()]  # the second acts only in a SLURM job
        if self.subcommand == "fit" and os.environ.get(TRIAL_ENV):  # a trial of `hepgen sweep agent`
            extra.append(SweepTrial())
        if not self._has_checkpoint_callback:
            extra += default_checkpoints(
                self.run_dir / "checkpoints",
                monitor=getattr(self.model, "monitor", None),
                mode=getattr(self.model, "monitor_mode", "min"),
                every_n_epochs=self._get(self.config, "run").checkpoint_every_n_epochs,
            )
        configured = list(cfg.get("callbacks") or [])
        if cfg.get("enable_progress_bar", True) is not False and not any(
            isinstance(c, ProgressBar) for c in configured
        ):
            # a plain bar redrawn every 10 steps: Rich's redraw thread (and W&B recording each
            # redraw) cost about 5 ms per step, a third of a CaloVAE step on 2 CPU cores
            extra.append(TQDMProgressBar(refresh_rate=10))
        kwargs.setdefault("default_root_dir", str(self.run_dir))
        if cfg.get("strategy", "auto") == "auto" and _processes(cfg) > 1 and hasattr(self.model, "ddp_strategy"):
            kwargs.setdefault("strategy", self.model.ddp_strategy)  # a GAN's (AdversarialModule.ddp_strategy)
        kwargs.setdefault("callbacks", configured + extra)
        return super().instantiate_trainer(**kwargs)


def _short_doc(fn) -> str:
    return inspect.getdoc(fn).split("\n")[0]


def default_checkpoints(dirpath: Path, monitor: str | None, mode: str, every_n_epochs: int) -> list[ModelCheckpoint]:
    """``last.ckpt`` after every ``every_n_epochs`` epochs, and ``best-...ckpt`` by ``monitor``.

    Two callbacks, because Lightning (>= 2.6) writes ``save_last`` only on epochs where the
    monitored checkpoint improved: a GAN whose chi2 stalls would otherwise resume from an old
    epoch. ``last`` is a plain newest-only checkpoint named ``last``, written at the end of the
    training epoch, after every callback's ``on_train_epoch_end``: left to itself Lightning
    writes it at validation end when ``check_val_every_n_epoch > 1``, so it would skip the
    epochs without validation and miss the epoch-end records of the ones with it.
    """
    last = ModelCheckpoint(
        dirpath=dirpath,
        filename="last",
        monitor=None,
        save_top_k=1,
        every_n_epochs=every_n_epochs,
        save_on_train_epoch_end=True,
    )
    if not monitor:
        return [last]
    best = ModelCheckpoint(
        dirpath=dirpath,
        filename="best-{epoch}-{step}",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        every_n_epochs=every_n_epochs,
    )
    # `best` before `last`: both save in on_train_epoch_end, in list order, and `last.ckpt` holds
    # `best`'s state. Written first, `last` would record the previous epoch's best; a resume would
    # then compare against that older score and never delete the epoch's own best file, and
    # `--ckpt_path best` (the newest best-*.ckpt) could pick a worse model.
    return [best, last]


def _num_particles(data) -> int:
    """Particle species of a datamodule (1 for data families without species)."""
    return getattr(data, "num_particles", 1)


def _series_channels(data) -> int | None:
    """Channels C of a time-series datamodule (``None`` for other data; only time-series models link it)."""
    return getattr(data, "channels", None)


def _n_features(data) -> int | None:
    """Inputs F per event of a tabular datamodule (``None`` for other data; classifiers link it)."""
    return getattr(data, "n_features", None)


def _n_context(data) -> int | None:
    """Context columns C per event of a tabular datamodule (``None`` for other data; conditional flows link it)."""
    return getattr(data, "n_context", None)


def _image_shape(data) -> list[int] | None:
    """(H, W) of an image datamodule (``None`` for other data; the decomposition GAN links it)."""
    shape = getattr(data, "image_shape", None)
    return None if shape is None else list(shape)


def _domain_channels(data) -> list[int] | None:
    """Channels of the background, signal and mixture images (``None`` for other data)."""
    channels = getattr(data, "domain_channels", None)
    return None if channels is None else list(channels)


def _series_length(data) -> int | None:
    """Observations T per path of a time-series datamodule (``None`` for other data)."""
    return getattr(data, "t_size", None)


def _layer_shapes(data) -> dict[str, list[int]] | None:
    """``{key: cell-array shape}`` of a calorimeter datamodule's layers (``None`` for other data)."""
    shapes = getattr(data, "layer_shapes", None)
    return None if shapes is None else {k: list(v) for k, v in shapes.items()}


def _processes(trainer_cfg) -> int:
    """How many training processes a Trainer config asks for (devices per node times nodes)."""
    devices = trainer_cfg.get("devices", "auto")
    if isinstance(devices, (list, tuple)):
        per_node = len(devices)
    elif str(devices) in ("auto", "-1"):  # every GPU of the node, if it trains on GPUs
        on_gpu = str(trainer_cfg.get("accelerator", "auto")) in ("auto", "gpu", "cuda")
        per_node = torch.cuda.device_count() if on_gpu and torch.cuda.is_available() else 1
    else:
        per_node = int(devices) if str(devices).isdigit() else 1
    return per_node * int(trainer_cfg.get("num_nodes", 1) or 1)


def _chooses_run_dir() -> bool:
    """True in the process that chose the run directory (not in ranks that were handed it)."""
    return launch_rank() == 0 and int(os.environ.get("LOCAL_RANK", "0")) == 0


def _wrapped_hepgen_error(error: BaseException) -> HepgenError | None:
    """``error`` itself or the hepgen error behind it: jsonargparse re-raises what a class raises
    while it is instantiated (a datamodule that reads its file's header) as a long "does not
    validate" error."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, HepgenError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _checkpoint_mismatch(error: BaseException, argv: list[str]) -> CheckpointError | None:
    """One line for torch's many-line refusal of a checkpoint whose weights do not fit the model the
    config builds (other model options, or a hepgen whose networks have changed since)."""
    text = str(error)
    if not isinstance(error, RuntimeError) or "Error(s) in loading state_dict" not in text:
        return None
    missing, unexpected = (
        sum(len(re.findall(r'"([^"]+)"', part)) for part in re.findall(rf"{what} key\(s\) in state_dict: (.*)", text))
        for what in ("Missing", "Unexpected")
    )
    reshaped = len(re.findall(r"size mismatch for ", text))
    names = re.findall(r'"([^"]+)"|size mismatch for ([^:]+):', text)
    first = ", ".join(a or b for a, b in names[:3])
    given = [b for a, b in zip(argv, argv[1:]) if a == "--ckpt_path"]
    given += [a.split("=", 1)[1] for a in argv if a.startswith("--ckpt_path=")]
    ckpt = given[-1] if given else "the checkpoint"
    summary = f"{missing} missing, {unexpected} unexpected and {reshaped} reshaped weights"
    return CheckpointError(
        f"--ckpt_path {ckpt}: its weights do not fit the model this config builds ({summary}, "
        f"e.g. {first}). It was written with other model options or by an older hepgen: evaluate it "
        "with the config.yaml saved in its run directory, with the hepgen version that trained it, or train anew."
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``hepgen`` console script (also ``python -m hepgen``).

    ``args`` replaces ``sys.argv[1:]`` (tests and notebooks call ``main([...])``). hepgen's own
    errors (:class:`hepgen.errors.HepgenError`) print one line and exit with status 2; a start
    that fails before training removes the run directory it created.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if "--debug" in argv:
        argv.remove("--debug")
        os.environ["HEPGEN_DEBUG"] = "1"
    if argv[:1] in (["data"], ["ad"], ["sweep"]):
        if argv[0] == "data":
            from hepgen.synth.cli import main as tool_main
        elif argv[0] == "ad":  # a weak-supervision study: many trainings, each through this main()
            from hepgen.study import main as tool_main
        else:  # a W&B sweep's agent with a local controller: trials as hepgen fit processes
            from hepgen.sweep import main as tool_main

        try:
            return tool_main(argv[1:])
        except (HepgenError, FileExistsError, ValueError) as error:  # a refused file, a bad option value
            if debug_requested():
                raise
            print(f"hepgen: error: {error}", file=sys.stderr)
            sys.exit(2)
    argv = _with_logger_placeholders(argv)
    if args is None:
        sys.argv[1:] = argv  # LightningCLI warns when given args besides a command line
    try:
        HepgenCLI(args=None if args is None else argv)
    except BaseException as error:
        remove_unused_run_dirs()
        cause = _wrapped_hepgen_error(error) or _checkpoint_mismatch(error, argv)
        if cause is None or debug_requested():
            raise
        print(f"hepgen: error: {cause}", file=sys.stderr)
        sys.exit(2)
    finally:
        release_run_locks()
        withdraw_run_dirs()
        CREATED_RUN_DIRS.clear()
        CREATED_PARENT_DIRS.clear()
        SAVED_CONFIGS.clear()
        # WandbLogger reuses a W&B run left open in the process: a second command in the same
        # Python (a notebook, a test session) would log into the first run's folder
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            wandb.finish()


if __name__ == "__main__":
    main()
