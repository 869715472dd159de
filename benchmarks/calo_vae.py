"""Benchmark of CaloVAE on CPU (generation also on a GPU): generation, Trainer overhead, peak memory.

    python benchmarks/calo_vae.py             # full run: about 2 min on a quiet 2-core machine
    python benchmarks/calo_vae.py --quick     # about 1 min: fewer events, pairs and repeats
    python benchmarks/calo_vae.py --diagnose  # adds the variants that locate the overhead
    python benchmarks/calo_vae.py --generation-only --device cuda   # generation alone, on a GPU
    (on a busy shared machine it runs one torch thread and takes 4 to 5 min)

The model and data sizes follow ``experiments/calo_vae/quickstart.yaml`` (model init_args,
batch size, seed, ``trainer.logger`` and ``log_every_n_steps``, and by default the number of
training events of its split). Training data are made in memory with
:func:`hepgen.synth.calogan.simulate_showers`.

1. Generation: showers/s of ``CaloVAE.generate`` at batch 10,000 (warm-up, then mean ± std over
   repeats) and ms/shower at batch 1, 100 and 10,000 (the CaloChallenge timing protocol);
   ``--generation-only`` on a CPU also times ``CompiledShowerGenerator`` (its first calls compile).
2. Trainer overhead, as the MEDIAN OF INTERLEAVED PAIRS. One Trainer variant and a plain PyTorch
   loop (same model class and initial weights, same DataLoader construction as hepgen's
   datamodules, same optimizer from ``configure_optimizers``, same loss as
   ``CaloVAE.training_step`` with beta of the KL schedule at each step) run in one process, in
   turn: after a warm-up of both, plain block 1, Trainer block 1, plain block 2, Trainer block 2,
   ... each block ``--block`` optimizer steps over the *same* batches for both. The Trainer is
   paused inside ``fit`` (a callback runs the plain block from ``on_train_batch_start``), so
   neither side is restarted and a load change on a shared machine hits both sides of a pair
   alike. Each block is timed from the start of its first step to the start of the step after
   its last (data fetch, hooks, epoch ends and checkpoint writes included). The global torch RNG
   state is swapped at each switch, so both loops draw the same noise: their losses agree bit
   for bit at every step (checked).
   Per pair the ratio Trainer/plain is taken. Printed: the median with a distribution-free 95 %
   confidence interval (the goal is called met or not met only when the interval lies on one
   side of it, else "undecided"), the interquartile range and min-max; the ratio of the summed
   times (it counts the rare costly blocks, e.g. a checkpoint write at an epoch end, that the
   median leaves out); and the median ratio of CPU times (this process's threads and its child
   processes), which waiting for a core does not stretch.
   Variants (``--variants``):
     bare      lightning.Trainer without logger, progress bar, checkpointing, model summary;
     hepgen    the Trainer ``hepgen fit`` builds: built by ``hepgen.cli.HepgenCLI`` itself from the
               config (its logger, e.g. WandbLogger offline; log_every_n_steps; progress bar;
               last/best ModelCheckpoint; RNGStateCheckpoint; RunConfigSaver). The config's
               method callbacks (metrics, writers) are left out: they act at validation and test;
     proposed  ``hepgen`` with the progress bar that this benchmark recommends for hepgen/cli.py
               (PROPOSED_BAR below), given in the config as ``hepgen fit`` users would;
     rich:R, tqdm:N, no-bar, no-logger, csv, wandb-console-off: diagnostics (see VARIANT_HELP).
   Progress bars draw as on a terminal (rich ``force_terminal``) into /dev/null, so their cost is
   measured whether or not this script's output is a terminal (the terminal program's own
   drawing, in another process, is not counted); W&B captures what they write, as in a real run.
   For each variant the extra cost per step is located: wall time inside each callback's and
   logger's hooks, CPU time of the main thread (and the part of it in garbage collections), of
   the other threads by owner (rich's redraw thread, W&B's threads, torch's pool) and of child
   processes (the W&B service).
3. Memory: process peak RSS (``ru_maxrss``) after training and the size of the training data.

Run it on an otherwise idle machine. On a busy one (load above half the cores at start) it uses
one torch thread unless ``--threads`` says otherwise: several threads wait for each other whenever
another process takes a core, and steps become many times slower. The pairs keep the ratio
meaningful under load (with a wider interval); the absolute times are not. Compact markdown
tables for the README are printed at the end, with the machine (CPU model, cores, torch and
lightning versions, threads) and the load.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import io
import logging
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `datamodules` is a top-level package of the repository

import lightning  # noqa: E402
from lightning.pytorch import Callback, Trainer  # noqa: E402
from lightning.pytorch.callbacks import RichProgressBar  # noqa: E402

from datamodules.base import ArrayDictDataset, HepDataModule  # noqa: E402
from hepgen.memory import keep_freed_memory  # noqa: E402
from hepgen.models.calo_vae import CaloVAE, CompiledShowerGenerator  # noqa: E402
from hepgen.models.kl_schedule import kl_weight  # noqa: E402
from hepgen.physics.calo_geometry import LAYER_KEYS  # noqa: E402
from hepgen.synth.calogan import simulate_showers  # noqa: E402

DEFAULT_CONFIG = REPO / "experiments" / "calo_vae" / "quickstart.yaml"
GOAL_SHOWERS_PER_S = 100_000  # the CaloVAE-fidelity issue's bar, batch 10,000 on 2 CPU cores
GOAL_TRAINER_RATIO = 1.05
GEN_BATCH = 10_000
#: Batch sizes of the CaloChallenge timing protocol and how many generate() calls one repeat makes.
PROTOCOL_CALLS = {1: 200, 100: 20, GEN_BATCH: 1}


# ------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def machine_busy(load: tuple[float, float, float] | None, cores: int) -> bool:
    """Other work (the benchmark has not started) keeps more than half of the cores busy."""
    return bool(load) and load[0] > 0.5 * cores


def choose_threads(asked: int | None, cores: int, load: tuple[float, float, float] | None) -> tuple[int, str]:
    """torch intra-op threads and why: as asked; else all usable cores, or 1 on a busy machine.

    With several threads every operator waits for its slowest thread, so each time another
    process takes a core the whole step waits (on a 2-core machine at load 4 a CaloVAE step took
    340 ms with 2 threads against 50 ms with 1); one thread keeps the run short and the pairs fair.
    """
    if asked:
        note = "; the machine is busy, --threads 1 would be faster" if asked > 1 and machine_busy(load, cores) else ""
        return asked, "--threads" + note
    if cores > 1 and machine_busy(load, cores):
        busy = f"load {load[0]:.1f} on {cores} cores"
        return 1, f"1, not {cores}: the machine is busy at start ({busy}); --threads to force"
    return cores, "the usable cores"


def format_load(load: tuple[float, float, float] | None) -> str:
    return "n/a" if load is None else "/".join(f"{x:.2f}" for x in load)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0), so ru_maxrss then covers what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**10
    except OSError:
        pass
    return float("nan")


# ------------------------------------------------------------------------------- config
def _resolve_class(path: str):
    if "." not in path:  # hepgen configs name their classes by short names
        import hepgen.models

        return getattr(hepgen.models, path)
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _factory(spec):
    """``{class_path, init_args}`` of an optimizer / scheduler -> a callable taking its first argument."""
    if isinstance(spec, dict) and "class_path" in spec:
        return functools.partial(_resolve_class(spec["class_path"]), **(spec.get("init_args") or {}))
    if isinstance(spec, str):
        return _resolve_class(spec)
    return spec


def load_config(path: Path) -> dict:
    cfg = yaml.safe_load(path.read_text())
    model = cfg["model"]
    cls = _resolve_class(model["class_path"])
    if cls is not CaloVAE:
        raise SystemExit(f"{path}: model is {model['class_path']}, this benchmark is for CaloVAE.")
    init_args = dict(model.get("init_args") or {})
    for key in ("optimizer", "lr_scheduler"):
        if key in init_args:
            init_args[key] = _factory(init_args[key])
    data = (cfg.get("data") or {}).get("init_args") or {}
    made = int(data.get("made_events", 10_000))
    train_fraction = 1.0 - float(data.get("val_fraction", 0.1)) - float(data.get("test_fraction", 0.1))
    return {
        "model_args": init_args,
        "batch_size": int(data.get("batch_size", 256)),
        "train_events": int(round(made * train_fraction)),
        "particles": list(data.get("particles", ["eplus"])),
        "seed": int(cfg.get("seed_everything", 0) or 0),
        "log_every_n_steps": int((cfg.get("trainer") or {}).get("log_every_n_steps", 50)),
        "raw": cfg,  # for hepgen.cli.HepgenCLI, which builds the `hepgen` variants from it
    }


# ------------------------------------------------------------------------------- data and model
def make_training_data(n_events: int, particle: str, seed: int) -> dict[str, torch.Tensor]:
    """Made CaloGAN showers in memory, as CaloGANDataModule.load_events returns them."""
    arrays = simulate_showers(n_events, particle=particle, seed=seed)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    tensors["particle"] = torch.zeros(n_events, dtype=torch.int64)
    return tensors


def train_loader(dataset: ArrayDictDataset, batch_size: int) -> torch.utils.data.DataLoader:
    """The training DataLoader exactly as hepgen's datamodules build it (HepDataModule._loader)."""
    dm = HepDataModule(batch_size=batch_size, num_workers=0)
    dm.datasets = {"train": dataset}
    return dm.train_dataloader()


class Models:
    """Fresh CaloVAEs with identical initial weights and representation statistics."""

    def __init__(self, model_cls: type[CaloVAE], model_args: dict, tensors: dict[str, torch.Tensor], seed: int):
        torch.manual_seed(seed)
        model = model_cls(**model_args)
        # Fitted once, as CaloVAE.on_fit_start does, and then part of the weights for every run.
        model.representation.fit([tensors[k].flatten(1) for k in LAYER_KEYS], tensors["energy"])
        self.model_cls, self.model_args = model_cls, model_args
        self.state = {k: v.clone() for k, v in model.state_dict().items()}

    def new(self, model_cls: type[CaloVAE] | None = None) -> CaloVAE:
        model = (model_cls or self.model_cls)(**self.model_args)
        model.load_state_dict(self.state)
        return model


def set_sampler_epoch(loader: torch.utils.data.DataLoader, epoch: int) -> None:
    """What Lightning does at the start of every epoch (hepgen's EpochShuffleSampler reshuffles on it)."""
    samplers = {id(s): s for s in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)) if s is not None}
    for sampler in samplers.values():
        if callable(getattr(sampler, "set_epoch", None)):
            sampler.set_epoch(epoch)


# ------------------------------------------------------------------------------- CPU accounting
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
MAIN, NATIVE, CHILDREN = "main thread", "native threads (torch intra-op)", "child processes (W&B service)"
#: Not CPU of its own: wall time of Python's garbage collections, which the main thread's CPU includes.
GC = "of which GC pauses"


class GcClock:
    """Seconds spent in Python's garbage collector so far (through ``gc.callbacks``).

    A collection's cost grows with the number of live Python objects (W&B, LightningCLI's parsers
    and the loaded modules add hundreds of thousands) and the Trainer allocates more of them per
    step than the plain loop; measured here so that this suspect is ruled in or out (so far out:
    below 0.2 % of a step).
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._t0


GC_CLOCK = GcClock()


def _proc_stat(path: Path) -> tuple[int, float]:
    """(parent pid, CPU seconds user + system) from a /proc/<pid>[/task/<tid>]/stat file (10 ms ticks)."""
    text = path.read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the command name in parentheses may hold spaces
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _task_cpu_s(task: Path) -> float:
    """CPU seconds of one thread: nanoseconds from schedstat where the kernel keeps them, else stat ticks."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((task / "schedstat").read_text().split()[0]) / 1e9
    return _proc_stat(task / "stat")[1]


def _descendants_cpu_s() -> float:
    """CPU seconds of all processes descended from this one (W&B runs its service as a child)."""
    procs: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                procs[int(entry.name)] = _proc_stat(entry / "stat")
    children = defaultdict(list)
    for pid, (ppid, _) in procs.items():
        children[ppid].append(pid)
    total, todo = 0.0, list(children[os.getpid()])
    while todo:
        pid = todo.pop()
        total += procs[pid][1]
        todo += children[pid]
    return total


#: Labels of the background threads by the package whose code they run.
THREAD_LABELS = {
    "lightning": "rich bar redraw thread",  # RichProgressBar's _RefreshThread
    "wandb": "W&B threads",
    "hepgen": "hepgen threads (run lock)",
}


def _thread_label(thread: threading.Thread) -> str:
    target = getattr(thread, "_target", None)  # plain threading.Thread(target=...) runs another package's code
    package = (getattr(target, "__module__", None) or type(thread).__module__).split(".")[0]
    return THREAD_LABELS.get(package, f"{package} threads")


def cpu_snapshot() -> dict[str, float]:
    """CPU seconds used so far, by where: the main thread, other Python threads by the package whose
    code they run (THREAD_LABELS), threads started outside Python (torch's intra-op pool), and
    child processes (the W&B service). Linux only (``/proc``); elsewhere just the main thread."""
    snap: dict[str, float] = defaultdict(float)
    snap[MAIN] = time.thread_time()
    snap[GC] = GC_CLOCK.seconds
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return snap
    python_threads = {t.native_id: _thread_label(t) for t in threading.enumerate() if t is not threading.main_thread()}
    main_id = threading.main_thread().native_id
    for task in tasks.iterdir():
        tid = int(task.name)
        if tid != main_id:
            with contextlib.suppress(OSError, ValueError, IndexError):
                snap[python_threads.get(tid, NATIVE)] += _task_cpu_s(task)
    snap[CHILDREN] = _descendants_cpu_s()
    return snap


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(before) | set(after)}


class HookTimer:
    """Wall time spent inside each callback's ``on_*`` hooks and each logger's methods, while ``on``.

    Nested calls (a logger's ``after_save_checkpoint`` inside ModelCheckpoint's hook) count once,
    for the outermost. Time in the hooks is main-thread time the plain loop does not spend.
    """

    LOGGER_METHODS = ("log_metrics", "log_hyperparams", "save", "after_save_checkpoint", "finalize")

    def __init__(self) -> None:
        self.on = False
        self.seconds: dict[str, float] = defaultdict(float)
        self._depth = 0

    def _wrap(self, obj, label: str, name: str) -> None:
        method = getattr(obj, name)

        @functools.wraps(method)
        def timed(*args, **kwargs):
            if not self.on or self._depth:
                return method(*args, **kwargs)
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t0
                self._depth -= 1

        setattr(obj, name, timed)  # Lightning looks hooks up on the instance at every call

    def instrument(self, trainer: Trainer, skip: Callback) -> None:
        for cb in trainer.callbacks:
            if cb is skip:
                continue
            for name in vars(Callback):
                if not name.startswith("on_") or getattr(type(cb), name) is getattr(Callback, name):
                    continue  # the base class's empty hook
                self._wrap(cb, type(cb).__name__, name)
        for lg in trainer.loggers:
            for name in self.LOGGER_METHODS:
                if callable(getattr(lg, name, None)):
                    self._wrap(lg, type(lg).__name__, name)


# ------------------------------------------------------------------------------- the two loops
class PlainLoop:
    """The plain PyTorch training loop, run block by block so that its blocks interleave with the Trainer's.

    It keeps its own global-RNG state (restored at the start of each block, saved at the end), so
    it draws the reparametrisation noise it would draw alone, whatever runs between its blocks.
    """

    def __init__(self, models: Models, dataset: ArrayDictDataset, batch_size: int, seed: int) -> None:
        self.loader = train_loader(dataset, batch_size)
        self.model = models.new()
        self.model.train()
        configured = self.model.configure_optimizers()
        self.optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
        self.scheduler = configured.get("lr_scheduler") if isinstance(configured, dict) else None
        self.step, self.epoch = 0, 0
        self.losses: list[torch.Tensor] = []
        set_sampler_epoch(self.loader, 0)
        self.batches = iter(self.loader)  # the loader has its own generator: no global draw here
        self.pending = next(self.batches)
        torch.manual_seed(seed)  # as before trainer.fit
        self.rng = torch.get_rng_state()

    def _next_batch(self) -> dict:
        try:
            return next(self.batches)
        except StopIteration:  # epoch end, in Lightning's order: scheduler step, set_epoch, new iterator
            self.epoch += 1
            if self.scheduler is not None:  # Lightning steps schedulers once per epoch by default
                self.scheduler.step()
            set_sampler_epoch(self.loader, self.epoch)
            self.batches = iter(self.loader)
            return next(self.batches)

    def run(self, n_steps: int) -> float:
        """Run ``n_steps`` optimizer steps; seconds from the start of the first to the start of the next.

        Like Lightning's prefetching fetcher, the batch of the following step is fetched at the
        end of each step, so a block holds ``n_steps`` steps and ``n_steps`` fetches on both sides.
        """
        h = self.model.hparams
        torch.set_rng_state(self.rng)
        with torch.enable_grad():
            t0 = time.perf_counter()
            for _ in range(n_steps):
                terms = self.model.losses(self.pending)
                beta = kl_weight(self.step, h.kl_schedule, h.kl_warmup_steps, h.kl_beta_max, h.kl_cycles)
                loss = terms["recon"] + beta * terms["kl_floored"]
                self.optimizer.zero_grad()
                loss.backward()
                self.optimizer.step()
                self.losses.append(loss.detach())
                self.step += 1
                self.pending = self._next_batch()
            seconds = time.perf_counter() - t0
        self.rng = torch.get_rng_state()
        return seconds


class Interleaver(Callback):
    """Pauses ``Trainer.fit`` every ``block`` steps after ``warmup`` and runs the plain loop's block there.

    Sequence: Trainer warm-up, plain warm-up, plain block 1, Trainer block 1, plain block 2, ...
    Trainer block ``pairs``, then one untimed last step (so the last block also ends at the start
    of a step). Records both sides' seconds and CPU use per block, and the Trainer's losses.
    """

    def __init__(self, plain: PlainLoop, warmup: int, block: int, pairs: int, hooks: HookTimer, progress) -> None:
        self.plain, self.warmup, self.block, self.pairs = plain, warmup, block, pairs
        self.hooks, self.progress = hooks, progress
        self.blocks: list[dict] = []
        self.losses: list[torch.Tensor] = []
        self.threads: int | None = None
        self._t0: float | None = None
        self._cpu0: dict[str, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        step = trainer.global_step  # optimizer steps done so far
        if step < self.warmup or (step - self.warmup) % self.block:
            return
        t_end = time.perf_counter()
        self.hooks.on = False
        if self._t0 is not None:
            done = self.blocks[-1]
            done["trainer_s"], done["trainer_cpu"] = t_end - self._t0, cpu_delta(self._cpu0, cpu_snapshot())
            self.progress(done["trainer_s"] / done["plain_s"])
        if len(self.blocks) == self.pairs:
            return  # the untimed last step
        self.threads = torch.get_num_threads()  # the Trainer's own setting, checked against the plain loop
        trainer_rng = torch.get_rng_state()
        if step == self.warmup:
            self.plain.run(self.warmup)  # the plain loop's own warm-up, untimed
        cpu0 = cpu_snapshot()
        plain_s = self.plain.run(self.block)
        self.blocks.append({"plain_s": plain_s, "plain_cpu": cpu_delta(cpu0, cpu_snapshot())})
        torch.set_rng_state(trainer_rng)
        self._cpu0 = cpu_snapshot()
        self.hooks.on = True
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach())


# ------------------------------------------------------------------------------- Trainer variants
#: The progress bar this benchmark proposes for hepgen/cli.py (``instantiate_trainer``): Lightning's
#: TQDMProgressBar, which does its bookkeeping and redraw only every PROPOSED_REFRESH_STEPS steps.
#: RichProgressBar redraws in a thread up to ``refresh_rate`` (default 100) times a second and does
#: its bookkeeping at every step whatever its refresh_rate; see the module docstring and --diagnose.
PROPOSED_REFRESH_STEPS = 10
PROPOSED_BAR = {
    "class_path": "lightning.pytorch.callbacks.TQDMProgressBar",
    "init_args": {"refresh_rate": PROPOSED_REFRESH_STEPS},
}

VARIANT_HELP = {
    "bare": "lightning.Trainer: no logger, progress bar, checkpointing or model summary",
    "hepgen": "the Trainer `hepgen fit` builds (hepgen.cli.HepgenCLI): logger, progress bar, checkpoints, RNG state",
    "proposed": f"hepgen, with TQDMProgressBar(refresh_rate={PROPOSED_REFRESH_STEPS}) in trainer.callbacks",
    "rich:R": "hepgen, with RichProgressBar(refresh_rate=R) (redraws per second; Lightning's default 100)",
    "tqdm:N": "hepgen, with TQDMProgressBar(refresh_rate=N) (updates and redraws every N steps)",
    "no-bar": "hepgen, with trainer.enable_progress_bar: false",
    "no-logger": "hepgen, with trainer.logger: false",
    "csv": "hepgen, with CSVLogger instead of the config's logger",
    "wandb-console-off": "hepgen, with W&B console capture off (WANDB_CONSOLE=off)",
}
DEFAULT_VARIANTS = ("bare", "hepgen", "proposed")
DIAGNOSTIC_VARIANTS = ("no-bar", "no-logger", "csv", "wandb-console-off", "rich:4", "tqdm:1")
#: Run sizes: full (default) and --quick. events None = the config's training split.
SIZES = {
    "full": {"events": None, "block": 20, "pairs": 25, "warmup": 20, "gen_repeats": 10},
    "quick": {"events": 20_000, "block": 10, "pairs": 10, "warmup": 10, "gen_repeats": 3},
}


def variant_overrides(name: str) -> tuple[dict, dict]:
    """(trainer config overrides, environment) of a hepgen variant; raises ValueError for an unknown name."""
    bar_classes = {"rich": "RichProgressBar", "tqdm": "TQDMProgressBar"}
    kind, _, arg = name.partition(":")
    if name == "hepgen":
        return {}, {}
    if name == "proposed":
        return {"callbacks": [PROPOSED_BAR]}, {}
    if kind in bar_classes and arg.isdigit():
        bar_class = f"lightning.pytorch.callbacks.{bar_classes[kind]}"
        return {"callbacks": [{"class_path": bar_class, "init_args": {"refresh_rate": int(arg)}}]}, {}
    if name == "no-bar":
        return {"enable_progress_bar": False}, {}
    if name == "no-logger":
        return {"logger": False}, {}
    if name == "csv":
        # save_dir is required by the parser; hepgen.run.place_loggers then puts it in the run directory
        return {"logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "."}}}, {}
    if name == "wandb-console-off":
        return {}, {"WANDB_CONSOLE": "off"}
    raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANT_HELP)}")


def common_trainer_args(max_steps: int) -> dict:
    """Training only, on CPU: no validation (the plain loop has none), a step limit instead of epochs."""
    return dict(
        accelerator="cpu", devices=1, max_epochs=-1, max_steps=max_steps, limit_val_batches=0, num_sanity_val_steps=0
    )


def bare_trainer(root: Path, max_steps: int, log_every_n_steps: int) -> Trainer:
    return Trainer(
        **common_trainer_args(max_steps),
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=log_every_n_steps,  # CaloVAE logs on these steps, with or without a logger
        default_root_dir=str(root),
    )


def hepgen_trainer(root: Path, max_steps: int, raw_config: dict, overrides: dict, version: str) -> Trainer:
    """The Trainer that ``hepgen fit -c <config>`` builds, made by ``hepgen.cli.HepgenCLI`` itself.

    The config's trainer section, without its method callbacks and with ``overrides`` and
    :func:`common_trainer_args` applied; the run directory goes under ``root``. Nothing is fitted.
    hepgen's notes (e.g. "logging to W&B offline") go to stdout; :func:`run_variant` silences it.
    """
    from hepgen.cli import HepgenCLI

    class BuildOnly(HepgenCLI):
        def _run_subcommand(self, subcommand: str) -> None:  # build, do not fit
            pass

    trainer_cfg = {k: v for k, v in (raw_config.get("trainer") or {}).items() if k != "callbacks"}
    trainer_cfg.update(common_trainer_args(max_steps))
    trainer_cfg.update(overrides)
    config = {k: v for k, v in raw_config.items() if k != "trainer"}
    config["trainer"] = trainer_cfg
    path = root / f"{version}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    args = ["fit", "--config", str(path), "--run.root", str(root / "runs")]
    args += ["--run.experiment", "benchmark", "--run.version", version]
    argv, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI warns when sys.argv holds this script's options
    try:
        return BuildOnly(args=args).trainer
    finally:
        sys.argv = argv


def describe_trainer(trainer: Trainer, skip: Callback) -> str:
    """Callbacks and loggers of a Trainer in one line, e.g. ``RichProgressBar(refresh_rate=100), ...``."""
    parts = []
    for cb in trainer.callbacks:
        if cb is skip:
            continue
        name = type(cb).__name__
        if hasattr(cb, "refresh_rate"):
            name += f"(refresh_rate={cb.refresh_rate:g})"
        elif name == "ModelCheckpoint":
            name += f"({cb.filename})"
        parts.append(name)
    parts += [type(lg).__name__ for lg in trainer.loggers]
    return (", ".join(parts) or "no callbacks, no logger") + f"; log_every_n_steps={trainer.log_every_n_steps}"


def render_bars_as_terminal(trainer: Trainer) -> None:
    """Rich bars draw as on a terminal (into this run's stdout, sent to /dev/null during fit)."""
    for cb in trainer.callbacks:
        if isinstance(cb, RichProgressBar):
            cb._console_kwargs = {"force_terminal": True, **cb._console_kwargs}


def finish_wandb() -> None:
    """End the W&B run a WandbLogger started, so the next variant starts its own (as a new `hepgen fit`)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def release_run_lock() -> None:
    """Release the run-directory lock HepgenCLI took (``hepgen.cli.main`` does it when the command ends)."""
    with contextlib.suppress(ImportError):
        from hepgen.run_lock import release_run_locks

        release_run_locks()


@contextlib.contextmanager
def environment(extra: dict):
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_variant(
    name: str,
    models: Models,
    dataset: ArrayDictDataset,
    cfg: dict,
    sizes: tuple[int, int, int],
    out,
    verbose: bool = False,
) -> dict:
    """Interleaved pairs of one Trainer variant and a fresh plain loop; returns times, CPU use and checks.

    ``sizes``: (warm-up steps, steps per block, pairs). Library messages on stderr (W&B, Lightning)
    are held back and shown only if the variant fails, or with ``verbose``.
    """
    seed, batch_size = cfg["seed"], cfg["batch_size"]
    warmup, block, pairs = sizes
    max_steps = warmup + pairs * block + 1
    hooks = HookTimer()
    out.write(f"  {name:<18} pair ratios:")
    out.flush()

    def progress(ratio: float) -> None:
        out.write(f" {ratio:.3f}")
        out.flush()

    messages = io.StringIO()
    overrides, env = ({}, {}) if name == "bare" else variant_overrides(name)
    try:
        # stdout to /dev/null: the progress bars draw there (and hepgen's notes go there)
        with (
            tempfile.TemporaryDirectory(prefix="hepgen-bench-") as tmp,
            open(os.devnull, "w") as devnull,
            environment(env),
            contextlib.redirect_stdout(devnull),
            contextlib.redirect_stderr(sys.stderr if verbose else messages),
        ):
            root = Path(tmp)
            if name == "bare":
                trainer = bare_trainer(root, max_steps, cfg["log_every_n_steps"])
            else:
                trainer = hepgen_trainer(root, max_steps, cfg["raw"], overrides, name.replace(":", "-"))
            plain = PlainLoop(models, dataset, batch_size, seed)
            driver = Interleaver(plain, warmup, block, pairs, hooks, progress)
            trainer.callbacks.append(driver)
            hooks.instrument(trainer, skip=driver)
            render_bars_as_terminal(trainer)
            description = describe_trainer(trainer, skip=driver)
            model = models.new()
            torch.manual_seed(seed)
            trainer.fit(model, train_dataloaders=train_loader(dataset, batch_size))
            finish_wandb()
            release_run_lock()
    except BaseException:
        out.write("\n")
        sys.stderr.write(messages.getvalue())
        raise
    out.write("\n")
    if len(driver.blocks) != pairs or "trainer_s" not in driver.blocks[-1]:
        raise RuntimeError(f"{name}: Trainer stopped after {trainer.global_step} of {max_steps} steps.")
    n = len(plain.losses)
    same = len(driver.losses) >= n and all(torch.equal(a, b) for a, b in zip(plain.losses, driver.losses))
    diff = max(float((a - b).abs()) for a, b in zip(plain.losses, driver.losses))
    return {
        "name": name,
        "block": block,
        "description": description,
        "blocks": driver.blocks,
        "hooks": dict(hooks.seconds),
        "identical_losses": same,
        "max_loss_diff": diff,
        "checked_steps": n,
        "epochs": plain.epoch + 1,
        "threads": driver.threads,
    }


# ------------------------------------------------------------------------------- statistics
def _cpu_total(delta: dict[str, float]) -> float:
    return sum(v for k, v in delta.items() if k != GC)


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles, min, max and a distribution-free 95 % confidence interval of the median.

    The interval runs between the order statistics of rank (n ∓ 1.96 √n) / 2 (the binomial
    sign-test interval, normal approximation): if it lies below the goal, a rerun's median will
    too, whatever the shape of the noise.
    """
    v = sorted(values)
    n = len(v)
    q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive") if n > 1 else v * 3
    half = 1.96 * math.sqrt(n) / 2
    lo, hi = max(0, math.floor(n / 2 - half) - 1), min(n - 1, math.ceil(n / 2 + half) - 1)
    return {"n": n, "median": statistics.median(v), "q1": q1, "q3": q3, "min": v[0], "max": v[-1],
            "ci_lo": v[lo], "ci_hi": v[hi]}


def ratio_stats(result: dict) -> dict:
    """Per-pair ratios Trainer/plain (:func:`spread`), the ratio of the summed times, per-step medians,
    and the same spread for the ratio of CPU times (not stretched by waiting for a core, so it
    holds up better than wall time on a loaded machine)."""
    blocks, block = result["blocks"], result["block"]
    stats = spread([b["trainer_s"] / b["plain_s"] for b in blocks])
    stats["cpu"] = spread([_cpu_total(b["trainer_cpu"]) / _cpu_total(b["plain_cpu"]) for b in blocks])
    stats["summed"] = sum(b["trainer_s"] for b in blocks) / sum(b["plain_s"] for b in blocks)
    stats["plain_ms"] = statistics.median(b["plain_s"] for b in blocks) * 1e3 / block
    stats["trainer_ms"] = statistics.median(b["trainer_s"] for b in blocks) * 1e3 / block
    return stats


def overhead_breakdown(result: dict) -> dict[str, float]:
    """Extra cost per step of the Trainer blocks over the plain blocks, in microseconds.

    ``hooks: X``: wall time inside callback / logger X (main thread). Per CPU category: CPU time
    during Trainer blocks minus during plain blocks (both include what runs in the background).
    """
    steps = result["block"] * len(result["blocks"])
    out = {f"hooks: {k}": v / steps * 1e6 for k, v in sorted(result["hooks"].items(), key=lambda kv: -kv[1])}
    totals: dict[str, float] = defaultdict(float)
    for b in result["blocks"]:
        for k in set(b["plain_cpu"]) | set(b["trainer_cpu"]):
            totals[k] += b["trainer_cpu"].get(k, 0.0) - b["plain_cpu"].get(k, 0.0)
    for k, v in sorted(totals.items(), key=lambda kv: (kv[0] != MAIN, kv[0] != GC)):
        out[f"CPU: {k}"] = v / steps * 1e6
    return out


# ------------------------------------------------------------------------------- generation
def generation_calls(device: torch.device) -> dict[int, int]:
    """Batch sizes timed and generate() calls per repeat: the protocol's, and on a GPU also 100,000
    (up to 10,000 a GPU call is bound by kernel launches, not by arithmetic)."""
    return PROTOCOL_CALLS if device.type == "cpu" else {**PROTOCOL_CALLS, 100_000: 1}


def time_generation(generate, device: torch.device, repeats: int, seed: int) -> dict[int, list[float]]:
    """Seconds per shower for each batch size of the protocol, one value per repeat, of
    ``generate(energy, generator=...)`` (``CaloVAE.generate`` of a model in eval mode or a
    ``CompiledShowerGenerator``) on ``device`` (a GPU's queue is drained before the clock is read)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out: dict[int, list[float]] = {}
    for batch, calls in generation_calls(device).items():
        energy = 1.0 + 99.0 * torch.rand((batch, 1), generator=gen, device=device)
        for _ in range(2):  # warm-up (and a compiled generator's compilation)
            generate(energy, generator=gen)
        per_shower = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            for _ in range(calls):
                generate(energy, generator=gen)
            sync()
            per_shower.append((time.perf_counter() - t0) / (calls * batch))
        out[batch] = per_shower
    return out


def compare_generation(
    cfg: dict, tensors: dict[str, torch.Tensor], repeats: int, seed: int, device: torch.device
) -> None:
    """Generation cost of the config's CaloVAE, of the same with its trunk and layer branches in bfloat16 and of
    the same sizes with the softmax sharing and the N(0, I) latent (the model before the fidelity
    work), in alternating repeats, on ``device`` (the CPU bound only on a CPU). Like ``hepgen
    predict``, it first makes malloc keep freed memory (:func:`hepgen.memory.keep_freed_memory`)."""
    print(f"\nmalloc keeps freed memory (hepgen.memory.keep_freed_memory): {keep_freed_memory()}")
    models = {
        "config": Models(CaloVAE, cfg["model_args"], tensors, seed).new(),
        "config, trunk and branches in bfloat16": Models(
            CaloVAE, {**cfg["model_args"], "generation_dtype": "bfloat16"}, tensors, seed
        ).new(),
        "softmax sharing, N(0, I) latent": Models(
            CaloVAE,
            {**cfg["model_args"], "sharing": "softmax", "sharing_components": 1, "latent_density": "normal",
             "generation_dtype": "float32", "brightest_cell_layers": None, "flow_refit_epochs": 0},
            tensors,
            seed,
        ).new(),
    }
    models = {name: model.to(device).eval() for name, model in models.items()}
    generators = {name: model.generate for name, model in models.items()}
    if device.type == "cpu":  # the same two models compiled (inductor's C++ kernels)
        for name in ("config", "config, trunk and branches in bfloat16"):
            generators[f"{name}, compiled"] = CompiledShowerGenerator(models[name])
    batches = generation_calls(device)
    times: dict[str, dict[int, list[float]]] = {name: {b: [] for b in batches} for name in generators}
    for _ in range(repeats):
        for name, generate in generators.items():
            for batch, values in time_generation(generate, device, 1, seed).items():
                times[name][batch] += values
    sizes = " / ".join(f"{b:,}" for b in batches)
    print(f"\n## Generation on {device}, alternating repeats ({repeats} each): ms/shower at batch {sizes}; "
          f"showers/s at {GEN_BATCH:,}")
    rates = {}
    for name, per_batch in times.items():
        ms = " / ".join(f"{mean_std([v * 1e3 for v in per_batch[b]])[0]:.4f}" for b in batches) + " ms"
        if 100_000 in per_batch:
            ms += f" ({mean_std([1.0 / v for v in per_batch[100_000]])[0]:,.0f} showers/s at 100,000)"
        rate, rate_std = mean_std([1.0 / v for v in per_batch[GEN_BATCH]])
        rates[name] = rate
        print(f"  {name}: {ms}; {rate:,.0f} ± {rate_std:,.0f} showers/s "
              f"(goal >= {GOAL_SHOWERS_PER_S:,}: {verdict(rate >= GOAL_SHOWERS_PER_S)})")
    baseline = rates["softmax sharing, N(0, I) latent"]
    print("  throughput / baseline: " + "; ".join(f"{name} {rate / baseline:.3f}" for name, rate in rates.items()))
    if device.type != "cpu":  # the bound below times CPU kernels and CPU random numbers
        return
    for name, model in models.items():
        print_generation_bound(name, model, repeats)
    # the compiled generator's copy of the model: two weight logits per cell folded into one
    compiled = "config, trunk and branches in bfloat16, compiled"
    print_generation_bound(compiled, generators[compiled].model, repeats)


def generation_linears(model: CaloVAE) -> list[tuple[nn.Linear, torch.dtype]]:
    """The linear layers a generated shower passes through, each with the dtype it runs in: the
    decoder's trunk and layer branches in the model's ``generation_dtype``, its energy head, the
    latent flow and the brightest shares' mixture networks in float32."""
    decoder, low = model.decoder, getattr(torch, model.hparams.generation_dtype)
    in_low = {id(m) for part in (decoder.trunk, decoder.branches) for m in part.modules()}
    parts = [decoder] + ([model.latent_flow] if model.latent_flow is not None else [])
    return [
        (m, low if id(m) in in_low else torch.float32)
        for part in parts
        for m in part.modules()
        if isinstance(m, nn.Linear)
    ]


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def print_generation_bound(name: str, model: CaloVAE, repeats: int) -> None:
    """The least time 10,000 showers can take with this model on this machine: its linear layers run
    alone at batch 10,000 (each timed on its own input shape, in the dtype generation runs it in)
    plus the one uniform random number per cell that draws hit, component and log-normal noise,
    with no other work."""
    linears = generation_linears(model)
    macs = sum(m.in_features * m.out_features for m, _ in linears)

    def linear_time(m: nn.Linear, dtype: torch.dtype) -> float:
        x = torch.randn(GEN_BATCH, m.in_features, dtype=dtype)
        weight, bias = m.weight.to(dtype), m.bias.to(dtype)
        return _median_time(lambda: torch.nn.functional.linear(x, weight, bias), repeats)

    t_linear = sum(linear_time(m, dtype) for m, dtype in linears)
    cells = GEN_BATCH * sum(math.prod(shape) for shape in model.layer_shapes.values())
    gen = torch.Generator().manual_seed(0)
    buffer = torch.empty(cells)  # torch's CPU generator is serial: no thread shares this pass
    t_random = _median_time(lambda: buffer.uniform_(generator=gen), repeats)
    bound = GEN_BATCH / (t_linear + t_random)
    print(f"  bound, {name}: {macs:,} multiply-adds per shower, linear layers {t_linear * 1e3:.1f} ms "
          f"({2 * macs * GEN_BATCH / t_linear / 1e9:.0f} GFLOP/s) + random numbers {t_random * 1e3:.1f} ms "
          f"for {GEN_BATCH:,} showers -> at most {bound:,.0f} showers/s")


# ------------------------------------------------------------------------------- report
def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def ratio_verdict(s: dict) -> str:
    """Against the goal, by the 95 % interval of the median: a verdict only when the noise allows one."""
    if s["ci_hi"] <= GOAL_TRAINER_RATIO:
        return "met"
    if s["ci_lo"] > GOAL_TRAINER_RATIO:
        return "NOT met"
    return "undecided (noise)"


def ratio_cell(s: dict) -> str:
    """``1.012 [1.004–1.021] (0.990–1.050)``: median [interquartile range] (min–max) of the pair ratios."""
    return f"{s['median']:.3f} [{s['q1']:.3f}–{s['q3']:.3f}] ({s['min']:.3f}–{s['max']:.3f})"


def readme_ratio(s: dict) -> str:
    return (f"{s['median']:.3f} (95 % CI {s['ci_lo']:.3f}–{s['ci_hi']:.3f}; IQR {s['q1']:.3f}–{s['q3']:.3f}; "
            f"min–max {s['min']:.3f}–{s['max']:.3f}; {s['n']} pairs)")


def print_overhead_tables(results: list[dict], threads: int) -> None:
    print(
        f"\n## 2. Trainer overhead: {results[0]['block']}-step blocks, plain and Trainer in turn, "
        f"{results[0]['checked_steps']} steps checked per variant"
    )
    print("\n| variant | plain ms/step | Trainer ms/step | ratio: median [IQR] (min–max) of pairs "
          "| 95 % CI of median | ratio of summed times | CPU-time ratio: median [IQR] "
          f"| goal ≤ {GOAL_TRAINER_RATIO} |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        s, c = r["stats"], r["stats"]["cpu"]
        print(f"| {r['name']} | {s['plain_ms']:.2f} | {s['trainer_ms']:.2f} | {ratio_cell(s)}, n={s['n']} | "
              f"{s['ci_lo']:.3f}–{s['ci_hi']:.3f} | {s['summed']:.3f} | "
              f"{c['median']:.3f} [{c['q1']:.3f}–{c['q3']:.3f}] | {ratio_verdict(s)} |")
    print("\n  variants: " + "\n            ".join(f"{r['name']}: {r['description']}" for r in results))
    for r in results:
        if not r["identical_losses"] or r["threads"] != threads:
            print(f"  WARNING {r['name']}: losses identical to the plain loop: {r['identical_losses']} "
                  f"(max |diff| {r['max_loss_diff']:.2e}); torch threads {r['threads']} (asked {threads})")
    checked = ", ".join(f"{r['name']} {r['checked_steps']}" for r in results if r["identical_losses"])
    print(f"\n  check: Trainer and plain losses bit-identical at every step ({checked} steps; "
          f"{results[0]['epochs']} epochs each)")

    print("\n  Where the extra time per step goes (µs/step, Trainer blocks minus plain blocks; "
          "hooks = wall time inside them,\n  CPU = CPU time of this process's threads and of its "
          "child processes; the plain step is the reference):")
    for r in results:
        plain_us = r["stats"]["plain_ms"] * 1e3
        parts = [f"{k} {v:+.0f}" for k, v in overhead_breakdown(r).items() if abs(v) >= 0.002 * plain_us]
        extra_us = (r["stats"]["trainer_ms"] - r["stats"]["plain_ms"]) * 1e3
        print(f"  {r['name']:<18} wall {extra_us:+.0f} of {plain_us:.0f}: " + ("; ".join(parts) or "—"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="variants:\n" + "\n".join(f"  {k:<18} {v}" for k, v in VARIANT_HELP.items()),
    )
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="CaloVAE config (model, batch size, seed, trainer logger)"
    )
    parser.add_argument(
        "--events", type=int, default=None, help="training events (default: the config's training split)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default: the config's)")
    parser.add_argument("--block", type=int, default=None, help="optimizer steps per block (default 20; quick 10)")
    parser.add_argument("--pairs", type=int, default=None, help="plain/Trainer block pairs per variant (25; quick 10)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps of each loop first (20; quick 10)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma-separated, see below")
    parser.add_argument("--diagnose", action="store_true", help="also run: " + ", ".join(DIAGNOSTIC_VARIANTS))
    parser.add_argument(
        "--gen-repeats", type=int, default=None, help="timed repeats per generation batch size (10; quick 3)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: usable cores; 1 on a busy machine)"
    )
    parser.add_argument("--verbose", action="store_true", help="show the libraries' messages on stderr during fits")
    parser.add_argument("--quick", action="store_true", help="a short run: 20,000 events and the quick defaults above")
    parser.add_argument("--generation-only", action="store_true",
                        help="only generation: the config's model against softmax sharing with an N(0, I) latent")
    parser.add_argument("--device", default="cpu", help="where --generation-only generates (cpu, cuda, cuda:1, ...)")
    args = parser.parse_args(argv)
    if args.device != "cpu" and not args.generation_only:
        parser.error(f"--device {args.device} needs --generation-only: training is timed on the CPU")

    started = time.perf_counter()
    quick = args.quick
    size = SIZES["quick" if quick else "full"]
    cfg = load_config(args.config)
    events = args.events or size["events"] or cfg["train_events"]
    batch_size = args.batch_size or cfg["batch_size"]
    cfg["batch_size"] = batch_size
    block = args.block or size["block"]
    pairs = args.pairs or size["pairs"]
    warmup = args.warmup or size["warmup"]
    gen_repeats = args.gen_repeats or size["gen_repeats"]
    cores, load_start = usable_cores(), load_average()
    threads, threads_why = choose_threads(args.threads, cores, load_start)
    variants = [v for v in args.variants.split(",") if v] + (list(DIAGNOSTIC_VARIANTS) if args.diagnose else [])
    for name in variants:
        if name != "bare":
            try:
                variant_overrides(name)
            except ValueError as err:
                parser.error(str(err))
    if block < 1 or pairs < 1 or warmup < 1 or events < batch_size:
        parser.error("need --block, --pairs, --warmup >= 1 and --events >= --batch-size")
    torch.set_num_threads(threads)

    # Lightning's informational messages and dataloader hints would clutter the report.
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
    warnings.filterwarnings("ignore", message=".*`validation_step` but have no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=".*could not find the monitored key.*")  # best-ckpt without validation
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # lightning 2.6 + torch 2.13, once per fit
    os.environ.setdefault("WANDB_SILENT", "true")

    machine = (f"{cpu_model()}, {cores} cores, torch {torch.__version__}, lightning {lightning.__version__}, "
               f"{threads} thread{'s' if threads > 1 else ''}")
    out = sys.stdout
    device = torch.device(args.device)
    where = "CPU" if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})"
    print(f"# hepgen benchmark: CaloVAE on {where}" + (" (--quick)" if quick else ""))
    print(f"machine : {cpu_model()} | {cores} usable cores ({os.cpu_count()} logical) | {platform.platform()}")
    print(f"software: python {platform.python_version()} | torch {torch.__version__} | "
          f"lightning {lightning.__version__}")
    print(f"threads : torch.set_num_threads({threads}) -> {torch.get_num_threads()} intra-op threads ({threads_why})")
    print(f"load    : {format_load(load_start)} (1/5/15 min) at start; timings need an otherwise idle machine")
    print(f"config  : {args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config}")
    model_desc = {k: v for k, v in cfg["model_args"].items() if k not in ("optimizer", "lr_scheduler")}
    print(f"model   : CaloVAE({', '.join(f'{k}={v}' for k, v in model_desc.items())})")
    rss_start = peak_rss_mib()

    if args.generation_only:
        tensors = make_training_data(2000, cfg["particles"][0], cfg["seed"])
        compare_generation(cfg, tensors, gen_repeats, cfg["seed"], device)
        return

    # --- data -------------------------------------------------------------------------------
    t0 = time.perf_counter()
    tensors = make_training_data(events, cfg["particles"][0], cfg["seed"])
    data_bytes = sum(v.nbytes for v in tensors.values())
    print(f"data    : {events} made {cfg['particles'][0]} showers in {time.perf_counter() - t0:.1f} s, "
          f"{data_bytes / 2**20:.1f} MiB in memory; batch size {batch_size}")
    rss_after_data = peak_rss_mib()

    dataset = ArrayDictDataset(tensors)
    models = Models(CaloVAE, cfg["model_args"], tensors, cfg["seed"])
    n_params = sum(p.numel() for p in models.new().parameters())
    print(f"params  : {n_params:,}")
    rss_before_training = peak_rss_mib()
    # From here on ru_maxrss is the peak of the training part alone (when the kernel allows the reset).
    peak_was_reset = reset_peak_rss()

    # --- 2. training: interleaved pairs per variant -------------------------------------------
    print(f"\n## Training: per variant {warmup} warm-up steps of each loop, then {pairs} pairs "
          f"(plain {block} steps, Trainer {block} steps)")
    results = []
    for name in variants:
        result = run_variant(name, models, dataset, cfg, (warmup, block, pairs), out, args.verbose)
        result["stats"] = ratio_stats(result)
        results.append(result)
    rss_training = peak_rss_mib()
    rss_after_training = max(rss_before_training, rss_training)

    # --- 1. generation ------------------------------------------------------------------------
    model = models.new().eval()
    per_shower = time_generation(model.generate, model.device, gen_repeats, cfg["seed"])
    rates = [1.0 / s for s in per_shower[GEN_BATCH]]
    rate_mean, rate_std = mean_std(rates)
    rss_end = peak_rss_mib()

    # --- report -------------------------------------------------------------------------------
    print(f"\n## 1. Generation (CaloVAE.generate, {threads} threads; untrained weights: cost does not depend on them)")
    print(f"  throughput at batch {GEN_BATCH:,}: {rate_mean:,.0f} ± {rate_std:,.0f} showers/s "
          f"(mean ± std of {gen_repeats} repeats after 2 warm-up calls)   "
          f"goal >= {GOAL_SHOWERS_PER_S:,} showers/s on 2 CPU cores: {verdict(rate_mean >= GOAL_SHOWERS_PER_S)}")
    print("  CaloChallenge protocol, time per shower:")
    gen_ms = {}
    for batch, values in per_shower.items():
        m, s = mean_std([v * 1e3 for v in values])
        gen_ms[batch] = (m, s)
        print(f"    batch {batch:>6,}: {m:.4f} ± {s:.4f} ms/shower "
              f"({PROTOCOL_CALLS[batch]} call(s) per repeat, {gen_repeats} repeats)")

    print_overhead_tables(results, threads)

    print("\n## 3. Memory (ru_maxrss: peak RSS of the whole process, i.e. Python, torch, lightning and data)")
    print(f"  training data in memory     : {data_bytes / 2**20:8.1f} MiB ({data_bytes / events:.0f} bytes/event)")
    print(f"  peak RSS after imports      : {rss_start:8.1f} MiB")
    print(f"  peak RSS after making data  : {rss_after_data:8.1f} MiB (includes the shower simulation)")
    if peak_was_reset:
        print(f"  peak RSS during training    : {rss_training:8.1f} MiB (high-water mark reset before training)")
    print(f"  peak RSS after training     : {rss_after_training:8.1f} MiB (process peak so far)")
    if peak_was_reset:
        print(f"  peak RSS, training + generation: {rss_end:5.1f} MiB (current RSS {current_rss_mib():.1f} MiB)")
    else:
        print(f"  peak RSS after generation   : {rss_end:8.1f} MiB (current RSS {current_rss_mib():.1f} MiB)")

    # This benchmark itself keeps about `threads` cores busy; more than that means other work.
    load_end = load_average()
    minutes = (time.perf_counter() - started) / 60
    print(f"\nload average at the end: {format_load(load_end)} (1/5/15 min); run took {minutes:.1f} min")
    busy = machine_busy(load_start, cores) or (load_end and load_end[0] > threads + 0.5 * cores)
    if busy:
        print("WARNING: the machine was busy: absolute times are not reliable; the pair ratios compare "
              "neighbouring blocks and are the figures to quote, with their spread.")

    rows = [
        (f"generation throughput, batch {GEN_BATCH:,}", f"{rate_mean:,.0f} ± {rate_std:,.0f} showers/s",
         f"goal ≥ {GOAL_SHOWERS_PER_S:,} showers/s", f"{rate_mean / GOAL_SHOWERS_PER_S:.2f}× goal"),
        *[
            (f"generation time per shower, batch {b:,}", f"{m:.4f} ± {s:.4f} ms", "CaloChallenge protocol", "—")
            for b, (m, s) in gen_ms.items()
        ],
        *[
            (f"training step, {TABLE_LABELS.get(r['name'], r['name'])} (batch {batch_size})",
             f"{r['stats']['trainer_ms']:.2f} ms", f"plain PyTorch loop {r['stats']['plain_ms']:.2f} ms",
             f"{readme_ratio(r['stats'])}; goal ≤ {GOAL_TRAINER_RATIO}: {ratio_verdict(r['stats'])}")
            for r in results
        ],
        ("peak RSS of the process (ru_maxrss)",
         (f"training {rss_training:.0f} MiB; with data making {rss_after_training:.0f} MiB" if peak_was_reset
          else f"{rss_after_training:.0f} MiB after training"),
         f"training data {data_bytes / 2**20:.0f} MiB ({events:,} events); imports alone {rss_start:.0f} MiB", "—"),
    ]
    print(f"\n## README table\n\nMachine: {machine}; load {format_load(load_start)} at start, "
          f"{format_load(load_end)} at the end. Training-step ratios Trainer/plain: median of {pairs} "
          f"interleaved pairs of {block}-step blocks, with its 95 % confidence interval, interquartile "
          "range and min–max.\n")
    print("| quantity | hepgen | reference | ratio/goal |")
    print("|---|---|---|---|")
    for quantity, value, reference, goal in rows:
        print(f"| {quantity} | {value} | {reference} | {goal} |")


#: Row names of the README table.
TABLE_LABELS = {
    "bare": "bare Trainer",
    "hepgen": "Trainer as `hepgen fit` builds it",
    "proposed": f"Trainer as `hepgen fit` with TQDMProgressBar(refresh_rate={PROPOSED_REFRESH_STEPS})",
}


if __name__ == "__main__":
    main()
