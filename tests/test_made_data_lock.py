"""Made data are written once when several processes (or nodes sharing the folder) prepare at once."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from datamodules import CaloGANDataModule
from datamodules.base import lock_path
from hepgen.io.calogan import read_calogan

EVENTS = 60


class CountingCaloGAN(CaloGANDataModule):
    """Logs every call that makes files, and makes slowly enough that an unlocked second process
    would start making too."""

    def make_files(self, missing: list[Path]) -> None:
        with open(self.data_dir.parent / "makers.log", "a") as log:
            log.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        super().make_files(missing)


def _prepare(data_dir: str, barrier, results) -> None:
    dm = CountingCaloGAN(data_dir=data_dir, source="made", made_events=EVENTS)
    barrier.wait()  # both processes reach prepare_data together
    try:
        dm.prepare_data()
        results.put("ok")
    except Exception as err:  # reported to the test, which shows it
        results.put(f"{type(err).__name__}: {err}")


def test_two_processes_preparing_the_same_empty_folder_make_the_files_once(tmp_path):
    data_dir = tmp_path / "calogan"
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    processes = [context.Process(target=_prepare, args=(str(data_dir), barrier, results)) for _ in range(2)]
    for process in processes:
        process.start()
    outcomes = sorted(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    assert outcomes == ["ok", "ok"]
    assert len((tmp_path / "makers.log").read_text().split()) == 1  # made once; the other waited
    assert [p.name for p in data_dir.iterdir()] == ["eplus.hdf5"]  # no temporary file left
    assert lock_path(data_dir) == tmp_path / ".calogan.hepgen-make.lock"  # beside the folder, and kept
    assert lock_path(data_dir).is_file()
    assert len(read_calogan(data_dir / "eplus.hdf5")["energy"]) == EVENTS
    again = CaloGANDataModule(data_dir=str(data_dir), source="made", made_events=EVENTS)
    again.prepare_data()  # accepted as this config's made data
    again.setup("fit")
    assert sum(again.split_sizes.values()) == EVENTS
