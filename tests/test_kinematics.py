"""A(i)DAPT kinematics: invariants of hand-built events, numpy/torch agreement, phase-space limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import chi2

from hepgen.io.aidapt import COLUMNS
from hepgen.physics.kinematics import (
    INVARIANT_NAMES,
    M_PION,
    M_PROTON,
    boost,
    lab_to_cm,
    lab_to_invariants,
    mass2,
    phase_space_limits,
    two_body_momentum,
)
from hepgen.synth.aidapt import phase_space_cm, simulate_sample


def on_shell(momentum, mass) -> np.ndarray:
    momentum = np.asarray(momentum, dtype=np.float64)
    return np.concatenate([[np.sqrt(momentum @ momentum + mass**2)], momentum])


def event_row(e_gamma: float, p: np.ndarray, pip: np.ndarray, pim: np.ndarray) -> np.ndarray:
    """One 16-column row, filled by column name (independent of the generator's packer)."""
    row = np.zeros(len(COLUMNS))
    row[COLUMNS.index("E_gamma")] = e_gamma
    for name, vec in (("p", p), ("pip", pip), ("pim", pim)):
        for axis, component in enumerate(("E", "px", "py", "pz")):
            row[COLUMNS.index(f"{component}_{name}")] = vec[axis]
    return row


def cm_event(angle: float, p_plus: float = 0.5, p_minus: float = 0.4):
    """A CM configuration with a known alpha: the π+ along +x, the π− in the plane spanned by −z
    and +y at the angle ``angle`` from −z (plus a component along x), the proton balancing them.

    Around n+ = x, the (beam, π+) plane contains −z, so alpha is exactly ``angle``.
    Returns the 16-column lab row and the CM four-vectors.
    """
    pip = on_shell([p_plus, 0.0, 0.0], M_PION)
    pim = on_shell(p_minus * np.array([0.3, math.sin(angle), -math.cos(angle)]), M_PION)
    proton = on_shell(-(pip[1:] + pim[1:]), M_PROTON)
    w = pip[0] + pim[0] + proton[0]
    e_gamma = (w**2 - M_PROTON**2) / (2 * M_PROTON)
    velocity = np.array([0.0, 0.0, e_gamma / (e_gamma + M_PROTON)])
    lab = [boost(v[None], velocity[None])[0] for v in (proton, pip, pim)]
    return event_row(e_gamma, *lab), (proton, pip, pim, w)


ANGLES = [0.2, 1.0, math.pi / 2, 2.5, 3.6, 4.9, 6.0]


@pytest.mark.parametrize("angle", ANGLES)
def test_hand_built_event_has_known_invariants(angle):
    row, (proton, pip, pim, w) = cm_event(angle)
    sppim, spipm, tpip, alpha, s = lab_to_invariants(row[None])[0]
    k = (w**2 - M_PROTON**2) / (2 * w)  # photon momentum in the CM
    assert alpha == pytest.approx(angle, abs=1e-9)
    assert s == pytest.approx(w**2, rel=1e-12)
    assert s == pytest.approx(M_PROTON**2 + 2 * M_PROTON * row[COLUMNS.index("E_gamma")], rel=1e-12)
    # p + π− recoils against the π+: (W − E_π+)² − |p_π+|²; likewise for π+π− against the proton.
    assert sppim == pytest.approx((w - pip[0]) ** 2 - pip[1:] @ pip[1:], rel=1e-10)
    assert spipm == pytest.approx((w - proton[0]) ** 2 - proton[1:] @ proton[1:], rel=1e-10)
    # The π+ is at 90° to the beam in the CM: t = mπ² − 2k E*_π+ < 0.
    assert tpip == pytest.approx(M_PION**2 - 2 * k * pip[0], rel=1e-10)
    assert tpip < 0


def test_alpha_mirrors_and_stays_in_range():
    rows = np.stack([cm_event(a)[0] for a in ANGLES])
    mirrored = rows.copy()  # y → −y mirrors the decay plane: alpha → 2π − alpha
    for name in ("py_p", "py_pip", "py_pim"):
        mirrored[:, COLUMNS.index(name)] *= -1
    alpha, alpha_m = lab_to_invariants(rows)[:, 3], lab_to_invariants(mirrored)[:, 3]
    np.testing.assert_allclose(alpha + alpha_m, 2 * np.pi, atol=1e-9)
    assert np.all((alpha >= 0) & (alpha < 2 * np.pi))


def test_rotation_about_the_beam_leaves_invariants_unchanged():
    rows = np.stack([cm_event(a)[0] for a in ANGLES])
    rotated = rows.copy()
    c, s = math.cos(0.7), math.sin(0.7)
    for name in ("p", "pip", "pim"):
        x, y = rows[:, COLUMNS.index(f"px_{name}")], rows[:, COLUMNS.index(f"py_{name}")]
        rotated[:, COLUMNS.index(f"px_{name}")] = c * x - s * y
        rotated[:, COLUMNS.index(f"py_{name}")] = s * x + c * y
    np.testing.assert_allclose(lab_to_invariants(rotated), lab_to_invariants(rows), atol=1e-9)


def test_numpy_and_torch_agree_and_keep_dtype():
    events = simulate_sample("ps", 3000, seed=4)["detector"]
    ref = lab_to_invariants(events)
    out = lab_to_invariants(torch.from_numpy(events))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.shape == (3000, 5)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-12)
    single = lab_to_invariants(torch.from_numpy(events).float())
    assert single.dtype == torch.float32
    assert lab_to_invariants(events.astype(np.float32)).dtype == np.float32
    # float32 keeps the GeV² invariants to ~1e-4 (alpha rounding aside, it wraps at 0 / 2π).
    np.testing.assert_allclose(single.double().numpy()[:, [0, 1, 2, 4]], ref[:, [0, 1, 2, 4]], atol=2e-4)


def test_torch_invariants_are_differentiable():
    events = torch.from_numpy(simulate_sample("ps", 50, seed=2)["vertex"]).requires_grad_()
    lab_to_invariants(events)[:, :3].sum().backward()
    assert torch.isfinite(events.grad).all() and events.grad.abs().sum() > 0


def test_wrong_column_count_is_rejected():
    with pytest.raises(ValueError, match="16"):
        lab_to_invariants(np.zeros((3, 14)))


def test_invariant_names():
    assert INVARIANT_NAMES == ("sppim", "spipm", "tpip", "alpha")


# ---------------------------------------------------------------- four-vector helpers


def test_two_body_momentum_and_boost():
    # ρ → ππ at the nominal mass: p* = √(M²/4 − mπ²).
    assert two_body_momentum(0.775, M_PION, M_PION) == pytest.approx(math.sqrt(0.775**2 / 4 - M_PION**2))
    assert two_body_momentum(2 * M_PION, M_PION, M_PION) == 0.0  # threshold
    rng = np.random.default_rng(0)
    p = np.stack([on_shell(m, M_PROTON) for m in rng.normal(size=(20, 3))])
    beta = rng.uniform(-0.5, 0.5, (20, 3))
    moved = boost(p, beta)
    np.testing.assert_allclose(mass2(moved), M_PROTON**2, rtol=1e-12)
    np.testing.assert_allclose(boost(moved, -beta), p, atol=1e-12)
    rest = np.tile([M_PROTON, 0.0, 0.0, 0.0], (20, 1))  # a particle at rest ends up with velocity beta
    np.testing.assert_allclose(boost(rest, beta)[:, 1:] / boost(rest, beta)[:, :1], beta, atol=1e-14)


def test_lab_to_cm_brings_beam_plus_target_to_rest():
    e_gamma = np.array([3.0, 3.4, 3.8])
    total = np.stack([e_gamma + M_PROTON, 0 * e_gamma, 0 * e_gamma, e_gamma], 1)
    s = M_PROTON**2 + 2 * M_PROTON * e_gamma
    cm = lab_to_cm(total, s)
    np.testing.assert_allclose(cm[:, 0], np.sqrt(s), rtol=1e-12)
    np.testing.assert_allclose(cm[:, 1:], 0.0, atol=1e-12)


# ---------------------------------------------------------------- phase space


def test_phase_space_limits_match_the_reference_table():
    # aidapt.md §1.4 at E_γ = 3.0 and 3.8 GeV.
    e_gamma = np.array([3.0, 3.8])
    lim = phase_space_limits(M_PROTON**2 + 2 * M_PROTON * e_gamma)
    np.testing.assert_allclose(lim["sppim"][0], 1.162, atol=1e-3)
    np.testing.assert_allclose(lim["sppim"][1], [5.817, 7.241], atol=1e-3)
    np.testing.assert_allclose(lim["spipm"][0], 0.0779, atol=1e-4)
    np.testing.assert_allclose(lim["spipm"][1], [2.602, 3.580], atol=1e-3)
    np.testing.assert_allclose(lim["tpip"][0], [-4.60, -6.07], atol=1e-2)
    np.testing.assert_allclose(lim["tpip"][1], -0.001, atol=5e-4)
    assert set(lim) == set(INVARIANT_NAMES[:3])
    torch_lim = phase_space_limits(torch.tensor([6.5, 8.0], dtype=torch.float64))
    assert isinstance(torch_lim["tpip"][0], torch.Tensor) and torch_lim["spipm"][0].shape == (2,)


@pytest.fixture(scope="module")
def ps_vertex() -> np.ndarray:
    return simulate_sample("ps", 60_000, seed=11)["vertex"]


def test_phase_space_invariants_lie_within_the_limits(ps_vertex):
    inv = lab_to_invariants(ps_vertex)
    lim = phase_space_limits(inv[:, 4])
    for i, name in enumerate(INVARIANT_NAMES[:3]):
        low, high = lim[name]
        assert np.all(inv[:, i] >= low - 1e-9), name
        assert np.all(inv[:, i] <= high + 1e-9), name
        # ... and fill them: the sample reaches close to both ends.
        width = high - low
        assert np.min((inv[:, i] - low) / width) < 0.01, name
        assert np.min((high - inv[:, i]) / width) < 0.01, name
    assert np.all((inv[:, 3] >= 0) & (inv[:, 3] < 2 * np.pi))


def test_alpha_is_flat_for_phase_space(ps_vertex):
    alpha = lab_to_invariants(ps_vertex)[:, 3]
    counts, _ = np.histogram(alpha, 24, (0, 2 * np.pi))
    expected = len(alpha) / 24
    stat = ((counts - expected) ** 2 / expected).sum()
    assert chi2.sf(stat, 23) > 1e-3


def test_dalitz_plot_is_flat_at_fixed_energy():
    w = np.full(150_000, 2.7)
    p, pip, pim = phase_space_cm(np.random.default_rng(5), w)
    np.testing.assert_allclose((p + pip + pim)[:, 0], 2.7, rtol=1e-12)
    s23, s13 = mass2(pip + pim), mass2(p + pim)
    edges23 = np.linspace(4 * M_PION**2, (2.7 - M_PROTON) ** 2, 13)
    edges13 = np.linspace((M_PROTON + M_PION) ** 2, (2.7 - M_PION) ** 2, 13)
    counts, _, _ = np.histogram2d(s23, s13, [edges23, edges13])

    def inside(x23, x13, tol=0.0):  # the Dalitz boundary, from the π+π− rest frame
        m23 = np.sqrt(x23)
        e3 = m23 / 2
        e1 = (2.7**2 - x23 - M_PROTON**2) / (2 * m23)
        p1, p3 = np.sqrt(np.maximum(e1**2 - M_PROTON**2, 0)), np.sqrt(np.maximum(e3**2 - M_PION**2, 0))
        return ((e1 + e3) ** 2 - (p1 + p3) ** 2 - tol <= x13) & (x13 <= (e1 + e3) ** 2 - (p1 - p3) ** 2 + tol)

    a, b = np.meshgrid(edges23, edges13, indexing="ij")
    corners = inside(a, b)
    full = corners[:-1, :-1] & corners[1:, :-1] & corners[:-1, 1:] & corners[1:, 1:]
    assert full.sum() > 40
    cells = counts[full]
    stat = ((cells - cells.mean()) ** 2 / cells.mean()).sum()
    assert chi2.sf(stat, full.sum() - 1) > 1e-3
    assert np.all(inside(s23, s13, tol=1e-9))


def test_physics_imports_nothing_from_io():
    """hepgen.physics is pure formulas: the readers may use it, not the other way round."""
    import subprocess
    import sys
    from pathlib import Path

    import hepgen.io.aidapt
    import hepgen.physics.kinematics

    code = (
        "import sys, hepgen.physics.kinematics, hepgen.physics.calo_observables, hepgen.physics.calo_geometry; "
        "print(sorted(m for m in sys.modules if m.startswith('hepgen.io')))"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"
    assert hepgen.io.aidapt.COLUMNS is hepgen.physics.kinematics.COLUMNS  # one layout, read by both
