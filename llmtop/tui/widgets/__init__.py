"""One widget a file; each renders immutable telemetry and nothing else."""
