"""The data formats of weakly supervised anomaly detection (CATHODE, FETA, SALAD, the seed study).

Three families of files, each read with checks that name the file, the key or column, and what
to do (:class:`~hepgen.io.errors.DataFileError`, one line):

* **LHCO R&D** (LHC Olympics 2020, Zenodo 4536377): ``events_anomalydetection_v2.features.h5``,
  a pandas ``DataFrame.to_hdf(key="df", format="fixed")`` file of 1.1M dijet events with the 15
  columns of :data:`LHCO_COLUMNS` in GeV. :func:`read_pandas_fixed` reads that layout with h5py
  alone; :func:`lhco_features` turns the columns into CATHODE's six (:data:`AD_COLUMNS`).
* **CATHODE-style** ``.npy`` arrays (N, 6) in the :data:`AD_COLUMNS` layout, e.g. the signal-region
  files ``sr_data_train.npy`` / ``sr_data_val.npy`` / ``sr_signal.npy``: :func:`read_cathode_npy`.
* **The seed study** (hep-lbdl/non-resonant-AD-extrapolation, final era): ``.npz`` archives whose
  rows are the context columns first, then the features: :func:`read_seed_study`.
"""

from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from hepgen.io.errors import DataFileError
from hepgen.io.hdf5 import open_hdf5

#: The 15 columns of the LHCO R&D feature files, in file order. j1/j2 are the leading and
#: subleading anti-kT R = 1.0 jets in pT; momenta and masses in GeV; τ_N are N-subjettiness
#: (dimensionless); ``label`` is 1 for the W' → XY signal, 0 for QCD dijets.
LHCO_COLUMNS = (
    "pxj1", "pyj1", "pzj1", "mj1", "tau1j1", "tau2j1", "tau3j1",
    "pxj2", "pyj2", "pzj2", "mj2", "tau1j2", "tau2j2", "tau3j2",
    "label",
)

#: CATHODE's six columns (arXiv 2109.00546), in array order:
#:
#: ============ ====== ==========================================================
#: m_jj         TeV    dijet invariant mass (the resonant variable; SR 3.3–3.7)
#: m_J1         TeV    mass of the lighter of the two jets
#: delta_m_J    TeV    mass of the heavier jet minus that of the lighter (≥ 0)
#: tau21_J1     –      τ2/τ1 of the lighter jet
#: tau21_J2     –      τ2/τ1 of the heavier jet
#: label        –      1 = signal, 0 = background (truth, never a training input)
#: ============ ====== ==========================================================
AD_COLUMNS = ("m_jj", "m_J1", "delta_m_J", "tau21_J1", "tau21_J2", "label")

#: Guards τ2/τ1 against a jet with τ1 = 0 (a single-constituent jet); CATHODE's value.
TAU_EPSILON = 1e-5

LHCO_HINT = (
    "The LHCO R&D files (events_anomalydetection_v2.features.h5 and relatives) come from Zenodo record "
    "4536377 (https://zenodo.org/records/4536377); the extra QCD of the signal region from record 5759087."
)

SEED_HINT = (
    "Make one with `hepgen data make ad_toy --out DIR`, or get the seed's files from Zenodo record 10154213."
)

#: Rows of a pandas block read per step: the block is stored row-major (N, k) and returned
#: column-major, so it is transposed a slab at a time instead of through a second full copy.
ROWS_PER_READ = 1 << 18


def _one_line(err: Exception) -> str:
    """An exception's text with its line breaks folded, so messages stay on one line."""
    return " ".join(str(err).split())


# --------------------------------------------------------------------------- pandas "fixed" HDF5
def _decode(names: np.ndarray, encoding: str) -> list[str]:
    """Column names of a pandas index as str: bytes decoded, integer names (e.g. the LHCO
    low-level file's 0..2100) written in decimal."""
    return [n.decode(encoding) if isinstance(n, bytes) else str(n) for n in names.tolist()]


def _block_columns(path: Path, group: h5py.Group, i: int, encoding: str) -> dict[str, np.ndarray]:
    """Block ``i`` of a fixed-format frame as name → 1-D column (each column contiguous)."""
    where = f"{path}: '{group.name}/block{i}"
    if f"block{i}_items" not in group or f"block{i}_values" not in group:
        raise DataFileError(
            f"{where}_items' or '_values' missing, though the group's nblocks is {group.attrs.get('nblocks')}; "
            "the file is incomplete. Download it again or re-save the frame."
        )
    items = _decode(group[f"block{i}_items"][()], encoding)
    values = group[f"block{i}_values"]
    attrs = values.attrs
    if values.dtype.kind == "O":
        # pandas pickles object (string) columns into a variable-length array: no pickle here
        raise DataFileError(
            f"{where}_values' holds columns {items} as Python objects (strings), which are not read without "
            "pandas; drop or convert those columns to numbers before saving."
        )
    if "value_type" in attrs and "shape" in attrs:
        # pandas writes an empty block as a 1-element placeholder and its real shape as an attribute
        dtype = attrs["value_type"]
        dtype = dtype.decode() if isinstance(dtype, bytes) else str(dtype)
        return {name: np.empty(0, dtype=dtype) for name in items}
    if values.ndim != 2:
        raise DataFileError(f"{where}_values' has shape {values.shape}, expected (rows, {len(items)}).")
    # pandas transposes its (columns, rows) blocks on writing and flags that with `transposed`
    transposed = bool(attrs.get("transposed", False))
    n_items = values.shape[1] if transposed else values.shape[0]
    if n_items != len(items):
        raise DataFileError(
            f"{where}_values' has shape {values.shape} but '{group.name}/block{i}_items' names {len(items)} "
            "column(s); the file is inconsistent. Download it again or re-save the frame."
        )
    try:
        if transposed:
            columns = np.empty((values.shape[1], values.shape[0]), dtype=values.dtype)
            for start in range(0, values.shape[0], ROWS_PER_READ):
                columns[:, start:start + ROWS_PER_READ] = values[start:start + ROWS_PER_READ].T
        else:
            columns = values[()]
    except OSError as err:
        raise DataFileError(
            f"{where}_values' cannot be read ({_one_line(err)}); the file may be truncated. Download it again."
        ) from err
    return dict(zip(items, columns))


def read_pandas_fixed(path: str | Path, key: str = "df", *, hint: str = LHCO_HINT) -> dict[str, np.ndarray]:
    """Read a pandas ``DataFrame.to_hdf(path, key=key, format="fixed")`` file with h5py only.

    The frame lives in group ``/<key>``: ``axis0`` holds the column names, and pandas stores the
    columns of one dtype together, block i as ``block{i}_items`` (its column names) and
    ``block{i}_values`` (rows, columns of the block), for i < the group's ``nblocks``.

    Args:
        path: the HDF5 file.
        key: the frame's key (``"df"`` in every LHCO file).
        hint: where to get the file, appended to the missing-file message.

    Returns:
        column name → 1-D array of N values in the file's dtype, in ``axis0`` order.

    Raises:
        DataFileError: missing or unreadable file, no ``/<key>`` group, a ``format="table"`` file,
            no ``axis0``, a column in no block, blocks of different lengths, object columns.
    """
    path = Path(path)
    with open_hdf5(path, "pandas HDF5", hint) as f:
        group = f.get(key)
        if not isinstance(group, h5py.Group):
            raise DataFileError(
                f"{path}: no group '/{key}' (found {sorted(f.keys())}); pass the key the frame was saved "
                "under (`to_hdf(path, key=...)`)."
            )
        if "table" in group:
            raise DataFileError(
                f"{path}: '/{key}' was saved with format=\"table\"; hepgen reads pandas' fixed format. Re-save "
                f"it with `pd.read_hdf(path, '{key}').to_hdf(new_path, key='{key}', format=\"fixed\")` or use "
                "the published fixed-format file."
            )
        if "axis0" not in group:
            raise DataFileError(
                f"{path}: '/{key}/axis0' (the column names) missing (found {sorted(group.keys())}); this is not "
                "a pandas fixed-format frame. Re-save it with `DataFrame.to_hdf(..., format=\"fixed\")`."
            )
        encoding = group.attrs.get("encoding", b"UTF-8")
        encoding = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
        try:
            names = _decode(group["axis0"][()], encoding)
            found: dict[str, np.ndarray] = {}
            for i in range(int(group.attrs.get("nblocks", 1))):
                found.update(_block_columns(path, group, i, encoding))
        except OSError as err:
            raise DataFileError(
                f"{path}: '/{key}' cannot be read ({_one_line(err)}); the file may be truncated. Download it again."
            ) from err
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataFileError(f"{path}: column name(s) {twice} appear more than once in '/{key}/axis0'; rename them.")
    missing = [n for n in names if n not in found]
    if missing:
        raise DataFileError(
            f"{path}: column(s) {missing} are listed in '/{key}/axis0' but stored in no block; the file is "
            "incomplete. Download it again or re-save the frame."
        )
    lengths = {len(found[n]) for n in names}
    if len(lengths) > 1:
        raise DataFileError(
            f"{path}: the blocks of '/{key}' hold different numbers of rows {sorted(lengths)}; the file is "
            "inconsistent. Download it again or re-save the frame."
        )
    return {n: found[n] for n in names}


# ----------------------------------------------------------------------------- LHCO → CATHODE
def lhco_features(columns: Mapping[str, np.ndarray], where: str | Path = "LHCO columns") -> np.ndarray:
    """CATHODE's six features from the 15 LHCO R&D columns (GeV in, TeV out).

    With E_i = √(|p_i|² + m_i²) for jet i = 1, 2 (GeV),

        m_jj = √((E1 + E2)² − |p1 + p2|²),

    and the jets then ordered by **mass**, not pT: J1 is the lighter (on a tie, j1) and J2 the
    heavier, m_J1 = min(m_j1, m_j2), Δm_J = m_J2 − m_J1 ≥ 0, and τ21 = τ2 / (τ1 + 10⁻⁵) of each.
    Ordering by mass makes (m_J1, Δm_J) a smooth pair of coordinates for a resonance's two
    daughters whatever their pT order (the signal's X and Y are 500 and 100 GeV).

    Args:
        columns: name → (N,) arrays holding at least :data:`LHCO_COLUMNS`.
        where: names the source in error messages (the file).

    Returns:
        (N, 6) float64 in the :data:`AD_COLUMNS` layout; masses in TeV.

    Raises:
        DataFileError: a column of :data:`LHCO_COLUMNS` is missing.
    """
    missing = [c for c in LHCO_COLUMNS if c not in columns]
    if missing:
        raise DataFileError(
            f"{where}: column(s) {missing} missing; the LHCO R&D feature files have the 15 columns "
            f"{list(LHCO_COLUMNS)} (found {list(columns)}). Is this another LHCO file (e.g. the low-level one)?"
        )
    col = {c: np.asarray(columns[c], dtype=np.float64) for c in LHCO_COLUMNS}
    p1 = np.stack([col["pxj1"], col["pyj1"], col["pzj1"]])
    p2 = np.stack([col["pxj2"], col["pyj2"], col["pzj2"]])
    e1 = np.sqrt((p1 ** 2).sum(0) + col["mj1"] ** 2)
    e2 = np.sqrt((p2 ** 2).sum(0) + col["mj2"] ** 2)
    # m² ≥ 0 exactly, but E² − p² of two TeV-scale numbers can round just below zero
    m_jj = np.sqrt(np.clip((e1 + e2) ** 2 - ((p1 + p2) ** 2).sum(0), 0.0, None))
    tau21_j1 = col["tau2j1"] / (col["tau1j1"] + TAU_EPSILON)
    tau21_j2 = col["tau2j2"] / (col["tau1j2"] + TAU_EPSILON)
    j1_lighter = col["mj1"] <= col["mj2"]
    light = np.where(j1_lighter, col["mj1"], col["mj2"])
    heavy = np.where(j1_lighter, col["mj2"], col["mj1"])
    gev_to_tev = 1e-3
    return np.stack(
        [
            m_jj * gev_to_tev,
            light * gev_to_tev,
            (heavy - light) * gev_to_tev,
            np.where(j1_lighter, tau21_j1, tau21_j2),
            np.where(j1_lighter, tau21_j2, tau21_j1),
            col["label"],
        ],
        axis=1,
    )


def read_lhco(path: str | Path) -> np.ndarray:
    """An LHCO R&D feature file (pandas fixed HDF5, key ``df``) as CATHODE's (N, 6) features.

    Returns:
        (N, 6) float64 in the :data:`AD_COLUMNS` layout (TeV), in file order. The published file
        is sorted by label (QCD first): shuffle before splitting.
    """
    return lhco_features(read_pandas_fixed(path, "df"), where=path)


# ---------------------------------------------------------------------------- CATHODE .npy files
def _check_finite(where: str, events: np.ndarray, names: Sequence[str] | None = None) -> None:
    """Raise naming the columns with NaN/inf (by name, else by index), their counts and the first bad row."""
    bad = ~np.isfinite(events)
    if not bad.any():
        return
    per_column = bad.sum(0)
    culprits = ", ".join(
        f"{repr(names[c]) if names else c} in {int(per_column[c])} row(s)" for c in np.flatnonzero(per_column)
    )
    first = int(np.flatnonzero(bad.any(1))[0])
    raise DataFileError(
        f"{where}: NaN/inf values in column(s) {culprits} (first bad row {first}). "
        "Remove those events or remake the file."
    )


def read_cathode_npy(path: str | Path) -> np.ndarray:
    """Read and check a CATHODE-style event array: one ``.npy`` of shape (N, 6).

    Returns:
        (N, 6) float64 in the :data:`AD_COLUMNS` layout (masses in TeV), N ≥ 1, all finite,
        labels 0 or 1.

    Raises:
        DataFileError: missing or unreadable file, an ``.npz``, not 2-D with 6 columns, no rows,
            NaN/inf values, labels other than 0 and 1.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(
            f"CATHODE-style event file not found: {path}. The signal-region files sr_data_train.npy, "
            "sr_data_val.npy and sr_signal.npy come with the CATHODE code (HEPML-AnomalyDetection/CATHODE); "
            f"or build (N, 6) arrays from the LHCO file with `read_lhco`. {LHCO_HINT}"
        )
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY":
        kind = "an .npz archive" if magic.startswith(b"PK") else "not a .npy file (no NumPy magic bytes)"
        raise DataFileError(f"{path} is {kind}; a CATHODE-style event file is one .npy array (N, 6). Copy it again.")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise DataFileError(
            f"{path} is not a readable .npy file ({_one_line(err)}); it may be truncated or corrupt. Copy it again."
        ) from err
    if loaded.ndim != 2 or loaded.shape[1] != len(AD_COLUMNS):
        raise DataFileError(
            f"{path}: array of shape {loaded.shape}, expected (N, {len(AD_COLUMNS)}) with columns "
            f"{list(AD_COLUMNS)}. Write the file in that layout."
        )
    if loaded.shape[0] == 0:
        raise DataFileError(f"{path}: the file holds no events (shape {loaded.shape}). Remake it.")
    if loaded.dtype.kind not in "biuf":
        raise DataFileError(f"{path}: dtype {loaded.dtype} is not numeric; expected float64.")
    events = np.asarray(loaded, dtype=np.float64)
    _check_finite(str(path), events, AD_COLUMNS)
    labels = events[:, -1]
    odd = (labels != 0) & (labels != 1)
    if odd.any():
        raise DataFileError(
            f"{path}: column 'label' holds {int(odd.sum())} value(s) other than 0 and 1 (e.g. "
            f"{labels[odd][0]:g} in row {int(np.flatnonzero(odd)[0])}); is the last column the label?"
        )
    return events


# ------------------------------------------------------------------------------- seed .npz study
def data_file_name(signal_fraction: float) -> str:
    """The seed's name of the data file with injected signal fraction s: ``data_{s}.npz``.

    s is written as Python writes the float (``repr``), a whole number without its ``.0``:
    0 → ``data_0.npz``, 0.0025 → ``data_0.0025.npz``, 1e-05 → ``data_1e-05.npz``. The seed
    formats its injection list with an f-string, where s = 0 is the int 0.

    Raises:
        ValueError: s negative, NaN or infinite.
    """
    s = float(signal_fraction)  # repr(np.float64) is "np.float64(...)" under NumPy 2
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"signal fraction {signal_fraction!r} must be a finite number >= 0.")
    text = repr(s)
    return f"data_{text[:-2] if text.endswith('.0') else text}.npz"


def _open_npz(path: Path):
    """``path`` opened as an .npz archive (an ``NpzFile``, to be closed by the caller)."""
    if not path.is_file():
        raise DataFileError(f"anomaly-detection study file not found: {path}. {SEED_HINT}")
    with open(path, "rb") as f:
        magic = f.read(6)
    if not magic.startswith(b"PK"):
        kind = "a single .npy array" if magic == b"\x93NUMPY" else "not a zip archive"
        raise DataFileError(f"{path} is {kind}, not an .npz archive (np.savez). Remake it or copy it again.")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataFileError(
            f"{path} is not a readable .npz archive ({_one_line(err)}); it may be truncated or corrupt. "
            "Copy it again or remake it."
        ) from err


def _npz_entry(archive, path: Path, key: str) -> np.ndarray:
    """Array ``key`` of an open archive, with the missing-key and unreadable-member errors."""
    if key not in archive.files:
        raise DataFileError(
            f"{path}: key '{key}' missing (found {sorted(archive.files)}); the file is not of this layout or "
            f"is from another version. {SEED_HINT}"
        )
    try:
        value = archive[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataFileError(
            f"{path}: key '{key}' cannot be read ({_one_line(err)}); the file may be truncated, or hold "
            "Python objects. Copy it again or remake it."
        ) from err
    if value.dtype.kind not in "biuf":
        raise DataFileError(f"{path}: key '{key}' has dtype {value.dtype}, expected numbers.")
    return value


def _events(path: Path, key: str, value: np.ndarray) -> np.ndarray:
    """A checked event array (N, n_columns) float64."""
    if value.ndim != 2:
        raise DataFileError(
            f"{path}: key '{key}' has shape {value.shape}, expected a 2-D array (events, columns): context "
            "columns first, then features."
        )
    events = np.asarray(value, dtype=np.float64)
    _check_finite(f"{path}: key '{key}'", events)
    return events


def read_npz_arrays(path: str | Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Read event arrays ``keys`` of one .npz archive.

    Returns:
        key → (N_key, n_columns) float64, all finite (N_key may be 0).

    Raises:
        DataFileError: missing file, not an .npz, a key missing (the message lists those
            present), an array not 2-D, NaN/inf values.
    """
    path = Path(path)
    with _open_npz(path) as archive:
        return {key: _events(path, key, _npz_entry(archive, path, key)) for key in keys}


def read_template(path: str | Path, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """A background template: ``samples`` (N, columns) rows like the data's, and their ``weights`` (N,).

    Written by a method (Reweight, Generate, Morph) for the signal-region classifier; without
    ``weights`` every event weighs 1.

    Raises:
        DataFileError: missing/unreadable file or key, a column count other than the data's,
            weights of another length, negative or non-finite weights.
    """
    path = Path(path)
    with _open_npz(path) as archive:
        samples = _events(path, "samples", _npz_entry(archive, path, "samples"))
        weights = _npz_entry(archive, path, "weights") if "weights" in archive.files else np.ones(len(samples))
    if samples.shape[1] != columns:
        raise DataFileError(
            f"{path}: 'samples' has {samples.shape[1]} columns, the data {columns}; a template holds rows of the "
            "same context and features as the data."
        )
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(samples),):
        raise DataFileError(f"{path}: 'weights' has shape {weights.shape}, expected ({len(samples)},), one per sample.")
    bad = int(np.sum(~np.isfinite(weights) | (weights < 0)))
    if bad:
        raise DataFileError(f"{path}: 'weights' has {bad} negative or non-finite value(s); weights must be >= 0.")
    return samples, weights


def _read_data_file(path: Path) -> dict[str, np.ndarray]:
    """A ``data_{s}.npz``: events of CR and SR, the realised S/B and, in hepgen's files, labels."""
    with _open_npz(path) as archive:
        out = {name: _events(path, key, _npz_entry(archive, path, key))
               for name, key in (("data_cr", "data_events_cr"), ("data_sr", "data_events_sr"))}
        percent = _npz_entry(archive, path, "sig_percent")
        if percent.size != 1 or not np.isfinite(percent).all():
            raise DataFileError(
                f"{path}: key 'sig_percent' has shape {percent.shape} and values {percent.ravel()[:3].tolist()}, "
                "expected one finite number (the realised "
                "S/B in the SR). Remake the file."
            )
        out["sig_percent"] = np.asarray(percent, dtype=np.float64).reshape(())
        present = [k for k in ("data_labels_cr", "data_labels_sr") if k in archive.files]
        if len(present) == 1:
            raise DataFileError(
                f"{path}: has '{present[0]}' but not its partner; labels come for both regions or neither. "
                "Remake the file."
            )
        for key in present:
            labels, region = _npz_entry(archive, path, key), key[-2:]
            rows = len(out[f"data_{region}"])
            if labels.shape != (rows,) or not np.isin(labels, (0, 1)).all():
                raise DataFileError(
                    f"{path}: key '{key}' must be {rows} labels 0/1 (one per row of 'data_events_{region}'), found "
                    f"shape {labels.shape} with values {np.unique(labels)[:5].tolist()}. Remake the file."
                )
            out[key] = labels.astype(np.int8)
    return out


def _signal_fractions(seed_dir: Path) -> list[float]:
    """Signal fractions of the ``data_{s}.npz`` files in ``seed_dir`` whose names round-trip."""
    found = []
    for file in seed_dir.glob("data_*.npz"):
        match = re.fullmatch(r"data_(.+)\.npz", file.name)
        try:
            s = float(match.group(1)) if match else math.nan
        except ValueError:
            continue
        if math.isfinite(s) and s >= 0 and data_file_name(s) == file.name:
            found.append(s)
    return sorted(found)


def available_signal_fractions(folder: str | Path, seed: int) -> list[float]:
    """The injected signal fractions s with a ``seed{seed}/data_{s}.npz`` in ``folder``, sorted.

    Raises:
        DataFileError: no seed folder, or no data file in it; the message lists what is there.
    """
    folder = Path(folder)
    seed_dir = folder / f"seed{seed}"
    if not folder.is_dir():
        raise DataFileError(f"anomaly-detection study folder not found: {folder}. {SEED_HINT}")
    if not seed_dir.is_dir():
        seeds = sorted(p.name for p in folder.glob("seed*") if p.is_dir())
        raise DataFileError(f"{seed_dir}: no such seed folder (found {seeds}). {SEED_HINT}")
    fractions = _signal_fractions(seed_dir)
    if not fractions:
        raise DataFileError(
            f"{seed_dir}: no data_{{s}}.npz file (found {sorted(p.name for p in seed_dir.iterdir())}); data files are "
            f"named like {data_file_name(0)} and {data_file_name(0.0025)}. {SEED_HINT}"
        )
    return fractions


#: The study's arrays: returned name → (file, key). Every one is (N, context + features).
STUDY_EVENTS = {
    "mc_cr": ("mc_events.npz", "mc_events_cr"),
    "mc_sr": ("mc_events.npz", "mc_events_sr"),
    "ideal_cr": ("ideal_bkg_events.npz", "ideal_bkg_events_cr"),
    "ideal_sr": ("ideal_bkg_events.npz", "ideal_bkg_events_sr"),
    "test_bkg": ("test_SR.npz", "bkg_events_SR"),
    "test_sig": ("test_SR.npz", "sig_events_SR"),
    "fullsup_bkg": ("fullsup_SR.npz", "bkg_events_SR"),
    "fullsup_sig": ("fullsup_SR.npz", "sig_events_SR"),
}


def read_seed_study(folder: str | Path, signal_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Read one injection of the seed's study (non-resonant-AD-extrapolation, final era).

    The folder holds ``mc_events.npz`` (the background simulation), ``ideal_bkg_events.npz`` (an
    independent sample of the true background), ``seed{seed}/data_{s}.npz`` (background with
    signal fraction s injected), ``test_SR.npz`` and ``fullsup_SR.npz`` (labelled SR samples for
    testing and fully supervised training). Each event row is the context columns first (in the
    seed's physics set HT, MET), then the features; the seed stores them min-max scaled.

    Returns:
        ``mc_cr, mc_sr, ideal_cr, ideal_sr, data_cr, data_sr, test_bkg, test_sig, fullsup_bkg,
        fullsup_sig``: (N, n_columns) float64; ``sig_percent``: 0-d float64, the realised S/B in
        the SR; with hepgen's made files also ``data_labels_cr``, ``data_labels_sr``: (N,) int8,
        1 = injected signal.

    Raises:
        DataFileError: a file or key missing or bad (see :func:`read_npz_arrays`), or two event
            arrays with different numbers of columns.
    """
    folder = Path(folder)
    data_path = folder / f"seed{seed}" / data_file_name(signal_fraction)
    if not data_path.is_file():
        # say which fractions (or seeds) there are; a missing seed folder raises in there
        fractions = available_signal_fractions(folder, seed)
        raise DataFileError(
            f"anomaly-detection data file not found: {data_path} (signal fractions in seed{seed}: {fractions}). "
            f"{SEED_HINT}"
        )
    study = _read_data_file(data_path)
    sources = {name: (data_path, key) for name, key in (("data_cr", "data_events_cr"), ("data_sr", "data_events_sr"))}
    by_file: dict[str, list[str]] = {}
    for name, (file, _) in STUDY_EVENTS.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        arrays = read_npz_arrays(folder / file, [STUDY_EVENTS[n][1] for n in names])
        for name in names:
            study[name] = arrays[STUDY_EVENTS[name][1]]
            sources[name] = (folder / file, STUDY_EVENTS[name][1])
    first = "data_cr"
    for name, (file, key) in sources.items():
        if study[name].shape[1] != study[first].shape[1]:
            ref_file, ref_key = sources[first]
            raise DataFileError(
                f"{file} key '{key}' has {study[name].shape[1]} columns but {ref_file} key '{ref_key}' has "
                f"{study[first].shape[1]}; every file of one study holds the same columns (context, then "
                f"features). Use files made together. {SEED_HINT}"
            )
    return study
