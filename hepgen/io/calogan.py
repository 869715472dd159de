"""The CaloGAN HDF5 shower format (Mendeley Data, doi:10.17632/pvn3xc3wy5.1).

One file per particle species (``eplus.hdf5``, ``gamma.hdf5``, ``piplus.hdf5``), N showers each:

=========== ============ ==========================================================
key         shape        content
=========== ============ ==========================================================
``energy``  (N, 1)       incident energy, GeV (uniform 1-100 GeV in the published files)
``layer_0`` (N, 3, 96)   cell energies, MeV
``layer_1`` (N, 12, 12)  cell energies, MeV
``layer_2`` (N, 12, 6)   cell energies, MeV
``overflow``(N, 3)       energy outside the readout cells, per layer, MeV
=========== ============ ==========================================================
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import h5py
import numpy as np

from hepgen.io.errors import DataFileError
from hepgen.io.hdf5 import open_hdf5
from hepgen.physics.calo_geometry import LAYER_KEYS, LAYER_SHAPES

KEY_SHAPES: dict[str, tuple[int, ...]] = {"energy": (1,), **LAYER_SHAPES, "overflow": (3,)}

DOWNLOAD_HINT = (
    "The published CaloGAN files (eplus.hdf5, gamma.hdf5, piplus.hdf5) are at "
    "https://doi.org/10.17632/pvn3xc3wy5.1; put them in the data_dir, or set `source: made` "
    "to train on hepgen's made showers (`hepgen data make calogan --out DIR`)."
)


def read_calogan(path: str | Path, max_events: int | None = None) -> dict[str, np.ndarray]:
    """Read and check one CaloGAN file.

    Returns:
        ``{"energy": (N, 1) GeV, "layer_0": (N, 3, 96) MeV, "layer_1": (N, 12, 12) MeV,
        "layer_2": (N, 12, 6) MeV, "overflow": (N, 3) MeV}`` as float32 arrays.

    Raises:
        DataFileError: missing or unreadable file, missing key, wrong shape, NaN/inf, no events.
    """
    path = Path(path)
    f = open_hdf5(path, "CaloGAN", DOWNLOAD_HINT)
    with f:
        missing = [k for k in KEY_SHAPES if k not in f]
        if missing:
            raise DataFileError(
                f"{path}: key(s) {missing} missing; a CaloGAN file has {list(KEY_SHAPES)} "
                f"(found {sorted(f.keys())})."
            )
        lengths = {k: f[k].shape[0] if f[k].shape else 0 for k in KEY_SHAPES}
        if len(set(lengths.values())) != 1:
            raise DataFileError(f"{path}: keys hold different numbers of events {lengths}.")
        out: dict[str, np.ndarray] = {}
        for key, shape in KEY_SHAPES.items():
            ds = f[key]
            if tuple(ds.shape[1:]) != shape:
                raise DataFileError(
                    f"{path}: key '{key}' has shape {tuple(ds.shape)}, expected (N, "
                    f"{', '.join(map(str, shape))})."
                )
            try:
                out[key] = np.asarray(ds[:max_events], dtype=np.float32)
            except OSError as err:
                raise DataFileError(
                    f"{path}: key '{key}' cannot be read ({err}); the file is truncated or "
                    "corrupt. Download it again or remake it."
                ) from err
    if len(out["energy"]) == 0:
        raise DataFileError(f"{path}: the file holds no events.")
    for key, arr in out.items():
        bad = ~np.isfinite(arr)
        if bad.any():
            first = int(np.argwhere(bad.reshape(len(arr), -1).any(1))[0, 0])
            raise DataFileError(
                f"{path}: key '{key}' has {int(bad.sum())} NaN/inf value(s), first in event "
                f"{first}. Remove those events or regenerate the file."
            )
    return out


def write_calogan(path: str | Path, showers: dict[str, np.ndarray], attrs: dict | None = None) -> Path:
    """Write showers in the CaloGAN format, atomically (a temporary file is renamed at the end).

    Args:
        path: the ``.hdf5`` file to create; an existing file is never overwritten.
        showers: ``energy`` (N, 1) GeV and ``layer_0..2`` in MeV; ``overflow`` (N, 3) MeV is
            filled with zeros when absent.
        attrs: extra file attributes (hepgen records how made data were made).
    """
    path = Path(path)
    refuse = f"{path} exists; hepgen never overwrites a data file. Remove it or choose another path."
    if path.exists():
        raise FileExistsError(refuse)
    n = len(showers["energy"])
    data = {k: showers[k] for k in ("energy", *LAYER_KEYS)}
    data["overflow"] = showers.get("overflow", np.zeros((n, 3), np.float32))
    for key, shape in KEY_SHAPES.items():
        if tuple(np.shape(data[key])) != (n, *shape):
            raise ValueError(f"'{key}' has shape {np.shape(data[key])}, expected {(n, *shape)}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name no other writer can pick, even on another node of a shared filesystem: a concurrent
    # writer of the same file never writes into, or renames, this one's half-written bytes
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        with h5py.File(tmp, "w") as f:
            for key, value in data.items():
                f.create_dataset(key, data=np.asarray(value, dtype=np.float32), compression="gzip", compression_opts=1)
            for k, v in (attrs or {}).items():
                f.attrs[k] = v
        if path.exists():  # made by another writer meanwhile
            raise FileExistsError(refuse)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
