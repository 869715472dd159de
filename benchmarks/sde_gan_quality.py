"""SDE-GAN sample quality against torchsde's ``examples/sde_gan.py`` after the same number of steps.

    # 1. the reference: its unmodified main(), resumable, with its state kept every --keep-every steps
    python benchmarks/sde_gan_quality.py reference --checkout DIR --steps 10000 --out REFDIR
    # 2. hepgen: the documented run (keep a checkpoint at the same steps, e.g. with --watch below)
    hepgen fit -c experiments/sde_gan/ou_basic.yaml --run.threads 1
    python benchmarks/sde_gan_quality.py watch RUN/checkpoints/last.ckpt SNAPDIR
    # 3. both against the same exact OU paths
    python benchmarks/sde_gan_quality.py compare --pair SNAPDIR/step10000.ckpt REFDIR/step10000.pt --checkout DIR
    python benchmarks/sde_gan_quality.py compare --hepgen RUN/checkpoints/last.ckpt   # hepgen alone

``reference`` runs the example's own code (data, networks, initialisation, loop, SWA) unchanged. Only
three things are patched around it: its every-10-steps ``evaluate_loss`` (a printout; it does not
touch the weights, so it is skipped), its final plot (replaced by keeping the generator), and its
progress bar (replaced by one that saves the example's networks, averages, optimisers and RNG state
every ``--save-every`` steps, so that a killed job continues where it stopped). The data depend only
on ``--seed``, so a resumed job trains on the same paths; its batch order restarts an epoch (the
example's endless loader cannot be saved), which changes which paths form a batch, not the method.

``compare`` draws ``--events`` complete OU paths from the exact transition law
(:func:`hepgen.synth.ou.simulate_ou`), generates as many from each model (the SWA average once it
holds an update, as both codes evaluate), maps the reference's normalised output back to data units
with the example's own normalisation, and reports the marginal W1 at the paper's times (t = 6, 19,
32, 44, 57), the depth-5 signature MMD², and PathMetrics' real-vs-generated classifier accuracy twice:
on complete paths, and on masked ones as ``hepgen test`` measures it on OUDataModule's test split (30 %
of the real values dropped, the generated paths losing the same ones, both filled linearly), but with
8,192 paths instead of the split's 1,024 (``--events``): its statistical noise is about 0.007 instead of
0.02, and a classifier that learns from eight times as many paths finds more (a higher accuracy). The
floor row compares a second exact sample with the first: the noise level of each column.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torchsde
from torch.optim.swa_utils import AveragedModel

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.sde_gan import load_example  # noqa: E402
from callbacks.paths import PathMetrics  # noqa: E402
from hepgen.metrics.paths import marginal_w1, signature_mmd  # noqa: E402
from hepgen.models.sde_gan import SDEGAN  # noqa: E402
from hepgen.synth.ou import simulate_ou  # noqa: E402

PAPER_TIMES = (6, 19, 32, 44, 57)  # the paper's OU marginals (10/30/50/70/90 % of t = 0..63)
T_SIZE = 64
DROP_FRACTION = 0.3  # OUDataModule's default, the reference's 30 % of values dropped
#: what the example builds, in the order it builds it (``main()``)
PARTS = ("generator", "discriminator", "averaged_generator", "averaged_discriminator", "optimizer_g", "optimizer_d")


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------- the reference
class ReferenceTraining:
    """``main(steps)`` of the example, resumable from ``out/state.pt``; keeps ``out/step<N>.pt``."""

    def __init__(self, checkout: Path, out: Path, steps: int, seed: int, save_every: int, keep_every: int) -> None:
        self.module = load_example(checkout)
        self.out, self.steps, self.seed = out, steps, seed
        self.save_every, self.keep_every = save_every, keep_every
        self.parts: list = []  # the example's objects, in PARTS order
        self.raw_values: list[torch.Tensor] = []
        self.module.evaluate_loss = lambda *args, **kwargs: float("nan")
        self.module.plot = lambda ts, generator, *args, **kwargs: self._finish(generator)
        self.module.tqdm = types.SimpleNamespace(tqdm=self._steps)
        self.module.Generator = self._recorded(self.module.Generator)
        self.module.Discriminator = self._recorded(self.module.Discriminator)
        self.module.swa_utils = types.SimpleNamespace(AveragedModel=self._recorded(AveragedModel))
        proxy = types.SimpleNamespace(**{k: getattr(torchsde, k) for k in dir(torchsde) if not k.startswith("__")})
        proxy.sdeint = self._capture_data
        self.module.torchsde = proxy

    def _recorded(self, cls: type) -> type:
        parts = self.parts

        class Recorded(cls):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                parts.append(self)

        Recorded.__name__ = Recorded.__qualname__ = cls.__name__
        return Recorded

    def _capture_data(self, *args, **kwargs):
        ys = torchsde.sdeint(*args, **kwargs)  # get_data's raw OU paths (T, N, 1); it drops values in place
        self.raw_values.append(ys)
        return ys

    def normalisation(self) -> tuple[float, float]:
        """The example's (mean, std) of the observed initial values: data = normalised * std + mean."""
        y0 = self.raw_values[0][0].reshape(-1)
        y0 = y0[~torch.isnan(y0)]
        return float(y0.mean()), float(y0.std())

    def state(self, completed: int) -> dict:
        state = {name: part.state_dict() for name, part in zip(PARTS, self.parts)}
        mean, std = self.normalisation()
        return state | {"completed": completed, "rng": torch.get_rng_state(), "mean": mean, "std": std}

    def _restore(self) -> int:
        path = self.out / "state.pt"
        if not path.exists():
            return 0
        state = torch.load(path, weights_only=False)
        for name, part in zip(PARTS, self.parts):
            part.load_state_dict(state[name])
        torch.set_rng_state(state["rng"])
        print(f"resumed at step {state['completed']} from {path}", flush=True)
        return state["completed"]

    def _save(self, completed: int) -> None:
        state = self.state(completed)
        atomic_save(state, self.out / "state.pt")
        if completed % self.keep_every == 0:
            atomic_save(state, self.out / f"step{completed}.pt")

    def _steps(self, steps: range):
        runner = self

        class Steps:
            def __iter__(self):
                start = runner._restore()  # after main() has built and initialised everything
                t0 = time.perf_counter()
                for step in steps:
                    if step < start:
                        continue
                    if step > start and step % runner.save_every == 0:
                        runner._save(step)
                    if step % 100 == 0 and step > start:
                        rate = (time.perf_counter() - t0) / (step - start)
                        print(f"step {step}/{len(steps)}: {rate:.2f} s/step, "
                              f"{rate * (len(steps) - step) / 60:.0f} min left", flush=True)  # fmt: skip
                    yield step
                runner._save(len(steps))

            def write(self, *args, **kwargs):  # its loss printout (evaluate_loss is skipped)
                pass

        return Steps()

    def _finish(self, generator) -> None:  # main() has loaded the SWA average into ``generator``
        mean, std = self.normalisation()
        atomic_save({"generator": generator.state_dict(), "mean": mean, "std": std, "completed": self.steps},
                    self.out / "final.pt")  # fmt: skip

    def run(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(self.seed)  # the data, then the initial weights: the same after a restart
        np.random.seed(self.seed)
        self.module.main(steps=self.steps)


def reference_generator(checkout: Path, path: Path):
    """(generator, mean, std) from a ``step<N>.pt`` or ``final.pt``: the SWA average once it holds an update."""
    module = load_example(checkout)
    state = torch.load(path, weights_only=False)
    generator = module.Generator(1, 5, 3, 16, 16, 1)  # the example's default sizes
    if "averaged_generator" in state and int(state["averaged_generator"]["n_averaged"]) > 0:
        averaged = AveragedModel(generator)
        averaged.load_state_dict(state["averaged_generator"])
        generator = averaged.module
    else:
        generator.load_state_dict(state["generator"])
    return generator.eval(), state["mean"], state["std"]


# ------------------------------------------------------------------------------- hepgen
def hepgen_model(path: Path) -> SDEGAN:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    saved = checkpoint["hyper_parameters"]
    sizes = ("data_size", "t_size", "initial_noise", "noise", "hidden", "width", "layers", "solver", "adjoint", "dt")
    options = ("lipschitz", "critic_quadratic_variation", "critic_innovation_variation")  # what shapes the critic
    model = SDEGAN(**{k: saved[k] for k in sizes}, **{k: saved[k] for k in options if k in saved})
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


# ------------------------------------------------------------------------------- comparison
def metrics(real: np.ndarray, generated: np.ndarray, missing: np.ndarray) -> dict:
    """Quality of ``generated`` (N, T) against ``real`` (N, T), data units.

    ``missing`` (N, T, bool): the values both samples lose for the masked-path accuracy.
    """
    times = np.broadcast_to(np.arange(T_SIZE, dtype=float), real.shape)
    real, generated = real[..., None], generated[..., None]
    w1 = marginal_w1(real, generated, PAPER_TIMES)[:, 0]
    metric = PathMetrics()
    masked = metric.filled_pair(
        {"values": np.where(missing[..., None], np.nan, real), "times": times},
        {"values": generated, "times": times},
    )
    return {
        "w1": w1,
        "w1_mean": float(w1.mean()),
        "sig_mmd": signature_mmd(real, generated, 5, times, times),
        "accuracy": metric.classifier_accuracy(real, generated, times, times),
        "masked_accuracy": metric.classifier_accuracy(*masked),
    }


def row(name: str, m: dict) -> str:
    w1 = " / ".join(f"{v:.3f}" for v in m["w1"])
    return (
        f"| {name} | {w1} | {m['w1_mean']:.3f} | {m['sig_mmd']:.3f} | {m['accuracy']:.3f} "
        f"| {m['masked_accuracy']:.3f} |"
    )


def compare(pairs: list[tuple[Path, Path]], checkout: Path | None, events: int, seed: int,
            alone: list[Path] = ()) -> None:  # fmt: skip
    torch.set_num_threads(1)
    real = simulate_ou(events, T_SIZE, seed=seed)
    # which values OUDataModule would drop from these very paths (they are drawn before the mask)
    missing = np.isnan(simulate_ou(events, T_SIZE, seed=seed, drop_fraction=DROP_FRACTION))
    print(f"{events} exact OU paths per sample (seed {seed}); W1 at t = {', '.join(map(str, PAPER_TIMES))}\n")
    print(
        "| model | W1 at the five times | mean W1 | signature MMD² | classifier accuracy, complete paths "
        f"| classifier accuracy, {DROP_FRACTION:.0%} masked |\n|---|---|---|---|---|---|"
    )
    floor = metrics(real, simulate_ou(events, T_SIZE, seed=seed + 1), missing)
    print(row("floor: a second exact sample", floor))

    def hepgen_row(ours: Path, label: str) -> None:
        model = hepgen_model(ours)
        generated = model.generate(events, torch.Generator().manual_seed(seed + 2))[..., 0].double().numpy()
        name = f"hepgen, {int(model.generator_steps)} steps ({label})"
        print(row(name, metrics(real, generated, missing)), flush=True)

    for ours, theirs in pairs:
        hepgen_row(ours, ours.name)
        generator, mean, std = reference_generator(checkout, theirs)
        torch.manual_seed(seed + 2)
        np.random.seed(seed + 2)
        with torch.no_grad():
            normalised = generator(torch.arange(float(T_SIZE)), events)[..., 1]
        generated = (normalised * std + mean).double().numpy()
        print(row(f"torchsde example ({theirs.name})", metrics(real, generated, missing)), flush=True)
    for ours in alone:
        hepgen_row(ours, str(ours))


# ------------------------------------------------------------------------------- hepgen snapshots
def watch(last: Path, out: Path, every: int, until: int) -> None:
    """Copy ``last.ckpt`` to ``out/step<N>.ckpt`` whenever its generator step N is a multiple of ``every``."""
    out.mkdir(parents=True, exist_ok=True)
    seen = None
    while True:
        try:
            stamp = last.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp != seen:
            seen = stamp
            copy = out / "copy.tmp"
            shutil.copyfile(last, copy)  # hepgen replaces last.ckpt atomically: the copy is whole
            step = int(torch.load(copy, map_location="cpu", weights_only=False)["state_dict"]["generator_steps"])
            if step % every == 0:
                os.replace(copy, out / f"step{step}.ckpt")
                print(f"kept step {step}", flush=True)
            if step >= until:
                return
        time.sleep(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ref = sub.add_parser("reference", help="train torchsde's example (resumable)")
    ref.add_argument("--checkout", type=Path, required=True, help="a torchsde checkout")
    ref.add_argument("--out", type=Path, required=True)
    ref.add_argument("--steps", type=int, default=10000)
    ref.add_argument("--seed", type=int, default=0)
    ref.add_argument("--threads", type=int, default=1)
    ref.add_argument("--save-every", type=int, default=100)
    ref.add_argument("--keep-every", type=int, default=400)
    cmp = sub.add_parser("compare", help="both models against the same exact OU paths")
    cmp.add_argument("--pair", nargs=2, type=Path, action="append", default=[], metavar=("HEPGEN_CKPT", "REF_PT"))
    cmp.add_argument("--hepgen", type=Path, action="append", default=[], metavar="HEPGEN_CKPT",
                     help="a hepgen checkpoint alone (no reference beside it)")
    cmp.add_argument("--checkout", type=Path, help="a torchsde checkout (needed with --pair)")
    cmp.add_argument("--events", type=int, default=8192)
    cmp.add_argument("--seed", type=int, default=100)
    wat = sub.add_parser("watch", help="keep hepgen's last.ckpt at every --every generator steps")
    wat.add_argument("last", type=Path)
    wat.add_argument("out", type=Path)
    wat.add_argument("--every", type=int, default=400)
    wat.add_argument("--until", type=int, default=10000)
    args = parser.parse_args(argv)
    if args.command == "reference":
        torch.set_num_threads(args.threads)
        ReferenceTraining(args.checkout, args.out, args.steps, args.seed, args.save_every, args.keep_every).run()
    elif args.command == "compare":
        if not args.pair and not args.hepgen:
            parser.error("compare: give --pair HEPGEN_CKPT REF_PT or --hepgen HEPGEN_CKPT")
        if args.pair and args.checkout is None:
            parser.error("compare --pair: give --checkout DIR (a torchsde checkout)")
        compare([tuple(p) for p in args.pair], args.checkout, args.events, args.seed, args.hepgen)
    else:
        watch(args.last, args.out, args.every, args.until)


if __name__ == "__main__":
    main()
