"""The datamodule contract every data family follows.

* ``source: real`` reads the published files from ``data_dir``; a missing file is an error that
  names it and says where to get it. ``source: made`` writes hepgen's made data into ``data_dir``
  first (only files that are not there yet), in exactly the real format, then reads it with the
  same code. Made data never stands in for a missing real file.
* Splits are a seeded permutation of all events (``split_seed``), so they are the same in every
  process and every later evaluation; their sizes are stored in the checkpoint and checked when it
  is loaded. Normalisation statistics belong to the model (buffers), never to the datamodule, so
  they travel with the weights and are never refit at evaluation.
* Batches are dicts of tensors, fetched as whole slices (no per-event Python collation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from hepgen.io import DataFileError

SPLITS = ("train", "val", "test")


class ArrayDictDataset(Dataset):
    """Events stored as a dict of tensors with a common first dimension N; a batch is a dict of slices."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        lengths = {len(v) for v in tensors.values()}
        assert len(lengths) == 1, f"tensors of different lengths: { {k: len(v) for k, v in tensors.items()} }"
        self.tensors = tensors
        self.n = lengths.pop()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.tensors.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices)
        return {k: v[idx] for k, v in self.tensors.items()}


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
    return batch


class EpochShuffleSampler(Sampler[int]):
    """A fresh permutation every epoch, drawn from ``seed + epoch`` alone.

    The order of training events then depends on the epoch number and not on the global random
    state, so a run resumed from a checkpoint sees exactly the batches of the uninterrupted run.
    Lightning calls :meth:`set_epoch` at the start of every epoch.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int, where: str) -> dict[str, np.ndarray]:
    """Seeded split of ``n`` events into train/val/test index arrays; an empty requested split is an error."""
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{name}={frac} must be in [0, 1).")
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    parts = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
    wanted = {"train": 1.0, "val": val_fraction, "test": test_fraction}
    for name, idx in parts.items():
        if wanted[name] > 0 and len(idx) == 0:
            raise DataFileError(
                f"{where}: the '{name}' split is empty ({n} events, val_fraction={val_fraction}, "
                f"test_fraction={test_fraction}). Use more events or larger fractions."
            )
    return parts


class HepDataModule(LightningDataModule):
    """Base of hepgen's datamodules: real-or-made files, seeded splits, dict batches.

    Subclasses implement :meth:`required_files`, :meth:`make_files` and :meth:`load_events`.

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
        self.datasets: dict[str, ArrayDictDataset] = {}

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

    # --- the contract ----------------------------------------------------------------------
    def prepare_data(self) -> None:
        missing = [p for p in self.required_files() if not p.is_file()]
        if self.source == "made":
            for path in self.required_files():
                if path.is_file():
                    self.check_made_file(path)
            if missing:
                self.make_files(missing)
        elif missing:
            raise DataFileError(f"data file not found: {missing[0]}. {self.download_hint}")

    def setup(self, stage: str) -> None:
        if stage == "predict" or self.datasets:
            return
        events = self.load_events()
        n = len(next(iter(events.values())))
        self.split_sizes = {}
        parts = split_indices(n, self.val_fraction, self.test_fraction, self.split_seed, str(self.data_dir))
        for name, idx in parts.items():
            idx_t = torch.as_tensor(np.sort(idx))
            self.datasets[name] = ArrayDictDataset({k: v[idx_t] for k, v in events.items()})
            self.split_sizes[name] = len(idx)

    def training_sample(self, n: int | None = None) -> dict[str, torch.Tensor]:
        """The first ``n`` events of the training split (all when ``None``), as a dict of tensors.

        The one way a model fits its statistics (scalers, normalisations) on training data: it
        works for in-RAM and lazy datasets alike and reads only what it returns. Physical units,
        the same keys as a training batch.
        """
        if "train" not in self.datasets:
            self.setup("fit")
        tensors = self.datasets["train"].tensors
        return {k: v[:n] for k, v in tensors.items()} if n is not None else dict(tensors)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets or len(self.datasets[split]) == 0:
            raise DataFileError(f"{self.data_dir}: no '{split}' events (is its fraction 0?).")
        dataset = self.datasets[split]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.split_seed + 1) if shuffle else None,
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

    # --- splits travel with the checkpoint ---------------------------------------------------
    def state_dict(self) -> dict:
        return {"split_sizes": dict(getattr(self, "split_sizes", {})), "split_seed": self.split_seed}

    def load_state_dict(self, state_dict: dict) -> None:
        current = getattr(self, "split_sizes", None)
        saved = state_dict.get("split_sizes")
        if current and saved and (current != saved or state_dict.get("split_seed") != self.split_seed):
            raise DataFileError(
                f"{self.data_dir}: the data or split differ from those the checkpoint was trained on "
                f"(checkpoint: {saved}, seed {state_dict.get('split_seed')}; now: {current}, seed "
                f"{self.split_seed}). Use the run's own config.yaml."
            )
