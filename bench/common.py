"""What the benchmarks share: child processes with per-variant peak RSS, machine facts, RESULTS.md.

Every measured variant runs in a fresh child process (``python -m bench.<module> --child ...``), so
that its peak RSS is its own. The child prints one ``BENCH_RESULT {json}`` line; the parent adds
the wall time, the peak RSS of the child's whole process tree (psutil, sampled every 20 ms) and the
kernel's high-water mark of the largest process (``wait4`` rusage).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import resource
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    """The environment of a `dagster` child: no sync settings of the caller's, and this checkout's
    code first on the path, so a benchmark run from a clone measures the clone, not whatever
    checkout the virtualenv's editable install points at."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUDDER", "DAGSTER_HOME"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


BENCH_DIR = REPO / "bench"
RESULTS = BENCH_DIR / "RESULTS.md"
PROFILES = BENCH_DIR / "profiles"
RESULT_PREFIX = "BENCH_RESULT "
DEFAULT_WORKDIR = Path(os.environ.get("RUDDER_SYNC_BENCH_DIR", "/tmp/rudder_sync_bench"))
MB = 1024 * 1024


# -- child side --------------------------------------------------------------------------------
def emit(result: dict[str, Any]) -> None:
    """Print the child's result for the parent (one line) and flush."""
    result.setdefault("self_max_rss_mb", self_max_rss_mb())
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def self_max_rss_mb() -> float:
    """This process's RSS high-water mark so far (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / MB


class RssSampler:
    """Samples this process's RSS in a thread: peak and a timeline, to show memory is flat."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._process = psutil.Process()
        self._start = time.perf_counter()

    def __enter__(self) -> RssSampler:
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        self.samples.append(
            (time.perf_counter() - self._start, self._process.memory_info().rss / MB)
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def at_fraction(self, fraction: float) -> float:
        """RSS (MB) at that fraction of the sampled duration."""
        if not self.samples:
            return 0.0
        end = self.samples[-1][0]
        for t, rss in self.samples:
            if t >= fraction * end:
                return rss
        return self.samples[-1][1]

    def growth_after(self, fraction: float) -> float:
        """Largest RSS after that fraction of the duration, minus the RSS at that point (MB)."""
        if not self.samples:
            return 0.0
        cut = fraction * self.samples[-1][0]
        later = [rss for t, rss in self.samples if t >= cut]
        return max(later) - self.at_fraction(fraction)

    @property
    def peak(self) -> float:
        return max((rss for _, rss in self.samples), default=0.0)


# -- parent side -------------------------------------------------------------------------------
@dataclass
class ChildRun:
    """One variant in its own process."""

    command: list[str]
    returncode: int
    wall_seconds: float
    tree_peak_rss_mb: float  # sum over the process tree, sampled
    maxrss_mb: float  # kernel high-water mark of the largest process of the tree (wait4)
    result: dict[str, Any] = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""
    killed_for_memory: bool = False
    samples: list[tuple[float, float]] = field(default_factory=list)  # (seconds, tree RSS MB)
    cpu_seconds: float = 0.0  # user + system of the child (and the children it waited for)
    busy_seconds: float = 0.0  # CPU time the whole machine spent during the run

    def other_cpu_share(self, also_ours: float = 0.0) -> float:
        """Share of the machine's CPU capacity used by other processes during the run
        (``also_ours``: CPU seconds of our own helpers, e.g. the gateway)."""
        capacity = self.wall_seconds * (os.cpu_count() or 1)
        foreign = self.busy_seconds - self.cpu_seconds - also_ours
        return max(0.0, foreign) / capacity if capacity else 0.0

    def rss_at(self, fraction: float) -> float:
        """Tree RSS (MB) at that fraction of the wall time (the last live sample at the end)."""
        live = [(t, rss) for t, rss in self.samples if rss > 0]
        for t, rss in live:
            if t >= fraction * self.wall_seconds:
                return rss
        return live[-1][1] if live else 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.killed_for_memory

    @property
    def peak_rss_mb(self) -> float:
        """The larger of the two measures (sampling can miss a short spike, wait4 cannot)."""
        return max(self.tree_peak_rss_mb, self.maxrss_mb)


def run_child(
    command: Sequence[str],
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
    timeout: float = 3600,
    max_rss_mb: float | None = None,
    echo: bool = False,
) -> ChildRun:
    """Run a command, sampling its process tree's RSS; kill it if it passes ``max_rss_mb``."""
    busy = system_busy_seconds()
    started = time.perf_counter()
    proc = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out: list[str] = []
    err: list[str] = []
    readers = [
        threading.Thread(target=_drain, args=(proc.stdout, out, echo), daemon=True),
        threading.Thread(target=_drain, args=(proc.stderr, err, False), daemon=True),
    ]
    for reader in readers:
        reader.start()
    peak = 0.0
    killed = False
    root = psutil.Process(proc.pid)
    rusage = None
    status = 0
    samples: list[tuple[float, float]] = []
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        rss = _tree_rss_mb(root)
        samples.append((time.perf_counter() - started, rss))
        peak = max(peak, rss)
        if max_rss_mb is not None and rss > max_rss_mb and not killed:
            killed = True
            _kill_tree(root)
        if time.perf_counter() - started > timeout and not killed:
            killed = True
            _kill_tree(root)
        time.sleep(0.02)
    wall = time.perf_counter() - started
    busy = system_busy_seconds() - busy
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    stdout, stderr = "".join(out), "".join(err)
    result: dict[str, Any] = {}
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
    return ChildRun(
        command=list(command),
        returncode=proc.returncode,
        wall_seconds=wall,
        tree_peak_rss_mb=peak,
        maxrss_mb=(rusage.ru_maxrss / 1024) if rusage else 0.0,
        result=result,
        stdout=stdout,
        stderr=stderr,
        killed_for_memory=killed,
        samples=samples,
        cpu_seconds=(rusage.ru_utime + rusage.ru_stime) if rusage else 0.0,
        busy_seconds=busy,
    )


def system_busy_seconds() -> float:
    """CPU seconds the machine has spent busy (all processes, all cores) since boot."""
    t = psutil.cpu_times()
    return sum(
        getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal")
    )


def wait_for_quiet(max_busy: float = 0.15, timeout: float = 1800.0) -> float:
    """Wait until other processes leave the machine (nearly) idle, so that figures are not
    skewed by a test suite running beside the benchmark. Returns the busy share measured last;
    after ``timeout`` it goes on (the tables show the other processes' CPU share anyway)."""
    deadline = time.monotonic() + timeout
    quiet_in_a_row = 0
    warned = False
    while True:
        share = psutil.cpu_percent(interval=2.0) / 100
        quiet_in_a_row = quiet_in_a_row + 1 if share <= max_busy else 0
        if quiet_in_a_row >= 2:
            return share
        if time.monotonic() > deadline:
            log(f"  machine still busy ({share:.0%} CPU) after {timeout:.0f}s; measuring anyway")
            return share
        if not warned:
            log(f"  waiting for the machine to be quiet (other processes use {share:.0%} CPU)...")
            warned = True


def _drain(stream: Any, sink: list[str], echo: bool) -> None:
    for line in stream:
        sink.append(line)
        if echo and not line.startswith(RESULT_PREFIX):
            sys.stderr.write("    | " + line)


def _tree_rss_mb(root: psutil.Process) -> float:
    total = 0
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total / MB


def _kill_tree(root: psutil.Process) -> None:
    with contextlib.suppress(psutil.Error):
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
        root.kill()


def child_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- reporting ---------------------------------------------------------------------------------
def machine_info() -> dict[str, str]:
    """The facts a reader needs to compare figures across machines."""
    memory = psutil.virtual_memory().total / 1024**3
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "-"

    return {
        "cpus": f"{os.cpu_count()} ({cpu})" if cpu else str(os.cpu_count()),
        "memory": f"{memory:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "duckdb": version("duckdb"),
        "dagster": version("dagster"),
        "pandas": version("pandas"),
        "pyarrow": version("pyarrow"),
        "httpx": version("httpx"),
        "orjson": version("orjson"),
        "rudder-sdk-python": version("rudder-sdk-python"),
        "uvicorn": version("uvicorn"),
        "rudder_sync": f"{version('rudder_sync')} @ {git_revision()}",
    }


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "rudder_sync"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{rev}{' + uncommitted changes in rudder_sync/' if dirty else ''}"


def invocation() -> str:
    """The command that ran this benchmark, as a user would type it from the repo root."""
    exe = (
        os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else "python"
    )
    args = sys.argv[1:]
    module = Path(sys.argv[0]).stem
    return " ".join([exe, "-m", f"bench.{module}", *(shlex.quote(a) for a in args)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def record_section(name: str, title: str, body: str, command: str) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md, between its markers."""
    info = machine_info()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = "; ".join(f"{k} {v}" for k, v in info.items())
    section = (
        f"<!-- {name}:start -->\n## {title}\n\n"
        f"Measured {stamp}. Command (from the repo root):\n\n```bash\n{command}\n```\n\n"
        f"Machine: {machine}\n\n{body.strip()}\n<!-- {name}:end -->"
    )
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(
        rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S
    )
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text)


def fmt_seconds(value: float) -> str:
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def fmt_mb(value: float) -> str:
    return f"{value:,.0f}"


def fmt_rows(value: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if value >= size and value % (size // 10) == 0:
            text = f"{value / size:g}"
            return f"{text}{unit}"
    return str(value)


def ratio(numerator: float, denominator: float) -> str:
    if not denominator:
        return "-"
    value = numerator / denominator
    return f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
