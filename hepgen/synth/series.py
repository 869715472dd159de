"""Made time series in two real layouts: an hourly air-quality CSV and Geolife GPS ``.plt`` files.

Air quality (:func:`simulate_air_quality`, :func:`make_csv_series`)
-------------------------------------------------------------------
The columns, units and layout of the UCI Beijing multi-site air-quality files as hepgen reads
them (header ``PM2.5,PM10,SO2,NO2,CO,O3,TEMP,PRES,DEWP,RAIN,WSPM``, comma-separated, ``NA``
for a missing value, one row per hour). Row r is hour r after 1 March 00:00. Known truth, with
``c = cos(2 pi (doy - 15) / 365.25)`` (+1 in mid-January, -1 in mid-July),
``d(h0) = cos(2 pi (hour - h0) / 24)`` (peaks at hour h0) and ε independent N(0, 1) per row:

* a latent hourly AR(1) z_t = 0.97 z_{t-1} + sqrt(1 - 0.97²) L ε_t with unit variance and
  correlations corr(z_pol, z_met) = 0.3, corr(z_pol, z_wind) = -0.5 (wind clears the air);
* TEMP = 13 - 15 c + 5 d(15) + 3 z_met °C;
  DEWP = TEMP - (4 + (8 + 5 c)(1 + 0.25 (1 + d(15)))) °C (always below TEMP, by most in dry winter afternoons);
  PRES = 1012 + 10 c - 3 z_met + d(10) hPa;
* PM2.5 = exp(4.0 + 0.4 c + 0.15 d(22) + 0.9 z_pol) µg/m³ (median 55, smoggy winters);
  PM10 = PM2.5 exp(0.3 + 0.2 ε); SO2 = exp(2.3 + 0.9 c + 0.6 z_pol + 0.3 ε);
  NO2 = exp(3.8 + 0.2 c + 0.2 d(20) + 0.5 z_pol + 0.2 ε); CO = exp(7.0 + 0.4 c + 0.8 z_pol + 0.2 ε);
  O3 = exp(3.5 - 0.6 c + 0.8 d(15) - 0.3 z_pol + 0.3 ε) (sunny summer afternoons);
* RAIN = Exp(mean 1 mm) when an AR(1) w (φ = 0.9, unit variance) exceeds 1.6 + 0.8 c, else 0;
  WSPM = exp(0.5 + 0.2 d(14) + 0.5 z_wind) m/s.

Missing values: each value independently with probability 1 %, plus outages of the six
pollutant columns together (start probability 1/1000 per hour, geometric length, mean 12 h).
Values are written with one decimal; concentrations are at least 0.1 (so log-returns exist).

Geolife (:func:`simulate_trajectory`, :func:`make_geolife`)
-----------------------------------------------------------
Geolife Trajectories 1.3 layout: ``<out>/Data/<user>/Trajectory/<YYYYMMDDhhmmss>.plt``, six
header lines, then ``lat,lon,0,altitude_ft,days_since_1899-12-30,YYYY-MM-DD,HH:MM:SS`` (GMT,
CRLF line ends). Each trajectory is one mode, walk / bike / car (mean speed 1.4 / 4 / 10 m/s,
probabilities 0.4 / 0.3 / 0.3): a correlated random walker whose log-speed is an AR(1)
(φ = 0.95, sd 0.3), whose heading diffuses (0.05 rad/√s; cars also turn by ±90° with
probability 0.003 per fix) and who stops now and then (bike and car: probability 0.005 per fix,
10-60 s). Sampling every 1, 2 or 5 s (per trajectory) with one extra second on 10 % of the fixes;
half the trajectories have a signal loss of 90-600 s. Fixes carry N(0, 3 m) GPS noise. Starts lie
N(0, 8 km) around Beijing (39.9 N, 116.4 E). Altitude is 150 ft + AR noise, −777 (invalid) on
2 % of the fixes, and on all fixes of 20 % of the trajectories, as in the real data.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from hepgen.io.files import write_atomically

AIR_QUALITY_COLUMNS = ("PM2.5", "PM10", "SO2", "NO2", "CO", "O3", "TEMP", "PRES", "DEWP", "RAIN", "WSPM")
#: Units of the air-quality columns (the UCI file's documentation).
AIR_QUALITY_UNITS = {
    **{name: "µg/m³" for name in AIR_QUALITY_COLUMNS[:6]},
    "TEMP": "°C", "PRES": "hPa", "DEWP": "°C", "RAIN": "mm", "WSPM": "m/s",
}  # fmt: skip
CSV_FILE_NAME = "air_quality.csv"

#: The six header lines every Geolife .plt file starts with.
GEOLIFE_HEADER = (
    "Geolife trajectory", "WGS 84", "Altitude is in Feet", "Reserved 3", "0,2,255,My Track,0,0,2,8421376", "0",
)  # fmt: skip
GEOLIFE_RECORD = "geolife_made.json"
#: Days from Excel's epoch 1899-12-30 (the .plt day count) to the Unix epoch.
DAYS_1899_TO_1970 = 25569.0
EARTH_RADIUS_M = 6_371_000.0
BEIJING = (39.9, 116.4)
MODES = {"walk": 1.4, "bike": 4.0, "car": 10.0}


def made_record_path(csv_path: str | Path) -> Path:
    """The record beside a made CSV: ``air_quality.csv`` -> ``air_quality.made.json``."""
    path = Path(csv_path)
    return path.with_name(f"{path.stem}.made.json")


# ------------------------------------------------------------------------------ air quality
def _ar1(rng: np.random.Generator, n: int, phi: float, dim: int = 1) -> np.ndarray:
    """(n, dim) unit-variance AR(1) with coefficient phi, started in its stationary law."""
    x = rng.standard_normal((n, dim)) * np.sqrt(1.0 - phi**2)
    x[0] /= np.sqrt(1.0 - phi**2)
    for i in range(1, n):  # (scipy.signal.lfilter would do it, but importing it takes seconds)
        x[i] += phi * x[i - 1]
    return x


def simulate_air_quality(rows: int, seed: int = 0) -> np.ndarray:
    """(rows, 11) float64 hourly series in :data:`AIR_QUALITY_COLUMNS` order, NaN where missing."""
    if rows < 1:
        raise ValueError(f"rows={rows}: need at least one row.")
    rng = np.random.default_rng(seed)
    hours = np.arange(rows, dtype=np.float64)
    doy = 59.0 + hours / 24.0  # 1 March is day 59
    c = np.cos(2 * np.pi * (doy - 15.0) / 365.25)

    def d(h0: float) -> np.ndarray:
        return np.cos(2 * np.pi * (hours % 24 - h0) / 24.0)

    corr = np.array([[1.0, 0.3, -0.5], [0.3, 1.0, 0.0], [-0.5, 0.0, 1.0]])
    z = _ar1(rng, rows, 0.97, 3) @ np.linalg.cholesky(corr).T
    z_pol, z_met, z_wind = z.T
    eps = rng.standard_normal((rows, 4))
    temp = 13.0 - 15.0 * c + 5.0 * d(15) + 3.0 * z_met
    pm25 = np.exp(4.0 + 0.4 * c + 0.15 * d(22) + 0.9 * z_pol)
    rain_on = _ar1(rng, rows, 0.9)[:, 0] > 1.6 + 0.8 * c
    out = np.stack(
        [
            pm25,
            pm25 * np.exp(0.3 + 0.2 * eps[:, 0]),
            np.exp(2.3 + 0.9 * c + 0.6 * z_pol + 0.3 * eps[:, 1]),
            np.exp(3.8 + 0.2 * c + 0.2 * d(20) + 0.5 * z_pol + 0.2 * eps[:, 2]),
            np.exp(7.0 + 0.4 * c + 0.8 * z_pol + 0.2 * eps[:, 3]),
            np.exp(3.5 - 0.6 * c + 0.8 * d(15) - 0.3 * z_pol + 0.3 * rng.standard_normal(rows)),
            temp,
            1012.0 + 10.0 * c - 3.0 * z_met + d(10),
            temp - (4.0 + (8.0 + 5.0 * c) * (1.0 + 0.25 * (1.0 + d(15)))),
            np.where(rain_on, rng.exponential(1.0, rows), 0.0),
            np.exp(0.5 + 0.2 * d(14) + 0.5 * z_wind),
        ],
        axis=1,
    )
    out = np.round(out, 1)
    out[:, :6] = np.maximum(out[:, :6], 0.1)  # the monitors' resolution: a concentration is never written as 0
    out[rng.random(out.shape) < 0.01] = np.nan
    # pollutant monitor outages: the six pollutant columns go missing together for hours
    for start in np.flatnonzero(rng.random(rows) < 1e-3):
        out[start : start + rng.geometric(1 / 12), :6] = np.nan
    return out


def write_csv_series(path: str | Path, values: np.ndarray, columns=AIR_QUALITY_COLUMNS) -> Path:
    """Write (rows, C) values as a CSV with a header row, one decimal, ``NA`` for NaN (atomically)."""
    text = io.StringIO()
    text.write(",".join(columns) + "\n")
    for row in values:
        text.write(",".join("NA" if np.isnan(v) else f"{v:.1f}" for v in row) + "\n")
    return write_atomically(path, lambda f: f.write(text.getvalue().encode()))


def make_csv_series(
    out: str | Path, events: int = 17_520, seed: int = 0, progress: bool = True, name: str = CSV_FILE_NAME
) -> list[Path]:
    """Write ``<out>/<name>`` (``events`` hourly rows) and its record ``<stem>.made.json``.

    ``progress`` is accepted for the command line and ignored (17,520 rows take about a second).

    Raises:
        FileExistsError: a target file exists (nothing is written).
    """
    path = Path(out) / name
    record = made_record_path(path)
    for target in (path, record):
        if target.exists():
            raise FileExistsError(
                f"{target} exists; hepgen never overwrites a data file. Remove it or choose another folder."
            )
    written = [write_csv_series(path, simulate_air_quality(events, seed))]
    made = {"hepgen_made": "csv_series", "rows": int(events), "seed": int(seed), "columns": list(AIR_QUALITY_COLUMNS)}
    written.append(write_atomically(record, lambda f: f.write(json.dumps(made, indent=1).encode())))
    return written


# ------------------------------------------------------------------------------ Geolife
def simulate_trajectory(rng: np.random.Generator) -> dict[str, np.ndarray | str]:
    """One made trajectory: ``seconds`` (n,) int64 Unix time, ``lat``/``lon`` (n,) degrees,
    ``altitude_ft`` (n,) with -777 invalid, and its ``mode``."""
    mode = rng.choice(list(MODES), p=[0.4, 0.3, 0.3])
    n = int(rng.integers(200, 1200))
    step = int(rng.choice([1, 2, 5]))
    dt = step + (rng.random(n - 1) < 0.1)
    if rng.random() < 0.5:  # one signal loss
        dt[rng.integers(0, n - 1)] += int(rng.integers(90, 601))
    speed = MODES[mode] * np.exp(0.3 * _ar1(rng, n - 1, 0.95)[:, 0] - 0.045)  # mean ≈ MODES[mode]
    if mode != "walk":
        for start in np.flatnonzero(rng.random(n - 1) < 0.005):
            speed[start : start + max(1, int(rng.integers(10, 61)) // step)] = 0.0
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0.0, 0.05 * np.sqrt(dt)))
    if mode == "car":
        heading += np.cumsum((rng.random(n - 1) < 0.003) * rng.choice([-np.pi / 2, np.pi / 2], n - 1))
    # a signal loss does not teleport: the walker moves on at its mean speed, for at most 60 s
    travelled = speed * np.minimum(dt, 60)
    east = np.concatenate([[0.0], np.cumsum(travelled * np.sin(heading))]) + rng.normal(0, 3.0, n)
    north = np.concatenate([[0.0], np.cumsum(travelled * np.cos(heading))]) + rng.normal(0, 3.0, n)
    lat0 = BEIJING[0] + rng.normal(0, 8000.0) / EARTH_RADIUS_M * 180 / np.pi
    lon0 = BEIJING[1] + rng.normal(0, 8000.0) / (EARTH_RADIUS_M * np.cos(np.radians(lat0))) * 180 / np.pi
    lat = lat0 + np.degrees(north / EARTH_RADIUS_M)
    lon = lon0 + np.degrees(east / (EARTH_RADIUS_M * np.cos(np.radians(lat0))))
    altitude = 150.0 + 20.0 * _ar1(rng, n, 0.99)[:, 0]
    altitude[rng.random(n) < 0.02] = -777.0
    if rng.random() < 0.2:
        altitude[:] = -777.0
    start = np.datetime64("2008-04-01T00:00:00") + np.timedelta64(int(rng.integers(0, 540 * 86400)), "s")
    seconds = start.astype("datetime64[s]").astype(np.int64) + np.concatenate([[0], np.cumsum(dt)])
    return {"seconds": seconds, "lat": lat, "lon": lon, "altitude_ft": altitude, "mode": str(mode)}


def plt_text(track: dict) -> str:
    """A trajectory as the text of a Geolife ``.plt`` file (six header lines, CRLF)."""
    stamps = track["seconds"].astype("datetime64[s]").astype(str)  # 'YYYY-MM-DDThh:mm:ss'
    days = track["seconds"] / 86400.0 + DAYS_1899_TO_1970
    lines = list(GEOLIFE_HEADER)
    for lat, lon, alt, day, stamp in zip(track["lat"], track["lon"], track["altitude_ft"], days, stamps):
        date, time = stamp.split("T")
        lines.append(f"{lat:.6f},{lon:.6f},0,{int(round(alt))},{day:.10f},{date},{time}")
    return "\r\n".join(lines) + "\r\n"


def make_geolife(
    out: str | Path, events: int = 100, seed: int = 0, users: int = 5, progress: bool = True
) -> list[Path]:
    """Write ``events`` made trajectories for ``users`` users in the Geolife 1.3 layout under ``out``,
    then the record ``<out>/geolife_made.json`` (last, so an interrupted make has none).

    Trajectory k belongs to user ``k % users`` (folders ``000``, ``001``, ...) and is drawn with
    ``SeedSequence(seed, spawn_key=(k,))``, so it does not depend on how many others are made.
    ``progress`` is accepted for the command line and ignored.

    Raises:
        FileExistsError: ``out`` already holds ``.plt`` files or the record (nothing is written).
    """
    if events < 1 or users < 1:
        raise ValueError(f"make_geolife: need events >= 1 and users >= 1, got {events}, {users}.")
    out = Path(out)
    record = out / GEOLIFE_RECORD
    if record.exists() or any((out / "Data").glob("*/Trajectory/*.plt")):
        raise FileExistsError(
            f"{out} already holds Geolife data; hepgen never overwrites a data file. Choose another folder."
        )
    written, names = [], set()
    for k in range(events):
        track = simulate_trajectory(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(k,))))
        user = f"{k % users:03d}"
        first = int(track["seconds"][0])
        while (user, first) in names:  # file names are start times: keep them unique per user
            first += 1
        names.add((user, first))
        stamp = np.datetime64(first, "s").astype(object).strftime("%Y%m%d%H%M%S")
        path = out / "Data" / user / "Trajectory" / f"{stamp}.plt"
        text = plt_text(track)
        written.append(write_atomically(path, lambda f, text=text: f.write(text.encode())))
    made = {"hepgen_made": "geolife", "trajectories": int(events), "seed": int(seed), "users": int(users)}
    written.append(write_atomically(record, lambda f: f.write(json.dumps(made, indent=1).encode())))
    return written
