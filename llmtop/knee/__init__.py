"""The knee search: the pure state machine, its statistics, the runner that drives a session."""
