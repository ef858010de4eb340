"""bench/loadwatch.py: the load guard judges only on a quiet machine (fake load, CPU and clock: deterministic)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest


def _load_bench_module(name: str):
    """bench/<name>.py by its path: bench/ must not go on sys.path (its supcon.py would shadow tests/supcon)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_loadwatch = _load_bench_module("loadwatch")
LoadWatch, own_cpu_seconds = _loadwatch.LoadWatch, _loadwatch.own_cpu_seconds


class Fake:
    """A scripted load average, this process's CPU seconds and a clock that moves 2 s per reading."""

    def __init__(self, loads: list[float], cpu_rate: float = 0.0) -> None:
        self.loads, self.cpu_rate, self.t = list(loads), cpu_rate, 0.0

    def load(self) -> float:
        return self.loads.pop(0) if len(self.loads) > 1 else self.loads[0]

    def clock(self) -> float:
        self.t += 2.0
        return self.t

    def cpu(self) -> float:
        return self.cpu_rate * self.t


def watch(fake: Fake, lines: list[str], cpus: int = 2) -> LoadWatch:
    # interval long enough that the thread never samples: only start, verdict and end read the fake
    return LoadWatch(3600, load=fake.load, own_cpu=fake.cpu, clock=fake.clock, cpus=cpus, age_s=0.0, out=lines.append)


def test_quiet_machine_gets_a_verdict_and_prints_load_at_start_and_end():
    lines: list[str] = []
    with watch(Fake([0.4, 0.6, 0.9]), lines) as w:
        assert w.verdict(True, "ratio ≤ 2.5") == "meets the aim: ratio ≤ 2.5"
        assert w.verdict(False, "RSS ≤ 2×") == "misses the aim: RSS ≤ 2×"
    assert w.quiet
    assert lines[0].startswith("load: 1-min load average 0.40 on 2 CPUs (0.20 per core) at start")
    assert lines[1].startswith("load: 1-min load average 0.90 on 2 CPUs (0.45 per core) at end")
    assert "quiet throughout" in lines[2]


def test_loaded_machine_never_gets_a_verdict():
    lines: list[str] = []
    with watch(Fake([0.2, 3.0, 0.2]), lines) as w:
        assert w.verdict(True, "ratio ≤ 2.5") == "(loaded: not comparable) ratio ≤ 2.5"
        assert w.verdict(False, "x") == "(loaded: not comparable) x"
    assert not w.quiet
    assert "(loaded: not comparable)" in lines[-1]
    assert "1.50 per core" in lines[-1]


def test_load_at_the_end_withdraws_verdicts_printed_earlier():
    lines: list[str] = []
    with watch(Fake([0.2, 0.2, 4.0]), lines) as w:
        assert w.verdict(True, "a").startswith("meets")
    assert not w.quiet
    assert w.verdict(True, "a") == "(loaded: not comparable) a"
    assert "the verdicts above do not stand" in lines[-1]


def test_load_at_start_alone_makes_the_run_not_comparable():
    with watch(Fake([1.2, 0.1]), []) as w:
        pass
    assert not w.quiet


def test_the_sampling_thread_catches_load_between_start_and_end():
    loads = iter([0.1] + [5.0] * 3 + [0.1] * 10_000)
    w = LoadWatch(0.01, load=lambda: next(loads), own_cpu=lambda: 0.0, cpus=2, age_s=0.0, out=lambda s: None)
    with w:
        while len(w.samples) < 5:
            pass
    assert not w.quiet


class Busy(Fake):
    """The kernel's view of a bench that keeps `cores` CPUs busy from t = 0, plus `other` load."""

    def __init__(self, cores: float, other: float) -> None:
        super().__init__([0.0], cpu_rate=cores)
        self.cores, self.other = cores, other

    def load(self) -> float:
        return self.cores * (1 - math.exp(-self.t / 60)) + self.other


@pytest.mark.parametrize(("other", "quiet"), [(0.6, True), (1.4, False)])
def test_the_bench_s_own_cpu_use_is_not_counted_as_other_load(other, quiet):
    # a bench keeping both cores busy for 10 minutes drives the load average to 2 + other
    lines: list[str] = []
    with watch(Busy(2.0, other), lines) as w:
        for _ in range(300):
            w.sample()
        assert w.verdict(True, "a").startswith("meets" if quiet else "(loaded")
    assert w.samples[-1][0] == pytest.approx(2.0 + other, abs=0.01)
    assert w.samples[-1][1] == pytest.approx(2.0, abs=0.01)
    assert w.quiet is quiet


def test_own_cpu_seconds_counts_this_process():
    before = own_cpu_seconds()
    sum(i * i for i in range(300_000))
    assert own_cpu_seconds() > before
