"""Training throughput of every method on 1 process and on N DDP processes, through ``hepgen fit``.

    python benchmarks/ddp.py                                   # CPU: 1 vs 2 processes (gloo), every method
    python benchmarks/ddp.py --accelerator gpu --devices 1 4   # a GPU node: 1 GPU vs 4 (NCCL)
    python benchmarks/ddp.py --methods calo_vae sde_gan --batches 60

Each run is the method's quickstart config as ``hepgen fit`` runs it, with made data at a small
size (made once, before the timings), no validation, no logger, stopped after ``--batches``.
Each process keeps the config's batch, so N processes train N times the events per step (what
``sbatch/fit.sbatch`` does when given more GPUs). A callback records the wall time of the
steps after a warm-up, so process start, data loading and the first steps (allocations, kernel
selection) are left out. Printed: events per second on 1 and on N processes, and their ratio.

On a CPU machine, several processes share the same cores, so the ratio measures DDP's cost
(gradient all-reduce over gloo, the second process's share of the cores), not a speed-up: CPU
DDP proves the multi-process code right (tests/test_ddp.py), it does not make training faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parents[1]

#: method -> (experiment, options that make its data small and its step the config's own)
METHODS = {
    "calo_vae": ("experiments/calo_vae/quickstart.yaml", ["--data.init_args.made_events", "20000"]),
    "aidapt": ("experiments/aidapt/quickstart_inner.yaml", ["--data.init_args.made_events", "100000"]),
    "sde_gan": ("experiments/sde_gan/ou_fast.yaml", ["--data.init_args.made_events", "4096"]),
    "uvcgan_s": ("experiments/uvcgan_s/quickstart.yaml", ["--data.init_args.made_events", "2000",
                                                          "--data.init_args.train_events", "800"]),  # fmt: skip
    "ad": ("experiments/ad/generate_toy_nr.yaml", []),
}


class StepTimer(Callback):
    """Time ``batches`` training batches after ``warmup`` others, write seconds and events to ``out``, stop.

    Counted in batches, not optimizer steps: a GAN's batch makes several optimizer steps.
    """

    def __init__(self, out: str, batches: int, warmup: int = 10) -> None:
        self.out, self.batches, self.warmup = Path(out), batches, warmup
        self.start: float | None = None
        self.events = 0
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.steps == self.warmup:
            trainer.strategy.barrier()
            self.start = time.perf_counter()
            self.events = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.steps += 1
        if self.start is not None:
            self.events += _batch_size(batch) * trainer.world_size
        if self.steps == self.warmup + self.batches:
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        trainer.strategy.barrier()
        if trainer.is_global_zero and self.start is not None:
            seconds = time.perf_counter() - self.start
            record = {"seconds": seconds, "events": self.events, "steps": self.steps - self.warmup}
            self.out.write_text(json.dumps(record))


def _batch_size(batch) -> int:
    """Events in a batch: the first dimension of its first tensor (batches nest dicts and lists)."""
    while isinstance(batch, (dict, list, tuple)):
        batch = next(iter(batch.values())) if isinstance(batch, dict) else batch[0]
    return int(batch.shape[0])


def run(
    method: str, devices: int, accelerator: str, batches: int, workdir: Path, threads: int, warmup: int = 10
) -> dict:
    """``batches`` training batches of ``method`` on ``devices`` processes, timed after ``warmup`` others."""
    config, options = METHODS[method]
    out = workdir / f"{method}_{accelerator}{devices}.json"
    args = [
        sys.executable, "-m", "hepgen", "fit", "-c", config, *options,
        "--data.init_args.data_dir", str(workdir / "data" / method),
        "--run.root", str(workdir / "runs"), "--run.threads", str(threads),
        "--trainer.accelerator", accelerator, "--trainer.devices", str(devices),
        "--trainer.max_epochs", "100000", "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
        "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks+=benchmarks.ddp.StepTimer", f"--trainer.callbacks.out={out}",
        f"--trainer.callbacks.batches={batches}", f"--trainer.callbacks.warmup={warmup}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0 or not out.is_file():
        output = (done.stdout + done.stderr)[-3000:]
        raise RuntimeError(f"{method} on {devices} {accelerator} device(s) failed:\n{output}")
    record = json.loads(out.read_text())
    record["events_per_s"] = record["events"] / record["seconds"]
    return record


def machine(accelerator: str) -> str:
    if accelerator == "gpu":
        import torch

        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    return f"{os.cpu_count()} cores, {cpu or platform.processor()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--devices", nargs=2, type=int, default=[1, 2], metavar=("ONE", "MANY"))
    parser.add_argument("--batches", type=int, default=30, help="timed training batches per run, after 10 untimed")
    args = parser.parse_args()
    one, many = args.devices
    # on CPU each process gets its share of the cores, as sbatch/fit.sbatch's --cpus-per-task does
    threads = {n: max(1, (os.cpu_count() or 1) // n) if args.accelerator == "cpu" else 4 for n in (one, many)}
    print(f"# DDP throughput, {args.accelerator}: {machine(args.accelerator)}; torch threads per process {threads}")
    print(f"| method | events/s, {one} process(es) | events/s, {many} processes | ratio {many}/{one} |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for method in args.methods:
            run(method, 1, args.accelerator, 1, workdir, threads[one], warmup=0)  # makes the data; not shown
            rates = [run(method, n, args.accelerator, args.batches, workdir, threads[n])["events_per_s"]
                     for n in (one, many)]  # fmt: skip
            print(f"| {method} | {rates[0]:,.0f} | {rates[1]:,.0f} | {rates[1] / rates[0]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
