"""Anomaly-detection formats: the LHCO pandas HDF5, CATHODE .npy arrays and the seed's .npz study.

Each bad input must give one DataFileError, on one line, naming the file (and key/column) and
what to do. LHCO-style files are written by pandas itself, the way their publishers wrote them.
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from hepgen.io import DataFileError
from hepgen.io.anomaly import (
    AD_COLUMNS,
    LHCO_COLUMNS,
    available_signal_fractions,
    data_file_name,
    lhco_features,
    read_cathode_npy,
    read_lhco,
    read_npz_arrays,
    read_pandas_fixed,
    read_seed_study,
)

LHCO_SR = Path(__file__).resolve().parents[2] / "shared" / "data" / "lhco_sr"


def expect(call, *fragments: str) -> str:
    """Run ``call``; assert a one-line DataFileError holding every regex fragment."""
    with pytest.raises(DataFileError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert re.search(fragment, message), (fragment, message)
    return message


# ------------------------------------------------------------------------------------- LHCO
def lhco_frame(n: int = 50, seed: int = 0, int_label: bool = False):
    """A pandas frame in the LHCO R&D layout: dijets with random momenta/masses (GeV)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    data = {name: rng.normal(0.0, 1500.0, n) for name in LHCO_COLUMNS}
    for jet in ("j1", "j2"):
        data[f"m{jet}"] = rng.uniform(20.0, 800.0, n)
        for k in (1, 2, 3):
            data[f"tau{k}{jet}"] = rng.uniform(0.0, 1.0, n)
    label = (rng.random(n) < 0.1).astype(np.int64)
    data["label"] = label if int_label else label.astype(np.float64)
    return pd.DataFrame(data, columns=list(LHCO_COLUMNS))


def n_blocks(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return int(f["df"].attrs["nblocks"])


def test_pandas_fixed_all_float_is_one_block_and_matches_pandas(tmp_path):
    import pandas as pd

    path = tmp_path / "events_anomalydetection_v2.features.h5"
    lhco_frame().to_hdf(path, key="df", format="fixed")
    assert n_blocks(path) == 1
    columns = read_pandas_fixed(path)
    expected = pd.read_hdf(path, "df")
    assert list(columns) == list(LHCO_COLUMNS)
    for name in LHCO_COLUMNS:
        assert columns[name].shape == (50,)
        np.testing.assert_array_equal(columns[name], expected[name].to_numpy())


def test_pandas_fixed_two_blocks_map_back_to_their_columns(tmp_path):
    """pandas groups by dtype: an int64 label (and an int column in the middle) go to block 1."""
    import pandas as pd

    frame = lhco_frame(int_label=True)
    path = tmp_path / "two_blocks.h5"
    frame.to_hdf(path, key="df", format="fixed")
    assert n_blocks(path) == 2
    columns = read_pandas_fixed(path)
    assert list(columns) == list(LHCO_COLUMNS) and columns["label"].dtype == np.int64
    for name in LHCO_COLUMNS:
        np.testing.assert_array_equal(columns[name], frame[name].to_numpy())

    mixed = pd.DataFrame({"a": [1.5, 2.5], "n": [7, 8], "b": [3.5, 4.5], "m": np.array([1, 0], np.int8)})
    mixed.to_hdf(tmp_path / "mixed.h5", key="events", format="fixed")
    back = read_pandas_fixed(tmp_path / "mixed.h5", key="events")
    assert list(back) == ["a", "n", "b", "m"]
    assert back["n"].tolist() == [7, 8] and back["b"].tolist() == [3.5, 4.5] and back["m"].dtype == np.int8

    # the features of the two-block file equal those of the all-float one
    float_path = tmp_path / "float.h5"
    lhco_frame(int_label=False).to_hdf(float_path, key="df", format="fixed")
    np.testing.assert_array_equal(read_lhco(path), read_lhco(float_path))


def test_pandas_table_format_is_refused(tmp_path):
    path = tmp_path / "table.h5"
    lhco_frame().to_hdf(path, key="df", format="table")
    expect(lambda: read_pandas_fixed(path), re.escape(str(path)), 'format="table"', 'format="fixed"')


def test_pandas_fixed_bad_files(tmp_path):
    missing = tmp_path / "events_anomalydetection_v2.features.h5"
    expect(lambda: read_lhco(missing), re.escape(str(missing)), "not found", "Zenodo record 4536377")

    text = tmp_path / "notes.h5"
    text.write_text("not hdf5\n")
    expect(lambda: read_pandas_fixed(text), re.escape(str(text)), "not a readable HDF5")

    good = tmp_path / "good.h5"
    lhco_frame(int_label=True).to_hdf(good, key="df", format="fixed")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    expect(lambda: read_pandas_fixed(truncated), re.escape(str(truncated)), "truncated")

    expect(lambda: read_pandas_fixed(good, key="events"), re.escape(str(good)), "no group '/events'", r"\['df'\]")

    no_axis = tmp_path / "no_axis0.h5"
    with h5py.File(no_axis, "w") as f:
        f.create_group("df").create_dataset("block0_values", data=np.zeros((3, 2)))
    expect(lambda: read_pandas_fixed(no_axis), re.escape(str(no_axis)), "'/df/axis0'", "missing")

    # drop the int block (the label) but keep axis0 listing it
    lost = tmp_path / "lost_label.h5"
    lost.write_bytes(good.read_bytes())
    with h5py.File(lost, "r+") as f:
        del f["df/block1_items"], f["df/block1_values"]
        f["df"].attrs["nblocks"] = 1
    expect(lambda: read_pandas_fixed(lost), re.escape(str(lost)), r"\['label'\]", "in no block")

    import pandas as pd

    strings = tmp_path / "strings.h5"
    pd.DataFrame({"x": [1.0, 2.0], "name": ["a", "b"]}).to_hdf(strings, key="df", format="fixed")
    expect(lambda: read_pandas_fixed(strings), re.escape(str(strings)), r"\['name'\]", "Python objects")


def test_pandas_untransposed_block_is_read(tmp_path):
    """A block stored (columns, rows) without pandas' `transposed` flag is pandas' own orientation."""
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("df")
        g.attrs["nblocks"] = 1
        g["axis0"] = np.array([b"b", b"a"])
        g["block0_items"] = np.array([b"a", b"b"])
        g["block0_values"] = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    columns = read_pandas_fixed(path)
    assert list(columns) == ["b", "a"]
    assert columns["a"].tolist() == [1.0, 2.0, 3.0] and columns["b"].tolist() == [4.0, 5.0, 6.0]


def jets(**override) -> dict[str, np.ndarray]:
    """One event: j1 and j2 back to back along x, |p| = 1500 GeV, m = 100 / 500 GeV."""
    event = dict(pxj1=1500.0, pyj1=0.0, pzj1=0.0, mj1=100.0, tau1j1=0.5, tau2j1=0.2, tau3j1=0.1,
                 pxj2=-1500.0, pyj2=0.0, pzj2=0.0, mj2=500.0, tau1j2=0.8, tau2j2=0.6, tau3j2=0.3, label=1.0)
    event.update(override)
    return {k: np.array([v]) for k, v in event.items()}


def test_lhco_features_by_hand():
    (row,) = lhco_features(jets())
    m_jj = (np.hypot(1500.0, 100.0) + np.hypot(1500.0, 500.0)) / 1000  # back to back: m_jj = E1 + E2
    np.testing.assert_allclose(row, [m_jj, 0.1, 0.4, 0.2 / (0.5 + 1e-5), 0.6 / (0.8 + 1e-5), 1.0], rtol=1e-12)

    # j1 heavier: J1 is now j2, and the τ21 columns swap with it; m_jj does not change
    (swapped,) = lhco_features(jets(mj1=500.0, mj2=100.0))
    m_jj_swapped = (np.hypot(1500.0, 500.0) + np.hypot(1500.0, 100.0)) / 1000
    np.testing.assert_allclose(swapped, [m_jj_swapped, 0.1, 0.4, 0.6 / (0.8 + 1e-5), 0.2 / (0.5 + 1e-5), 1.0],
                               rtol=1e-12)

    # massless jets at 90°: m² = 2 E1 E2 (1 − cos θ); τ1 = 0 is guarded by the 1e-5
    (right_angle,) = lhco_features(jets(pxj2=0.0, pyj2=1000.0, pxj1=1000.0, mj1=0.0, mj2=0.0, tau1j1=0.0))
    assert right_angle[0] == pytest.approx(np.sqrt(2.0) * 1000.0 / 1000, rel=1e-12)
    assert right_angle[3] == pytest.approx(0.2 / 1e-5)
    assert lhco_features(jets()).shape == (1, len(AD_COLUMNS))


def test_lhco_features_missing_column_is_named():
    columns = jets()
    del columns["tau2j2"]
    expect(lambda: lhco_features(columns, where="x.h5"), "x.h5", r"\['tau2j2'\] missing")


# ---------------------------------------------------------------------------- CATHODE .npy
@pytest.fixture
def lhco_sr() -> Path:
    """The published signal-region files in ``../shared/data`` beside the checkout (absent in CI)."""
    if not LHCO_SR.parent.is_dir():
        pytest.skip(f"{LHCO_SR.parent} is not beside this checkout")
    return LHCO_SR


@pytest.mark.parametrize("name, rows, signal", [
    ("sr_data_train.npy", 60_000, 395), ("sr_data_val.npy", 62_124, 377), ("sr_signal.npy", 27_263, 27_263),
])
def test_real_cathode_files(lhco_sr, name, rows, signal):
    events = read_cathode_npy(lhco_sr / name)
    assert events.shape == (rows, 6) and events.dtype == np.float64
    assert int(events[:, AD_COLUMNS.index("label")].sum()) == signal
    m_jj = events[:, AD_COLUMNS.index("m_jj")]
    assert 3.3 <= m_jj.min() and m_jj.max() <= 3.7  # the signal region, in TeV
    assert (events[:, AD_COLUMNS.index("delta_m_J")] >= 0).all()  # jets ordered by mass


def cathode_rows(n: int = 20) -> np.ndarray:
    rng = np.random.default_rng(3)
    rows = rng.uniform(0.0, 1.0, (n, 6))
    rows[:, 0] += 3.3
    rows[:, 5] = rng.random(n) < 0.5
    return rows


def test_cathode_npy_round_trip(tmp_path):
    path = tmp_path / "sr.npy"
    np.save(path, cathode_rows().astype(np.float32))
    back = read_cathode_npy(path)
    assert back.dtype == np.float64
    np.testing.assert_array_equal(back, cathode_rows().astype(np.float32))


def test_cathode_npy_bad_files(tmp_path):
    def bad(name: str, array: np.ndarray, *fragments: str) -> None:
        path = tmp_path / name
        np.save(path, array)
        expect(lambda: read_cathode_npy(path), re.escape(str(path)), *fragments)

    bad("five.npy", cathode_rows()[:, :5], re.escape("(20, 5)"), "expected")
    bad("flat.npy", cathode_rows()[:, 0], re.escape("(20,)"))
    bad("empty.npy", np.zeros((0, 6)), "no events")
    nan = cathode_rows()
    nan[[2, 5], 3] = np.nan
    nan[7, 0] = np.inf
    bad("nan.npy", nan, "'m_jj' in 1 row", "'tau21_J1' in 2 row", "first bad row 2")
    labels = cathode_rows()
    labels[4, 5] = 2.0
    bad("labels.npy", labels, "'label'", "1 value", "row 4")

    good = tmp_path / "good.npy"
    np.save(good, cathode_rows())
    truncated = tmp_path / "truncated.npy"
    truncated.write_bytes(good.read_bytes()[:-40])
    expect(lambda: read_cathode_npy(truncated), re.escape(str(truncated)), "truncated")
    text = tmp_path / "table.npy"
    text.write_text("1,2,3\n")
    expect(lambda: read_cathode_npy(text), re.escape(str(text)), "not a .npy")
    expect(lambda: read_cathode_npy(tmp_path / "none.npy"), "none.npy", "not found", "CATHODE")


# ------------------------------------------------------------------------- the seed's .npz study
FRACTIONS = [0, 0.0025, 0.004]  # as in the seed's lists: the first is the int 0


def write_seed_study(folder: Path, seed: int = 1, columns: int = 7, labels: bool = False) -> dict:
    """Files written with plain np.savez exactly as gen_siginj_phys_dataset.py does; returns the arrays."""
    rng = np.random.default_rng(seed)
    arr = {name: rng.normal(size=(n, columns)) for name, n in
           [("mc_cr", 30), ("mc_sr", 10), ("ideal_cr", 31), ("ideal_sr", 11), ("test_bkg", 12), ("test_sig", 4),
            ("fullsup_bkg", 13), ("fullsup_sig", 5)]}
    np.savez(f"{folder}/mc_events.npz", mc_events_cr=arr["mc_cr"], mc_events_sr=arr["mc_sr"])
    np.savez(f"{folder}/ideal_bkg_events.npz", ideal_bkg_events_cr=arr["ideal_cr"], ideal_bkg_events_sr=arr["ideal_sr"])
    np.savez(f"{folder}/test_SR.npz", bkg_events_SR=arr["test_bkg"], sig_events_SR=arr["test_sig"])
    np.savez(f"{folder}/fullsup_SR.npz", bkg_events_SR=arr["fullsup_bkg"], sig_events_SR=arr["fullsup_sig"])
    (folder / f"seed{seed}").mkdir()
    for s in FRACTIONS:
        cr, sr = rng.normal(size=(32, columns)), rng.normal(size=(9, columns))
        extra = {}
        if labels:
            extra = dict(data_labels_cr=(rng.random(32) < 0.2).astype(np.int8),
                         data_labels_sr=(rng.random(9) < 0.2).astype(np.int8))
        np.savez(f"{folder}/seed{seed}/data_{s}.npz", data_events_cr=cr, data_events_sr=sr, sig_percent=s * 0.6,
                 **extra)
        arr[s] = dict(data_cr=cr, data_sr=sr, **extra)
    return arr


def test_data_file_name_matches_the_seed():
    assert data_file_name(0) == "data_0.npz" and data_file_name(0.0) == "data_0.npz"
    assert data_file_name(0.0025) == "data_0.0025.npz" and data_file_name(1.0) == "data_1.npz"
    assert data_file_name(np.float64(0.004)) == "data_0.004.npz"  # not "np.float64(0.004)"
    for s in [0, 0.004, 0.009, 0.013, 0.018, 0.022, 0.027, 0.006, 0.036, 1e-05]:
        assert data_file_name(s) == f"data_{s}.npz"  # the seed's f-string
    with pytest.raises(ValueError):
        data_file_name(-0.1)


def test_seed_study_round_trip(tmp_path):
    arr = write_seed_study(tmp_path)
    assert (tmp_path / "seed1" / "data_0.npz").is_file()
    (tmp_path / "seed1" / "notes.txt").write_text("x")
    (tmp_path / "seed1" / "data_0.0040.npz").write_bytes(b"")  # a name hepgen would never open
    assert available_signal_fractions(tmp_path, 1) == [0.0, 0.0025, 0.004]

    study = read_seed_study(tmp_path, 0.0025, seed=1)
    assert set(study) == {"mc_cr", "mc_sr", "ideal_cr", "ideal_sr", "data_cr", "data_sr", "sig_percent",
                          "test_bkg", "test_sig", "fullsup_bkg", "fullsup_sig"}
    for name in ("mc_cr", "mc_sr", "ideal_cr", "ideal_sr", "test_bkg", "test_sig", "fullsup_bkg", "fullsup_sig"):
        np.testing.assert_array_equal(study[name], arr[name])
    np.testing.assert_array_equal(study["data_cr"], arr[0.0025]["data_cr"])
    np.testing.assert_array_equal(study["data_sr"], arr[0.0025]["data_sr"])
    assert study["sig_percent"].shape == () and float(study["sig_percent"]) == pytest.approx(0.0015)

    zero = read_seed_study(tmp_path, 0.0, seed=1)  # written by the seed as data_0.npz
    np.testing.assert_array_equal(zero["data_sr"], arr[0]["data_sr"])
    assert float(zero["sig_percent"]) == 0.0


def test_seed_study_with_hepgen_labels(tmp_path):
    arr = write_seed_study(tmp_path, labels=True)
    study = read_seed_study(tmp_path, 0.004, seed=1)
    assert study["data_labels_cr"].dtype == np.int8
    np.testing.assert_array_equal(study["data_labels_sr"], arr[0.004]["data_labels_sr"])

    path = tmp_path / "seed1" / "data_0.004.npz"
    path.unlink()
    np.savez(path, data_events_cr=np.zeros((4, 7)), data_events_sr=np.zeros((3, 7)), sig_percent=0.0,
             data_labels_cr=np.zeros(4, np.int8), data_labels_sr=np.zeros(2, np.int8))
    expect(lambda: read_seed_study(tmp_path, 0.004, seed=1), re.escape(str(path)), "'data_labels_sr'", "3 labels")


def test_seed_study_mismatched_columns_name_both_files(tmp_path):
    write_seed_study(tmp_path)
    (tmp_path / "test_SR.npz").unlink()
    np.savez(tmp_path / "test_SR.npz", bkg_events_SR=np.zeros((5, 7)), sig_events_SR=np.zeros((2, 5)))
    expect(lambda: read_seed_study(tmp_path, 0, seed=1),
           re.escape(str(tmp_path / "test_SR.npz")), "'sig_events_SR' has 5 columns",
           re.escape(str(tmp_path / "seed1" / "data_0.npz")), "has 7", "same columns")


def test_seed_study_missing_key_and_files(tmp_path):
    write_seed_study(tmp_path)
    mc = tmp_path / "mc_events.npz"
    mc.unlink()
    expect(lambda: read_seed_study(tmp_path, 0.004, seed=1), re.escape(str(mc)), "not found",
           "hepgen data make ad_toy --out DIR", "Zenodo record 10154213")

    np.savez(mc, mc_events_cr=np.zeros((3, 7)), mc_events_SR=np.zeros((3, 7)))  # a wrong key's case
    expect(lambda: read_seed_study(tmp_path, 0.004, seed=1), re.escape(str(mc)), "'mc_events_sr' missing",
           re.escape("['mc_events_SR', 'mc_events_cr']"))

    expect(lambda: read_seed_study(tmp_path, 0.01, seed=1), "data_0.01.npz", "not found",
           re.escape("[0.0, 0.0025, 0.004]"))
    expect(lambda: read_seed_study(tmp_path, 0.004, seed=2), "seed2", "no such seed folder", r"\['seed1'\]")
    (tmp_path / "seed3").mkdir()
    (tmp_path / "seed3" / "readme.txt").write_text("x")
    expect(lambda: available_signal_fractions(tmp_path, 3), "seed3", "no data_", "readme.txt")


def test_read_npz_arrays_bad_content(tmp_path):
    nan = tmp_path / "nan.npz"
    events = np.zeros((6, 7))
    events[4, 2] = np.nan
    np.savez(nan, x=events)
    expect(lambda: read_npz_arrays(nan, ["x"]), re.escape(str(nan)), "key 'x'", re.escape("column(s) 2 in 1 row"),
           "row 4")

    flat = tmp_path / "flat.npz"
    np.savez(flat, x=np.zeros(6))
    expect(lambda: read_npz_arrays(flat, ["x"]), re.escape(str(flat)), "key 'x'", re.escape("(6,)"), "2-D")

    single = tmp_path / "single.npz"
    np.save(tmp_path / "single.npy", np.zeros((2, 7)))
    (tmp_path / "single.npy").rename(single)
    expect(lambda: read_npz_arrays(single, ["x"]), re.escape(str(single)), "not an .npz")

    good = tmp_path / "good.npz"
    np.savez(good, x=np.ones((100, 7)))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:300])
    expect(lambda: read_npz_arrays(truncated, ["x"]), re.escape(str(truncated)), "truncated")
    assert read_npz_arrays(good, ["x"])["x"].shape == (100, 7)


def test_template_weights_are_checked_against_the_samples(tmp_path):
    from hepgen.io.anomaly import read_template

    path = tmp_path / "template.npz"
    np.savez(path, samples=np.zeros((5, 6)), weights=np.ones(4))
    expect(lambda: read_template(path, 6), re.escape(str(path)), r"'weights' has shape \(4,\), expected \(5,\)")
    other = tmp_path / "negative.npz"
    np.savez(other, samples=np.zeros((3, 6)), weights=np.array([1.0, -1.0, 2.0]))
    expect(lambda: read_template(other, 6), "1 negative or non-finite")
    expect(lambda: read_template(other, 7), "'samples' has 6 columns, the data 7")
    unweighted = tmp_path / "unweighted.npz"
    np.savez(unweighted, samples=np.arange(12.0).reshape(4, 3))
    samples, weights = read_template(unweighted, 3)
    assert samples.shape == (4, 3) and np.array_equal(weights, np.ones(4))
