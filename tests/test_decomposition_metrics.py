"""DecompositionMetrics' jet calibration: fitted on validation jets, frozen, carried to test."""

from __future__ import annotations

import json
import shutil

import h5py
import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from callbacks.decomposition import DecompositionMetrics
from datamodules.sphenix import SPhenixDataModule

VAL_SCALE, TEST_SCALE = 0.9, 0.7


class ScaledTruth(pl.LightningModule):
    """A stand-in decomposer whose extracted jets are the true jets times a response that
    depends on the background under them, as a real subtraction's does: ``VAL_SCALE`` on events
    without background, ``TEST_SCALE`` on events with it."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Linear(1, 1)

    def evaluation_samples(self, batch: dict, generator=None) -> dict[str, tuple]:
        truth, background, embed = batch["signal"], batch["background"], batch["embed"]
        quiet = background.sum(dim=(1, 2, 3), keepdim=True) == 0
        extracted = truth * torch.where(quiet, VAL_SCALE, TEST_SCALE)
        return {"signal": (truth, extracted), "background": (background, embed - extracted), "embed": (embed, embed)}

    def validation_step(self, batch, batch_idx) -> None:
        pass

    def test_step(self, batch, batch_idx) -> None:
        pass


@pytest.fixture()
def quiet_val_dir(sphenix_dir, tmp_path):
    """The made sPHENIX folder with its validation mixtures rewritten by h5py, in the real layout
    (float16, LZF, one chunk per event), as jets without background: embed = signal."""
    folder = tmp_path / "sphenix"
    shutil.copytree(sphenix_dir, folder)
    path = folder / "val" / "embed.h5"
    with h5py.File(path, "r") as f:
        signal = f["signal"][:]
    path.unlink()
    with h5py.File(path, "w") as f:
        for name, values in (("data", signal), ("signal", signal), ("background", np.zeros_like(signal))):
            f.create_dataset(name, data=values, dtype="float16", compression="lzf", chunks=(1, 24, 64))
    return folder


def run_stage(stage: str, data_dir, root) -> dict:
    data = SPhenixDataModule(data_dir=str(data_dir), source="real", batch_size=4)
    metric = DecompositionMetrics(max_events=100, radii=(0.4,))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, callbacks=[metric], default_root_dir=root)  # fmt: skip
    getattr(trainer, stage)(ScaledTruth(), datamodule=data)
    return json.loads((root / "metrics.json").read_text())["val" if stage == "validate" else "test"]


def test_validation_calibrates_on_one_half_and_scores_the_other(quiet_val_dir, tmp_path):
    values = run_stage("validate", quiet_val_dir, tmp_path)
    assert values["jet/jes_r04"] == pytest.approx(VAL_SCALE)
    assert values["jet/calib_b_r04"] == pytest.approx(VAL_SCALE)
    assert values["jet/jes_cal_r04"] == pytest.approx(1.0)
    assert values["jet/jer_cal_r04"] == pytest.approx(0.0, abs=1e-6)


def test_test_jets_carry_the_frozen_validation_calibration(quiet_val_dir, tmp_path):
    """The test split's jets (with background, response 0.7) are calibrated with the line fitted
    on the validation jets (response 0.9): 0.7 / 0.9, not the 1.0 a line fitted on the test
    jets themselves would give."""
    values = run_stage("test", quiet_val_dir, tmp_path)
    assert values["jet/jes_r04"] == pytest.approx(TEST_SCALE)
    assert values["jet/calib_b_r04"] == pytest.approx(VAL_SCALE)
    assert values["jet/calib_a_r04"] == pytest.approx(0.0, abs=1e-4)
    assert values["jet/jes_cal_r04"] == pytest.approx(TEST_SCALE / VAL_SCALE)
    # the baselines are calibrated on the validation split too (no background there: rho = 0)
    assert values["area/jet/calib_b_r04"] == pytest.approx(1.0, abs=0.02)
    assert np.isfinite(values["jer_cal_r04_over_area"])
