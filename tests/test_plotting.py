"""Validation figures: right number of panels, a readable PNG, no pyplot state left behind."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from hepgen.physics.calo_geometry import LAYER_SHAPES
from hepgen.physics.calo_observables import OBSERVABLE_NAMES, Binning, compute_observables
from hepgen.plotting import (
    histogram_edges,
    histogram_overlays,
    mean_shower_images,
    response_vs_energy,
    save_figure,
)


def random_showers(seed: int, n: int = 100) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    showers = {
        k: (rng.gamma(0.5, 20.0, (n, *shape)) * (rng.random((n, *shape)) < 0.3)).astype(np.float32)
        for k, shape in LAYER_SHAPES.items()
    }
    return showers, rng.uniform(1, 100, (n, 1))


@pytest.fixture
def samples():
    return random_showers(0), random_showers(1)


def assert_png(path):
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_histogram_overlays_all_observables(samples, tmp_path):
    (ref, e_ref), (gen, e_gen) = samples
    fig = histogram_overlays(compute_observables(ref, e_ref), compute_observables(gen, e_gen))
    assert isinstance(fig, Figure) and len(fig.axes) == len(OBSERVABLE_NAMES)
    assert fig.axes[0].get_xscale() == "log"  # E_tot
    assert "KS=" in fig.axes[0].get_legend().get_texts()[1].get_text()
    assert_png(save_figure(fig, tmp_path / "overlays.png"))


def test_histogram_overlays_partial_grid_and_unknown_name(tmp_path):
    rng = np.random.default_rng(0)
    ref = {name: rng.normal(size=200) for name in ("a", "b", "c", "d", "e")}
    fig = histogram_overlays(ref, ref, title="five panels")
    assert len(fig.axes) == 5  # a 2 x 4 grid with the 3 unused cells removed
    assert fig.axes[4].get_xlabel() == "e"
    assert len(histogram_overlays(ref, ref, names=["a", "c"]).axes) == 2
    assert_png(save_figure(fig, tmp_path / "five.png"))


def test_histogram_edges():
    edges, log = histogram_edges(np.array([0.0, 1.0, 10.0, 100.0]), Binning(log=True), bins=2)
    assert log and np.allclose(edges, [1.0, 10.0, 100.0])  # zeros dropped on a log axis
    edges, log = histogram_edges(np.array([0.2, 0.3]), Binning(range=(0.0, 1.0)), bins=4)
    assert not log and np.allclose(edges, [0, 0.25, 0.5, 0.75, 1])
    edges, _ = histogram_edges(np.full(5, 3.0), bins=2)
    assert np.allclose(edges, [2.5, 3.0, 3.5])  # a constant sample gets a unit-wide range


def test_mean_shower_images(samples, tmp_path):
    (ref, _), (gen, _) = samples
    gen["layer_2"][:] = 0.0  # an empty mean image must still draw
    fig = mean_shower_images(ref, gen)
    assert len(fig.axes) == 6 + 3  # images plus one colour bar per layer
    image_axes = fig.axes[:6]
    assert all(ax.get_images()[0].get_extent() == [-240, 240, -240, 240] for ax in image_axes)
    assert fig.axes[6].get_ylabel() == "mean cell energy [MeV]"
    assert_png(save_figure(fig, tmp_path / "images.png"))


def test_response_vs_energy(samples, tmp_path):
    (ref, e_ref), (gen, e_gen) = samples
    r_ref = compute_observables(ref, e_ref)["response"]
    r_gen = compute_observables(gen, e_gen)["response"]
    fig = response_vs_energy(e_ref, r_ref, e_gen, r_gen, bins=5)
    assert len(fig.axes) == 2
    assert_png(save_figure(fig, tmp_path / "response.png"))


def test_save_figure_creates_dirs_and_adds_suffix(tmp_path):
    fig = Figure()
    fig.subplots().plot([0, 1], [0, 1])
    path = save_figure(fig, tmp_path / "a" / "b" / "plot")
    assert path == tmp_path / "a" / "b" / "plot.png"
    assert_png(path)


def test_no_pyplot_figures_leak(samples):
    (ref, _), (gen, _) = samples
    before = plt.get_fignums()
    mean_shower_images(ref, gen)
    assert plt.get_fignums() == before


def test_discrete_edges_hold_whole_lattice_points():
    occupancy = np.arange(10, 80) / 144  # 70 lattice points
    edges, _ = histogram_edges(occupancy, Binning(discrete=True), bins=50)
    counts, _ = np.histogram(occupancy, edges)
    assert counts.sum() == 70 and set(counts) == {2}  # 35 bins of two points each
