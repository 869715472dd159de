"""AIDAPTDataModule: the real-or-made contract and its errors, and what a batch holds."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from datamodules.aidapt import AIDAPTDataModule
from hepgen.io import DataFileError
from hepgen.physics.kinematics import lab_to_invariants
from tests.conftest import AIDAPT_EVENTS


def test_batches_hold_the_invariants_of_the_paired_files(aidapt_dir):
    data = AIDAPTDataModule(data_dir=str(aidapt_dir), source="real", val_fraction=0.0, test_fraction=0.0)
    data.prepare_data()
    data.setup("fit")
    train = data.datasets["train"].tensors
    vertex = np.concatenate([np.load(aidapt_dir / f"ps_vertex_{k}.npy") for k in range(4)])
    expected = lab_to_invariants(vertex)
    # the split is a permutation: compare sorted s values and the invariant sums
    assert np.allclose(np.sort(train["s_vertex"][:, 0].numpy()), np.sort(expected[:, 4]), rtol=1e-6)
    assert np.allclose(train["vertex"].double().sum(0).numpy(), expected[:, :4].sum(0), rtol=1e-5)


def test_missing_real_file_names_it_and_says_how_to_make_one(tmp_path):
    data = AIDAPTDataModule(data_dir=str(tmp_path), source="real")
    with pytest.raises(DataFileError, match=r"ps_vertex_0\.npy.*hepgen data make aidapt"):
        data.prepare_data()


def test_made_source_refuses_files_it_did_not_make(aidapt_dir, tmp_path):
    for k in range(4):
        for level in ("vertex", "detector"):
            shutil.copy(aidapt_dir / f"ps_{level}_{k}.npy", tmp_path)
    data = AIDAPTDataModule(data_dir=str(tmp_path), source="made", made_events=AIDAPT_EVENTS)
    with pytest.raises(DataFileError, match=r"not hepgen-made.*ps_made\.json"):
        data.prepare_data()


def test_made_source_refuses_made_files_of_another_size(aidapt_dir):
    data = AIDAPTDataModule(data_dir=str(aidapt_dir), source="made", made_events=AIDAPT_EVENTS + 1)
    with pytest.raises(DataFileError, match=r"made_events"):
        data.prepare_data()


def test_made_source_refuses_a_partial_set(aidapt_dir, tmp_path):
    for name in ("ps_vertex_0.npy", "ps_detector_0.npy", "ps_made.json"):
        shutil.copy(aidapt_dir / name, tmp_path)
    data = AIDAPTDataModule(data_dir=str(tmp_path), source="made", made_events=AIDAPT_EVENTS)
    with pytest.raises(DataFileError, match=r"some ps files exist and others are missing"):
        data.prepare_data()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "rho"}, "kind='rho'"),
        ({"predict_level": "parton"}, "predict_level='parton'"),
        ({"vertex_files": ["ps_vertex_0.npy"]}, "both vertex_files and detector_files"),
    ],
)
def test_bad_options_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AIDAPTDataModule(**kwargs)


def test_predict_files_are_read_at_the_given_level(aidapt_dir):
    data = AIDAPTDataModule(
        data_dir=str(aidapt_dir), source="real", predict_files=["realistic_detector_1.npy"], predict_level="detector"
    )
    batch = next(iter(data.predict_dataloader()))
    assert set(batch) == {"detector", "s_detector", "phi_detector"}
    n = len(np.load(aidapt_dir / "realistic_detector_1.npy"))
    assert len(batch["detector"]) == min(n, data.batch_size) and batch["detector"].dtype == torch.float32
