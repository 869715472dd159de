"""The sPHENIX jet-background data of UVCGAN-S (Zenodo 17783990), and image folders of the toy mix.

Layout (the reference loader's): ``<root>/<split>/<domain>`` with split ∈ {train, val, test} and
domain ∈ {background, signal, embed}, the file named ``<domain>``, ``<domain>.h5`` or
``<domain>.hdf5``. ``train`` holds all three domains (HIJING background, PYTHIA jets, and PYTHIA
embedded in HIJING), ``val`` and ``test`` only ``embed`` (test: JEWEL quenched jets in HIJING).

Each file holds one HDF5 dataset ``data`` (N, 24, 64): towers of 24 η rows over |η| < 1.1 by 64 φ
columns over 2π (:mod:`hepgen.physics.sphenix_geometry`), E_T in GeV, float16, LZF-compressed,
one chunk (1, 24, 64) per event. hepgen's made ``val``/``test`` files also hold the true parts of
each mixture as datasets ``signal`` and ``background`` of the same shape and settings; the real
files do not.

The toy mix (AFHQ-like): ``<root>/<split>/<family>/*.png|jpg|jpeg``, RGB images.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np

from hepgen.io.errors import DataFileError
from hepgen.io.files import write_atomically
from hepgen.io.hdf5 import open_hdf5
from hepgen.physics.sphenix_geometry import N_ETA, N_PHI

#: The domains in the method's order: a0 (background), a1 (signal), b (mixture).
SPHENIX_DOMAINS = ("background", "signal", "embed")
SPHENIX_SPLITS = ("train", "val", "test")
DATA_KEY = "data"
TRUTH_KEYS = ("signal", "background")
#: The reference loader tries these names in turn.
SUFFIXES = ("", ".h5", ".hdf5")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

HINT = (
    "The real data are Zenodo record 17783990 (archive 2025-06-05_jet_bkg_sub.tar: unpack it so that "
    "<root>/train, val, test hold the files); or make data in this layout with "
    "`hepgen data make sphenix --out DIR`."
)


def domain_file(root: str | Path, split: str, domain: str) -> Path:
    """``root/split/<domain>``, ``<domain>.h5`` or ``<domain>.hdf5``: the first that exists, else the ``.h5`` path."""
    folder = Path(root) / split
    for suffix in SUFFIXES:
        path = folder / f"{domain}{suffix}"
        if path.is_file():
            return path
    return folder / f"{domain}.h5"


def _check_dataset(path: Path, f: h5py.File, key: str, shape: tuple | None = None) -> int:
    """Check one dataset is (N, 24, 64) floats with N ≥ 1 (and ``shape`` when given); return N."""
    ds = f.get(key)
    if not isinstance(ds, h5py.Dataset):
        raise DataFileError(
            f"{path}: no dataset '{key}' (found keys {sorted(f.keys())}); an sPHENIX file holds '{DATA_KEY}' "
            f"(N, {N_ETA}, {N_PHI}) GeV" + (", and made val/test files the truth 'signal' and 'background'."
                                             if key in TRUTH_KEYS else ". Is this the right file?")
        )
    if shape is not None and ds.shape != shape:
        raise DataFileError(
            f"{path}: dataset '{key}' has shape {ds.shape} but '{DATA_KEY}' has {shape}; the truth must hold one "
            "image per mixture. Remake the file."
        )
    if ds.ndim != 3 or ds.shape[1:] != (N_ETA, N_PHI):
        raise DataFileError(
            f"{path}: dataset '{key}' has shape {ds.shape}, expected (N, {N_ETA}, {N_PHI}): 24 η rows over "
            "|η| < 1.1 by 64 φ columns per event."
        )
    if ds.dtype.kind != "f":
        raise DataFileError(f"{path}: dataset '{key}' has dtype {ds.dtype}, expected floats (float16 GeV).")
    if ds.shape[0] == 0:
        raise DataFileError(f"{path}: dataset '{key}' holds no events. Download it again or remake it.")
    return int(ds.shape[0])


def check_sphenix_file(path: str | Path, truth: bool = False) -> int:
    """Check an sPHENIX file's keys and shapes (not its values: files are up to GBs); return N.

    Args:
        path: the HDF5 file.
        truth: also require the datasets ``signal`` and ``background`` with ``data``'s shape.

    Raises:
        DataFileError: missing, unreadable or not HDF5, no ``data``, a shape other than
            (N, 24, 64), non-float values, no events; with ``truth``, missing or mis-shaped truth.
    """
    path = Path(path)
    with open_hdf5(path, "sPHENIX", HINT) as f:
        n = _check_dataset(path, f, DATA_KEY)
        if truth:
            for key in TRUTH_KEYS:
                if not isinstance(f.get(key), h5py.Dataset):
                    raise DataFileError(
                        f"{path}: no truth dataset '{key}' (found keys {sorted(f.keys())}); only hepgen's made val/test "
                        "files carry the true parts. Set the datamodule's `truth: false` for the real files, or "
                        "make data with `hepgen data make sphenix --out DIR`."
                    )
                _check_dataset(path, f, key, f[DATA_KEY].shape)
    return n


def check_finite(array, path: str | Path, key: str = DATA_KEY) -> None:
    """Raise a one-line :class:`DataFileError` naming the file and dataset if ``array`` holds NaN or inf.

    Args:
        array: numpy array or tensor of any shape (a batch, or a block of a scanned file).
    """
    if hasattr(array, "detach"):  # a tensor (any dtype, any device): only the mask comes back
        import torch

        finite = torch.isfinite(array.detach()).cpu().numpy()
    else:
        finite = np.isfinite(np.asarray(array))
    if not finite.all():
        first = np.unravel_index(int(np.argmin(finite)), finite.shape)
        raise DataFileError(
            f"{path}: dataset '{key}' holds {int((~finite).sum())} NaN/inf value(s), the first at index "
            f"{tuple(map(int, first))}. "
            "Clean the file (replace them by 0 or drop the events) and run again."
        )


def _check_block(path: Path, key: str, values: np.ndarray) -> np.ndarray:
    """A block as float16 (M, 24, 64), checked finite after the cast (> 65504 GeV becomes inf)."""
    values = np.asarray(values.detach().cpu().numpy() if hasattr(values, "detach") else values)
    if values.ndim != 3 or values.shape[1:] != (N_ETA, N_PHI):
        raise DataFileError(f"{path}: '{key}' has shape {values.shape}, expected (N, {N_ETA}, {N_PHI}).")
    if values.dtype.kind != "f":
        raise DataFileError(f"{path}: '{key}' has dtype {values.dtype}, expected floats (GeV).")
    with np.errstate(over="ignore"):  # beyond 65504 GeV becomes inf, which check_finite reports
        values = values.astype(np.float16)
    check_finite(values, path, key)
    return values


def stream_sphenix(path: str | Path, n_events: int, keys: list[str], blocks: Iterable[dict]) -> Path:
    """Write ``n_events`` events block by block in the real settings, atomically, never over a file.

    Args:
        path: the file to create.
        n_events: N, the events of every dataset.
        keys: the datasets (``data`` first, then any truth).
        blocks: dicts {key: (M, 24, 64) GeV} whose M add up to N.

    Raises:
        FileExistsError: ``path`` exists.
        DataFileError: a block of the wrong shape or dtype, NaN/inf (also after the float16 cast), or
            blocks that do not add up to ``n_events``.
    """
    path = Path(path)
    if n_events < 1:
        raise DataFileError(f"{path}: nothing to write (N = {n_events}); an sPHENIX file holds at least one event.")

    def write(file) -> None:
        with h5py.File(file, "w") as f:
            # the real settings: float16, LZF, one chunk per event (a random event is one small read)
            sets = {k: f.create_dataset(k, (n_events, N_ETA, N_PHI), np.float16, chunks=(1, N_ETA, N_PHI),
                                        compression="lzf") for k in keys}
            start = 0
            for block in blocks:
                if set(block) != set(keys):
                    raise DataFileError(f"{path}: a block holds {sorted(block)}, expected {sorted(keys)}.")
                size = {len(v) for v in block.values()}
                if len(size) != 1 or start + size.pop() > n_events:
                    raise DataFileError(f"{path}: blocks of unequal sizes or more than {n_events} events.")
                m = len(block[keys[0]])
                for k in keys:
                    sets[k][start:start + m] = _check_block(path, k, block[k])
                start += m
            if start != n_events:
                raise DataFileError(f"{path}: the blocks hold {start} events, expected {n_events}.")

    return write_atomically(path, write)


def write_sphenix(path: str | Path, data, **truth) -> Path:
    """Write one sPHENIX file: ``data`` (N, 24, 64) GeV, and any truth datasets (e.g. ``signal=``,
    ``background=``) of the same shape, as float16, LZF, chunks (1, 24, 64), atomically.

    Raises:
        FileExistsError: ``path`` exists (never overwritten).
        DataFileError: wrong shape or dtype, no events, truth of another shape, NaN/inf (also values
            beyond float16's 65504 GeV).
    """
    path = Path(path)
    arrays = {DATA_KEY: data, **truth}
    shape = np.shape(data)
    for key, values in arrays.items():
        if np.shape(values) != shape:
            raise DataFileError(f"{path}: '{key}' has shape {np.shape(values)} but '{DATA_KEY}' has {shape}.")
    if len(shape) != 3 or tuple(shape[1:]) != (N_ETA, N_PHI) or shape[0] == 0:
        raise DataFileError(f"{path}: '{DATA_KEY}' has shape {shape}, expected (N, {N_ETA}, {N_PHI}) with N >= 1.")
    if path.exists():
        raise FileExistsError(f"{path} exists; hepgen never overwrites a data file. Remove it or choose another path.")
    return stream_sphenix(path, shape[0], list(arrays), [arrays])


# ------------------------------------------------------------------------- image folders (toy mix)
def read_image_folder(folder: str | Path) -> list[Path]:
    """The images (*.png, *.jpg, *.jpeg) of a folder, sorted by name.

    Raises:
        DataFileError: the folder is missing or holds no images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFileError(
            f"image folder not found: {folder}. Put the images there (e.g. AFHQ cat/dog resized to 256 x 256), "
            "or make a toy mix with `hepgen data make toy_mix --out DIR`."
        )
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DataFileError(f"{folder}: no images (*.png, *.jpg, *.jpeg). Put the images there or choose another folder.")
    return paths


def load_image(path: str | Path) -> np.ndarray:
    """One image as RGB (3, H, W) float32 in [0, 1] (8-bit values / 255).

    Raises:
        DataFileError: missing or unreadable image.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    except FileNotFoundError as err:
        raise DataFileError(f"image not found: {path}.") from err
    except (UnidentifiedImageError, OSError) as err:
        raise DataFileError(f"{path} is not a readable image ({err}); replace or remove it.") from err
    return rgb.transpose(2, 0, 1) / 255.0
