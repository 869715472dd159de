"""The `hepgen` command itself: help lists every plugin, `data` makes files, class names are unique."""

from __future__ import annotations

import subprocess
import sys

import callbacks
import datamodules
import hepgen.models
from hepgen.io.calogan import read_calogan


def test_class_names_are_unique_across_plugin_packages():
    names = [*hepgen.models.__all__, *datamodules.__all__, *callbacks.__all__]
    assert len(names) == len(set(names))


def test_help_lists_the_verbs_and_the_choices_but_not_the_bases():
    out = subprocess.run([sys.executable, "-m", "hepgen", "--help"], capture_output=True, text=True, check=True).stdout
    assert "{fit,validate,test,predict,data,export,sweep,ad}" in out
    bases = {"HepDataModule", "PhysicsMetric"}
    for name in {*hepgen.models.__all__, *datamodules.__all__, *callbacks.__all__} - bases:
        assert name in out
    listed = "\n".join(line for line in out.splitlines() if line.startswith(("datamodules", "callbacks", "methods")))
    for base in bases:
        assert base not in listed


def test_data_make_writes_the_real_format(tmp_path):
    cmd = [sys.executable, "-m", "hepgen", "data", "make", "calogan", "--out", str(tmp_path), "--events", "200",
           "--seed", "3", "--particles", "eplus", "gamma"]
    subprocess.run(cmd, check=True, capture_output=True)
    for particle in ("eplus", "gamma"):
        showers = read_calogan(tmp_path / f"{particle}.hdf5")
        assert showers["layer_1"].shape == (200, 12, 12)
    listing = subprocess.run([sys.executable, "-m", "hepgen", "data", "list"], capture_output=True, text=True).stdout
    assert "calogan" in listing
