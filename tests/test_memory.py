"""keep_freed_memory: freed blocks are reused instead of faulting in fresh pages."""

from __future__ import annotations

import subprocess
import sys

# One 4 MB tensor per round, 16 kB larger each time, touched and freed: glibc by default maps each
# one afresh (it is larger than the last one freed) and every page of it faults when touched.
_ROUNDS = """
import resource, sys, torch
from hepgen.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def round_(i):
    return float(torch.empty(1024 * 1024 + 4096 * i).fill_(1.0)[-1])
round_(0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(1, 41):
    round_(i)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 40)
"""


def _faults_per_round(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def test_kept_freed_memory_is_reused_without_page_faults():
    default, kept = _faults_per_round("default"), _faults_per_round("keep")
    assert default > 900  # the 1,024 pages of 4 kB of each new block
    assert kept < default / 4
