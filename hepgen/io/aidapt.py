"""The A(i)DAPT γp → π+π−p event files (JLab, CLAS g11): one ``.npy`` array of shape (N, 16) each.

The inner GAN reads ``ps_vertex_{k}.npy`` / ``ps_detector_{k}.npy`` and the outer GAN
``realistic_vertex_{k}.npy`` / ``realistic_detector_{k}.npy``. Vertex and detector files are
paired row by row: row i of both is the same event, generated and reconstructed, and only
accepted events appear. Columns (lab frame, beam along +z, GeV), component-major:

====== =========== =====================================================================
index  name        content
====== =========== =====================================================================
0      event_id    index of the event in its generated sample (dropped by the reference)
1      MX2         missing mass² of the π− (GeV²); m_π² in vertex files
2      E_gamma     photon beam energy
3      phi_pip     azimuth of the π+ (rad; dropped by the reference)
4-6    px_*        px of p, π+, π−
7-9    py_*        py of p, π+, π−
10-12  pz_*        pz of p, π+, π−
13-15  E_*         E of p, π+, π−
====== =========== =====================================================================
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hepgen.io.errors import DataFileError
from hepgen.io.files import write_atomically
from hepgen.physics.kinematics import COLUMNS  # the layout lives with the formulas that read it

N_COLUMNS = len(COLUMNS)

DOWNLOAD_HINT = (
    "The real A(i)DAPT files (ps_/realistic_ vertex and detector .npy) come from the JLab A(i)DAPT "
    "group (see JeffersonLab/jlab_datascience_exp_hall, Hall_B/AIDAPT); put them in the data_dir, or "
    "make stand-ins with `hepgen data make aidapt --out DIR`."
)


def read_event_file(path: str | Path) -> np.ndarray:
    """Read and check one A(i)DAPT event file.

    Returns:
        (N, 16) float64 array in the :data:`COLUMNS` layout, N ≥ 1, all finite.

    Raises:
        DataFileError: missing or unreadable file, not a 2-D array, not 16 columns, no rows,
            NaN/inf values. The message names the file and says what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"A(i)DAPT event file not found: {path}. {DOWNLOAD_HINT}")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as err:
        raise DataFileError(f"{path} cannot be opened ({err}). Check its permissions or copy it again.") from err
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK"):  # .npy magic; PK: an .npz (zip) archive
        raise DataFileError(
            f"{path} is not a readable .npy file (it does not start with the NumPy magic bytes); it may be "
            "corrupt or in another format. Copy it again or remake it."
        )
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataFileError(
            f"{path} is not a readable .npy file ({err}); it may be truncated or corrupt. "
            "Copy it again or remake it."
        ) from err
    if not isinstance(loaded, np.ndarray):  # np.load opens .npz archives as a mapping
        loaded.close()
        raise DataFileError(f"{path} is an .npz archive; an A(i)DAPT event file is one .npy array (N, {N_COLUMNS}).")
    if loaded.ndim != 2:
        raise DataFileError(
            f"{path}: array of shape {loaded.shape}, expected a 2-D array (N, {N_COLUMNS}) of events."
        )
    if loaded.shape[1] != N_COLUMNS:
        older = " (14 columns is the layout with event_id and phi_pip already dropped)" if loaded.shape[1] == 14 else ""
        raise DataFileError(
            f"{path}: {loaded.shape[1]} columns{older}; expected {N_COLUMNS} columns in the AIDAPT layout "
            f"{list(COLUMNS)}. Write the file in that layout or remake it."
        )
    if loaded.shape[0] == 0:
        raise DataFileError(
            f"{path}: the file holds no events (shape {loaded.shape}). Remake it or drop it from the list."
        )
    try:
        events = np.asarray(loaded, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataFileError(f"{path}: dtype {loaded.dtype} is not numeric ({err}); expected float64.") from err
    bad = ~np.isfinite(events)
    if bad.any():
        rows = bad.sum(0)
        culprits = ", ".join(f"'{COLUMNS[c]}' in {int(rows[c])} row(s)" for c in np.flatnonzero(rows))
        first = int(np.flatnonzero(bad.any(1))[0])
        raise DataFileError(
            f"{path}: NaN/inf values in column(s) {culprits} (first bad row {first}). "
            "Remove those events from both files of the pair or remake the file."
        )
    return events


def _as_paths(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    return [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]


def read_paired_files(
    vertex_paths: str | Path | Sequence[str | Path], detector_paths: str | Path | Sequence[str | Path]
) -> tuple[np.ndarray, np.ndarray]:
    """Read vertex and detector files pair by pair, check that they pair up, and concatenate.

    File i of ``vertex_paths`` pairs with file i of ``detector_paths``: both must hold the same
    number of rows (row j is the same event at both levels).

    Returns:
        ``(vertex, detector)``, each (N, 16) float64, N the total rows.

    Raises:
        DataFileError: the lists differ in length or are empty, a pair differs in length, or a
            file is bad (see :func:`read_event_file`).
    """
    vertex_paths, detector_paths = _as_paths(vertex_paths), _as_paths(detector_paths)
    if len(vertex_paths) != len(detector_paths) or not vertex_paths:
        raise DataFileError(
            f"vertex and detector files pair one to one, got {len(vertex_paths)} vertex file(s) "
            f"{[str(p) for p in vertex_paths]} and {len(detector_paths)} detector file(s) "
            f"{[str(p) for p in detector_paths]}."
        )
    vertex, detector = [], []
    for v_path, d_path in zip(vertex_paths, detector_paths):
        v, d = read_event_file(v_path), read_event_file(d_path)
        if len(v) != len(d):
            raise DataFileError(
                f"paired files differ in length: {v_path} has {len(v)} rows, {d_path} has {len(d)} rows; "
                "row i of a vertex file must be the same event as row i of its detector file. "
                "Use files written together, or remake them."
            )
        vertex.append(v)
        detector.append(d)
    return np.concatenate(vertex), np.concatenate(detector)


def write_event_file(path: str | Path, array: np.ndarray) -> Path:
    """Write (N, 16) events as a float64 ``.npy`` file, atomically; never overwrites.

    Raises:
        ValueError: ``array`` is not (N, 16).
        FileExistsError: ``path`` exists.
    """
    events = np.ascontiguousarray(array, dtype=np.float64)
    if events.ndim != 2 or events.shape[1] != N_COLUMNS:
        raise ValueError(f"events: shape {events.shape}, expected (N, {N_COLUMNS}) in the layout {list(COLUMNS)}.")
    return write_atomically(path, lambda f: np.save(f, events, allow_pickle=False))
