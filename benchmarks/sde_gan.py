"""Benchmark of SDEGAN on CPU: training step under Lightning vs the reference's plain loop; sampling.

    python benchmarks/sde_gan.py                  # about 1.5 min at 0.35 s/step; 5 min at load 4-5 on 2 cores
    python benchmarks/sde_gan.py --quick          # under 1 min at 0.35 s/step; 2 min at load 4-5
    python benchmarks/sde_gan.py --reference DIR  # adds torchsde's unmodified examples/sde_gan.py (DIR: a checkout)

Sizes of torchsde's ``examples/sde_gan.py`` (the issue's reference): data_size 1, initial noise 5,
noise 3, hidden 16, width 16, 1 layer, batch 1024, Adadelta 2e-4 / 1e-3 with weight decay 0.01,
reversible Heun with its adjoint, dt 1.0, n_critic 1, clipping; 8192 OU paths of T = 64 with 30 %
of the values NaN, made here (seeded Euler-Maruyama in numpy) in the time-series contract SDEGAN reads.

1. Training step, as the median of interleaved pairs (the scheme of benchmarks/calo_vae.py). A bare
   Trainer fits SDEGAN; the plain loop replicates the reference's loop (batch; fake = G; loss =
   mean D(fake) - mean D(real); one backward; G's gradients negated; both Adadelta steps; both
   zeroed; D's linear weights clipped to +-1/out_features; SWA past swa_start) around hepgen's own
   networks, with the same initial weights, batches (same sampler) and noise (the global RNG state is
   swapped at each switch): the losses of both agree bit for bit at every step (checked). The Trainer
   is paused inside ``fit`` every ``--block`` steps and the plain block runs there, so both sides of
   a pair see the same machine load. Per-pair ratios Trainer/plain of wall and CPU time
   (``time.process_time``, which waiting for a core does not stretch): median, 95 % CI, IQR.
   ``--reference DIR`` runs the unmodified example's ``main()`` as a third side, in a thread paused
   at its step boundaries (its every-10-steps ``evaluate_loss`` and its plots are stubbed out).
2. Where the time goes: cProfile (CPU time) of ``--profile-steps`` steps of each side, by phase,
   by package and the top functions.
3. Sampling: paths/s of ``SDEGAN.generate(n)`` for n = 1, 1024, 8192 (mean +- std).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib.util
import logging
import platform
import pstats
import sys
import tempfile
import threading
import time
import types
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torchsde
from torch import nn
from torch.optim.swa_utils import AveragedModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning  # noqa: E402
from lightning.pytorch import Callback  # noqa: E402

from benchmarks.calo_vae import (  # noqa: E402
    bare_trainer, cpu_model, format_load, load_average, machine_busy, mean_std, set_sampler_epoch, spread,
    train_loader, usable_cores,
)  # fmt: skip
from datamodules.datasets import ArrayDictDataset  # noqa: E402
from datamodules.timeseries import OUDataModule  # noqa: E402
from hepgen.models.sde_gan import MAX_ENTROPY, SDEGAN  # noqa: E402
from hepgen.nn.sde import CDEDiscriminator, SDEGenerator  # noqa: E402

GOAL = 1.0
REFERENCE_S_PER_STEP = 0.35  # ../shared/reference/sde_gan.md section 3: the reference, one core, this machine
MODEL_ARGS = dict(data_size=1, t_size=64, initial_noise=5, noise=3, hidden=16, width=16, layers=1,
                  solver="reversible_heun", adjoint=True, dt=1.0, n_critic=1, lipschitz="clip")  # fmt: skip
LR_G, LR_D, WEIGHT_DECAY, BATCH, PATHS = 2e-4, 1e-3, 0.01, 1024, 8192
SIZES = {"full": dict(warmup=4, block=4, pairs=20, profile_steps=2, gen_repeats=5),
         "quick": dict(warmup=2, block=2, pairs=8, profile_steps=1, gen_repeats=3)}  # fmt: skip


# ------------------------------------------------------------------------------- data
def make_ou(n: int = PATHS, t_size: int = 64, seed: int = 0) -> dict:
    """The reference's OU training paths as hepgen's OUDataModule makes them (30 % of values NaN):
    ``times`` (n, T), ``values`` (n, T, 1), ``path`` (n, T, 2) with the NaNs filled."""
    datamodule = OUDataModule(t_size=t_size, made_events=n, made_seed=seed, val_fraction=0.0, test_fraction=0.0)
    datamodule.setup("fit")
    return datamodule.training_sample()


# ------------------------------------------------------------------------------- the sides
class PlainLoop:
    """The training loop of torchsde's examples/sde_gan.py (``main()``) around hepgen's networks.

    Like the reference it normalises the data once (the same expression as ``SDEGAN._normalized``,
    elementwise, so bit-identical), and draws the noise where SDEGAN draws it: initial noise, then the
    Brownian motion's entropy, from the global stream, whose state it keeps between its blocks.
    """

    def __init__(self, model: SDEGAN, data: dict, seed: int, swa_start: int) -> None:
        self.G: SDEGenerator = model.generator
        self.D: CDEDiscriminator = model.discriminator
        self.ts, self.initial_noise, self.swa_start = model.ts, model.hparams.initial_noise, swa_start
        self.g_opt = torch.optim.Adadelta(self.G.parameters(), lr=LR_G, weight_decay=WEIGHT_DECAY)
        self.d_opt = torch.optim.Adadelta(self.D.parameters(), lr=LR_D, weight_decay=WEIGHT_DECAY)
        self.averaged = (AveragedModel(self.G), AveragedModel(self.D))
        path = data["path"]
        real = model.normalized(path)
        self.loader = train_loader(ArrayDictDataset({"path": real}), BATCH)  # the Trainer's sampler and seed
        self.step, self.epoch, self.losses = 0, 0, []
        set_sampler_epoch(self.loader, 0)
        self.batches = iter(self.loader)
        self.pending = next(self.batches)
        torch.manual_seed(seed)  # as before trainer.fit
        self.rng = torch.get_rng_state()

    def _next_batch(self) -> dict:
        try:
            return next(self.batches)
        except StopIteration:  # epoch end, in Lightning's order
            self.epoch += 1
            set_sampler_epoch(self.loader, self.epoch)
            self.batches = iter(self.loader)
            return next(self.batches)

    def train_step(self) -> None:
        real = self.pending["path"]
        n = len(real)
        initial = torch.randn(n, self.initial_noise)
        entropy = int(torch.randint(MAX_ENTROPY, (1,)))
        fake = torch.cat([self.ts.expand(n, -1).unsqueeze(-1), self.G(self.ts, initial, entropy)], dim=-1)
        loss = self.D(fake).mean() - self.D(real).mean()
        loss.backward()
        for param in self.G.parameters():
            param.grad *= -1
        self.g_opt.step()
        self.d_opt.step()
        self.g_opt.zero_grad()
        self.d_opt.zero_grad()
        with torch.no_grad():
            for module in self.D.modules():
                if isinstance(module, nn.Linear):
                    lim = 1 / module.out_features
                    module.weight.clamp_(-lim, lim)
        if self.step >= self.swa_start:  # hepgen's swa_start 5001 is the reference's `step > 5000`
            for average, network in zip(self.averaged, (self.G, self.D)):
                average.update_parameters(network)
        self.losses.append(loss.detach())
        self.step += 1
        self.pending = self._next_batch()  # fetched at the end, as Lightning prefetches

    def run(self, n_steps: int, profiler: cProfile.Profile | None = None) -> tuple[float, float]:
        """``n_steps`` steps: (wall, CPU) seconds from the start of the first to the start of the next."""
        torch.set_rng_state(self.rng)
        with torch.enable_grad(), (profiler or contextlib.nullcontext()):
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(n_steps):
                self.train_step()
            seconds = (time.perf_counter() - t0, time.process_time() - c0)
        self.rng = torch.get_rng_state()
        return seconds


def load_example(checkout: Path) -> types.ModuleType:
    """torchsde's ``examples/sde_gan.py`` from a checkout, imported as a module (its code unchanged)."""
    sys.modules.setdefault("fire", types.ModuleType("fire"))  # imported by the example, used in __main__ only
    spec = importlib.util.spec_from_file_location("torchsde_example_sde_gan", checkout / "examples" / "sde_gan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ReferenceRunner:
    """torchsde's examples/sde_gan.py ``main()``, unmodified, in a thread that pauses at step boundaries.

    Its ``tqdm.tqdm(range(steps))`` is replaced by :meth:`_steps`, which hands control back to the main
    thread every ``run(n)`` steps; only one side runs at a time, each with its own global RNG states.
    """

    def __init__(self, checkout: Path, steps: int, threads: int) -> None:
        self.module = module = load_example(checkout)
        made, make = {}, module.get_data

        def get_data(**kwargs):  # main() makes new data at the end, for its plots: reuse the first
            return made.get("data") or made.setdefault("data", make(**kwargs))

        module.get_data = get_data
        module.evaluate_loss = lambda *args, **kwargs: 0.0  # every 10 steps; not part of the step time
        module.plot = module.print = lambda *args, **kwargs: None  # plots; "CUDA not available"
        module.tqdm = types.SimpleNamespace(tqdm=self._steps)
        self.go, self.paused = threading.Semaphore(0), threading.Semaphore(0)
        self.budget, self.seconds, self.threads, self.error = 0, (0.0, 0.0), None, None
        self.rng = torch.get_rng_state(), np.random.get_state()
        self.thread = threading.Thread(target=self._main, args=(steps, threads), daemon=True)
        self.run(0, start=True)  # makes its data, then pauses at the start of step 0

    def _main(self, steps: int, threads: int) -> None:
        try:
            torch.set_num_threads(threads)  # OpenMP keeps it per thread
            self.threads = torch.get_num_threads()
            self.module.main(steps=steps)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            self.error = err
        finally:
            self.paused.release()

    def _steps(self, steps: range):
        runner = self

        class Steps:
            def __iter__(self):
                for step in steps:
                    if runner.budget == 0:
                        runner.seconds = (time.perf_counter() - runner.t0, time.process_time() - runner.c0)
                        runner.paused.release()
                        runner.go.acquire()
                        runner.t0, runner.c0 = time.perf_counter(), time.process_time()
                    runner.budget -= 1
                    yield step

            def write(self, *args, **kwargs):  # the example prints its losses with trange.write
                pass

        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return Steps()

    def run(self, n_steps: int, start: bool = False) -> tuple[float, float]:
        """``n_steps`` steps of the example (all remaining ones for ``n_steps < 0``): (wall, CPU) seconds."""
        caller = torch.get_rng_state(), np.random.get_state()
        torch.set_rng_state(self.rng[0])
        np.random.set_state(self.rng[1])
        self.budget = n_steps
        if start:
            self.thread.start()
        else:
            self.go.release()
        if n_steps >= 0:
            self.paused.acquire()
        else:
            self.thread.join()
        self.rng = torch.get_rng_state(), np.random.get_state()
        torch.set_rng_state(caller[0])
        np.random.set_state(caller[1])
        if self.error is not None:
            raise RuntimeError("the reference example failed") from self.error
        return self.seconds


class Interleaver(Callback):
    """Pauses ``Trainer.fit`` every ``block`` steps after ``warmup`` and runs the other sides' blocks.

    Order: Trainer warm-up, other sides' warm-ups, then per pair: plain block, [reference block,]
    Trainer block; then cProfile of ``profile`` plain steps and ``profile`` Trainer steps.
    """

    def __init__(self, plain: PlainLoop, reference: ReferenceRunner | None, sizes: dict, progress) -> None:
        self.plain, self.reference, self.sizes, self.progress = plain, reference, sizes, progress
        self.blocks: list[dict] = []
        self.losses: list[torch.Tensor] = []
        self.step, self.threads, self.start = 0, None, None
        # CPU time: on a shared machine waiting for a core would land on whatever function was running
        self.profiles = {"plain": cProfile.Profile(time.process_time), "Trainer": cProfile.Profile(time.process_time)}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        warmup, block, pairs, profile = (self.sizes[k] for k in ("warmup", "block", "pairs", "profile_steps"))
        step, self.step = self.step, self.step + 1
        end = warmup + pairs * block
        if step == end + profile:
            self.profiles["Trainer"].disable()
        if step < warmup or step > end or (step - warmup) % block:
            return
        if self.start is not None:
            self.blocks[-1]["Trainer"] = (now - self.start[0], cpu - self.start[1])
            self.progress(self.blocks[-1]["Trainer"][0] / self.blocks[-1]["plain"][0])
        self.threads = torch.get_num_threads()
        trainer_rng = torch.get_rng_state()
        if step == end:
            self.plain.run(profile, self.profiles["plain"])
        else:
            if step == warmup:
                self.plain.run(warmup)
                if self.reference:
                    self.reference.run(warmup)
            self.blocks.append({"plain": self.plain.run(block)})
            if self.reference:
                self.blocks[-1]["reference"] = self.reference.run(block)
        torch.set_rng_state(trainer_rng)
        if step == end:
            self.profiles["Trainer"].enable()
        self.start = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["d_loss"].detach())


# ------------------------------------------------------------------------------- profile report
PACKAGES = (("/torchsde/", "torchsde (Python)"), ("/trampoline/", "torchsde (Python)"),
            ("/torchcde/", "torchcde (Python)"), ("/lightning/", "lightning (Python)"),
            ("/torch/optim/", "torch.optim (Python)"), ("/torch/nn/", "torch.nn (Python: Module calls)"),
            ("/torch/autograd/", "torch.autograd (Python)"), ("/torch/", "torch (other Python)"),
            (f"{REPO}/hepgen/", "hepgen (Python)"), (f"{REPO}/benchmarks/", "this benchmark's loop"))  # fmt: skip


def package_of(file: str, name: str) -> str:
    if file == "~":  # C functions
        if "run_backward" in name:
            return "autograd engine (C++: backward kernels)"
        return "torch ops (C++: kernels + dispatch)" if "torch" in name else "Python built-ins"
    return next((label for key, label in PACKAGES if key in file), "other Python")


def _code_key(fn) -> tuple:
    code = fn.__code__
    return code.co_filename, code.co_firstlineno, code.co_name


PHASES = {
    "generator forward (SDE solve)": lambda k: k == _code_key(SDEGenerator.forward),
    "critic forward (2 CDE solves)": lambda k: k == _code_key(CDEDiscriminator.forward),
    "backward (3 adjoint solves)": lambda k: k[0] == "~" and "run_backward" in k[2],
    "Adadelta steps (2)": lambda k: k[0].endswith("optim/adadelta.py") and k[2] == "step",
}


def profile_report(profile: cProfile.Profile, steps: int) -> dict:
    stats = pstats.Stats(profile).stats
    total = sum(v[2] for v in stats.values())  # own times add up to the profiled time
    phases = {name: sum(v[3] for k, v in stats.items() if match(k)) for name, match in PHASES.items()}
    phases["everything else (data, clipping, loop, hooks)"] = total - sum(phases.values())
    packages = defaultdict(float)
    for (file, _, name), v in stats.items():
        packages[package_of(file, name)] += v[2]
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:12]
    return {"total": total / steps, "phases": {k: v / steps for k, v in phases.items()},
            "packages": {k: v / steps for k, v in sorted(packages.items(), key=lambda kv: -kv[1])},
            "top": [(f"{Path(f).name}:{line}({n})" if f != "~" else n, v[0], v[2] / steps) for (f, line, n), v in top]}


# ------------------------------------------------------------------------------- statistics and report
def ratio_stats(blocks: list[dict], num: str, den: str) -> dict:
    stats = spread([b[num][0] / b[den][0] for b in blocks])
    stats["cpu"] = spread([b[num][1] / b[den][1] for b in blocks])
    return stats


def verdict(s: dict) -> str:
    return "met" if s["ci_hi"] <= GOAL else "NOT met" if s["ci_lo"] > GOAL else "undecided (noise)"


def ratio_text(s: dict) -> str:
    return f"{s['median']:.3f} (95 % CI {s['ci_lo']:.3f}–{s['ci_hi']:.3f}; IQR {s['q1']:.3f}–{s['q3']:.3f})"


def per_step(blocks: list[dict], side: str, block: int, cpu: bool = False) -> float:
    return float(np.median([b[side][int(cpu)] for b in blocks])) / block


def time_sampling(model: SDEGAN, repeats: int, seed: int) -> dict[int, list[float]]:
    model.eval()
    gen, rates = torch.Generator().manual_seed(seed), {}
    for n in (1, BATCH, PATHS):
        model.generate(n, gen)  # warm-up
        rates[n] = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.generate(n, gen)
            rates[n].append(n / (time.perf_counter() - t0))
    return rates


def print_profiles(reports: dict, steps: int) -> None:
    print("  profiled CPU-s/step: " + ", ".join(f"{side} {r['total']:.3f}" for side, r in reports.items()))
    for title, key in (("phase (cumulative)", "phases"), ("package (own time)", "packages")):
        print(f"\n  | {title} | plain CPU-s/step | % | Trainer CPU-s/step | % |\n  |---|---|---|---|---|")
        for name in dict.fromkeys([*reports["plain"][key], *reports["Trainer"][key]]):
            cells = [(r[key].get(name, 0.0), 100 * r[key].get(name, 0.0) / r["total"]) for r in reports.values()]
            print(f"  | {name} | " + " | ".join(f"{v:.4f} | {pct:.1f}" for v, pct in cells) + " |")
    for side, r in reports.items():
        print(f"\n  top functions by own time, {side} (CPU-s/step, calls/step):")
        for name, calls, seconds in r["top"]:
            print(f"    {seconds:8.4f} {calls // steps:6d}  {name}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, as the reference)")
    parser.add_argument("--warmup", type=int, help="untimed steps of each side first (full 4, quick 2)")
    parser.add_argument("--block", type=int, help="training steps per block (full 4, quick 2)")
    parser.add_argument("--pairs", type=int, help="interleaved rounds of blocks (full 20, quick 8)")
    parser.add_argument("--steps", type=int, help="timed steps per side: sets --pairs to ceil(steps / block)")
    parser.add_argument("--profile-steps", type=int, help="profiled steps per side (full 2, quick 1)")
    parser.add_argument("--gen-repeats", type=int, help="timed generate() calls per n (full 5, quick 3)")
    parser.add_argument("--swa-start", type=int, default=5001, help="first step with SWA updates (5001: none here)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", type=Path, help="a torchsde checkout: its examples/sde_gan.py as a third side")
    parser.add_argument("--quick", action="store_true", help="a short run (about 1 min on a quiet machine)")
    args = parser.parse_args(argv)
    sizes = dict(SIZES["quick" if args.quick else "full"])
    sizes.update({k: getattr(args, k) for k in sizes if getattr(args, k) is not None})
    if args.steps:
        sizes["pairs"] = -(-args.steps // sizes["block"])
    if min(sizes.values()) < 1 or args.threads < 1:
        parser.error("sizes and --threads must be >= 1")
    if args.reference and not (args.reference / "examples" / "sde_gan.py").is_file():
        parser.error(f"--reference {args.reference}: no examples/sde_gan.py there")
    started, cores, load_start = time.perf_counter(), usable_cores(), load_average()
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec|val_dataloader).*")
    machine = (f"{cpu_model()}, {cores} cores, torch {torch.__version__}, lightning {lightning.__version__}, "
               f"torchsde {torchsde.__version__}, {args.threads} thread{'s' * (args.threads > 1)}")
    print("# hepgen benchmark: SDEGAN on CPU" + (" (--quick)" if args.quick else ""))
    print(f"machine : {machine} | {platform.platform()} | python {platform.python_version()}")
    busy = machine_busy(load_start, cores)
    print(f"load    : {format_load(load_start)} (1/5/15 min) at start"
          + (" -- BUSY: absolute times are unreliable; the pair ratios compare like with like" if busy else ""))

    t0 = time.perf_counter()
    data = make_ou(seed=args.seed)
    torch.manual_seed(args.seed)
    template = SDEGAN(**MODEL_ARGS, swa_start=args.swa_start)
    template.fit_normalization(data["values"])
    state = {k: v.clone() for k, v in template.state_dict().items()}

    def new_model() -> SDEGAN:
        model = SDEGAN(**MODEL_ARGS, swa_start=args.swa_start)
        model.load_state_dict(state)
        return model

    n_params = [sum(p.numel() for p in net.parameters()) for net in (template.generator, template.discriminator)]
    print(f"data    : {PATHS} OU paths x 64, {float(data['values'].isnan().float().mean()):.1%} NaN, made in "
          f"{time.perf_counter() - t0:.1f} s; batch {BATCH}; parameters G {n_params[0]}, D {n_params[1]}")
    end = sizes["warmup"] + sizes["pairs"] * sizes["block"]
    reference = ReferenceRunner(args.reference, end + 1, args.threads) if args.reference else None
    print(f"\n## 1. Training step: {sizes['warmup']} warm-up steps per side, then {sizes['pairs']} rounds of "
          f"{sizes['block']}-step blocks ({'plain, reference, Trainer' if reference else 'plain, Trainer'})")
    print("  pair ratios Trainer/plain:", end="", flush=True)
    plain = PlainLoop(new_model(), data, args.seed, args.swa_start)
    driver = Interleaver(plain, reference, sizes, lambda r: print(f" {r:.3f}", end="", flush=True))
    with tempfile.TemporaryDirectory(prefix="hepgen-bench-") as tmp:
        trainer = bare_trainer(Path(tmp), 2 * (end + sizes["profile_steps"] + 1), 50)  # 2 optimizer steps a batch
        trainer.callbacks.append(driver)
        model = new_model()  # building it draws from the global stream: before the seed
        torch.manual_seed(args.seed)
        trainer.fit(model, train_dataloaders=train_loader(ArrayDictDataset(data), BATCH))
    print()
    if reference:
        reference.run(-1)  # its last step and the end of its main()
    blocks, block = driver.blocks, sizes["block"]
    n = min(len(plain.losses), len(driver.losses))
    identical = n > end and all(torch.equal(a, b) for a, b in zip(plain.losses[:n], driver.losses[:n]))
    stats = ratio_stats(blocks, "Trainer", "plain")
    for side in ("plain", "Trainer", "reference") if reference else ("plain", "Trainer"):
        print(f"  {side:<9}: {per_step(blocks, side, block):.3f} s/step wall, "
              f"{per_step(blocks, side, block, cpu=True):.3f} CPU-s/step (medians of the blocks)")
    print(f"  Trainer/plain wall: {ratio_text(stats)}, min–max {stats['min']:.3f}–{stats['max']:.3f}, {stats['n']} "
          f"pairs; goal ≤ {GOAL}: {verdict(stats)}\n  Trainer/plain CPU : {ratio_text(stats['cpu'])}")
    if reference:
        for num, den in (("plain", "reference"), ("Trainer", "reference")):
            r = ratio_stats(blocks, num, den)
            print(f"  {num}/{den} wall: {ratio_text(r)}; CPU {ratio_text(r['cpu'])}")
    print(f"  check: losses bit-identical at all {n} steps: {identical}; torch threads: Trainer {driver.threads}"
          + (f", reference {reference.threads}" if reference else "") + f" (asked {args.threads})")

    print(f"\n## 2. Where the time goes (cProfile, CPU time, {sizes['profile_steps']} step(s) per side; "
          "the profiler's own cost inflates the Python parts)")
    print_profiles({side: profile_report(p, sizes["profile_steps"]) for side, p in driver.profiles.items()},
                   sizes["profile_steps"])

    rates = time_sampling(new_model(), sizes["gen_repeats"], args.seed)
    print(f"\n## 3. Sampling (SDEGAN.generate; mean ± std of {sizes['gen_repeats']} calls after a warm-up)")
    for n_paths, values in rates.items():
        print(f"  n = {n_paths:5d}: {'{:,.0f} ± {:,.0f}'.format(*mean_std(values))} paths/s")

    load_end = load_average()
    print(f"\nload at the end: {format_load(load_end)}; run took {(time.perf_counter() - started) / 60:.1f} min")
    rows = [(f"training step, Trainer (batch {BATCH})", f"{per_step(blocks, 'Trainer', block):.3f} s/step",
             f"plain loop of the reference around hepgen's networks: {per_step(blocks, 'plain', block):.3f} s/step",
             f"{ratio_text(stats)}; CPU {stats['cpu']['median']:.3f}; goal ≤ {GOAL}: {verdict(stats)}")]
    if reference:
        r = ratio_stats(blocks, "plain", "reference")
        rows.append(("training step, torchsde's examples/sde_gan.py, unmodified",
                     f"{per_step(blocks, 'reference', block):.3f} s/step",
                     f"{REFERENCE_S_PER_STEP} s/step in ../shared/reference/sde_gan.md",
                     f"plain/reference {ratio_text(r)}"))
    rows += [(f"sampling, generate({n_paths})", "{:,.0f} ± {:,.0f} paths/s".format(*mean_std(v)), "—", "—")
             for n_paths, v in rates.items()]
    print(f"\n## README table\n\nMachine: {machine}; load {format_load(load_start)} at start, "
          f"{format_load(load_end)} at the end. Ratios: median of {sizes['pairs']} interleaved pairs of "
          f"{block}-step blocks (95 % CI; IQR); losses bit-identical at all {n} steps: {identical}.\n")
    print("| quantity | hepgen | reference | ratio / goal |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
