"""Small runs: what a sync run costs when there is little or nothing to send, against the floor.

Every variant is one command in a fresh process, measured ``--repeat`` times, the variants
alternating round by round (so a busy spell hits all of them alike); medians, and each median's
ratio to the bare job's median of the same run:

- ``bare``: ``dagster job execute`` of a module with one trivial asset (the floor of the CLI);
- ``d200k_noop`` / ``d200k_1pct``: ``dagster job execute`` of a sync on a 200k-row DuckDB model
  with nothing changed / 1 % of the rows changed (a carried column: 2,000 ``changed`` events);
- ``shell200k_noop`` / ``shell200k_1pct``: the same sync and project by
  ``python -m rudder_sync run`` (issue 25: the shell runner);
- ``d10m_noop`` / ``d10m_1pct``: the same on 10M DuckDB rows (read in place), 100,000 events;
- ``pg1m_noop`` / ``pg1m_1pct``: the same on a 1M-row PostgreSQL model (local mode), 10,000
  events (PostgreSQL from $RUDDER_SYNC_TEST_PG_URL, or started with .ci/postgres).

All runs use a DAGSTER_HOME (one per project, the 200k one shared by both commands, as a user's
UI would), a sync YAML with the change guard off and the counting gateway; every measured run
is checked to deliver exactly the events it should (0 for a no-op). Set-ups (the data and a
first run that commits the baseline) are not timed.

``--phases`` also times, in one process, the steps of a bare `dagster job execute` as the CLI
takes them (import Dagster, the CLI's own imports, the instance, the code location, the run,
the interpreter's teardown), to say what of the floor a project controls.

    .venv/bin/python -m bench.bench_small_runs             # everything: ~15 min on 2 cores
    .venv/bin/python -m bench.bench_small_runs --quick     # bare, 200k, shell: ~4 min
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import yaml

from . import common
from .data import SYNC_NAME, fresh_project

WRITE_KEY = "bench-write-key"
DAGSTER = str(Path(sys.executable).with_name("dagster"))
PG_URL_ENV = "RUDDER_SYNC_BENCH_PG_URL"
PG_DATABASE = "rudder_sync_bench_small"
DUCK_CHANGE = (
    "update users set plan = case when plan = 'free' then 'pro' else 'free' end, "
    "updated_at = updated_at + interval 1 day where id % 100 = 2"
)
PG_CHANGE = (
    "update users set plan = case when plan = 'free' then 'pro' else 'free' end, "
    "updated_at = updated_at + interval '1 day' where id % 100 = 2"
)
BARE_MODULE = """
from dagster import Definitions, asset, define_asset_job, in_process_executor

@asset
def one() -> int:
    return 1

defs = Definitions(
    assets=[one],
    jobs=[define_asset_job("bare", selection=[one])],
    executor=in_process_executor,  # as rudder_sync's definitions
)
"""
# The steps of `dagster job execute -m bare_defs -j bare`, taken as the CLI takes them
# (dagster/_cli/job.py: job_execute_command_impl -> execute_execute_command -> do_execute_command).
PHASES = """
import json, os, sys, time
marks = [("start", time.time(), time.process_time())]
def mark(name):
    marks.append((name, time.time(), time.process_time()))
import dagster
mark("import dagster")
from dagster._cli.job import _get_job_python_origin_from_cli_opts, do_execute_command
from dagster._cli.utils import get_possibly_temporary_instance_for_cli
from dagster._cli.workspace.cli_target import PythonPointerOpts
from dagster._utils.hosted_user_process import recon_job_from_origin
mark("the CLI's own imports")
with get_possibly_temporary_instance_for_cli("bench") as instance:
    mark("instance and storage set-up")
    opts = PythonPointerOpts(module_name="bare_defs", working_directory=os.getcwd())
    origin = _get_job_python_origin_from_cli_opts(opts, None, "bare")
    job = recon_job_from_origin(origin)
    mark("code location loading")
    result = do_execute_command(job, instance, {}, {}, None)
    assert result.success
    mark("the run (create, events, step)")
mark("closing the instance")
print("PHASES " + json.dumps(marks), flush=True)
"""


@dataclass
class Dataset:
    """A project the sync variants run on."""

    name: str
    rows: int
    root: Path
    config: Path
    change: Callable[[], None]
    changed_events: int
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Variant:
    name: str
    what: str
    dataset: str | None  # None: the bare job
    command: str  # "dagster" or "shell" (the bare job: "dagster")
    change: bool
    target: str  # how the target reads, for the report
    check: Callable[[float, float], bool] | None  # (median, bare median) -> met

    def events(self, datasets: dict[str, Dataset]) -> int:
        return datasets[self.dataset].changed_events if self.change and self.dataset else 0


VARIANTS = [
    Variant("bare", "a bare one-asset job", None, "dagster", False, "-", None),
    Variant(
        "d200k_noop", "200k DuckDB, no-op", "200k", "dagster", False, "<= 1.1x bare",
        lambda m, b: m <= 1.1 * b,
    ),
    Variant(
        "d200k_1pct", "200k DuckDB, 1 % changed", "200k", "dagster", True, "<= 1.2x bare",
        lambda m, b: m <= 1.2 * b,
    ),
    Variant(
        "shell200k_noop", "200k DuckDB, no-op, `python -m rudder_sync run`", "200k", "shell",
        False, "<= 0.7x bare", lambda m, b: m <= 0.7 * b,
    ),
    Variant(
        "shell200k_1pct", "200k DuckDB, 1 % changed, `python -m rudder_sync run`", "200k",
        "shell", True, "<= 0.9x bare", lambda m, b: m <= 0.9 * b,
    ),
    Variant(
        "d10m_noop", "10M DuckDB (read in place), no-op", "10M", "dagster", False,
        "<= bare + 3 s", lambda m, b: m <= b + 3.0,
    ),
    Variant(
        "d10m_1pct", "10M DuckDB, 1 % changed", "10M", "dagster", True, "none stated", None
    ),
    Variant(
        "pg1m_noop", "1M PostgreSQL, no-op", "pg1M", "dagster", False, "<= 1.1x bare",
        lambda m, b: m <= 1.1 * b,
    ),
    Variant(
        "pg1m_1pct", "1M PostgreSQL, 1 % changed", "pg1M", "dagster", True, "<= 1.2x bare",
        lambda m, b: m <= 1.2 * b,
    ),
]  # fmt: skip
QUICK = ("bare", "d200k_noop", "d200k_1pct", "shell200k_noop", "shell200k_1pct")


def dagster_home(root: Path) -> Path:
    """A fresh DAGSTER_HOME (an empty dagster.yaml: the default SQLite storage)."""
    home = root / "dagster_home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("")
    return home


def duck_dataset(name: str, rows: int, workdir: Path, reuse: bool) -> Dataset:
    root = workdir / f"small_{name}"
    config = root / "rudder_sync.yaml"
    warehouse = root / "warehouse.duckdb"
    if not (reuse and warehouse.exists()):
        common.log(f"  set-up: {common.fmt_rows(rows)} DuckDB rows in {root}")
        fresh_project(root, rows)
        shutil.rmtree(root / "state", ignore_errors=True)

    def change() -> None:
        with duckdb.connect(str(warehouse)) as conn:
            conn.execute(DUCK_CHANGE)

    return Dataset(name, rows, root, config, change, len(range(2, rows, 100)))


def pg_dataset(url: str, rows: int, workdir: Path) -> Dataset:
    from .bench_warehouse_diff import SYNC, create_users
    from .pg import sql

    root = workdir / "small_pg1M"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    common.log(f"  set-up: {common.fmt_rows(rows)} PostgreSQL rows")
    create_users(url, rows)
    config = root / "rudder_sync.yaml"
    document = {
        "warehouse": {"type": "postgres", "url": {"env": PG_URL_ENV}},
        "state": "state",
        "syncs": {SYNC_NAME: SYNC},
    }
    config.write_text(yaml.safe_dump(document, sort_keys=False))

    def change() -> None:
        sql(url, PG_CHANGE, "vacuum analyze users")

    return Dataset(
        "pg1M", rows, root, config, change, len(range(2, rows + 1, 100)), {PG_URL_ENV: url}
    )


def command_of(variant: Variant) -> list[str]:
    if variant.dataset is None:
        return [DAGSTER, "job", "execute", "-m", "bare_defs", "-j", "bare"]
    if variant.command == "shell":
        return [sys.executable, "-m", "rudder_sync", "run", SYNC_NAME]
    return [DAGSTER, "job", "execute", "-m", "rudder_sync.definitions", "-j", SYNC_NAME]


def env_of(root: Path, dataset: Dataset | None, gateway_url: str) -> dict[str, str]:
    env = common.child_env()
    env["DAGSTER_HOME"] = str(root / "dagster_home")
    if dataset is not None:
        env["RUDDER_SYNC_CONFIG"] = str(dataset.config)
        env["RUDDERSTACK_DATA_PLANE_URL"] = gateway_url
        env["RUDDERSTACK_WRITE_KEY"] = WRITE_KEY
        env.update(dataset.env)
    return env


@dataclass
class Sample:
    wall: float
    cpu: float
    other_share: float


def measure(
    variant: Variant,
    dataset: Dataset | None,
    bare_root: Path,
    gateway: Any,
    server_cpu: Any,
) -> Sample:
    """One run of the variant (its change applied first, untimed); checks what it delivered."""
    if variant.change and dataset is not None:
        dataset.change()
    root = dataset.root if dataset else bare_root
    gateway.reset()
    ours = helpers_cpu(gateway, server_cpu)
    run = common.run_child(command_of(variant), env=env_of(root, dataset, gateway.url), cwd=root)
    ours = helpers_cpu(gateway, server_cpu) - ours
    if not run.ok:
        raise SystemExit(f"{variant.name} failed ({run.returncode}):\n{run.stderr[-4000:]}")
    expected = dataset.changed_events if (variant.change and dataset) else 0
    got = gateway.stats()["events"]
    if got != expected:
        raise SystemExit(f"{variant.name}: the gateway counted {got} events, expected {expected}")
    return Sample(run.wall_seconds, run.cpu_seconds, run.other_cpu_share(also_ours=ours))


def helpers_cpu(gateway: Any, server_cpu: Any) -> float:
    """CPU seconds of the benchmark's own helpers so far: the gateway, the PostgreSQL server."""
    server = server_cpu.seconds() if server_cpu is not None else None
    return gateway.cpu_seconds() + (server or 0.0)


def first_run(dataset: Dataset, gateway: Any) -> None:
    """The baseline: a first run commits the model and sends nothing (untimed). With --reuse
    and a state on disk it catches up instead: whatever an interrupted run left is sent."""
    dagster_home(dataset.root)
    command = [DAGSTER, "job", "execute", "-m", "rudder_sync.definitions", "-j", SYNC_NAME]
    if (dataset.root / "state").exists():  # --reuse: the gateway's port differs from last time
        move = dataset.root / "move_destination.yaml"
        move.write_text(f"ops: {{{SYNC_NAME}__events: {{config: {{move_destination: true}}}}}}\n")
        command += ["-c", str(move)]
    run = common.run_child(
        command, env=env_of(dataset.root, dataset, gateway.url), cwd=dataset.root
    )
    if not run.ok:
        raise SystemExit(f"the first run of {dataset.name} failed:\n{run.stderr[-4000:]}")
    common.log(f"  set-up: first run of {dataset.name} in {run.wall_seconds:.1f} s")


def phases(bare_root: Path, repeat: int) -> dict[str, list[tuple[float, float]]]:
    """Per phase of a bare `dagster job execute`: (wall, CPU) seconds of each repeat."""
    found: dict[str, list[tuple[float, float]]] = {}
    for _ in range(repeat):
        run = common.run_child(
            [sys.executable, "-c", PHASES], env=env_of(bare_root, None, ""), cwd=bare_root
        )
        line = next((x for x in run.stdout.splitlines() if x.startswith("PHASES ")), None)
        if not run.ok or line is None:
            raise SystemExit(f"the phases child failed:\n{run.stderr[-4000:]}")
        marks = json.loads(line[len("PHASES ") :])
        for (_, w0, c0), (name, w1, c1) in zip(marks, marks[1:], strict=False):
            found.setdefault(name, []).append((w1 - w0, c1 - c0))
        inside_wall, inside_cpu = marks[-1][1] - marks[0][1], marks[-1][2] - marks[0][2]
        found.setdefault("Python's start-up and the interpreter's teardown", []).append(
            (run.wall_seconds - inside_wall, run.cpu_seconds - inside_cpu)
        )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs per variant (median kept)")
    parser.add_argument("--quick", action="store_true", help="only " + ", ".join(QUICK))
    parser.add_argument(
        "--variants", help="comma-separated subset of: " + ", ".join(v.name for v in VARIANTS)
    )
    parser.add_argument("--phases", action="store_true", help="also time the bare CLI's phases")
    parser.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR)
    parser.add_argument("--reuse", action="store_true", help="keep DuckDB warehouses on disk")
    parser.add_argument(
        "--quiet-timeout",
        type=float,
        default=60,
        help="before each round, wait up to this many seconds for the machine to be idle",
    )
    parser.add_argument("--no-record", action="store_true", help="leave RESULTS.md alone")
    args = parser.parse_args()
    names = QUICK if args.quick else tuple(v.name for v in VARIANTS)
    if args.variants:
        names = tuple(args.variants.split(","))
    unknown = set(names) - {v.name for v in VARIANTS}
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    chosen = [v for v in VARIANTS if v.name in names or v.name == "bare"]
    body = run(chosen, args)
    print(body)
    if not args.no_record:
        section, title = section_of(args, chosen)
        common.record_section(section, title, body, common.invocation())


def section_of(args: argparse.Namespace, chosen: list[Variant]) -> tuple[str, str]:
    """RESULTS.md section and title: one for the full set, one for --quick, one per subset."""
    title = "Small runs against the bare job"
    if args.variants:
        names = [v.name for v in chosen if v.name != "bare"]
        return "bench_small_runs_" + "_".join(names), f"{title}: {', '.join(names)}"
    if args.quick:
        return "bench_small_runs_quick", f"{title} (--quick)"
    return "bench_small_runs", title


def run(chosen: list[Variant], args: argparse.Namespace) -> str:
    import contextlib

    from .gateway import RunningGateway

    workdir: Path = args.workdir
    bare_root = workdir / "small_bare"
    bare_root.mkdir(parents=True, exist_ok=True)
    (bare_root / "bare_defs.py").write_text(BARE_MODULE)
    dagster_home(bare_root)
    needed = {v.dataset for v in chosen if v.dataset}
    with contextlib.ExitStack() as stack:
        gateway = stack.enter_context(RunningGateway(WRITE_KEY))
        datasets: dict[str, Dataset] = {}
        server_cpu = None
        if "200k" in needed:
            datasets["200k"] = duck_dataset("200k", 200_000, workdir, args.reuse)
        if "10M" in needed:
            datasets["10M"] = duck_dataset("10M", 10_000_000, workdir, args.reuse)
        if "pg1M" in needed:
            from .bench_warehouse import postgres_server
            from .pg import ServerCpu, fresh_database

            server = stack.enter_context(postgres_server())
            url = fresh_database(server, PG_DATABASE)
            datasets["pg1M"] = pg_dataset(url, 1_000_000, workdir)
            server_cpu = ServerCpu(url)
        for dataset in datasets.values():
            first_run(dataset, gateway)
        samples: dict[str, list[Sample]] = {v.name: [] for v in chosen}
        for round_number in range(1, args.repeat + 1):
            if args.quiet_timeout:
                common.wait_for_quiet(timeout=args.quiet_timeout)
            for variant in chosen:
                dataset = datasets.get(variant.dataset) if variant.dataset else None
                pg = server_cpu if variant.dataset == "pg1M" else None
                sample = measure(variant, dataset, bare_root, gateway, pg)
                samples[variant.name].append(sample)
                common.log(
                    f"  round {round_number} {variant.name:15s} {sample.wall:6.2f} s wall, "
                    f"{sample.cpu:5.2f} CPU s, other processes {sample.other_share:.0%} CPU"
                )
        found = phases(bare_root, args.repeat) if args.phases else {}
    return report(chosen, datasets, samples, found)


def report(
    chosen: list[Variant],
    datasets: dict[str, Dataset],
    samples: dict[str, list[Sample]],
    found: dict[str, list[tuple[float, float]]],
) -> str:
    bare = statistics.median(s.wall for s in samples["bare"])
    bare_cpu = statistics.median(s.cpu for s in samples["bare"])
    rows = []
    misses = []
    for variant in chosen:
        walls = [s.wall for s in samples[variant.name]]
        median = statistics.median(walls)
        cpu = statistics.median(s.cpu for s in samples[variant.name])
        met = "-"
        if variant.check is not None:
            met = "met" if variant.check(median, bare) else "**missed**"
            met += " (CPU: " + ("met" if variant.check(cpu, bare_cpu) else "missed") + ")"
            if not variant.check(median, bare):
                misses.append(variant.name)
        rows.append(
            [
                variant.name,
                variant.what,
                f"{variant.events(datasets):,}",
                f"{median:.2f}",
                f"{min(walls):.2f}-{max(walls):.2f}",
                common.ratio(median, bare) if variant.name != "bare" else "1.00x",
                f"{median - bare:+.2f}" if variant.name != "bare" else "-",
                f"{cpu:.2f}",
                common.ratio(cpu, bare_cpu) if variant.name != "bare" else "1.00x",
                f"{100 * statistics.median(s.other_share for s in samples[variant.name]):.0f}",
                variant.target,
                met,
            ]
        )
    busiest = max(s.other_share for runs in samples.values() for s in runs)
    typical = statistics.median(s.other_share for runs in samples.values() for s in runs)
    repeats = len(samples["bare"])
    lines = [
        f"{repeats} runs of each variant, alternating; medians. Every command in a fresh process "
        "with a DAGSTER_HOME (SQLite), the change guard off, delivering to the counting gateway.",
        "",
        common.markdown_table(
            [
                "variant",
                "what",
                "events",
                "median s",
                "range s",
                "/ bare",
                "- bare s",
                "CPU s",
                "CPU / bare",
                "other CPU %",
                "target",
                "",
            ],
            rows,
        ),
        "",
        f"- Other processes used {100 * typical:.0f} % of the machine's CPU in the median run "
        f"and up to {100 * busiest:.0f} %"
        + (
            ": **a busy machine**, the wall times and ratios are not a quiet machine's."
            if typical > 0.10
            else "."
        ),
        "- Missed (wall): " + (", ".join(misses) if misses else "none") + ". In brackets: the "
        "same target applied to the CPU seconds (user + system of the command's process), "
        "which other processes disturb less than the wall time.",
    ]
    if found:
        lines += [
            "",
            "The bare `dagster job execute`, step by step in one process (`--phases`: the CLI's "
            "own functions in its order; median of the runs):",
            "",
            common.markdown_table(
                ["phase", "wall s", "CPU s"],
                [
                    [
                        name,
                        f"{statistics.median(w for w, _ in values):.2f}",
                        f"{statistics.median(c for _, c in values):.2f}",
                    ]
                    for name, values in found.items()
                ],
            ),
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
