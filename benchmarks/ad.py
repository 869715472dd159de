"""Benchmark of the anomaly-detection models on CPU: Generate's flow and the SR classifier ensemble.

    python benchmarks/ad.py                 # an estimated 4 to 5 min on 2 busy cores (load 3-4), less on quiet ones
    python benchmarks/ad.py --quick         # about 30 s on 2 busy cores: smaller samples, fewer pairs and repeats
    python benchmarks/ad.py --hidden 128    # the seed's MAF width (4 x 128) instead of the config's 4 x 64
    python benchmarks/ad.py --json FILE     # also write the results as JSON

A Toy R study (``--toy nr``: Toy NR) is made in a temporary folder with
:func:`hepgen.synth.ad_toy.make_ad_toy` (100,000 SR background events, no injected signal), and
every part runs hepgen's code side by side with a plain PyTorch loop written here, in one process,
with the same torch threads (``--threads``; by default the usable cores, or 1 when the machine is
busy at the start, as ``benchmarks/calo_vae.py`` chooses).

1. MAF training epoch. ``ConditionalFlow`` with the settings of ``experiments/ad/generate_toy_r.yaml``
   (4 x 64, Adam 1e-3 with its per-epoch cosine decay, batch 256, the data's control region cut to
   50,000 events by ``RegionDataModule(max_events=...)``, split 80/20) is fitted by a bare
   ``lightning.Trainer`` (no logger, checkpoints, progress bar or model summary; validation off,
   since the plain loop has none). The plain loop, the reference, trains the same nflows MAF
   (:func:`hepgen.nn.maf.conditional_maf`, the same initial weights) as the seed does: PyTorch's
   default Adam and the same cosine schedule, on the training split standardised once beforehand
   (hepgen's model standardises every batch in float64 inside its step; that cost counts against
   hepgen), over the same batches in the same order (the permutation of hepgen's
   ``EpochShuffleSampler``). A second plain loop uses Adam's fused kernel, as hepgen's flow does:
   its losses must equal the Trainer's bit for bit at every step, and Trainer/that loop is the
   Trainer's own cost, like for like. The plain epochs run inside the Trainer's
   ``on_train_epoch_start``, so the epochs of a pair see the same machine load; a Trainer epoch is
   timed from the end of that hook to the start of the next epoch's (data loading, hooks, logging
   and the scheduler step included). Reported after ``--warmup`` epochs: the median of the per-pair
   ratios Trainer/plain (the seed's Adam) with its 95 % confidence interval (``--pairs`` pairs; goal
   <= 1.05, called only when the whole interval lies on one side), the same against the fused plain
   loop, steps/s and events/s of each side, and the Trainer's start-up (files read, split, scalers
   fitted) once per fit.
2. Sampling ``--sample-events`` (400,000) template events from the trained flow, 4 per context, at
   SR contexts drawn as the config draws them (``kde_sr``): ``ConditionalFlow.sample_template``
   against a plain loop that standardises the contexts, calls nflows' ``Flow.sample`` and maps
   the samples back to physical units. Both take ``--sample-chunk`` contexts per call (256: what
   ``hepgen predict`` passes at the config's batch size) and draw the same noise (hepgen from a
   seeded ``torch.Generator``, nflows from the global stream under the same seed), so the two
   outputs are compared. Calls alternate, chunk by chunk; events/s of each side (from the summed
   times) and the median of the per-chunk ratios hepgen/plain. With ``--kept K`` the model
   first keeps K epochs (validation passes fill K of its ``n_best`` slots with the trained
   weights), so ``sample_template`` shares each chunk out among K flows, as after a real fit.
3. Classifier ensemble for ``--members`` (20) runs. ``WeakClassifier`` (hidden 64, 64, 64; the 20
   members trained side by side as one batched network) fitted by a bare Trainer for
   ``--epochs`` epochs on a fixed sample (``--classifier-events``: half the study's SR data,
   label 1, half its ideal SR background, label 0; the 4 features; batch 256; validation and
   early stopping off, so every run trains exactly E epochs) against the seed's way: 20 plain
   PyTorch MLPs (4-64-64-64-1, Adam 1e-3, weighted BCE) trained one after the other, E epochs
   each, on the same standardised sample. Wall time of the whole of each side (hepgen: building
   the model and Trainer, and the fit with its start-up; plain: standardising and 20 trainings),
   the median of ``--repeats`` alternating repeats, after a short warm-up of both; the speed-up
   plain/hepgen.

The printed table names the machine (CPU model, usable cores, torch, lightning and nflows
versions, threads) and the load at the start and the end. On a shared machine absolute times
vary; the pair ratios of parts 1 and 2 compare like with like and are the figures to quote.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import statistics
import sys
from importlib.metadata import version
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `datamodules` and `benchmarks` are top-level packages of the repository

import lightning  # noqa: E402
from lightning.pytorch import Callback, Trainer  # noqa: E402

from benchmarks.calo_vae import (  # noqa: E402
    choose_threads, cpu_model, format_load, load_average, machine_busy, peak_rss_mib, spread, usable_cores,
)  # fmt: skip
from datamodules.ad_regions import RegionDataModule  # noqa: E402
from datamodules.base import HepDataModule  # noqa: E402
from hepgen.models.ad_classifier import WeakClassifier  # noqa: E402
from hepgen.models.ad_generate import ConditionalFlow  # noqa: E402
from hepgen.nn.maf import conditional_maf  # noqa: E402
from hepgen.synth.ad_toy import make_ad_toy  # noqa: E402

GOAL_TRAINER_RATIO = 1.05
STUDY_EVENTS = 100_000  # SR background of the made study: 100k data and ideal SR events, 60k data CR events
#: model settings of experiments/ad/generate_toy_r.yaml (hidden is --hidden)
FLOW_ARGS = dict(transforms=4, blocks=2, preprocessing="standard", lr=1e-3, n_best=5, oversample=4)
CLASSIFIER_HIDDEN = (64, 64, 64)
SIZES = {
    "full": dict(flow_events=50_000, warmup=1, pairs=8, sample_events=400_000, classifier_events=100_000,
                 epochs=2, repeats=3),
    "quick": dict(flow_events=12_500, warmup=1, pairs=3, sample_events=40_000, classifier_events=20_000,
                  epochs=1, repeats=1),
}  # fmt: skip
SAMPLE_WARMUP_CHUNKS = 4


def trainer(root: Path, **kwargs) -> Trainer:
    """A bare Trainer on CPU: no logger, checkpoints, progress bar, model summary or sanity check."""
    args = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(root))  # fmt: skip
    return Trainer(**{**args, **kwargs})


def ratio_text(s: dict) -> str:
    return f"{s['median']:.3f} (95 % CI {s['ci_lo']:.3f}–{s['ci_hi']:.3f}; IQR {s['q1']:.3f}–{s['q3']:.3f})"


def verdict(s: dict, goal: float) -> str:
    return "met" if s["ci_hi"] <= goal else "NOT met" if s["ci_lo"] > goal else "undecided (noise)"


def clock() -> tuple[float, float]:
    """(wall, CPU) seconds; CPU time (this process) is not stretched by waiting for a core."""
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clock()
    return wall - start[0], cpu - start[1]


# ------------------------------------------------------------------------------- data
def make_study(folder: Path, kind: str, seed: int) -> None:
    """A weak-supervision study without injected signal; test and fully supervised samples are tiny
    (RegionDataModule needs the files, no part of the benchmark reads them)."""
    make_ad_toy(folder, kind=kind, events=STUDY_EVENTS, signal_fractions=(0.0,), seeds=(1,), test_background=1_000,
                test_signal=100, fullsup_background=1_000, fullsup_signal=100, seed=seed, progress=False)  # fmt: skip


def region_data(folder: Path, kind: str, max_events: int, batch_size: int, contexts: int) -> RegionDataModule:
    """The Generate config's datamodule on the made study: data in the control region; KDE SR contexts."""
    return RegionDataModule(
        data_dir=str(folder), source="real", sample="data", region="cr", signal_fraction=0.0, injection_seed=1,
        toy_kind=kind, max_events=max_events, test_sample=None, predict_contexts="kde_sr", predict_events=contexts,
        batch_size=batch_size,
    )  # fmt: skip


# ------------------------------------------------------------------------------- 1. MAF training epoch
class PlainMAF:
    """The plain loop: the same nflows MAF, Adam and cosine schedule, on tensors standardised once.
    ``fused``: Adam's fused kernel, as hepgen's flow uses it, or the default loop over parameters,
    as the seed's code does."""

    def __init__(
        self, model: ConditionalFlow, train: dict, batch_size: int, order_seed: int, epochs: int, fused: bool
    ) -> None:
        hp = model.hparams
        self.flow = conditional_maf(hp.n_features, hp.n_context, hp.transforms, hp.hidden, hp.blocks, hp.batch_norm)
        self.flow.load_state_dict(model.flow.state_dict())  # the Trainer's initial weights
        with torch.no_grad():  # the model's fitted statistics, the same float64 arithmetic as its step
            self.y = model.features(train["features"])[0]
            self.c = model.context(train["context"].to(torch.float64)).float()
        self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, fused=fused)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=epochs)
        self.batch_size, self.order_seed = batch_size, order_seed
        self.losses: list[torch.Tensor] = []

    def epoch(self, epoch: int) -> tuple[float, float]:
        """One epoch; (wall, CPU) seconds."""
        start = clock()
        # EpochShuffleSampler's order: a permutation seeded by split_seed + 1 + epoch
        order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(self.order_seed + epoch))
        for first in range(0, len(order), self.batch_size):
            idx = order[first : first + self.batch_size]
            loss = -self.flow.log_prob(self.y[idx], context=self.c[idx]).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.losses.append(loss.detach())
        self.scheduler.step()
        return since(start)


class EpochPairs(Callback):
    """Runs the plain loops' epoch e at the start of the Trainer's epoch e, then times the Trainer's.
    Two plain loops: the seed's (default Adam), the reference, and one with hepgen's fused Adam,
    whose losses must equal the Trainer's bit for bit (the Trainer's own cost, like for like)."""

    def __init__(self, batch_size: int, epochs: int) -> None:
        self.batch_size, self.epochs = batch_size, epochs
        self.plain: PlainMAF | None = None
        self.fused: PlainMAF | None = None
        self.pairs: list[dict] = []
        self.losses: list[torch.Tensor] = []
        self.fit_called = self.startup = 0.0
        self.threads = 0
        self._start: tuple[float, float] | None = None

    def _close(self) -> None:
        if self._start is not None:
            self.pairs[-1]["trainer"] = since(self._start)
            self._start = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._close()
        if self.plain is None:  # scalers fitted, no step taken yet: the plain loop starts from here
            self.startup = time.perf_counter() - self.fit_called
            datamodule = trainer.datamodule
            order_seed = datamodule.split_seed + 1  # hepgen's datamodules seed the training order so
            train = datamodule.training_sample()
            self.plain = PlainMAF(pl_module, train, self.batch_size, order_seed, self.epochs, fused=False)
            self.fused = PlainMAF(pl_module, train, self.batch_size, order_seed, self.epochs, fused=True)
            self.threads = torch.get_num_threads()
        epoch = trainer.current_epoch
        self.pairs.append({"plain": self.plain.epoch(epoch), "plain_fused": self.fused.epoch(epoch)})
        self._start = clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach())

    def on_train_end(self, trainer, pl_module) -> None:
        self._close()


def bench_training(folder: Path, kind: str, hidden: int, sizes: dict, batch_size: int, seed: int, root: Path):
    epochs = sizes["warmup"] + sizes["pairs"]
    contexts = sizes["sample_events"] // FLOW_ARGS["oversample"]
    datamodule = region_data(folder, kind, sizes["flow_events"], batch_size, contexts)
    torch.manual_seed(seed)
    model = ConditionalFlow(datamodule.n_features, datamodule.n_context, hidden=hidden, **FLOW_ARGS)
    pairs = EpochPairs(batch_size, epochs)
    fit = trainer(root, max_epochs=epochs, limit_val_batches=0, callbacks=[pairs])
    pairs.fit_called = time.perf_counter()
    fit.fit(model, datamodule=datamodule)
    timed = pairs.pairs[sizes["warmup"] :]
    stats = spread([p["trainer"][0] / p["plain"][0] for p in timed])
    stats["cpu"] = spread([p["trainer"][1] / p["plain"][1] for p in timed])
    like_for_like = spread([p["trainer"][0] / p["plain_fused"][0] for p in timed])
    fused_saving = spread([p["plain_fused"][0] / p["plain"][0] for p in timed])
    n = min(len(pairs.losses), len(pairs.fused.losses))
    same_losses = n == len(pairs.losses) == len(pairs.fused.losses) and all(
        torch.equal(a, b) for a, b in zip(pairs.losses, pairs.fused.losses)
    )
    seed_adam_close = max(abs(a - b).item() for a, b in zip(pairs.losses, pairs.plain.losses))
    n_train = len(pairs.plain.y)
    steps = math.ceil(n_train / batch_size)
    sides = {}
    for side in ("plain", "plain_fused", "trainer"):
        seconds = statistics.median(p[side][0] for p in timed)
        sides[side] = {"s_per_epoch": seconds, "cpu_s_per_epoch": statistics.median(p[side][1] for p in timed),
                       "steps_per_s": steps / seconds, "events_per_s": n_train / seconds}  # fmt: skip
    result = {"train_events": n_train, "steps_per_epoch": steps, "epochs": epochs, "warmup": sizes["warmup"],
              "hidden": hidden, "ratio": stats, "ratio_same_adam": like_for_like, "fused_over_seed_adam": fused_saving,
              "sides": sides, "startup_s": pairs.startup, "losses_identical": same_losses, "steps_compared": n,
              "max_loss_diff_seed_adam": seed_adam_close, "threads_in_fit": pairs.threads}  # fmt: skip
    return result, model, pairs.fused.flow, datamodule


# ------------------------------------------------------------------------------- 2. sampling
def keep_epochs(model: ConditionalFlow, datamodule: RegionDataModule, kept: int, root: Path) -> None:
    """Fill ``kept`` of the model's n_best slots with its current weights: each validation pass keeps
    the epoch it scores in an empty slot, as the validation after every epoch of a fit does."""
    for _ in range(kept):
        trainer(root).validate(model, datamodule=datamodule, verbose=False)


@torch.no_grad()
def plain_sample(flow: nn.Module, contexts: torch.Tensor, k: int, stats: dict) -> torch.Tensor:
    """Rows [c, x] (N k, C + D), physical units: nflows' Flow.sample(k) at the standardised contexts."""
    c = ((contexts - stats["c_mean"]) / stats["c_std"]).float()
    y = flow.sample(k, context=c)  # (N, k, D); noise from the global stream, row n k + j of context n
    x = y.reshape(-1, y.shape[-1]).to(torch.float64) * stats["x_std"] + stats["x_mean"]
    return torch.cat([contexts.repeat_interleave(k, dim=0), x], dim=1)


def bench_sampling(model: ConditionalFlow, plain_flow: nn.Module, contexts: torch.Tensor, chunk: int, seed: int):
    k = model.hparams.oversample
    # the fitted statistics, read once (a plain script would keep them as tensors beside its flow)
    stats = {"c_mean": model.context.mean, "c_std": model.context.std,
             "x_mean": model.features.scaler.mean, "x_std": model.features.scaler.std}  # fmt: skip
    plain_flow.eval()
    times = {"hepgen": [], "plain": []}
    max_diff, n_events = 0.0, 0
    starts = range(0, len(contexts), chunk)
    for i, first in enumerate(starts):
        c = contexts[first : first + chunk]
        rows = torch.arange(first, first + len(c))
        out = {}
        for side in ("hepgen", "plain") if i % 2 == 0 else ("plain", "hepgen"):  # alternate who goes first
            if side == "hepgen":
                generator = torch.Generator().manual_seed(seed + first)  # as predict_step seeds each batch
                start = clock()
                out[side] = model.sample_template(c, k, generator, rows)
            else:
                torch.manual_seed(seed + first)
                start = clock()
                out[side] = plain_sample(plain_flow, c, k, stats)
            elapsed = since(start)
            if i >= SAMPLE_WARMUP_CHUNKS:
                times[side].append(elapsed)
        max_diff = max(max_diff, float((out["hepgen"] - out["plain"]).abs().max()))
        if i >= SAMPLE_WARMUP_CHUNKS:
            n_events += len(out["plain"])
    pairs = list(zip(times["hepgen"], times["plain"]))
    stats_ratio = spread([h[0] / p[0] for h, p in pairs])
    stats_ratio["cpu"] = spread([h[1] / p[1] for h, p in pairs])
    sides = {side: {"s": sum(t[0] for t in v), "cpu_s": sum(t[1] for t in v),
                    "events_per_s": n_events / sum(t[0] for t in v)} for side, v in times.items()}  # fmt: skip
    return {"events_timed": n_events, "events_total": len(contexts) * k, "contexts_per_call": chunk,
            "oversample": k, "calls_timed": len(pairs), "ratio": stats_ratio, "sides": sides,
            "summed_ratio": sides["hepgen"]["s"] / sides["plain"]["s"], "max_abs_diff": max_diff,
            "flows_sampled": len(model.kept_epochs()) or 1}  # fmt: skip


# ------------------------------------------------------------------------------- 3. classifier ensemble
def classifier_sample(folder: Path, n_events: int, seed: int) -> dict[str, torch.Tensor]:
    """n/2 SR data events (label 1) and n/2 ideal SR background events (label 0): the features only."""
    from hepgen.io.anomaly import read_seed_study

    study = read_seed_study(folder, 0.0, 1)
    n_context = json.loads((folder / "ad_toy.json").read_text())["n_context"]
    half = n_events // 2
    if min(len(study["data_sr"]), len(study["ideal_sr"])) < half:
        raise SystemExit(f"--classifier-events {n_events}: the made study holds fewer than {half} SR events per class.")
    rows = torch.cat([torch.as_tensor(study["data_sr"][:half]), torch.as_tensor(study["ideal_sr"][:half])])
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    label = torch.cat([torch.ones(half), torch.zeros(half)])
    return {"features": rows[order, n_context:].float(), "label": label[order], "weight": torch.ones(2 * half)}


class FixedEvents(HepDataModule):
    """A fixed in-memory training sample, all of it training events (no validation: the plain loop has none)."""

    def __init__(self, tensors: dict[str, torch.Tensor], batch_size: int, split_seed: int) -> None:
        super().__init__(source="real", val_fraction=0.0, test_fraction=0.0, split_seed=split_seed,
                         batch_size=batch_size)  # fmt: skip
        self.tensors = tensors

    def required_files(self) -> list[Path]:
        return []

    def load_events(self) -> dict[str, torch.Tensor]:
        return self.tensors


def hepgen_ensemble(events: dict, members: int, epochs: int, batch_size: int, seed: int, root: Path,
                    batches: int | None = None) -> tuple[float, float]:  # fmt: skip
    """WeakClassifier with ``members`` MLPs fitted for ``epochs`` epochs; (wall, CPU) seconds of it all."""
    start = clock()
    datamodule = FixedEvents(events, batch_size, seed)
    torch.manual_seed(seed)
    model = WeakClassifier(n_features=events["features"].shape[1], hidden=CLASSIFIER_HIDDEN, members=members)
    fit = trainer(root, max_epochs=epochs, limit_val_batches=0, limit_train_batches=batches)
    fit.fit(model, datamodule=datamodule)
    return since(start)


def plain_ensemble(events: dict, members: int, epochs: int, batch_size: int, seed: int,
                   batches: int | None = None) -> tuple[float, float]:  # fmt: skip
    """The seed's way: ``members`` MLPs trained one after the other; (wall, CPU) seconds of it all."""
    start = clock()
    x = events["features"].to(torch.float64)
    mean, std = x.mean(0), x.std(0, unbiased=False)
    x = ((x - mean) / std).float()
    label, weight = events["label"], events["weight"]
    n = len(x) if batches is None else min(len(x), batches * batch_size)
    for member in range(members):
        torch.manual_seed(seed + member)
        sizes = [x.shape[1], *CLASSIFIER_HIDDEN]
        layers = [m for a, b in zip(sizes[:-1], sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
        net = nn.Sequential(*layers, nn.Linear(sizes[-1], 1))
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        for epoch in range(epochs):
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 1 + epoch))[:n]
            for first in range(0, n, batch_size):
                idx = order[first : first + batch_size]
                logits = net(x[idx]).squeeze(-1)
                loss = F.binary_cross_entropy_with_logits(logits, label[idx], weight=weight[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return since(start)


def bench_classifier(events: dict, members: int, epochs: int, repeats: int, batch_size: int, seed: int, root: Path):
    # warm-up: a few batches of each, so that neither side pays the first-call costs in a timed run
    hepgen_ensemble(events, 2, 1, batch_size, seed, root, batches=10)
    plain_ensemble(events, 2, 1, batch_size, seed, batches=10)
    runs = []
    for r in range(repeats):
        order = ("plain", "hepgen") if r % 2 == 0 else ("hepgen", "plain")
        run = {}
        for side in order:
            if side == "plain":
                run[side] = plain_ensemble(events, members, epochs, batch_size, seed)
            else:
                run[side] = hepgen_ensemble(events, members, epochs, batch_size, seed, root)
        runs.append(run)
        print(f"  repeat {r + 1}: plain {run['plain'][0]:.1f} s, hepgen {run['hepgen'][0]:.1f} s", flush=True)
    sides = {side: {"s": statistics.median(r[side][0] for r in runs),
                    "cpu_s": statistics.median(r[side][1] for r in runs)} for side in ("plain", "hepgen")}  # fmt: skip
    speedups = [r["plain"][0] / r["hepgen"][0] for r in runs]
    steps = math.ceil(len(events["label"]) / batch_size)
    return {"events": len(events["label"]), "features": events["features"].shape[1], "members": members,
            "epochs": epochs, "repeats": repeats, "steps_per_epoch": steps, "sides": sides,
            "speedup": sides["plain"]["s"] / sides["hepgen"]["s"], "speedup_per_repeat": speedups,
            "speedup_cpu": sides["plain"]["cpu_s"] / sides["hepgen"]["cpu_s"]}  # fmt: skip


# ------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toy", choices=("r", "nr"), default="r", help="the made study's toy (default r, Toy R)")
    parser.add_argument("--hidden", type=int, default=64, help="MAF width: 64 (the config) or 128 (the seed)")
    parser.add_argument("--batch-size", type=int, default=256, help="training batch size of all parts (256)")
    parser.add_argument("--flow-events", type=int,
                        help="data CR events for the flow, 80 %% of them trained on (50,000; quick 12,500)")
    parser.add_argument("--warmup", type=int, help="untimed epochs of each side first (1)")
    parser.add_argument("--pairs", type=int, help="timed plain/Trainer epoch pairs (8; quick 3)")
    parser.add_argument("--sample-events", type=int, help="template events to sample (400,000; quick 40,000)")
    parser.add_argument("--sample-chunk", type=int, default=256, help="contexts per sampling call (256)")
    parser.add_argument("--kept", type=int, default=0, help="kept epochs to sample from (0: the trained flow itself)")
    parser.add_argument("--classifier-events", type=int, help="classifier training events (100,000; quick 20,000)")
    parser.add_argument("--members", type=int, default=20, help="classifiers in the ensemble / plain runs (20)")
    parser.add_argument("--epochs", type=int, help="classifier epochs per run (2; quick 1)")
    parser.add_argument("--repeats", type=int, help="timed classifier repeats per side (3; quick 1)")
    parser.add_argument("--threads", type=int,
                        help="torch intra-op threads (default: the usable cores; 1 on a busy machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (about 30 s on 2 busy cores)")
    args = parser.parse_args(argv)
    sizes = dict(SIZES["quick" if args.quick else "full"])
    sizes.update({k: getattr(args, k) for k in sizes if getattr(args, k) is not None})
    if min(sizes.values()) < 1 or min(args.sample_chunk, args.members, args.batch_size) < 1:
        parser.error("sizes, --sample-chunk, --members and --batch-size must be >= 1")
    if not 0 <= args.kept <= FLOW_ARGS["n_best"]:
        parser.error(f"--kept must be in 0..{FLOW_ARGS['n_best']} (the model's n_best)")

    started, cores, load_start = time.perf_counter(), usable_cores(), load_average()
    threads, threads_why = choose_threads(args.threads, cores, load_start)
    torch.set_num_threads(threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    for message in ("does not have many workers", "LeafSpec", "log_every_n_steps", "val_dataloader",
                    "validation_step"):  # fmt: skip
        warnings.filterwarnings("ignore", message=f".*{message}.*")
    machine = (f"{cpu_model()}, {cores} cores, torch {torch.__version__}, lightning {lightning.__version__}, "
               f"nflows {version('nflows')}, {threads} thread{'s' * (threads > 1)}")  # fmt: skip
    print("# hepgen benchmark: anomaly detection (Generate's flow, the SR classifier ensemble) on CPU"
          + (" (--quick)" if args.quick else ""))
    print(f"machine : {machine} | {platform.platform()} | python {platform.python_version()}")
    print(f"threads : {threads} ({threads_why})")
    busy = machine_busy(load_start, cores)
    print(f"load    : {format_load(load_start)} (1/5/15 min) at start"
          + (" -- BUSY: absolute times are unreliable; the pair ratios compare like with like" if busy else ""))
    results: dict = {"machine": machine, "load_start": load_start, "quick": args.quick, "args": vars(args) | sizes}
    results["args"]["json"] = str(args.json) if args.json else None

    with tempfile.TemporaryDirectory(prefix="hepgen-bench-ad-") as tmp:
        root, folder = Path(tmp), Path(tmp) / f"ad_toy_{args.toy}"
        t0 = time.perf_counter()
        make_study(folder, args.toy, args.seed)
        print(f"data    : Toy {args.toy.upper()} study ({STUDY_EVENTS:,} SR background events, no signal) made in "
              f"{time.perf_counter() - t0:.1f} s")

        # --- 1 ---
        print(f"\n## 1. MAF training epoch: ConditionalFlow (4 x {args.hidden}) under a bare Trainer vs a plain loop, "
              f"{sizes['warmup']} warm-up + {sizes['pairs']} timed epoch pairs", flush=True)
        train, model, plain_flow, datamodule = bench_training(
            folder, args.toy, args.hidden, sizes, args.batch_size, args.seed, root
        )
        results["training"] = train
        s, sides = train["ratio"], train["sides"]
        print(f"  training split {train['train_events']:,} events = {train['steps_per_epoch']} steps of "
              f"{args.batch_size}; Trainer start-up {train['startup_s']:.2f} s per fit")
        for side, label in (("plain", "plain loop, the seed's Adam"), ("plain_fused", "plain loop, fused Adam"),
                            ("trainer", "Trainer (fused Adam)")):  # fmt: skip
            v = sides[side]
            print(f"  {label:<27}: {v['s_per_epoch']:.3f} s/epoch ({v['cpu_s_per_epoch']:.3f} CPU-s), "
                  f"{v['steps_per_s']:.1f} steps/s, {v['events_per_s']:,.0f} events/s (medians)")
        print(f"  Trainer/plain wall: {ratio_text(s)}, min–max {s['min']:.3f}–{s['max']:.3f}, {s['n']} pairs; "
              f"goal ≤ {GOAL_TRAINER_RATIO}: {verdict(s, GOAL_TRAINER_RATIO)}")
        print(f"  Trainer/plain CPU : {ratio_text(s['cpu'])}")
        print(f"  Trainer/plain loop with the same fused Adam (the Trainer's own cost): "
              f"{ratio_text(train['ratio_same_adam'])}")
        print("  plain fused/plain seed's Adam (what the fused kernel saves): "
              f"{ratio_text(train['fused_over_seed_adam'])}")
        print(f"  check: losses bit-identical to the fused plain loop at all {train['steps_compared']} steps: "
              f"{train['losses_identical']}; largest loss difference to the seed's Adam "
              f"{train['max_loss_diff_seed_adam']:.2g} nats; torch threads in the fit: {train['threads_in_fit']}")

        # --- 2 ---
        contexts = torch.as_tensor(datamodule.sr_contexts(), dtype=torch.float64)
        if args.kept:
            keep_epochs(model, datamodule, args.kept, root)
        k = model.hparams.oversample
        print(f"\n## 2. Sampling {len(contexts) * k:,} events ({len(contexts):,} KDE SR contexts x {k}), "
              f"{args.sample_chunk} contexts per call, calls alternating", flush=True)
        sampling = bench_sampling(model, plain_flow, contexts, args.sample_chunk, args.seed)
        results["sampling"] = sampling
        s = sampling["ratio"]
        print(f"  timed {sampling['events_timed']:,} events in {sampling['calls_timed']} calls per side (after "
              f"{SAMPLE_WARMUP_CHUNKS} warm-up calls); hepgen samples from {sampling['flows_sampled']} flow(s)")
        for side, label in (("plain", "plain nflows"), ("hepgen", "sample_template")):
            v = sampling["sides"][side]
            print(f"  {label:<15}: {v['events_per_s']:,.0f} events/s ({v['s']:.2f} s, {v['cpu_s']:.2f} CPU-s)")
        print(f"  hepgen/plain per call: {ratio_text(s)}; summed {sampling['summed_ratio']:.3f}; "
              f"CPU {s['cpu']['median']:.3f}")
        print(f"  check: largest |hepgen - plain| over all rows: {sampling['max_abs_diff']:.3g}")

        # --- 3 ---
        events = classifier_sample(folder, sizes["classifier_events"], args.seed)
        print(f"\n## 3. Classifier ensemble, {args.members} runs x {sizes['epochs']} epoch(s) on "
              f"{len(events['label']):,} events x {events['features'].shape[1]} features, batch {args.batch_size}: "
              f"WeakClassifier (one batched network) vs {args.members} plain MLP trainings in sequence", flush=True)
        classifier = bench_classifier(events, args.members, sizes["epochs"], sizes["repeats"], args.batch_size,
                                      args.seed, root)  # fmt: skip
        results["classifier"] = classifier
        c = classifier["sides"]
        print(f"  plain, {args.members} in sequence: {c['plain']['s']:.2f} s ({c['plain']['cpu_s']:.2f} CPU-s); "
              f"WeakClassifier: {c['hepgen']['s']:.2f} s ({c['hepgen']['cpu_s']:.2f} CPU-s) (medians of "
              f"{classifier['repeats']})")
        print(f"  speed-up plain/hepgen: {classifier['speedup']:.2f}x wall, {classifier['speedup_cpu']:.2f}x CPU "
              f"(per repeat: {', '.join(f'{v:.2f}' for v in classifier['speedup_per_repeat'])})")

    load_end = load_average()
    results["load_end"], results["peak_rss_mib"] = load_end, peak_rss_mib()
    minutes = (time.perf_counter() - started) / 60
    print(f"\nload at the end: {format_load(load_end)}; peak RSS {results['peak_rss_mib']:.0f} MiB; "
          f"run took {minutes:.1f} min")
    if busy or (load_end and load_end[0] > threads + 0.5 * cores):
        print("WARNING: the machine was busy: absolute times are not reliable; quote the ratios, with their spread.")

    train, sampling, s = results["training"], results["sampling"], results["training"]["ratio"]
    rows = [
        (f"MAF training epoch, 4 x {args.hidden}, {train['train_events']:,} events, batch {args.batch_size}",
         f"Trainer {train['sides']['trainer']['s_per_epoch']:.3f} s ({train['sides']['trainer']['steps_per_s']:.1f} "
         f"steps/s, {train['sides']['trainer']['events_per_s']:,.0f} events/s)",
         f"plain loop {train['sides']['plain']['s_per_epoch']:.3f} s ({train['sides']['plain']['steps_per_s']:.1f} "
         f"steps/s, {train['sides']['plain']['events_per_s']:,.0f} events/s)",
         f"{ratio_text(s)}; goal ≤ {GOAL_TRAINER_RATIO}: {verdict(s, GOAL_TRAINER_RATIO)}"),
        ("the same, plain loop with hepgen's fused Adam (the Trainer's own cost)",
         f"Trainer {train['sides']['trainer']['s_per_epoch']:.3f} s",
         f"plain loop, fused Adam {train['sides']['plain_fused']['s_per_epoch']:.3f} s",
         f"{ratio_text(train['ratio_same_adam'])}"),
        (f"sampling {sampling['events_total']:,} events, {args.sample_chunk} contexts x {sampling['oversample']} "
         "per call",
         f"sample_template {sampling['sides']['hepgen']['events_per_s']:,.0f} events/s",
         f"nflows Flow.sample {sampling['sides']['plain']['events_per_s']:,.0f} events/s",
         f"{ratio_text(sampling['ratio'])}"),
        (f"classifier ensemble, {args.members} runs x {classifier['epochs']} epoch(s), {classifier['events']:,} events",
         f"WeakClassifier {classifier['sides']['hepgen']['s']:.1f} s",
         f"{args.members} plain MLPs in sequence {classifier['sides']['plain']['s']:.1f} s",
         f"speed-up {classifier['speedup']:.2f}x"),
    ]  # fmt: skip
    print(f"\n## README table\n\nMachine: {machine}; load {format_load(load_start)} at start, {format_load(load_end)} "
          f"at the end. Ratios: median of per-pair ratios (95 % CI; IQR); training losses bit-identical to the "
          f"fused plain loop: "
          f"{train['losses_identical']}.\n")
    print("| quantity | hepgen | reference | ratio / goal |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    main()
