"""`llmtop compare`, `llmtop report` and `llmtop export`: snapshots (or `run --json` results)
into a side-by-side table, pictures, and files for other tools.

Thin click commands: loading, comparing, plotting and exporting live in output/results.py,
compare.py, plots.py and exports.py. Errors are `LlmtopError`s, so the CLI prints one line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from llmtop.errors import ConfigError
from llmtop.output.compare import compare_snapshots, render, snapshot_name
from llmtop.output.jsonfile import dumps
from llmtop.output.results import load_result, load_results

_FILES = "SNAPSHOT..."


@click.command("compare", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("snapshots", nargs=-1, metavar=_FILES)
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
    Each file is a snapshot (`--save`, the UI's `s`, a sweep) or a `run --json` result.
    """
    data = compare_snapshots(load_results(snapshots))
    if as_json:
        click.echo(dumps(data))
        return
    use_color = sys.stdout.isatty() if color is None else color
    click.echo(render(data, use_color), color=use_color, nl=False)


@click.command("report", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("snapshots", nargs=-1, metavar=_FILES)
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

    Each file is a snapshot or a `run --json` result (a result has no histograms or time
    series: it shows in the tables, not in the spectra). Needs matplotlib
    (`pip install 'llmtop[report]'`).
    """
    from llmtop.output.exports import write_hlogs, write_steps_csv
    from llmtop.output.plots import FORMATS, write_report

    fmts = tuple(f.strip().lower() for f in formats.split(",") if f.strip())
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise ConfigError(f"--format {formats!r}: expected png, svg or png,svg")
    snaps = load_results(snapshots)
    written = write_report(snaps, output, fmts)
    out = Path(output)
    files = {p for paths in written.values() for p in paths}
    if exports:
        used: set[str] = set()
        for snap in snaps:
            folder = out / "exports" / _safe(snapshot_name(snap), used)
            files.update(write_hlogs(snap, folder))
            files.add(write_file(snap, folder / "steps.csv", write_steps_csv))
    click.echo(f"llmtop: wrote {len(files)} files to {out} (open {out / 'report.md'})", err=True)


def write_file(snap: dict[str, Any], path: Path, writer: Any) -> Path:
    """steps.csv at `path` (its folder made); an OSError is the command's one-line error."""
    from llmtop.output.exports import ExportError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="") as f:
            writer(snap, f)
    except OSError as exc:
        raise ExportError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


@click.command("export", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("snapshot", metavar="SNAPSHOT")
@click.option(
    "--hlog",
    "hlog_dir",
    type=click.Path(file_okay=False),
    help="Folder for one HdrHistogram interval log per metric (ttft.hlog, tpot.hlog, ...).",
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="The step table as CSV (one row per rate step, percentiles in ms); '-' for stdout.",
)
@click.option(
    "--jsonl",
    "jsonl_path",
    type=click.Path(dir_okay=False, allow_dash=True),
    help="The 1-second time series as JSON lines; '-' for stdout.",
)
def export_command(
    snapshot: str, hlog_dir: str | None, csv_path: str | None, jsonl_path: str | None
) -> None:
    """Write a snapshot's figures for other tools: HdrHistogram logs, CSV, JSON lines.

    A `run --json` result gives the CSV (one row: the whole run); it holds no histograms or
    time series for --hlog and --jsonl.
    """
    from llmtop.output.exports import write_hlogs, write_series_jsonl, write_steps_csv

    if not (hlog_dir or csv_path or jsonl_path):
        raise ConfigError("say what to export: --hlog DIR, --csv FILE and/or --jsonl FILE")
    if csv_path == "-" and jsonl_path == "-":
        raise ConfigError("--csv - and --jsonl - would both write to stdout: give one a file")
    snap = load_result(snapshot)
    is_result = snap.get("_kind") == "run --json result"
    for flag, given, what in (("--hlog", hlog_dir, "histograms"), ("--jsonl", jsonl_path, "")):
        if given and is_result:
            held = what or "time series"
            raise ConfigError(
                f"{snapshot} is a `run --json` result: it holds no {held} for {flag}; "
                "export a snapshot (run --save) instead"
            )
    wrote: list[str] = []
    if hlog_dir:
        paths = write_hlogs(snap, hlog_dir)
        wrote += [str(p) for p in paths]
    for path, writer in ((csv_path, write_steps_csv), (jsonl_path, write_series_jsonl)):
        if not path:
            continue
        if path == "-":
            writer(snap, sys.stdout)
            sys.stdout.flush()
        else:
            wrote.append(str(write_file(snap, Path(path), writer)))
    if wrote:
        click.echo(f"llmtop: wrote {len(wrote)} files: {', '.join(wrote)}", err=True)


def _safe(name: str, used: set[str]) -> str:
    """A folder name from a snapshot label, unique within the report."""
    base = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-.") or "run"
    cand, i = base, 2
    while cand in used:
        cand, i = f"{base}-{i}", i + 1
    used.add(cand)
    return cand
