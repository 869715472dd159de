"""The datamodule contract every data family follows.

* ``source: real`` reads the published files from ``data_dir``; a missing file is an error that
  names it and says where to get it. ``source: made`` writes hepgen's made data into ``data_dir``
  first (only files that are not there yet), in exactly the real format, then reads it with the
  same code. Made data never stands in for a missing real file. Checking and making hold a
  file lock beside ``data_dir``, so processes or nodes sharing the folder make each file once.
* Three overridable hooks shape the data: :meth:`HepDataModule.splits` (which events go where:
  a seeded permutation by default; region, k-fold and file-defined splits are in
  :mod:`datamodules.splits`), :meth:`HepDataModule.build_dataset` (in-RAM tensors by default;
  :class:`LazyHDF5Dataset` and :class:`MultiDomainDataset` are in :mod:`datamodules.datasets`) and
  :meth:`HepDataModule.training_sample`, the one way a model fits statistics on training data.
* Splits are the same in every process and every later evaluation; their sizes are stored in the
  checkpoint and checked when it is loaded. Normalisation statistics belong to the model
  (buffers), never to the datamodule, so they travel with the weights and are never refit.
* Batches are dicts of tensors, fetched as whole slices (no per-event Python collation). The
  training order is drawn from ``split_seed + 1 + epoch`` alone and val/test keep storage order,
  on one process or many (:mod:`datamodules.samplers`).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, default_collate

from datamodules.datasets import ArrayDictDataset, head
from datamodules.samplers import EpochShuffleSampler, EvaluationSampler
from datamodules.splits import SPLITS, split_indices
from hepgen.errors import ConfigValueError
from hepgen.io import DataFileError
from hepgen.run_lock import waiting_lock

__all__ = [
    "SPLITS", "ArrayDictDataset", "EpochShuffleSampler", "EvaluationSampler", "HepDataModule",
    "global_batch_index", "lock_path", "made_data_lock", "split_indices",
]  # fmt: skip

#: Suffix of the lock file that serialises making data (``data/.calogan.hepgen-make.lock``).
LOCK_SUFFIX = ".hepgen-make.lock"


def global_batch_index(trainer, batch_idx: int) -> int:
    """The index a val/test batch has in the single-process batching.

    Under DDP the evaluation sampler gives rank r the batches r, r + W, r + 2W, ... of the
    single-process order (W ranks), so batch ``batch_idx`` of rank r is global batch
    ``batch_idx * W + r``; in a single process it is ``batch_idx``.
    """
    if trainer is None:
        return batch_idx
    return batch_idx * trainer.world_size + trainer.global_rank


def _already_batched(batch):
    # datasets with __getitems__ return the batch itself; others a list of events to stack
    return default_collate(batch) if isinstance(batch, list) else batch


def lock_path(folder: Path) -> Path:
    """The lock file of a data folder: beside it, so the folder itself holds only data (a folder
    that hepgen checks and refuses is left exactly as it was found)."""
    folder = folder.resolve()
    return folder.parent / f".{folder.name}{LOCK_SUFFIX}"


def made_data_lock(folder: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on :func:`lock_path` (folder), waited for: one process makes the files."""
    folder.mkdir(parents=True, exist_ok=True)
    return waiting_lock(lock_path(folder))


class HepDataModule(LightningDataModule):
    """Base of hepgen's datamodules: real-or-made files, seeded splits, dict batches.

    Subclasses implement :meth:`required_files`, :meth:`make_files` and :meth:`load_events`, and
    may override the hooks :meth:`splits`, :meth:`build_dataset` (with :meth:`count_events`, so
    lazy data need not be loaded) and :meth:`training_sample`.

    Args:
        data_dir: folder with the data files.
        source: ``real`` (published files, must exist) or ``made`` (hepgen writes them if absent).
        made_events: events per made file.
        made_seed: seed of the made data.
        val_fraction: fraction of events for validation.
        test_fraction: fraction of events for test.
        split_seed: seed of the train/val/test permutation.
        batch_size: events per batch.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        data_dir: str = "data",
        source: str = "real",
        made_events: int = 10_000,
        made_seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        batch_size: int = 256,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if source not in ("real", "made"):
            raise ValueError(f"source={source!r}: choose 'real' (published files) or 'made' (hepgen makes them).")
        self.data_dir = Path(data_dir)
        self.source = source
        self.made_events = made_events
        self.made_seed = made_seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.datasets: dict[str, Dataset] = {}
        self._events: dict[str, torch.Tensor] | None = None

    #: Where the real files come from (shown when one is missing).
    download_hint: str = ""

    # --- what a data family provides -------------------------------------------------------
    def required_files(self) -> list[Path]:
        """The files this configuration reads."""
        raise NotImplementedError

    def make_files(self, missing: list[Path]) -> None:
        """Write made data for the ``missing`` files, in the real format."""
        raise NotImplementedError

    def check_made_file(self, path: Path) -> None:
        """Raise if an existing file in a ``source: made`` folder is not hepgen-made data."""

    def load_events(self) -> dict[str, torch.Tensor]:
        """Read and check all required files; return all events as a dict of tensors."""
        raise NotImplementedError

    # --- the hooks -------------------------------------------------------------------------
    def all_events(self) -> dict[str, torch.Tensor]:
        """All events ``{key: (N, ...)}`` from :meth:`load_events`, read once until setup ends."""
        if self._events is None:
            self._events = self.load_events()
        return self._events

    def count_events(self) -> int:
        """N, the number of events the splits divide (a lazy datamodule reads it from metadata)."""
        return len(next(iter(self.all_events().values())))

    def splits(self, n_events: int) -> dict[str, np.ndarray]:
        """``{"train": (M,), "val": ..., "test": ...}`` int64 indices into the N events.

        Default: the seeded permutation :func:`split_indices` (``val_fraction``,
        ``test_fraction``, ``split_seed``). Overrides use the helpers of
        :mod:`datamodules.splits` (region, k-fold, file-defined splits).
        """
        return split_indices(n_events, self.val_fraction, self.test_fraction, self.split_seed, str(self.data_dir))

    def build_dataset(self, split: str, indices: np.ndarray) -> Dataset:
        """The dataset of one split, from its sorted (M,) event indices.

        Default: the events in RAM (:class:`ArrayDictDataset`). Data larger than RAM return a
        :class:`~datamodules.datasets.LazyHDF5Dataset` over the same indices instead.
        """
        idx = torch.as_tensor(indices)
        return ArrayDictDataset({k: v[idx] for k, v in self.all_events().items()})

    def training_sample(self, n: int | None = None) -> dict[str, torch.Tensor]:
        """The first ``n`` events of the training split (all when ``None``), as a dict of tensors.

        The one way a model fits its statistics (scalers, normalisations) on training data: it
        works for in-RAM and lazy datasets alike and reads only what it returns. Physical units,
        the same keys as a training batch.
        """
        if "train" not in self.datasets:
            self.setup("fit")
        return head(self.datasets["train"], n)

    # --- the contract ----------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.source == "real":
            missing = self._missing_files()
            if missing:
                raise DataFileError(f"data file not found: {missing[0]}. {self.download_hint}")
            return
        # Lightning calls this on one process per node, and nodes may share the folder: checking
        # and making is one step under the lock, so a second maker waits, then finds the files.
        with made_data_lock(self.data_dir):
            missing = self._check_made_files()
            if missing:
                self.make_files(missing)

    def _missing_files(self) -> list[Path]:
        return [p for p in self.required_files() if not p.is_file()]

    def _check_made_files(self) -> list[Path]:
        """Check the required files that exist are hepgen-made; return the missing ones."""
        for path in self.required_files():
            if path.is_file():
                self.check_made_file(path)
        return self._missing_files()

    def setup(self, stage: str) -> None:
        if stage == "predict" or self.datasets:
            return
        parts = self.splits(self.count_events())
        self.split_sizes = {}
        for name, idx in parts.items():
            idx = np.sort(np.asarray(idx, dtype=np.int64))
            self.datasets[name] = self.build_dataset(name, idx)
            self.split_sizes[name] = len(idx)
        self._events = None  # the datasets hold what they need

    def _world(self) -> tuple[int, int]:
        """(W, r): the number of processes and this one's rank, from the Trainer when attached."""
        trainer = self.trainer
        return (1, 0) if trainer is None else (trainer.world_size, trainer.global_rank)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets or len(self.datasets[split]) == 0:
            raise DataFileError(f"{self.data_dir}: no '{split}' events (is its fraction 0?).")
        return self.dataloader(self.datasets[split], shuffle, split)

    def dataloader(
        self, dataset: Dataset, shuffle: bool, split: str = "predict", *, sharded: bool = True, batch_size: int | None = None
    ) -> DataLoader:
        """hepgen's DataLoader of ``dataset``: the epoch-shuffled training sampler, or the
        evaluation sampler that keeps the single-process batch order across DDP ranks.
        ``sharded=False`` gives this process all of it (a callback reading a second split on rank 0);
        ``batch_size`` replaces ``data.batch_size`` (e.g. a predict batch for sampling)."""
        world, rank = self._world() if sharded else (1, 0)
        key = "data.batch_size" if batch_size is None else "its batch size"
        batch_size = self.batch_size if batch_size is None else batch_size
        if shuffle:
            sampler = EpochShuffleSampler(
                dataset, self.split_seed + 1, num_replicas=world, rank=rank, **self._train_position(batch_size)
            )
            self._train_sampler = sampler
        else:
            batches = math.ceil(len(dataset) / batch_size)
            if batches < world:  # a rank without batches would wait forever in the metrics' gather
                raise ConfigValueError(
                    f"{self.data_dir}: the '{split}' split holds {len(dataset)} events = {batches} batch(es) of "
                    f"{batch_size}, fewer than the {world} DDP ranks that evaluate them. Set {key} "
                    f"<= {math.ceil(len(dataset) / world)} or use fewer devices."
                )
            sampler = EvaluationSampler(dataset, batch_size, num_replicas=world, rank=rank)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            # the loader's own generator: creating its iterator must not draw from the global stream
            generator=torch.Generator().manual_seed(self.split_seed),
            num_workers=self.num_workers,
            collate_fn=_already_batched,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def _train_position(self, batch_size: int) -> dict:
        """Where a (resumed) fit's training order starts: the epoch Lightning is about to run, and
        the events of it this rank used before the checkpoint was written (see ``state_dict``)."""
        loop = getattr(self.trainer, "fit_loop", None)
        epoch = 0 if loop is None else loop.epoch_progress.current.processed
        saved = getattr(self, "_resume_position", None)
        resume_after = None if saved is None else (saved["epoch"], saved["batches"] * batch_size)
        return {"epoch": epoch, "resume_after": resume_after}

    # --- splits and the place in the training order travel with the checkpoint ----------------
    def state_dict(self) -> dict:
        state = {"split_sizes": dict(getattr(self, "split_sizes", {})), "split_seed": self.split_seed}
        sampler, loop = getattr(self, "_train_sampler", None), getattr(self.trainer, "fit_loop", None)
        if sampler is not None and loop is not None:
            # A checkpoint written inside an epoch (a SLURM requeue's, a step-wise one) resumes
            # after the batches this epoch already trained on; at the epoch's end it holds them
            # all, and the resumed run starts the next epoch from its beginning.
            batches = loop.epoch_loop.batch_progress.current.processed
            state["train_position"] = {"epoch": sampler.epoch, "batches": batches}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume_position = state_dict.get("train_position")
        # the training order resumes inside an epoch by itself (_train_position), unlike the
        # plain loaders Lightning warns about
        warnings.filterwarnings("ignore", "You're resuming from a checkpoint that ended before the epoch ended")
        current = getattr(self, "split_sizes", None)
        saved = state_dict.get("split_sizes")
        if current and saved and (current != saved or state_dict.get("split_seed") != self.split_seed):
            raise DataFileError(
                f"{self.data_dir}: the data or split differ from those the checkpoint was trained on "
                f"(checkpoint: {saved}, seed {state_dict.get('split_seed')}; now: {current}, seed "
                f"{self.split_seed}). Use the run's own config.yaml."
            )
