"""Writing data files safely: all or nothing, and never over an existing file."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | Path, write: Callable) -> Path:
    """Create ``path`` through ``write(binary_file)``, atomically and never over an existing file.

    The bytes go to a hidden temporary file in the same folder, which is then renamed with
    ``os.replace`` (atomic on one filesystem): a crash leaves no half-written ``path``.

    Raises:
        FileExistsError: ``path`` exists (nothing is written).
    """
    path = Path(path)
    refuse = f"{path} exists; hepgen never overwrites a data file. Remove it or choose another path."
    if path.exists():
        raise FileExistsError(refuse)
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid and a random part: processes on different nodes of a shared filesystem may share a pid
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        with open(tmp, "wb") as f:
            write(f)
        if path.exists():  # created by someone else while we wrote
            raise FileExistsError(refuse)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
