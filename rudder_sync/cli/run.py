"""`python -m rudder_sync run`: run syncs from the shell in one process, without Dagster's CLI.

Each sync runs its job the way `dagster job execute -m rudder_sync.definitions -j SYNC` does:
Dagster's `execute_job` of the job reconstructed from the same module pointer, on the instance
in `$DAGSTER_HOME` (its runs, materializations, checks and metadata are the CLI's), with the
CLI's `.env` loading and `-c`/`--tags` options. What it leaves out is what a shell run of a sync
does not need: Dagster's CLI and its imports, the throwaway SQLite instance the CLI builds when
`DAGSTER_HOME` is unset (an in-memory one instead: forgotten at exit either way), and the
interpreter's teardown of everything it imported. See docs/running.md.

Imports are lazy: `--help` and a usage error load nothing of Dagster.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagster import DagsterInstance, JobExecutionResult, RepositoryDefinition
    from dagster._core.definitions.reconstruct import ReconstructableRepository

DEFINITIONS_MODULE = "rudder_sync.definitions"
DEFINITIONS_ATTRIBUTE = "defs"  # the @definitions function that `dagster ... -m` finds there


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rudder_sync run",
        description="Run syncs now, in this process, as `dagster job execute -m "
        "rudder_sync.definitions -j SYNC` would: the same job, config and $DAGSTER_HOME "
        "instance, so the runs show in the UI as the CLI's do. Exit code 1 when a run fails "
        "(its reason on one line), 2 on a usage error.",
    )
    parser.add_argument("syncs", nargs="*", metavar="SYNC", help="syncs to run, in this order")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="run every sync of the config")
    which.add_argument(
        "--due",
        action="store_true",
        help="run the syncs with a `schedule:` whose latest cron tick has no run in "
        "$DAGSTER_HOME yet (each runs what its schedule would, e.g. a partitioned sync's latest "
        "complete window); without DAGSTER_HOME every scheduled sync is due",
    )
    parser.add_argument(
        "-c",
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="run config YAML, as for `dagster job execute -c` (repeatable; merged in order)",
    )
    parser.add_argument(
        "--tags",
        metavar="JSON",
        help='run tags as a JSON object, e.g. \'{"dagster/partition": '
        '"2024-01-03"}\', as for `dagster job execute --tags`',
    )
    return parser


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(list(argv))
    if not args.syncs and not (args.all or args.due):
        parser().print_usage(sys.stderr)
        print("error: name the syncs to run, or pass --all or --due", file=sys.stderr)
        return 2
    if args.syncs and (args.all or args.due):
        print("error: name syncs or pass --all / --due, not both", file=sys.stderr)
        return 2
    try:
        tags = _tags(args.tags)
        run_config = _run_config(args.config)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _load_dotenv()
    gc.disable()  # start-up allocates without garbage: see _start_collecting
    try:
        code = _run(args.syncs, args.all, args.due, run_config, tags)
    finally:
        gc.enable()
    _exit_without_teardown(code)
    return code


def _run(
    names: list[str], everything: bool, due: bool, run_config: dict[str, Any], tags: dict[str, str]
) -> int:
    from dagster import DagsterInstance

    try:
        instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else None
    except Exception as exc:  # e.g. DAGSTER_HOME is not a folder: Dagster's message says so
        print(f"error: the Dagster instance did not load: {_one_line(exc)}", file=sys.stderr)
        return 1
    with instance or DagsterInstance.ephemeral() as instance:
        try:
            repository, definition = _load_definitions()
        except Exception as exc:
            from ..config import ConfigError

            cause = _innermost(exc)
            if not isinstance(cause, ConfigError):  # `defs` printed a ConfigError's line already
                print(f"error: the definitions did not load: {_one_line(cause)}", file=sys.stderr)
            return 1
        _start_collecting()
        runs: list[tuple[str, dict[str, str], dict[str, Any]]]
        if due:
            runs = list(_due_runs(definition, instance, run_config, tags))
            if not runs:
                print("no sync is due")
        else:
            known = sorted(definition.job_names)
            names = [n for n in known if not n.startswith("__")] if everything else names
            unknown = [n for n in names if n not in known]
            if unknown:
                print(
                    f"error: no sync '{unknown[0]}' in the config. Syncs: "
                    + ", ".join(n for n in known if not n.startswith("__")),
                    file=sys.stderr,
                )
                return 2
            runs = [(name, tags, run_config) for name in names]
        failed = 0
        for name, run_tags, config in runs:
            failed += not _execute(repository, instance, name, config, run_tags)
    return 1 if failed else 0


def _start_collecting() -> None:
    """Garbage collection back on, for the runs, without walking what start-up built.

    Importing Dagster, pandas, DuckDB and the definitions creates a few million objects and no
    garbage, yet triggers full collections that walk them all: with the collector off until
    here, a run of a sync costs 0.5-0.6 CPU s less (bench/RESULTS.md). `gc.freeze` then moves
    those objects out of the collector's sight, so the runs' collections stay cheap too.
    """
    gc.freeze()
    gc.enable()


def _execute(
    repository: ReconstructableRepository,
    instance: DagsterInstance,
    name: str,
    run_config: dict[str, Any],
    tags: dict[str, str],
) -> bool:
    """One run of the sync's job, as `dagster job execute` makes it; prints one summary line."""
    from dagster import DagsterInvalidConfigError, execute_job

    started = time.perf_counter()
    try:
        with execute_job(
            repository.get_reconstructable_job(name),
            instance=instance,
            run_config=run_config,
            tags=tags,
            raise_on_error=False,
        ) as result:
            seconds = time.perf_counter() - started
            outcome = "succeeded" if result.success else "failed"
            print(f"{name}: {outcome} in {seconds:.2f} s (run {result.run_id})", flush=True)
            if result.success:
                return True
            reason = _failure_reason(result)
    except DagsterInvalidConfigError as exc:
        reason = "invalid run config: " + "; ".join(e.message for e in exc.errors)
    named = f"sync '{name}'"
    print(reason if named in reason else f"{named}: {reason}", file=sys.stderr, flush=True)
    return False


def _failure_reason(result: JobExecutionResult) -> str:
    """The failed step's message on one line: a `Failure`'s description as the sync wrote it;
    for an unexpected error, its type and first line (the traceback is in the run's logs)."""
    for event in result.all_events:
        error = getattr(event.event_specific_data, "error", None)
        if event.is_step_failure and error is not None:
            error = error.cause if error.cls_name == "DagsterExecutionStepExecutionError" else error
            error = error or event.event_specific_data.error
            message = error.message.strip()
            prefix = f"{error.cls_name}: "
            if error.cls_name == "Failure":
                message = message.split(": ", 1)[1] if ": " in message else message
            elif not message.startswith(prefix) and ": " not in message.split("\n", 1)[0]:
                message = prefix + message
            return message.splitlines()[0] if message else error.cls_name
    failure = next((e for e in result.all_events if e.event_type_value == "RUN_FAILURE"), None)
    return (failure.message if failure and failure.message else "the run failed").splitlines()[0]


def _load_definitions() -> tuple[ReconstructableRepository, RepositoryDefinition]:
    """The code location `dagster job execute -m rudder_sync.definitions` loads, by the same
    module pointer, so each run records the same code origin."""
    from .._compat import ReconstructableRepository

    repository = ReconstructableRepository.for_module(
        DEFINITIONS_MODULE, DEFINITIONS_ATTRIBUTE, working_directory=os.getcwd()
    )
    return repository, repository.get_definition()


def _due_runs(
    definition: RepositoryDefinition,
    instance: DagsterInstance,
    run_config: dict[str, Any],
    tags: dict[str, str],
) -> Iterator[tuple[str, dict[str, str], dict[str, Any]]]:
    """(job, tags, run config) of each sync whose schedule ticked since its last run started:
    what the schedule itself requests for its latest tick (a partitioned sync's latest complete
    window), so a cron entry running `--due` every minute runs each sync once per tick."""
    from dagster import RunRequest, RunsFilter, build_schedule_context

    from .._compat import get_latest_completed_cron_tick

    now = datetime.now().astimezone()
    for schedule in sorted(definition.schedule_defs, key=lambda s: s.name):
        cron = schedule.cron_schedule
        assert isinstance(cron, str)  # our schedules have one cron string each
        tick = get_latest_completed_cron_tick(cron, now, schedule.execution_timezone)
        latest = instance.get_run_records(RunsFilter(job_name=schedule.job_name), limit=1)
        if latest and latest[0].create_timestamp >= tick:
            continue
        context = build_schedule_context(instance=instance, scheduled_execution_time=tick)
        requests = schedule.evaluate_tick(context).run_requests or []
        for request in requests:
            assert isinstance(request, RunRequest)
            request_tags = dict(request.tags)
            if request.partition_key is not None:
                request_tags["dagster/partition"] = request.partition_key
            config = run_config or dict(request.run_config or {})
            yield schedule.job_name, {**request_tags, **tags}, config


def _run_config(paths: list[str]) -> dict[str, Any]:
    """The `-c` files merged in order, as Dagster's CLI merges them."""
    if not paths:
        return {}
    import yaml

    merged: dict[str, Any] = {}
    for path in paths:
        try:
            with open(path) as handle:
                loaded = yaml.safe_load(handle) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"run config {path}: {_one_line(exc)}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"run config {path}: expected a mapping at the top level")
        merged = _deep_merge(merged, loaded)
    return merged


def _deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _tags(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    import json

    try:
        tags = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--tags is not JSON: {exc}") from None
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise ValueError('--tags must be a JSON object of strings, e.g. \'{"team": "growth"}\'')
    return tags


def _load_dotenv() -> None:
    """A `.env` in the working directory sets environment variables, as for Dagster's CLI."""
    if not os.path.exists(".env"):
        return
    from dotenv import dotenv_values

    os.environ.update({k: v for k, v in dotenv_values(".env").items() if v is not None})


def _exit_without_teardown(code: int) -> None:
    """When this process is `python -m rudder_sync`, end it right after the interpreter's exit
    handlers start, skipping the teardown of every module Dagster, pandas and DuckDB imported
    (0.7-0.9 CPU s here; see bench/RESULTS.md). By then the runs are over: the instance is
    closed, the sync's state files are closed and committed, and non-daemon threads have been
    joined; logging and the standard streams are flushed here. Called in-process (tests, a
    script importing `main`), it does nothing."""
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    if getattr(spec, "name", None) != "rudder_sync.__main__":
        return
    import atexit
    import logging

    def exit_now() -> None:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    atexit.register(exit_now)  # registered last, so it runs first


def _innermost(exc: BaseException) -> BaseException:
    """The error Dagster wrapped (it wraps what loading the definitions raises)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _one_line(exc: BaseException) -> str:
    """An error's first line, its type when it has no message."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
