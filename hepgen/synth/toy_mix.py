"""A made toy image mix: two families of simple RGB images in place of AFHQ cats and dogs.

The UVCGAN-S toy (``toy-mix-blur``) decomposes ``blur(α·cat + (1 − α)·dog)`` (α = 0.5, a 5 × 5
Gaussian blur with σ = 1.1) back into the cat and the dog. Here the two families are drawn, so no
download is needed and every image is known:

* ``blobs`` (the background, a0): 2-5 soft Gaussian blobs of saturated colours on a dark
  background — smooth, low-frequency content;
* ``stripes`` (the signal, a1): a two-colour sinusoidal grating of random orientation, frequency
  and phase, or concentric rings about a random centre — oriented, high-frequency content that
  the blur attenuates, so undoing the mix is not trivial.

Pixel values are in [0, 1] (stored as 8-bit PNG, as AFHQ's images are 8-bit). Files:
``out/{train,val}/{blobs,stripes}/NNNNN.png`` (the AFHQ ``{train,val}/{cat,dog}`` layout) and
``out/toy_mix_made.json``. The reference uses 256 × 256 images; 32 × 32 is the CPU default.

:func:`mix_blur` is the mixing itself, as the datamodule applies it at load time; it reproduces
``torchvision.transforms.functional.gaussian_blur`` (kernel 5, σ = None → 1.1, reflect padding)
with torch only.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hepgen import __version__
from hepgen.synth import calogan

FAMILIES = ("blobs", "stripes")
SPLITS = ("train", "val")
#: Images per random stream: results do not depend on how the chunks run.
CHUNK_IMAGES = 256


# ------------------------------------------------------------------------------ the mix
def gaussian_kernel1d(kernel_size: int = 5, sigma: float | None = None) -> torch.Tensor:
    """The normalised 1-D Gaussian kernel (kernel_size,) of torchvision's gaussian_blur.

    ``sigma`` None gives torchvision's default 0.3·((kernel_size − 1)/2 − 1) + 0.8 (1.1 for 5).
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size: need a positive odd integer, got {kernel_size}.")
    if sigma is None:
        sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, kernel_size)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


def gaussian_blur(image: torch.Tensor, kernel_size: int = 5, sigma: float | None = None) -> torch.Tensor:
    """Blur (B, C, H, W) or (C, H, W) images with a separable Gaussian, reflect-padded at the edges.

    The kernel is the outer product of :func:`gaussian_kernel1d` with itself, applied per channel,
    as torchvision's ``gaussian_blur``. Reflect padding (the edge pixel is the mirror) keeps an
    image's mean nearly unchanged: no light is lost at the borders.
    """
    if image.dim() not in (3, 4):
        raise ValueError(f"gaussian_blur: need (C, H, W) or (B, C, H, W) images, got shape {tuple(image.shape)}.")
    batched = image.unsqueeze(0) if image.dim() == 3 else image
    dtype = batched.dtype if batched.is_floating_point() else torch.float32
    k1 = gaussian_kernel1d(kernel_size, sigma).to(device=batched.device, dtype=dtype)
    channels = batched.shape[1]
    kernel = torch.outer(k1, k1).expand(channels, 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    padded = F.pad(batched.to(dtype), [pad, pad, pad, pad], mode="reflect")
    out = F.conv2d(padded, kernel, groups=channels)
    return out[0] if image.dim() == 3 else out


def mix_blur(a: torch.Tensor, b: torch.Tensor, alpha: float = 0.5, kernel_size: int = 5) -> torch.Tensor:
    """The toy mixture blur(α·a + (1 − α)·b) of two images or batches of the same shape.

    Args:
        a, b: (B, 3, H, W) or (3, H, W) images in [0, 1].
        alpha: weight of ``a``.
        kernel_size: the Gaussian kernel's size (σ from torchvision's default: 1.1 for 5).

    Returns:
        the blurred mixture, same shape as ``a``.
    """
    if a.shape != b.shape:
        raise ValueError(f"mix_blur: the images differ in shape, {tuple(a.shape)} and {tuple(b.shape)}.")
    return gaussian_blur(alpha * a + (1.0 - alpha) * b, kernel_size)


# ------------------------------------------------------------------------------ the families
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1): (y, x) each (1, size, size)."""
    c = (np.arange(size) + 0.5) / size
    y, x = np.meshgrid(c, c, indexing="ij")
    return y[None], x[None]


def _colours(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Saturated random RGB colours (*shape, 3) in [0, 1]: random hue, saturation 0.6-1, value 0.7-1."""
    h = rng.random(shape)
    s = rng.uniform(0.6, 1.0, shape)
    v = rng.uniform(0.7, 1.0, shape)
    k = (np.array([5.0, 3.0, 1.0]) + 6.0 * h[..., None]) % 6.0
    return v[..., None] * (1.0 - s[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))


def draw_blobs(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``n`` blob images (n, size, size, 3) in [0, 1]: 2-5 soft coloured Gaussian blobs on a dark ground."""
    y, x = _grid(size)
    image = np.broadcast_to(rng.uniform(0.0, 0.12, (n, 1, 1, 3)), (n, size, size, 3)).copy()
    count = rng.integers(2, 6, n)
    for k in range(5):
        on = (k < count)[:, None, None, None]
        cy, cx = rng.uniform(0.1, 0.9, (2, n, 1, 1))
        width = rng.uniform(0.06, 0.2, (n, 1, 1))
        profile = np.exp(-0.5 * ((y - cy) ** 2 + (x - cx) ** 2) / width**2)
        image += on * rng.uniform(0.5, 1.0, (n, 1, 1, 1)) * profile[..., None] * _colours(rng, (n,))[:, None, None, :]
    return np.clip(image, 0.0, 1.0)


def draw_stripes(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``n`` stripe images (n, size, size, 3) in [0, 1]: two-colour gratings (3 in 4) or rings (1 in 4)
    of random orientation, frequency (2-8 periods across the image) and phase."""
    y, x = _grid(size)
    theta = rng.uniform(0.0, np.pi, (n, 1, 1))
    freq = rng.uniform(2.0, 8.0, (n, 1, 1))
    phase = rng.uniform(0.0, 2 * np.pi, (n, 1, 1))
    cy, cx = rng.uniform(0.2, 0.8, (2, n, 1, 1))
    along = x * np.cos(theta) + y * np.sin(theta)
    radius = np.hypot(y - cy, x - cx)
    rings = (rng.random(n) < 0.25)[:, None, None]
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * freq * np.where(rings, radius, along) + phase)
    c1, c2 = _colours(rng, (n,)), 0.3 * _colours(rng, (n,))
    return np.clip(wave[..., None] * c1[:, None, None, :] + (1.0 - wave[..., None]) * c2[:, None, None, :], 0.0, 1.0)


_DRAW = {"blobs": draw_blobs, "stripes": draw_stripes}


def simulate_toy_images(family: str, n: int, seed: int = 0, split: str = "train", size: int = 32) -> np.ndarray:
    """Images of one family (n, size, size, 3) float64 in [0, 1], before 8-bit rounding.

    Chunk i of (family, split) uses ``SeedSequence([seed, family index, split index], spawn_key=(i,))``.
    """
    if family not in _DRAW:
        raise ValueError(f"family: choose one of {FAMILIES}, got {family!r}.")
    entropy = [int(seed), FAMILIES.index(family), SPLITS.index(split)]
    parts = []
    for index, start in enumerate(range(0, n, CHUNK_IMAGES)):
        rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(index,)))
        parts.append(_DRAW[family](rng, min(CHUNK_IMAGES, n - start), size))
    return np.concatenate(parts)


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round(image * 255.0).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_toy_mix(
    out: str | Path, events: int = 2_000, seed: int = 0, size: int = 32, progress: bool = True,
    val_events: int | None = None,
) -> list[Path]:
    """Write the toy families as PNG files in the AFHQ layout.

    ``out/train/{blobs,stripes}/NNNNN.png`` (``events`` per family), ``out/val/...`` (``val_events``
    per family, default events // 5), RGB 8-bit, ``size`` × ``size`` pixels; and
    ``out/toy_mix_made.json`` (sizes, seed). The mixtures are made at load time (:func:`mix_blur`).

    Returns:
        every written path, the JSON record last.

    Raises:
        ValueError: bad sizes or seed.
        FileExistsError: a target file exists (checked before anything is written).
    """
    from hepgen.io.files import write_atomically

    events = calogan._check_integer(events, "events", 1)
    seed = calogan._check_integer(seed, "seed", 0)
    size = calogan._check_integer(size, "size", 3)  # reflect padding of the 5 × 5 blur needs ≥ 3 pixels
    counts = {"train": events, "val": calogan._check_integer(max(1, events // 5) if val_events is None else val_events,
                                                             "val_events", 1)}
    out = Path(out)
    record = out / "toy_mix_made.json"
    targets = {(split, family): [out / split / family / f"{i:05d}.png" for i in range(counts[split])]
               for split in SPLITS for family in FAMILIES}
    for path in [record] + [p for paths in targets.values() for p in paths]:
        if path.exists():
            raise FileExistsError(f"{path} exists; hepgen never overwrites a data file. Remove it or choose another folder.")
    written = []
    with calogan._progress() if progress else contextlib.nullcontext() as bar:
        for (split, family), paths in targets.items():
            advance = calogan._bar_advance(bar, f"toy mix {split}/{family}", len(paths))
            for start in range(0, len(paths), CHUNK_IMAGES):
                # the same chunks as simulate_toy_images, drawn one chunk at a time (256 × 256 images are large)
                entropy = [seed, FAMILIES.index(family), SPLITS.index(split)]
                rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(start // CHUNK_IMAGES,)))
                chunk = paths[start:start + CHUNK_IMAGES]
                for path, image in zip(chunk, _DRAW[family](rng, len(chunk), size)):
                    data = _png_bytes(image)
                    written.append(write_atomically(path, lambda f, data=data: f.write(data)))
                advance(len(chunk))
    made = {"hepgen_made": "toy_mix", "hepgen_version": __version__, "events": events, "seed": seed, "size": size,
            "images_per_family": counts, "families": list(FAMILIES), "chunk_images": CHUNK_IMAGES}
    text = (json.dumps(made, indent=2) + "\n").encode()
    written.append(write_atomically(record, lambda f: f.write(text)))
    return written
