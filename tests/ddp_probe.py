"""Callbacks that let a test see inside each DDP rank of a real ``hepgen`` command line.

A DDP run started by ``python -m hepgen fit ... --trainer.strategy ddp --trainer.devices 2``
runs its ranks as separate processes; a test can only read what they leave on disk. Add

    --trainer.callbacks+=tests.ddp_probe.WeightProbe [--trainer.callbacks.out_dir <dir>]

(from the repository root, where ``tests`` is importable) and every rank r writes
``<dir>/<stage>_rank<r>.pt``, ``<dir>`` defaulting to ``<run dir>/probe`` (``torch.load`` them
with ``weights_only=False``):

* ``fit_rank<r>.pt`` at the end of training: ``rank``, ``world_size``, ``global_step``, the
  model's ``state_dict`` and ``initial_state_dict`` (at the start of training; CPU copies),
  ``batches`` (per recorded step the batch's incident energies (B, 1) GeV for CaloGAN, or
  vertex invariants (B, 4) for A(i)DAPT, paths (B, T, 1 + C) for time series: which events the rank saw, in its order),
  ``first_noise`` (the first latent noise the GAN drew in training, (B, noise_dim); ``None`` for
  a model without ``noise``), ``first_outputs`` (the first training step's returned losses, as
  floats) and ``metrics`` (``trainer.callback_metrics`` as floats);
* ``validate_rank<r>.pt`` / ``test_rank<r>.pt`` at the end of that stage: ``rank``,
  ``world_size`` and ``metrics`` (what this rank logged, as floats).

:class:`CaloMetricsWithoutPlots` is CaloMetrics without the figures, for tests of its numbers.
:class:`SplitGlobalNoise` makes W ranks with batch B draw, between them, exactly the global
noise of one process with batch W * B (see its docstring); the CaloVAE equivalence test needs it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch import Callback

from callbacks import CaloMetrics

#: Batch keys whose values identify the events of a batch, by data family (first found is used).
EVENT_KEYS = ("energy", "vertex", "path", "features")


def _floats(metrics: dict) -> dict[str, float]:
    """``{name: float}`` of the scalar tensors and numbers in ``metrics``."""
    out = {}
    for name, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            out[name] = float(value)
        elif isinstance(value, (int, float)):
            out[name] = float(value)
    return out


class WeightProbe(Callback):
    """Dump, per rank, the weights, the events seen and the first noise and losses of a run.

    Args:
        out_dir: folder for the ``<stage>_rank<r>.pt`` files (default: ``<run dir>/probe``).
        record_batches: training steps whose events are recorded (the first ones).
    """

    def __init__(self, out_dir: str | None = None, record_batches: int = 4) -> None:
        self.out_dir = out_dir
        self.record_batches = record_batches
        self.batches: list[torch.Tensor] = []
        self.first_noise: torch.Tensor | None = None
        self.first_outputs: dict[str, float] | None = None
        self.initial_state: dict[str, torch.Tensor] | None = None

    def _path(self, trainer, stage: str) -> Path:
        folder = Path(self.out_dir) if self.out_dir else Path(trainer.default_root_dir) / "probe"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{stage}_rank{trainer.global_rank}.pt"

    # --- what the training draws ----------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        self.initial_state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        # Wrap the GAN's noise source: the first tensor drawn in training is kept. The wrapper
        # calls the model's own method at draw time, so the model's reseeding of ranks > 0 (in
        # its on_train_start, which runs after this hook) is what is recorded.
        original = getattr(pl_module, "noise", None)
        if not callable(original):
            return

        def recording_noise(*args, **kwargs):
            value = original(*args, **kwargs)
            if self.first_noise is None and pl_module.training:
                self.first_noise = value.detach().cpu().clone()
            return value

        pl_module.noise = recording_noise

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if len(self.batches) < self.record_batches and isinstance(batch, dict):
            key = next((k for k in EVENT_KEYS if k in batch), None)
            if key is not None:
                self.batches.append(batch[key].detach().cpu().clone())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.first_outputs is None:
            if isinstance(outputs, dict):
                self.first_outputs = _floats(outputs)
            elif isinstance(outputs, torch.Tensor):
                self.first_outputs = {"loss": float(outputs)}

    # --- what each rank ends with ---------------------------------------------------------------
    def on_train_end(self, trainer, pl_module) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "state_dict": state,
            "initial_state_dict": self.initial_state,
            "batches": self.batches,
            "first_noise": self.first_noise,
            "first_outputs": self.first_outputs,
            "metrics": _floats(trainer.callback_metrics),
        }
        torch.save(record, self._path(trainer, "fit"))

    def _save_metrics(self, trainer, stage: str) -> None:
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "metrics": _floats(trainer.callback_metrics)}
        torch.save(record, self._path(trainer, stage))

    def on_validation_end(self, trainer, pl_module) -> None:
        # during fit the validation metrics end up in fit_rank<r>.pt; this is `hepgen validate`
        if trainer.state.fn == "validate":
            self._save_metrics(trainer, "validate")

    def on_test_end(self, trainer, pl_module) -> None:
        self._save_metrics(trainer, "test")


class SplitGlobalNoise(Callback):
    """Make W ranks with batch B draw, between them, exactly the global noise of one W x B process.

    CaloVAE draws its reparametrisation noise ``eps`` (B, latent_dim) from the global torch
    stream in one ``randn`` call per step. Three things keep a DDP run from drawing the rows a
    single process draws, and this callback undoes them:

    * Every rank seeds alike, so without help both ranks draw the *same* eps for their different
      events. Here rank r skips the noise of the r ranks before it before its step, and that of
      the ranks after it after its step: across ranks the rows of step k are then the W * B rows
      of step k of one process, rank r holding rows r * B ... (r + 1) * B - 1. (torch's CPU
      ``randn`` of n >= 16 values, n a multiple of 16, is the concatenation of its smaller such
      draws, so B * normals_per_event must be a multiple of 16; other sizes are refused.)
    * The training sampler gives rank r the events r, r + W, r + 2W, ... of the single-process
      batch, not a contiguous block. So in a single process (``trainer.world_size == 1``) the
      batch's rows are reordered rank-major (rows 0, W, 2W, ..., then 1, W + 1, ...) before the
      step: the same events, a mean loss that differs only in summation order, and row j of eps
      now meets the event that rank j // B sees as its row j % B.
    * The streams must also start alike: Lightning's DDP strategy re-seeds every rank with
      ``seed_everything``'s seed when it sets up the process group (``reset_seed()`` in
      ``DDPStrategy.setup_distributed``), after the model was built, while a single process trains
      on from the state its model construction left, and CaloVAE then gives ranks > 0 their own
      stream (``reseed_for_rank``). So this callback re-seeds every process alike before the first
      training batch, after all of these.

    It assumes the training step draws from the global stream nothing but ``normals_per_event``
    normals per event, in one ``randn`` call, and that every rank's batch has the same size B.

    Args:
        normals_per_event: normals drawn per event and step (CaloVAE: ``latent_dim``).
        world_size: W of the DDP run a single process is to reproduce (ignored under DDP).
    """

    def __init__(self, normals_per_event: int, world_size: int = 2) -> None:
        self.normals_per_event = normals_per_event
        self.world_size = world_size

    def on_train_start(self, trainer, pl_module) -> None:
        self._seeded = False

    def _seed_once(self) -> None:
        if not self._seeded:  # after the module's own on_train_start (per-rank reseeding)
            reset_seed()
            self._seeded = True

    def _rank_shape(self, batch_size: int) -> tuple[int, int]:
        """The (B, normals_per_event) noise of one rank's batch; refused unless it splits the stream cleanly."""
        shape = (batch_size, self.normals_per_event)
        if batch_size * self.normals_per_event % 16:
            raise ValueError(f"SplitGlobalNoise: {shape} is not a multiple of 16 normals; the streams would not align.")
        return shape

    def _skip(self, ranks: int, batch_size: int) -> None:
        """Draw (and drop) the noise of ``ranks`` ranks with batch ``batch_size``, as they draw it."""
        shape = self._rank_shape(batch_size)
        for _ in range(ranks):
            torch.randn(shape)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._seed_once()
        if trainer.world_size == 1:
            self._rank_shape(len(batch["energy"]) // self.world_size)
            # the dict is the object training_step receives: reorder its tensors in place
            for key, value in batch.items():
                batch[key] = torch.cat([value[r :: self.world_size] for r in range(self.world_size)])
            return
        self._skip(trainer.global_rank, len(batch["energy"]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.world_size > 1:
            self._skip(trainer.world_size - 1 - trainer.global_rank, len(batch["energy"]))


class CaloMetricsWithoutPlots(CaloMetrics):
    """:class:`callbacks.CaloMetrics` without its figures: the same gathering, metrics and
    ``metrics.json``, minus the three PNGs that rank 0 renders (about 8 s of a 2-core machine per
    evaluation, where the numbers are the subject)."""

    def figures(self, reference, generated, stage):
        return {}
