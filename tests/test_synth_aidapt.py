"""Made A(i)DAPT events: conservation, the toy CLAS detector, the realistic mixture, and the files."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hepgen.cli
from hepgen.io.aidapt import COLUMNS, read_event_file, read_paired_files
from hepgen.physics.kinematics import M_PION, M_PROTON, lab_to_invariants, mass2
from hepgen.synth.aidapt import (
    Physics,
    ToyCLAS,
    make_aidapt,
    realistic_cm,
    sample_seed,
    simulate_detector,
    simulate_sample,
)

N = 40_000


def vectors(events: np.ndarray) -> dict[str, np.ndarray]:
    """(n, 4) four-vectors of p, pip, pim from 16-column events, by column name."""
    return {
        name: np.stack([events[:, COLUMNS.index(f"{c}_{name}")] for c in ("E", "px", "py", "pz")], 1)
        for name in ("p", "pip", "pim")
    }


def initial_state(e_gamma: np.ndarray) -> np.ndarray:
    """Beam + target four-vector (n, 4)."""
    return np.stack([e_gamma + M_PROTON, 0 * e_gamma, 0 * e_gamma, e_gamma], 1)


def track(p4: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|p| (GeV), θ and φ in degrees."""
    size = np.linalg.norm(p4[:, 1:], axis=1)
    return size, np.degrees(np.arccos(p4[:, 3] / size)), np.degrees(np.arctan2(p4[:, 2], p4[:, 1]))


@pytest.fixture(scope="module")
def ps() -> dict[str, np.ndarray]:
    return simulate_sample("ps", N, seed=21)


@pytest.fixture(scope="module")
def realistic() -> dict[str, np.ndarray]:
    return simulate_sample("realistic", N, seed=22)


# ---------------------------------------------------------------- vertex level


@pytest.mark.parametrize("kind", ["ps", "realistic"])
def test_vertex_events_conserve_four_momentum_and_are_on_shell(kind, ps, realistic):
    vertex = {"ps": ps, "realistic": realistic}[kind]["vertex"]
    v = vectors(vertex)
    total = v["p"] + v["pip"] + v["pim"]
    assert np.abs(total - initial_state(vertex[:, COLUMNS.index("E_gamma")])).max() < 1e-9
    assert np.abs(mass2(v["p"]) - M_PROTON**2).max() < 1e-9
    assert np.abs(mass2(v["pip"]) - M_PION**2).max() < 1e-9
    assert np.abs(mass2(v["pim"]) - M_PION**2).max() < 1e-9
    np.testing.assert_array_equal(vertex[:, COLUMNS.index("MX2")], M_PION**2)
    np.testing.assert_array_equal(vertex[:, 0], np.arange(N))
    np.testing.assert_allclose(vertex[:, COLUMNS.index("phi_pip")], np.arctan2(v["pip"][:, 2], v["pip"][:, 1]))


def test_beam_is_one_over_e(ps):
    e = ps["vertex"][:, COLUMNS.index("E_gamma")]
    assert e.min() >= 3.0 and e.max() <= 3.8
    # 1/E on [a, b]: mean (b − a)/ln(b/a) = 3.384 GeV, and half of the events below √(ab).
    assert e.mean() == pytest.approx(0.8 / np.log(3.8 / 3.0), abs=0.01)
    assert np.mean(e < np.sqrt(3.0 * 3.8)) == pytest.approx(0.5, abs=0.01)


# ---------------------------------------------------------------- toy detector


def test_detector_pim_is_the_missing_four_vector(ps):
    det = ps["detector"]
    d = vectors(det)
    missing = initial_state(det[:, COLUMNS.index("E_gamma")]) - d["p"] - d["pip"]
    np.testing.assert_allclose(d["pim"], missing, atol=1e-12)
    np.testing.assert_allclose(det[:, COLUMNS.index("MX2")], mass2(missing), atol=1e-12)
    # The measured tracks carry their PID masses; the missing mass² peaks at mπ².
    np.testing.assert_allclose(mass2(d["p"]), M_PROTON**2, atol=1e-9)
    np.testing.assert_allclose(mass2(d["pip"]), M_PION**2, atol=1e-9)
    mx2 = det[ps["accepted"], COLUMNS.index("MX2")]
    assert np.median(mx2) == pytest.approx(M_PION**2, abs=0.002)
    assert 0.005 < mx2.std() < 0.03
    # Tagger smearing: 0.1 % of E_γ.
    ratio = det[:, 2] / ps["vertex"][:, 2] - 1
    assert ratio.std() == pytest.approx(0.001, rel=0.05)


def test_phase_space_acceptance(ps):
    assert 0.35 < ps["accepted"].mean() < 0.6


def test_accepted_tracks_pass_the_fiducial_cuts(ps):
    d = vectors(ps["detector"][ps["accepted"]])
    local = lambda phi: np.abs(np.mod(phi + 30, 60) - 30)  # noqa: E731
    p, theta, phi = track(d["p"])
    assert p.min() > 0.32 and theta.min() > 10 and local(phi).max() < 26
    assert not np.any((p < 0.45) & (theta < 35))
    p, theta, phi = track(d["pip"])
    assert p.min() > 0.125 and theta.min() > 10 and theta.max() < 120 and local(phi).max() < 26
    # The cuts bite: before acceptance many π+ fall into the coil gaps.
    p, theta, phi = track(vectors(ps["detector"])["pip"])
    assert np.mean(local(phi) > 26) > 0.1


def test_two_track_mode_accepts_more(ps):
    rng = np.random.default_rng(0)
    v = vectors(ps["vertex"])
    e = ps["vertex"][:, 2]
    three = simulate_detector(rng, e, v["p"], v["pip"], v["pim"], ToyCLAS())[-1].mean()
    two = simulate_detector(rng, e, v["p"], v["pip"], v["pim"], ToyCLAS(mode="2-track"))[-1].mean()
    assert two > three + 0.05


def test_detector_resolution_small_and_unbiased(ps):
    acc = ps["accepted"]
    diff = lab_to_invariants(ps["detector"][acc]) - lab_to_invariants(ps["vertex"][acc])
    for i, name in enumerate(("sppim", "spipm", "tpip")):
        sigma = diff[:, i].std()
        assert 0.003 < sigma < 0.05, name  # GeV²: a few per cent of the ranges, but not zero
        assert abs(diff[:, i].mean()) < 0.1 * sigma, name
    dalpha = np.mod(diff[:, 3] + np.pi, 2 * np.pi) - np.pi
    assert 0.005 < dalpha.std() < 0.1
    assert abs(dalpha.mean()) < 0.005
    np.testing.assert_array_equal(ps["detector"][:, 0], ps["vertex"][:, 0])


def test_acceptance_shapes_alpha(ps):
    # Flat at vertex level, but the sectors carve dips at 0, π, 2π (tutorial Fig. 2).
    alpha = lab_to_invariants(ps["vertex"][ps["accepted"]])[:, 3]
    counts, _ = np.histogram(alpha, 8, (0, 2 * np.pi))
    assert counts[[1, 2, 5, 6]].min() > 1.2 * counts[[0, 3, 4, 7]].max()


# ---------------------------------------------------------------- realistic physics


def test_realistic_differs_from_phase_space(ps, realistic):
    inv_ps, inv_re = lab_to_invariants(ps["vertex"]), lab_to_invariants(realistic["vertex"])
    counts, edges = np.histogram(inv_re[:, 1], 60, (0.0, 3.6))
    peak = 0.5 * (edges[np.argmax(counts)] + edges[np.argmax(counts) + 1])
    assert peak == pytest.approx(0.775**2, abs=0.1)  # the ρ⁰ in s_{π+π−}
    assert np.median(inv_ps[:, 1]) > 1.0
    near_rho = lambda x: np.mean((x > 0.45) & (x < 0.75))  # noqa: E731
    assert near_rho(inv_re[:, 1]) > 2 * near_rho(inv_ps[:, 1])
    # Peripheral production: the recoil proton is much softer than in phase space.
    p_pz = COLUMNS.index("pz_p")
    assert realistic["vertex"][:, p_pz].mean() < 0.7 * ps["vertex"][:, p_pz].mean()


def test_rho_channel_has_the_requested_t_slope():
    rng = np.random.default_rng(3)
    w = np.full(30_000, 2.7)
    p, pip, pim = realistic_cm(rng, w, Physics(rho_fraction=1.0, delta_fraction=0.0, rho_slope=6.0))
    np.testing.assert_allclose((p + pip + pim)[:, 1:], 0.0, atol=1e-12)
    k = (2.7**2 - M_PROTON**2) / (2 * 2.7)
    target = np.array([np.sqrt(k**2 + M_PROTON**2), 0, 0, -k])  # the target proton in the CM
    t = mass2(target - p)
    m_rho2 = mass2(pip + pim)
    e_x = (2.7**2 + m_rho2 - M_PROTON**2) / (2 * 2.7)
    p_x = np.sqrt(np.maximum(e_x**2 - m_rho2, 0))
    t_max = m_rho2 - 2 * k * (e_x - p_x)  # t at cos θ* = 1
    excess = t_max - t
    assert excess.min() > -1e-9
    assert excess.mean() == pytest.approx(1 / 6.0, rel=0.03)  # Exp(6 GeV⁻²), truncation negligible
    assert np.median(np.sqrt(m_rho2)) == pytest.approx(0.775, abs=0.02)


def test_delta_channel_peaks_at_the_delta():
    delta_only = Physics(rho_fraction=0.0, delta_fraction=1.0)
    p, pip, pim = realistic_cm(np.random.default_rng(4), np.full(20_000, 2.7), delta_only)
    assert np.median(np.sqrt(mass2(p + pip))) == pytest.approx(1.232, abs=0.03)


def test_bad_physics_settings():
    with pytest.raises(ValueError, match="fraction"):
        Physics(rho_fraction=0.8, delta_fraction=0.3)
    with pytest.raises(ValueError, match="mode"):
        ToyCLAS(mode="4-track")


# ---------------------------------------------------------------- files


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    folder = tmp_path_factory.mktemp("aidapt")
    paths = make_aidapt(folder, events=6000, seed=5, n_files=3, progress=False)
    return folder, paths


def test_files_written_and_paired(made):
    folder, paths = made
    per_kind = [*(f"{lvl}_{k}.npy" for lvl in ("vertex", "detector") for k in range(3)), "generated.npz", "made.json"]
    expected = {f"{kind}_{name}" for kind in ("ps", "realistic") for name in per_kind}
    assert {p.name for p in paths} == expected
    assert {p.name for p in folder.iterdir()} == expected  # no temporary files left behind
    for kind in ("ps", "realistic"):
        v_paths = [folder / f"{kind}_vertex_{k}.npy" for k in range(3)]
        d_paths = [folder / f"{kind}_detector_{k}.npy" for k in range(3)]
        lengths = [len(read_event_file(p)) for p in v_paths]
        assert lengths == [len(read_event_file(p)) for p in d_paths]
        assert max(lengths) - min(lengths) <= 1
        vertex, detector = read_paired_files(v_paths, d_paths)
        np.testing.assert_array_equal(vertex[:, 0], detector[:, 0])  # same events, row by row
        with np.load(folder / f"{kind}_generated.npz") as truth:
            assert truth["vertex"].shape == (6000, 16) and truth["vertex"].dtype == np.float64
            assert truth["accepted"].dtype == bool
            np.testing.assert_array_equal(truth["vertex"][truth["accepted"]], vertex)
        meta = json.loads((folder / f"{kind}_made.json").read_text())
        assert meta["hepgen_made"] == "aidapt" and meta["kind"] == kind and meta["events"] == 6000
        assert meta["accepted"] == len(vertex)
        assert meta["seed"] == sample_seed(5, kind)
        assert meta["detector"]["mode"] == "3-track" and meta["detector"]["sigma_p"] == 0.006
        # The recorded seed reproduces the sample.
        again = simulate_sample(kind, 6000, meta["seed"])
        np.testing.assert_array_equal(again["detector"][again["accepted"]], detector)
    assert sample_seed(5, "ps") != sample_seed(5, "realistic")


def test_same_seed_same_files(made, tmp_path):
    folder, paths = made
    again = make_aidapt(tmp_path, events=6000, seed=5, samples=["realistic"], n_files=3, progress=False)
    for path in again:
        assert path.read_bytes() == (folder / path.name).read_bytes(), path.name
    other = make_aidapt(tmp_path / "other", events=6000, seed=6, samples=["ps"], n_files=3, progress=False)
    assert other[0].read_bytes() != (folder / "ps_vertex_0.npy").read_bytes()


def test_refuses_to_overwrite(tmp_path):
    blocker = tmp_path / "realistic_generated.npz"
    blocker.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="realistic_generated.npz"):
        make_aidapt(tmp_path, events=500, seed=0, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == [blocker.name]  # checked before writing anything
    assert blocker.read_bytes() == b"keep me"


def test_bad_arguments(tmp_path):
    for kwargs, name in [
        ({"samples": ["ps", "data"]}, "samples"),
        ({"samples": ["ps", "ps"]}, "samples"),
        ({"events": 0}, "events"),
        ({"seed": -1}, "seed"),
        ({"n_files": 0}, "n_files"),
        ({"events": 3, "n_files": 4}, "files"),
    ]:
        with pytest.raises(ValueError, match=name):
            make_aidapt(tmp_path, progress=False, **kwargs)


def test_cli_makes_aidapt(tmp_path, capsys):
    hepgen.cli.main(["data", "make", "aidapt", "--out", str(tmp_path), "--events", "20000"])
    names = {p.name for p in tmp_path.iterdir()}
    for kind in ("ps", "realistic"):
        assert {f"{kind}_vertex_{k}.npy" for k in range(4)} <= names
        assert {f"{kind}_detector_{k}.npy" for k in range(4)} <= names
        assert json.loads((tmp_path / f"{kind}_made.json").read_text())["events"] == 20000
    assert "ps_vertex_0.npy" in capsys.readouterr().out
    hepgen.cli.main(["data", "make", "aidapt", "--out", str(tmp_path / "one"), "--samples", "ps", "--files", "2"])
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [
        "ps_detector_0.npy", "ps_detector_1.npy", "ps_generated.npz",
        "ps_made.json", "ps_vertex_0.npy", "ps_vertex_1.npy",
    ]  # fmt: skip
