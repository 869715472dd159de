"""Opening a published HDF5 file with the errors every hepgen reader gives."""

from __future__ import annotations

from pathlib import Path

import h5py

from hepgen.io.errors import DataFileError


def open_hdf5(path: Path, what: str, hint: str) -> h5py.File:
    """``path`` opened read-only; a missing or unreadable file is a :class:`DataFileError`.

    Args:
        path: the file.
        what: the format's name in the message, e.g. ``"CaloGAN"``.
        hint: where to get the file (appended to the missing-file message).
    """
    if not path.is_file():
        raise DataFileError(f"{what} file not found: {path}. {hint}")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataFileError(
            f"{path} is not a readable HDF5 file ({err}); it may be truncated or corrupt. "
            "Download it again or remake it."
        ) from err
