"""sPHENIX jet-background data: the real file layout read and checked, and made data with known truth.

Files written here by plain h5py with the real settings (float16, LZF, one (1, 24, 64) chunk per
event) stand for the published ones. The physics checks compare made samples against the facts
of the real samples (UVCGAN-S note §7.1): leading-cone truth median 32 GeV (5-95 %: 23-44),
central HIJING 40 ± 10 GeV in an R = 0.4 cone, JEWEL/PYTHIA median total energy 47/75, with
tolerances a few times the statistical error of the sample sizes used.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from hepgen.io import DataFileError
from hepgen.io.sphenix import check_finite, check_sphenix_file, domain_file, write_sphenix
from hepgen.physics import sphenix_geometry as geo
from hepgen.physics.jets import cone_energy
from hepgen.synth import sphenix as sp
from hepgen.synth.cli import MADE_DATASETS
from hepgen.synth.cli import main as data_main

REAL = {"dtype": np.float16, "compression": "lzf", "chunks": (1, 24, 64)}
SIZES = {"events": 30, "background_events": 20, "signal_events": 25, "val_events": 12, "test_events": 10}


def write_real_style(path, **datasets) -> None:
    """A file as the published ones are written: plain h5py, float16, LZF, one chunk per event
    (chunking is left to h5py for shapes one chunk cannot fit)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, values in datasets.items():
            values = np.asarray(values, dtype=np.float16)
            fits = values.ndim == 3 and values.shape[1:] == (24, 64) and len(values) > 0
            f.create_dataset(key, data=values, compression="lzf", chunks=(1, 24, 64) if fits else True)


def events(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).exponential(0.7, (n, 24, 64)).astype(np.float16)


def cone(towers, eta, phi, radius: float = 0.4) -> np.ndarray:
    """E_T (N,) GeV of the towers within ΔR ≤ radius of each axis."""
    return cone_energy(towers, eta, phi, radius)


def read(path, key: str = "data") -> np.ndarray:
    with h5py.File(path) as f:
        return f[key][:]


def assert_one_line(err: pytest.ExceptionInfo, path) -> str:
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


# ------------------------------------------------------------------------------ reading and checking
def test_real_style_files_are_found_and_checked(tmp_path):
    for domain, name in [("background", "background"), ("signal", "signal.h5"), ("embed", "embed.hdf5")]:
        write_real_style(tmp_path / "train" / name, data=events(5))
        path = domain_file(tmp_path, "train", domain)
        assert path == tmp_path / "train" / name  # the reference loader's <domain>, .h5, .hdf5
        assert check_sphenix_file(path) == 5
    assert domain_file(tmp_path, "val", "embed") == tmp_path / "val" / "embed.h5"  # none yet: the .h5 name
    write_real_style(tmp_path / "val" / "embed.h5", data=events(4), signal=events(4, 1), background=events(4, 2))
    assert check_sphenix_file(tmp_path / "val" / "embed.h5", truth=True) == 4


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing", ["not found", "17783990", "2025-06-05_jet_bkg_sub.tar", "hepgen data make sphenix"]),
        ("not_hdf5", ["not a readable HDF5"]),
        ("no_data_key", ["no dataset 'data'", "'images'"]),
        ("wrong_shape", ["(3, 64, 24)", "(N, 24, 64)"]),
        ("flat", ["(3, 1536)"]),
        ("empty", ["no events"]),
        ("integer", ["dtype int16"]),
        ("no_truth", ["no truth dataset 'signal'", "truth: false"]),
        ("truth_shape", ["'background' has shape (2, 24, 64)", "(3, 24, 64)"]),
    ],
)
def test_bad_files_give_one_line_errors_naming_the_file(tmp_path, case, words):
    path = tmp_path / "embed.h5"
    truth = case in ("no_truth", "truth_shape")
    if case == "not_hdf5":
        path.write_text("this is not HDF5\n")
    elif case == "no_data_key":
        write_real_style(path, images=events(3))
    elif case == "wrong_shape":
        write_real_style(path, data=np.zeros((3, 64, 24)))
    elif case == "flat":
        write_real_style(path, data=np.zeros((3, 1536)))
    elif case == "empty":
        write_real_style(path, data=np.zeros((0, 24, 64)))
    elif case == "integer":
        with h5py.File(path, "w") as f:
            f.create_dataset("data", data=np.zeros((3, 24, 64), np.int16), chunks=(1, 24, 64), compression="lzf")
    elif case == "no_truth":
        write_real_style(path, data=events(3))
    elif case == "truth_shape":
        write_real_style(path, data=events(3), signal=events(3), background=events(2))
    with pytest.raises(DataFileError) as err:
        check_sphenix_file(path, truth=truth)
    message = assert_one_line(err, path)
    for word in words:
        assert word in message


def test_nan_and_inf_are_one_line_errors_naming_file_and_key(tmp_path):
    path = tmp_path / "signal.h5"
    bad = events(4)
    bad[2, 5, 7] = np.nan
    bad[3, 0, 0] = np.inf
    write_real_style(path, data=bad)
    assert check_sphenix_file(path) == 4  # the structure is fine; values are checked as they are read
    with h5py.File(path) as f:
        check_finite(f["data"][:2], path, "data")  # a clean batch passes
        with pytest.raises(DataFileError) as err:
            check_finite(f["data"][:], path, "data")
    message = assert_one_line(err, path)
    assert "'data'" in message and "2 NaN/inf" in message and "(2, 5, 7)" in message


def test_write_sphenix_uses_the_real_settings_atomically_and_never_overwrites(tmp_path):
    path = tmp_path / "val" / "embed.h5"
    s, b = events(3, 1), events(3, 2)
    write_sphenix(path, s + b, signal=s, background=b)
    with h5py.File(path) as f:
        assert sorted(f) == ["background", "data", "signal"]
        for key in f:
            assert (f[key].dtype, f[key].compression, f[key].chunks) == (np.float16, "lzf", (1, 24, 64))
        np.testing.assert_array_equal(f["signal"][:], s)
    assert check_sphenix_file(path, truth=True) == 3
    with pytest.raises(FileExistsError, match="embed.h5 exists"):
        write_sphenix(path, s)
    assert sorted(p.name for p in path.parent.iterdir()) == ["embed.h5"]  # no temporary file left
    bad = s.astype(np.float32)
    bad[0, 0, 0] = 1e6  # beyond float16: inf once written
    with pytest.raises(DataFileError, match="NaN/inf"):
        write_sphenix(tmp_path / "big.h5", bad)
    with pytest.raises(DataFileError, match=r"\(N, 24, 64\)"):
        write_sphenix(tmp_path / "flat.h5", np.zeros((3, 1536)))
    assert not (tmp_path / "big.h5").exists() and not (tmp_path / "flat.h5").exists()


# ------------------------------------------------------------------------------ made files
@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("sphenix")
    return out, sp.make_sphenix(out, seed=0, progress=False, **SIZES)


def test_made_layout_dtype_compression_chunks_and_record(made):
    out, written = made
    names = ["train/background.h5", "train/signal.h5", "train/embed.h5", "val/embed.h5", "test/embed.h5"]
    assert written == [out / n for n in names] + [out / "sphenix_made.json"]
    expected_n = [20, 25, 30, 12, 10]
    for name, n in zip(names, expected_n):
        truth = name.startswith(("val", "test"))
        assert check_sphenix_file(out / name, truth=truth) == n
        with h5py.File(out / name) as f:
            assert sorted(f) == (["background", "data", "signal"] if truth else ["data"])
            for key in f:
                ds = f[key]
                assert (ds.shape, ds.dtype, ds.compression, ds.chunks) == ((n, 24, 64), np.float16, "lzf", (1, 24, 64))
                assert np.all(ds[:] >= 0) and np.isfinite(ds[:]).all()
    record = json.loads((out / "sphenix_made.json").read_text())
    assert (record["events"], record["seed"], record["sizes"]["val/embed"]) == (30, 0, 12)
    assert record["background"]["centrality"] == [0.0, 10.0] and "loss_per_fm" in record["quenching"]


def test_made_truth_adds_up_bit_exactly(made):
    out, _ = made
    for split in ("val", "test"):
        with h5py.File(out / split / "embed.h5") as f:
            data, s, b = (f[k][:] for k in ("data", "signal", "background"))
        assert np.array_equal(data.astype(np.float32), s.astype(np.float32) + b.astype(np.float32))
        assert s.sum(axis=(1, 2)).min() > 5 and b.sum(axis=(1, 2)).min() > 300  # both parts are there


def test_train_mixtures_are_not_paired_with_the_train_parts(made):
    out, _ = made
    embed, signal, background = (read(out / "train" / name)[:20].astype(np.float32)
                                 for name in ("embed.h5", "signal.h5", "background.h5"))
    assert not np.array_equal(embed, signal + background)
    # a paired part would never exceed the mixture; independent draws do, in many towers
    assert (signal > embed).any(axis=(1, 2)).mean() > 0.5


def test_made_files_are_the_documented_streams(made):
    out, _ = made
    (signal,) = sp.adc_quantise(sp.simulate_jets(25, seed=0, stream=sp.SAMPLE_STREAMS["train/signal"]).towers)
    np.testing.assert_array_equal(read(out / "train" / "signal.h5"), signal.astype(np.float16))


def test_reproducible_with_the_seed_and_never_overwritten(made, tmp_path):
    out, _ = made
    small = {"events": 3, "background_events": 2, "signal_events": 2, "val_events": 2, "test_events": 2}
    sp.make_sphenix(tmp_path / "a", seed=0, progress=False, **small)
    sp.make_sphenix(tmp_path / "b", seed=0, progress=False, **small)
    sp.make_sphenix(tmp_path / "c", seed=1, progress=False, **small)
    for name in ("train/background.h5", "train/signal.h5", "train/embed.h5", "test/embed.h5"):
        a, b, c = (read(tmp_path / d / name) for d in "abc")
        assert np.array_equal(a, b) and not np.array_equal(a, c)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="background.h5 exists"):
        sp.make_sphenix(out, seed=0, progress=False, **SIZES)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_registered_in_the_data_command(tmp_path, capsys):
    assert {"sphenix", "toy_mix"} <= set(MADE_DATASETS)
    data_main(["make", "sphenix", "--out", str(tmp_path), "--events", "2", "--centrality", "30", "40"])
    assert "wrote" in capsys.readouterr().out
    record = json.loads((tmp_path / "sphenix_made.json").read_text())
    assert record["background"]["centrality"] == [30.0, 40.0] and record["sizes"]["test/embed"] == 1
    with pytest.raises(ValueError, match="centrality"):
        sp.make_sphenix(tmp_path / "x", events=2, centrality=(10, 5), progress=False)


# ------------------------------------------------------------------------------ quantisation
def test_adc_quantise_makes_parts_and_sum_exact_in_float16():
    rng = np.random.default_rng(5)
    s = np.concatenate([rng.exponential(2.0, 5000), rng.uniform(20, 70, 2000), rng.uniform(60, 3000, 500)])
    b = rng.exponential(0.7, len(s))
    qs, qb = sp.adc_quantise(s, b)
    for q in (qs, qb):
        assert np.array_equal(q.astype(np.float16).astype(np.float64), q)
    total = (qs + qb).astype(np.float16)
    halves = [q.astype(np.float16).astype(np.float32) for q in (qs, qb)]
    assert np.array_equal(total.astype(np.float32), halves[0] + halves[1])
    fine = s + b < 63.9  # the 2^-5 GeV step wherever the sum allows it
    assert np.all(np.abs(qs - s)[fine] <= sp.ADC_STEP_GEV / 2) and np.all(np.abs(qb - b)[fine] <= sp.ADC_STEP_GEV / 2)
    assert np.all(np.abs(qs - s)[~fine] <= (s + b)[~fine] * 2.0**-10)  # about half a float16 spacing of the sum
    assert np.array_equal(sp.adc_quantise(s)[0].astype(np.float16).astype(np.float64), sp.adc_quantise(s)[0])


# ------------------------------------------------------------------------------ physics with known truth
@pytest.fixture(scope="module")
def jets():
    return sp.simulate_jets(2000, seed=11)


@pytest.fixture(scope="module")
def quenched():
    return sp.simulate_jets(2000, seed=11, quench=sp.JewelQuenching())


@pytest.fixture(scope="module")
def background():
    return sp.simulate_background(1500, seed=11)


def test_leading_cone_truth_energy_matches_pythia_jet30(jets):
    p5, median, p95 = np.percentile(cone(jets.towers, jets.jet_eta[:, 0], jets.jet_phi[:, 0]), [5, 50, 95])
    assert 28 < median < 37  # real val sample: 32 GeV
    assert 18 < p5 < 29 and 38 < p95 < 54  # real: 23 and 44
    total = jets.towers.sum(axis=(1, 2))
    assert 62 < np.median(total) < 88  # real PYTHIA: 75 GeV
    assert jets.n_jets.min() >= 2 and 0.15 < (jets.n_jets == 3).mean() < 0.45


def test_jets_keep_most_energy_within_r04_and_conserve_energy(jets):
    p = jets.particles
    in_jet = p.jet >= 0
    e, j = p.event[in_jet], p.jet[in_jet]
    dr = np.hypot(p.eta[in_jet] - jets.jet_eta[e, j], geo.delta_phi(p.phi[in_jet], jets.jet_phi[e, j]))
    key = e * sp.MAX_JETS + j
    total = np.bincount(key, p.et[in_jet])
    within = lambda r: np.bincount(key, p.et[in_jet] * (dr < r), minlength=len(total))  # noqa: E731
    ok = total > 0
    share_04, share_02 = (within(0.4)[ok] / total[ok]).mean(), (within(0.2)[ok] / total[ok]).mean()
    assert share_04 > 0.85 and 0.6 < share_02 < share_04
    np.testing.assert_allclose(np.bincount(key, p.et[in_jet]), jets.jet_et.reshape(-1)[: len(total)], rtol=1e-12)
    # towers + lost = generated E_T, event by event
    generated = np.bincount(p.event, p.et, minlength=len(jets.towers))
    np.testing.assert_allclose(jets.towers.sum(axis=(1, 2)) + jets.lost_gev, generated, rtol=1e-10)
    # the lost part is what showers outside |η| < 1.1: all of it beyond the 5x5 window, none well inside
    edge = geo.ETA_MAX
    surely_out = np.bincount(p.event, p.et * (np.abs(p.eta) > edge + 2.5 * geo.DETA), minlength=len(generated))
    maybe_out = np.bincount(p.event, p.et * (np.abs(p.eta) > edge - 3.0 * geo.DETA), minlength=len(generated))
    assert np.all(jets.lost_gev >= surely_out - 1e-9) and np.all(jets.lost_gev <= maybe_out + 1e-9)
    assert 0 < jets.lost_gev.mean() < 0.1 * generated.mean()
    # quantisation moves each tower by at most half a step
    (q,) = sp.adc_quantise(jets.towers)
    assert np.abs(q - jets.towers).max() <= sp.ADC_STEP_GEV / 2 + 1e-12
    # a jet covers about 50 towers: the non-zero towers of the leading jet alone
    lead = p.jet == 0
    alone, _ = sp.deposit_particles(len(generated), p.event[lead], p.eta[lead], p.phi[lead], p.et[lead], sp.SHOWER_PROFILE)
    assert 35 < np.median((sp.adc_quantise(alone)[0] > 0).sum(axis=(1, 2))) < 70


def test_quenched_jets_lose_energy_like_jewel(jets, quenched):
    np.testing.assert_array_equal(quenched.jet_eta, jets.jet_eta)  # the same jets
    ratio = np.median(quenched.towers.sum(axis=(1, 2))) / np.median(jets.towers.sum(axis=(1, 2)))
    assert 0.55 < ratio < 0.72  # real JEWEL/PYTHIA: 47/75 = 0.63
    present = jets.jet_et > 0
    loss = quenched.jet_loss[present]
    assert 0.25 < np.median(loss) < 0.55 and loss.max() <= sp.JewelQuenching().max_loss
    # energy only leaves: generated E_T (towers + lost) never grows
    before = jets.towers.sum(axis=(1, 2)) + jets.lost_gev
    after = quenched.towers.sum(axis=(1, 2)) + quenched.lost_gev
    assert np.all(after <= before + 1e-9)
    # longer paths lose more: the loss-path correlation is the medium's signature
    path = quenched.path_fm[present]
    assert np.corrcoef(path, loss)[0, 1] > 0.4
    # broadening: the quenched jets keep less of their energy in the core
    core = lambda ev: cone(ev.towers, jets.jet_eta[:, 0], jets.jet_phi[:, 0], 0.2)  # noqa: E731
    wide = lambda ev: cone(ev.towers, jets.jet_eta[:, 0], jets.jet_phi[:, 0], 0.4)  # noqa: E731
    assert np.median(core(quenched) / wide(quenched)) < np.median(core(jets) / wide(jets))


def test_background_cone_holds_40_pm_10_gev(background):
    # axes on tower centres with |η| < 0.7, as the evaluation's leading-truth cone finder puts them
    rng = np.random.default_rng(0)
    rows = rng.integers(4, 20, len(background.towers))  # centres |η| ≤ 0.6875
    eta, phi = geo.ETA_CENTRES[rows], geo.PHI_CENTRES[rng.integers(0, 64, len(rows))]
    energy = cone(background.towers, eta, phi)
    assert 36 < energy.mean() < 44 and 7.5 < energy.std() < 13  # real central HIJING: 40 ± 10 GeV
    assert np.all(background.towers >= 0) and 0.0 <= background.centrality.min() and background.centrality.max() <= 10.0
    # ≈ 84 GeV per unit η-φ area: 0.76 GeV in a 0.092 × 0.098 tower
    assert 0.66 < background.towers.mean() < 0.86


def test_background_fluctuates_locally_by_5_gev_as_hijing(background):
    """What no per-row ρ can follow: the cone background minus its true per-row mean. The
    reference's oracle (per-row mean of the true background) leaves 5.09 GeV in an R = 0.4 cone
    on the real files; the rest of the ±10 GeV moves the whole event and is subtractable."""
    rng = np.random.default_rng(1)
    rows = rng.integers(4, 20, len(background.towers))
    eta, phi = geo.ETA_CENTRES[rows], geo.PHI_CENTRES[rng.integers(0, 64, len(rows))]
    energy = cone(background.towers, eta, phi)
    row_means = np.broadcast_to(background.towers.mean(axis=2, keepdims=True), background.towers.shape)
    local = energy - cone(np.ascontiguousarray(row_means), eta, phi)
    assert 4.3 < local.std() < 6.0
    assert local.std() < 0.7 * energy.std()


def test_flow_is_recoverable_about_the_event_plane(background):
    def measured(ev):
        e_phi = ev.towers.sum(axis=1)  # (N, 64): E_T per φ column
        proj = lambda angle: (e_phi * np.cos(2 * (geo.PHI_CENTRES - angle[:, None]))).sum(1) / e_phi.sum(1)  # noqa: E731
        return proj(ev.psi2), proj(ev.psi2 + np.pi / 2)

    along, across = measured(background)
    # Σ E cos2(φ − Ψ2) / Σ E = v2 for ρ ∝ 1 + 2 v2 cos2(φ − Ψ2); the spread is the particle noise
    assert along.mean() > 0 and across.mean() < 0
    np.testing.assert_allclose(along.mean(), background.v2.mean(), rtol=0.25)
    mid = sp.simulate_background(600, seed=12, model=sp.HijingBackground(centrality=(30.0, 40.0)))
    along_mid, _ = measured(mid)
    np.testing.assert_allclose(along_mid.mean(), mid.v2.mean(), rtol=0.2)
    assert along_mid.mean() > 1.5 * along.mean()  # v2 grows from central to mid-central collisions
    # and mid-central collisions have fewer participants: less background
    assert mid.towers.sum(axis=(1, 2)).mean() < 0.5 * background.towers.sum(axis=(1, 2)).mean()
