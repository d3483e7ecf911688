"""Alerts: tell someone when a sync breaks, once when it starts and once when it clears.

- `settings`: the `alerts:` section of the sync YAML (channels, conditions), checked at load.
- `message`: what an alert says (the sync, what happened with its numbers, the run's link, the fix).
- `slack`, `webhook`, `mail`: one module per channel, each sends one alert.
- `status`: which conditions are open, per sync, in files next to the sync's state.
- `dispatch`: opens and clears conditions and sends the alerts of the transitions.
- `hooks`: in-run detection (step hooks: run failure, guard, rejected rows, quarantine).
- `freshness`: the freshness policy of `freshness:`, and the sensor that alerts on it (no run
  can see that runs stopped, so this one needs the Dagster daemon).

This package's `__init__` imports nothing: `config` imports `alerts.settings`, and the other
modules import `config`.
"""
