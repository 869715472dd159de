"""Time series for the SDE-GAN: made Ornstein–Uhlenbeck paths, windows of a CSV, Geolife GPS windows.

Every split is an :class:`ArrayDictDataset` of float32 tensors (M paths of T observations, C channels):

* ``times`` (M, T): observation times in the datamodule's time unit, finite, strictly increasing
  in a row, starting at 0;
* ``values`` (M, T, C): observations in physical units (after the optional transform), NaN where
  missing (never filled with 0);
* ``path`` (M, T, 1 + C): ``cat([times[..., None], fill_missing(times, values)], -1)``, the
  control of the neural-CDE discriminator, computed once per split in ``build_dataset``.

After ``__init__`` (LightningCLI links them into the model at instantiation) each datamodule has
``channels`` (C), ``t_size`` (T), ``channel_names``, ``units`` (one per channel) and
``time_step`` (the physical duration of one time unit: 1 for OU, an hour for hourly rows, ...).
Normalisation is the model's (fitted on :meth:`training_sample`, saved with the weights).

A path with a channel that has no observation at all cannot be interpolated (torchcde makes it a
constant 0, a value the data never had, and the discriminator starts from it): the made OU data
keep one value per path, and CSV and trajectory windows without any value of a channel are
skipped (counted in ``skipped_windows``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.base import ArrayDictDataset, HepDataModule, _already_batched
from datamodules.splits import SPLITS, split_indices
from hepgen.errors import ConfigValueError
from hepgen.io import DataFileError
from hepgen.io.timeseries import (
    EARTH_RADIUS_M, csv_first_row, fill_missing, is_number, read_csv_columns, read_plt, resolve_columns,
    transform_series,
)  # fmt: skip


# ------------------------------------------------------------------------------ shared helpers
def filled_path(times: torch.Tensor, values: torch.Tensor, where: str) -> torch.Tensor:
    """The critic's control (M, T, 1 + C) = (time, values with NaN filled by :func:`fill_missing`).

    Raises:
        DataFileError: a path has no observation in some channel (names ``where``, the path and the channel).
    """
    t, v = times.numpy(), values.numpy()
    empty = np.isnan(v).all(axis=1)
    if empty.any():
        n, c = np.argwhere(empty)[0]
        raise DataFileError(
            f"{where}: path {n} has no observed value in channel {c}; it cannot be interpolated. "
            "Drop such paths (or windows) before building the dataset."
        )
    return torch.cat([times.unsqueeze(-1), torch.from_numpy(fill_missing(v, t))], dim=-1)


def check_series(times: np.ndarray, values: np.ndarray, where: str) -> None:
    """Raise a one-line error for NaN/inf or non-increasing ``times`` (M, T), inf in ``values`` (M, T, C)."""
    if not np.all(np.isfinite(times)):
        raise DataFileError(f"{where}: the observation times hold NaN or inf; every observation needs a finite time.")
    if times.shape[1] > 1 and not np.all(np.diff(times, axis=1) > 0):
        raise DataFileError(f"{where}: the observation times do not increase within a path.")
    if np.any(np.isinf(values)):
        raise DataFileError(f"{where}: the values hold inf; write missing values as empty or NA, not inf.")


def _check_window(window: int, stride: int, option: str = "window") -> None:
    if window < 2:
        raise ConfigValueError(f"{option}={window}: a path needs at least 2 observations (T >= 2).")
    if stride < 1:
        raise ConfigValueError(f"stride={stride}: choose a stride >= 1 (rows or fixes between window starts).")


def _windows(n: int, window: int, stride: int) -> np.ndarray:
    """(M, window) row indices of the windows of a series of n rows, starting every ``stride`` rows."""
    starts = np.arange(0, max(n - window + 1, 0), stride)
    return starts[:, None] + np.arange(window)


def _observed_in_every_channel(values: np.ndarray) -> np.ndarray:
    """(M,) bool: the window (M, T, C) has at least one value in each channel."""
    return np.all(np.any(~np.isnan(values), axis=1), axis=1)


class _TimeSeriesDataModule(HepDataModule):
    """Shared plumbing: ``times``/``values`` events, ``path`` per split, the test split for predict."""

    channels: int
    t_size: int
    channel_names: list[str]
    units: list[str]
    time_step: float = 1.0

    def _series_events(self, times: np.ndarray, values: np.ndarray, where: str) -> dict[str, torch.Tensor]:
        check_series(times, values, where)
        return {
            "times": torch.from_numpy(np.ascontiguousarray(times, dtype=np.float32)),
            "values": torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)),
        }

    def build_dataset(self, split: str, indices: np.ndarray) -> ArrayDictDataset:
        idx = torch.as_tensor(indices)
        times, values = self.all_events()["times"][idx], self.all_events()["values"][idx]
        path = filled_path(times, values, f"{self.data_dir} ({split})")
        return ArrayDictDataset({"times": times, "values": values, "path": path})

    def predict_dataloader(self) -> DataLoader:
        """The test split: its times (and observed paths) are what predict generates paths for."""
        self.setup("fit")
        return DataLoader(self.datasets["test"], batch_size=self.batch_size, collate_fn=_already_batched)


def _check_requested(parts: dict[str, np.ndarray], fractions: dict[str, float], where: str) -> dict[str, np.ndarray]:
    """Return ``parts``; raise if a split with a fraction > 0 holds no window."""
    for name, idx in parts.items():
        if fractions[name] > 0 and len(idx) == 0:
            raise DataFileError(
                f"{where}: the '{name}' split has no window (windows are skipped for a channel without values "
                "or for gaps). Use a larger fraction, a shorter window or other columns."
            )
    return parts


def _time_splits(counts: dict[str, int], fractions: dict[str, float], where: str) -> dict[str, np.ndarray]:
    """Contiguous index ranges of events stored split after split, in the order of ``counts``."""
    starts = np.cumsum([0, *counts.values()])
    parts = {name: np.arange(starts[k], starts[k + 1]) for k, name in enumerate(counts)}
    return _check_requested(parts, fractions, where)


# ------------------------------------------------------------------------------ OU
class OUDataModule(_TimeSeriesDataModule):
    """Made time-dependent Ornstein–Uhlenbeck paths (the SDE-GAN reference's data): nothing on disk.

    dY = (mu t - theta Y) dt + sigma (2t/T) dW (Itô), Y_0 ~ U(-1, 1), observed at
    ``times`` = 0, 1, ..., T-1 (T = ``t_size``), then ``drop_fraction`` of all values set to NaN
    (:func:`hepgen.synth.ou.simulate_ou`; exact moments in :func:`hepgen.synth.ou.ou_moments`).
    ``values`` (M, T, 1) are dimensionless. Paths are independent, so the splits are the default
    seeded permutation; 10240 paths with val/test fractions 0.1 leave the reference's 8192 for training.

    Args:
        t_size: observations per path (T).
        sim_dt: simulation step (each step is the exact Gaussian transition).
        drop_fraction: fraction of all values set to NaN (every path keeps at least one).
        mu, theta, sigma: the SDE's parameters (the reference's by default).
        **kwargs: see :class:`HepDataModule`; ``made_events`` is the number of paths, ``made_seed`` their seed.
    """

    def __init__(
        self,
        data_dir: str = "data/ou",
        t_size: int = 64,
        sim_dt: float = 0.1,
        drop_fraction: float = 0.3,
        mu: float = 0.02,
        theta: float = 0.1,
        sigma: float = 0.4,
        source: str = "made",
        made_events: int = 10_240,
        batch_size: int = 1024,
        **kwargs,
    ) -> None:
        if source == "real":
            raise ConfigValueError("OUDataModule: source=real, but OU paths have no published file; use source: made.")
        super().__init__(data_dir=data_dir, source=source, made_events=made_events, batch_size=batch_size, **kwargs)
        _check_window(t_size, 1, "t_size")
        if not 0.0 <= drop_fraction <= 1.0 - 1.0 / t_size:
            raise ConfigValueError(
                f"drop_fraction={drop_fraction}: choose it in [0, 1 - 1/t_size] (every path keeps a value)."
            )
        if not 0.0 < sim_dt <= 1.0:
            raise ConfigValueError(f"sim_dt={sim_dt}: choose a step in (0, 1].")
        self.t_size, self.sim_dt, self.drop_fraction = t_size, sim_dt, drop_fraction
        self.mu, self.theta, self.sigma = mu, theta, sigma
        self.channels, self.channel_names, self.units = 1, ["y"], [""]

    def required_files(self) -> list[Path]:
        return []

    def prepare_data(self) -> None:
        """Nothing to read or write (and no lock folder to create): the paths are simulated in setup."""

    def load_events(self) -> dict[str, torch.Tensor]:
        from hepgen.synth.ou import simulate_ou

        y = simulate_ou(
            self.made_events, self.t_size, self.made_seed, self.sim_dt, self.drop_fraction,
            self.mu, self.theta, self.sigma,
        )  # fmt: skip
        times = np.broadcast_to(np.arange(self.t_size, dtype=np.float32), y.shape)
        return self._series_events(times, y[..., None], "OUDataModule")


class CSVSeriesDataModule(_TimeSeriesDataModule):
    """Windows of ``window`` consecutive rows of a CSV of columns, split by time.

    The first ``1 - val_fraction - test_fraction`` of the rows train, the next ``val_fraction``
    validate, the last ``test_fraction`` test; windows (every ``stride`` rows) are cut inside each
    part, so none crosses a split boundary and the model is validated on the future. ``times`` are
    row numbers 0..T-1 within the window (one row = ``time_step`` in physical time). ``values``
    (M, T, C) in the file's units (after ``transform``), NaN where a field is missing. Windows in
    which a selected column has no value are skipped (``skipped_windows`` counts them per split);
    ``window_starts[split]`` holds the first row of each window (rows of the transformed series).

    Args:
        file: the CSV (relative to ``data_dir`` unless absolute). ``source: made`` writes a made
            hourly air-quality series there (:mod:`hepgen.synth.series`) if absent.
        columns: names or 0-based indices of the columns (all when ``None``).
        header: whether the first row names the columns (``None``: detect, a non-numeric field).
        delimiter: the field separator.
        window: rows per path (T).
        stride: rows between the starts of consecutive windows.
        transform: ``none``, ``log_return`` (prices; values must be > 0) or ``difference``.
        time_step: physical duration of one row (for plots and metrics; ``times`` stay row numbers).
        units: one unit per column (default: the air-quality units for their column names, else "").
        **kwargs: see :class:`HepDataModule`; ``made_events`` is the number of made rows (hours).
    """

    download_hint = (
        "Point `file` at your CSV (the UCI Beijing air-quality file is in ../shared/data/timeseries/), "
        "or set `source: made` to write a made air-quality series there."
    )

    def __init__(
        self,
        data_dir: str = "data/timeseries",
        file: str = "air_quality.csv",
        columns: list[str | int] | None = None,
        header: bool | None = None,
        delimiter: str = ",",
        window: int = 64,
        stride: int = 16,
        transform: Literal["none", "log_return", "difference"] = "none",
        time_step: float = 1.0,
        units: list[str] | None = None,
        made_events: int = 17_520,
        **kwargs,
    ) -> None:
        super().__init__(data_dir=data_dir, made_events=made_events, **kwargs)
        from hepgen.synth.series import AIR_QUALITY_COLUMNS, AIR_QUALITY_UNITS

        _check_window(window, stride)
        if transform not in ("none", "log_return", "difference"):
            raise ConfigValueError(f"transform={transform!r}: choose 'none', 'log_return' or 'difference'.")
        if len(delimiter) != 1:
            raise ConfigValueError(f"delimiter={delimiter!r}: give a single character.")
        self.file = Path(file) if Path(file).is_absolute() else self.data_dir / file
        self.columns, self.header, self.delimiter = columns, header, delimiter
        self.window, self.stride, self.transform, self.time_step = window, stride, transform, time_step
        # the channel names are needed now (the CLI links them into the model): read the first row
        if self.file.is_file():
            first = csv_first_row(self.file, delimiter)
            if first is None:
                raise DataFileError(f"{self.file}: no data rows (the file is empty).")
            self._has_header = (not all(is_number(f) for f in first)) if header is None else header
        elif self.source == "made":
            first, self._has_header = list(AIR_QUALITY_COLUMNS), header is not False
        else:
            raise DataFileError(f"data file not found: {self.file}. {self.download_hint}")
        _, self.channel_names = resolve_columns(self.file, first, self._has_header, columns)
        self.channels, self.t_size = len(self.channel_names), window
        if units is not None and len(units) != self.channels:
            raise ConfigValueError(f"units: {len(units)} given for {self.channels} columns {self.channel_names}.")
        default = ["" if transform == "log_return" else AIR_QUALITY_UNITS.get(n, "") for n in self.channel_names]
        self.units = list(units) if units is not None else default
        self.window_starts: dict[str, np.ndarray] = {}
        self.skipped_windows: dict[str, int] = {}

    # --- files ----------------------------------------------------------------------------
    def required_files(self) -> list[Path]:
        return [self.file]

    def make_files(self, missing: list[Path]) -> None:
        from hepgen.synth.series import make_csv_series

        make_csv_series(self.file.parent, events=self.made_events, seed=self.made_seed, name=self.file.name)

    def check_made_file(self, path: Path) -> None:
        from hepgen.synth.series import made_record_path

        record = made_record_path(path)
        made = json.loads(record.read_text()) if record.is_file() else {}
        if made.get("hepgen_made") != "csv_series":
            raise DataFileError(
                f"{path} is not hepgen-made data (no {record.name} beside it) but the config says `source: made`; "
                "hepgen will not overwrite it. Set `source: real` to use it, or choose another file."
            )
        if (made.get("rows"), made.get("seed")) != (self.made_events, self.made_seed):
            raise DataFileError(
                f"{path} holds made data with (rows, seed) = ({made.get('rows')}, {made.get('seed')}) but the config "
                f"asks for ({self.made_events}, {self.made_seed}) (made_events, made_seed). Delete it and "
                f"{record.name} to remake it."
            )

    # --- reading --------------------------------------------------------------------------
    def _fractions(self) -> dict[str, float]:
        train = 1.0 - self.val_fraction - self.test_fraction
        return {"train": train, "val": self.val_fraction, "test": self.test_fraction}

    def load_events(self) -> dict[str, torch.Tensor]:
        names, values, lines = read_csv_columns(self.file, self.columns, self._has_header, self.delimiter)
        values, lines = transform_series(values, lines, names, self.transform, str(self.file))
        fractions = self._fractions()
        if fractions["train"] <= 0:
            raise ConfigValueError(
                f"val_fraction + test_fraction = {1 - fractions['train']:g} leaves no rows of {self.file} to train on."
            )
        n = len(values)
        n_val, n_test = int(round(n * self.val_fraction)), int(round(n * self.test_fraction))
        bounds = {"train": (0, n - n_val - n_test), "val": (n - n_val - n_test, n - n_test), "test": (n - n_test, n)}
        times, windows, self._counts = [], [], {}
        for split, (lo, hi) in bounds.items():
            if fractions[split] > 0 and hi - lo < self.window:
                where = f"lines {lines[lo]}-{lines[hi - 1]}" if hi > lo else "no rows"
                raise ConfigValueError(
                    f"{self.file}: the '{split}' split has {hi - lo} rows ({where}), fewer than window={self.window}. "
                    "Use a shorter window or a larger fraction."
                )
            rows = lo + _windows(hi - lo, self.window, self.stride)
            part = values[rows]
            keep = _observed_in_every_channel(part)
            self.window_starts[split], self.skipped_windows[split] = rows[keep, 0], int((~keep).sum())
            self._counts[split] = int(keep.sum())
            windows.append(part[keep])
            times.append(np.broadcast_to(np.arange(self.window, dtype=np.float32), (int(keep.sum()), self.window)))
        return self._series_events(np.concatenate(times), np.concatenate(windows), str(self.file))

    def splits(self, n_events: int) -> dict[str, np.ndarray]:
        return _time_splits(self._counts, self._fractions(), str(self.file))


# ------------------------------------------------------------------------------ Geolife
GEOLIFE_HINT = (
    "Download Geolife Trajectories 1.3 (Microsoft Research 'GPS Trajectories', download id 52367) and set data_dir "
    "to the folder holding Data/<user>/Trajectory/*.plt, or set `source: made`."
)
class TrajectoryDataModule(_TimeSeriesDataModule):
    """Windows of ``window`` consecutive GPS fixes of Geolife trajectories, with their real timestamps.

    Reads ``<data_dir>/Data/<user>/Trajectory/*.plt`` (Geolife 1.3). Per trajectory, fixes whose
    time does not increase over the previous one are dropped, then windows start every ``stride``
    fixes; a window with a gap over ``max_gap_s`` between fixes, or without any valid altitude when
    ``altitude`` is a field, is skipped. ``times`` (M, T) = seconds since the window's first fix /
    ``time_unit_s`` (irregular). ``values`` (M, T, C), C = len(fields):

    * ``coordinates: displacement``: x, y in metres east and north of the window's first fix
      (local equirectangular: x = R cos(lat0) Δlon, y = R Δlat, R = 6371 km);
    * ``coordinates: absolute``: x = longitude, y = latitude in degrees;
    * ``altitude``: metres above sea level (NaN where the file says -777 ft).

    Splits: a seeded permutation of the trajectory files (val/test fractions of the files), so the
    windows of one trajectory are all in one split. ``window_files`` holds each window's file index
    (into ``files``).

    Args:
        fields: the channels, a subset of ``x``, ``y``, ``altitude`` (named ``fields`` because
            ``channels`` is their number, which the model reads).
        coordinates: ``displacement`` or ``absolute`` (see above).
        window: fixes per window (T).
        stride: fixes between window starts.
        time_unit_s: seconds per model time unit.
        max_gap_s: skip windows with a longer gap between consecutive fixes (seconds).
        users: user folders to read (all when ``None``).
        **kwargs: see :class:`HepDataModule`; ``made_events`` is the number of made trajectories.
    """

    download_hint = GEOLIFE_HINT

    def __init__(
        self,
        data_dir: str = "data/geolife",
        fields: list[Literal["x", "y", "altitude"]] = ["x", "y"],  # noqa: B006 (jsonargparse needs a literal default)
        coordinates: Literal["displacement", "absolute"] = "displacement",
        window: int = 64,
        stride: int = 32,
        time_unit_s: float = 5.0,
        max_gap_s: float = 60.0,
        users: list[str] | None = None,
        made_events: int = 100,
        **kwargs,
    ) -> None:
        super().__init__(data_dir=data_dir, made_events=made_events, **kwargs)
        _check_window(window, stride)
        unknown = [f for f in fields if f not in ("x", "y", "altitude")]
        if unknown or not fields or len(set(fields)) != len(fields):
            raise ConfigValueError(f"fields={list(fields)}: choose distinct fields among 'x', 'y', 'altitude'.")
        if coordinates not in ("displacement", "absolute"):
            raise ConfigValueError(f"coordinates={coordinates!r}: choose 'displacement' or 'absolute'.")
        if time_unit_s <= 0 or max_gap_s <= 0:
            raise ConfigValueError(f"time_unit_s={time_unit_s}, max_gap_s={max_gap_s}: both must be > 0 seconds.")
        self.fields, self.coordinates = list(fields), coordinates
        self.window, self.stride, self.time_unit_s, self.max_gap_s = window, stride, time_unit_s, max_gap_s
        self.users = None if users is None else [str(u) for u in users]
        self.channels, self.t_size, self.time_step = len(self.fields), window, time_unit_s
        self.channel_names = list(self.fields)
        planar = "m" if coordinates == "displacement" else "°"
        self.units = ["m" if f == "altitude" else planar for f in self.fields]
        self.files: list[Path] = []
        self.skipped_windows: dict[str, int] = {}

    # --- files ----------------------------------------------------------------------------
    def _record(self) -> Path:
        from hepgen.synth.series import GEOLIFE_RECORD

        return self.data_dir / GEOLIFE_RECORD

    def trajectory_files(self) -> list[Path]:
        """The ``.plt`` files of the selected users, sorted (user, then start time)."""
        root = self.data_dir / "Data"
        if not root.is_dir():
            raise DataFileError(f"{root}: no Geolife folder (Data/<user>/Trajectory/*.plt). {GEOLIFE_HINT}")
        if self.users is not None:
            absent = [u for u in self.users if not (root / u / "Trajectory").is_dir()]
            if absent:
                raise DataFileError(f"{root}: no folder {absent[0]}/Trajectory for users={self.users}.")
        users = self.users if self.users is not None else sorted(p.name for p in root.iterdir() if p.is_dir())
        files = [f for u in users for f in sorted((root / u / "Trajectory").glob("*.plt"))]
        if not files:
            raise DataFileError(f"{root}: no .plt files under <user>/Trajectory/. {GEOLIFE_HINT}")
        return files

    def required_files(self) -> list[Path]:
        # made data are complete once their record is written (last); real data are the .plt files
        return [self._record()] if self.source == "made" else self.trajectory_files()

    def make_files(self, missing: list[Path]) -> None:
        from hepgen.synth.series import make_geolife

        if any((self.data_dir / "Data").glob("*/Trajectory/*.plt")):
            raise DataFileError(
                f"{self.data_dir} holds .plt files but no {self._record().name}: not hepgen-made data (or an "
                "interrupted make); hepgen will not write into it. Set `source: real` to use it, or delete it / "
                "choose another data_dir."
            )
        make_geolife(self.data_dir, events=self.made_events, seed=self.made_seed, progress=False)

    def check_made_file(self, path: Path) -> None:
        try:
            made = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise DataFileError(
                f"{path} is not a readable hepgen record ({err}); delete the folder to remake it."
            ) from err
        made_as = (made.get("hepgen_made"), made.get("trajectories"), made.get("seed"))
        if made_as != ("geolife", self.made_events, self.made_seed):
            raise DataFileError(
                f"{path} records made Geolife data with (trajectories, seed) = {made_as[1:]} but the config asks for "
                f"({self.made_events}, {self.made_seed}) (made_events, made_seed). Delete {self.data_dir} to remake it."
            )

    # --- reading --------------------------------------------------------------------------
    def _trajectory_windows(self, track: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
        """(M, T) times, (M, T, C) values of one trajectory's windows, and how many were skipped."""
        seconds = track["seconds"]
        keep = np.ones(len(seconds), dtype=bool)
        keep[1:] = seconds[1:] > np.maximum.accumulate(seconds)[:-1]  # drop repeated or backward timestamps
        track = {k: v[keep] for k, v in track.items()}
        rows = _windows(len(track["seconds"]), self.window, self.stride)
        seconds = track["seconds"][rows].astype(np.float64)
        seconds -= seconds[:, :1]
        ok = np.all(np.diff(seconds, axis=1) <= self.max_gap_s, axis=1)
        lat, lon = track["lat"][rows], track["lon"][rows]
        if self.coordinates == "displacement":
            lat0, lon0 = lat[:, :1], lon[:, :1]
            x = EARTH_RADIUS_M * np.cos(np.radians(lat0)) * np.radians(lon - lon0)
            y = EARTH_RADIUS_M * np.radians(lat - lat0)
        else:
            x, y = lon, lat
        columns = {"x": x, "y": y, "altitude": track["altitude"][rows]}
        values = np.stack([columns[f] for f in self.fields], axis=-1)
        ok &= _observed_in_every_channel(values)
        return seconds[ok] / self.time_unit_s, values[ok], int((~ok).sum())

    def load_events(self) -> dict[str, torch.Tensor]:
        self.files = self.trajectory_files()
        times, values, file_of, self._skipped = [], [], [], []
        for k, path in enumerate(self.files):
            t, v, skipped = self._trajectory_windows(read_plt(path))
            times.append(t)
            values.append(v)
            file_of.append(np.full(len(t), k))
            self._skipped.append(skipped)
        self.window_files = np.concatenate(file_of)
        if len(self.window_files) == 0:
            raise DataFileError(
                f"{self.data_dir}: no window of {self.window} fixes without a gap over max_gap_s={self.max_gap_s} s "
                f"in {len(self.files)} trajectories. Use a shorter window or a larger max_gap_s."
            )
        return self._series_events(np.concatenate(times), np.concatenate(values), str(self.data_dir))

    def splits(self, n_events: int) -> dict[str, np.ndarray]:
        where = f"{self.data_dir} ({len(self.files)} trajectory files)"
        by_file = split_indices(len(self.files), self.val_fraction, self.test_fraction, self.split_seed, where)
        parts = {name: np.flatnonzero(np.isin(self.window_files, by_file[name])) for name in SPLITS}
        skipped = np.asarray(self._skipped)
        self.skipped_windows = {name: int(skipped[by_file[name]].sum()) for name in SPLITS}
        fractions = {"train": 1.0, "val": self.val_fraction, "test": self.test_fraction}
        return _check_requested(parts, fractions, where)
