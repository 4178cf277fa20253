"""The allocator keeps numpy's temporary arrays in the heap (ops/heap.py): measured by the page
faults a window-sized array costs, each command in a fresh process (mallopt is process-wide)."""

from __future__ import annotations

import subprocess
import sys

import pytest

FAULTS = """
import resource, sys
import numpy as np
from monitor.ops.heap import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
x = np.random.rand(100_000)  # a window's holdings at 50 books x 2,000
def window():  # several 800 KB temporaries alive at once, then all freed
    temporaries = [x * k for k in range(8)]
    return sum(t.sum() for t in temporaries)
for _ in range(20):
    window()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    window()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], check=True, capture_output=True, text=True)
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_arrays_stay_in_the_heap_instead_of_faulting_in_again() -> None:
    untuned, tuned = _faults("default"), _faults("tuned")
    assert untuned > 100 * 1_000  # ~196 pages an array, faulted in again each window
    assert tuned < 100  # none once the heap holds them
