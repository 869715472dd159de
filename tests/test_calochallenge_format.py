"""The CaloChallenge 2022 shower format: reader, writer, threshold, datamodule and the binnings.

Files are written here with h5py directly, as the challenge's own code writes them (gzip, h5py's
automatic chunking), not with hepgen's writer, so the reader is checked against the layout of
the published files rather than against itself.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from datamodules.calochallenge import CaloChallengeDataModule
from hepgen.io import DataFileError
from hepgen.io.calochallenge import apply_threshold, read_calochallenge, read_incident_energies, write_calochallenge
from hepgen.physics.calochallenge import load_binning, read_binning_xml

XML_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "calochallenge"
XML_FILES = {
    "1-photons": "binning_dataset_1_photons.xml",
    "1-pions": "binning_dataset_1_pions.xml",
    "2": "binning_dataset_2.xml",
    "3": "binning_dataset_3.xml",
}

# The published geometry (CaloChallenge homepage and arXiv:2410.21611): (layer id, n_alpha, n_r)
PUBLISHED_LAYERS = {
    "1-photons": [(0, 1, 8), (1, 10, 16), (2, 10, 19), (3, 1, 5), (12, 1, 5)],
    "1-pions": [(0, 1, 8), (1, 10, 10), (2, 10, 10), (3, 1, 5), (12, 10, 15), (13, 10, 16), (14, 1, 10)],
    "2": [(i, 16, 9) for i in range(45)],
    "3": [(i, 50, 18) for i in range(45)],
}
PUBLISHED_VOXELS = {"1-photons": 368, "1-pions": 533, "2": 6480, "3": 40500}
DOI = {"1-photons": "8099322", "1-pions": "8099322", "2": "6366270", "3": "6366323"}


# ----------------------------------------------------------------------------- helpers
def events(dataset: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 1) MeV energies drawn as the dataset draws them and (n, V) sparse float64 showers, MeV."""
    rng = np.random.default_rng(seed)
    if dataset.startswith("1"):
        energies = 2.0 ** rng.integers(8, 23, size=(n, 1))
    else:
        energies = 10.0 ** rng.uniform(3, 6, size=(n, 1))
    voxels = PUBLISHED_VOXELS[dataset]
    showers = rng.exponential(50.0, size=(n, voxels)) * (rng.random((n, voxels)) < 0.3)
    return energies, showers


def write_raw(path: Path, energies, showers, dtype=np.float32, chunk_rows: int | None = None) -> Path:
    """Write the two datasets with h5py as given, bypassing hepgen's writer and its checks.

    gzip with h5py's automatic chunks, as the challenge's code writes files, or chunks of
    ``chunk_rows`` whole events.
    """
    with h5py.File(path, "w") as f:
        for key, value in (("incident_energies", energies), ("showers", showers)):
            value = np.asarray(value, dtype=dtype)
            if value.size == 0 or value.ndim == 0:
                f.create_dataset(key, data=value)
                continue
            chunks = True if chunk_rows is None else (min(chunk_rows, len(value)), *value.shape[1:])
            f.create_dataset(key, data=value, compression="gzip", chunks=chunks)
    return path


def raises(path: Path, *words: str, dataset: str = "1-photons", **kwargs) -> str:
    """Read ``path``; assert a DataFileError naming the file and every word; return the message."""
    with pytest.raises(DataFileError) as info:
        read_calochallenge(path, load_binning(dataset), **kwargs)
    message = str(info.value)
    for word in (str(path), *words):
        assert word in message, f"{word!r} not in {message!r}"
    return message


@pytest.fixture
def xml_dir() -> Path:
    """The real binning files in ``../shared/data`` beside the checkout (never copied into the
    repository). A fresh clone elsewhere (CI) has no such folder; the parser is then still tested
    on XML written in the same layout (``test_binning_xml_in_the_published_layout_is_read``)."""
    if not XML_DIR.is_dir():
        pytest.skip(f"{XML_DIR} is not beside this checkout")
    missing = [name for name in XML_FILES.values() if not (XML_DIR / name).is_file()]
    if missing:
        pytest.fail(f"the CaloChallenge binning files {missing} are missing from {XML_DIR}")
    return XML_DIR


def test_binning_xml_in_the_published_layout_is_read(tmp_path):
    """A binning file as the challenge writes it (a <Bin> per particle, every layer listed, empty
    ones with r_edges="0") gives the built-in binning back; a malformed layer is a named error."""
    binning = load_binning("1-pions")
    by_id = {layer.layer_id: layer for layer in binning.layers}
    lines = ['<Bins>', '   <Bin pid="211" etaMin="0" etaMax="80" name="pion">']
    for layer_id in range(24):
        layer = by_id.get(layer_id)
        edges = ",".join(f"{r:g}" for r in layer.r_edges_mm) if layer else "0"
        lines.append(f'      <Layer id="{layer_id}"  r_edges="{edges}" n_bin_alpha="{layer.n_alpha if layer else 1}" />')
    lines += ['   </Bin>', '</Bins>']
    path = tmp_path / "binning_dataset_1_pions.xml"
    path.write_text("\n".join(lines) + "\n")
    assert read_binning_xml(path, "1-pions") == binning
    path.write_text(path.read_text().replace('n_bin_alpha="10"', 'n_bin_alpha="ten"', 1))
    with pytest.raises(DataFileError, match="binning_dataset_1_pions.xml"):
        read_binning_xml(path, "1-pions")


# ----------------------------------------------------------------------------- reading and writing
@pytest.mark.parametrize(
    "dataset, dtype, chunk_rows",
    [
        ("1-photons", np.float32, None),
        ("1-pions", np.float32, None),
        ("2", np.float32, None),
        ("3", np.float32, None),
        ("1-photons", np.float64, None),
        ("2", np.float64, 3),
        ("1-pions", np.float32, 5),
    ],
)
def test_h5py_written_files_read_back_exactly(tmp_path, dataset, dtype, chunk_rows):
    energies, showers = events(dataset, 23 if dataset != "3" else 5)
    path = write_raw(tmp_path / "showers.hdf5", energies, showers, dtype=dtype, chunk_rows=chunk_rows)
    out = read_calochallenge(path, load_binning(dataset))
    assert out["incident_energies"].dtype == np.float32 and out["showers"].dtype == np.float32
    # float64 files arrive as float32, rounded to nearest like numpy's cast
    np.testing.assert_array_equal(out["incident_energies"], energies.astype(dtype).astype(np.float32))
    np.testing.assert_array_equal(out["showers"], showers.astype(dtype).astype(np.float32))


def test_reading_in_small_blocks_equals_one_read(tmp_path, monkeypatch):
    energies, showers = events("1-pions", 50)
    path = write_raw(tmp_path / "s.hdf5", energies, showers, chunk_rows=4)
    monkeypatch.setattr("hepgen.io.calochallenge.BLOCK_BYTES", 533 * 4 * 6)  # 8-row blocks, unaligned to 50
    out = read_calochallenge(path, load_binning("1-pions"))
    np.testing.assert_array_equal(out["showers"], showers.astype(np.float32))


def test_max_events_reads_the_first_events(tmp_path):
    energies, showers = events("1-photons", 30)
    path = write_raw(tmp_path / "s.hdf5", energies, showers)
    out = read_calochallenge(path, load_binning("1-photons"), max_events=7)
    np.testing.assert_array_equal(out["showers"], showers[:7].astype(np.float32))
    np.testing.assert_array_equal(read_incident_energies(path, load_binning("1-photons"), 7), energies[:7])


@pytest.mark.parametrize("dataset", ["1-photons", "2"])
def test_writer_round_trips_exactly_in_the_published_layout(tmp_path, dataset):
    energies, showers = events(dataset, 40)
    path = write_calochallenge(tmp_path / "out.hdf5", energies, torch.from_numpy(showers), load_binning(dataset),
                               attrs={"hepgen_made": "calochallenge"})  # fmt: skip
    out = read_calochallenge(path, load_binning(dataset))
    np.testing.assert_array_equal(out["incident_energies"], energies.astype(np.float32))
    np.testing.assert_array_equal(out["showers"], showers.astype(np.float32))
    with h5py.File(path, "r") as f:
        assert sorted(f.keys()) == ["incident_energies", "showers"]
        assert f["showers"].dtype == np.float32 and f["showers"].compression == "gzip"
        assert f["showers"].chunks[1] == PUBLISHED_VOXELS[dataset]  # chunks hold whole events
        assert f.attrs["hepgen_made"] == "calochallenge"
    assert [p.name for p in tmp_path.iterdir()] == ["out.hdf5"]  # no temporary file left


def test_writer_never_overwrites(tmp_path):
    energies, showers = events("1-photons", 5)
    path = write_calochallenge(tmp_path / "out.hdf5", energies, showers, load_binning("1-photons"))
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="never overwrites"):
        write_calochallenge(path, energies * 2, showers, load_binning("1-photons"))
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "spoil, words",
    [
        (lambda e, s: (e / 1000.0, s), ["incident_energies", "GeV", "MeV"]),
        (lambda e, s: (e, s[:, :-1]), ["showers", "367", "368"]),
        (lambda e, s: (e, np.where(np.arange(len(s))[:, None] == 2, np.nan, s)), ["showers", "NaN", "row 2"]),
    ],
    ids=["gev", "voxels", "nan"],
)
def test_writer_refuses_what_the_reader_would_refuse_and_writes_nothing(tmp_path, spoil, words):
    energies, showers = spoil(*events("1-photons", 6))
    path = tmp_path / "out.hdf5"
    with pytest.raises(DataFileError) as info:
        write_calochallenge(path, energies, showers, load_binning("1-photons"))
    for word in (str(path), *words):
        assert word in str(info.value)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- bad files
@pytest.mark.parametrize("dataset", list(DOI))
def test_missing_file_names_file_doi_and_made_source(tmp_path, dataset):
    raises(tmp_path / "dataset.hdf5", "not found", f"10.5281/zenodo.{DOI[dataset]}", "source: made", dataset=dataset)


def test_text_file_is_not_hdf5(tmp_path):
    path = tmp_path / "dataset_1_photons_1.hdf5"
    path.write_text("incident_energies,showers\n1,2\n")
    raises(path, "not a readable HDF5")


def test_truncated_file_says_truncated_or_corrupt(tmp_path):
    energies, showers = events("1-pions", 400)
    path = write_raw(tmp_path / "s.hdf5", energies, showers)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    message = raises(path, dataset="1-pions")
    assert "truncated" in message or "corrupt" in message


def test_corrupt_chunk_names_key_and_rows(tmp_path):
    energies, showers = events("1-pions", 40)
    path = write_raw(tmp_path / "s.hdf5", energies, showers, chunk_rows=10)
    with h5py.File(path, "r") as f:
        chunk = f["showers"].id.get_chunk_info(2)  # rows 20..29
    with open(path, "r+b") as f:  # the file keeps its size: only the compressed bytes are spoilt
        f.seek(chunk.byte_offset + 16)
        f.write(b"\xff" * 64)
    message = raises(path, "'showers'", "cannot be read", dataset="1-pions")
    assert "truncated or corrupt" in message


@pytest.mark.parametrize("missing", ["incident_energies", "showers"])
def test_missing_key_is_named(tmp_path, missing):
    path = write_raw(tmp_path / "s.hdf5", *events("1-photons", 4))
    with h5py.File(path, "a") as f:
        del f[missing]
    raises(path, f"'{missing}'", "missing")


def test_energies_of_rank_one_name_key_and_expected_shape(tmp_path):
    energies, showers = events("1-photons", 4)
    path = write_raw(tmp_path / "s.hdf5", energies[:, 0], showers)
    raises(path, "'incident_energies'", "(4,)", "(N, 1)")


def test_showers_as_layer_images_name_key_and_expected_shape(tmp_path):
    energies, showers = events("2", 4)
    path = write_raw(tmp_path / "s.hdf5", energies, showers.reshape(4, 45, 144))
    raises(path, "'showers'", "(4, 45, 144)", "(N, 6480)", dataset="2")


def test_voxel_count_of_another_dataset_is_named(tmp_path):
    path = write_raw(tmp_path / "s.hdf5", *events("1-pions", 4))
    raises(path, "'showers'", "found 533", "expected 368", "fits dataset 1-pions")


def test_voxel_count_of_no_dataset_names_found_and_expected(tmp_path):
    energies, showers = events("1-photons", 4)
    path = write_raw(tmp_path / "s.hdf5", energies, np.zeros((4, 400)))
    message = raises(path, "'showers'", "found 400", "expected 368")
    assert "fits dataset" not in message


def test_different_event_counts_name_both_keys(tmp_path):
    energies, showers = events("1-photons", 10)
    path = write_raw(tmp_path / "s.hdf5", energies, showers[:9])
    raises(path, "'incident_energies' holds 10", "'showers' holds 9")


def test_file_without_events(tmp_path):
    path = write_raw(tmp_path / "s.hdf5", np.zeros((0, 1)), np.zeros((0, 368)))
    raises(path, "'incident_energies'", "'showers'", "no events")


def test_integer_dtype_is_named(tmp_path):
    energies, showers = events("1-photons", 4)
    path = write_raw(tmp_path / "s.hdf5", energies, showers, dtype=np.int32)
    raises(path, "'incident_energies'", "int32", "float32")


def test_nan_and_inf_in_showers_name_rows_and_first_row(tmp_path):
    energies, showers = events("1-photons", 12)
    showers[3, [5, 9, 200]] = np.nan  # three values, one row
    showers[7, 0] = np.inf
    showers[10, 367] = -np.inf
    path = write_raw(tmp_path / "s.hdf5", energies, showers)
    raises(path, "'showers'", "NaN/inf", "in 3 row(s)", "first at row 3")


def test_nan_beyond_the_first_block_is_found(tmp_path, monkeypatch):
    energies, showers = events("1-photons", 40)
    showers[33, 100] = np.nan
    path = write_raw(tmp_path / "s.hdf5", energies, showers)
    monkeypatch.setattr("hepgen.io.calochallenge.BLOCK_BYTES", 368 * 4 * 10)
    raises(path, "'showers'", "in 1 row(s)", "first at row 33")


def test_nan_incident_energy_is_named(tmp_path):
    energies, showers = events("2", 6)
    energies[4, 0] = np.nan
    raises(write_raw(tmp_path / "s.hdf5", energies, showers), "'incident_energies'", "NaN/inf", "row 4", dataset="2")


def test_negative_incident_energy_is_named(tmp_path):
    energies, showers = events("1-photons", 6)
    energies[2, 0] = -1024.0
    raises(write_raw(tmp_path / "s.hdf5", energies, showers), "'incident_energies'", "negative", "row 2")


def test_negative_voxel_energy_is_named(tmp_path):
    energies, showers = events("1-pions", 6)
    showers[5, 17] = -3.0
    raises(write_raw(tmp_path / "s.hdf5", energies, showers), "'showers'", "negative", "1 row(s)", "row 5",
           dataset="1-pions")  # fmt: skip


@pytest.mark.parametrize("dataset", ["1-photons", "2", "3"])
def test_energies_in_gev_are_recognised(tmp_path, dataset):
    energies, showers = events(dataset, 5)
    path = write_raw(tmp_path / "s.hdf5", energies / 1000.0, showers)
    raises(path, "'incident_energies'", "GeV", "stores incident energies in MeV", dataset=dataset)


def test_energies_outside_the_range_name_count_and_first_row(tmp_path):
    energies, showers = events("2", 8)
    energies[[4, 6], 0] = 5.0e7  # 50 TeV, far beyond dataset 2's 1 TeV
    message = raises(write_raw(tmp_path / "s.hdf5", energies, showers), "'incident_energies'", "2 energies",
                     "row 4", "1000 .. 1e+06 MeV", dataset="2")  # fmt: skip
    assert "GeV" not in message


def test_dataset_1_energy_below_256_mev_is_refused(tmp_path):
    energies, showers = events("1-pions", 8)
    energies[1, 0] = 100.0
    raises(write_raw(tmp_path / "s.hdf5", energies, showers), "'incident_energies'", "row 1", dataset="1-pions")


# ----------------------------------------------------------------------------- threshold
def test_threshold_zeroes_exactly_the_voxels_below_it():
    values = np.array([[0.0, 0.5, 0.999, 1.0, 1.5, -2.0, 300.0]], dtype=np.float32)
    expected = np.array([[0.0, 0.0, 0.0, 1.0, 1.5, 0.0, 300.0]], dtype=np.float32)
    out = apply_threshold(values, 1.0)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.float32 and values[0, 1] == 0.5  # a new array; the input is kept
    tensor = torch.from_numpy(values.copy())
    out_t = apply_threshold(tensor, 1.0)
    assert isinstance(out_t, torch.Tensor) and torch.equal(out_t, torch.from_numpy(expected))
    assert tensor[0, 1] == 0.5


def test_threshold_of_datasets_2_and_3_is_15_keV():
    for dataset in ("2", "3"):
        threshold = load_binning(dataset).threshold_mev
        assert threshold == pytest.approx(0.5e-3 / 0.033, rel=1e-3)
        out = apply_threshold(np.array([0.0150, 0.0152, 0.5]), threshold)
        np.testing.assert_array_equal(out, [0.0, 0.0152, 0.5])


def test_threshold_while_reading_equals_threshold_after(tmp_path, monkeypatch):
    energies, showers = events("1-photons", 30)
    showers[showers > 0] -= 49.0  # many voxels in (0, 1) MeV and some negative ... clip those at 0
    showers = np.clip(showers, 0, None)
    path = write_raw(tmp_path / "s.hdf5", energies, showers)
    monkeypatch.setattr("hepgen.io.calochallenge.BLOCK_BYTES", 368 * 4 * 7)
    out = read_calochallenge(path, load_binning("1-photons"), threshold_mev=1.0)["showers"]
    below = (showers > 0) & (showers < 1.0)
    assert below.sum() > 10
    np.testing.assert_array_equal(out[below], 0.0)
    np.testing.assert_array_equal(out[~below], showers[~below].astype(np.float32))


# ----------------------------------------------------------------------------- the datamodule
def indexed_file(path: Path, dataset: str, n: int) -> Path:
    """Voxel v of event i holds 1000 i + v + 1 MeV (>= 1 MeV, the threshold); event i has
    incident energy E_min + i MeV (E_min: 256 MeV for dataset 1, 1 GeV for 2 and 3)."""
    voxels = PUBLISHED_VOXELS[dataset]
    showers = 1000.0 * np.arange(n)[:, None] + np.arange(voxels)[None, :] + 1.0
    e_min = 256.0 if dataset.startswith("1") else 1000.0
    energies = e_min + np.arange(n, dtype=np.float64)[:, None]
    return write_raw(path, energies, showers)


def all_batches(dm: CaloChallengeDataModule) -> list[dict]:
    return [b for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()) for b in loader]


def test_datamodule_batches_view_the_flat_file_layer_by_layer(tmp_path):
    n = 40
    indexed_file(tmp_path / "dataset_1_pions_1.hdf5", "1-pions", n)
    dm = CaloChallengeDataModule(dataset="1-pions", data_dir=str(tmp_path), batch_size=8)
    dm.prepare_data()
    dm.setup("fit")
    layer_keys = [f"layer_{i}" for i, _, _ in PUBLISHED_LAYERS["1-pions"]]
    assert list(dm.layer_shapes) == layer_keys
    assert list(dm.layer_shapes.values()) == [(a, r) for _, a, r in PUBLISHED_LAYERS["1-pions"]]
    assert dm.num_particles == 1 and dm.binning.n_voxels == 533
    seen = []
    for batch in all_batches(dm):
        assert set(batch) == {"energy", "particle", *layer_keys}
        b = len(batch["energy"])
        assert batch["energy"].shape == (b, 1) and batch["energy"].dtype == torch.float32
        assert batch["particle"].dtype == torch.int64 and not batch["particle"].any()
        event = torch.round(batch["energy"][:, 0] * 1000.0 - 256.0).long()  # GeV back to MeV
        torch.testing.assert_close(batch["energy"][:, 0], (256.0 + event.double()).float() / 1000.0)
        offset = 0  # voxels of the layers before, from the published table
        for (layer_id, n_alpha, n_r) in PUBLISHED_LAYERS["1-pions"]:
            x = batch[f"layer_{layer_id}"]
            assert x.shape == (b, n_alpha, n_r)
            a = torch.arange(n_alpha)[None, :, None]
            r = torch.arange(n_r)[None, None, :]
            expected = 1000.0 * event[:, None, None] + offset + a * n_r + r + 1.0
            torch.testing.assert_close(x, expected.float(), rtol=0, atol=0)
            offset += n_alpha * n_r
        assert offset == 533
        seen.extend(event.tolist())
    assert sorted(seen) == list(range(n))


def test_datamodule_thresholds_unless_told_not_to(tmp_path):
    energies, showers = events("1-photons", 20)
    showers[:, :5] = 0.5  # below dataset 1's 1 MeV readout threshold
    write_raw(tmp_path / "dataset_1_photons_1.hdf5", energies, showers)
    for threshold, expected in ((True, 0.0), (False, 0.5)):
        dm = CaloChallengeDataModule(data_dir=str(tmp_path), threshold=threshold, val_fraction=0, test_fraction=0)
        layer_0 = dm.training_sample()["layer_0"]  # layer 0 is 1 x 8: its first 5 voxels
        assert layer_0.shape == (20, 1, 8)
        assert (layer_0[:, 0, :5] == expected).all()


def test_datamodule_reads_a_named_file_with_a_real_binning_and_max_events(tmp_path, xml_dir):
    indexed_file(tmp_path / "dataset_2_2.hdf5", "2", 30)
    dm = CaloChallengeDataModule(dataset="2", data_dir=str(tmp_path), file_name="dataset_2_2.hdf5",
                                 binning_file=str(xml_dir / XML_FILES["2"]), max_events=12,
                                 val_fraction=0, test_fraction=0)  # fmt: skip
    dm.prepare_data()
    sample = dm.training_sample()
    assert len(sample["energy"]) == 12 and len(dm.layer_shapes) == 45
    assert sample["layer_44"].shape == (12, 16, 9)
    torch.testing.assert_close(sample["layer_44"][:, 0, 0], 1000.0 * torch.arange(12.0) + 44 * 144 + 1.0)


def test_datamodule_passes_file_errors_on(tmp_path):
    energies, showers = events("3", 3)
    write_raw(tmp_path / "dataset_3_1.hdf5", energies / 1000.0, showers)
    dm = CaloChallengeDataModule(dataset="3", data_dir=str(tmp_path))
    dm.prepare_data()
    with pytest.raises(DataFileError, match="GeV"):
        dm.setup("fit")


def test_real_source_missing_file_names_file_and_doi(tmp_path):
    dm = CaloChallengeDataModule(dataset="2", data_dir=str(tmp_path))
    with pytest.raises(DataFileError) as info:
        dm.prepare_data()
    for word in ("dataset_2_1.hdf5", "10.5281/zenodo.6366270", "source: made"):
        assert word in str(info.value)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError, match="1-photons, 1-pions, 2, 3"):
        CaloChallengeDataModule(dataset="4")


def test_made_source_refuses_foreign_and_mismatched_files(tmp_path):
    energies, showers = events("1-photons", 10)
    path = write_calochallenge(tmp_path / "dataset_1_photons_1.hdf5", energies, showers, load_binning("1-photons"))
    before = path.read_bytes()
    dm = CaloChallengeDataModule(data_dir=str(tmp_path), source="made", made_events=10, made_seed=3)
    with pytest.raises(DataFileError, match="not hepgen-made"):
        dm.prepare_data()
    assert path.read_bytes() == before
    path.unlink()
    made = {"hepgen_made": "calochallenge", "dataset": "1-photons", "events": 10, "seed": 4}
    write_calochallenge(path, energies, showers, load_binning("1-photons"), attrs=made)
    with pytest.raises(DataFileError, match=r"\('1-photons', 10, 4\).*\('1-photons', 10, 3\)"):
        dm.prepare_data()


def test_made_source_accepts_its_own_file_without_remaking(tmp_path, monkeypatch):
    energies, showers = events("1-photons", 10)
    made = {"hepgen_made": "calochallenge", "dataset": "1-photons", "events": 10, "seed": 3}
    path = write_calochallenge(tmp_path / "dataset_1_photons_1.hdf5", energies, showers, load_binning("1-photons"),
                               attrs=made)  # fmt: skip
    before = path.read_bytes()
    dm = CaloChallengeDataModule(data_dir=str(tmp_path), source="made", made_events=10, made_seed=3,
                                 val_fraction=0, test_fraction=0)  # fmt: skip
    monkeypatch.setattr(dm, "make_files", lambda missing: pytest.fail(f"remade {missing}"))
    dm.prepare_data()
    assert path.read_bytes() == before
    np.testing.assert_array_equal(dm.training_sample()["energy"].numpy(), (energies / 1000.0).astype(np.float32))


def test_made_source_makes_the_missing_file_with_the_configured_dataset_events_and_seed(tmp_path, monkeypatch):
    calls, draw = [], events  # the maker's keyword ``events`` hides this module's helper

    def make_calochallenge(path, dataset, events, seed):  # stands in for hepgen.synth's maker
        calls.append((Path(path), dataset, events, seed))
        made = {"hepgen_made": "calochallenge", "dataset": dataset, "events": events, "seed": seed}
        write_calochallenge(path, *draw(dataset, events, seed), load_binning(dataset), attrs=made)

    maker = SimpleNamespace(make_calochallenge=make_calochallenge)
    monkeypatch.setitem(sys.modules, "hepgen.synth.calochallenge", maker)
    folder = tmp_path / "made"
    dm = CaloChallengeDataModule(dataset="2", data_dir=str(folder), source="made", made_events=12, made_seed=7,
                                 val_fraction=0.25, test_fraction=0.25)  # fmt: skip
    dm.prepare_data()
    dm.prepare_data()  # the second time the file is there: checked, not remade
    assert calls == [(folder / "dataset_2_1.hdf5", "2", 12, 7)]
    dm.setup("fit")
    assert dm.split_sizes == {"train": 6, "val": 3, "test": 3}


def test_predict_energies_are_drawn_as_the_dataset_draws_them(tmp_path):
    ds1 = CaloChallengeDataModule(dataset="1-pions", predict_events=3000, predict_seed=5).predict_energies()
    allowed = {2.0**k / 1000.0 for k in range(8, 23)}  # GeV
    values = set(np.unique(ds1).tolist())
    assert values <= {float(np.float32(v)) for v in allowed} and len(values) == 15
    ds2 = CaloChallengeDataModule(dataset="2", predict_events=30_000).predict_energies()[:, 0]
    assert ds2.shape == (30_000,) and ds2.min() >= 1.0 and ds2.max() <= 1000.0
    decades = np.histogram(np.log10(ds2), bins=[0, 1, 2, 3])[0] / len(ds2)
    np.testing.assert_allclose(decades, 1 / 3, atol=0.02)  # log-uniform: a third per decade


def test_predict_energies_from_a_file_and_the_predict_batches(tmp_path):
    energies, showers = events("1-photons", 30, seed=9)
    path = write_raw(tmp_path / "eval.hdf5", energies, showers)
    dm = CaloChallengeDataModule(predict_energy_file=str(path), predict_events=25, batch_size=10)
    np.testing.assert_array_equal(dm.predict_energies(), (energies[:25] / 1000.0).astype(np.float32))
    batches = list(dm.predict_dataloader())
    assert [len(b["energy"]) for b in batches] == [10, 10, 5]
    assert set(batches[0]) == {"energy", "particle"} and batches[0]["particle"].dtype == torch.int64


# ----------------------------------------------------------------------------- the binnings
@pytest.mark.parametrize("dataset", list(XML_FILES))
def test_built_in_binnings_match_the_published_files(xml_dir, dataset):
    built_in = load_binning(dataset)
    from_xml = read_binning_xml(xml_dir / XML_FILES[dataset], dataset)
    assert from_xml.layers == built_in.layers
    assert built_in.n_voxels == PUBLISHED_VOXELS[dataset]
    assert [(layer.layer_id, layer.n_alpha, layer.n_r) for layer in built_in.layers] == PUBLISHED_LAYERS[dataset]
    assert built_in.layer_slices[-1].stop == PUBLISHED_VOXELS[dataset]


def test_energy_ranges_of_the_datasets():
    for dataset in ("1-photons", "1-pions"):
        binning = load_binning(dataset)
        assert binning.discrete_energies_mev == tuple(2.0**k for k in range(8, 23))
        assert binning.threshold_mev == 1.0
    for dataset in ("2", "3"):
        assert load_binning(dataset).energy_range_mev == (1.0e3, 1.0e6)
        assert not load_binning(dataset).discrete_energies_mev
    assert math.isclose(load_binning("1-photons").energy_range_mev[1], 4194304.0)
