"""The initial sync (`send_initial_results: true`, every row sent as `added`), before and after, in
one run: a baseline commit's code against this checkout's, on the same data, alternating.

The baseline is checked out with `git worktree add` (``--baseline``, default the commit before
issue 25's item 3) and put first on the `dagster` child's PYTHONPATH, so that the same virtualenv
runs either code. Each run is `dagster job execute` of the sync on a fresh state (the state
folder and the stored frames removed), the model read from the same DuckDB warehouse, delivered
to the same counting gateway (every row must arrive once); rounds alternate the order (AB, BA,
...), and the tables give medians of ``--repeat`` runs: wall time (process start-up included),
the three steps' durations from Dagster's log, CPU seconds of the process, peak RSS, and the CPU
share other processes used meanwhile (the gateway's own CPU left out).

    .venv/bin/python -m bench.bench_initial_sync --repeat 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .bench_end_to_end import DAGSTER, RUN_RE, WRITE_KEY, _env, _steps
from .common import (
    DEFAULT_WORKDIR,
    REPO,
    ChildRun,
    fmt_mb,
    fmt_rows,
    invocation,
    log,
    markdown_table,
    ratio,
    record_section,
    run_child,
    wait_for_quiet,
)
from .data import SYNC_NAME, fresh_project, write_project
from .gateway import RunningGateway

# The last commit before the initial sync's cuts (issue 25 item 3).
BASELINE_COMMIT = "c631862"
STEPS = ("snapshot", "diff", "events")


def baseline_tree(commit: str, workdir: Path) -> Path:
    """A worktree of ``commit`` (made once, reused while it is at that commit)."""
    full = _git("rev-parse", commit)
    tree = workdir / f"baseline_{full[:12]}"
    if not (tree / "rudder_sync" / "__init__.py").exists():
        if tree.exists():
            shutil.rmtree(tree)
        _git("worktree", "prune")
        _git("worktree", "add", "--detach", str(tree), full)
    return tree


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def run_once(root: Path, config: Path, code: Path, url: str, timeout: float) -> ChildRun:
    """One initial sync on a fresh state, with ``code`` first on the path."""
    for left in ("state", "outputs"):
        shutil.rmtree(root / left, ignore_errors=True)
    env = _env(config, url)
    env["PYTHONPATH"] = f"{code}:{env['PYTHONPATH']}"
    command = [DAGSTER, "job", "execute", "-m", "rudder_sync.definitions", "-j", SYNC_NAME]
    run = run_child(command, env=env, cwd=root, timeout=timeout)
    output = run.stdout + run.stderr
    if run.returncode != 0 or not RUN_RE.search(output):
        raise SystemExit(f"dagster job execute failed ({run.returncode}):\n{output[-5000:]}")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", default=BASELINE_COMMIT, help="the commit to compare with")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--quiet-timeout", type=float, default=600)
    parser.add_argument("--no-record", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()

    rows = args.rows
    base = args.workdir / f"initial_sync_{rows}"
    codes = {"baseline": baseline_tree(args.baseline, args.workdir), "ours": REPO}
    revisions = {"baseline": _git("rev-parse", "--short", args.baseline)}
    roots = {name: base / name for name in codes}
    configs = {"baseline": fresh_project(roots["baseline"], rows, send_initial_results=True)}
    roots["ours"].mkdir(parents=True, exist_ok=True)
    configs["ours"] = write_project(roots["ours"], send_initial_results=True)
    shutil.copyfile(roots["baseline"] / "warehouse.duckdb", roots["ours"] / "warehouse.duckdb")
    log(f"initial sync of {fmt_rows(rows)} rows: baseline {revisions['baseline']} vs this checkout")

    runs: dict[str, list[Measured]] = {name: [] for name in codes}
    with RunningGateway(WRITE_KEY) as gateway:
        for round_ in range(args.repeat):
            order = list(codes) if round_ % 2 == 0 else list(reversed(codes))
            for name in order:
                if args.quiet_timeout:
                    wait_for_quiet(timeout=args.quiet_timeout)
                for _attempt in range(3):
                    gateway.reset()
                    gateway_cpu = gateway.cpu_seconds()
                    run = run_once(
                        roots[name], configs[name], codes[name], gateway.url, args.timeout
                    )
                    measured = Measured(run, gateway.cpu_seconds() - gateway_cpu)
                    stats = gateway.stats()
                    if stats["events"] != rows or stats["distinct_message_ids"] != rows:
                        raise SystemExit(f"{name}: the gateway counted {stats}, expected {rows}")
                    steps = _steps(run)
                    if set(steps) == set(STEPS):
                        break
                    # On a loaded machine Dagster's console output has been seen to lack a
                    # STEP_SUCCESS line (of a successful run): that run is measured again.
                    dump = roots[name] / "unparsed_run.log"
                    dump.write_text(run.stdout + run.stderr)
                    log(f"  {name}: a step's duration is missing from the log ({dump}); again")
                else:
                    raise SystemExit(f"{name}: step durations not found in the log 3 times")
                log(
                    f"  {name:8s} round {round_ + 1}: {run.wall_seconds:6.2f}s wall, "
                    + ", ".join(f"{k} {steps.get(k, 0):.2f}s" for k in STEPS)
                    + f", CPU {run.cpu_seconds:.2f}s, peak RSS {fmt_mb(run.peak_rss_mb)} MB, "
                    f"other processes {measured.other_cpu_share:.0%} CPU"
                )
                runs[name].append(measured)

    body = report(rows, runs, revisions["baseline"], args.repeat)
    print(body)
    if not args.no_record:
        record_section(
            "bench_initial_sync", "Initial sync, before and after (issue 25)", body, invocation()
        )


@dataclass
class Measured:
    run: ChildRun
    gateway_cpu: float  # the gateway's CPU seconds meanwhile: ours, not another process's

    @property
    def other_cpu_share(self) -> float:
        return self.run.other_cpu_share(also_ours=self.gateway_cpu)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def report(rows: int, runs: dict[str, list[Measured]], baseline: str, repeat: int) -> str:
    """The medians, each variant's range and the ratios, as the RESULTS.md section's body."""

    def figures(name: str) -> dict[str, float]:
        done = [m.run for m in runs[name]]
        steps = [_steps(run) for run in done]
        out = {k: _median([s.get(k, 0.0) for s in steps]) for k in STEPS}
        out["steps"] = _median([sum(s.get(k, 0.0) for k in STEPS) for s in steps])
        out["wall"] = _median([run.wall_seconds for run in done])
        out["cpu"] = _median([run.cpu_seconds for run in done])
        out["rss"] = _median([run.peak_rss_mb for run in done])
        out["other"] = _median([m.other_cpu_share for m in runs[name]])
        out["other_max"] = max(m.other_cpu_share for m in runs[name])
        return out

    got = {name: figures(name) for name in runs}
    table = []
    for name, label in (("baseline", f"baseline @ {baseline}"), ("ours", "this checkout")):
        f = got[name]
        walls = [m.run.wall_seconds for m in runs[name]]
        table.append(
            [
                label,
                f"{f['wall']:.2f}",
                f"{min(walls):.2f}-{max(walls):.2f}",
                f"{f['steps']:.2f}",
                *(f"{f[k]:.2f}" for k in STEPS),
                f"{f['cpu']:.2f}",
                fmt_mb(f["rss"]),
                f"{100 * f['other']:.0f} (max {100 * f['other_max']:.0f})",
            ]
        )
    b, o = got["baseline"], got["ours"]
    table.append(
        [
            "**baseline / ours**",
            f"**{ratio(b['wall'], o['wall'])}**",
            "",
            f"**{ratio(b['steps'], o['steps'])}**",
            *(ratio(b[k], o[k]) for k in STEPS),
            ratio(b["cpu"], o["cpu"]),
            ratio(b["rss"], o["rss"]),
            "",
        ]
    )
    busy = max(b["other"], o["other"])
    note = (
        "a quiet machine"
        if busy < 0.1
        else "**a busy machine**: the wall times are not a quiet machine's, the ratios (both "
        "variants alternating under the same load) are the figure to read"
    )
    return "\n".join(
        [
            f"{fmt_rows(rows)} rows, every row sent as `added` (send_initial_results: true), "
            f"`dagster job execute` on a fresh state, {repeat} alternating runs of each "
            "variant; medians. Steps: Dagster's step durations (snapshot + diff + events).",
            "",
            markdown_table(
                [
                    "variant",
                    "wall s",
                    "wall range s",
                    "steps s",
                    "snapshot s",
                    "diff s",
                    "events s",
                    "CPU s",
                    "peak RSS MB",
                    "other CPU %",
                ],
                table,
            ),
            "",
            f"- Other processes used {100 * busy:.0f} % of the CPU in the median run: {note}.",
            f"- Target (issue 25 item 3): >= 2x faster. Steps: **{ratio(b['steps'], o['steps'])}**"
            f" ({'met' if b['steps'] >= 2 * o['steps'] else 'missed'}); wall, Dagster's start-up"
            f" included: {ratio(b['wall'], o['wall'])}.",
        ]
    )


if __name__ == "__main__":
    main()
