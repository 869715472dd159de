"""The ``hepgen`` command: LightningCLI for ``fit|validate|test|predict``, plus ``hepgen data``.

YAML configs name classes by their short names (``class_path: CaloVAE``); this works because
every plugin package is imported here and class names are unique across them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningCLI

import callbacks
import datamodules
import hepgen.models
from callbacks.reproducibility import RNGStateCheckpoint
from hepgen.run import (
    RunConfigSaver,
    RunSettings,
    check_config_collision,
    place_checkpoint_callbacks,
    place_loggers,
    resolve_ckpt_path,
    resolve_run_dir,
)


def _catalogue() -> str:
    def names(pkg) -> str:
        return ", ".join(sorted(pkg.__all__))

    return (
        f"methods (--model): {names(hepgen.models)}\n"
        f"datamodules (--data): {names(datamodules)}\n"
        f"callbacks (--trainer.callbacks): {names(callbacks)}\n"
        "made data: hepgen data list | hepgen data make NAME --out DIR\n"
        "`hepgen fit --model CLASS --help` (or --data) shows a class's options."
    )


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

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(RunSettings, "run")

    def before_instantiate_classes(self) -> None:
        if self.subcommand is None:
            return
        cfg = self.config[self.subcommand]
        self.run_dir = resolve_run_dir(cfg.run, cfg.get("config"))
        if self.subcommand == "fit":
            dumped = yaml.safe_load(self._parser(self.subcommand).dump(cfg, skip_link_targets=False))
            check_config_collision(self.run_dir, dumped)
        cfg.ckpt_path = resolve_ckpt_path(self.run_dir, cfg.get("ckpt_path"), self.subcommand)
        place_loggers(cfg.trainer, self.run_dir, cfg.run.experiment, str(cfg.run.version))
        self._has_checkpoint_callback = place_checkpoint_callbacks(cfg.trainer, self.run_dir)

    def instantiate_trainer(self, **kwargs):
        if self.subcommand is None:
            return super().instantiate_trainer(**kwargs)
        cfg = self._get(self.config_init, "trainer")
        extra = [RNGStateCheckpoint()]
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
            extra.append(RichProgressBar())
        kwargs.setdefault("default_root_dir", str(self.run_dir))
        kwargs.setdefault("callbacks", configured + extra)
        return super().instantiate_trainer(**kwargs)


def default_checkpoints(dirpath: Path, monitor: str | None, mode: str, every_n_epochs: int) -> list[ModelCheckpoint]:
    """``last.ckpt`` after every ``every_n_epochs`` epochs, and ``best-...ckpt`` by ``monitor``.

    Two callbacks, because Lightning (>= 2.6) writes ``save_last`` only on epochs where the
    monitored checkpoint improved: a GAN whose chi2 stalls would otherwise resume from an old
    epoch. ``last`` is a plain newest-only checkpoint named ``last``.
    """
    callbacks = [
        ModelCheckpoint(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, every_n_epochs=every_n_epochs)
    ]
    if monitor:
        callbacks.append(
            ModelCheckpoint(
                dirpath=dirpath,
                filename="best-{epoch}-{step}",
                monitor=monitor,
                mode=mode,
                save_top_k=1,
                every_n_epochs=every_n_epochs,
            )
        )
    return callbacks


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``hepgen`` console script (also ``python -m hepgen``).

    ``args`` replaces ``sys.argv[1:]`` (tests and notebooks call ``main([...])``).
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["data"]:
        from hepgen.synth.cli import main as data_main

        data_main(argv[1:])
    else:
        HepgenCLI(args=args)


if __name__ == "__main__":
    main()
