"""`python -m rudder_sync.demo`: simulate a day of changes in the demo warehouse."""

from . import advance_demo, demo_dir, ensure_demo_warehouse

target = ensure_demo_warehouse(demo_dir() / "demo_warehouse.duckdb")
advance_demo(target)
print(f"changed the demo warehouse {target}: 3 sign-ups, some plan changes, some deletions")
