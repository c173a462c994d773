"""What a run leaves behind: the console table, JSON, snapshots, comparisons, plots, exports."""
