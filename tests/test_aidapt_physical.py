"""The physical region of γp → π+π−p: flagging invariants, and the A(i)DAPT prediction files."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from callbacks.aidapt import AIDAPTWriter
from hepgen.physics.kinematics import (
    COLUMNS,
    M_PION,
    M_PROTON,
    in_physical_region,
    lab_to_invariants,
    phase_space_limits,
    reproduces_invariants,
)
from hepgen.synth.aidapt import simulate_sample


@pytest.fixture(scope="module")
def vertex() -> tuple[np.ndarray, np.ndarray]:
    """Invariants (N, 4) and s (N,) of true phase-space events: physical by construction."""
    inv = lab_to_invariants(simulate_sample("ps", 4000, seed=3)["vertex"])
    return inv[:, :4], inv[:, 4]


def test_true_events_are_physical_and_alpha_is_an_angle(vertex):
    inv, s = vertex
    assert in_physical_region(inv, s).all()
    turned = inv.copy()
    turned[:, 3] += 2 * math.pi  # the same event
    assert in_physical_region(turned, s).all()


@pytest.mark.parametrize(
    "column, name, side, offset",
    [
        (0, "sppim", 0, -0.01),  # below the p pi- threshold (Mp + m_pi)^2
        (0, "sppim", 1, +0.05),  # above (W - m_pi)^2
        (1, "spipm", 0, -0.01),  # below the pi+ pi- threshold 4 m_pi^2
        (1, "spipm", 1, +0.05),  # above (W - Mp)^2: s_pi+pi- off by up to 1 GeV^2 in the quickstart
        (2, "tpip", 0, -0.05),  # more negative than the pi+ can reach
        (2, "tpip", 1, +0.05),  # closer to 0 than the pi+ can reach
    ],
)
def test_invariants_beyond_the_analytic_limits_are_flagged(vertex, column, name, side, offset):
    inv, s = vertex
    moved = inv.copy()
    moved[:, column] = phase_space_limits(s)[name][side] + offset
    assert not in_physical_region(moved, s).any()


def test_non_finite_values_are_unphysical(vertex):
    inv, s = vertex
    bad = inv[:3].copy()
    bad[0, 0], bad[1, 3], bad[2, 2] = np.nan, np.inf, -np.inf
    assert not in_physical_region(bad, s[:3]).any()


def test_region_agrees_with_the_analytic_dalitz_boundary():
    """At fixed W, (s_pπ−, s_π+π−) is physical iff inside the Dalitz boundary: for given
    m² = s_π+π−, in the π+π− rest frame E*_π− = m/2 and E*_p = (s − m² − Mp²)/(2m), and
    s_pπ− ∈ (E*_π− + E*_p)² − (p*_π− ± p*_p)² (PDG kinematics). t_π+ at the centre of its range."""
    rng = np.random.default_rng(4)
    n, w = 20_000, 2.6
    s = np.full(n, w**2)
    sppim = rng.uniform((M_PROTON + M_PION) ** 2 - 0.1, (w - M_PION) ** 2 + 0.1, n)
    spipm = rng.uniform(4 * M_PION**2 - 0.05, (w - M_PROTON) ** 2 + 0.1, n)
    m = np.sqrt(np.clip(spipm, 1e-9, None))
    e_pim, e_p = m / 2, (s - spipm - M_PROTON**2) / (2 * m)
    p_pim, p_p = np.sqrt(np.clip(e_pim**2 - M_PION**2, 0, None)), np.sqrt(np.clip(e_p**2 - M_PROTON**2, 0, None))
    low, high = (e_pim + e_p) ** 2 - (p_pim + p_p) ** 2, (e_pim + e_p) ** 2 - (p_pim - p_p) ** 2
    inside_ms = (spipm > 4 * M_PION**2) & (m < w - M_PROTON)
    analytic = inside_ms & (sppim > low) & (sppim < high)
    edges = [sppim - low, sppim - high, spipm - 4 * M_PION**2, m - (w - M_PROTON)]
    margin = np.min(np.abs(edges), axis=0)
    # t at cos θ* = 0 of the π+, whose CM energy follows from its recoil mass s_pπ−
    k = (s - M_PROTON**2) / (2 * w)
    e_pip = (s + M_PION**2 - sppim) / (2 * w)
    tpip = M_PION**2 - 2 * k * e_pip
    inv = np.stack([sppim, spipm, tpip, rng.uniform(0, 2 * math.pi, n)], axis=1)
    clear = margin > 1e-3
    assert analytic[clear].sum() > 2000 and (~analytic[clear]).sum() > 2000  # both sides sampled
    np.testing.assert_array_equal(in_physical_region(inv, s)[clear], analytic[clear])


def _predictions(vertex, outside: np.ndarray) -> list[dict]:
    inv, s = vertex
    inv = inv[:50].copy()
    inv[outside, 1] = phase_space_limits(s[:50])["spipm"][1][outside] + 0.3  # off by 0.3 GeV^2
    phi = np.random.default_rng(5).uniform(-math.pi, math.pi, 50)

    def batch(rows):
        return {
            "invariants": torch.tensor(inv[rows], dtype=torch.float32),
            "s": torch.tensor(s[:50][rows, None], dtype=torch.float32),
            "phi": torch.tensor(phi[rows, None], dtype=torch.float32),
            "level": "vertex",
        }

    return [batch(slice(0, 30)), batch(slice(30, 50))]


def test_writer_flags_unphysical_rows_and_writes_only_reproducible_events(vertex, tmp_path, capsys):
    outside = np.array([3, 17, 31, 44])
    trainer = SimpleNamespace(world_size=1, is_global_zero=True, default_root_dir=tmp_path)
    predictions = _predictions(vertex, outside)
    AIDAPTWriter().write_on_epoch_end(trainer, None, predictions, None)
    out = tmp_path / "predictions"

    invariants = np.load(out / "vertex_invariants.npy")
    expected = torch.cat([torch.cat([p["invariants"], p["s"]], 1) for p in predictions]).double().numpy()
    np.testing.assert_array_equal(invariants, expected)  # every generated row, in order

    physical = np.load(out / "vertex_physical.npy")
    assert physical.dtype == bool and physical.shape == (50,)
    np.testing.assert_array_equal(np.flatnonzero(~physical), outside)

    events = np.load(out / "vertex_0.npy")
    assert events.shape == (46, 16)
    rows = events[:, COLUMNS.index("event_id")].astype(int)  # the row in the invariants file
    np.testing.assert_array_equal(rows, np.flatnonzero(physical))
    rebuilt = lab_to_invariants(events)
    np.testing.assert_allclose(rebuilt[:, [0, 1, 2, 4]], invariants[rows][:, [0, 1, 2, 4]], atol=1e-6, rtol=0)
    turn = (rebuilt[:, 3] - invariants[rows, 3] + math.pi) % (2 * math.pi) - math.pi
    assert np.abs(turn).max() < 1e-6
    assert "4 of them (8.00 %) lie outside the physical region" in capsys.readouterr().out

    # a second prediction never overwrites: the next free suffix, the same for all three files
    AIDAPTWriter().write_on_epoch_end(trainer, None, predictions, None)
    assert {p.name for p in out.iterdir()} == {
        f"vertex_{k}{tag}.npy" for k in ("invariants", "physical", "0") for tag in ("", ".1")
    }


def test_reproduces_invariants_tells_a_wrong_event(vertex):
    inv, s = vertex
    events = simulate_sample("ps", 4000, seed=3)["vertex"]
    assert reproduces_invariants(events, inv, s).all()
    shifted = inv.copy()
    shifted[:, 2] += 1e-4  # GeV^2, far above float64 rounding, far below any resolution
    assert not reproduces_invariants(events, shifted, s).any()
