"""The CaloChallenge 2022 shower format (Fast Calorimeter Simulation Challenge, arXiv:2410.21611).

One HDF5 file (h5py, gzip) holds N showers of one dataset:

===================== ============== =========================================================
key                   shape          content
===================== ============== =========================================================
``incident_energies`` (N, 1)         incident energy, **MeV**
``showers``           (N, n_voxels)  voxel energies, **MeV**, flattened layer by layer, within a
                                     layer angle-major, radius-minor (see
                                     :mod:`hepgen.physics.calochallenge`)
===================== ============== =========================================================

n_voxels is 368 (dataset ``1-photons``), 533 (``1-pions``), 6480 (``2``) or 40500 (``3``). The
published files are float32; float64 files are accepted too, and everything is returned and
written as float32. Dataset 1 energies are the 15 powers of two 2^8 .. 2^22 MeV, datasets 2 and 3
are log-uniform in 1 GeV .. 1 TeV. The challenge's evaluation zeroes voxels below a readout
threshold in every sample it compares (:func:`apply_threshold`).

Files can be large (a dataset 3 file is 8 GB as float32), so they are read and checked in blocks
of events straight into the returned arrays: no second copy of the showers is ever made.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import torch

from hepgen.io.errors import DataFileError
from hepgen.io.hdf5 import open_hdf5
from hepgen.physics.calochallenge import VOXELS, CaloChallengeBinning

ENERGY_KEY = "incident_energies"
SHOWER_KEY = "showers"

#: Zenodo records of the published Geant4 samples.
DOIS = {
    "1-photons": "10.5281/zenodo.8099322",
    "1-pions": "10.5281/zenodo.8099322",
    "2": "10.5281/zenodo.6366270",
    "3": "10.5281/zenodo.6366323",
}

#: Relative slack on the dataset's incident-energy range: float rounding, and samples whose
#: energies were redrawn by another tool, must not be refused for a last-digit difference.
ENERGY_TOLERANCE = 0.01

#: Bytes of showers read (or checked) per block: bounds the temporaries of a chunked read.
BLOCK_BYTES = 64 * 2**20

#: Bytes per HDF5 chunk of a written showers dataset; chunks hold whole events, so reading a
#: batch of events touches only its own chunks.
CHUNK_BYTES = 2**20


def download_hint(dataset: str) -> str:
    """Where the published files of ``dataset`` are, and the made-data alternative."""
    doi = DOIS.get(dataset, "see https://calochallenge.github.io/homepage/")
    return (
        f"The published CaloChallenge files of dataset {dataset} are at https://doi.org/{doi} "
        f"(dataset 1: {DOIS['1-photons']}, 2: {DOIS['2']}, 3: {DOIS['3']}); put the file in the "
        "data_dir, or set `source: made` to train on hepgen's made showers."
    )


# ------------------------------------------------------------------------------------ the checks
def _fits_dataset(n_voxels: int) -> str:
    """A sentence saying which dataset has ``n_voxels`` voxels, if one has; else ''."""
    names = [name for name, count in VOXELS.items() if count == n_voxels]
    if not names:
        return ""
    return (
        f" {n_voxels} is the voxel count of dataset {names[0]}: the file fits dataset {names[0]}; set the "
        "datamodule's `dataset` (or the binning) to match it."
    )


def check_shapes(where: Path, energy_shape: tuple, shower_shape: tuple, binning: CaloChallengeBinning) -> int:
    """Check the shapes of the two datasets against each other and the binning; return N.

    Raises:
        DataFileError: a rank other than 2, ``incident_energies`` not (N, 1), a voxel count
            other than ``binning.n_voxels``, different N in the two datasets, or N = 0.
    """
    if len(energy_shape) != 2 or energy_shape[1] != 1:
        raise DataFileError(f"{where}: key '{ENERGY_KEY}' has shape {tuple(energy_shape)}, expected (N, 1) in MeV.")
    if len(shower_shape) != 2:
        raise DataFileError(
            f"{where}: key '{SHOWER_KEY}' has shape {tuple(shower_shape)}, expected (N, {binning.n_voxels}): "
            "one flattened row of voxel energies per event."
        )
    if shower_shape[1] != binning.n_voxels:
        found = shower_shape[1]
        raise DataFileError(
            f"{where}: key '{SHOWER_KEY}' has {found} voxels per event, but dataset {binning.dataset} has "
            f"{binning.n_voxels} (found {found}, expected {binning.n_voxels}).{_fits_dataset(found)}"
        )
    if energy_shape[0] != shower_shape[0]:
        raise DataFileError(
            f"{where}: key '{ENERGY_KEY}' holds {energy_shape[0]} events but key '{SHOWER_KEY}' holds "
            f"{shower_shape[0]}; the file is incomplete. Download it again or remake it."
        )
    if energy_shape[0] == 0:
        raise DataFileError(f"{where}: keys '{ENERGY_KEY}' and '{SHOWER_KEY}' hold no events.")
    return int(energy_shape[0])


class RowFaults:
    """Counts the rows of one key that hold NaN/inf or negative values, block by block.

    A block is ``values`` (M, ...) whose first row is row ``offset`` of the whole key, so a
    file can be checked while it is read, without holding a second copy.
    """

    def __init__(self, where: Path, key: str) -> None:
        self.where, self.key = where, key
        self.nonfinite_rows, self.first_nonfinite = 0, -1
        self.negative_rows, self.first_negative = 0, -1

    def scan(self, values: np.ndarray, offset: int) -> None:
        flat = values.reshape(len(values), -1)
        bad = ~np.isfinite(flat).all(axis=1)
        # NaN < 0 is False, so a NaN row counts once, as non-finite; -inf is counted there too
        negative = ~bad & (flat < 0).any(axis=1)
        self.nonfinite_rows, self.first_nonfinite = self._add(bad, offset, self.nonfinite_rows, self.first_nonfinite)
        self.negative_rows, self.first_negative = self._add(negative, offset, self.negative_rows, self.first_negative)

    @staticmethod
    def _add(rows: np.ndarray, offset: int, count: int, first: int) -> tuple[int, int]:
        hits = np.flatnonzero(rows)
        if len(hits) and first < 0:
            first = offset + int(hits[0])
        return count + len(hits), first

    def raise_if_any(self) -> None:
        """Raise a DataFileError naming the file, the key, the number of rows and the first."""
        if self.nonfinite_rows:
            raise DataFileError(
                f"{self.where}: key '{self.key}' has NaN/inf values in {self.nonfinite_rows} row(s), the first "
                f"at row {self.first_nonfinite}. Remove those events or regenerate the file."
            )
        if self.negative_rows:
            raise DataFileError(
                f"{self.where}: key '{self.key}' has negative energies in {self.negative_rows} row(s), the first "
                f"at row {self.first_negative}; energies in this format are deposits >= 0 MeV (clip a "
                "generator's output at 0 before writing it)."
            )


def check_energy_range(where: Path, energies_mev: np.ndarray, binning: CaloChallengeBinning) -> None:
    """Check every incident energy (N, 1) MeV lies in the dataset's range (1 % slack).

    Raises:
        DataFileError: energies outside the range; when they would fit after multiplying by
            1000 the message says the file looks like GeV while the format stores MeV.
    """
    low, high = binning.energy_range_mev
    low, high = low * (1 - ENERGY_TOLERANCE), high * (1 + ENERGY_TOLERANCE)
    flat = energies_mev.reshape(-1)
    outside = (flat < low) | (flat > high)
    if not outside.any():
        return
    found = f"found {flat.min():.6g} .. {flat.max():.6g}"
    expected = f"dataset {binning.dataset} has {binning.energy_range_mev[0]:g} .. {binning.energy_range_mev[1]:g} MeV"
    in_gev = flat * 1000.0
    if ((in_gev >= low) & (in_gev <= high)).all():
        raise DataFileError(
            f"{where}: key '{ENERGY_KEY}' looks like GeV ({found}, {expected}): the CaloChallenge format stores "
            "incident energies in MeV. Multiply them by 1000 and rewrite the file."
        )
    raise DataFileError(
        f"{where}: key '{ENERGY_KEY}' has {int(outside.sum())} energies outside the dataset's range, the first at "
        f"row {int(np.flatnonzero(outside)[0])} ({found}, {expected}). Is this a file of another dataset?"
    )


def _check_dtype(where: Path, key: str, dtype: np.dtype) -> None:
    if dtype.kind != "f":
        raise DataFileError(f"{where}: key '{key}' has dtype {dtype}, expected float32 or float64 (MeV).")


# ------------------------------------------------------------------------------------- reading
@contextmanager
def _open_checked(path: str | Path, binning: CaloChallengeBinning) -> Iterator[tuple[h5py.File, int]]:
    """Open a file and check its keys, dtypes and shapes; yield (file, N)."""
    path = Path(path)
    f = open_hdf5(path, "CaloChallenge", download_hint(binning.dataset))
    with f:
        missing = [k for k in (ENERGY_KEY, SHOWER_KEY) if not isinstance(f.get(k), h5py.Dataset)]
        if missing:
            raise DataFileError(
                f"{path}: key(s) {missing} missing; a CaloChallenge file has datasets '{ENERGY_KEY}' (N, 1) and "
                f"'{SHOWER_KEY}' (N, {binning.n_voxels}) (found {sorted(f.keys())})."
            )
        for key in (ENERGY_KEY, SHOWER_KEY):
            _check_dtype(path, key, f[key].dtype)
        n = check_shapes(path, f[ENERGY_KEY].shape, f[SHOWER_KEY].shape, binning)
        yield f, n


def _read_block(path: Path, ds: h5py.Dataset, out: np.ndarray, start: int, stop: int) -> None:
    """Read rows [start, stop) of ``ds`` into the same rows of ``out``, converting to its dtype."""
    try:
        ds.read_direct(out, np.s_[start:stop], np.s_[start:stop])
    except (OSError, RuntimeError) as err:
        raise DataFileError(
            f"{path}: key '{ds.name.lstrip('/')}' cannot be read at rows {start}..{stop} ({err}); the file is "
            "truncated or corrupt. Download it again or remake it."
        ) from err


def _block_rows(ds: h5py.Dataset, row_bytes: int) -> int:
    """Rows per read: about BLOCK_BYTES, a multiple of the file's chunk rows (each chunk is
    decompressed once)."""
    rows = max(1, BLOCK_BYTES // max(row_bytes, 1))
    chunk_rows = ds.chunks[0] if ds.chunks else 1
    return max(chunk_rows, rows - rows % chunk_rows)


def _limit(n: int, max_events: int | None) -> int:
    if max_events is None:
        return n
    if max_events < 1:
        raise ValueError(f"max_events={max_events}: need at least 1 event (or None for all).")
    return min(n, max_events)


def _read_energies(path: Path, f: h5py.File, n: int, binning: CaloChallengeBinning) -> np.ndarray:
    energies = np.empty((n, 1), np.float32)
    _read_block(path, f[ENERGY_KEY], energies, 0, n)
    faults = RowFaults(path, ENERGY_KEY)
    faults.scan(energies, 0)
    faults.raise_if_any()
    check_energy_range(path, energies, binning)
    return energies


def read_incident_energies(
    path: str | Path, binning: CaloChallengeBinning, max_events: int | None = None
) -> np.ndarray:
    """The checked incident energies (N, 1) float32 MeV of a file, without reading its showers.

    Raises:
        DataFileError: as :func:`read_calochallenge`, except for faults in the showers' values.
    """
    with _open_checked(path, binning) as (f, n):
        return _read_energies(Path(path), f, _limit(n, max_events), binning)


def read_calochallenge(
    path: str | Path,
    binning: CaloChallengeBinning,
    max_events: int | None = None,
    threshold_mev: float | None = None,
) -> dict[str, np.ndarray]:
    """Read and check one CaloChallenge file.

    Args:
        path: the ``.hdf5`` file.
        binning: the dataset's binning; fixes the voxel count and the incident-energy range.
        max_events: read the first ``max_events`` events only (all when ``None``).
        threshold_mev: when given, voxels below it are set to 0 while reading (the evaluation's
            readout threshold, ``binning.threshold_mev``), without a second copy.

    Returns:
        ``{"incident_energies": (N, 1) MeV, "showers": (N, n_voxels) MeV}``, float32.

    Raises:
        DataFileError: missing, unreadable or truncated file, missing key, a dtype that is not
            float, wrong rank or shape, voxel count not that of the binning, different N in the
            two keys, no events, NaN/inf or negative values, incident energies outside the
            dataset's range (or in GeV).
    """
    path = Path(path)
    with _open_checked(path, binning) as (f, n):
        n = _limit(n, max_events)
        energies = _read_energies(path, f, n, binning)
        ds = f[SHOWER_KEY]
        showers = np.empty((n, binning.n_voxels), np.float32)
        faults = RowFaults(path, SHOWER_KEY)
        step = _block_rows(ds, showers.itemsize * binning.n_voxels)
        for start in range(0, n, step):
            stop = min(n, start + step)
            _read_block(path, ds, showers, start, stop)
            faults.scan(showers[start:stop], start)
            if threshold_mev is not None:
                block = showers[start:stop]
                block[block < threshold_mev] = 0.0
        faults.raise_if_any()
    return {ENERGY_KEY: energies, SHOWER_KEY: showers}


def apply_threshold(showers: np.ndarray | torch.Tensor, threshold_mev: float) -> np.ndarray | torch.Tensor:
    """A copy of ``showers`` (any shape, MeV) with the voxels below ``threshold_mev`` set to 0.

    The challenge's evaluation does this to both samples before any comparison
    (``binning.threshold_mev``: 1 MeV for dataset 1, 15.15 keV for datasets 2 and 3), so a
    generator is judged only on what the readout would record. NaN stays NaN.
    """
    if isinstance(showers, torch.Tensor):
        return torch.where(showers < threshold_mev, torch.zeros_like(showers), showers)
    showers = np.asarray(showers)
    return np.where(showers < threshold_mev, np.zeros((), showers.dtype), showers)


# ------------------------------------------------------------------------------------- writing
def _as_float32(where: Path, key: str, values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values)
    _check_dtype(where, key, values.dtype)
    return values.astype(np.float32, copy=False)


def _check_arrays(where: Path, energies: np.ndarray, showers: np.ndarray, binning: CaloChallengeBinning) -> None:
    """The reader's checks, on arrays about to be written."""
    check_shapes(where, energies.shape, showers.shape, binning)
    for key, values in ((ENERGY_KEY, energies), (SHOWER_KEY, showers)):
        faults = RowFaults(where, key)
        step = max(1, BLOCK_BYTES // max(values[:1].nbytes, 1))
        for start in range(0, len(values), step):
            faults.scan(values[start : start + step], start)
        faults.raise_if_any()
    check_energy_range(where, energies, binning)


def write_calochallenge(
    path: str | Path,
    incident_energies_mev,
    showers_mev,
    binning: CaloChallengeBinning,
    attrs: dict | None = None,
) -> Path:
    """Write showers in the CaloChallenge format, atomically (a temporary file is renamed at the end).

    Args:
        path: the ``.hdf5`` file to create; an existing file is never overwritten.
        incident_energies_mev: (N, 1) incident energies, MeV (numpy array or tensor).
        showers_mev: (N, n_voxels) voxel energies, MeV, in the binning's order.
        binning: the dataset's binning.
        attrs: file attributes (hepgen records how made data were made).

    Returns:
        ``path``.

    Raises:
        FileExistsError: ``path`` exists.
        DataFileError: the data would not pass :func:`read_calochallenge` (names the file and key).
    """
    path = Path(path)
    refuse = f"{path} exists; hepgen never overwrites a data file. Remove it or choose another path."
    if path.exists():
        raise FileExistsError(refuse)
    energies = _as_float32(path, ENERGY_KEY, incident_energies_mev)
    showers = _as_float32(path, SHOWER_KEY, showers_mev)
    # checked after the cast to float32: a float64 value beyond float32's range becomes inf here
    _check_arrays(path, energies, showers, binning)
    path.parent.mkdir(parents=True, exist_ok=True)
    # in the target's folder (so the rename is atomic) under a name no other writer can pick
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    rows = max(1, min(len(showers), CHUNK_BYTES // showers[:1].nbytes))
    try:
        with h5py.File(tmp, "w") as f:
            # gzip level 1: nearly the ratio of the default level 4 on float data, several times faster
            for key, values, chunks in (
                (ENERGY_KEY, energies, (min(len(energies), 2**16), 1)),
                (SHOWER_KEY, showers, (rows, showers.shape[1])),
            ):
                f.create_dataset(key, data=values, chunks=chunks, compression="gzip", compression_opts=1)
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
        if path.exists():  # made by another writer meanwhile
            raise FileExistsError(refuse)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
