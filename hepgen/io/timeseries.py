"""Time-series files: numeric CSV columns, Geolife ``.plt`` GPS tracks, and missing values.

A missing observation is NaN everywhere in hepgen, and only :func:`interpolate_missing` (torch) and
:func:`fill_missing` (numpy, through it) fill it, the way torchcde interpolates a path: linearly in
time between observed neighbours, held constant before the first and after the last observation.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from hepgen.errors import ConfigValueError
from hepgen.io.errors import DataFileError

#: Fields read as a missing value (after stripping blanks).
MISSING_TOKENS = ("", "NA", "NaN", "nan", "null")
_MISSING = frozenset(MISSING_TOKENS)


def interpolate_missing(values: torch.Tensor, missing: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """``values`` (N, T, C) with the entries at ``missing`` (N, T, C) bool replaced as torchcde fills NaN.

    A missing entry lies on the straight line, in ``times`` (N, T), between its observed
    neighbours; before the first observation it takes the first observed value, after the last the
    last. Where a channel of a path has no observation at all, the entries stay as they were (NaN
    in data). Differentiable in the observed entries: a generated path observed like a real one
    passes the critic's gradient back to the values that were kept.
    """
    length = values.shape[1]
    index = torch.arange(length, device=values.device).view(1, length, 1).expand_as(values)
    observed = ~missing
    prev = torch.where(observed, index, -1).cummax(dim=1).values
    nxt = torch.where(observed, index, length).flip(1).cummin(dim=1).values.flip(1)
    interior = missing & (prev >= 0) & (nxt < length)  # an observed entry is its own neighbour: 0/0
    # leading gaps have no previous observation: take the first one (the next); trailing: the last
    prev = torch.where(prev < 0, nxt, prev).clamp_max(length - 1)
    nxt = torch.where(nxt >= length, prev, nxt).clamp_max(length - 1)
    t = times.unsqueeze(-1).expand_as(values)
    v_prev, v_next = values.gather(1, prev), values.gather(1, nxt)
    t_prev, t_next = t.gather(1, prev), t.gather(1, nxt)
    # torchcde's order of operations (float32 results identical); off the interior the ratio is 0,
    # not 0/0, so no NaN reaches the gradient through a branch that torch.where discards
    gap = torch.where(interior, t_next - t_prev, torch.ones_like(t))
    ratio = torch.where(interior, (t - t_prev) / gap, torch.zeros_like(t))
    filled = v_prev + ratio * (v_next - v_prev)
    never = ~observed.any(dim=1, keepdim=True)
    return torch.where(missing & ~never, filled, values)


def fill_missing(values: np.ndarray, times: np.ndarray | None = None, chunk: int = 4096) -> np.ndarray:
    """Fill the NaNs of ``values`` (N, T, C) by linear interpolation in ``times`` (N, T): (N, T, C).

    The result equals ``torchcde.linear_interpolation_coeffs(values[n], t=times[n])`` for every
    path n (leading NaNs take the first observed value, trailing NaNs the last, the others lie on
    the straight line between their observed neighbours at their own time), for all paths at
    once; ``times`` default to 0..T-1, where it equals torchcde's default call. With irregular
    times torchcde's default interpolates in the sample index instead, which puts a filled point
    off the segment between its neighbours in (t, x); interpolating in time keeps the path a
    reparametrisation of the observed one, so a missing value does not move a CDE's output.
    A channel never observed in a path stays NaN (torchcde would make it 0, a value the data
    never had): callers drop such paths or refuse them. (:func:`interpolate_missing` on chunks.)
    """
    values = np.asarray(values)
    if times is None:
        times = np.broadcast_to(np.arange(values.shape[1], dtype=values.dtype), values.shape[:2])
    times = np.asarray(times, dtype=values.dtype)
    out = values.copy()
    for lo in range(0, len(values), chunk):  # bounded memory: a few int64 indices per value
        v = torch.from_numpy(np.ascontiguousarray(values[lo : lo + chunk]))
        missing = torch.isnan(v)
        if missing.any():
            t = torch.from_numpy(np.ascontiguousarray(times[lo : lo + chunk]))
            out[lo : lo + chunk] = interpolate_missing(v, missing, t).numpy()
    return out


# ------------------------------------------------------------------------------ CSV
def is_number(field: str) -> bool:
    field = field.strip()
    if field in MISSING_TOKENS:
        return True
    try:
        float(field)
    except ValueError:
        return False
    return True


def csv_first_row(path: Path, delimiter: str) -> list[str] | None:
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        for row in csv.reader(f, delimiter=delimiter):
            if row and (len(row) > 1 or row[0].strip()):
                return row
    return None


def resolve_columns(
    path: Path, first: list[str], has_header: bool, columns: list[str | int] | None
) -> tuple[list[int], list[str]]:
    """Indices and names of the selected columns, from the first row of the file."""
    names = [f.strip() for f in first] if has_header else [f"col{j}" for j in range(len(first))]
    if columns is None:
        return list(range(len(first))), names
    indices = []
    for column in columns:
        if isinstance(column, int) and not isinstance(column, bool):
            if not 0 <= column < len(first):
                raise ConfigValueError(
                    f"columns: index {column} is out of range for {path}, which has {len(first)} columns (0-based)."
                )
            indices.append(column)
        elif not has_header:
            raise ConfigValueError(
                f"columns: {column!r} is a name, but {path} has no header row; give 0-based indices."
            )
        elif column.strip() not in names:
            raise ConfigValueError(f"columns: no column {column!r} in {path} (its header: {', '.join(names)}).")
        else:
            indices.append(names.index(column.strip()))
    return indices, [names[j] for j in indices]


def read_csv_columns(
    path: str | Path, columns: list[str | int] | None = None, header: bool | None = None, delimiter: str = ","
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Read numeric columns of a CSV.

    Returns:
        ``names`` (C,), ``values`` (R, C) float64 with NaN for a missing field
        (:data:`MISSING_TOKENS`), and ``lines`` (R,) the 1-based line number of each row in the file.
        ``header=None`` detects a header: the first row has a field that is not a number.

    Raises:
        DataFileError: missing file, no data rows, a row with another number of fields, a
            non-numeric or infinite value, or a selected column without any value.
        ConfigValueError: an unknown column name or index.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"data file not found: {path}.")
    first = csv_first_row(path, delimiter)
    if first is None:
        raise DataFileError(f"{path}: no data rows (the file is empty).")
    has_header = (not all(is_number(f) for f in first)) if header is None else header
    indices, names = resolve_columns(path, first, has_header, columns)
    rows, lines = [], []
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f, delimiter=delimiter)
        for row in reader:
            if row and (len(row) > 1 or row[0].strip()):  # skip blank lines
                rows.append(row)
                lines.append(reader.line_num)
    if has_header:
        rows, lines = rows[1:], lines[1:]
    if not rows:
        raise DataFileError(f"{path}: no data rows (only a header).")
    for row, line in zip(rows, lines):
        if len(row) != len(first):
            raise DataFileError(
                f"{path}, line {line}: {len(row)} fields, but the first row has {len(first)} (delimiter {delimiter!r})."
            )
    lines = np.asarray(lines, dtype=np.int64)
    values = np.empty((len(rows), len(indices)))
    by_column = list(zip(*rows))
    for c, (j, name) in enumerate(zip(indices, names)):
        try:  # Python's float is faster here than numpy's string conversion
            values[:, c] = [np.nan if x.strip() in _MISSING else float(x) for x in by_column[j]]
        except ValueError:
            bad = next(k for k, x in enumerate(by_column[j]) if not is_number(x))
            raise DataFileError(
                f"{path}, line {lines[bad]}, column {name!r}: {by_column[j][bad].strip()!r} is not a number "
                f"(a missing value may be one of {', '.join(repr(t) for t in MISSING_TOKENS)})."
            ) from None
        infinite = np.flatnonzero(np.isinf(values[:, c]))
        if len(infinite):
            raise DataFileError(
                f"{path}, line {lines[infinite[0]]}, column {name!r}: an infinite value; write a missing value as NA."
            )
        if np.all(np.isnan(values[:, c])):
            raise DataFileError(f"{path}, column {name!r}: every value is missing; leave the column out (columns:).")
    return names, values, lines


def transform_series(
    values: np.ndarray, lines: np.ndarray, names: list[str], transform: str, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``none``, ``log_return`` (log x_t - log x_{t-1}) or ``difference`` (x_t - x_{t-1}) per
    column; the last two return one row fewer (and the lines of the rows they end on). NaN in, NaN out."""
    if transform == "none":
        return values, lines
    if transform == "log_return":
        bad = np.argwhere(values <= 0)  # NaN compares False
        if len(bad):
            r, c = bad[0]
            raise DataFileError(
                f"{where}, line {lines[r]}, column {names[c]!r}: value {values[r, c]:g} <= 0 has no log-return; "
                "use transform: difference (or none) for this column."
            )
        return np.diff(np.log(values), axis=0), lines[1:]
    return np.diff(values, axis=0), lines[1:]



# ------------------------------------------------------------------------------ Geolife
EARTH_RADIUS_M = 6_371_000.0
FEET_TO_M = 0.3048
INVALID_ALTITUDE_FT = -777.0


def read_plt(path: str | Path) -> dict[str, np.ndarray]:
    """One Geolife ``.plt`` file -> ``seconds`` (n,) int64 Unix time (from the GMT date and time),
    ``lat``/``lon`` (n,) degrees, ``altitude`` (n,) metres with NaN for the invalid -777 ft.

    Raises:
        DataFileError: fewer than 6 header lines, or a malformed record (names the file and line).
    """
    path = Path(path)
    lines = path.read_text(errors="replace").splitlines()
    if len(lines) < 6:
        raise DataFileError(f"{path}: a Geolife .plt file starts with 6 header lines; this one has {len(lines)} lines.")
    numbered = [(k + 7, line) for k, line in enumerate(lines[6:]) if line.strip()]
    records = [line.split(",") for _, line in numbered]

    def malformed(i: int) -> DataFileError:
        line_no, line = numbered[i]
        return DataFileError(
            f"{path}, line {line_no}: {line.strip()!r} is not a Geolife record "
            "(lat,lon,0,altitude_ft,days,YYYY-MM-DD,HH:MM:SS)."
        )

    for i, record in enumerate(records):
        if len(record) != 7:
            raise malformed(i)
    if not records:
        return {k: np.empty(0) for k in ("lat", "lon", "altitude")} | {"seconds": np.empty(0, dtype=np.int64)}
    fields = np.char.strip(np.array(records))
    try:
        lat, lon, alt = (fields[:, j].astype(np.float64) for j in (0, 1, 3))
        stamps = np.char.add(np.char.add(fields[:, 5], "T"), fields[:, 6]).astype("datetime64[s]")
    except ValueError:
        for i, record in enumerate(fields):
            try:
                [float(record[j]) for j in (0, 1, 3)]
                np.datetime64(f"{record[5]}T{record[6]}", "s")
            except ValueError:
                raise malformed(i) from None
        raise
    bad = np.flatnonzero(~(np.abs(lat) <= 90) | ~(np.abs(lon) <= 180) | ~np.isfinite(alt))
    if len(bad):
        raise malformed(int(bad[0]))
    altitude = np.where(alt == INVALID_ALTITUDE_FT, np.nan, alt * FEET_TO_M)
    return {"seconds": stamps.astype(np.int64), "lat": lat, "lon": lon, "altitude": altitude}
