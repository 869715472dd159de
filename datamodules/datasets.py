"""The platform's datasets: events as dicts of tensors, fetched a whole batch at a time.

* :class:`ArrayDictDataset`: all events in RAM (the default of every datamodule).
* :class:`LazyHDF5Dataset`: events read on demand from HDF5 files (data larger than RAM).
* :class:`MultiDomainDataset`: unpaired domains of different sizes, drawn independently.

Every dataset implements ``__getitems__(indices) -> {key: (len(indices), ...)}`` (the DataLoader
then hands the batch over as it is) and ``head(n)`` (the first n events, for fitting statistics).
:func:`read_events` and :func:`head` also serve any other map-style dataset of dict events.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from hepgen.io import DataFileError


def read_events(dataset: Dataset, indices: Sequence[int]) -> dict:
    """The events ``indices`` of ``dataset`` as one batch ``{key: (len(indices), ...)}``."""
    getitems = getattr(dataset, "__getitems__", None)
    if getitems is not None:
        return getitems(list(indices))
    return default_collate([dataset[i] for i in indices])


def head(dataset: Dataset, n: int | None = None) -> dict:
    """The first ``n`` events of ``dataset`` (all when ``None``) as one batch, reading only those."""
    if callable(getattr(dataset, "head", None)):
        return dataset.head(n)
    return read_events(dataset, range(len(dataset) if n is None else min(n, len(dataset))))


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

    def head(self, n: int | None = None) -> dict[str, torch.Tensor]:
        return {k: v[:n] for k, v in self.tensors.items()} if n is not None else dict(self.tensors)


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    # float16 halves the file size; computing in it loses precision, so widen on the fly
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(array))


class LazyHDF5Dataset(Dataset):
    """Events read on demand from one or more HDF5 files, concatenated along the first axis.

    A batch reads, per file and key, the requested events in one sorted read: a slice when they
    are dense, h5py fancy indexing otherwise (it needs increasing, unique indices), and puts
    them back in the requested order. float16 data arrive as float32. The length comes from the
    files' metadata, no data are read until a batch is asked for.

    Files are opened on first use in each process and never pickled: a DataLoader worker (forked
    or spawned) opens its own handles, as HDF5 handles must not cross processes.

    Args:
        files: HDF5 files, in order; event i of the concatenation is a global index.
        keys: batch key -> HDF5 dataset name in every file (a list: the same names).
        indices: (M,) global indices of the events of this dataset (a split); all when ``None``.
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        keys: Mapping[str, str] | Sequence[str],
        indices: np.ndarray | None = None,
    ) -> None:
        self.files = [Path(f) for f in files]
        self.keys = dict(keys) if isinstance(keys, Mapping) else {k: k for k in keys}
        if not self.files or not self.keys:
            raise ValueError(f"LazyHDF5Dataset needs files and keys (got {len(self.files)} files, keys {self.keys}).")
        lengths = [self._file_length(path) for path in self.files]
        #: (F + 1,) first global index of each file, and the total number of events last
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        total = int(self.offsets[-1])
        self.indices = np.arange(total) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= total):
            raise ValueError(f"indices must lie in [0, {total}), the events of {len(self.files)} file(s).")
        self._handles: list[h5py.File | None] = []
        self._pid: int | None = None

    def _file_length(self, path: Path) -> int:
        """Events in one file, from the metadata; every key must have the same first dimension."""
        try:
            f = h5py.File(path, "r")
        except OSError as err:
            raise DataFileError(f"{path} is not a readable HDF5 file ({err}).") from err
        with f:
            missing = [name for name in self.keys.values() if name not in f]
            if missing:
                raise DataFileError(f"{path}: dataset(s) {missing} missing (found {sorted(f.keys())}).")
            lengths = {key: f[name].shape[0] for key, name in self.keys.items()}
        if len(set(lengths.values())) != 1:
            raise DataFileError(f"{path}: the datasets have different numbers of events: {lengths}.")
        return next(iter(lengths.values()))

    def _file(self, i: int) -> h5py.File:
        # a forked worker inherits the parent's handles: reopen in every new process
        if self._pid != os.getpid():
            self._handles, self._pid = [None] * len(self.files), os.getpid()
        if self._handles[i] is None:
            self._handles[i] = h5py.File(self.files[i], "r")
        return self._handles[i]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = [], None
        return state

    def close(self) -> None:
        """Close the files this process opened (they reopen on the next read)."""
        for f in self._handles:
            if f is not None:
                f.close()
        self._handles, self._pid = [], None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        wanted = self.indices[np.asarray(indices, dtype=np.int64)]
        if len(wanted) == 0:  # keep the keys, shapes and dtypes
            return {key: _as_tensor(self._file(0)[name][0:0]) for key, name in self.keys.items()}
        unique, inverse = np.unique(wanted, return_inverse=True)  # sorted, no repeats
        file_of = np.searchsorted(self.offsets, unique, side="right") - 1
        parts: dict[str, list[np.ndarray]] = {key: [] for key in self.keys}
        for i in np.unique(file_of):
            local = unique[file_of == i] - self.offsets[i]
            first, span = int(local[0]), int(local[-1] - local[0]) + 1
            # dense events are cheaper as one contiguous read (whole compressed chunks anyway)
            dense = span <= 2 * len(local)
            f = self._file(int(i))
            for key, name in self.keys.items():
                if dense:
                    block = f[name][first : first + span]
                    parts[key].append(block if span == len(local) else block[local - first])
                else:
                    parts[key].append(f[name][local])
        reorder = not np.array_equal(unique, wanted)  # repeats or not ascending
        out = {}
        for key, blocks in parts.items():
            array = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
            out[key] = _as_tensor(array[inverse] if reorder else array)
        return out

    def head(self, n: int | None = None) -> dict[str, torch.Tensor]:
        return self.__getitems__(range(len(self) if n is None else min(n, len(self))))


class MultiDomainDataset(Dataset):
    """Unpaired domains of different sizes (e.g. signal, background, mixed), drawn independently.

    Item p (0 <= p < length) holds one event of every domain: event ``order(d, epoch)[p]`` of
    domain d, where the order is a concatenation of independent permutations of the domain's
    events seeded by (seed, epoch, domain number) and cut to ``length``. A smaller domain thus
    cycles through all its events before repeating one, and which events meet in a batch
    changes every epoch. A batch is nested: ``{domain: {key: (B, ...)}}``.

    The epoch lives in shared memory, so DataLoader workers (persistent ones too) follow
    :meth:`set_epoch`; hepgen's training sampler calls it together with its own.

    Args:
        domains: name -> dataset of dict events (in-RAM or lazy).
        seed: seed of the per-epoch orders.
        length: items per epoch; the largest domain's size when ``None``.
    """

    def __init__(self, domains: Mapping[str, Dataset], seed: int = 0, length: int | None = None) -> None:
        self.domains = dict(domains)
        empty = [name for name, dataset in self.domains.items() if len(dataset) == 0]
        if not self.domains or empty:
            raise DataFileError(f"MultiDomainDataset: domain(s) {empty or '(none given)'} hold no events.")
        self.seed = seed
        self.length = max(len(d) for d in self.domains.values()) if length is None else int(length)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._orders: tuple[int, dict[str, np.ndarray]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)
        # a domain whose items depend on the epoch too (e.g. mixtures of random pairs) follows along
        for dataset in self.domains.values():
            if callable(getattr(dataset, "set_epoch", None)):
                dataset.set_epoch(epoch)

    def order(self, domain: str, epoch: int) -> np.ndarray:
        """(length,) event indices of ``domain`` for the items of ``epoch``."""
        size = len(self.domains[domain])
        rng = np.random.default_rng([self.seed, epoch, list(self.domains).index(domain)])
        cycles = -(-self.length // size)
        return np.concatenate([rng.permutation(size) for _ in range(cycles)])[: self.length]

    def _epoch_orders(self) -> dict[str, np.ndarray]:
        epoch = int(self._epoch)
        if self._orders is None or self._orders[0] != epoch:  # once per epoch and process
            self._orders = (epoch, {name: self.order(name, epoch) for name in self.domains})
        return self._orders[1]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, dict[str, torch.Tensor]]:
        batch = self.__getitems__([index])
        return {name: {k: v[0] for k, v in events.items()} for name, events in batch.items()}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, dict[str, torch.Tensor]]:
        orders, positions = self._epoch_orders(), np.asarray(indices, dtype=np.int64)
        return {name: read_events(ds, orders[name][positions].tolist()) for name, ds in self.domains.items()}

    def head(self, n: int | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """The first ``n`` events of every domain, in storage order (not paired)."""
        return {name: head(ds, n) for name, ds in self.domains.items()}
