"""Paired vertex/detector events of gamma p -> pi+ pi- p (A(i)DAPT numpy files) as invariants."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.base import ArrayDictDataset, HepDataModule, _already_batched
from hepgen.io import DataFileError
from hepgen.io.aidapt import DOWNLOAD_HINT, read_event_file, read_paired_files
from hepgen.physics.kinematics import lab_to_invariants

# pi+ momentum components in the 16-column layout (component-major: px at 5, py at 8)
_PX_PIP, _PY_PIP = 5, 8


def event_features(events: np.ndarray) -> dict[str, torch.Tensor]:
    """(N, 16) lab events -> ``invariants`` (N, 4), ``s`` (N, 1) GeV^2, ``phi`` (N, 1) rad, float32.

    ``phi`` is the lab azimuth of the pi+: the one angle the invariants average over (physics is
    symmetric in it, the detector is not), kept to rebuild 4-vectors from generated invariants.
    """
    inv = lab_to_invariants(events)
    phi = np.arctan2(events[:, _PY_PIP], events[:, _PX_PIP])
    arrays = {"invariants": inv[:, :4], "s": inv[:, 4:5], "phi": phi[:, None]}
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}


class AIDAPTDataModule(HepDataModule):
    """Row-paired vertex and detector events in the A(i)DAPT 16-column numpy layout.

    Reads ``<data_dir>/<kind>_vertex_<k>.npy`` and ``<data_dir>/<kind>_detector_<k>.npy`` for
    k < ``n_files`` (or the explicit ``vertex_files``/``detector_files`` lists, as the reference
    config lists them), checks that each pair has the same number of rows, and converts the lab
    4-vectors to the invariants. Batches, physical units:
    ``vertex``/``detector`` (B, 4) = (s_{p pi-}, s_{pi+ pi-}, t_{pi+}) in GeV^2 and alpha in rad;
    ``s_vertex``/``s_detector`` (B, 1) GeV^2; ``phi_vertex``/``phi_detector`` (B, 1) rad.
    Scaling to [-1, 1] is the model's job (its scalers are fitted once and saved with it).

    ``predict`` uses the test split, or the events of ``predict_files`` read as ``predict_level``
    (``vertex``: events to fold; ``detector``: measured events whose s the unfolding uses).

    Args:
        kind: file prefix: ``ps`` (phase space, trains the folding GAN) or ``realistic``.
        n_files: number of files per level.
        vertex_files, detector_files: explicit file lists (relative to data_dir or absolute),
            instead of the ``kind``/``n_files`` names.
        predict_files: 16-column files for ``predict`` (default: the test split).
        predict_level: what ``predict_files`` hold: ``vertex`` or ``detector`` events.
        **kwargs: see :class:`HepDataModule`; ``made_events`` counts generated events of the
            made ``kind`` sample, before the detector acceptance (about half are accepted).
    """

    download_hint = DOWNLOAD_HINT

    def __init__(
        self,
        data_dir: str = "data/aidapt",
        kind: Literal["ps", "realistic"] = "ps",
        n_files: int = 4,
        vertex_files: list[str] | None = None,
        detector_files: list[str] | None = None,
        predict_files: list[str] | None = None,
        predict_level: Literal["vertex", "detector"] = "vertex",
        made_events: int = 200_000,
        batch_size: int = 10_000,
        **kwargs,
    ) -> None:
        super().__init__(data_dir=data_dir, made_events=made_events, batch_size=batch_size, **kwargs)
        if kind not in ("ps", "realistic"):
            raise ValueError(f"kind={kind!r}: choose 'ps' (phase space) or 'realistic'.")
        if predict_level not in ("vertex", "detector"):
            raise ValueError(f"predict_level={predict_level!r}: choose 'vertex' or 'detector'.")
        if (vertex_files is None) != (detector_files is None):
            raise ValueError("give both vertex_files and detector_files (row-paired), or neither.")
        self.kind = kind
        self.n_files = n_files
        self.vertex_files = vertex_files
        self.detector_files = detector_files
        self.predict_files = predict_files
        self.predict_level = predict_level

    def _paths(self, names: list[str] | None, level: str) -> list[Path]:
        if names is None:
            return [self.data_dir / f"{self.kind}_{level}_{k}.npy" for k in range(self.n_files)]
        return [Path(n) if Path(n).is_absolute() else self.data_dir / n for n in names]

    def required_files(self) -> list[Path]:
        return self._paths(self.vertex_files, "vertex") + self._paths(self.detector_files, "detector")

    # --- made data ------------------------------------------------------------------------
    def _made_record(self) -> Path:
        return self.data_dir / f"{self.kind}_made.json"

    def make_files(self, missing: list[Path]) -> None:
        from hepgen.synth.aidapt import make_aidapt

        if len(missing) != len(self.required_files()):
            raise DataFileError(
                f"{self.data_dir}: some {self.kind} files exist and others are missing ({missing[0]}); "
                "delete the partial set to remake it."
            )
        make_aidapt(self.data_dir, events=self.made_events, seed=self.made_seed, samples=(self.kind,), n_files=self.n_files)

    def check_made_file(self, path: Path) -> None:
        record = self._made_record()
        if not record.is_file():
            raise DataFileError(
                f"{path} is not hepgen-made data (no {record.name} beside it) but the config says "
                "`source: made`; hepgen will not overwrite it. Set `source: real` to use it, or choose another data_dir."
            )
        from hepgen.synth.aidapt import sample_seed

        made = json.loads(record.read_text())
        made_as = (made.get("events"), made.get("seed"), made.get("n_files"))
        wanted = (self.made_events, sample_seed(self.made_seed, self.kind), self.n_files)
        if made.get("hepgen_made") != "aidapt" or made_as != wanted:
            raise DataFileError(
                f"{path} holds made data with (events, seed of the sample, n_files) = {made_as} (see {record}) "
                f"but the config asks for {wanted} (made_events, made_seed={self.made_seed}, n_files). Delete the {self.kind}_* files to remake them, or choose another data_dir."
            )

    # --- reading --------------------------------------------------------------------------
    def load_events(self) -> dict[str, torch.Tensor]:
        vertex_paths = self._paths(self.vertex_files, "vertex")
        detector_paths = self._paths(self.detector_files, "detector")
        vertex, detector = read_paired_files(vertex_paths, detector_paths)
        events = {}
        for level, array in (("vertex", vertex), ("detector", detector)):
            features = event_features(array)
            events[level] = features["invariants"]
            events[f"s_{level}"] = features["s"]
            events[f"phi_{level}"] = features["phi"]
        return events

    def predict_dataloader(self) -> DataLoader:
        if self.predict_files is None:
            self.setup("fit")
            dataset = self.datasets["test"]
        else:
            level = self.predict_level
            events = np.concatenate([read_event_file(self._paths([f], level)[0]) for f in self.predict_files])
            features = event_features(events)
            dataset = ArrayDictDataset(
                {level: features["invariants"], f"s_{level}": features["s"], f"phi_{level}": features["phi"]}
            )
        return DataLoader(dataset, batch_size=self.batch_size, collate_fn=_already_batched)
