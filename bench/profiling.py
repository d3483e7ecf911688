"""Profiling helpers: pyinstrument (main thread) and py-spy (all threads, native frames).

py-spy is not a dependency: set ``PY_SPY=/path/to/py-spy`` or put it on PATH
(``pip download py-spy --no-deps`` and unzipping the wheel is enough); else only pyinstrument.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .common import PROFILES, log


def py_spy() -> str | None:
    return os.environ.get("PY_SPY") or shutil.which("py-spy")


@contextmanager
def pyinstrument_to(name: str) -> Iterator[None]:
    """Profile the block with pyinstrument; write text (and html) under bench/profiles/."""
    from pyinstrument import Profiler

    PROFILES.mkdir(exist_ok=True)
    profiler = Profiler(interval=0.001)
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        text = profiler.output_text(unicode=False, color=False, show_all=False)
        (PROFILES / f"{name}.pyinstrument.txt").write_text(text)
        (PROFILES / f"{name}.pyinstrument.html").write_text(profiler.output_html())
        log(f"  pyinstrument profile: {PROFILES / (name + '.pyinstrument.txt')}")


def record_py_spy(
    command: list[str],
    name: str,
    env: dict[str, str] | None = None,
    focus: tuple[str, ...] = (),
) -> Path | None:
    """Run ``command`` under py-spy (all threads, native frames); summarize the hot frames."""
    spy = py_spy()
    if spy is None:
        log("  (py-spy not found: set PY_SPY to profile all threads)")
        return None
    PROFILES.mkdir(exist_ok=True)
    raw = PROFILES / f"{name}.py-spy.collapsed"
    result = subprocess.run(
        [
            spy,
            "record",
            "--threads",
            "--native",
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(raw),
            "--",
            *command,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not raw.exists():
        log(f"  py-spy failed: {result.stderr[-2000:]}")
        return None
    summary = PROFILES / f"{name}.py-spy.txt"
    summary.write_text(summarize_collapsed(raw.read_text(), focus=focus))
    log(f"  py-spy profile: {summary}")
    return summary


# Frames that mean a thread is waiting, not working (lock, queue, condition, socket poll).
IDLE_MARKERS = (
    "PyThread_acquire_lock_timed",
    "_queue_SimpleQueue_get",
    "Condition.wait",
    "Event.wait",
    "poll (libc",
    "epoll_wait",
    "select (libc",
    "sem_wait",
    "sem_timedwait",
    "pthread_cond_wait",
    "pthread_cond_timedwait",
    "nanosleep",
    "futex",
)


def summarize_collapsed(text: str, top: int = 40, focus: tuple[str, ...] = ()) -> str:
    """Top frames by self and by inclusive samples, per thread, from py-spy's raw output.

    With ``focus``, only stacks containing one of those substrings count (e.g. the measured
    phase, not the imports and the input set-up); idle waits are listed apart.
    """
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    idle_threads: Counter[str] = Counter()
    total = idle = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        if focus and not any(f in stack for f in focus):
            continue
        frames = stack.split(";")
        if any(marker in stack for marker in IDLE_MARKERS):
            idle += count
            idle_threads[frames[0]] += count
            continue
        total += count
        threads[frames[0]] += count
        self_counts[_short(frames[-1])] += count
        for frame in {_short(f) for f in frames[1:]}:
            inclusive[frame] += count

    def table(counter: Counter[str]) -> list[str]:
        return [
            f"{100 * n / max(1, total):6.1f}%  {frame}" for frame, n in counter.most_common(top)
        ]

    scope = f", only stacks containing {' or '.join(focus)}" if focus else ""
    lines = [
        f"py-spy: {total} busy samples, {idle} idle (waiting) samples left out "
        f"(all threads, 200 Hz{scope}); percentages are of busy samples.",
        "",
        "Busy samples by thread:",
    ]
    lines += [f"{100 * n / max(1, total):6.1f}%  {t}" for t, n in threads.most_common()]
    lines += ["", "Idle (waiting) samples by thread:"]
    lines += [f"{n:7d}  {t}" for t, n in idle_threads.most_common()]
    lines += ["", "Self time (top frames):", *table(self_counts)]
    lines += ["", "Inclusive time:", *table(inclusive)]
    return "\n".join(lines) + "\n"


def _short(frame: str) -> str:
    """'func (path/to/module.py:12)' -> 'func (module.py:12)'."""
    name, _, where = frame.partition(" (")
    if not where:
        return frame
    return f"{name} ({Path(where.rstrip(')')).name})"


class TimedConnection:
    """Wraps a DuckDB connection and times each statement (first line of its SQL)."""

    def __init__(self, conn: Any, timings: Counter[str]) -> None:
        self._conn = conn
        self._timings = timings

    def _timed(self, method: Callable[..., Any], query: str, *args: Any, **kwargs: Any) -> Any:
        import time

        started = time.perf_counter()
        try:
            return method(query, *args, **kwargs)
        finally:
            key = " ".join(str(query).split())[:110]
            self._timings[key] += time.perf_counter() - started

    def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        return self._timed(self._conn.execute, query, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)
