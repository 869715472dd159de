"""The made toy image mix: the AFHQ-like folder layout, image values, and the blurred mixture."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hepgen.io import DataFileError
from hepgen.io.sphenix import load_image, read_image_folder
from hepgen.synth.cli import main as data_main
from hepgen.synth.toy_mix import gaussian_blur, gaussian_kernel1d, make_toy_mix, mix_blur, simulate_toy_images


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_mix")
    return out, make_toy_mix(out, events=12, seed=0, size=16, progress=False, val_events=4)


def test_layout_values_and_record(made):
    out, written = made
    for split, n in (("train", 12), ("val", 4)):
        for family in ("blobs", "stripes"):
            paths = read_image_folder(out / split / family)
            assert [p.name for p in paths] == [f"{i:05d}.png" for i in range(n)]
            images = np.stack([load_image(p) for p in paths])
            assert images.shape == (n, 3, 16, 16) and images.dtype == np.float32
            assert images.min() >= 0.0 and images.max() <= 1.0 and images.std() > 0.05
    assert written[-1] == out / "toy_mix_made.json" and len(written) == 2 * (12 + 4) + 1
    record = json.loads((out / "toy_mix_made.json").read_text())
    assert (record["events"], record["seed"], record["size"]) == (12, 0, 16)
    # the PNG holds the drawn image to 8 bits
    drawn = simulate_toy_images("stripes", 12, seed=0, split="train", size=16)
    stored = load_image(out / "train" / "stripes" / "00003.png")
    np.testing.assert_allclose(stored, drawn[3].transpose(2, 0, 1), atol=0.5 / 255 + 1e-6)


def test_families_differ_as_designed():
    blobs, stripes = simulate_toy_images("blobs", 64, size=32), simulate_toy_images("stripes", 64, size=32)
    # blobs: dark ground, smooth; stripes: strong pixel-to-pixel changes
    assert np.median(blobs.reshape(64, -1, 3).min(axis=1).max(axis=1)) < 0.15
    roughness = lambda x: np.abs(np.diff(x, axis=2)).mean()  # noqa: E731
    assert roughness(stripes) > 2 * roughness(blobs)


def test_reproducible_and_never_overwritten(made, tmp_path):
    out, _ = made
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        make_toy_mix(tmp_path / name, events=2, seed=seed, size=8, progress=False)
    blob = lambda d: (tmp_path / d / "train" / "blobs" / "00001.png").read_bytes()  # noqa: E731
    assert blob("a") == blob("b") != blob("c")
    before = (out / "train" / "blobs" / "00000.png").read_bytes()
    with pytest.raises(FileExistsError, match="exists"):
        make_toy_mix(out, events=12, seed=1, size=16, progress=False, val_events=4)
    assert (out / "train" / "blobs" / "00000.png").read_bytes() == before


def test_image_folder_errors_are_one_line_and_name_the_folder(tmp_path):
    for folder in (tmp_path / "missing", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
            (folder / "notes.txt").write_text("no images here")
        with pytest.raises(DataFileError) as err:
            read_image_folder(folder)
        assert str(folder) in str(err.value) and "\n" not in str(err.value)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataFileError, match="broken.png"):
        load_image(bad)


def test_kernel_is_torchvisions_and_sums_to_one():
    k = gaussian_kernel1d(5)
    x = torch.arange(-2.0, 3.0)
    expected = torch.exp(-0.5 * (x / 1.1) ** 2)  # torchvision's σ for kernel 5: 0.3·((5−1)/2 − 1) + 0.8
    torch.testing.assert_close(k, expected / expected.sum())
    assert abs(float(k.sum()) - 1.0) < 1e-6 and torch.equal(k, k.flip(0))
    assert abs(float(torch.outer(k, k).sum()) - 1.0) < 1e-6
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel1d(4)


def test_blur_matches_a_direct_reflect_padded_convolution_and_keeps_the_mean():
    rng = np.random.default_rng(0)
    image = rng.random((3, 12, 10))
    k = gaussian_kernel1d(5).double().numpy()
    padded = np.pad(image, ((0, 0), (2, 2), (2, 2)), mode="reflect")
    direct = np.zeros_like(image)
    for dy in range(5):
        for dx in range(5):
            direct += k[dy] * k[dx] * padded[:, dy:dy + 12, dx:dx + 10]
    blurred = gaussian_blur(torch.from_numpy(image))
    np.testing.assert_allclose(blurred.numpy(), direct, atol=1e-12)
    assert abs(float(blurred.mean()) - image.mean()) < 0.01  # reflect padding loses no light
    constant = torch.full((2, 3, 9, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(constant), constant)
    # a smooth image barely changes; a one-pixel grating is strongly damped
    grating = torch.tensor([0.0, 1.0]).repeat(8).expand(3, 16, 16)
    assert float((gaussian_blur(grating) - 0.5).abs().max()) < 0.2
    assert torch.equal(F.pad(grating[None], [2, 2, 2, 2], mode="reflect")[0, :, 2:-2, 2:-2], grating)


def test_mix_blur():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(4, 3, 16, 16, generator=gen), torch.rand(4, 3, 16, 16, generator=gen)
    torch.testing.assert_close(mix_blur(a, a), gaussian_blur(a))
    torch.testing.assert_close(mix_blur(a[0], a[0]), gaussian_blur(a)[0])  # (3, H, W) too
    torch.testing.assert_close(mix_blur(a, b), gaussian_blur(0.5 * a + 0.5 * b))
    torch.testing.assert_close(mix_blur(a, b, alpha=1.0), gaussian_blur(a))
    mixed = mix_blur(a, b)
    assert mixed.shape == a.shape and 0.0 <= float(mixed.min()) and float(mixed.max()) <= 1.0
    with pytest.raises(ValueError, match="shape"):
        mix_blur(a, b[:, :, :8])


def test_registered_in_the_data_command(tmp_path, capsys):
    data_main(["make", "toy_mix", "--out", str(tmp_path), "--events", "3", "--size", "8"])
    printed = capsys.readouterr().out
    assert f"wrote {tmp_path / 'train' / 'blobs'}" in printed
    assert len(read_image_folder(tmp_path / "val" / "stripes")) == 1
    assert load_image(tmp_path / "train" / "stripes" / "00002.png").shape == (3, 8, 8)
