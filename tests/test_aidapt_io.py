"""A(i)DAPT event files: every bad input gives one DataFileError naming the file and the problem."""

from __future__ import annotations

import re

import numpy as np
import pytest

from hepgen.io import DataFileError
from hepgen.io.aidapt import COLUMNS, N_COLUMNS, read_event_file, read_paired_files, write_event_file
from hepgen.synth.aidapt import simulate_sample


@pytest.fixture(scope="module")
def events() -> np.ndarray:
    """60 accepted-or-not made events in the 16-column layout."""
    return simulate_sample("ps", 60, seed=1)["detector"]


def raw(path, array) -> str:
    """Write ``array`` with plain np.save (no checks); return the path as a string."""
    np.save(path, array, allow_pickle=False)
    return str(path)


def expect(path, *fragments: str, reader=read_event_file, args=None) -> str:
    with pytest.raises(DataFileError) as info:
        reader(*(args or (path,)))
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert re.search(fragment, message), (fragment, message)
    return message


def test_round_trip(tmp_path, events):
    path = write_event_file(tmp_path / "ps_vertex_0.npy", events.astype(np.float32))
    back = read_event_file(path)
    assert back.dtype == np.float64 and back.shape == (60, N_COLUMNS) and len(COLUMNS) == N_COLUMNS
    np.testing.assert_array_equal(back, events.astype(np.float32))
    assert [p.name for p in tmp_path.iterdir()] == ["ps_vertex_0.npy"]  # no temporary file left


def test_missing_file(tmp_path):
    expect(tmp_path / "ps_vertex_0.npy", "not found", "hepgen data make aidapt")


@pytest.mark.parametrize("columns", [14, 15, 17])
def test_wrong_column_count(tmp_path, events, columns):
    path = raw(tmp_path / "bad.npy", np.zeros((5, columns)))
    message = expect(path, f"{columns} columns", "expected 16 columns in the AIDAPT layout")
    assert ("event_id and phi_pip" in message) == (columns == 14)


@pytest.mark.parametrize("shape", [(16,), (4, 4, 16)])
def test_not_two_dimensional(tmp_path, shape):
    expect(raw(tmp_path / "flat.npy", np.zeros(shape)), "2-D", re.escape(str(shape)))


def test_empty_file(tmp_path):
    expect(raw(tmp_path / "empty.npy", np.zeros((0, 16))), "no events")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf(tmp_path, events, bad):
    broken = events.copy()
    broken[[3, 7], COLUMNS.index("px_pip")] = bad
    broken[9, COLUMNS.index("E_p")] = bad
    path = raw(tmp_path / "nan.npy", broken)
    message = expect(path, "NaN/inf", "'px_pip' in 2 row", "'E_p' in 1 row", "first bad row 3")
    assert "'px_p'" not in message


def test_corrupt_file(tmp_path, events):
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"this is not numpy at all" * 10)
    expect(garbage, "not a readable .npy", "corrupt")
    truncated = tmp_path / "truncated.npy"
    raw(truncated, events)
    truncated.write_bytes(truncated.read_bytes()[:500])
    expect(truncated, "not a readable .npy")
    bad_zip = tmp_path / "bad_zip.npy"
    bad_zip.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    expect(bad_zip, "not a readable .npy")
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([[object()] * 16] * 2), allow_pickle=True)
    expect(pickled, "not a readable .npy")


def test_npz_archive_instead_of_npy(tmp_path, events):
    path = tmp_path / "archive.npy"
    with open(path, "wb") as f:
        np.savez(f, vertex=events)
    expect(path, "npz archive")


def test_paired_files_of_different_length(tmp_path, events):
    v0, d0 = raw(tmp_path / "ps_vertex_0.npy", events), raw(tmp_path / "ps_detector_0.npy", events)
    v1, d1 = raw(tmp_path / "ps_vertex_1.npy", events[:40]), raw(tmp_path / "ps_detector_1.npy", events[:39])
    message = expect(v1, "differ in length", "40 rows", "39 rows", reader=read_paired_files, args=([v0, v1], [d0, d1]))
    assert d1 in message and v0 not in message


def test_paired_lists_of_different_length(tmp_path, events):
    v0, d0 = raw(tmp_path / "ps_vertex_0.npy", events), raw(tmp_path / "ps_detector_0.npy", events)
    expect(v0, "1 vertex file", "0 detector file", reader=read_paired_files, args=([v0], []))
    expect(d0, "2 vertex file", reader=read_paired_files, args=([v0, v0], [d0]))


def test_paired_files_concatenate(tmp_path, events):
    v = [raw(tmp_path / f"v{k}.npy", events[k * 20 : (k + 1) * 20]) for k in range(3)]
    d = [raw(tmp_path / f"d{k}.npy", events[k * 20 : (k + 1) * 20] + 1) for k in range(3)]
    vertex, detector = read_paired_files(v, d)
    np.testing.assert_array_equal(vertex, events)
    np.testing.assert_array_equal(detector, events + 1)
    one_v, one_d = read_paired_files(v[0], d[0])  # a single path is one pair
    assert one_v.shape == one_d.shape == (20, 16)


def test_bad_file_inside_a_pair_is_named(tmp_path, events):
    v0 = raw(tmp_path / "ps_vertex_0.npy", events)
    d0 = raw(tmp_path / "ps_detector_0.npy", events[:, :14])
    expect(d0, "expected 16 columns", reader=read_paired_files, args=([v0], [d0]))


def test_write_refuses_to_overwrite_and_bad_shapes(tmp_path, events):
    path = write_event_file(tmp_path / "x.npy", events)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="x.npy"):
        write_event_file(path, events[:5])
    assert path.read_bytes() == before
    with pytest.raises(ValueError, match="16"):
        write_event_file(tmp_path / "y.npy", events[:, :14])
    assert not (tmp_path / "y.npy").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]
