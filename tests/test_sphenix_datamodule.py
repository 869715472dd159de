"""The decomposition datamodules: sPHENIX files in the real layout, the toy image mix, and the
decomposition written by ``hepgen predict``.

The sPHENIX folders here are written by plain h5py with the published settings (float16, LZF,
one (1, 24, 64) chunk per event), so the datamodule is tested against files it did not write.
Tower values are multiples of 2^-5 GeV below 4 GeV: exact in float16, so a val/test mixture is
bit-exactly its signal plus its background, and every event of a file is a distinct row that a
batch image can be traced back to.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from datamodules.sphenix import SPhenixDataModule, ToyMixDataModule
from hepgen.errors import ConfigValueError
from hepgen.io import DataFileError
from hepgen.io.sphenix import load_image
from hepgen.synth.toy_mix import make_toy_mix, mix_blur

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "experiments" / "uvcgan_s" / "quickstart.yaml"
#: Training domains of different sizes: the mixtures (embed) set the epoch length.
TRAIN_SIZES = {"background": 37, "signal": 53, "embed": 29}
EVAL_SIZES = {"val": 11, "test": 13}
BATCH = 8
TINY_GENERATOR = dict(features=16, n_heads=2, n_blocks=1, ffn_features=32, embed_features=16, unet_features=(8, 8, 8))
TINY_DISCRIMINATOR = {"stage_channels": (8, 8), "blocks_per_stage": 1}


# ------------------------------------------------------------------------------ helpers
def towers(n: int, seed: int) -> np.ndarray:
    """(n, 24, 64) float16 GeV on a 2^-5 GeV grid below 2 GeV (sums of two stay exact in float16)."""
    return (np.random.default_rng(seed).integers(0, 64, (n, 24, 64)) / 32.0).astype(np.float16)


def write_h5(path: Path, chunks=(1, 24, 64), **datasets) -> Path:
    """One file as the published ones are written: plain h5py, float16, LZF, one chunk per event."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, values in datasets.items():
            f.create_dataset(key, data=np.asarray(values, dtype=np.float16), compression="lzf", chunks=chunks)
    return path


def write_real_layout(root: Path, truth: bool = True) -> Path:
    """``root/{train,val,test}/<domain>.h5`` in the real settings; val/test embed = signal + background."""
    for k, (domain, n) in enumerate(TRAIN_SIZES.items()):
        write_h5(root / "train" / f"{domain}.h5", data=towers(n, seed=k))
    for k, (split, n) in enumerate(EVAL_SIZES.items()):
        signal, background = towers(n, seed=10 + k), towers(n, seed=20 + k)
        mixture = (signal.astype(np.float32) + background.astype(np.float32)).astype(np.float16)
        parts = {"signal": signal, "background": background} if truth else {}
        write_h5(root / split / "embed.h5", data=mixture, **parts)
    return root


def read(path: Path, key: str = "data") -> np.ndarray:
    """A dataset as float32, the datamodule's dtype."""
    with h5py.File(path, "r") as f:
        return f[key][:].astype(np.float32)


def row_indices(images: torch.Tensor, rows: np.ndarray) -> list[int]:
    """The file row each (B, 1, 24, 64) image is; fails if an image is no row of the file."""
    where = {row.tobytes(): i for i, row in enumerate(rows)}
    assert len(where) == len(rows), "test data: file rows must be distinct"
    found = [where.get(image[0].numpy().tobytes()) for image in images]
    assert None not in found, "a batch image is not a row of its domain's file"
    return found


def domain_path(root: Path, split: str) -> Path:
    """The mixtures of a split."""
    return root / split / "embed.h5"


def concat(loader) -> dict[str, np.ndarray]:
    """All batches of an evaluation loader, concatenated per key."""
    batches = list(loader)
    return {k: torch.cat([b[k] for b in batches]).numpy() for k in batches[0]}


def one_line_naming(err: pytest.ExceptionInfo, path: Path) -> str:
    message = str(err.value)
    assert "\n" not in message, f"error message is not one line: {message!r}"
    assert str(path) in message, f"error message does not name {path}: {message!r}"
    return message


def digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below ``folder`` (to prove nothing was touched)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def ready(root: Path, **kwargs) -> SPhenixDataModule:
    dm = SPhenixDataModule(data_dir=str(root), source=kwargs.pop("source", "real"), batch_size=BATCH, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory) -> Path:
    """A read-only real-layout folder shared by the tests that do not break it."""
    return write_real_layout(tmp_path_factory.mktemp("sphenix_real"))


@pytest.fixture
def real_copy(real_dir, tmp_path) -> Path:
    """A private copy of the real-layout folder, for the tests that break one file."""
    return Path(shutil.copytree(real_dir, tmp_path / "sphenix"))


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------ 1. reading the real layout
def test_training_batch_is_three_nested_float32_domains_whose_images_are_file_rows(real_dir):
    dm = ready(real_dir)
    assert dm.split_sizes == {"train": TRAIN_SIZES["embed"], **EVAL_SIZES}
    batch = next(iter(dm.train_dataloader()))
    assert list(batch) == ["background", "signal", "embed"]
    for domain, events in batch.items():
        assert list(events) == ["image"], domain
        image = events["image"]
        assert image.shape == (BATCH, 1, 24, 64) and image.dtype == torch.float32, domain
        rows = read(real_dir / "train" / f"{domain}.h5")
        for image_row, i in zip(image, row_indices(image, rows)):
            np.testing.assert_array_equal(image_row[0].numpy(), rows[i])


def _epoch_indices(loader, rows: dict[str, np.ndarray], epoch: int) -> dict[str, list[int]]:
    """The file row of every item of one epoch, per domain, item by item."""
    loader.sampler.set_epoch(epoch)  # what Lightning calls at the start of every epoch
    seen = {domain: [] for domain in rows}
    for batch in loader:
        for domain in rows:
            seen[domain] += row_indices(batch[domain]["image"], rows[domain])
    return seen


def test_an_epoch_visits_every_mixture_once_and_domains_are_paired_afresh_each_epoch(real_dir):
    """The three domains are unpaired: which background or jet meets which mixture in a batch
    position is drawn independently every epoch, while each epoch still sees every mixture."""
    dm = ready(real_dir)
    loader = dm.train_dataloader()
    rows = {d: read(real_dir / "train" / f"{d}.h5") for d in TRAIN_SIZES}
    first, second = (_epoch_indices(loader, rows, epoch) for epoch in (0, 1))
    for seen in (first, second):
        assert sorted(seen["embed"]) == list(range(TRAIN_SIZES["embed"]))
        # the larger domains give distinct events (a permutation cut to the epoch length)
        assert len(set(seen["background"])) == len(set(seen["signal"])) == TRAIN_SIZES["embed"]
    pairs = lambda seen, domain: set(zip(seen["embed"], seen[domain]))  # noqa: E731
    for domain in ("background", "signal"):
        assert pairs(first, domain) != pairs(second, domain), f"{domain} is paired with the mixtures the same way every epoch"
        assert len(pairs(first, domain) & pairs(second, domain)) < TRAIN_SIZES["embed"] // 2
    assert set(first["signal"]) != set(second["signal"])  # other jets of the 53 are drawn
    assert _epoch_indices(loader, rows, 1) == second  # and the draw is a function of the epoch


@pytest.mark.parametrize("split", ["val", "test"])
def test_evaluation_batches_are_file_contents_in_order_with_truth(real_dir, split):
    dm = ready(real_dir)
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    batches = list(loader)
    assert [len(b["embed"]) for b in batches] == [8, EVAL_SIZES[split] - 8]
    for batch in batches:
        assert set(batch) == {"embed", "signal", "background"}
        for value in batch.values():
            assert value.dtype == torch.float32 and value.shape[1:] == (1, 24, 64)
    got = concat(batches)
    path = real_dir / split / "embed.h5"
    for key, dataset in (("embed", "data"), ("signal", "signal"), ("background", "background")):
        np.testing.assert_array_equal(got[key][:, 0], read(path, dataset), err_msg=key)
    np.testing.assert_array_equal(got["embed"], got["signal"] + got["background"])  # the truth is row-aligned

    no_truth = ready(real_dir, truth=False)
    got = concat(no_truth.val_dataloader() if split == "val" else no_truth.test_dataloader())
    assert list(got) == ["embed"]
    np.testing.assert_array_equal(got["embed"][:, 0], read(path))


def test_truth_false_reads_real_files_that_have_no_truth(tmp_path):
    root = write_real_layout(tmp_path, truth=False)
    dm = ready(root, truth=False)
    got = concat(dm.val_dataloader())
    assert list(got) == ["embed"] and len(got["embed"]) == EVAL_SIZES["val"]


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_predict_split_chooses_the_mixtures_predict_serves(real_dir, split):
    dm = SPhenixDataModule(data_dir=str(real_dir), batch_size=BATCH, predict_split=split)
    dm.prepare_data()
    dm.setup("predict")
    got = concat(dm.predict_dataloader())
    np.testing.assert_array_equal(got["embed"][:, 0], read(domain_path(real_dir, split)))
    if split == "train":
        assert list(got) == ["embed"]  # training mixtures have no truth
    else:
        assert set(got) == {"embed", "signal", "background"}
        np.testing.assert_array_equal(got["signal"][:, 0], read(domain_path(real_dir, split), "signal"))


def test_an_unknown_predict_split_is_refused():
    with pytest.raises(ConfigValueError, match="predict_split='valid'"):
        SPhenixDataModule(data_dir="nowhere", predict_split="valid")


# ------------------------------------------------------------------------------ 2. bad input
def _break(root: Path, case: str) -> tuple[Path, list[str], dict]:
    """Break one file of ``root`` as ``case`` says; return it, words its error must hold, and
    datamodule options."""
    if case == "missing":
        path = root / "train" / "signal.h5"
        path.unlink()
        return path, ["data file not found", "17783990", "source: made"], {}
    if case == "no_data":
        path = root / "train" / "background.h5"
        path.unlink()
        write_h5(path, images=towers(37, 0))
        return path, ["no dataset 'data'", "'images'"], {}
    if case == "wrong_shape":
        path = root / "train" / "embed.h5"
        path.unlink()
        write_h5(path, chunks=(1, 24, 63), data=np.zeros((29, 24, 63)))
        return path, ["'data'", "(29, 24, 63)", "(N, 24, 64)"], {}
    if case == "wrong_shape_signal":
        path = root / "train" / "signal.h5"
        path.unlink()
        write_h5(path, chunks=(1, 24, 63), data=np.zeros((53, 24, 63)))
        return path, ["'data'", "(53, 24, 63)"], {}
    if case == "empty":
        path = root / "val" / "embed.h5"
        path.unlink()
        empty = np.zeros((0, 24, 64))
        write_h5(path, chunks=None, data=empty, signal=empty, background=empty)
        return path, ["no events"], {}
    if case == "no_truth":
        path = root / "val" / "embed.h5"
        path.unlink()
        write_h5(path, data=towers(11, 0), background=towers(11, 1))
        return path, ["no truth dataset 'signal'", "truth: false"], {"truth": True}
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "no_data", "wrong_shape", "wrong_shape_signal", "empty", "no_truth"])
def test_bad_files_give_one_line_errors_naming_the_file(real_copy, case):
    path, words, options = _break(real_copy, case)
    dm = SPhenixDataModule(data_dir=str(real_copy), batch_size=BATCH, **options)
    with pytest.raises(DataFileError) as err:
        dm.prepare_data()
        dm.setup("fit")
    message = one_line_naming(err, path)
    for word in words:
        assert word in message, (word, message)


def _nan_dir(root: Path) -> Path:
    """``root`` with a NaN in event 7 of train/signal.h5 and in event 3 of val's true background."""
    signal = towers(TRAIN_SIZES["signal"], 1)
    signal[7, 4, 5] = np.nan
    (root / "train" / "signal.h5").unlink()
    write_h5(root / "train" / "signal.h5", data=signal)
    val = root / "val" / "embed.h5"
    with h5py.File(val, "r+") as f:
        f["background"][3, 0, 0] = np.nan
    return root


def _stub_trainer(stage: str) -> SimpleNamespace:
    return SimpleNamespace(
        training=stage == "train", testing=stage == "test", predicting=stage == "predict", world_size=1, global_rank=0
    )


def _training_batches_until_nan(dm):
    """A clean training batch and one holding the bad jet (an epoch draws 29 of the 53 jets)."""
    clean = nan = None
    loader = dm.train_dataloader()
    for epoch in range(10):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            if torch.isnan(batch["signal"]["image"]).any():
                nan = batch
            else:
                clean = batch
        if nan is not None:
            break
    assert clean is not None and nan is not None
    return clean, nan


def test_nan_in_a_training_batch_names_its_file_when_the_batch_arrives(real_copy):
    root = _nan_dir(real_copy)
    dm = ready(root)  # values are not scanned up front: the structure is fine
    clean, nan = _training_batches_until_nan(dm)
    dm.trainer = _stub_trainer("train")
    assert dm.on_after_batch_transfer(clean, 0) is clean
    with pytest.raises(DataFileError) as err:
        dm.on_after_batch_transfer(nan, 0)
    message = one_line_naming(err, root / "train" / "signal.h5")
    assert "NaN" in message and "background.h5" not in message and "embed.h5" not in message

    val = next(iter(dm.val_dataloader()))  # event 3 of the first batch
    dm.trainer = _stub_trainer("validate")
    with pytest.raises(DataFileError) as err:
        dm.on_after_batch_transfer(val, 0)
    message = one_line_naming(err, root / "val" / "embed.h5")
    assert "dataset background" in message


def test_nan_in_a_training_batch_outside_a_trainer_names_the_training_file(real_copy):
    """With ``trainer`` unset the datamodule cannot ask for the stage, but a nested batch is
    a training batch: the error should still name train/signal.h5."""
    root = _nan_dir(real_copy)
    dm = ready(root)
    _, nan = _training_batches_until_nan(dm)
    assert dm.trainer is None
    with pytest.raises(DataFileError) as err:
        dm.on_after_batch_transfer(nan, 0)
    message = str(err.value)
    assert str(root / "train" / "signal.h5") in message, (
        "BUG (datamodules/sphenix.py, SPhenixDataModule.on_after_batch_transfer): with trainer None a "
        f"training batch is checked as a 'val' batch and the NaN is blamed on the val file: {message!r}"
    )


def test_cli_fit_with_a_missing_domain_file_is_one_line_and_leaves_no_run(real_copy, tmp_path, capsys, monkeypatch):
    from hepgen.cli import main

    (real_copy / "train" / "signal.h5").unlink()
    runs = tmp_path / "runs"
    monkeypatch.delenv("HEPGEN_DEBUG", raising=False)
    args = [
        "fit", "-c", str(QUICKSTART),
        "--data.init_args.data_dir", str(real_copy), "--data.init_args.source", "real",
        "--run.root", str(runs), "--run.experiment", "tiny", "--trainer.logger", "false",
        "--model.init_args.generator", json.dumps(TINY_GENERATOR),
        "--model.init_args.discriminator_args", json.dumps(TINY_DISCRIMINATOR),
    ]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hepgen: error: "), err
    assert f"data file not found: {real_copy / 'train' / 'signal.h5'}" in err[0] and "17783990" in err[0]
    assert not (runs / "tiny").exists()


# ------------------------------------------------------------------------------ 3. source: made
MADE = 5  # training mixtures of made data (val and test get one each)


@pytest.fixture
def made_dir(tmp_path) -> Path:
    root = tmp_path / "made"
    SPhenixDataModule(data_dir=str(root), source="made", made_events=MADE).prepare_data()
    assert (root / "sphenix_made.json").is_file()
    return root


def test_made_data_are_read_with_the_real_reader(made_dir):
    dm = ready(made_dir, source="made", made_events=MADE)
    assert dm.split_sizes == {"train": MADE, "val": 1, "test": 1}
    got = concat(dm.test_dataloader())
    np.testing.assert_array_equal(got["embed"], got["signal"] + got["background"])


def test_made_data_with_a_file_deleted_are_incomplete_and_not_remade(made_dir):
    (made_dir / "val" / "embed.h5").unlink()
    before = digest(made_dir)
    with pytest.raises(DataFileError) as err:
        SPhenixDataModule(data_dir=str(made_dir), source="made", made_events=MADE).prepare_data()
    message = one_line_naming(err, made_dir / "val" / "embed.h5")
    assert "incomplete" in message and "Delete the folder" in message
    assert digest(made_dir) == before


@pytest.mark.parametrize("events, seed", [(MADE + 1, 0), (MADE, 1)])
def test_made_data_of_other_events_or_seed_are_a_mismatch(made_dir, events, seed):
    before = digest(made_dir)
    with pytest.raises(DataFileError) as err:
        SPhenixDataModule(data_dir=str(made_dir), source="made", made_events=events, made_seed=seed).prepare_data()
    message = one_line_naming(err, made_dir)
    assert f"{{'events': {MADE}, 'seed': 0}}" in message and f"asks for {{'events': {events}, 'seed': {seed}}}" in message
    assert digest(made_dir) == before


def test_made_folder_with_only_the_record_left_is_a_one_line_data_error(made_dir):
    """Every .h5 deleted, sphenix_made.json left: 'some files present' as well."""
    for path in made_dir.rglob("*.h5"):
        path.unlink()
    try:
        SPhenixDataModule(data_dir=str(made_dir), source="made", made_events=MADE).prepare_data()
    except DataFileError as err:
        assert "\n" not in str(err)
    except FileExistsError as err:
        raise AssertionError(
            "BUG (SPhenixDataModule.make_files): the JSON record is not among required_files, so a made folder "
            "whose .h5 files were all deleted calls make_sphenix, which raises FileExistsError (not a hepgen "
            f"error: the CLI shows a traceback instead of one line): {err}"
        ) from err
    else:  # remade: also acceptable
        assert (made_dir / "val" / "embed.h5").is_file()


def test_source_made_refuses_a_real_folder_without_touching_it(real_copy):
    before = digest(real_copy)
    with pytest.raises(DataFileError) as err:
        SPhenixDataModule(data_dir=str(real_copy), source="made", made_events=MADE).prepare_data()
    message = one_line_naming(err, real_copy / "train" / "background.h5")
    assert "not hepgen-made data" in message and "will not overwrite" in message and "source: real" in message
    assert digest(real_copy) == before
    assert not (real_copy / "sphenix_made.json").exists()


# ------------------------------------------------------------------------------ 4. the toy mix
TOY_SIZE = 16


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy_mix")
    make_toy_mix(root, events=12, size=TOY_SIZE, val_events=6, progress=False)
    return root


def toy_images(root: Path, split: str, family: str) -> torch.Tensor:
    return torch.from_numpy(np.stack([load_image(p) for p in sorted((root / split / family).glob("*.png"))]))


def toy_ready(root: Path, **kwargs) -> ToyMixDataModule:
    dm = ToyMixDataModule(data_dir=str(root), image_size=kwargs.pop("image_size", TOY_SIZE), batch_size=4, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_toy_training_batch_is_nested_rgb_in_unit_range(toy_dir):
    dm = toy_ready(toy_dir)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"background", "signal", "embed"}
    for domain, events in batch.items():
        image = events["image"]
        assert image.shape == (4, 3, TOY_SIZE, TOY_SIZE) and image.dtype == torch.float32, domain
        assert image.min() >= 0.0 and image.max() <= 1.0, domain
    blobs = toy_images(toy_dir, "train", "blobs")
    for image in batch["background"]["image"]:
        assert (blobs - image).abs().flatten(1).max(1).values.min() < 1e-6  # a training blob image


def test_toy_val_mixtures_are_blurred_mixes_of_their_own_fixed_parts(toy_dir):
    dm = toy_ready(toy_dir)
    first, second = list(dm.val_dataloader()), list(dm.val_dataloader())
    for batch in first:
        assert set(batch) == {"embed", "background", "signal"}
        torch.testing.assert_close(batch["embed"], mix_blur(batch["background"], batch["signal"], 0.5), atol=1e-6, rtol=0)
    got = {k: torch.cat([b[k] for b in first]) for k in first[0]}
    torch.testing.assert_close(got["background"], toy_images(toy_dir, "val", "blobs"), atol=1e-6, rtol=0)  # file order
    stripes = toy_images(toy_dir, "val", "stripes")
    partners = [int((stripes - s).abs().flatten(1).max(1).values.argmin()) for s in got["signal"]]
    torch.testing.assert_close(got["signal"], stripes[partners], atol=1e-6, rtol=0)
    assert sorted(partners) == list(range(6))  # a permutation of the val stripes
    again = {k: torch.cat([b[k] for b in second]) for k in second[0]}
    for key in got:
        assert torch.equal(got[key], again[key]), f"val {key} differs between two reads"


def _mixture_pairs(dm, blobs, stripes, epoch: int) -> dict[int, int]:
    """blob index -> stripes partner of each training mixture of ``epoch`` (found by trying all pairs)."""
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    n_a, n_b = len(blobs), len(stripes)
    candidates = mix_blur(blobs.repeat_interleave(n_b, 0), stripes.repeat(n_a, 1, 1, 1), 0.5).view(n_a, n_b, -1)
    pairs = {}
    for batch in loader:
        for mixture in batch["embed"]["image"]:
            distance = (candidates - mixture.flatten()).abs().max(2).values
            i, j = divmod(int(distance.argmin()), n_b)
            assert float(distance[i, j]) < 1e-6, "a training mixture is no mix of a training blob and stripe image"
            pairs[i] = j
    return pairs


def test_toy_training_mixture_partners_change_with_the_epoch(toy_dir):
    dm = toy_ready(toy_dir)
    blobs, stripes = toy_images(toy_dir, "train", "blobs"), toy_images(toy_dir, "train", "stripes")
    first, second = (_mixture_pairs(dm, blobs, stripes, epoch) for epoch in (0, 1))
    assert sorted(first) == sorted(second) == list(range(12))  # every blob is mixed once per epoch
    assert first != second, "training mixtures keep the same partners every epoch"
    assert _mixture_pairs(dm, blobs, stripes, 1) == second


def test_toy_images_of_the_wrong_size_are_a_one_line_error_naming_the_folder(toy_dir):
    with pytest.raises(DataFileError) as err:
        toy_ready(toy_dir, image_size=32)
    message = one_line_naming(err, toy_dir / "train" / "blobs")
    assert f"{TOY_SIZE} x {TOY_SIZE}" in message and "image_size 32" in message


# ------------------------------------------------------------------------------ 5. the decomposition writer
def test_decomposition_writer_writes_the_ema_decomposition_of_the_test_split(real_dir, tmp_path, one_thread):
    import lightning as L

    from callbacks.decomposition import DecompositionWriter
    from hepgen.models.uvcgan_s import StratifiedCycleGAN

    torch.manual_seed(0)
    model = StratifiedCycleGAN(generator=TINY_GENERATOR, discriminator_args=TINY_DISCRIMINATOR)
    with torch.no_grad():  # move the live decomposer away from its EMA copy: predict must use the copy
        for p in model.gen_ba.parameters():
            p.add_(0.05 * torch.randn_like(p))
    dm = SPhenixDataModule(data_dir=str(real_dir), batch_size=BATCH)

    def predict() -> None:
        trainer = L.Trainer(
            logger=False, enable_checkpointing=False, default_root_dir=tmp_path, accelerator="cpu",
            enable_progress_bar=False, enable_model_summary=False, callbacks=[DecompositionWriter(png_examples=2)],
        )  # fmt: skip
        trainer.predict(model, datamodule=dm, return_predictions=False)

    predict()
    out = tmp_path / "predictions" / "decomposition.h5"
    test_file = real_dir / "test" / "embed.h5"
    with h5py.File(out, "r") as f:
        assert sorted(f) == ["background", "embed", "signal", "true_background", "true_signal"]
        for key, ds in f.items():
            assert (ds.shape, ds.dtype, ds.compression, ds.chunks) == (
                (EVAL_SIZES["test"], 1, 24, 64), np.float32, "lzf", (1, 1, 24, 64)), key
        written = {key: ds[:] for key, ds in f.items()}
    np.testing.assert_array_equal(written["embed"][:, 0], read(test_file))
    np.testing.assert_array_equal(written["true_signal"][:, 0], read(test_file, "signal"))
    np.testing.assert_array_equal(written["true_background"][:, 0], read(test_file, "background"))

    model.eval()
    embed = torch.from_numpy(written["embed"])
    background, signal = model.decompose(embed)
    np.testing.assert_allclose(written["signal"], signal.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(written["background"], background.numpy(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        _, live_signal = model.split(model.norm.inverse(model.gen_ba(model.norm(embed))))
    assert not np.allclose(written["signal"], live_signal.numpy(), atol=1e-3), "predict used the live network, not the EMA copy"

    png = tmp_path / "predictions" / "decomposition_examples.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = out.read_bytes()
    predict()
    assert (tmp_path / "predictions" / "decomposition.1.h5").is_file()
    assert out.read_bytes() == first
    assert (tmp_path / "predictions" / "decomposition.1_examples.png").is_file()
    np.testing.assert_array_equal(read(tmp_path / "predictions" / "decomposition.1.h5", "embed"), written["embed"])
