"""`llmtop profiles`: the shipped profiles, with the workload, load and SLO each one runs."""

from __future__ import annotations

import click

from llmtop.errors import ConfigError
from llmtop.output.jsonfile import dumps
from llmtop.profiles import load_profile, shipped_profiles


@click.command("profiles", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON.")
def profiles_command(name: str | None, as_json: bool) -> None:
    """List the shipped profiles (or show one: NAME, or a profile file's path).

    Use one with `--profile NAME` on run, knee, launch and the UI; flags given there win.
    """
    if name:
        profile = load_profile(name)
        if as_json:
            click.echo(dumps({**profile.describe(), **profile.public()}))
            return
        d = profile.describe()
        click.echo(f"{d['name']}: {d['description'] or '-'}")
        click.echo(f"  file      {profile.path}")
        click.echo(f"  workload  {d['workload']}")
        click.echo(f"  load      {d['load']}")
        click.echo(f"  slo       {d['slo']}")
        for key, value in (profile.engine or {}).items():
            click.echo(f"  engine    {key} = {value}")
        for key, value in profile.sim.items():
            click.echo(f"  sim       {key} = {value}")
        return
    paths = shipped_profiles()
    if not paths:
        raise ConfigError("no shipped profiles found (is llmtop installed whole?)")
    rows = [load_profile(p).describe() for p in paths]
    if as_json:
        click.echo(dumps(rows))
        return
    cols = ("name", "workload", "load", "slo")
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    click.echo("  ".join(f"{c:<{widths[c]}}" for c in cols).rstrip())
    for r in rows:
        click.echo("  ".join(f"{r[c]:<{widths[c]}}" for c in cols).rstrip())
    click.echo("\n`llmtop profiles NAME` shows one; use it with --profile NAME.")
