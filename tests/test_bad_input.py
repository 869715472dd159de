"""Bad input gets one clear error that names the file, key or option and says what to do.

Each case writes a small CaloGAN-format file by hand (h5py on top of made showers), breaks one
thing in it, and checks both the exception type and that the message points at the culprit.
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from datamodules import CaloGANDataModule, CSVSeriesDataModule
from hepgen.io import DataFileError
from hepgen.io.calogan import KEY_SHAPES, read_calogan, write_calogan
from hepgen.physics.calo_geometry import PARTICLES
from hepgen.synth.calogan import simulate_showers
from tests.conftest import ROOT

N_EVENTS = 50
DOI = "10.17632/pvn3xc3wy5.1"


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def showers() -> dict[str, np.ndarray]:
    """50 made e+ showers in the exact CaloGAN layout (simulated once for the module)."""
    return simulate_showers(N_EVENTS, seed=1)


def fresh(showers: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A private copy that a test may break without touching the module fixture."""
    return {key: np.array(value, copy=True) for key, value in showers.items()}


def write_h5(path: Path, data: dict[str, np.ndarray], attrs: dict | None = None) -> Path:
    """Write ``data`` as-is, one dataset per key, bypassing write_calogan's own checks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            f.create_dataset(key, data=np.asarray(value, dtype=np.float32))
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
    return path


def read_via_datamodule(path: Path) -> None:
    """Read a file the way training does: ``source: real``, prepare_data, then setup('fit')."""
    dm = CaloGANDataModule(data_dir=str(path.parent), particles=[path.stem], predict_particle=path.stem, source="real")
    dm.prepare_data()
    dm.setup("fit")


def read_directly(path: Path) -> None:
    read_calogan(path)


#: Every file check is exercised both on the reader and through the datamodule that uses it.
READERS = pytest.mark.parametrize("read", [read_directly, read_via_datamodule], ids=["read_calogan", "datamodule"])


def named(path: Path) -> str:
    return re.escape(str(path))


# --- 1. real source, file missing ----------------------------------------------------------------


def test_real_source_missing_file_names_file_doi_and_made_option(tmp_path):
    dm = CaloGANDataModule(data_dir=str(tmp_path), source="real")
    with pytest.raises(DataFileError, match=named(tmp_path / "eplus.hdf5")) as info:
        dm.prepare_data()
    message = str(info.value)
    assert DOI in message
    assert "source: made" in message
    assert not (tmp_path / "eplus.hdf5").exists(), "made data must never stand in for a missing real file"


def test_read_calogan_missing_file_names_file_and_doi(tmp_path):
    path = tmp_path / "gamma.hdf5"
    with pytest.raises(DataFileError, match=named(path)) as info:
        read_calogan(path)
    assert DOI in str(info.value)


# --- 2. a key missing ------------------------------------------------------------------------------


@READERS
def test_missing_key_names_key_and_file(tmp_path, showers, read):
    data = fresh(showers)
    del data["layer_1"]
    path = write_h5(tmp_path / "eplus.hdf5", data)
    with pytest.raises(DataFileError, match=named(path)) as info:
        read(path)
    assert "layer_1" in str(info.value)


# --- 3. wrong shape ------------------------------------------------------------------------------


@READERS
def test_wrong_shape_names_key_and_expected_shape(tmp_path, showers, read):
    data = fresh(showers)
    data["layer_2"] = data["layer_2"].transpose(0, 2, 1)  # (N, 6, 12) instead of (N, 12, 6)
    path = write_h5(tmp_path / "eplus.hdf5", data)
    with pytest.raises(DataFileError, match=named(path)) as info:
        read(path)
    message = str(info.value)
    assert "layer_2" in message
    assert "(N, 12, 6)" in message, message
    assert f"({N_EVENTS}, 6, 12)" in message, message


# --- 4. NaN / inf --------------------------------------------------------------------------------


@READERS
def test_nan_in_layer_names_key_count_and_first_event(tmp_path, showers, read):
    data = fresh(showers)
    data["layer_1"][7, 3, 4] = np.nan
    data["layer_1"][7, 5, 5] = np.nan
    data["layer_1"][31, 0, 0] = np.nan
    path = write_h5(tmp_path / "eplus.hdf5", data)
    with pytest.raises(DataFileError, match=named(path)) as info:
        read(path)
    message = str(info.value)
    assert "layer_1" in message
    assert re.search(r"\b3 NaN", message), message
    assert re.search(r"event 7\b", message), message


@READERS
def test_inf_in_energy_names_key_count_and_first_event(tmp_path, showers, read):
    data = fresh(showers)
    data["energy"][12, 0] = np.inf
    path = write_h5(tmp_path / "eplus.hdf5", data)
    with pytest.raises(DataFileError, match=named(path)) as info:
        read(path)
    message = str(info.value)
    assert "'energy'" in message
    assert re.search(r"\b1 NaN/inf", message), message
    assert re.search(r"event 12\b", message), message


# --- 5. an empty split ---------------------------------------------------------------------------


def test_empty_val_split_names_split_and_fractions(tmp_path):
    dm = CaloGANDataModule(
        data_dir=str(tmp_path), source="made", made_events=5, val_fraction=0.1, test_fraction=0.0
    )
    dm.prepare_data()
    assert (tmp_path / "eplus.hdf5").is_file()
    with pytest.raises(DataFileError, match=named(tmp_path)) as info:
        dm.setup("fit")
    message = str(info.value)
    assert "'val'" in message
    assert "val_fraction=0.1" in message
    assert "test_fraction=0.0" in message
    assert "5 events" in message


# --- 6. truncated HDF5 ---------------------------------------------------------------------------


@READERS
def test_truncated_file_names_file_and_says_truncated(tmp_path, showers, read):
    path = write_calogan(tmp_path / "eplus.hdf5", fresh(showers))
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(DataFileError, match=named(path)) as info:
        read(path)
    assert re.search(r"truncated|corrupt", str(info.value)), str(info.value)


# --- 7. not an HDF5 file -------------------------------------------------------------------------


@READERS
def test_text_file_named_hdf5_names_file(tmp_path, read):
    path = tmp_path / "eplus.hdf5"
    path.write_text("energy,layer_0\n1.0,2.0\n")
    with pytest.raises(DataFileError, match=named(path)) as info:
        read(path)
    assert "HDF5" in str(info.value)


# --- 8. keys of different lengths ----------------------------------------------------------------


@READERS
def test_keys_of_different_lengths_name_file_and_lengths(tmp_path, showers, read):
    data = fresh(showers)
    data["layer_0"] = data["layer_0"][:40]
    path = write_h5(tmp_path / "eplus.hdf5", data)
    with pytest.raises(DataFileError, match=named(path)) as info:
        read(path)
    message = str(info.value)
    assert "'layer_0': 40" in message, message
    assert f"'energy': {N_EVENTS}" in message, message


# --- 9. source: made over a foreign file ---------------------------------------------------------


def test_made_source_refuses_foreign_file_and_leaves_it_untouched(tmp_path, showers):
    path = write_calogan(tmp_path / "eplus.hdf5", fresh(showers))  # valid format, no hepgen_made attr
    before = path.read_bytes()
    dm = CaloGANDataModule(data_dir=str(tmp_path), source="made", made_events=20)
    with pytest.raises(DataFileError, match=named(path)) as info:
        dm.prepare_data()
    message = str(info.value)
    assert "source: made" in message
    assert "source: real" in message
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eplus.hdf5"]


def test_made_source_refuses_unreadable_file_and_leaves_it_untouched(tmp_path):
    path = tmp_path / "eplus.hdf5"
    path.write_text("not hdf5\n")
    before = path.read_bytes()
    dm = CaloGANDataModule(data_dir=str(tmp_path), source="made", made_events=20)
    with pytest.raises(DataFileError, match=named(path)):
        dm.prepare_data()
    assert path.read_bytes() == before


# --- 10. unknown config options through the CLI --------------------------------------------------


def tiny_yaml(tmp_path: Path, extra: str = "") -> Path:
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model:\n"
        "  class_path: CaloVAE\n"
        "  init_args:\n"
        "    latent_dim: 4\n"
        "    hidden: 32\n"
        "    branch: 16\n"
        "data:\n"
        "  class_path: CaloGANDataModule\n"
        "  init_args:\n"
        f"    data_dir: {tmp_path / 'data'}\n"
        "    source: made\n"
        "    made_events: 300\n"
        "    batch_size: 64\n"
        "trainer:\n"
        "  max_epochs: 1\n"
        "  logger: false\n"
        "  enable_progress_bar: false\n" + extra
    )
    return config


def run_cli_expecting_exit(args: list[str], capsys, monkeypatch) -> str:
    from hepgen.cli import main

    monkeypatch.setattr("sys.argv", ["hepgen"])  # only ``args`` reach the parser, not pytest's own
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code not in (0, None), f"exit code {info.value.code!r}"
    return capsys.readouterr().err


def test_cli_unknown_model_option_is_named(tmp_path, capsys, monkeypatch):
    config = tiny_yaml(tmp_path)
    err = run_cli_expecting_exit(
        ["fit", "-c", str(config), "--model.init_args.no_such_option", "3", "--run.root", str(tmp_path / "runs")],
        capsys,
        monkeypatch,
    )
    assert "no_such_option" in err, err
    assert not (tmp_path / "data").exists(), "a bad option must fail before any data is made"
    assert not (tmp_path / "runs").exists(), "a bad option must fail before a run directory is created"


def test_cli_sharing_components_not_one_per_layer_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HEPGEN_DEBUG", raising=False)
    config = tiny_yaml(tmp_path)
    args = ["fit", "-c", str(config), "--model.init_args.sharing", "lognormal",
            "--model.init_args.sharing_components", "[2, 1]", "--run.root", str(tmp_path / "runs")]  # fmt: skip
    err = run_cli_expecting_exit(args, capsys, monkeypatch)
    assert err.strip().splitlines() == [
        "hepgen: error: model sharing_components=[2, 1]: give one number, or one per layer "
        "(3: layer_0, layer_1, layer_2)."
    ], err
    assert not (tmp_path / "runs").exists()


def test_cli_unknown_top_level_yaml_key_is_named(tmp_path, capsys, monkeypatch):
    config = tiny_yaml(tmp_path, extra="trainerr:\n  max_epochs: 2\n")
    err = run_cli_expecting_exit(["fit", "-c", str(config), "--run.root", str(tmp_path / "runs")], capsys, monkeypatch)
    assert "trainerr" in err, err
    assert not (tmp_path / "data").exists()
    assert not (tmp_path / "runs").exists()


# --- 11. bad datamodule arguments ----------------------------------------------------------------


def test_unknown_source_names_source_option(tmp_path):
    with pytest.raises(ValueError, match=r"source='downloaded'") as info:
        CaloGANDataModule(data_dir=str(tmp_path), source="downloaded")
    assert "'real'" in str(info.value) and "'made'" in str(info.value)


def test_unknown_particle_names_particle_list(tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(list(PARTICLES)))) as info:
        CaloGANDataModule(data_dir=str(tmp_path), particles=["eplus", "electron"])
    assert "electron" in str(info.value)
    assert "particles" in str(info.value)


# --- 12. write_calogan never overwrites -----------------------------------------------------------


def test_write_calogan_refuses_to_overwrite(tmp_path, showers):
    path = write_calogan(tmp_path / "eplus.hdf5", fresh(showers))
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match=named(path)):
        write_calogan(path, fresh(showers))
    assert path.read_bytes() == before
    assert not (tmp_path / "eplus.hdf5.part").exists()


def test_files_written_by_hand_are_valid_before_breaking(tmp_path, showers):
    """The baseline each case breaks: the hand-written file reads back unchanged."""
    path = write_h5(tmp_path / "eplus.hdf5", fresh(showers))
    out = read_calogan(path)
    assert set(out) == set(KEY_SHAPES)
    for key, value in showers.items():
        np.testing.assert_array_equal(out[key], value)


def test_a_datamodule_error_while_instantiating_is_one_line(tmp_path, capsys, monkeypatch):
    # CSVSeriesDataModule reads the header of its file when it is built (the model is linked to
    # its channels), inside jsonargparse, which wraps the error in a long "does not validate" one
    monkeypatch.delenv("HEPGEN_DEBUG", raising=False)
    config = ROOT / "experiments" / "sde_gan" / "air_quality.yaml"
    missing = tmp_path / "nowhere"
    err = run_cli_expecting_exit(
        ["fit", "-c", str(config), "--data.init_args.data_dir", str(missing), "--run.root", str(tmp_path / "runs")],
        capsys,
        monkeypatch,
    )
    assert err.strip().splitlines() == [
        f"hepgen: error: data file not found: {missing / 'beijing_air_aotizhongxin.csv'}. "
        + CSVSeriesDataModule.download_hint
    ], err
    assert not (tmp_path / "runs").exists()


def test_data_make_refuses_an_existing_file_in_one_line(tmp_path, capsys, monkeypatch):
    from hepgen.cli import main

    monkeypatch.delenv("HEPGEN_DEBUG", raising=False)
    args = ["data", "make", "calochallenge", "--out", str(tmp_path), "--events", "5"]
    main(args)
    made = (tmp_path / "dataset_1_photons_1.hdf5").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hepgen: error:") and "dataset_1_photons_1.hdf5 exists" in err and "\n" not in err
    assert (tmp_path / "dataset_1_photons_1.hdf5").read_bytes() == made
