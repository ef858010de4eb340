"""Load guard shared by every bench: a verdict only when the machine was quiet.

    from loadwatch import LoadWatch

    with LoadWatch() as watch:
        ...  # measure
        print(watch.verdict(ratio <= 2.5, "sweep ≤ 2.5× the floor"))

On entry and exit it prints the 1-min load average and the CPU count; in between a daemon thread samples
the load every ~2 s. A bench's own threads (and worker processes) raise the load average too, so each
sample also estimates this process tree's share of it — its CPU use, smoothed over a minute as the
kernel smooths the load — and judges the rest, the other work on the machine. The run is quiet when that
other load stays ≤ 0.5 per core at the start, at every sample and at the end. The estimate counts CPU
actually received, which is less than the threads waiting for it when the machine is contended, so
contention reads as other load (it errs towards "loaded", never towards a false verdict).

`watch.verdict(ok, aim)` gives "meets the aim: <aim>" / "misses the aim: <aim>" when quiet, and
"(loaded: not comparable) <aim>" otherwise. A verdict printed inside the block is judged on the samples so
far; if the load rises later, the end line says that earlier verdicts do not stand.
"""

from __future__ import annotations

import math
import os
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

QUIET_PER_CORE = 0.5
LOAD_WINDOW_S = 60.0  # the 1-min load average is an exponential average with this time constant


def load_average() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _descendants(pid: int) -> list[int]:
    """Live descendant process ids, read from /proc (empty where /proc lacks children lists)."""
    out: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                kids = [int(v) for v in task.read_text().split()]
            except OSError:
                continue
            out += kids
            stack += kids
    return out


def own_cpu_seconds() -> float:
    """CPU seconds used by this process, its live descendants and its reaped children."""
    total = time.process_time()
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total += reaped.ru_utime + reaped.ru_stime
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for pid in _descendants(os.getpid()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += sum(int(v) for v in fields[11:15]) / tick  # utime, stime, cutime, cstime
    return total


def process_age_seconds() -> float:
    """Seconds since this process started (from /proc; 0 where unknown)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return 0.0
    return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)


class LoadWatch:
    """Context manager: prints the load at start and end, samples it while inside, judges verdicts."""

    def __init__(
        self,
        interval_s: float = 2.0,
        *,
        load: Callable[[], float] = load_average,
        own_cpu: Callable[[], float] = own_cpu_seconds,
        clock: Callable[[], float] = time.monotonic,
        cpus: int | None = None,
        age_s: float | None = None,
        out: Callable[[str], None] = print,
    ) -> None:
        self.interval_s = interval_s
        self.cpus = cpus or cpu_count()
        self._load, self._own_cpu, self._clock, self._out = load, own_cpu, clock, out
        self._age_s = age_s
        self.samples: list[tuple[float, float]] = []  # (load average, estimated own share)
        self._verdicts = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._open = False

    @property
    def quiet(self) -> bool:
        """True when the other load stayed ≤ 0.5 per core at the start, every sample and the end."""
        with self._lock:
            return all(self._per_core(load, own) <= QUIET_PER_CORE for load, own in self.samples)

    @property
    def peak_per_core(self) -> float:
        """The highest other-load per core seen so far."""
        with self._lock:
            return max((self._per_core(load, own) for load, own in self.samples), default=0.0)

    def verdict(self, ok: bool, aim: str) -> str:
        """ "meets/misses the aim: <aim>" on a quiet machine, else "(loaded: not comparable) <aim>"."""
        if self._open:
            self.sample()
        if not self.quiet:
            return f"(loaded: not comparable) {aim}"
        self._verdicts += 1
        return f"{'meets' if ok else 'misses'} the aim: {aim}"

    def sample(self) -> tuple[float, float]:
        """Read the load once and update the estimate of this process tree's share of it."""
        with self._lock:
            now, cpu = self._clock(), self._own_cpu()
            if self.samples:
                dt = max(now - self._t, 1e-6)
                decay = math.exp(-dt / LOAD_WINDOW_S)
                own = self.samples[-1][1] * decay + (cpu - self._cpu) / dt * (1 - decay)
            else:  # the CPU used since the process started, spread evenly over its age
                age = process_age_seconds() if self._age_s is None else self._age_s
                own = cpu / age * (1 - math.exp(-age / LOAD_WINDOW_S)) if age > 0 else 0.0
            self._t, self._cpu = now, cpu
            self.samples.append((self._load(), own))
            return self.samples[-1]

    def line(self, when: str) -> str:
        """The printed load line for the latest sample."""
        load, own = self.samples[-1]
        other = max(load - own, 0.0)
        return (
            f"load: 1-min load average {load:.2f} on {self.cpus} CPUs ({load / self.cpus:.2f} per core) {when}; "
            f"this bench ≈{own:.2f} of it, other work {other:.2f} ({other / self.cpus:.2f} per core; "
            f"quiet ≤ {QUIET_PER_CORE} per core)"
        )

    def __enter__(self) -> LoadWatch:
        self._open = True
        self.sample()
        self._out(self.line("at start"))
        self._thread = threading.Thread(target=self._run, name="loadwatch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sample()
        self._open = False
        self._out(self.line("at end"))
        if self.quiet:
            self._out(f"load: quiet throughout ({len(self.samples)} samples, peak {self.peak_per_core:.2f} per core)")
        else:
            note = "; the verdicts above do not stand" if self._verdicts else ""
            self._out(
                f"load: (loaded: not comparable) other work reached {self.peak_per_core:.2f} per core "
                f"(> {QUIET_PER_CORE}) over {len(self.samples)} samples{note}"
            )

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def _per_core(self, load: float, own: float) -> float:
        return max(load - own, 0.0) / self.cpus


def main() -> None:
    """Watch the machine for a few seconds and say whether it is quiet enough to bench."""
    import argparse

    ap = argparse.ArgumentParser(description="Is the machine quiet enough to bench? (the load guard every bench uses)")
    ap.add_argument("--seconds", type=float, default=6.0, help="how long to watch")
    args = ap.parse_args()
    with LoadWatch() as watch:
        time.sleep(args.seconds)
    print(watch.verdict(True, f"machine quiet for {args.seconds:g} s (other load ≤ {QUIET_PER_CORE} per core)"))


if __name__ == "__main__":
    main()
