"""Mixed data to decompose: sPHENIX calorimeter events (jets in a heavy-ion background) and a toy image mix.

Both datamodules serve the Stratified CycleGAN (:class:`hepgen.models.uvcgan_s.StratifiedCycleGAN`)
the same way:

* training batches are three *unpaired* domains, drawn independently
  (:class:`~datamodules.datasets.MultiDomainDataset`): ``{"background": {"image": (B, C, H, W)},
  "signal": {...}, "embed": {...}}``. The mixtures are never paired with their parts: that is
  the whole point of the method;
* validation, test and predict batches are mixtures with, where known, their true parts:
  ``{"embed": (B, C, H, W), "signal": ..., "background": ...}`` (``signal``/``background`` only
  when the files carry the truth).

Images are in physical units (GeV per tower for sPHENIX, [0, 1] pixel values for the toy).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.base import HepDataModule
from datamodules.datasets import LazyHDF5Dataset, MultiDomainDataset
from datamodules.splits import file_split
from hepgen.errors import ConfigValueError
from hepgen.io import DataFileError
from hepgen.io.sphenix import SPHENIX_DOMAINS, check_sphenix_file, domain_file, load_image, read_image_folder

#: The domains of a training batch, in the method's order: a0 (background), a1 (signal), b (mixture).
DOMAINS = SPHENIX_DOMAINS

SPHENIX_DOWNLOAD_HINT = (
    "The real sPHENIX files are Zenodo record 17783990 (archive 2025-06-05_jet_bkg_sub.tar, unpack it into "
    "data_dir); or set `source: made` to let hepgen make data in that layout (hepgen data make sphenix --out DIR)."
)


class _ChannelFirst(Dataset):
    """A dataset of (N, H, W) images under ``image`` keys, served as (B, 1, H, W): one channel."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices):
        return {k: v.unsqueeze(1) for k, v in self.dataset.__getitems__(indices).items()}

    def __getitem__(self, index: int):
        return {k: v[0] for k, v in self.__getitems__([index]).items()}

    def head(self, n: int | None = None):
        return self.__getitems__(range(len(self) if n is None else min(n, len(self))))


def _check_finite(batch: dict, where: dict[str, str], stage: str) -> None:
    """One-line error naming the file when a batch holds NaN or inf (checked as batches arrive,
    so a 23 GB dataset is never scanned up front)."""
    for name, value in batch.items():
        if isinstance(value, dict):
            _check_finite(value, {k: where.get(name, name) for k in value}, stage)
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise DataFileError(
                f"{where.get(name, name)}: NaN or inf tower values in a {stage} batch ({name}). "
                "Clean the file (replace them by 0 or drop the events) and run again."
            )


def check_made_record(data_dir: Path, record: str, kind: str, wanted: dict, found: Path) -> None:
    """Refuse a ``source: made`` folder that hepgen did not make, or made with other settings.

    ``record`` is the JSON file the maker writes last (``hepgen_made`` = ``kind``, and the
    values of ``wanted``). One-line :class:`DataFileError` naming ``found`` (a file or folder
    already there) and what to do.
    """
    path = data_dir / record
    made = json.loads(path.read_text()) if path.is_file() else {}
    if made.get("hepgen_made") != kind:
        raise DataFileError(
            f"{found} is not hepgen-made data (no {kind} record {record} in {data_dir}) but the config says "
            "`source: made`; hepgen will not overwrite them. Set `source: real` to use them, or choose another data_dir."
        )
    made_as = {key: made.get(key) for key in wanted}
    if made_as != wanted:
        raise DataFileError(
            f"{data_dir} holds made data with {made_as}, the config asks for {wanted}. "
            "Delete the folder to remake it, or change the data settings to match."
        )


def refuse_incomplete(data_dir: Path, missing: list[Path], present: list[Path]) -> None:
    """Made data are written as one whole: a folder holding part of them is never completed."""
    if present:
        raise DataFileError(
            f"{data_dir}: made data are incomplete ({missing[0]} is missing, {present[0]} exists). "
            "Delete the folder to remake it."
        )


class SPhenixDataModule(HepDataModule):
    """sPHENIX 24 x 64 η-φ calorimeter towers: PYTHIA jets, HIJING background, and the two embedded.

    The real layout (Zenodo 17783990): ``data_dir/{train,val,test}/<domain>.h5`` (or no suffix,
    or ``.hdf5``), each with a dataset ``data`` (N, 24, 64) float16 GeV, LZF, one chunk per event.
    ``train`` holds ``background``, ``signal`` and ``embed``; ``val`` and ``test`` hold ``embed``
    (test: quenched JEWEL jets in HIJING, the out-of-distribution split). Files are read lazily,
    opened once per process (DataLoader workers too). When ``truth`` is set, the ``embed`` files
    of val and test must also hold ``signal`` and ``background`` datasets (hepgen's made data do):
    the parts each mixture was made of, for the metrics.

    Args:
        data_dir: the folder holding ``train/``, ``val/``, ``test/``.
        source: ``real`` or ``made`` (hepgen makes the whole layout when absent).
        made_events: training mixtures of made data (val and test get a fifth each).
        train_events: unpaired items per training epoch (default: the number of training mixtures).
        truth: val/test batches carry the true parts (needed by the decomposition metrics).
        predict_split: the split whose mixtures ``hepgen predict`` decomposes.
        **kwargs: see :class:`HepDataModule` (batch_size, num_workers, made_seed, split_seed).
    """

    image_shape = (24, 64)
    domain_channels = (1, 1, 1)
    download_hint = SPHENIX_DOWNLOAD_HINT

    def __init__(
        self,
        data_dir: str = "data/sphenix",
        source: str = "real",
        made_events: int = 20_000,
        train_events: int | None = None,
        truth: bool = True,
        predict_split: str = "test",
        **kwargs,
    ) -> None:
        super().__init__(data_dir=data_dir, source=source, made_events=made_events, **kwargs)
        if predict_split not in ("train", "val", "test"):
            raise ConfigValueError(f"data.predict_split={predict_split!r}: choose train, val or test.")
        self.train_events = train_events
        self.truth = truth
        self.predict_split = predict_split

    # --- files --------------------------------------------------------------------------------
    def file(self, split: str, domain: str) -> Path:
        return domain_file(self.data_dir, split, domain)

    def required_files(self) -> list[Path]:
        return [self.file("train", d) for d in DOMAINS] + [self.file(s, "embed") for s in ("val", "test")]

    def make_files(self, missing: list[Path]) -> None:
        from hepgen.synth.sphenix import make_sphenix

        record = self.data_dir / "sphenix_made.json"
        present = [p for p in self.required_files() if p not in missing] + ([record] if record.exists() else [])
        refuse_incomplete(self.data_dir, missing, present)
        make_sphenix(self.data_dir, events=self.made_events, seed=self.made_seed)

    def check_made_file(self, path: Path) -> None:
        wanted = {"events": self.made_events, "seed": self.made_seed}
        check_made_record(self.data_dir, "sphenix_made.json", "sphenix", wanted, path)

    # --- splits: fixed by the files ---------------------------------------------------------------
    def _counts(self) -> dict[str, int]:
        return {
            split: check_sphenix_file(self.file(split, "embed"), truth=self.truth and split != "train")
            for split in ("train", "val", "test")
        }

    def count_events(self) -> int:
        self._split_counts = self._counts()
        return sum(self._split_counts.values())

    def splits(self, n_events: int) -> dict[str, np.ndarray]:
        return file_split(self._split_counts, str(self.data_dir))

    def build_dataset(self, split: str, indices: np.ndarray) -> Dataset:
        if split == "train":
            domains = {}
            for domain in DOMAINS:
                path = self.file("train", domain)
                check_sphenix_file(path)
                domains[domain] = _ChannelFirst(LazyHDF5Dataset([path], {"image": "data"}))
            length = self.train_events or len(indices)
            return MultiDomainDataset(domains, seed=self.split_seed, length=length)
        return self._mixtures(split, self.truth)

    def _mixtures(self, split: str, truth: bool) -> Dataset:
        keys = {"embed": "data"} | ({"signal": "signal", "background": "background"} if truth else {})
        return _ChannelFirst(LazyHDF5Dataset([self.file(split, "embed")], keys))

    def _where(self, split: str) -> dict[str, str]:
        if split == "train":
            return {d: str(self.file("train", d)) for d in DOMAINS}
        return {k: f"{self.file(split, 'embed')} (dataset {k if k != 'embed' else 'data'})" for k in DOMAINS}

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        trainer = self.trainer
        if isinstance(next(iter(batch.values())), dict):  # unpaired domains: a training batch
            split, stage = "train", "training"
        elif trainer is not None and trainer.predicting:
            split, stage = self.predict_split, "predict"
        else:
            split, stage = ("test", "test") if trainer is not None and trainer.testing else ("val", "validation")
        _check_finite(batch, self._where(split), stage)
        return batch

    def predict_dataloader(self) -> DataLoader:
        truth = self.truth and self.predict_split != "train"
        if truth:
            check_sphenix_file(self.file(self.predict_split, "embed"), truth=True)
        return self.dataloader(self._mixtures(self.predict_split, truth), shuffle=False)


class ToyMixDataset(Dataset):
    """Mixtures ``blur(α·a + (1 − α)·b)`` of two image families, with their parts.

    Item i mixes image i of family ``a`` with a partner of family ``b``: a fixed partner
    (``partners[i]``) for evaluation, or a fresh one every epoch for training (``seed`` and the
    epoch set by :meth:`set_epoch`), as the reference's ``ToyMixBlurDataset``.

    Args:
        a, b: (N_a, 3, H, W) and (N_b, 3, H, W) uint8 images.
        alpha: weight of ``a`` in the mixture.
        partners: (N_a,) fixed indices into ``b``; random per epoch when ``None``.
        seed: seed of the random partners.
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor, alpha: float = 0.5, partners=None, seed: int = 0) -> None:
        self.a, self.b, self.alpha = a, b, alpha
        self.partners = None if partners is None else torch.as_tensor(partners)
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.a)

    def _partners(self, indices: torch.Tensor) -> torch.Tensor:
        if self.partners is not None:
            return self.partners[indices]
        rng = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self._epoch))
        return torch.randint(len(self.b), (len(self.a),), generator=rng)[indices]

    def __getitems__(self, indices):
        from hepgen.synth.toy_mix import mix_blur

        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        a = self.a[idx].float() / 255.0
        b = self.b[self._partners(idx)].float() / 255.0
        return {"embed": mix_blur(a, b, self.alpha), "background": a, "signal": b}

    def __getitem__(self, index: int):
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


class _Images(Dataset):
    """(N, 3, H, W) uint8 images served as ``{"image": (B, 3, H, W)}`` floats in [0, 1]."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, indices):
        return {"image": self.images[torch.as_tensor(list(indices), dtype=torch.int64)].float() / 255.0}

    def __getitem__(self, index: int):
        return {"image": self.__getitems__([index])["image"][0]}


class ToyMixDataModule(HepDataModule):
    """A toy decomposition: RGB images of two families, and their blurred 50/50 mixtures.

    Folders ``data_dir/{train,val}/<family>/`` of PNG or JPEG images, the AFHQ layout: hepgen's
    made toy (``hepgen data make toy_mix``: families ``blobs`` and ``stripes``) or the reference's
    AFHQ cats and dogs (``background: cat``, ``signal: dog``). Training draws the two families and
    the mixtures independently (each mixture of a random pair); val and test mixtures pair image
    i of ``background`` with a fixed partner of ``signal`` and carry both as truth.

    Args:
        data_dir: the folder holding ``train/`` and ``val/``.
        background, signal: the families playing a0 (background) and a1 (signal).
        alpha: weight of ``background`` in a mixture.
        test_split: the folder ``hepgen test`` evaluates (the reference has no test folder).
        predict_split: the folder ``hepgen predict`` decomposes.
        **kwargs: see :class:`HepDataModule`; ``made_events`` is images per family in ``train``.
    """

    domain_channels = (3, 3, 3)

    def __init__(
        self,
        data_dir: str = "data/toy_mix",
        background: str = "blobs",
        signal: str = "stripes",
        alpha: float = 0.5,
        test_split: str = "val",
        predict_split: str = "val",
        made_events: int = 2_000,
        image_size: int = 32,
        **kwargs,
    ) -> None:
        super().__init__(data_dir=data_dir, made_events=made_events, **kwargs)
        self.families = {"background": background, "signal": signal}
        self.alpha = alpha
        self.test_split = test_split
        self.predict_split = predict_split
        self.image_size = image_size
        self.download_hint = (
            f"Put the images of each family in {self.data_dir}/<split>/<family>/ (e.g. AFHQ resized to 256 x 256), "
            "or set `source: made` (hepgen data make toy_mix --out DIR)."
        )

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)

    def _folder(self, split: str, domain: str) -> Path:
        return self.data_dir / split / self.families[domain]

    def required_files(self) -> list[Path]:
        """The image folders (one per split and family)."""
        splits = ("train", *sorted({"val", self.test_split, self.predict_split}))
        return [self._folder(s, d) for s in splits for d in self.families]

    def _missing_files(self) -> list[Path]:
        return [p for p in self.required_files() if not p.is_dir()]

    def _check_made_files(self) -> list[Path]:
        record = self.data_dir / "toy_mix_made.json"
        found = [p for p in self.required_files() if p.is_dir()] + ([record] if record.exists() else [])
        if found:
            wanted = {"events": self.made_events, "seed": self.made_seed, "size": self.image_size}
            check_made_record(self.data_dir, record.name, "toy_mix", wanted, found[0])
        return self._missing_files()

    def make_files(self, missing: list[Path]) -> None:
        from hepgen.synth.toy_mix import make_toy_mix

        if self.families != {"background": "blobs", "signal": "stripes"}:
            raise ConfigValueError(
                f"source: made makes the families blobs and stripes, the config asks for {self.families}."
            )
        record = self.data_dir / "toy_mix_made.json"
        present = [p for p in self.required_files() if p not in missing] + ([record] if record.exists() else [])
        refuse_incomplete(self.data_dir, missing, present)
        make_toy_mix(self.data_dir, events=self.made_events, seed=self.made_seed, size=self.image_size)

    def _images(self, split: str, domain: str) -> torch.Tensor:
        paths = read_image_folder(self._folder(split, domain))
        images = np.stack([load_image(p) for p in paths])
        if images.shape[-2:] != self.image_shape:
            raise DataFileError(
                f"{self._folder(split, domain)}: images are {images.shape[-2]} x {images.shape[-1]}, "
                f"the config says data.image_size {self.image_size}. Resize them or set data.image_size."
            )
        return torch.from_numpy(np.round(images * 255.0).astype(np.uint8))

    def count_events(self) -> int:
        self._images_of = {
            (s, d): self._images(s, d)
            for s in ("train", *sorted({"val", self.test_split, self.predict_split}))
            for d in self.families
        }
        self._split_counts = {
            "train": len(self._images_of[("train", "background")]),
            "val": len(self._images_of[("val", "background")]),
            "test": len(self._images_of[(self.test_split, "background")]),
        }
        return sum(self._split_counts.values())

    def splits(self, n_events: int) -> dict[str, np.ndarray]:
        return file_split(self._split_counts, str(self.data_dir))

    def _evaluation_mixtures(self, split: str) -> ToyMixDataset:
        a, b = self._images_of[(split, "background")], self._images_of[(split, "signal")]
        # the reference pairs image i with dog i of a seeded permutation: fixed, so every
        # evaluation compares the same mixtures
        partners = np.random.default_rng(0).permutation(len(b))[np.arange(len(a)) % len(b)]
        return ToyMixDataset(a, b, self.alpha, partners=partners)

    def build_dataset(self, split: str, indices: np.ndarray) -> Dataset:
        if split == "train":
            a, b = self._images_of[("train", "background")], self._images_of[("train", "signal")]
            mixtures = _MixtureDomain(ToyMixDataset(a, b, self.alpha, seed=self.split_seed))
            domains = {"background": _Images(a), "signal": _Images(b), "embed": mixtures}
            return MultiDomainDataset(domains, seed=self.split_seed, length=len(indices))
        return self._evaluation_mixtures(self.test_split if split == "test" else split)

    def predict_dataloader(self) -> DataLoader:
        if not getattr(self, "_images_of", None):
            self.count_events()
        return self.dataloader(self._evaluation_mixtures(self.predict_split), shuffle=False)


class _MixtureDomain(Dataset):
    """The mixtures of a :class:`ToyMixDataset` alone, as the ``image`` of the mixed domain."""

    def __init__(self, mixtures: ToyMixDataset) -> None:
        self.mixtures = mixtures

    def __len__(self) -> int:
        return len(self.mixtures)

    def set_epoch(self, epoch: int) -> None:
        self.mixtures.set_epoch(epoch)

    def __getitems__(self, indices):
        return {"image": self.mixtures.__getitems__(indices)["embed"]}
