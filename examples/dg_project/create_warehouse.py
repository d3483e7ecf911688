"""Create the example's DuckDB warehouse (rudder_sync's demo `users` table) if it is missing."""

from pathlib import Path

from rudder_sync.demo import ensure_demo_warehouse

if __name__ == "__main__":
    print(ensure_demo_warehouse(Path(__file__).resolve().parent / "warehouse.duckdb"))
