"""Peak resident memory that a piece of code adds, measured in a fresh Python process (Linux: VmHWM, reset first).

Resident memory sees what tracemalloc misses (PIL's and zlib's own allocations), and a fresh process keeps
one test's frames out of another's figure.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
needs_proc = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc (VmHWM and clear_refs) to read a peak"
)

HARNESS = """
import gc

def _status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

{setup}
gc.collect()
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
_base = _status("VmRSS")
{measured}
print("PEAK", _status("VmHWM") - _base)
"""


def peak_added(setup: str, measured: str) -> tuple[int, str]:
    """Run `setup` (imports, inputs, a warm-up), then `measured`: (bytes of peak resident memory `measured` added
    over what the process held before it, everything the process printed)."""
    code = HARNESS.format(setup=textwrap.dedent(setup), measured=textwrap.dedent(measured))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak = int(proc.stdout.split("PEAK")[-1])
    return peak, proc.stdout
