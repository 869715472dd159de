"""Time-series data for the SDE-GAN: NaN filling, made OU paths, CSV windows, Geolife trajectories.

Every file these tests read is written by the csv module, numpy or plain strings, never by hepgen's writers
(except the tests of the made data themselves).
"""

from __future__ import annotations

import csv
import json
import math
import time

import numpy as np
import pytest
import torch
import torchcde
from scipy.integrate import solve_ivp

from datamodules import CSVSeriesDataModule, OUDataModule, TrajectoryDataModule
from datamodules.timeseries import filled_path
from hepgen.io.timeseries import fill_missing, interpolate_missing, read_csv_columns, read_plt
from hepgen.errors import ConfigValueError
from hepgen.io import DataFileError
from hepgen.synth.cli import main as data_main
from hepgen.synth.ou import ou_moments, simulate_ou
from tests.conftest import ROOT

BEIJING = ROOT.parent / "shared" / "data" / "timeseries" / "beijing_air_aotizhongxin.csv"


def nan_pattern(shape, fraction, seed):
    """Random values with NaNs, including leading and trailing runs, every channel observed somewhere."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=g)
    values[torch.rand(shape, generator=g) < fraction] = float("nan")
    values[::3, :2, 0] = float("nan")  # leading
    values[1::3, -3:, -1] = float("nan")  # trailing
    values[:, 4] = torch.where(torch.isnan(values).all(1), torch.ones(shape[0], shape[2]), values[:, 4])
    return values


# ----------------------------------------------------------------------------- fill_missing
def test_fill_missing_equals_torchcde_with_irregular_times():
    n, length = 40, 12
    values = nan_pattern((n, length, 3), 0.4, seed=0)
    g = torch.Generator().manual_seed(1)
    times = torch.cumsum(torch.rand(n, length, generator=g) * 3 + 0.05, dim=1)
    times -= times[:, :1].clone()
    filled = torch.from_numpy(fill_missing(values.numpy(), times.numpy()))
    reference = torch.stack([torchcde.linear_interpolation_coeffs(values[i], t=times[i]) for i in range(n)])
    assert torch.equal(filled, reference)
    observed = ~torch.isnan(values)
    assert torch.equal(filled[observed], values[observed]) and not torch.isnan(filled).any()


def test_fill_missing_equals_torchcde_default_on_regular_times():
    values = nan_pattern((64, 20, 2), 0.3, seed=2)
    times = torch.arange(20.0).expand(64, 20)
    reference = torchcde.linear_interpolation_coeffs(torch.cat([times[..., None], values], -1))[..., 1:]
    assert np.array_equal(fill_missing(values.numpy(), times.numpy(), chunk=10), reference.numpy())


def test_fill_missing_by_hand():
    # interior: linear in time (here t = 0, 1, 3, 4, 8); ends: held at the nearest observation
    values = np.array([np.nan, 1.0, np.nan, 4.0, np.nan])[None, :, None]
    times = np.array([[0.0, 1.0, 3.0, 4.0, 8.0]])
    np.testing.assert_allclose(fill_missing(values, times)[0, :, 0], [1.0, 1.0, 3.0, 4.0, 4.0])
    assert np.isnan(fill_missing(np.full((1, 3, 1), np.nan))).all()  # nothing to fill from


def test_interpolate_missing_passes_gradients_to_the_kept_values_only():
    # a generated path observed like a real one: the values at the missing entries are replaced,
    # so they get no gradient; the kept ones get the interpolation weights (no NaN from the ends)
    values = torch.tensor([[[5.0], [1.0], [7.0], [4.0], [9.0]]], requires_grad=True)
    missing = torch.tensor([[[True], [False], [True], [False], [True]]])
    times = torch.tensor([[0.0, 1.0, 3.0, 4.0, 8.0]])
    filled = interpolate_missing(values, missing, times)
    torch.testing.assert_close(filled[0, :, 0], torch.tensor([1.0, 1.0, 3.0, 4.0, 4.0]))
    filled.sum().backward()
    # t = 0 copies t = 1; t = 3 is 1/3 of t = 1 and 2/3 of t = 4; t = 8 copies t = 4
    torch.testing.assert_close(values.grad[0, :, 0], torch.tensor([0.0, 2 + 1 / 3, 0.0, 2 + 2 / 3, 0.0]))


def test_fill_missing_names_a_channel_without_observation():
    values = torch.randn(5, 6, 2)
    values[3, :, 1] = float("nan")
    with pytest.raises(DataFileError, match="somewhere: path 3 has no observed value in channel 1"):
        filled_path(torch.arange(6.0).expand(5, 6), values, where="somewhere")


def test_fill_missing_is_fast():
    values = torch.randn(8192, 64, 1)
    values[torch.rand(values.shape, generator=torch.Generator().manual_seed(0)) < 0.3] = float("nan")
    values[:, 0] = 0.0
    start = time.perf_counter()
    fill_missing(values.numpy(), torch.arange(64.0).expand(8192, 64).numpy())
    assert time.perf_counter() - start < 1.0  # torchcde's own loop takes ~20 s


# ----------------------------------------------------------------------------- OU
def test_ou_moments_solve_their_odes():
    t = np.array([0.0, 1.0, 6.0, 19.0, 32.0, 44.0, 57.0, 63.0])
    k = (2 * 0.4 / 64) ** 2
    def rhs(s, z):  # m' = mu s - theta m, v' = -2 theta v + (sigma 2 s / T)^2
        return [0.02 * s - 0.1 * z[0], -0.2 * z[1] + k * s**2]

    ode = solve_ivp(rhs, (0, 63), [0.0, 1 / 3], t_eval=t, rtol=1e-10, atol=1e-12)
    mean, var = ou_moments(t, t_size=64)
    np.testing.assert_allclose(mean, ode.y[0], rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(var, ode.y[1], rtol=1e-7)


@pytest.mark.parametrize("sim_dt", [0.1, 1.0])
def test_simulated_ou_marginals_match_the_exact_moments(sim_dt):
    # Tolerance: 5 standard errors. The sample mean has sd sqrt(v/n); the sample variance of a
    # Gaussian has sd v sqrt(2/(n-1)), and Y_t (a uniform start plus a Gaussian) has kurtosis <= 3,
    # so that bound is conservative. Each step is the exact transition, so there is no bias to allow for.
    n, t = 20_000, np.array([0, 1, 6, 19, 32, 44, 57, 63])
    y = simulate_ou(n, t_size=64, seed=5, sim_dt=sim_dt)[:, t]
    mean, var = ou_moments(t, t_size=64)
    assert np.all(np.abs(y.mean(0) - mean) < 5 * np.sqrt(var / n))
    assert np.all(np.abs(y.var(0, ddof=1) - var) < 5 * var * np.sqrt(2 / (n - 1)))


def test_ou_drops_the_fraction_and_is_seeded():
    y = simulate_ou(500, t_size=32, seed=3, drop_fraction=0.3)
    assert np.isnan(y).sum() == int(0.3 * 500 * 32)
    assert np.all((~np.isnan(y)).any(axis=1))  # every path keeps a value
    np.testing.assert_array_equal(y, simulate_ou(500, t_size=32, seed=3, drop_fraction=0.3))
    assert not np.array_equal(y, simulate_ou(500, t_size=32, seed=4, drop_fraction=0.3), equal_nan=True)


def test_ou_datamodule_defaults_give_the_reference_sizes(tmp_path):
    dm = OUDataModule(data_dir=str(tmp_path / "ou"))
    assert (dm.channels, dm.t_size, dm.channel_names, dm.units, dm.batch_size) == (1, 64, ["y"], [""], 1024)
    dm.prepare_data()
    assert not (tmp_path / "ou").exists()  # nothing on disk, not even a lock
    dm.setup("fit")
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 8192, "val": 1024, "test": 1024}


def test_ou_datamodule_batches_follow_the_contract():
    dm = OUDataModule(t_size=16, made_events=200, batch_size=50, made_seed=1)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    shapes = {k: tuple(v.shape) for k, v in batch.items()}
    assert shapes == {"times": (50, 16), "values": (50, 16, 1), "path": (50, 16, 2)}
    assert all(v.dtype == torch.float32 for v in batch.values())
    assert torch.equal(batch["times"][0], torch.arange(16.0))
    assert torch.equal(batch["path"][..., 0], batch["times"])
    observed = ~torch.isnan(batch["values"])
    assert torch.isnan(batch["values"]).any() and not torch.isnan(batch["path"]).any()
    assert torch.equal(batch["path"][..., 1:][observed], batch["values"][observed])
    all_values = torch.cat([dm.datasets[s].tensors["values"] for s in ("train", "val", "test")])
    assert int(torch.isnan(all_values).sum()) == int(0.3 * 200 * 16)
    with pytest.raises(ConfigValueError, match="source=real"):
        OUDataModule(source="real")
    with pytest.raises(ConfigValueError, match="t_size=1"):
        OUDataModule(t_size=1)


# ----------------------------------------------------------------------------- CSV
def write_rows(path, rows, delimiter=","):
    with open(path, "w", newline="") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    return path


def counter_csv(path, n=100, header=True, delimiter=","):
    """Columns: a = row number, b = 1000 + row number, c = -row number."""
    rows = [[i, 1000 + i, -i] for i in range(n)]
    return write_rows(path, ([["a", "b", "c"]] if header else []) + rows, delimiter)


def csv_module(path, **kwargs):
    kwargs = {"data_dir": str(path.parent), "file": path.name, "window": 10, "stride": 5, "batch_size": 8, **kwargs}
    dm = CSVSeriesDataModule(**kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def beijing_rows():
    if not BEIJING.is_file():
        pytest.skip(f"{BEIJING} is not here")
    with open(BEIJING, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_reads_the_real_beijing_file(beijing_rows):
    header, rows = beijing_rows
    names, values, lines = read_csv_columns(BEIJING)
    assert names == header == ["PM2.5", "PM10", "SO2", "NO2", "CO", "O3", "TEMP", "PRES", "DEWP", "RAIN", "WSPM"]
    # the file has 35,064 data rows (the README's 35,063 is one short), missing values written NA
    assert values.shape == (len(rows), 11) == (35_064, 11)
    np.testing.assert_array_equal(values[0], [4, 4, 4, 7, 300, 77, -0.7, 1023, -18.8, 0, 4.4])
    np.testing.assert_array_equal(values[2], [float(x) for x in rows[2]])
    co = header.index("CO")
    assert np.isnan(values[:, co]).sum() == sum(row[co] in ("", "NA") for row in rows) == 1776
    assert lines[0] == 2 and lines[-1] == len(rows) + 1


def test_beijing_windows_start_at_the_first_rows(beijing_rows):
    header, rows = beijing_rows
    dm = CSVSeriesDataModule(file=str(BEIJING), columns=["PM2.5", "TEMP"], window=24, stride=24)
    assert (dm.channels, dm.t_size, dm.units) == (2, 24, ["µg/m³", "°C"])
    dm.setup("fit")
    first = dm.datasets["train"].tensors["values"][0]
    expected = [[float(r[0]), float(r[6])] for r in rows[:24]]
    np.testing.assert_allclose(first.numpy(), np.array(expected, dtype=np.float32))
    n_val = round(len(rows) * 0.1)
    assert len(dm.datasets["val"]) + dm.skipped_windows["val"] == (n_val - 24) // 24 + 1


def test_header_detection_and_delimiter(tmp_path):
    plain = tmp_path / "plain.csv"
    np.savetxt(plain, np.arange(60.0).reshape(20, 3), delimiter=";")
    dm = csv_module(plain, delimiter=";", window=4, stride=4, val_fraction=0.2, test_fraction=0.2)
    assert dm.channel_names == ["col0", "col1", "col2"]
    assert dm.datasets["train"].tensors["values"][0, 0].tolist() == [0.0, 1.0, 2.0]
    named = counter_csv(tmp_path / "named.csv", n=40, delimiter=";")
    dm = csv_module(named, delimiter=";", window=4, stride=4)
    assert dm.channel_names == ["a", "b", "c"]
    assert dm.datasets["train"].tensors["values"][0, 0].tolist() == [0.0, 1000.0, 0.0]
    with pytest.raises(DataFileError, match=r"named.csv, line 1, column 'col0': 'a' is not a number"):
        csv_module(named, delimiter=";", header=False, window=4, stride=4)


def test_columns_by_name_and_by_index(tmp_path):
    path = counter_csv(tmp_path / "x.csv", n=100)
    by_name = csv_module(path, columns=["c", "a"])
    by_index = csv_module(path, columns=[2, 0])
    assert by_name.channel_names == by_index.channel_names == ["c", "a"] and by_name.channels == 2
    for split in ("train", "val", "test"):
        assert torch.equal(by_name.datasets[split].tensors["values"], by_index.datasets[split].tensors["values"])
    assert by_name.datasets["train"].tensors["values"][0, 3].tolist() == [-3.0, 3.0]


def test_missing_values_survive_as_nan_and_the_path_is_filled(tmp_path):
    rows = [["a", "b"]] + [[str(i), str(2 * i)] for i in range(30)]
    for i, token in ((1, ""), (2, "NA"), (3, "null"), (4, "nan"), (5, "NaN"), (7, " NA ")):
        rows[1 + i][1] = token
    dm = csv_module(write_rows(tmp_path / "gaps.csv", rows), window=10, stride=10, val_fraction=0.0, test_fraction=0.0)
    data = dm.datasets["train"].tensors
    b = data["values"][0, :, 1]
    assert torch.isnan(b[[1, 2, 3, 4, 5, 7]]).all() and not torch.isnan(b[[0, 6, 8, 9]]).any()
    assert np.array_equal(data["path"][..., 1:].numpy(), fill_missing(data["values"].numpy(), data["times"].numpy()))
    np.testing.assert_allclose(data["path"][0, :, 2].numpy(), 2 * np.arange(10.0))  # the line through the gaps
    assert torch.equal(data["path"][..., 0], data["times"])


def test_splits_are_by_time_and_count_the_windows(tmp_path):
    n, window, stride = 200, 12, 5
    path = counter_csv(tmp_path / "t.csv", n=n)
    dm = csv_module(path, window=window, stride=stride, val_fraction=0.15, test_fraction=0.25)
    parts = {"train": (0, 120), "val": (120, 150), "test": (150, 200)}
    for split, (lo, hi) in parts.items():
        rows = dm.datasets[split].tensors["values"][..., 0]  # column a is the row number
        assert len(rows) == (hi - lo - window) // stride + 1
        assert rows.min() >= lo and rows.max() < hi  # no window crosses a boundary
        assert torch.equal(rows[:, 0], torch.as_tensor(dm.window_starts[split], dtype=torch.float32))
        assert torch.equal(dm.datasets[split].tensors["times"][0], torch.arange(float(window)))


def test_windows_without_a_value_of_a_channel_are_skipped(tmp_path):
    rows = [["a", "b"]] + [[str(i), "" if 20 <= i < 40 else "1"] for i in range(100)]
    dm = csv_module(write_rows(tmp_path / "hole.csv", rows), window=10, stride=10, val_fraction=0.1, test_fraction=0.1)
    assert dm.skipped_windows == {"train": 2, "val": 0, "test": 0} and len(dm.datasets["train"]) == 6


def test_log_return_and_difference(tmp_path):
    prices = [100.0, 101.0, 99.5, 102.0, 103.0, 101.5, 104.0, 105.0, 103.0, 106.0, 107.0, 108.5]
    path = write_rows(tmp_path / "p.csv", [["close"]] + [[p] for p in prices])
    kwargs = {"window": 11, "stride": 1, "val_fraction": 0.0, "test_fraction": 0.0}
    dm = csv_module(path, transform="log_return", **kwargs)
    returns = dm.datasets["train"].tensors["values"][0, :, 0].numpy()
    np.testing.assert_allclose(returns, np.log(np.array(prices[1:]) / np.array(prices[:-1])), rtol=1e-5)
    assert dm.units == [""]
    dm = csv_module(path, transform="difference", **kwargs)
    np.testing.assert_allclose(dm.datasets["train"].tensors["values"][0, :, 0].numpy(), np.diff(prices), rtol=1e-6)
    bad = write_rows(tmp_path / "neg.csv", [["close"]] + [[p] for p in prices[:5]] + [[0]] + [[p] for p in prices])
    with pytest.raises(DataFileError, match=r"neg.csv, line 7, column 'close': value 0 <= 0 has no log-return"):
        csv_module(bad, transform="log_return", window=4, stride=1)


def test_bad_csvs_give_one_line_errors(tmp_path):
    path = counter_csv(tmp_path / "ok.csv", n=50)
    rows = [["a", "b"]] + [[i, i] for i in range(50)]
    rows[9][1] = "abc"
    cases = [
        (write_rows(tmp_path / "text.csv", rows), {}, DataFileError,
         r"text.csv, line 10, column 'b': 'abc' is not a number"),
        (path, {"columns": ["a", "nope"]}, ConfigValueError, r"no column 'nope' in .*ok.csv \(its header: a, b, c\)"),
        (path, {"columns": [3]}, ConfigValueError, r"index 3 is out of range for .*ok.csv, which has 3 columns"),
        (path, {"window": 6}, ConfigValueError,
         r"ok.csv: the 'val' split has 5 rows \(lines 42-46\), fewer than window=6"),
        (write_rows(tmp_path / "void.csv", [["a", "b"]] + [[i, "NA"] for i in range(50)]), {}, DataFileError,
         r"void.csv, column 'b': every value is missing"),
        (write_rows(tmp_path / "head.csv", [["a", "b"]]), {}, DataFileError, r"head.csv: no data rows"),
        (write_rows(tmp_path / "empty.csv", []), {}, DataFileError, r"empty.csv: no data rows"),
        (write_rows(tmp_path / "ragged.csv", [["a", "b"]] + [[1, 2]] * 20 + [[1, 2, 3]]), {}, DataFileError,
         r"ragged.csv, line 22: 3 fields, but the first row has 2"),
        (write_rows(tmp_path / "inf.csv", [["a"]] + [[1]] * 20 + [["inf"]]), {}, DataFileError,
         r"inf.csv, line 22, column 'a': an infinite"),
        (tmp_path / "absent.csv", {}, DataFileError, r"data file not found: .*absent.csv"),
        (path, {"window": 1}, ConfigValueError, r"window=1: a path needs at least 2 observations"),
    ]  # fmt: skip
    for file, kwargs, error, message in cases:
        with pytest.raises(error, match=message) as caught:
            csv_module(file, **{"window": 4, "stride": 2, **kwargs})
        assert "\n" not in str(caught.value)


def test_made_air_quality_csv(tmp_path):
    dm = CSVSeriesDataModule(data_dir=str(tmp_path), source="made", made_events=2000, window=24, stride=12)
    assert dm.channel_names[0] == "PM2.5" and dm.channels == 11 and dm.units[4] == "µg/m³"
    dm.prepare_data()
    dm.setup("fit")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["air_quality.csv", "air_quality.made.json"]
    with open(tmp_path / "air_quality.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 2001 and rows[0][:2] == ["PM2.5", "PM10"] and sum(r.count("NA") for r in rows) > 0
    values = np.array([[float(x) if x != "NA" else np.nan for x in r] for r in rows[1:]])
    assert np.nanmin(values[:, :6]) > 0 and np.nanmin(values[:, 6]) < 0  # concentrations > 0, March nights below 0 °C
    both = ~np.isnan(values[:, [6, 8]]).any(axis=1)
    assert np.all(values[both, 8] < values[both, 6])  # the dew point lies below the temperature
    assert all(len(dm.datasets[s]) > 0 for s in ("train", "val", "test"))
    again = CSVSeriesDataModule(data_dir=str(tmp_path), source="made", made_events=2000, window=24, stride=12)
    again.prepare_data()  # reuses the file
    with pytest.raises(DataFileError, match=r"\(rows, seed\) = \(2000, 0\) but the config asks for \(3000, 0\)"):
        CSVSeriesDataModule(data_dir=str(tmp_path), source="made", made_events=3000).prepare_data()
    counter_csv(tmp_path / "mine.csv")
    with pytest.raises(DataFileError, match="mine.csv is not hepgen-made data"):
        CSVSeriesDataModule(data_dir=str(tmp_path), file="mine.csv", source="made").prepare_data()
    with pytest.raises(DataFileError, match="data file not found"):
        CSVSeriesDataModule(data_dir=str(tmp_path / "none"), source="real")


# ----------------------------------------------------------------------------- Geolife
PLT_HEADER = (
    "Geolife trajectory\r\nWGS 84\r\nAltitude is in Feet\r\nReserved 3\r\n0,2,255,My Track,0,0,2,8421376\r\n0\r\n"
)


def plt_line(lat, lon, alt, seconds_after_start, start=(2008, 10, 23, 2, 53, 4)):
    """One record, formatted by hand (days since 1899-12-30 as Geolife writes them)."""
    import datetime as dt

    when = dt.datetime(*start) + dt.timedelta(seconds=seconds_after_start)
    days = (when - dt.datetime(1899, 12, 30)).total_seconds() / 86400
    return f"{lat},{lon},0,{alt},{days:.10f},{when:%Y-%m-%d},{when:%H:%M:%S}\r\n"


def write_plt(folder, user, name, records):
    path = folder / "Data" / user / "Trajectory" / f"{name}.plt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PLT_HEADER + "".join(plt_line(*r) for r in records), newline="")
    return path


HAND = [  # lat, lon, altitude ft, seconds after the first fix
    (39.984702, 116.318417, 492, 0),
    (39.985702, 116.318417, -777, 2),
    (39.985702, 116.319417, 500, 4),
    (39.986702, 116.320417, 510, 9),
    (39.987702, 116.320417, 520, 10),
]


def test_reads_a_hand_written_plt(tmp_path):
    path = write_plt(tmp_path, "000", "20081023025304", HAND)
    track = read_plt(path)
    assert np.isnan(track["altitude"][1]) and track["altitude"][0] == pytest.approx(492 * 0.3048)
    np.testing.assert_array_equal(track["seconds"] - track["seconds"][0], [0, 2, 4, 9, 10])
    whole = {"data_dir": str(tmp_path), "window": 5, "stride": 1, "val_fraction": 0.0, "test_fraction": 0.0}
    dm = TrajectoryDataModule(fields=["x", "y", "altitude"], time_unit_s=2.0, **whole)
    assert (dm.channels, dm.t_size, dm.units) == (3, 5, ["m", "m", "m"])
    dm.prepare_data()
    dm.setup("fit")
    data = dm.datasets["train"].tensors
    np.testing.assert_allclose(data["times"][0].numpy(), [0, 1, 2, 4.5, 5])
    # by hand: 0.001° of latitude is 6371 km * 0.001 * pi / 180 = 111.19 m north, and 0.001° of
    # longitude at 39.984702° N is 111.19 m * cos(39.984702°) = 85.20 m east
    north = 6_371_000 * 0.001 * math.pi / 180
    x, y, alt = data["values"][0].double().unbind(-1)
    assert y[1].item() == pytest.approx(north, rel=1e-4) and x[1].item() == pytest.approx(0.0, abs=1e-3)
    assert x[2].item() == pytest.approx(north * math.cos(math.radians(39.984702)), rel=1e-4)
    assert torch.isnan(alt[1]) and alt[2].item() == pytest.approx(500 * 0.3048, rel=1e-6)
    assert not torch.isnan(data["path"]).any()
    absolute = TrajectoryDataModule(coordinates="absolute", **whole)
    absolute.setup("fit")
    assert absolute.units == ["°", "°"]
    lon_lat = absolute.datasets["train"].tensors["values"][0, 3].numpy()
    np.testing.assert_allclose(lon_lat, [116.320417, 39.986702], rtol=1e-7)


def test_gaps_longer_than_max_gap_are_skipped(tmp_path):
    records = [(39.9 + 1e-4 * i, 116.4, 100, 5 * i + (100 if i >= 6 else 0)) for i in range(12)]
    write_plt(tmp_path, "007", "20081023025304", records)
    kwargs = {"data_dir": str(tmp_path), "window": 4, "stride": 1, "val_fraction": 0.0, "test_fraction": 0.0}
    strict = TrajectoryDataModule(max_gap_s=60, **kwargs)
    strict.setup("fit")
    assert len(strict.datasets["train"]) == 6 and strict.skipped_windows["train"] == 3  # windows 3, 4, 5 hold the gap
    loose = TrajectoryDataModule(max_gap_s=200, **kwargs)
    loose.setup("fit")
    assert len(loose.datasets["train"]) == 9


def test_malformed_plt_and_missing_folder(tmp_path):
    path = write_plt(tmp_path, "000", "20081023025304", HAND)
    path.write_text(path.read_text() + "39.9,116.4,0,abc,39744.12,2008-10-23,03:00:00\n")
    with pytest.raises(DataFileError, match=r"20081023025304.plt, line 12: .* is not a Geolife record"):
        read_plt(path)
    with pytest.raises(DataFileError, match=r"nowhere/Data: no Geolife folder .*Geolife Trajectories 1.3"):
        TrajectoryDataModule(data_dir=str(tmp_path / "nowhere")).prepare_data()
    with pytest.raises(DataFileError, match=r"no folder 123/Trajectory"):
        TrajectoryDataModule(data_dir=str(tmp_path), users=["123"]).prepare_data()
    with pytest.raises(ConfigValueError, match="fields"):
        TrajectoryDataModule(fields=["x", "speed"])


def test_made_geolife_splits_by_trajectory(tmp_path):
    made_geolife = tmp_path / "geolife"
    kwargs = {"data_dir": str(made_geolife), "source": "made", "made_events": 12, "window": 32, "stride": 16}
    dm = TrajectoryDataModule(val_fraction=0.2, test_fraction=0.2, **kwargs)
    dm.prepare_data()  # makes the data
    record = json.loads((made_geolife / "geolife_made.json").read_text())
    assert record == {"hepgen_made": "geolife", "trajectories": 12, "seed": 0, "users": 5}
    files = sorted(made_geolife.glob("Data/*/Trajectory/*.plt"))
    assert len(files) == 12 and files[0].read_text().splitlines()[4] == "0,2,255,My Track,0,0,2,8421376"
    altitudes = np.concatenate([read_plt(f)["altitude"] for f in files])
    assert np.isnan(altitudes).any() and not np.isnan(altitudes).all()
    TrajectoryDataModule(**kwargs).prepare_data()  # finds them made as asked
    dm.setup("fit")
    parts = dm.splits(len(dm.window_files))  # the same seeded split setup used
    owners = {s: set(dm.window_files[parts[s]].tolist()) for s in ("train", "val", "test")}
    assert {s: len(dm.datasets[s]) for s in parts} == {s: len(idx) for s, idx in parts.items()}
    assert all(owners.values())
    assert not (owners["train"] & owners["val"] or owners["train"] & owners["test"] or owners["val"] & owners["test"])
    times = dm.datasets["train"].tensors["times"]
    assert torch.all(times[:, 0] == 0) and torch.all(times.diff(dim=1) > 0)
    with pytest.raises(DataFileError, match=r"\(trajectories, seed\) = \(12, 0\) but the config asks for \(13, 0\)"):
        TrajectoryDataModule(data_dir=str(made_geolife), source="made", made_events=13).prepare_data()


def test_real_geolife_folder_is_not_made_over(tmp_path):
    write_plt(tmp_path, "000", "20081023025304", HAND)
    with pytest.raises(DataFileError, match="holds .plt files but no geolife_made.json"):
        TrajectoryDataModule(data_dir=str(tmp_path), source="made").prepare_data()


def test_hepgen_data_make_writes_both_layouts(tmp_path, capsys):
    data_main(["make", "csv_series", "--out", str(tmp_path / "csv"), "--events", "50", "--seed", "2"])
    data_main(["make", "geolife", "--out", str(tmp_path / "geo"), "--events", "3", "--users", "2"])
    names, values, _ = read_csv_columns(tmp_path / "csv" / "air_quality.csv")
    assert values.shape == (50, 11) and names[-1] == "WSPM"
    assert len(list((tmp_path / "geo" / "Data").glob("*/Trajectory/*.plt"))) == 3
    assert sorted(p.name for p in (tmp_path / "geo" / "Data").iterdir()) == ["000", "001"]
    assert "wrote" in capsys.readouterr().out
