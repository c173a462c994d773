"""The live terminal UI: renders telemetry; the load runs in its own process (see worker.py)."""
