"""HepDataModule's contract (C2): split/dataset hooks, lazy and multi-domain datasets, samplers."""

from __future__ import annotations

import os
import pickle
from types import SimpleNamespace

import h5py
import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.trainer.states import RunningStage
from torch.utils.data import DataLoader, DistributedSampler, get_worker_info

from datamodules import CaloGANDataModule
from datamodules.base import ArrayDictDataset, HepDataModule, _already_batched, global_batch_index
from datamodules.datasets import LazyHDF5Dataset, MultiDomainDataset
from datamodules.samplers import EpochShuffleSampler, EvaluationSampler
from datamodules.splits import file_split, kfold_split, region_split, split_folders, split_indices
from hepgen.errors import ConfigValueError
from hepgen.io import DataFileError


# ----------------------------------------------------------------------------- helpers
class ToyDataModule(HepDataModule):
    """N in-RAM events: ``x`` (N, 2) and ``index`` (N,), the event's number (to see the order)."""

    def __init__(self, n: int = 40, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n = n

    def required_files(self):
        return []

    def load_events(self):
        x = torch.randn(self.n, 2, generator=torch.Generator().manual_seed(7))
        return {"x": x, "index": torch.arange(self.n)}


def write_h5(path, x: np.ndarray, label: np.ndarray):
    """A file as real ones are written: float16 features, gzip, chunked (4 events per chunk)."""
    with h5py.File(path, "w") as f:
        chunks = (4, *x.shape[1:]) if len(x) >= 4 else None
        f.create_dataset("features", data=x.astype(np.float16), compression="gzip", chunks=chunks)
        f.create_dataset("label", data=label, compression="gzip", chunks=chunks and (4,))
    return path


def h5_events(n: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3, 2) features that float16 holds exactly, and (n,) int64 labels start, start+1, ..."""
    x = (np.arange(start, start + n)[:, None, None] + np.linspace(0, 0.5, 6).reshape(1, 3, 2)).astype(np.float16)
    return x, np.arange(start, start + n, dtype=np.int64)


KEYS = {"x": "features", "label": "label"}


class FolderDataModule(HepDataModule):
    """File-defined splits (sPHENIX style): the files of data_dir/{train,val,test}/ fix the splits;
    the events stay on disk (LazyHDF5Dataset)."""

    def folders(self):
        return split_folders(self.data_dir, "*.h5")

    def required_files(self):
        return [path for files in self.folders().values() for path in files]

    def count_events(self):
        return len(LazyHDF5Dataset(self.required_files(), KEYS))

    def splits(self, n_events):
        counts = {name: len(LazyHDF5Dataset(files, KEYS)) for name, files in self.folders().items()}
        return file_split(counts, str(self.data_dir))

    def build_dataset(self, split, indices):
        return LazyHDF5Dataset(self.required_files(), KEYS, indices)


@pytest.fixture
def folder_data(tmp_path):
    """train/ (2 files, 13 events), val/ (5) and test/ (6): labels 0..23 in that order."""
    sizes = {"train": (8, 5), "val": (5,), "test": (6,)}
    start = 0
    for split, files in sizes.items():
        (tmp_path / split).mkdir()
        for k, n in enumerate(files):
            write_h5(tmp_path / split / f"part{k}.h5", *h5_events(n, start))
            start += n
    return tmp_path


def set_epoch(loader: DataLoader, epoch: int) -> None:
    loader.sampler.set_epoch(epoch)  # what Lightning does at the start of every epoch


def rule(n: int, seed: int, epoch: int) -> list[int]:
    """C2's training order of epoch ``epoch``: dataset positions."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1 + epoch)).tolist()


# ----------------------------------------------------------------------------- hooks
def test_setup_builds_each_split_through_the_splits_and_build_dataset_hooks():
    built = {}

    class ByRegion(ToyDataModule):
        def splits(self, n_events):
            index = np.arange(n_events)
            return region_split({"train": index < 20, "val": index >= 30, "test": (index >= 20) & (index < 25)}, "toy")

        def build_dataset(self, split, indices):
            built[split] = indices
            return super().build_dataset(split, indices)

    dm = ByRegion(n=40)
    dm.setup("fit")
    assert dm.split_sizes == {"train": 20, "val": 10, "test": 5}
    assert dm.datasets["val"].tensors["index"].tolist() == list(range(30, 40))
    assert built["test"].tolist() == [20, 21, 22, 23, 24]
    assert dm._events is None  # the events read for the split are released after setup


def test_default_splits_are_the_seeded_permutation_and_the_events_stay_in_ram():
    dm = ToyDataModule(n=50, val_fraction=0.2, test_fraction=0.1, split_seed=4)
    parts = dm.splits(50)
    expected = split_indices(50, 0.2, 0.1, 4, str(dm.data_dir))
    assert all(np.array_equal(parts[k], expected[k]) for k in ("train", "val", "test"))
    dm.setup("fit")
    assert isinstance(dm.datasets["train"], ArrayDictDataset)
    assert dm.datasets["train"].tensors["index"].tolist() == sorted(expected["train"].tolist())


def test_training_sample_is_the_first_training_events_in_ram_and_lazy(folder_data):
    ram = ToyDataModule(n=30, val_fraction=0.2, test_fraction=0.0)
    sample = ram.training_sample(5)  # sets up on demand
    assert set(sample) == {"x", "index"}
    assert torch.equal(sample["index"], ram.datasets["train"].tensors["index"][:5])
    assert len(ram.training_sample()["x"]) == 24

    lazy = FolderDataModule(data_dir=str(folder_data))
    sample = lazy.training_sample(10)  # crosses from train/part0.h5 into train/part1.h5
    assert isinstance(lazy.datasets["train"], LazyHDF5Dataset)
    assert set(sample) == set(next(iter(lazy.train_dataloader())))
    x, label = h5_events(10)
    assert sample["x"].dtype == torch.float32 and torch.equal(sample["x"], torch.from_numpy(x.astype(np.float32)))
    assert sample["label"].tolist() == list(range(10))
    assert lazy.training_sample()["label"].tolist() == list(range(13))


# ----------------------------------------------------------------------------- splits
def test_file_defined_splits_take_the_events_of_their_folders(folder_data):
    dm = FolderDataModule(data_dir=str(folder_data))
    dm.prepare_data()
    dm.setup("fit")
    loaders = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}
    labels = {split: sorted(torch.cat([b["label"] for b in loader()]).tolist()) for split, loader in loaders.items()}
    assert labels == {"train": list(range(13)), "val": list(range(13, 18)), "test": list(range(18, 24))}


def test_region_split_keeps_each_mask_and_refuses_overlaps():
    index = np.arange(10)
    parts = region_split({"train": index < 5, "val": index == 9, "test": (index >= 5) & (index < 8)}, "toy")
    assert {k: v.tolist() for k, v in parts.items()} == {"train": [0, 1, 2, 3, 4], "val": [9], "test": [5, 6, 7]}
    with pytest.raises(DataFileError, match=r"toy: 3 event\(s\) fall in more than one.*exclusive"):
        region_split({"train": index < 6, "test": index >= 3}, "toy")


def test_kfold_split_tests_every_event_once_over_the_folds():
    tested = []
    for fold in range(4):
        parts = kfold_split(21, fold, 4, seed=3, where="toy")
        together = np.concatenate(list(parts.values()))
        assert sorted(together.tolist()) == list(range(21))  # a partition of all events
        assert np.array_equal(parts["val"], kfold_split(21, (fold + 1) % 4, 4, seed=3, where="toy")["test"])
        tested += parts["test"].tolist()
    assert sorted(tested) == list(range(21))


def test_an_empty_region_split_names_the_split_and_what_to_do():
    class EmptyVal(ToyDataModule):
        def splits(self, n_events):
            index = np.arange(n_events)
            return region_split({"train": index < 30, "val": index > 99, "test": index >= 30}, str(self.data_dir))

    with pytest.raises(DataFileError, match=r"the 'val' split is empty\. No event falls in its region: widen"):
        EmptyVal(n=40).setup("fit")


def test_an_empty_split_folder_names_the_split_and_what_to_do(folder_data):
    for path in (folder_data / "val").iterdir():
        path.unlink()
    message = r"the 'val' split is empty: no \*\.h5 file in .*val/\. Put the val files there"
    with pytest.raises(DataFileError, match=message):
        FolderDataModule(data_dir=str(folder_data), source="real").prepare_data()
    write_h5(folder_data / "val" / "part0.h5", *h5_events(0))  # a file, but no events in it
    with pytest.raises(DataFileError, match=r"the 'val' split is empty\. Its files hold no events"):
        FolderDataModule(data_dir=str(folder_data)).setup("fit")


def test_kfold_split_with_too_few_events_names_the_split():
    message = r"toy: the '(train|val|test)' split is empty\. 2 events cannot fill 4 folds"
    with pytest.raises(DataFileError, match=message):
        kfold_split(2, 0, 4, seed=0, where="toy")


# ----------------------------------------------------------------------------- LazyHDF5Dataset
@pytest.fixture
def two_files(tmp_path):
    """a.h5 with events 0..9, b.h5 with events 10..16 (float16 features, int64 labels)."""
    return [write_h5(tmp_path / "a.h5", *h5_events(10, 0)), write_h5(tmp_path / "b.h5", *h5_events(7, 10))]


def test_lazy_hdf5_batches_equal_the_files_in_the_requested_order_as_float32(two_files):
    x, label = (np.concatenate(parts) for parts in zip(h5_events(10, 0), h5_events(7, 10)))
    subset = np.array([0, 2, 3, 4, 5, 6, 9, 11, 12, 16])
    ds = LazyHDF5Dataset(two_files, KEYS, indices=subset)
    assert len(ds) == 10
    # unsorted, a repeat, both files; dense (positions 1-4 -> events 2..5) and sparse reads
    positions = [7, 1, 4, 2, 3, 0, 9, 1]
    batch = ds.__getitems__(positions)
    assert batch["x"].dtype == torch.float32 and batch["label"].dtype == torch.int64
    assert torch.equal(batch["x"], torch.from_numpy(x[subset[positions]].astype(np.float32)))
    assert batch["label"].tolist() == subset[positions].tolist()
    assert ds[6]["label"].item() == 9 and ds[6]["x"].shape == (3, 2)
    assert ds.__getitems__([])["x"].shape == (0, 3, 2)


def test_lazy_hdf5_length_comes_from_metadata_and_open_files_are_not_pickled(two_files, monkeypatch):
    reads = []
    original = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__", lambda self, sel: reads.append(sel) or original(self, sel))
    ds = LazyHDF5Dataset(two_files, ["features", "label"])
    assert len(ds) == 17 and reads == []  # shapes only, no data read
    first = ds.__getitems__([3, 12])
    assert ds._handles[0] is not None  # the files are open in this process now ...
    copy = pickle.loads(pickle.dumps(ds))  # ... h5py refuses to pickle an open file
    assert copy._handles == [] and torch.equal(copy.__getitems__([3, 12])["features"], first["features"])
    with pytest.raises(DataFileError, match=r"a\.h5: dataset\(s\) \['energy'\] missing"):
        LazyHDF5Dataset(two_files, {"e": "energy"})


def _opened_in_this_process(batch):
    """A collate_fn (it runs in the worker): the batch, and whether the worker's dataset read it
    through files this process opened rather than handles inherited from the parent."""
    return batch, get_worker_info().dataset._pid == os.getpid()


def test_each_worker_opens_its_own_files(two_files):
    lazy = LazyHDF5Dataset(two_files, KEYS)
    lazy.__getitems__([0])  # an open handle in the parent, which forked workers inherit
    loader = DataLoader(lazy, batch_size=4, num_workers=2, collate_fn=_opened_in_this_process)
    results = list(loader)
    assert len(results) == 5 and all(own for _, own in results)
    assert torch.cat([batch["label"] for batch, _ in results]).tolist() == list(range(17))


def test_lazy_and_multi_domain_loaders_with_two_workers_match_one_process(two_files, tmp_path):
    """Workers open their own files and follow set_epoch (persistent workers too)."""
    single = write_h5(tmp_path / "c.h5", *h5_events(5, 100))
    lazy = LazyHDF5Dataset(two_files, KEYS)
    lazy.__getitems__([0])  # an open handle in the parent: forked workers must not use it
    multi = MultiDomainDataset({"signal": LazyHDF5Dataset([single], KEYS), "background": lazy}, seed=2)

    def epochs(dataset, workers):
        sampler = EpochShuffleSampler(dataset, seed=1)
        loader = DataLoader(
            dataset, batch_size=4, sampler=sampler, num_workers=workers, collate_fn=_already_batched,
            persistent_workers=workers > 0,
        )  # fmt: skip
        seen = []
        for epoch in range(2):
            set_epoch(loader, epoch)
            seen.append(list(loader))
        return seen

    def flat(batch):
        nested = isinstance(next(iter(batch.values())), dict)
        return {f"{d}/{k}": v for d, ev in batch.items() for k, v in ev.items()} if nested else batch

    for dataset in (lazy, multi):
        one, two = epochs(dataset, 0), epochs(dataset, 2)
        for epoch in range(2):
            assert len(one[epoch]) == len(two[epoch]) == 5
            for a, b in zip(map(flat, one[epoch]), map(flat, two[epoch])):
                assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pairs = [sorted(zip(*(torch.cat([b[d]["label"] for b in epoch]).tolist() for d in ("signal", "background"))))
             for epoch in two]  # fmt: skip
    assert pairs[0] != pairs[1]  # the workers saw epoch 1: new pairing


# ----------------------------------------------------------------------------- MultiDomainDataset
def test_multi_domain_draws_each_domain_independently_and_cycles_the_smaller_ones():
    domains = {name: ArrayDictDataset({"id": torch.arange(n), "x": torch.randn(n, 3)}) for name, n in
               (("signal", 4), ("background", 10), ("mixed", 7))}  # fmt: skip
    ds = MultiDomainDataset(domains, seed=5)
    assert len(ds) == 10
    epoch0 = ds.__getitems__(list(range(10)))
    assert set(epoch0) == {"signal", "background", "mixed"} and epoch0["mixed"]["x"].shape == (10, 3)
    signal = epoch0["signal"]["id"].tolist()
    assert sorted(signal[:4]) == sorted(signal[4:8]) == [0, 1, 2, 3]  # all 4 before any repeats
    assert sorted(epoch0["background"]["id"].tolist()) == list(range(10))
    assert sorted(epoch0["mixed"]["id"][:7].tolist()) == list(range(7))
    ds.set_epoch(1)
    epoch1 = ds.__getitems__(list(range(10)))
    pairs = [list(zip(e["signal"]["id"].tolist(), e["background"]["id"].tolist())) for e in (epoch0, epoch1)]
    assert sorted(pairs[0]) != sorted(pairs[1])  # each epoch draws new partners
    again = MultiDomainDataset(domains, seed=5).__getitems__(list(range(10)))
    assert all(torch.equal(again[d]["id"], epoch0[d]["id"]) for d in domains)  # seeded
    assert ds.head(3)["signal"]["id"].tolist() == [0, 1, 2]


# ----------------------------------------------------------------------------- samplers
def test_training_order_is_the_seed_plus_epoch_permutation_in_a_distributed_sampler():
    dataset = ArrayDictDataset({"x": torch.arange(13)})
    sampler = EpochShuffleSampler(dataset, seed=3)
    assert isinstance(sampler, DistributedSampler) and len(sampler) == 13
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
        assert orders[-1] == rule(13, 2, epoch)  # seed 3 = split_seed 2 + 1
    assert orders[0] != orders[1] != orders[2]


def _datamodule_on_rank(world: int, rank: int, **kwargs) -> ToyDataModule:
    dm = ToyDataModule(n=43, val_fraction=0.3, test_fraction=0.0, split_seed=6, **kwargs)
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=world, global_rank=rank)  # as a DDP Trainer reports them
    return dm


def test_two_ranks_with_batch_b_see_at_each_step_one_process_batch_2b():
    single = _datamodule_on_rank(1, 0, batch_size=6).train_dataloader()
    ranks = [_datamodule_on_rank(2, r, batch_size=3).train_dataloader() for r in range(2)]
    n = len(single.dataset)  # 30 training events: 5 single-process batches of 6
    for epoch in range(2):
        for loader in (single, *ranks):
            set_epoch(loader, epoch)
        one = [b["index"].tolist() for b in single]
        two = [[b["index"].tolist() for b in loader] for loader in ranks]
        assert len(two[0]) == len(two[1]) == len(one) == 5
        for k, batch in enumerate(one):
            assert sorted(two[0][k] + two[1][k]) == sorted(batch)
        positions = rule(n, 6, epoch)
        events = single.dataset.tensors["index"]
        assert sum(one, []) == events[positions].tolist()  # the seed + epoch rule, on every rank


def test_training_order_is_padded_like_distributed_sampler_for_an_odd_count():
    dataset = ArrayDictDataset({"x": torch.arange(7)})
    ours = [list(EpochShuffleSampler(dataset, seed=4, num_replicas=2, rank=r)) for r in range(2)]
    torch_ = [list(DistributedSampler(dataset, num_replicas=2, rank=r, shuffle=True, seed=4)) for r in range(2)]
    assert ours == torch_ and len(ours[0]) == len(ours[1]) == 4
    assert sorted(set(ours[0] + ours[1])) == list(range(7))  # every event, plus one padded repeat


def test_val_batches_interleave_over_ranks_without_padding_or_duplicates():
    single = list(_datamodule_on_rank(1, 0, batch_size=4).val_dataloader())
    assert [len(b["index"]) for b in single] == [4, 4, 4, 1]  # 13 validation events
    seen = {}
    for rank in range(2):
        dm = _datamodule_on_rank(2, rank, batch_size=4)
        loader = dm.val_dataloader()
        assert isinstance(loader.sampler, EvaluationSampler) and isinstance(loader.sampler, DistributedSampler)
        for batch_idx, batch in enumerate(loader):
            seen[global_batch_index(dm.trainer, batch_idx)] = batch["index"].tolist()
    assert sorted(seen) == [0, 1, 2, 3]  # rank 0: batches 0, 2; rank 1: batches 1, 3
    assert [seen[k] for k in range(4)] == [b["index"].tolist() for b in single]
    assert len(list(EvaluationSampler(range(13), 4, num_replicas=2, rank=1))) == 5  # 4 + 1, no padding


def test_lightning_keeps_hepgen_samplers_under_ddp():
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False)
    assert trainer._accelerator_connector.is_distributed and trainer._accelerator_connector.use_distributed_sampler
    dm = ToyDataModule(n=40, batch_size=2)  # 4 validation events: a batch for each rank
    dm.setup("fit")
    dm.trainer = trainer
    connector = trainer._data_connector
    for loader, shuffle, mode in (
        (dm.train_dataloader(), True, RunningStage.TRAINING),
        (dm.val_dataloader(), False, RunningStage.VALIDATING),
    ):
        assert loader.sampler.num_replicas == 2  # built for the Trainer's world size
        assert not connector._requires_distributed_sampler(loader)
        assert connector._prepare_dataloader(loader, shuffle=shuffle, mode=mode) is loader


class OrderRecorder(L.LightningModule):
    """Records the event numbers of every training batch, per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2))
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).extend(batch["index"].tolist())
        return (batch["x"] @ self.weight).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_fit_sees_the_seed_plus_epoch_order_in_every_epoch():
    dm = ToyDataModule(n=40, val_fraction=0.25, test_fraction=0.0, split_seed=9, batch_size=7)
    model = OrderRecorder()
    trainer = L.Trainer(
        max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, dm)
    assert isinstance(trainer.train_dataloader.sampler, EpochShuffleSampler)  # Lightning kept it
    events = dm.datasets["train"].tensors["index"]
    for epoch in range(3):
        assert model.seen[epoch] == events[rule(30, 9, epoch)].tolist()
    assert model.seen[0] != model.seen[1] != model.seen[2]


# ----------------------------------------------------------------------------- linked values
def test_calogan_num_particles_is_the_number_of_particle_files():
    assert CaloGANDataModule(particles=["eplus", "gamma", "piplus"], predict_particle="gamma").num_particles == 3
    assert CaloGANDataModule().num_particles == 1


def test_fewer_evaluation_batches_than_ranks_is_a_config_error_naming_the_fix():
    # 13 validation events in one batch of 16: rank 1 would have nothing to evaluate
    with pytest.raises(ConfigValueError, match=r"'val' split holds 13 events = 1 batch.*batch_size <= 7"):
        _datamodule_on_rank(2, 1, batch_size=16).val_dataloader()
    assert len(_datamodule_on_rank(2, 1, batch_size=7).val_dataloader()) == 1
