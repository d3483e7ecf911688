"""Start-up: what `dagster job execute` spends before the first step, and how much of it is ours.

Variants, each run ``--repeat`` times (best kept) in fresh processes, no DAGSTER_HOME (as the CLI
tests and a cron job without one run):

- ``demo``: ``dagster job execute -m rudder_sync.definitions -j user_events`` on the packaged demo
  (a dry run: no data plane URL): seconds until the first ``STEP_START`` and until exit.
- ``bare_dagster``: the baseline, the same command on a module with one trivial asset and the
  same in-process executor: what Dagster's CLI costs on its own before a first step.
- ``phases``: inside one process, the demo's definitions split into importing Dagster, importing
  rudder_sync (pandas, DuckDB, pyarrow included), loading the sync YAML and building the
  definitions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import common

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

PHASES = """
import json, time
t0 = time.perf_counter()
import dagster
t1 = time.perf_counter()
import rudder_sync.definitions as d
t2 = time.perf_counter()
project = d.load_project()
t3 = time.perf_counter()
defs = d.build_definitions(project, d.rudderstack_from_env(project.delivery))
defs.get_repository_def()
t4 = time.perf_counter()
print(json.dumps({"import dagster": t1 - t0, "import rudder_sync": t2 - t1,
                  "load the sync YAML": t3 - t2, "build the definitions": t4 - t3}))
"""


def _env() -> dict[str, str]:
    return common.child_env()


def _cli(args: list[str], cwd: Path) -> tuple[float, float]:
    """Seconds to the first STEP_START and to exit of one `dagster job execute`."""
    dagster = str(Path(sys.executable).with_name("dagster"))
    started = time.monotonic()
    process = subprocess.Popen(
        [dagster, "job", "execute", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        cwd=cwd,
    )
    first = float("nan")
    assert process.stdout is not None
    for line in process.stdout:
        if first != first and "STEP_START" in line:  # first is NaN until set
            first = time.monotonic() - started
    if process.wait() != 0:
        raise SystemExit(f"dagster job execute {' '.join(args)} failed")
    return first, time.monotonic() - started


def _best(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return min(r[0] for r in runs), min(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5, help="runs per variant (best is kept)")
    parser.add_argument("--no-record", action="store_true", help="leave RESULTS.md alone")
    parser.add_argument("--quiet-timeout", type=float, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        cwd = Path(scratch)
        (cwd / "bare_defs.py").write_text(BARE_MODULE)
        results: dict[str, Any] = {}
        busy = 0.0
        for name, cli_args in (
            ("demo", ["-m", "rudder_sync.definitions", "-j", "user_events"]),
            ("bare_dagster", ["-m", "bare_defs", "-j", "bare"]),
        ):
            runs = []
            for _ in range(args.repeat):
                if args.quiet_timeout:
                    busy = max(busy, common.wait_for_quiet(timeout=args.quiet_timeout))
                runs.append(_cli(cli_args, cwd))
            results[name] = _best(runs)
            common.log(f"{name}: first step {results[name][0]:.2f}s, exit {results[name][1]:.2f}s")
        phases: dict[str, float] = {}
        for _ in range(args.repeat):
            out = subprocess.run(
                [sys.executable, "-c", PHASES], env=_env(), cwd=cwd, capture_output=True, text=True
            )
            if out.returncode != 0:
                raise SystemExit(f"the phases child failed:\n{out.stderr}")
            measured = json.loads(out.stdout.strip().splitlines()[-1])
            phases = {k: min(v, phases.get(k, v)) for k, v in measured.items()}
    body = _report(results, phases, busy)
    print(body)
    if not args.no_record:
        common.record_section("startup", "Start-up", body, common.invocation())


def _report(results: dict[str, tuple[float, float]], phases: dict[str, float], busy: float) -> str:
    rows = [[name, f"{first:.2f}", f"{total:.2f}"] for name, (first, total) in results.items()]
    ours = results["demo"][0] - results["bare_dagster"][0]
    lines = [
        "`dagster job execute` without DAGSTER_HOME; best of the runs; the demo is a dry run.",
        "",
        common.markdown_table(["variant", "first STEP_START s", "exit s"], rows),
        "",
        f"- rudder_sync's share before the first step: **{ours:.2f} s** over the bare Dagster "
        f"job (other processes used up to {busy:.0%} of the CPU).",
        "- In one process: "
        + ", ".join(f"{name} {seconds:.3f} s" for name, seconds in phases.items())
        + ".",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
