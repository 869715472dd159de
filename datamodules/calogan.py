"""CaloGAN calorimeter showers (e+, gamma, pi+ files) for training and evaluating shower generators."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.base import ArrayDictDataset, HepDataModule, _already_batched
from hepgen.io import DataFileError
from hepgen.io.calogan import DOWNLOAD_HINT, KEY_SHAPES, read_calogan
from hepgen.physics.calo_geometry import LAYER_SHAPES, PARTICLES


class CaloGANDataModule(HepDataModule):
    """Showers in the CaloGAN HDF5 format, one file per particle, combined with a particle label.

    A batch is ``{"energy": (B, 1) GeV, "layer_0": (B, 3, 96) MeV, "layer_1": (B, 12, 12) MeV,
    "layer_2": (B, 12, 6) MeV, "overflow": (B, 3) MeV, "particle": (B,) int64}``, where
    ``particle`` indexes ``particles``. Predict batches carry only ``energy`` and ``particle``:
    the incident energies to simulate, drawn uniformly from ``predict_energy_range`` or read from
    the ``energy`` key of ``predict_energy_file``.

    Args:
        particles: which files to read (``<data_dir>/<particle>.hdf5``).
        max_events: read at most this many events per file (all when unset).
        predict_events: number of showers to generate in ``predict``.
        predict_energy_range: incident-energy range for ``predict``, GeV (uniform).
        predict_energy_file: a CaloGAN file whose incident energies ``predict`` reproduces.
        predict_particle: the particle to generate in ``predict``.
        **kwargs: see :class:`HepDataModule` (data_dir, source, splits, batch size, ...).
    """

    download_hint = DOWNLOAD_HINT

    def __init__(
        self,
        data_dir: str = "data/calogan",
        particles: list[str] = ["eplus"],  # noqa: B006 (jsonargparse needs a literal default)
        max_events: int | None = None,
        predict_events: int = 10_000,
        predict_energy_range: tuple[float, float] = (1.0, 100.0),
        predict_energy_file: str | None = None,
        predict_particle: str = "eplus",
        predict_seed: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(data_dir=data_dir, **kwargs)
        unknown = [p for p in particles if p not in PARTICLES]
        if unknown or not particles:
            raise ValueError(f"particles={particles}: choose one or more of {list(PARTICLES)}.")
        if predict_particle not in particles:
            raise ValueError(f"predict_particle={predict_particle!r} is not among particles={particles}.")
        self.particles = list(particles)
        self.max_events = max_events
        self.predict_events = predict_events
        self.predict_energy_range = tuple(predict_energy_range)
        self.predict_energy_file = predict_energy_file
        self.predict_particle = predict_particle
        self.predict_seed = predict_seed

    @property
    def num_particles(self) -> int:
        """How many particle species the batches label (``particle`` < num_particles); the CLI
        links it to the model's ``num_particles``."""
        return len(self.particles)

    @property
    def layer_shapes(self) -> dict[str, tuple[int, int]]:
        """``{batch key: cell-array shape}`` of the readout layers; the CLI links it to the model's."""
        return dict(LAYER_SHAPES)

    def required_files(self) -> list[Path]:
        return [self.data_dir / f"{p}.hdf5" for p in self.particles]

    def make_files(self, missing: list[Path]) -> None:
        from hepgen.synth.calogan import make_calogan

        for path in missing:
            make_calogan(path.parent, events=self.made_events, seed=self.made_seed, particles=[path.stem])

    def check_made_file(self, path: Path) -> None:
        try:
            with h5py.File(path, "r") as f:
                attrs = dict(f.attrs)
        except OSError as err:
            raise DataFileError(f"{path} is not a readable HDF5 file ({err}); delete it to remake it.") from err
        if attrs.get("hepgen_made") != "calogan":
            raise DataFileError(
                f"{path} is not hepgen-made data but the config says `source: made`; hepgen will not "
                "overwrite it. Set `source: real` to use it, or choose another data_dir."
            )
        from hepgen.synth.calogan import particle_seed

        made_as = (int(attrs.get("events", -1)), int(attrs.get("seed", -1)))
        wanted = (self.made_events, particle_seed(self.made_seed, path.stem))
        if made_as != wanted:
            raise DataFileError(
                f"{path} holds made data with (events, seed) = {made_as} but the config asks for "
                f"{wanted} (made_events, made_seed={self.made_seed}). Delete the file to remake it, "
                "or choose another data_dir."
            )

    def load_events(self) -> dict[str, torch.Tensor]:
        per_file = []
        for label, path in enumerate(self.required_files()):
            arrays = read_calogan(path, max_events=self.max_events)
            arrays["particle"] = np.full(len(arrays["energy"]), label, dtype=np.int64)
            per_file.append(arrays)
        return {k: torch.from_numpy(np.concatenate([a[k] for a in per_file])) for k in (*KEY_SHAPES, "particle")}

    def predict_energies(self) -> np.ndarray:
        """Incident energies (N, 1) in GeV for ``predict``."""
        if self.predict_energy_file is not None:
            return read_calogan(self.predict_energy_file, max_events=self.predict_events)["energy"]
        low, high = self.predict_energy_range
        if not 0 < low <= high:
            raise ValueError(f"predict_energy_range={self.predict_energy_range}: need 0 < low <= high (GeV).")
        rng = np.random.default_rng(self.predict_seed)
        return rng.uniform(low, high, size=(self.predict_events, 1)).astype(np.float32)

    def predict_dataloader(self) -> DataLoader:
        energy = torch.from_numpy(self.predict_energies())
        label = self.particles.index(self.predict_particle)
        dataset = ArrayDictDataset({"energy": energy, "particle": torch.full((len(energy),), label)})
        return DataLoader(dataset, batch_size=self.batch_size, collate_fn=_already_batched)
