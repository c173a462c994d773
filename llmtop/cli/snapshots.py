"""`llmtop compare` and `llmtop report`: snapshots into a side-by-side table and pictures.

Thin click commands: loading, comparing and plotting live in snapshot.py, compare.py,
plots.py and exports.py. Errors are `LlmtopError`s, so the CLI prints one line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from llmtop.errors import ConfigError
from llmtop.output.compare import compare_snapshots, render, snapshot_name
from llmtop.output.jsonfile import dumps
from llmtop.output.snapshot import load_snapshot


def _load_all(paths: tuple[str, ...]) -> list[dict[str, Any]]:
    if not paths:
        raise ConfigError("give at least one snapshot file")
    return [load_snapshot(p) for p in paths]


@click.command("compare", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("snapshots", nargs=-1, metavar="SNAPSHOT...")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option(
    "--color/--no-color",
    default=None,
    help="Style the better value (default: on a terminal).",
)
def compare_command(snapshots: tuple[str, ...], as_json: bool, color: bool | None) -> None:
    """Compare snapshots side by side, per workload, with the ratio to the first one.

    Lower latency and higher throughput are the better values: bold green on a terminal,
    marked `*` when piped. The first snapshot of each workload is the baseline (1.00×).
    """
    data = compare_snapshots(_load_all(snapshots))
    if as_json:
        click.echo(dumps(data))
        return
    use_color = sys.stdout.isatty() if color is None else color
    click.echo(render(data, use_color), color=use_color, nl=False)


@click.command("report", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("snapshots", nargs=-1, metavar="SNAPSHOT...")
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory for the pictures and report.md.",
)
@click.option(
    "--format",
    "formats",
    default="png,svg",
    show_default=True,
    help="Picture formats, comma-separated (png, svg).",
)
@click.option(
    "--exports/--no-exports",
    default=True,
    show_default=True,
    help="Also write each snapshot's .hlog interval logs and steps.csv under DIR/exports/.",
)
def report_command(snapshots: tuple[str, ...], output: str, formats: str, exports: bool) -> None:
    """Pictures and a Markdown page from snapshots: the knee, percentile spectra, time series.

    Needs matplotlib (`pip install 'llmtop[report]'`).
    """
    from llmtop.output.exports import write_hlogs, write_steps_csv
    from llmtop.output.plots import FORMATS, write_report

    fmts = tuple(f.strip().lower() for f in formats.split(",") if f.strip())
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise ConfigError(f"--format {formats!r}: expected png, svg or png,svg")
    snaps = _load_all(snapshots)
    written = write_report(snaps, output, fmts)
    out = Path(output)
    if exports:
        used: set[str] = set()
        for snap in snaps:
            name = _safe(snapshot_name(snap), used)
            folder = out / "exports" / name
            write_hlogs(snap, folder)
            with (folder / "steps.csv").open("w", encoding="utf-8", newline="") as f:
                write_steps_csv(snap, f)
    count = sum(len(v) for v in written.values())
    click.echo(f"llmtop: wrote {count} files to {out} (open {out / 'report.md'})", err=True)


def _safe(name: str, used: set[str]) -> str:
    """A folder name from a snapshot label, unique within the report."""
    base = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-.") or "run"
    cand, i = base, 2
    while cand in used:
        cand, i = f"{base}-{i}", i + 1
    used.add(cand)
    return cand
