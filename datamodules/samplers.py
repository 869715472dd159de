"""Event orders: training reshuffles from ``seed + epoch`` alone; val/test keep storage order.

Both samplers subclass :class:`torch.utils.data.DistributedSampler`. Lightning replaces the
sampler of a DataLoader under DDP only when it is *not* a ``DistributedSampler``
(``_DataConnector._requires_distributed_sampler`` in Lightning 2.6), so these are kept and the
orders below hold on any number of ranks. The datamodule passes ``num_replicas`` and ``rank``
from its Trainer (one process: 1 and 0).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, DistributedSampler


class EpochShuffleSampler(DistributedSampler):
    """Training order: a fresh permutation every epoch, drawn from ``seed + epoch`` alone.

    The order of one epoch is ``torch.randperm(N, generator=torch.Generator().manual_seed(seed +
    epoch))``: it depends on the epoch number and not on the global random state, so a resumed run
    sees the batches of the uninterrupted one. Under DDP with W ranks the permutation is padded to
    a multiple of W by repeating its start (as ``DistributedSampler`` pads) and rank r takes the
    positions r, r + W, r + 2W, ...: W ranks with batch B see at step k exactly the events of
    batch k of one process with batch W * B. Lightning calls :meth:`set_epoch` every epoch.

    A run resumed from a checkpoint written inside an epoch (a SLURM requeue, a step-wise
    ``ModelCheckpoint``) continues that epoch where it stopped: ``resume_after`` names the epoch
    and how many of this rank's events it had used, and its iterator starts after them, so the
    resumed run sees the events of the uninterrupted one. Lightning counts the skipped batches
    itself (``len`` stays the epoch's), as it does for any resumable loader.

    Args:
        dataset: the training events (N = ``len(dataset)``).
        seed: seed of epoch 0 (hepgen's datamodules pass ``split_seed + 1``).
        num_replicas, rank: W and r.
        epoch: the epoch the first iterator belongs to (a resumed run's; Lightning may create
            the iterator before it calls :meth:`set_epoch`, e.g. with worker processes).
        resume_after: ``(epoch, events)``: skip this rank's first ``events`` events of that epoch.
    """

    def __init__(
        self,
        dataset: Dataset,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        epoch: int = 0,
        resume_after: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.set_epoch(epoch)  # the dataset too: worker processes may fetch before Lightning sets it
        self.resume_after = resume_after

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        # a dataset whose items depend on the epoch (MultiDomainDataset's pairing) follows along
        if callable(getattr(self.dataset, "set_epoch", None)):
            self.dataset.set_epoch(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        while len(order) < self.total_size:  # pad: W ranks must run the same number of steps
            order += order[: self.total_size - len(order)]
        mine = order[self.rank : self.total_size : self.num_replicas]
        if self.resume_after is not None and self.resume_after[0] == self.epoch:
            mine = mine[self.resume_after[1] :]
        return iter(mine)


class EvaluationSampler(DistributedSampler):
    """Val/test order: storage order; under DDP rank r gets the whole batches r, r + W, r + 2W, ...

    It yields event indices; the DataLoader, built with the same ``batch_size``, cuts them back
    into exactly those batches, because only the last batch can be short and it is the last one
    of its rank. No event is padded or repeated (ranks may run one batch more than others), and
    batch ``j`` of rank r is batch ``j * W + r`` of one process (:func:`global_batch_index`).

    Args:
        dataset: the events (N = ``len(dataset)``).
        batch_size: B, the DataLoader's batch size.
        num_replicas, rank: W and r.
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.batch_size = batch_size
        self.total_size = len(dataset)
        self.num_samples = sum(min(batch_size, self.total_size - start) for start in self._starts())

    def _starts(self) -> range:
        """First event of each batch of this rank."""
        return range(self.rank * self.batch_size, len(self.dataset), self.num_replicas * self.batch_size)

    def __iter__(self):
        n, size = len(self.dataset), self.batch_size
        return iter([i for start in self._starts() for i in range(start, min(start + size, n))])
