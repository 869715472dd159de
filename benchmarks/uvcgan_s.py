"""Benchmark of the Stratified CycleGAN (UVCGAN-S): training step under Lightning vs a plain loop; decomposition.

    python benchmarks/uvcgan_s.py --size reference   # the default: 7 min at load 4-6 on 2 cores (a step ~21 s)
    python benchmarks/uvcgan_s.py --size quickstart  # experiments/uvcgan_s/quickstart.yaml's sizes: 2.5 min at load 5-7
    python benchmarks/uvcgan_s.py --quick            # quickstart networks at batch 8, few steps: 20 s
    python benchmarks/uvcgan_s.py --json FILE        # also write the results as JSON
    python benchmarks/uvcgan_s.py --device cuda [--compile]   # on a GPU (the default when one is there)

Sizes. ``reference``: the model's defaults, which are the reference's sPHENIX sizes
(``../shared/reference/uvcgan_s.md`` §2, §4): ViT-ModNet generators of 32.09M parameters, ResNet
discriminators of 19.51M, Adam 5e-5 (0.5, 0.99), EMA 0.9999, batch 4. A step takes 26-32 s on a
2-core CPU (§9), so by default only 2 warm-up and 4 timed steps a side are run: enough for the
ratio at this step length, where per-step overhead is a tiny fraction, but not for a tight interval.
``quickstart``: the networks, learning rate, EMA decay and batch size (16) of
``experiments/uvcgan_s/quickstart.yaml``. Data: made sPHENIX events (:func:`hepgen.synth.sphenix.make_sphenix`,
in a temporary folder), training batches pre-drawn once from ``SPhenixDataModule``'s training loader
(unpaired background, signal and mixture images) and held in memory, the same for both sides.

1. Training step, as the median of interleaved pairs (the scheme of benchmarks/calo_vae.py and
   sde_gan.py). A bare ``lightning.Trainer`` (no logger, checkpoints, progress bar or model summary,
   no validation) fits ``StratifiedCycleGAN`` on a DataLoader of the pre-drawn batches; the plain
   loop (:func:`plain_step`) is the reference's algorithm written out around the same hepgen
   networks (``ViTModNetGenerator``, ``ResNetDiscriminator``) and loss functions
   (``generator_loss``, ``discriminator_loss``, ``zero_centred_gradient_penalty``, ``LogEnergy``),
   with two ``torch.optim.Adam``, ``clip_grad_norm_(..., 0.5)`` and an EMA of both generators by
   ``torch._foreach_lerp_`` (hepgen's warmed-up decay, so the averages can be compared), from the
   same initial weights, on the same batches, with the same noise (the global RNG state is swapped at
   each switch). By default it sums the losses and runs one backward per optimizer, as hepgen does, so
   losses, weights and averages agree bit for bit (checked); ``--plain-order reference`` runs the
   reference's backward order instead (a forward/backward per generator pass; per discriminator the
   penalty's backward, then the hinge loss's; the penalties draw their interpolation weights in
   another order), whose losses then differ a little. The Trainer is paused
   inside ``fit`` every ``--block`` steps while the plain loop runs its block, so both sides of a
   pair see the same machine load. Per-pair ratios Trainer/plain of wall and CPU time
   (``time.process_time``, which waiting for a core does not stretch): median, 95 % CI, IQR;
   goal <= 1.05, called met or not met only when the whole interval lies on one side.
2. Where the time goes: cProfile (CPU time) of ``--profile-steps`` steps of each side, by phase and
   by package; what hepgen's step does beyond the plain loop's work, timed without the profiler: the
   wall time inside ``log_dict`` during the timed Trainer blocks, and the pre-clip gradient norm of
   ``AdversarialModule.take_step`` (timed alone on the last gradients, against clip_grad_norm_'s own norm).
3. Decomposition throughput at batch 64: events/s of ``StratifiedCycleGAN.decompose`` (the EMA
   ``gen_ba``, no grad) over the made test mixtures held in memory, against ``Trainer.predict`` with
   ``SPhenixDataModule`` on the same events read from its files, in alternating repeats: the whole
   call (set-up included) and its batch loop, their ratios to the bare loop, and the data loading
   alone (files read, batches made, finiteness checks).

``--device cuda`` (the default when a GPU is there) runs both sides on the GPU and times with
``torch.cuda.synchronize()`` at every clock reading; ``--compile`` compiles the generators (and, for
section 3, the EMA ``gen_ba``) with ``torch.compile`` on both sides (on this CPU, --quick --compile took
5 min, nearly all of it compiling). On a GPU the profile of section 2 is host (launch) time. The printed
tables name the machine (CPU model, usable cores, torch and lightning versions, threads, GPU) and the load.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import gc
import json
import logging
import platform
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `datamodules` and `benchmarks` are top-level packages of the repository

import lightning  # noqa: E402
from lightning.pytorch import Callback, Trainer  # noqa: E402

from benchmarks.calo_vae import (  # noqa: E402
    choose_threads, cpu_model, format_load, load_average, machine_busy, peak_rss_mib, spread, usable_cores,
)  # fmt: skip
from datamodules.sphenix import SPhenixDataModule, _check_finite  # noqa: E402
from hepgen.models.gan import ema_decay_at  # noqa: E402
from hepgen.models.uvcgan_s import (  # noqa: E402
    LogEnergy, StratifiedCycleGAN, discriminator_loss, generator_loss, zero_centred_gradient_penalty,
)  # fmt: skip
from hepgen.nn.image_discriminators import ResNetDiscriminator  # noqa: E402
from hepgen.nn.vit_modnet import ViTModNetGenerator  # noqa: E402
from hepgen.synth.sphenix import make_sphenix  # noqa: E402

GOAL_TRAINER_RATIO = 1.05
QUICKSTART = REPO / "experiments" / "uvcgan_s" / "quickstart.yaml"
#: ../shared/reference/uvcgan_s.md §9: the reference's step at batch 4 (A6000; a 2-core CPU) and inference cost
REFERENCE_GPU_S_PER_STEP = 0.470
REFERENCE_CPU_S_PER_STEP = (26.0, 32.0)
REFERENCE_GPU_MS_PER_EVENT = 0.27
PREDICT_BATCH = 64
#: Run lengths: warm-up steps a side, steps per block, pairs of blocks, cProfiled steps a side; events
#: decomposed per pass and alternating pass repeats in section 3.
RUNS = {
    "reference": dict(warmup=2, block=1, pairs=4, profile_steps=1, predict_events=256, predict_repeats=2),
    "quickstart": dict(warmup=3, block=2, pairs=12, profile_steps=1, predict_events=1024, predict_repeats=3),
    "quick": dict(warmup=1, block=1, pairs=3, profile_steps=1, predict_events=128, predict_repeats=1),
}
QUICK_BATCH = 8


# ------------------------------------------------------------------------------- sizes
def model_sizes(size: str) -> dict:
    """Model arguments, batch size and learning rate of a size: the model's defaults (the reference's
    sPHENIX sizes) or those of experiments/uvcgan_s/quickstart.yaml."""
    if size == "reference":
        return {"model_args": {}, "batch": 4, "lr": 5e-5, "betas": (0.5, 0.99), "source": "StratifiedCycleGAN defaults"}
    cfg = yaml.safe_load(QUICKSTART.read_text())
    init = dict(cfg["model"]["init_args"])
    opt = init.pop("optimizer_g")["init_args"]
    init.pop("optimizer_d")
    return {"model_args": init, "batch": int(cfg["data"]["init_args"]["batch_size"]), "lr": float(opt["lr"]),
            "betas": tuple(opt["betas"]), "source": str(QUICKSTART.relative_to(REPO))}  # fmt: skip


def build_model(sizes: dict, seed: int) -> StratifiedCycleGAN:
    adam = partial(torch.optim.Adam, lr=sizes["lr"], betas=sizes["betas"])
    torch.manual_seed(seed)
    return StratifiedCycleGAN(**sizes["model_args"], optimizer_g=adam, optimizer_d=adam)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------- clocks and RNG
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> tuple[float, float]:
    """(wall, CPU) seconds after the device has finished its queued work."""
    sync(device)
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float], device: torch.device) -> tuple[float, float]:
    wall, cpu = clock(device)
    return wall - start[0], cpu - start[1]


def get_rng(device: torch.device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def set_rng(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


# ------------------------------------------------------------------------------- data
def make_data(folder: Path, predict_events: int, seed: int) -> int:
    """Made sPHENIX data whose test split holds ``predict_events`` mixtures; returns made_events."""
    made_events = 5 * predict_events  # val and test get a fifth each
    make_sphenix(folder, events=made_events, seed=seed, progress=False)
    return made_events


def datamodule(folder: Path, made_events: int, seed: int, batch_size: int, **kwargs) -> SPhenixDataModule:
    return SPhenixDataModule(data_dir=str(folder), source="made", made_events=made_events, made_seed=seed,
                             batch_size=batch_size, **kwargs)  # fmt: skip


def draw_batches(folder: Path, made_events: int, seed: int, batch_size: int, n: int) -> list[dict]:
    """``n`` training batches from SPhenixDataModule's training loader, held in memory."""
    dm = datamodule(folder, made_events, seed, batch_size, train_events=n * batch_size)
    dm.prepare_data()
    dm.setup("fit")
    batches = [batch for _, batch in zip(range(n), dm.train_dataloader())]
    if len(batches) != n:
        raise RuntimeError(f"drew {len(batches)} of {n} training batches")
    return batches


def _as_is(batch):
    return batch


def fit_loader(batches: list[dict]) -> DataLoader:
    """The pre-drawn batches, one per step, as drawn (its own generator: no draw from the global stream)."""
    return DataLoader(batches, batch_size=None, shuffle=False, collate_fn=_as_is, generator=torch.Generator())


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: {"image": v["image"].to(device, non_blocking=True)} for k, v in batch.items()}


# ------------------------------------------------------------------------------- the plain loop
class Networks:
    """The plain loop's networks: new instances of hepgen's classes holding the model's weights."""

    def __init__(self, model: StratifiedCycleGAN, device: torch.device) -> None:
        h = model.hparams
        c0, c1, cb = model.channels
        shape, gen_args, disc_args = tuple(h.image_shape), dict(h.generator or {}), dict(h.discriminator_args or {})
        if h.discriminator != "resnet" or h.data_norm != "log":
            raise SystemExit("the plain loop is written for the ResNet discriminators and the log normalisation")
        self.c0 = c0
        self.gen_ab = ViTModNetGenerator(c0 + c1, cb, shape, **gen_args)
        self.gen_ba = ViTModNetGenerator(cb, c0 + c1, shape, **gen_args)
        self.disc_a0, self.disc_a1, self.disc_b = (ResNetDiscriminator(c, **disc_args) for c in (c0, c1, cb))
        for name in ("gen_ab", "gen_ba", "disc_a0", "disc_a1", "disc_b"):
            getattr(self, name).load_state_dict(getattr(model, name).state_dict())
            getattr(self, name).to(device).train()
        self.norm = LogEnergy(h.log_bias)
        self.ema_ab = copy.deepcopy(self.gen_ab).requires_grad_(False)
        self.ema_ba = copy.deepcopy(self.gen_ba).requires_grad_(False)

    @property
    def generators(self) -> list[torch.nn.Parameter]:
        return [*self.gen_ab.parameters(), *self.gen_ba.parameters()]

    @property
    def discriminators(self) -> list[torch.nn.Parameter]:
        return [*self.disc_a0.parameters(), *self.disc_a1.parameters(), *self.disc_b.parameters()]


class PlainLoop:
    """The reference's training step around hepgen's networks, run block by block (own RNG state)."""

    def __init__(self, model: StratifiedCycleGAN, batches: list[dict], device: torch.device, sizes: dict,
                 order: str, compile_generators: bool) -> None:  # fmt: skip
        self.nets = Networks(model, device)
        if compile_generators:
            self.nets.gen_ab.compile()
            self.nets.gen_ba.compile()
        h = model.hparams
        self.lambdas = dict(adv=tuple(h.lambda_adv), cyc=tuple(h.lambda_cycle), idt_aa=h.lambda_idt_aa,
                            idt_bb=h.lambda_idt_bb, gp=h.gp_weight, kind=h.gan_loss, clip=h.grad_clip)  # fmt: skip
        self.opt_g = torch.optim.Adam(self.nets.generators, lr=sizes["lr"], betas=sizes["betas"])
        self.opt_d = torch.optim.Adam(self.nets.discriminators, lr=sizes["lr"], betas=sizes["betas"])
        self.ema_decay, self.n_averaged = h.ema_decay, 1  # hepgen's EMA starts from the initial weights
        self.batches, self.device, self.order = batches, device, order
        self.step, self.losses = 0, []
        self.rng = None

    def run(self, n_steps: int, profiler: cProfile.Profile | None = None) -> tuple[float, float]:
        """``n_steps`` steps; (wall, CPU) seconds, the device synchronised at both ends."""
        set_rng(self.rng, self.device)
        with torch.enable_grad():
            start = clock(self.device)
            if profiler:
                profiler.enable()
            for _ in range(n_steps):
                batch = to_device(self.batches[self.step], self.device)
                step = plain_step if self.order == "hepgen" else plain_step_reference_order
                self.losses.append(step(self, batch))
                self.step += 1
            if profiler:
                profiler.disable()
            seconds = since(start, self.device)
        self.rng = get_rng(self.device)
        return seconds

    def update_ema(self) -> None:
        """EMA of both generators (parameters and buffers, as hepgen's AveragedModel(use_buffers=True))."""
        decay = ema_decay_at(self.ema_decay, self.n_averaged)
        with torch.no_grad():
            for ema, net in ((self.nets.ema_ab, self.nets.gen_ab), (self.nets.ema_ba, self.nets.gen_ba)):
                averaged = [*ema.parameters(), *ema.buffers()]
                current = [t.detach() for t in (*net.parameters(), *net.buffers())]
                torch._foreach_lerp_(averaged, current, 1.0 - decay)
        self.n_averaged += 1


def _discriminators_require_grad(nets: Networks, flag: bool) -> None:
    for disc in (nets.disc_a0, nets.disc_a1, nets.disc_b):
        disc.requires_grad_(flag)


def plain_step(loop: PlainLoop, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step, the reference's algorithm (uvcgan_s.md §3), one backward per optimizer.

    Generators: the four passes (cycles a -> b -> a and b -> a -> b, identities bb and aa) with
    the discriminators frozen, the weighted sum, backward, clip 0.5, Adam. Discriminators: per
    discriminator ½ scale (hinge on real + hinge on fake of this step's detached fakes) and the
    zero-centred penalty, summed, backward, clip 0.5, Adam. Then the EMA of both generators.
    """
    nets, lam, n = loop.nets, loop.lambdas, loop.nets.norm
    (adv0, adv1, advb), (cyc0, cyc1, cycb), kind = lam["adv"], lam["cyc"], lam["kind"]
    a0, a1, b = batch["background"]["image"], batch["signal"]["image"], batch["embed"]["image"]
    c0 = nets.c0

    _discriminators_require_grad(nets, False)
    a_n, b_n = n(torch.cat([a0, a1], dim=1)), n(b)
    fake_b_n = nets.gen_ab(a_n)  # cycle a -> b -> a
    fake_b = n.inverse(fake_b_n)
    reco_a = n.inverse(nets.gen_ba(fake_b_n))
    fake_a_n = nets.gen_ba(b_n)  # cycle b -> a -> b
    fake_a = n.inverse(fake_a_n)
    reco_b = n.inverse(nets.gen_ab(fake_a_n))
    empty_signal = b.new_zeros(b.shape[0], a1.shape[1], *b.shape[2:])  # identity bb: [b, 0] mixes to b
    idt_bb = n.inverse(nets.gen_ab(n(torch.cat([b, empty_signal], dim=1))))
    idt_aa = n.inverse(nets.gen_ba(n(a0 + a1)))  # identity aa: a0 + a1 decomposes into (a0, a1)
    g_loss = (
        advb * generator_loss(nets.disc_b(fake_b), kind)
        + 0.5 * cyc0 * F.l1_loss(reco_a[:, :c0], a0)
        + 0.5 * cyc1 * F.l1_loss(reco_a[:, c0:], a1)
        + 0.5 * adv0 * generator_loss(nets.disc_a0(fake_a[:, :c0]), kind)
        + 0.5 * adv1 * generator_loss(nets.disc_a1(fake_a[:, c0:]), kind)
        + cycb * F.l1_loss(reco_b, b)
        + lam["idt_bb"] * cycb * F.l1_loss(idt_bb, b)
        + 0.5 * lam["idt_aa"] * (cyc0 * F.l1_loss(idt_aa[:, :c0], a0) + cyc1 * F.l1_loss(idt_aa[:, c0:], a1))
    )
    loop.opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    torch.nn.utils.clip_grad_norm_(nets.generators, lam["clip"])
    loop.opt_g.step()

    _discriminators_require_grad(nets, True)
    fakes = (fake_a[:, :c0].detach(), fake_a[:, c0:].detach(), fake_b.detach())
    terms = []
    for disc, real, fake, scale in ((nets.disc_a0, a0, fakes[0], 0.5 * adv0), (nets.disc_a1, a1, fakes[1], 0.5 * adv1),
                                    (nets.disc_b, b, fakes[2], advb)):  # fmt: skip
        terms.append(scale * discriminator_loss(disc(real), disc(fake), kind))
        terms.append(lam["gp"] * zero_centred_gradient_penalty(disc, real, fake))
    d_loss = sum(terms)
    loop.opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    torch.nn.utils.clip_grad_norm_(nets.discriminators, lam["clip"])
    loop.opt_d.step()

    loop.update_ema()
    return g_loss.detach(), d_loss.detach()


def plain_step_reference_order(loop: PlainLoop, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`plain_step` in the reference's backward order: a forward and a backward per generator
    pass (cyc-aba, cyc-bab, idt-bb, idt-aa), then per discriminator (b, a0, a1) the penalty's backward
    and the hinge loss's. The same terms; the gradients are summed in another order."""
    nets, lam, n = loop.nets, loop.lambdas, loop.nets.norm
    (adv0, adv1, advb), (cyc0, cyc1, cycb), kind = lam["adv"], lam["cyc"], lam["kind"]
    a0, a1, b = batch["background"]["image"], batch["signal"]["image"], batch["embed"]["image"]
    c0 = nets.c0

    _discriminators_require_grad(nets, False)
    loop.opt_g.zero_grad(set_to_none=True)
    g_parts = []
    fake_b_n = nets.gen_ab(n(torch.cat([a0, a1], dim=1)))
    fake_b = n.inverse(fake_b_n)
    reco_a = n.inverse(nets.gen_ba(fake_b_n))
    g_parts.append(advb * generator_loss(nets.disc_b(fake_b), kind) + 0.5 * cyc0 * F.l1_loss(reco_a[:, :c0], a0)
                   + 0.5 * cyc1 * F.l1_loss(reco_a[:, c0:], a1))  # fmt: skip
    g_parts[-1].backward()
    fake_a_n = nets.gen_ba(n(b))
    fake_a = n.inverse(fake_a_n)
    reco_b = n.inverse(nets.gen_ab(fake_a_n))
    g_parts.append(0.5 * adv0 * generator_loss(nets.disc_a0(fake_a[:, :c0]), kind)
                   + 0.5 * adv1 * generator_loss(nets.disc_a1(fake_a[:, c0:]), kind)
                   + cycb * F.l1_loss(reco_b, b))  # fmt: skip
    g_parts[-1].backward()
    empty_signal = b.new_zeros(b.shape[0], a1.shape[1], *b.shape[2:])
    idt_bb = n.inverse(nets.gen_ab(n(torch.cat([b, empty_signal], dim=1))))
    g_parts.append(lam["idt_bb"] * cycb * F.l1_loss(idt_bb, b))
    g_parts[-1].backward()
    idt_aa = n.inverse(nets.gen_ba(n(a0 + a1)))
    g_parts.append(0.5 * lam["idt_aa"] * (cyc0 * F.l1_loss(idt_aa[:, :c0], a0) + cyc1 * F.l1_loss(idt_aa[:, c0:], a1)))
    g_parts[-1].backward()
    torch.nn.utils.clip_grad_norm_(nets.generators, lam["clip"])
    loop.opt_g.step()

    _discriminators_require_grad(nets, True)
    loop.opt_d.zero_grad(set_to_none=True)
    d_parts = []
    for disc, real, fake, scale in ((nets.disc_b, b, fake_b, advb), (nets.disc_a0, a0, fake_a[:, :c0], 0.5 * adv0),
                                    (nets.disc_a1, a1, fake_a[:, c0:], 0.5 * adv1)):  # fmt: skip
        fake = fake.detach()
        d_parts.append(lam["gp"] * zero_centred_gradient_penalty(disc, real, fake))
        d_parts[-1].backward()
        d_parts.append(scale * discriminator_loss(disc(real), disc(fake), kind))
        d_parts[-1].backward()
    torch.nn.utils.clip_grad_norm_(nets.discriminators, lam["clip"])
    loop.opt_d.step()

    loop.update_ema()
    return sum(p.detach() for p in g_parts), sum(p.detach() for p in d_parts)


# ------------------------------------------------------------------------------- the interleaving
class Interleaver(Callback):
    """Pauses ``Trainer.fit`` every ``block`` steps after ``warmup`` and runs the plain loop's block there.

    Order: Trainer warm-up, plain warm-up, then per pair: plain block, Trainer block; then cProfile
    of ``profile`` plain steps and ``profile`` Trainer steps. At the start of the step after that the
    two sides' weights and averages are compared and the fit ends (that step is not run).
    """

    def __init__(self, plain: PlainLoop, run: dict, device: torch.device, progress) -> None:
        self.plain, self.run, self.device, self.progress = plain, run, device, progress
        self.blocks: list[dict] = []
        self.losses: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.step, self.start, self.threads, self.done = 0, None, None, False
        self.in_block = False  # inside a timed Trainer block (not warm-up, not profiled)
        self.same_state: dict[str, bool] = {}
        self.profiles = {"plain": cProfile.Profile(time.process_time), "Trainer": cProfile.Profile(time.process_time)}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        warmup, block, pairs, profile = (self.run[k] for k in ("warmup", "block", "pairs", "profile_steps"))
        end = warmup + pairs * block
        step, self.step = self.step, self.step + 1
        boundary = warmup <= step <= end and (step - warmup) % block == 0
        if boundary:
            now = clock(self.device)
            self.in_block = False
            if self.start is not None:
                self.blocks[-1]["Trainer"] = (now[0] - self.start[0], now[1] - self.start[1])
                self.progress(self.blocks[-1]["Trainer"][0] / self.blocks[-1]["plain"][0])
        if step == end + profile:
            if profile:
                self.profiles["Trainer"].disable()
            self.same_state = compare_states(pl_module, self.plain.nets)
            self.done = True  # the module's hook (stop_when_done) now ends the fit, before this step
            return
        if not boundary:
            return
        self.threads = torch.get_num_threads()
        trainer_rng = get_rng(self.device)
        if step == end:
            self.plain.run(profile, self.profiles["plain"])
        else:
            if step == warmup:
                self.plain.run(warmup)
            self.blocks.append({"plain": self.plain.run(block)})
        set_rng(trainer_rng, self.device)
        if step == end:
            self.profiles["Trainer"].enable()
        self.in_block = step < end
        self.start = clock(self.device)

    def stop_when_done(self, batch, batch_idx: int) -> int | None:
        """Installed as the module's ``on_train_batch_start``: -1 ends the epoch (so the fit) before the step."""
        return -1 if self.done else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append((outputs["g_loss"].detach(), outputs["d_loss"].detach()))


class CallTimer:
    """Wall time inside a method of one object (installed on the instance), per Trainer step, summed over
    the steps of the timed Trainer blocks only: time hepgen's step spends that the plain loop does not."""

    def __init__(self, obj, name: str, driver: Interleaver) -> None:
        self.obj, self.name, self.driver = obj, name, driver
        self.per_step: dict[int, float] = defaultdict(float)
        method = getattr(obj, name)

        def timed(*args, **kwargs):
            if not driver.in_block:
                return method(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.per_step[driver.step] += time.perf_counter() - t0

        setattr(obj, name, timed)

    def remove(self) -> None:
        delattr(self.obj, self.name)

    def summary(self) -> dict:
        values = list(self.per_step.values())
        return {"steps": len(values), "median_s": statistics.median(values) if values else float("nan"),
                "mean_s": statistics.fmean(values) if values else float("nan")}  # fmt: skip


def compare_states(model: StratifiedCycleGAN, nets: Networks) -> dict[str, bool]:
    """Bit-for-bit equality of the two sides' networks and EMA copies (parameters and buffers)."""

    def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
        sa, sb = a.state_dict(), b.state_dict()
        return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    names = ("gen_ab", "gen_ba", "disc_a0", "disc_a1", "disc_b")
    out = {name: same(getattr(model, name), getattr(nets, name)) for name in names}
    out["ema_ab"] = same(model.averages["gen_ab"].module, nets.ema_ab)
    out["ema_ba"] = same(model.averages["gen_ba"].module, nets.ema_ba)
    return out


def trainer_kwargs(device: torch.device, root: Path) -> dict:
    return dict(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, logger=False,
                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                default_root_dir=str(root))  # fmt: skip


def bench_training(model: StratifiedCycleGAN, batches: list[dict], run: dict, sizes: dict, device: torch.device,
                   args, root: Path) -> dict:  # fmt: skip
    end = run["warmup"] + run["pairs"] * run["block"]
    plain = PlainLoop(model, batches, device, sizes, args.plain_order, args.compile)
    if args.compile:
        model.gen_ab.compile()
        model.gen_ba.compile()
    torch.manual_seed(args.seed)  # both sides start from the same global stream
    if device.type == "cuda":
        torch.cuda.manual_seed(args.seed)
    plain.rng = get_rng(device)
    driver = Interleaver(plain, run, device, lambda r: print(f" {r:.3f}", end="", flush=True))
    model.on_train_batch_start = driver.stop_when_done  # Lightning looks its hooks up on the instance
    log_timer = CallTimer(model, "log_dict", driver)  # wall time; no device sync inside (none is needed on CPU)
    # manual optimization: two optimizer steps (global_step) per batch; the fit ends at the callback's -1
    trainer = Trainer(**trainer_kwargs(device, root), max_steps=2 * len(batches), max_epochs=1, limit_val_batches=0,
                      num_sanity_val_steps=0, callbacks=[driver])  # fmt: skip
    print("  pair ratios Trainer/plain:", end="", flush=True)
    trainer.fit(model, train_dataloaders=fit_loader(batches))
    print()
    del model.on_train_batch_start
    log_timer.remove()
    if not driver.done or len(driver.blocks) != run["pairs"] or "Trainer" not in driver.blocks[-1]:
        raise RuntimeError(f"the fit stopped after {driver.step} batches, {len(driver.blocks)} blocks")
    n = min(len(plain.losses), len(driver.losses))
    diffs = [max(float((a - b).abs()) for a, b in zip(p, t)) for p, t in zip(plain.losses[:n], driver.losses[:n])]
    blocks, block = driver.blocks, run["block"]
    stats = spread([b["Trainer"][0] / b["plain"][0] for b in blocks])
    stats["cpu"] = spread([b["Trainer"][1] / b["plain"][1] for b in blocks])
    stats["summed"] = sum(b["Trainer"][0] for b in blocks) / sum(b["plain"][0] for b in blocks)
    sides = {side: {"s_per_step": statistics.median(b[side][0] for b in blocks) / block,
                    "cpu_s_per_step": statistics.median(b[side][1] for b in blocks) / block}
             for side in ("plain", "Trainer")}  # fmt: skip
    profile_steps = run["profile_steps"]
    profiles = {side: profile_report(p, profile_steps) for side, p in driver.profiles.items()} if profile_steps else {}
    norm_cost = time_pre_clip_norm(plain, device)
    return {"blocks": blocks, "block": block, "pairs": run["pairs"], "warmup": run["warmup"], "ratio": stats,
            "sides": sides, "steps_compared": n, "losses_identical": n == end + profile_steps and max(diffs) == 0.0,
            "max_loss_diff": max(diffs), "states_identical": driver.same_state, "threads_in_fit": driver.threads,
            "profiles": profiles, "pre_clip_norm": norm_cost, "plain_order": args.plain_order,
            "log_dict": log_timer.summary()}  # fmt: skip


# ------------------------------------------------------------------------------- where the time goes
def _key(fn) -> tuple:
    code = fn.__code__
    return code.co_filename, code.co_firstlineno, code.co_name


def _endswith(path: str, name: str):
    return lambda k: k[0].endswith(path) and k[2] == name


#: Phases by the function whose cumulative time they are; none of them calls another.
PHASES = {
    "generator forwards (6 ViT-ModNet passes)": lambda k: k == _key(ViTModNetGenerator.forward),
    "discriminator forwards (3 + 9, penalty's included)": lambda k: k == _key(ResNetDiscriminator.forward),
    "backward of the losses (G and D)": _endswith("torch/autograd/__init__.py", "backward"),
    "penalty's gradient (autograd.grad, create_graph)": _endswith("torch/autograd/__init__.py", "grad"),
    "clip_grad_norm_ (G and D)": _endswith("torch/nn/utils/clip_grad.py", "clip_grad_norm_"),
    "Adam steps (G and D)": _endswith("torch/optim/adam.py", "step"),
    "EMA update": lambda k: k == _key(PlainLoop.update_ema) or k[0].endswith("torch/optim/swa_utils.py")
    and k[2] == "update_parameters",
    "logging (LightningModule.log_dict)": _endswith("lightning/pytorch/core/module.py", "log_dict"),
}
PACKAGES = (("/lightning/", "lightning (Python)"), ("/torch/optim/", "torch.optim (Python)"),
            ("/torch/nn/", "torch.nn (Python: Module calls, clipping)"),
            ("/torch/autograd/", "torch.autograd (Python)"),
            ("/torch/", "torch (other Python)"), (f"{REPO}/hepgen/", "hepgen (Python)"),
            (f"{REPO}/benchmarks/", "this benchmark (Python)"))  # fmt: skip


def package_of(file: str, name: str) -> str:
    if file == "~":  # C functions
        if "run_backward" in name:
            return "autograd engine (C++: backward kernels)"
        return "torch ops (C++: kernels + dispatch)" if "torch" in name else "Python built-ins"
    return next((label for key, label in PACKAGES if key in file), "other Python")


def profile_report(profile: cProfile.Profile, steps: int) -> dict:
    try:
        stats = pstats.Stats(profile).stats
    except TypeError:  # nothing recorded
        return {"total": 0.0, "phases": {}, "packages": {}, "top": []}
    total = sum(v[2] for v in stats.values())  # own times add up to the profiled time
    phases = {name: sum(v[3] for k, v in stats.items() if match(k)) for name, match in PHASES.items()}
    phases["everything else (normalisation, L1 terms, data, hooks, ...)"] = total - sum(phases.values())
    packages = defaultdict(float)
    for (file, _, name), v in stats.items():
        packages[package_of(file, name)] += v[2]
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:12]
    return {"total": total / steps, "phases": {k: v / steps for k, v in phases.items()},
            "packages": {k: v / steps for k, v in sorted(packages.items(), key=lambda kv: -kv[1])},
            "top": [(f"{Path(f).name}:{line}({n})" if f != "~" else n, v[1] // steps, v[2] / steps)
                    for (f, line, n), v in top]}  # fmt: skip


def time_pre_clip_norm(plain: PlainLoop, device: torch.device, repeats: int = 3) -> dict:
    """Seconds of the norm ``AdversarialModule.take_step`` computes before clipping (hepgen/models/gan.py),
    on the plain loop's last gradients, against the total norm clip_grad_norm_ computes itself."""
    out = {}
    for name, params in (("generators", plain.nets.generators), ("discriminators", plain.nets.discriminators)):
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            continue
        take_step, clip = [], []
        for _ in range(repeats):
            start = clock(device)
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))  # take_step's
            take_step.append(since(start, device)[0])
            start = clock(device)
            torch.nn.utils.get_total_norm(grads)  # what clip_grad_norm_ computes
            clip.append(since(start, device)[0])
        out[name] = {"take_step_s": statistics.median(take_step), "clip_norm_s": statistics.median(clip),
                     "tensors": len(grads)}  # fmt: skip
    return out


# ------------------------------------------------------------------------------- 3. decomposition
class PredictTimer(Callback):
    """Wall and CPU time of a predict call's batch loop: from the first batch's start to the last one's end."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.first, self.last, self.batches = device, None, None, 0

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.first is None:
            self.first = clock(self.device)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.last = clock(self.device)
        self.batches += 1


@torch.no_grad()
def bare_decompose(model: StratifiedCycleGAN, mixtures: list[torch.Tensor], device: torch.device):
    """The bare loop: decompose each batch, results back in host memory; (wall, CPU) seconds."""
    model.eval()  # Trainer.predict puts the model back in training mode, where decompose uses gen_ba itself
    start = clock(device)
    kept = []
    for x in mixtures:
        background, signal = model.decompose(x.to(device, non_blocking=True))
        kept.append((background.cpu(), signal.cpu()))
    return since(start, device)


def trainer_predict(model: StratifiedCycleGAN, dm: SPhenixDataModule, device: torch.device, root: Path, **kwargs):
    """``Trainer.predict`` with the datamodule: (whole call, batch loop) as (wall, CPU) seconds."""
    timer = PredictTimer(device)
    trainer = Trainer(**trainer_kwargs(device, root), callbacks=[timer], **kwargs)
    start = clock(device)
    predictions = trainer.predict(model, datamodule=dm)
    whole = since(start, device)
    loop = (timer.last[0] - timer.first[0], timer.last[1] - timer.first[1])
    return whole, loop, sum(len(p["embed"]) for p in predictions)


def bench_decomposition(model: StratifiedCycleGAN, folder: Path, made_events: int, run: dict, device: torch.device,
                        args, root: Path) -> dict:  # fmt: skip
    dm = datamodule(folder, made_events, args.seed, PREDICT_BATCH, predict_split="test")
    dm.prepare_data()
    start = clock(device)
    batches = list(dm.predict_dataloader())  # data alone: the files read and the batches made, as predict does
    data_s = since(start, device)
    start = clock(device)
    for batch in batches:
        _check_finite(batch, {}, "predict")  # SPhenixDataModule.on_after_batch_transfer's check
    check_s = since(start, device)
    mixtures = [batch["embed"] for batch in batches]
    events = sum(len(x) for x in mixtures)
    model.eval()
    if args.compile:
        model.averages["gen_ba"].module.compile()
    bare_decompose(model, mixtures[:1], device)  # warm-up of the bare loop and the model
    trainer_predict(model, dm, device, root, limit_predict_batches=1)  # warm-up of the Trainer's machinery
    passes = []
    for repeat in range(run["predict_repeats"]):
        bare = bare_decompose(model, mixtures, device)
        whole, loop, n = trainer_predict(model, dm, device, root)
        if n != events:
            raise RuntimeError(f"Trainer.predict decomposed {n} events, the bare loop {events}")
        passes.append({"bare": bare, "trainer_call": whole, "trainer_loop": loop})
        print(f"  repeat {repeat + 1}: bare {bare[0]:.2f} s, Trainer.predict {whole[0]:.2f} s "
              f"(batch loop {loop[0]:.2f} s)", flush=True)  # fmt: skip
    sides = {}
    for side in ("bare", "trainer_call", "trainer_loop"):
        wall = statistics.median(p[side][0] for p in passes)
        sides[side] = {"s": wall, "cpu_s": statistics.median(p[side][1] for p in passes), "events_per_s": events / wall}
    ratios = {side: spread([p[side][0] / p["bare"][0] for p in passes]) for side in ("trainer_call", "trainer_loop")}
    return {"events": events, "batch": PREDICT_BATCH, "batches": len(mixtures), "repeats": run["predict_repeats"],
            "passes": passes, "sides": sides, "ratios": ratios, "data_s": data_s,
            "check_finite_s": check_s}  # fmt: skip


# ------------------------------------------------------------------------------- report
def ratio_text(s: dict) -> str:
    return f"{s['median']:.3f} (95 % CI {s['ci_lo']:.3f}–{s['ci_hi']:.3f}; IQR {s['q1']:.3f}–{s['q3']:.3f})"


def verdict(s: dict, goal: float) -> str:
    return "met" if s["ci_hi"] <= goal else "NOT met" if s["ci_lo"] > goal else "undecided (noise)"


def duration(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.1f} ms"


def print_profiles(reports: dict, steps: int) -> None:
    print("  profiled CPU-s/step: " + ", ".join(f"{side} {r['total']:.3f}" for side, r in reports.items()))
    for title, key in (("phase (cumulative)", "phases"), ("package (own time)", "packages")):
        print(f"\n  | {title} | plain CPU-s/step | % | Trainer CPU-s/step | % |\n  |---|---|---|---|---|")
        for name in dict.fromkeys([*reports["plain"][key], *reports["Trainer"][key]]):
            cells = [(r[key].get(name, 0.0), 100 * r[key].get(name, 0.0) / max(r["total"], 1e-12))
                     for r in reports.values()]
            print(f"  | {name} | " + " | ".join(f"{v:.4f} | {pct:.1f}" for v, pct in cells) + " |")
    for side, r in reports.items():
        print(f"\n  top functions by own time, {side} (CPU-s/step, calls/step):")
        for name, calls, seconds in r["top"]:
            print(f"    {seconds:8.4f} {calls:6d}  {name}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("reference", "quickstart"), default="reference",
                        help="network sizes: the model's defaults = the reference's sPHENIX sizes (batch 4), or "
                             "experiments/uvcgan_s/quickstart.yaml's (batch 16)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help=f"quickstart sizes at batch {QUICK_BATCH}, few steps")
    parser.add_argument("--batch-size", type=int, help="training batch size (default: the size's)")
    parser.add_argument("--warmup", type=int, help="untimed steps of each side first (reference 2, quickstart 3)")
    parser.add_argument("--block", type=int, help="training steps per block (reference 1, quickstart 2)")
    parser.add_argument("--pairs", type=int, help="interleaved pairs of blocks (reference 4, quickstart 12)")
    parser.add_argument("--profile-steps", type=int, help="cProfiled steps per side, 0 for none (1)")
    parser.add_argument("--predict-events", type=int, help="made test mixtures decomposed per pass (reference 256, "
                        "quickstart 1024); a multiple of 64")  # fmt: skip
    parser.add_argument("--predict-repeats", type=int,
                        help="alternating bare/Trainer passes (reference 2, quickstart 3)")
    parser.add_argument("--plain-order", choices=("hepgen", "reference"), default="hepgen",
                        help="the plain loop's backward order: hepgen's (one per optimizer; bit-identical losses) "
                             "or the reference's (one per generator pass, two per discriminator)")  # fmt: skip
    parser.add_argument("--skip-training", action="store_true", help="only section 3 (decomposition)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the generators on both sides")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: the usable cores; 1 on a busy "
                        "machine)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    size = "quickstart" if args.quick else args.size
    run = dict(RUNS["quick" if args.quick else size])
    run.update({k: getattr(args, k) for k in run if getattr(args, k) is not None})
    if min(v for k, v in run.items() if k != "profile_steps") < 1 or run["profile_steps"] < 0:
        parser.error("sizes must be >= 1 (--profile-steps >= 0)")
    if run["predict_events"] % PREDICT_BATCH:
        parser.error(f"--predict-events must be a multiple of {PREDICT_BATCH}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU here")
    sizes = model_sizes(size)
    sizes["batch"] = args.batch_size or (QUICK_BATCH if args.quick else sizes["batch"])

    started, cores, load_start = time.perf_counter(), usable_cores(), load_average()
    threads, threads_why = choose_threads(args.threads, cores, load_start)
    torch.set_num_threads(threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    for message in ("does not have many workers", "LeafSpec", "log_every_n_steps", "val_dataloader",
                    "validation_step", "predict_dataloader"):  # fmt: skip
        warnings.filterwarnings("ignore", message=f".*{message}.*")
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    machine = (f"{cpu_model()}, {cores} cores, torch {torch.__version__}, lightning {lightning.__version__}, "
               f"{threads} thread{'s' * (threads > 1)}{gpu}")  # fmt: skip
    title = f"{size} sizes" + (" (--quick)" if args.quick else "") + (", --compile" if args.compile else "")
    print(f"# hepgen benchmark: StratifiedCycleGAN (UVCGAN-S) on {device.type.upper()}, {title}")
    print(f"machine : {machine} | {platform.platform()} | python {platform.python_version()}")
    print(f"threads : {threads} ({threads_why})")
    busy = machine_busy(load_start, cores)
    print(f"load    : {format_load(load_start)} (1/5/15 min) at start"
          + (" -- BUSY: absolute times are unreliable; the pair ratios compare like with like" if busy else ""))
    results: dict = {"machine": machine, "device": str(device), "load_start": load_start, "size": size,
                     "quick": args.quick,
                     "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "run": run, "batch": sizes["batch"], "lr": sizes["lr"]}  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="hepgen-bench-uvcgan-s-") as tmp:
        root, folder = Path(tmp), Path(tmp) / "sphenix_made"
        t0 = time.perf_counter()
        made_events = make_data(folder, run["predict_events"], args.seed)
        end = run["warmup"] + run["pairs"] * run["block"]
        n_batches = end + run["profile_steps"] + 1  # + the batch at whose start the fit ends
        batches = [] if args.skip_training else draw_batches(folder, made_events, args.seed, sizes["batch"], n_batches)
        model = build_model(sizes, args.seed)
        counts = {"generator": n_params(model.gen_ab), "discriminator": n_params(model.disc_a0)}
        results["parameters"] = counts
        print(f"data    : made sPHENIX ({made_events:,} training mixtures, {made_events // 5:,} test) in "
              f"{time.perf_counter() - t0:.1f} s; {len(batches)} training batches of {sizes['batch']} pre-drawn")
        print(f"model   : {sizes['source']}: generators {counts['generator'] / 1e6:.2f}M parameters each, "
              f"discriminators {counts['discriminator'] / 1e6:.2f}M each; Adam lr {sizes['lr']:g} {sizes['betas']}, "
              f"EMA {model.hparams.ema_decay}, clip {model.hparams.grad_clip}")
        model.to(device)

        if not args.skip_training:
            print(f"\n## 1. Training step: {run['warmup']} warm-up steps per side, then {run['pairs']} rounds of "
                  f"{run['block']}-step blocks (plain, Trainer); plain backward order: {args.plain_order}", flush=True)
            train = bench_training(model, batches, run, sizes, device, args, root)
            results["training"] = train
            s, sides = train["ratio"], train["sides"]
            for side in ("plain", "Trainer"):
                print(f"  {side:<8}: {sides[side]['s_per_step']:.3f} s/step wall, {sides[side]['cpu_s_per_step']:.3f} "
                      "CPU-s/step (medians of the blocks)")
            print(f"  Trainer/plain wall: {ratio_text(s)}, min–max {s['min']:.3f}–{s['max']:.3f}, {s['n']} pairs; "
                  f"summed {s['summed']:.3f}; goal ≤ {GOAL_TRAINER_RATIO}: {verdict(s, GOAL_TRAINER_RATIO)}")
            print(f"  Trainer/plain CPU : {ratio_text(s['cpu'])}")
            print(f"  check: losses bit-identical at all {train['steps_compared']} steps: {train['losses_identical']} "
                  f"(max |diff| {train['max_loss_diff']:.3g}); weights and EMA copies identical: "
                  f"{all(train['states_identical'].values())} {train['states_identical']}; torch threads in the fit: "
                  f"{train['threads_in_fit']}"
                  + (" (not expected with --plain-order reference: other summation order and penalty draws)"
                     if args.plain_order == "reference" else ""))
            if train["profiles"]:
                print(f"\n## 2. Where the time goes (cProfile, CPU time, {run['profile_steps']} step(s) per side; "
                      "the profiler's own cost inflates the Python parts)")
                print_profiles(train["profiles"], run["profile_steps"])
            ld = train["log_dict"]
            print(f"\n  hepgen's step spends, outside the plain loop's work: LightningModule.log_dict (2 calls, 19 "
                  f"metrics, hepgen/models/uvcgan_s.py training_step) {duration(ld['median_s'])} per step (median of "
                  f"{ld['steps']} timed Trainer steps; mean {duration(ld['mean_s'])}, wall, not profiled)")
            for name, v in train["pre_clip_norm"].items():
                print(f"  pre-clip norm of take_step, {name} ({v['tensors']} gradients): {duration(v['take_step_s'])} "
                      f"per call; clip_grad_norm_'s own norm of the same: {duration(v['clip_norm_s'])}")
            del train, batches
            gc.collect()

        print(f"\n## 3. Decomposition at batch {PREDICT_BATCH} (EMA gen_ba, no grad): bare decompose loop vs "
              f"Trainer.predict with SPhenixDataModule, {run['predict_repeats']} alternating repeat(s)", flush=True)
        pred = bench_decomposition(model, folder, made_events, run, device, args, root)
        results["decomposition"] = pred
        ps, pr = pred["sides"], pred["ratios"]
        print(f"  {pred['events']:,} test mixtures = {pred['batches']} batches; data alone (HDF5 read + batches): "
              f"{pred['data_s'][0]:.2f} s a pass, finiteness checks {pred['check_finite_s'][0] * 1e3:.1f} ms")
        for side, label in (("bare", "bare decompose loop"), ("trainer_call", "Trainer.predict, whole call"),
                            ("trainer_loop", "Trainer.predict, batch loop")):  # fmt: skip
            v = ps[side]
            print(f"  {label:<28}: {v['events_per_s']:,.1f} events/s ({v['s']:.2f} s, {v['cpu_s']:.2f} CPU-s; "
                  f"{1e3 * v['s'] / pred['events']:.2f} ms/event)")
        for side, label in (("trainer_call", "whole call"), ("trainer_loop", "batch loop")):
            print(f"  Trainer.predict ({label}) / bare: {ratio_text(pr[side])}")

    load_end = load_average()
    results["load_end"], results["peak_rss_mib"] = load_end, peak_rss_mib()
    minutes = (time.perf_counter() - started) / 60
    print(f"\nload at the end: {format_load(load_end)}; peak RSS {results['peak_rss_mib']:.0f} MiB; "
          f"run took {minutes:.1f} min")
    if busy or (load_end and load_end[0] > threads + 0.5 * cores):
        print("WARNING: the machine was busy: absolute times are not reliable; quote the ratios, with their spread.")

    rows = []
    if "training" in results:
        train = results["training"]
        s, sides = train["ratio"], train["sides"]
        reference = (f"reference: {REFERENCE_GPU_S_PER_STEP * 1e3:.0f} ms/step on an A6000, "
                     f"{REFERENCE_CPU_S_PER_STEP[0]:.0f}–{REFERENCE_CPU_S_PER_STEP[1]:.0f} s on a 2-core CPU "
                     "(uvcgan_s.md §9)") if size == "reference" and sizes["batch"] == 4 else "—"  # fmt: skip
        rows.append((f"training step, batch {sizes['batch']}",
                     f"Trainer {sides['Trainer']['s_per_step']:.3f} s/step",
                     f"plain loop {sides['plain']['s_per_step']:.3f} s/step; {reference}",
                     f"{ratio_text(s)}; CPU {s['cpu']['median']:.3f}; goal ≤ {GOAL_TRAINER_RATIO}: "
                     f"{verdict(s, GOAL_TRAINER_RATIO)}"))  # fmt: skip
    ps, pr = pred["sides"], pred["ratios"]
    rows.append((f"decomposition, batch {PREDICT_BATCH}, {pred['events']:,} events",
                 f"Trainer.predict {ps['trainer_call']['events_per_s']:,.1f} events/s (batch loop "
                 f"{ps['trainer_loop']['events_per_s']:,.1f})",
                 f"bare decompose loop {ps['bare']['events_per_s']:,.1f} events/s "
                 f"({1e3 / ps['bare']['events_per_s']:.2f} ms/event; reference {REFERENCE_GPU_MS_PER_EVENT} "
                 "ms/event on an A6000)",
                 f"whole call {ratio_text(pr['trainer_call'])}; batch loop "
                 f"{pr['trainer_loop']['median']:.3f}"))  # fmt: skip
    checks = ""
    if "training" in results:
        t = results["training"]
        checks = (f"; training losses bit-identical: {t['losses_identical']} ({t['steps_compared']} steps), "
                  f"weights and EMA copies identical: {all(t['states_identical'].values())}")  # fmt: skip
    print(f"\n## README table\n\nMachine: {machine}; load {format_load(load_start)} at start, {format_load(load_end)} "
          f"at the end. {title}: generators {counts['generator'] / 1e6:.2f}M, discriminators "
          f"{counts['discriminator'] / 1e6:.2f}M parameters. Ratios: median of per-pair ratios (95 % CI; IQR)"
          f"{checks}.\n")
    print("| quantity | hepgen | reference | ratio / goal |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    main()
