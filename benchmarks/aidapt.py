"""Benchmark of the A(i)DAPT folding GAN training step on CPU: Trainer vs a plain PyTorch loop.

    python benchmarks/aidapt.py [--steps S] [--rounds R] [--batch-size B] [--threads T]

One training step is the reference's (JLab ``tf_cgan_v0``): generate one fake batch, 5
discriminator updates on [fake; real] (2B rows), 1 generator update, batch B = 10,000, with the
reference networks (G 104-128-256-512-4 with BatchNorm, D 8-256-128-64-1) and the reference
settings (plain tanh output, frozen BatchNorm, Adam lr 1e-5, beta_1 0.5, eps 1e-7).

* ``plain``: a hand-written PyTorch loop around the same ``hepgen.nn.cgan`` modules, the same
  optimizers and the same operations as ``FoldingGAN.training_step`` (fake under no_grad, D's
  parameters switched off during the G update).
* ``trainer``: ``FoldingGAN`` fitted by ``lightning.Trainer`` (no logger, no checkpointing, no
  progress bar) on the same batches; each step is timed from ``on_train_batch_start`` to
  ``on_train_batch_end``.

Plain and Trainer blocks alternate (``--rounds``); after a warm-up, medians per step are
reported, with their ratio (goal <= 1.05) and the process's peak memory. The TensorFlow
reference's 0.17 s/step on this kind of machine is quoted from ``aidapt_baseline.md`` (it needs
TensorFlow, which hepgen does not install).
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lightning.pytorch import Callback, Trainer  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from datamodules.base import ArrayDictDataset, _already_batched  # noqa: E402
from hepgen.models.aidapt import FoldingGAN  # noqa: E402

TF_REFERENCE_S_PER_STEP = 0.17  # aidapt_baseline.md §3, same kind of 2-core AMD EPYC
GOAL_TRAINER_RATIO = 1.05


def made_batches(n_batches: int, batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Physical-looking invariants: vertex uniform in the phase-space box, detector = vertex + smearing."""
    g = torch.Generator().manual_seed(seed)
    n = n_batches * batch_size
    low, high = torch.tensor([1.16, 0.08, -6.0, 0.0]), torch.tensor([7.2, 3.5, 0.0, 6.28])
    vertex = low + (high - low) * torch.rand(n, 4, generator=g)
    detector = vertex + 0.02 * torch.randn(n, 4, generator=g)
    s_vertex = 6.5 + 1.5 * torch.rand(n, 1, generator=g)
    return {"vertex": vertex, "detector": detector, "s_vertex": s_vertex}


def reference_model(events: dict[str, torch.Tensor], seed: int = 0) -> FoldingGAN:
    torch.manual_seed(seed)
    model = FoldingGAN()  # reference settings are the defaults
    model.fit_scalers(events["vertex"], events["detector"], events["s_vertex"])
    return model


def plain_loop(model: FoldingGAN, events: dict, batch_size: int, steps: int, warmup: int) -> list[float]:
    """The reference step written out by hand; returns seconds per timed step."""
    opt_g, opt_d = model.configure_optimizers()
    model.train()
    n_batches = len(events["vertex"]) // batch_size
    times = []
    for step in range(warmup + steps):
        i = step % n_batches
        batch = {k: v[i * batch_size : (i + 1) * batch_size] for k, v in events.items()}
        start = time.perf_counter()
        label = model.v_scaler(batch["vertex"])
        real = model.d_scaler(batch["detector"])
        with torch.no_grad():
            fake = model.generator(label, torch.randn(batch_size, 100))
        d_label, samples = torch.cat([label, label]), torch.cat([fake, real])
        targets = torch.cat([torch.zeros(batch_size), torch.ones(batch_size)]) + 0.05 * torch.rand(2 * batch_size)
        for _ in range(5):
            d_loss = F.binary_cross_entropy_with_logits(model.discriminator(d_label, samples), targets)
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        model.discriminator.requires_grad_(False)
        logits = model.discriminator(label, model.generator(label, torch.randn(batch_size, 100)))
        g_loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        model.discriminator.requires_grad_(True)
        float(g_loss)  # wait for the step, as the Trainer's logging does
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


class StepTimer(Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.times, self._start = warmup, [], 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        elapsed = time.perf_counter() - self._start
        if self.warmup > 0:
            self.warmup -= 1
        else:
            self.times.append(elapsed)


def trainer_loop(model: FoldingGAN, events: dict, batch_size: int, steps: int, warmup: int) -> list[float]:
    loader = DataLoader(ArrayDictDataset(events), batch_size=batch_size, collate_fn=_already_batched)
    timer = StepTimer(warmup)
    trainer = Trainer(
        max_steps=6 * (warmup + steps), logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", callbacks=[timer], limit_val_batches=0,
        max_epochs=-1,
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=loader)
    return timer.times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per block")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per block")
    parser.add_argument("--rounds", type=int, default=3, help="alternating plain/Trainer blocks")
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    events = made_batches(4, args.batch_size)
    results: dict[str, list[float]] = {"plain": [], "trainer": []}
    for r in range(args.rounds):
        for name, loop in (("plain", plain_loop), ("trainer", trainer_loop)):
            times = loop(reference_model(events), events, args.batch_size, args.steps, args.warmup)
            results[name] += times
            print(f"round {r + 1} {name:8s} median {statistics.median(times):.3f} s/step", flush=True)
    plain, trainer = (statistics.median(results[k]) for k in ("plain", "trainer"))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
        platform.processor() or platform.machine(),
    ) if Path("/proc/cpuinfo").is_file() else platform.machine()
    print()
    print(f"machine: {cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print("| quantity | value |")
    print("|---|---|")
    print(f"| plain PyTorch loop, s/step (median) | {plain:.3f} |")
    print(f"| Trainer (FoldingGAN), s/step (median) | {trainer:.3f} |")
    print(f"| Trainer / plain | {trainer / plain:.3f} (goal <= {GOAL_TRAINER_RATIO}) |")
    print(f"| Trainer / TF reference ({TF_REFERENCE_S_PER_STEP} s/step, quoted) | {trainer / TF_REFERENCE_S_PER_STEP:.2f} |")
    print(f"| peak RSS | {peak_mib:.0f} MiB |")


if __name__ == "__main__":
    main()
