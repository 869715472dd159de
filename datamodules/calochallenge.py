"""CaloChallenge 2022 showers (datasets 1-photons, 1-pions, 2, 3) for training and evaluating shower generators."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.base import ArrayDictDataset, HepDataModule, _already_batched
from hepgen.io import DataFileError
from hepgen.io.calochallenge import download_hint, read_calochallenge, read_incident_energies
from hepgen.physics.calochallenge import CaloChallengeBinning, load_binning, read_binning_xml

#: The first training file of each published dataset (ds1: ``_1`` train, ``_2`` evaluation;
#: ds2: ``_1``/``_2``; ds3: ``_1``.. ``_4``, two of each).
DEFAULT_FILES = {
    "1-photons": "dataset_1_photons_1.hdf5",
    "1-pions": "dataset_1_pions_1.hdf5",
    "2": "dataset_2_1.hdf5",
    "3": "dataset_3_1.hdf5",
}


def _attr_str(value) -> str:
    """An HDF5 attribute as text (h5py returns bytes for some string attributes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


class CaloChallengeDataModule(HepDataModule):
    """Showers of one CaloChallenge file, the flat voxels viewed as one image per layer.

    A batch is ``{"energy": (B, 1) GeV, "particle": (B,) int64 zeros, "layer_<id>": (B, n_alpha,
    n_r) MeV}`` with one ``layer_<id>`` per layer that holds voxels (:attr:`layer_shapes`), where
    ``layer_<id>[b, a, r]`` is voxel ``a * n_r + r`` of that layer in the file. The file stores
    MeV; ``energy`` is in GeV like every hepgen datamodule's. Predict batches carry only
    ``energy`` and ``particle``: energies drawn as the dataset draws them (dataset 1: uniformly
    among its 15 discrete energies; 2 and 3: log-uniform over 1 GeV .. 1 TeV), or read from the
    ``incident_energies`` of ``predict_energy_file``.

    Args:
        dataset: ``1-photons``, ``1-pions``, ``2`` or ``3``.
        file_name: the file in ``data_dir`` (default: the dataset's first published training
            file, :data:`DEFAULT_FILES`).
        binning_file: a challenge ``binning_dataset_*.xml``; the built-in binning when unset.
        threshold: set voxels below the dataset's readout threshold to 0, as the challenge's
            evaluation does to every sample.
        max_events: read at most this many events (all when unset).
        predict_events: number of showers to generate in ``predict``.
        predict_energy_file: a CaloChallenge file whose incident energies ``predict`` reproduces.
        predict_seed: seed of the drawn ``predict`` energies.
        **kwargs: see :class:`HepDataModule` (data_dir, source, splits, batch size, ...).
    """

    def __init__(
        self,
        dataset: str = "1-photons",
        data_dir: str = "data/calochallenge",
        file_name: str | None = None,
        binning_file: str | None = None,
        threshold: bool = True,
        max_events: int | None = None,
        predict_events: int = 10_000,
        predict_energy_file: str | None = None,
        predict_seed: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(data_dir=data_dir, **kwargs)
        base = load_binning(dataset)  # names the four datasets when ``dataset`` is none of them
        self.dataset = dataset
        self.file_name = file_name or DEFAULT_FILES[dataset]
        self.binning_file = binning_file
        self.binning: CaloChallengeBinning = base if binning_file is None else read_binning_xml(binning_file, dataset)
        self.threshold = threshold
        self.max_events = max_events
        self.predict_events = predict_events
        self.predict_energy_file = predict_energy_file
        self.predict_seed = predict_seed
        self.download_hint = download_hint(dataset)

    @property
    def num_particles(self) -> int:
        """One species per file; the CLI links it to the model's ``num_particles``."""
        return 1

    @property
    def layer_shapes(self) -> OrderedDict[str, tuple[int, int]]:
        """``{"layer_<id>": (n_alpha, n_r)}`` in file order, for the layers that hold voxels."""
        return OrderedDict((f"layer_{layer.layer_id}", (layer.n_alpha, layer.n_r)) for layer in self.binning.layers)

    def required_files(self) -> list[Path]:
        return [self.data_dir / self.file_name]

    def make_files(self, missing: list[Path]) -> None:
        from hepgen.synth.calochallenge import make_calochallenge

        for path in missing:
            make_calochallenge(path, dataset=self.dataset, events=self.made_events, seed=self.made_seed)

    def check_made_file(self, path: Path) -> None:
        try:
            with h5py.File(path, "r") as f:
                attrs = dict(f.attrs)
        except OSError as err:
            raise DataFileError(f"{path} is not a readable HDF5 file ({err}); delete it to remake it.") from err
        if attrs.get("hepgen_made") is None or _attr_str(attrs["hepgen_made"]) != "calochallenge":
            raise DataFileError(
                f"{path} is not hepgen-made data but the config says `source: made`; hepgen will not "
                "overwrite it. Set `source: real` to use it, or choose another data_dir."
            )
        made_as = (_attr_str(attrs.get("dataset", "?")), int(attrs.get("events", -1)), int(attrs.get("seed", -1)))
        wanted = (self.dataset, self.made_events, self.made_seed)
        if made_as != wanted:
            raise DataFileError(
                f"{path} holds made data with (dataset, events, seed) = {made_as} but the config asks for "
                f"{wanted} (dataset, made_events, made_seed). Delete the file to remake it, or choose "
                "another data_dir."
            )

    def load_events(self) -> dict[str, torch.Tensor]:
        threshold = self.binning.threshold_mev if self.threshold else None
        arrays = read_calochallenge(self.required_files()[0], self.binning, self.max_events, threshold_mev=threshold)
        energies = torch.from_numpy(arrays["incident_energies"]) / 1000.0  # MeV -> GeV
        showers = torch.from_numpy(arrays["showers"])
        # views of the flat showers: the splits' indexing copies each layer once, nothing more
        layers = dict(zip(self.layer_shapes, self.binning.split_layers(showers)))
        return {"energy": energies, "particle": torch.zeros(len(energies), dtype=torch.int64), **layers}

    def predict_energies(self) -> np.ndarray:
        """Incident energies (N, 1) float32 in GeV for ``predict``."""
        if self.predict_energy_file is not None:
            return read_incident_energies(self.predict_energy_file, self.binning, self.predict_events) / 1000.0
        rng = np.random.default_rng(self.predict_seed)
        shape = (self.predict_events, 1)
        if self.binning.discrete_energies_mev:
            energies_mev = rng.choice(np.asarray(self.binning.discrete_energies_mev), size=shape)
        else:
            low, high = np.log(self.binning.energy_range_mev)
            energies_mev = np.exp(rng.uniform(low, high, size=shape))
        return (energies_mev / 1000.0).astype(np.float32)

    def predict_dataloader(self) -> DataLoader:
        energy = torch.from_numpy(self.predict_energies())
        dataset = ArrayDictDataset({"energy": energy, "particle": torch.zeros(len(energy), dtype=torch.int64)})
        return DataLoader(dataset, batch_size=self.batch_size, collate_fn=_already_batched)
