"""Benchmark of CaloVAE on CPU: generation throughput, Lightning Trainer overhead, peak memory.

    python benchmarks/calo_vae.py [--events N] [--batch-size B] [--steps S] [--threads T]

The model and data sizes follow ``experiments/calo_vae/quickstart.yaml`` (model init_args,
batch size, seed, and by default the number of training events of its split). Training data are
made in memory with :func:`hepgen.synth.calogan.simulate_showers`; nothing is written to disk.

1. Generation: showers/s of ``CaloVAE.generate`` at batch 10,000 (warm-up, then mean ± std over
   repeats) and ms/shower at batch 1, 100 and 10,000 (the CaloChallenge timing protocol).
2. Trainer overhead: time per training step under ``lightning.Trainer`` versus a plain PyTorch
   loop over the same batches (same DataLoader construction as hepgen's datamodules, same model
   class and initial weights, same optimizer from ``configure_optimizers``, same loss as
   ``CaloVAE.training_step`` with beta from the KL schedule at each step, as ``CaloVAE.beta``; the
   losses of the two loops agree bit for bit, which is checked). Only the loop is timed: from the
   start of the first timed step to the end of the last, after a warm-up. Plain and Trainer runs
   alternate; medians are reported.
   Two diagnostic Trainer variants are run once each: with the rich progress bar and Lightning's
   default logger, and with a ``training_step`` that does not call ``self.log``.
3. Memory: process peak RSS (``ru_maxrss``) after training and the size of the training data.

A markdown table for the README is printed at the end.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `datamodules` is a top-level package of the repository

import lightning  # noqa: E402
from lightning.pytorch import Callback, Trainer  # noqa: E402
from lightning.pytorch.callbacks import RichProgressBar  # noqa: E402

from datamodules.base import ArrayDictDataset, HepDataModule  # noqa: E402
from hepgen.models.calo_vae import CaloVAE  # noqa: E402
from hepgen.models.kl_schedule import kl_weight  # noqa: E402
from hepgen.physics.calo_geometry import LAYER_KEYS  # noqa: E402
from hepgen.synth.calogan import simulate_showers  # noqa: E402

DEFAULT_CONFIG = REPO / "experiments" / "calo_vae" / "quickstart.yaml"
GOAL_SHOWERS_PER_S = 10_000
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


def batch_fingerprint(batch: dict) -> float:
    return float(batch["energy"].double().sum())


# ------------------------------------------------------------------------------- training
#: Steps whose loss is recorded (during warm-up) to check that both loops do the same work.
CHECK_STEPS = 5


def plain_loop(
    models: Models, dataset: ArrayDictDataset, batch_size: int, seed: int, warmup: int, steps: int
) -> dict:
    """A plain PyTorch training loop; returns seconds per step over the timed steps."""
    loader = train_loader(dataset, batch_size)
    model = models.new()
    model.train()
    configured = model.configure_optimizers()
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    scheduler = configured.get("lr_scheduler") if isinstance(configured, dict) else None
    h = model.hparams
    total = warmup + steps
    losses, fingerprints = [], []
    torch.manual_seed(seed)
    step, epoch, t0, t1 = 0, 0, None, None
    while step < total:
        set_sampler_epoch(loader, epoch)
        for batch in loader:
            if step == 0:
                fingerprints.append(batch_fingerprint(batch))
            if step == warmup:
                t0 = time.perf_counter()
            terms = model.losses(batch)
            beta = kl_weight(step, h.kl_schedule, h.kl_warmup_steps, h.kl_beta_max, h.kl_cycles)
            loss = terms["recon"] + beta * terms["kl_floored"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step < CHECK_STEPS:
                losses.append(float(loss.detach()))
            step += 1
            if step == total:
                t1 = time.perf_counter()
                fingerprints.append(batch_fingerprint(batch))
                final_loss = float(loss.detach())
                break
        else:
            epoch += 1
            if scheduler is not None:  # Lightning steps schedulers once per epoch by default
                scheduler.step()
    return {
        "step_s": (t1 - t0) / steps,
        "losses": losses,
        "final_loss": final_loss,
        "fingerprints": tuple(fingerprints),
        "epochs": epoch + 1,
        "threads": torch.get_num_threads(),
    }


class StepTimer(Callback):
    """Times the training loop only: start of step ``warmup`` to the end of step ``warmup + steps - 1``."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.t0 = self.t1 = None
        self.losses: list[float] = []
        self.final_loss = None
        self.fingerprints: list[float] = []
        self.threads = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0 and not self.fingerprints:
            self.fingerprints.append(batch_fingerprint(batch))
            self.threads = torch.get_num_threads()
        if trainer.global_step == self.warmup:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # global_step counts optimizer steps, so it is already incremented here.
        if trainer.global_step <= CHECK_STEPS:
            self.losses.append(float(outputs["loss"]))
        if trainer.global_step == self.warmup + self.steps:
            self.t1 = time.perf_counter()
            self.fingerprints.append(batch_fingerprint(batch))
            self.final_loss = float(outputs["loss"])


class CaloVAENoLog(CaloVAE):
    """Diagnostic only: CaloVAE whose training_step computes the same loss but does not self.log."""

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.losses(batch)
        return terms["recon"] + self.beta() * terms["kl_floored"]


def trainer_loop(
    models: Models,
    dataset: ArrayDictDataset,
    batch_size: int,
    seed: int,
    warmup: int,
    steps: int,
    variant: str = "bare",
) -> dict:
    """The same training under lightning.Trainer; ``variant``: bare | rich (bar + default logger) | nolog."""
    loader = train_loader(dataset, batch_size)
    model = models.new(CaloVAENoLog if variant == "nolog" else None)
    timer = StepTimer(warmup, steps)
    with tempfile.TemporaryDirectory(prefix="hepgen-bench-") as root:
        kwargs = dict(
            accelerator="cpu",
            devices=1,
            max_steps=warmup + steps,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
            enable_model_summary=False,
            default_root_dir=root,
        )
        if variant == "rich":
            # Lightning's default logger (TensorBoard if installed, else CSV) and log_every_n_steps.
            callbacks = [timer, RichProgressBar(console_kwargs={"stderr": True})]
            kwargs.update(logger=True, enable_progress_bar=True)
        else:
            callbacks = [timer]
            kwargs.update(logger=False, enable_progress_bar=False)
        trainer = Trainer(callbacks=callbacks, **kwargs)
        torch.manual_seed(seed)
        trainer.fit(model, train_dataloaders=loader)
        logger_name = type(trainer.logger).__name__ if trainer.logger is not None else "none"
        log_every = trainer.log_every_n_steps
    if timer.t0 is None or timer.t1 is None:
        raise RuntimeError(f"Trainer stopped after {trainer.global_step} steps; expected {warmup + steps}.")
    return {
        "step_s": (timer.t1 - timer.t0) / steps,
        "losses": timer.losses,
        "final_loss": timer.final_loss,
        "fingerprints": tuple(timer.fingerprints),
        "threads": timer.threads,
        "logger": logger_name,
        "log_every_n_steps": log_every,
    }


# ------------------------------------------------------------------------------- generation
def time_generation(model: CaloVAE, repeats: int, seed: int) -> dict[int, list[float]]:
    """Seconds per shower for each batch size of the protocol, one value per repeat."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out: dict[int, list[float]] = {}
    for batch, calls in PROTOCOL_CALLS.items():
        energy = 1.0 + 99.0 * torch.rand((batch, 1), generator=gen)
        for _ in range(2):  # warm-up
            model.generate(energy, generator=gen)
        per_shower = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                model.generate(energy, generator=gen)
            per_shower.append((time.perf_counter() - t0) / (calls * batch))
        out[batch] = per_shower
    return out


# ------------------------------------------------------------------------------- report
def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _ms_list(runs: list[dict]) -> str:
    return ", ".join(f"{run['step_s'] * 1e3:.2f}" for run in runs)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="CaloVAE config (model init_args, batch size, seed)"
    )
    parser.add_argument(
        "--events", type=int, default=None, help="training events (default: the config's training split)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default: the config's)")
    parser.add_argument("--steps", type=int, default=300, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=20, help="untimed training steps before the timed ones")
    parser.add_argument("--repeats", type=int, default=3, help="plain/Trainer run pairs (alternating)")
    parser.add_argument("--gen-repeats", type=int, default=10, help="timed repeats per generation batch size")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: usable cores)")
    args = parser.parse_args(argv)

    cfg = load_config(args.config)
    events = args.events or cfg["train_events"]
    batch_size = args.batch_size or cfg["batch_size"]
    threads = args.threads or usable_cores()
    seed = cfg["seed"]
    if args.steps < 1 or args.warmup < CHECK_STEPS or events < batch_size:
        parser.error(f"need --steps >= 1, --warmup >= {CHECK_STEPS} and --events >= --batch-size")
    torch.set_num_threads(threads)

    # Lightning's informational messages and dataloader hints would clutter the report.
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*log_every_n_steps.*")
    warnings.filterwarnings("ignore", message=".*`validation_step` but have no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # lightning 2.6 + torch 2.13, once per fit

    cores = usable_cores()
    machine = f"{cpu_model()}, {cores} cores, torch {torch.__version__}, {threads} threads"
    print("# hepgen benchmark: CaloVAE on CPU")
    print(f"machine : {cpu_model()} | {cores} usable cores ({os.cpu_count()} logical) | {platform.platform()}")
    print(
        f"software: python {platform.python_version()} | torch {torch.__version__} | lightning {lightning.__version__}"
    )
    print(f"threads : torch.set_num_threads({threads}) -> {torch.get_num_threads()} intra-op threads")
    load_start = load_average()
    print(f"load    : {format_load(load_start)} (1/5/15 min) at start; timings need an otherwise idle machine")
    print(f"config  : {args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config}")
    model_desc = {k: v for k, v in cfg["model_args"].items() if k not in ("optimizer", "lr_scheduler")}
    print(f"model   : CaloVAE({', '.join(f'{k}={v}' for k, v in model_desc.items())})")
    rss_start = peak_rss_mib()

    # --- data -------------------------------------------------------------------------------
    t0 = time.perf_counter()
    tensors = make_training_data(events, cfg["particles"][0], seed)
    data_bytes = sum(v.nbytes for v in tensors.values())
    print(f"data    : {events} made {cfg['particles'][0]} showers in {time.perf_counter() - t0:.1f} s, "
          f"{data_bytes / 2**20:.1f} MiB in memory; batch size {batch_size}")
    rss_after_data = peak_rss_mib()

    dataset = ArrayDictDataset(tensors)
    models = Models(CaloVAE, cfg["model_args"], tensors, seed)
    n_params = sum(p.numel() for p in models.new().parameters())
    print(f"params  : {n_params:,}")
    rss_before_training = peak_rss_mib()
    # From here on ru_maxrss is the peak of the training part alone (when the kernel allows the reset).
    peak_was_reset = reset_peak_rss()

    # --- 2. training: plain loop vs Trainer, alternating --------------------------------------
    print(
        f"\n## Training step time ({args.warmup} warm-up + {args.steps} timed steps, "
        f"{args.repeats} alternating repeats)"
    )
    plain, bare = [], []
    for r in range(args.repeats):
        plain.append(plain_loop(models, dataset, batch_size, seed, args.warmup, args.steps))
        print(f"  repeat {r + 1}: plain   {plain[-1]['step_s'] * 1e3:8.2f} ms/step")
        bare.append(trainer_loop(models, dataset, batch_size, seed, args.warmup, args.steps, "bare"))
        print(f"  repeat {r + 1}: Trainer {bare[-1]['step_s'] * 1e3:8.2f} ms/step")
    rich = trainer_loop(models, dataset, batch_size, seed, args.warmup, args.steps, "rich")
    print(f"  Trainer + RichProgressBar + {rich['logger']}: {rich['step_s'] * 1e3:8.2f} ms/step")
    nolog = trainer_loop(models, dataset, batch_size, seed, args.warmup, args.steps, "nolog")
    print(f"  Trainer, training_step without self.log: {nolog['step_s'] * 1e3:8.2f} ms/step")
    rss_training = peak_rss_mib()
    rss_after_training = max(rss_before_training, rss_training)

    runs = plain + bare + [rich, nolog]
    same_batches = len({run["fingerprints"] for run in runs}) == 1
    loss_diff = max(abs(a - b) for run in runs for a, b in zip(plain[0]["losses"], run["losses"]))
    final_diff = max(abs(run["final_loss"] - plain[0]["final_loss"]) for run in runs)
    wrong_threads = [run["threads"] for run in runs if run["threads"] != threads]
    plain_ms = statistics.median(r["step_s"] for r in plain) * 1e3
    bare_ms = statistics.median(r["step_s"] for r in bare) * 1e3
    ratio = bare_ms / plain_ms
    print(f"  check: same first and last batch in every run: {'yes' if same_batches else 'NO'} "
          f"({runs[0]['epochs']} epochs); max |loss - plain| over the first {CHECK_STEPS} steps: {loss_diff:.2e}, "
          f"at the last step: {final_diff:.2e}"
          + (f"; WARNING: runs used {wrong_threads} threads" if wrong_threads else ""))

    # --- 1. generation ------------------------------------------------------------------------
    gen_model = models.new()
    per_shower = time_generation(gen_model, args.gen_repeats, seed)
    rates = [1.0 / s for s in per_shower[GEN_BATCH]]
    rate_mean, rate_std = mean_std(rates)
    rss_end = peak_rss_mib()

    # --- report -------------------------------------------------------------------------------
    print(f"\n## 1. Generation (CaloVAE.generate, {threads} threads; untrained weights: cost does not depend on them)")
    print(f"  throughput at batch {GEN_BATCH:,}: {rate_mean:,.0f} ± {rate_std:,.0f} showers/s "
          f"(mean ± std of {args.gen_repeats} repeats after 2 warm-up calls)   "
          f"goal >= {GOAL_SHOWERS_PER_S:,} showers/s on 2 CPU cores: {verdict(rate_mean >= GOAL_SHOWERS_PER_S)}")
    print("  CaloChallenge protocol, time per shower:")
    gen_ms = {}
    for batch, values in per_shower.items():
        m, s = mean_std([v * 1e3 for v in values])
        gen_ms[batch] = (m, s)
        print(f"    batch {batch:>6,}: {m:.4f} ± {s:.4f} ms/shower "
              f"({PROTOCOL_CALLS[batch]} call(s) per repeat, {args.gen_repeats} repeats)")

    print(
        f"\n## 2. Trainer overhead (batch {batch_size}, {events} events, {args.steps} timed steps, "
        f"median of {args.repeats})"
    )
    print(f"  plain PyTorch loop          : {plain_ms:8.2f} ms/step  ({_ms_list(plain)})")
    print(f"  lightning.Trainer           : {bare_ms:8.2f} ms/step  ({_ms_list(bare)})")
    print(f"  ratio Trainer / plain       : {ratio:8.3f}  ({bare_ms - plain_ms:+.2f} ms/step)   "
          f"goal <= {GOAL_TRAINER_RATIO}: {verdict(ratio <= GOAL_TRAINER_RATIO)}")
    print(f"  Trainer + RichProgressBar + default logger ({rich['logger']}, "
          f"log_every_n_steps={rich['log_every_n_steps']}): "
          f"{rich['step_s'] * 1e3:.2f} ms/step, ratio {rich['step_s'] * 1e3 / plain_ms:.3f} (single run)")
    print(f"  Trainer, training_step without self.log (diagnostic): "
          f"{nolog['step_s'] * 1e3:.2f} ms/step, ratio {nolog['step_s'] * 1e3 / plain_ms:.3f} (single run)")

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
    print(f"\nload average at the end: {format_load(load_end)} (1/5/15 min)")
    if (load_start and load_start[0] > 0.5 * cores) or (load_end and load_end[0] > threads + 0.5 * cores):
        print("WARNING: the machine was busy during the benchmark; the timings above are not reliable.")

    rows = [
        (f"generation throughput, batch {GEN_BATCH:,}", f"{rate_mean:,.0f} ± {rate_std:,.0f} showers/s",
         f"goal ≥ {GOAL_SHOWERS_PER_S:,} showers/s", f"{rate_mean / GOAL_SHOWERS_PER_S:.2f}× goal"),
        *[
            (f"generation time per shower, batch {b:,}", f"{m:.4f} ± {s:.4f} ms", "CaloChallenge protocol", "—")
            for b, (m, s) in gen_ms.items()
        ],
        (f"training step, Trainer (batch {batch_size})", f"{bare_ms:.2f} ms", f"plain PyTorch loop {plain_ms:.2f} ms",
         f"{ratio:.3f} (goal ≤ {GOAL_TRAINER_RATIO})"),
        ("training step, Trainer + rich bar + logger", f"{rich['step_s'] * 1e3:.2f} ms",
         f"plain PyTorch loop {plain_ms:.2f} ms", f"{rich['step_s'] * 1e3 / plain_ms:.3f}"),
        ("peak RSS of the process (ru_maxrss)",
         (f"training {rss_training:.0f} MiB; with data making {rss_after_training:.0f} MiB" if peak_was_reset
          else f"{rss_after_training:.0f} MiB after training"),
         f"training data {data_bytes / 2**20:.0f} MiB ({events:,} events); imports alone {rss_start:.0f} MiB", "—"),
    ]
    print("\n## README table\n")
    print("| quantity | hepgen | reference | ratio/goal | machine |")
    print("|---|---|---|---|---|")
    for quantity, value, reference, goal in rows:
        print(f"| {quantity} | {value} | {reference} | {goal} | {machine} |")


if __name__ == "__main__":
    main()
