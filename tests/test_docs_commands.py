"""The docs against the program: every command's `--help`, and every command line quoted in
README.md, docs/*.md and the shipped profiles' comments, parsed and run.

What is quoted:
- in Markdown, lines of fenced code blocks that start with `llmtop` (or `.venv/bin/llmtop`,
  or `$ llmtop`), `\\` continuations joined, `# comments` dropped; and table rows whose first
  cell is a command (`| \\`llmtop ...\\` |`);
- in profiles/*.toml, comment lines `#   llmtop ...`.

Every quoted line must parse (its flags exist: `llmtop ARGS --help` succeeds). It is then run
here, against the simulator, unless it is marked as not runnable here:
- Markdown: `<!-- docs-test: not run: WHY -->` on the line before the code block (the whole
  block) or inside the table row; `<!-- docs-test: synopsis -->` for a usage synopsis (with
  `a|b` alternatives and `[optional]` parts): neither parsed nor run.
- TOML: a comment line `# docs-test: not run: WHY` before the command.

How the lines are kept short for CI (2 cores): they run 4 at a time, each in its own temporary
folder seeded with the files the docs name (A.json, B.json, vllm.json, sharegpt.json, ...).
URL placeholders (`URL`, `http://localhost:8000`, `http://HOST:8000`, `http://vllm:8000`, ...)
become one simulator started with a 10× faster clock; lines without a URL start their own.
Flags are set (in place where the line gives them, else appended): `--input-len 64
--output-len 8` for run, knee, launch and the UI; `run` gets `--num-requests 6` (or its
`--duration` becomes 2 s); `launch` 8 requests per configuration and at most two values per
swept key (a profile's `[engine] sweep` included: each is an engine start); `knee` 1-2 s
steps and is interrupted with Ctrl-C once its first step is measured (it must then exit
cleanly, 130, with the steps so far; whole searches are tests/test_knee_run.py's); the UI runs on a
pseudo-terminal with `--exit-after 2`; `llmtop sim` must print its JSON line and is then
stopped. A line quoted twice runs once; the slow kinds start first. A line passes when it
exits 0 (or 3, the SLO-not-met code) without a traceback and writes the files it names.
About 40 distinct lines take 1.5-3 minutes on 2 busy cores.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmtop.cli import cli
from llmtop.profiles import load_profile
from tests.conftest import ROOT
from tests.support.tty import run_cli_tty

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROFILES = sorted((ROOT / "profiles").glob("*.toml"))
MARK = re.compile(r"<!--\s*docs-test:\s*(not run|synopsis)\s*:?\s*(.*?)\s*-->")
TOML_MARK = re.compile(r"#\s*docs-test:\s*(not run|synopsis)\s*:?\s*(.*)")
COMMAND = re.compile(r"^(?:\$\s+)?(?:\.venv/bin/)?llmtop(?=\s|$)")
PLACEHOLDER_URL = re.compile(r"https?://(?:localhost|HOST|vllm|trtllm|gpu-host)(?::\d+)?")
OK_CODES = (0, 3)  # 3: the run was measured and broke its SLO
RUN_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Quoted:
    where: str  # file:line
    text: str
    skip: str | None  # why it is not run here (None: run it)
    synopsis: bool = False

    @property
    def argv(self) -> list[str]:
        """The arguments after `llmtop`."""
        words = shlex.split(COMMAND.sub("llmtop", self.text, count=1), comments=True)
        return words[1:]


def _markdown(path: Path) -> Iterator[Quoted]:
    lines = path.read_text(encoding="utf-8").splitlines()
    name = path.relative_to(ROOT)
    fence = False
    mark: tuple[str, str] | None = None
    i = 0
    while i < len(lines):
        raw = lines[i]
        stripped = raw.strip()
        if stripped.startswith("```"):
            if not fence:
                before = lines[i - 1] if i else ""
                m = MARK.search(before)
                mark = (m.group(1), m.group(2)) if m else None
            fence = not fence
            i += 1
            continue
        if fence and COMMAND.match(stripped):
            start = i
            text = stripped
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1].rstrip() + " " + lines[i].strip()
            yield _quoted(f"{name}:{start + 1}", text, mark)
        elif not fence and raw.startswith("| `"):
            cell = raw.split("|")[1].strip()
            if cell.startswith("`") and COMMAND.match(cell.strip("`")) and " " in cell:
                m = MARK.search(raw)
                yield _quoted(
                    f"{name}:{i + 1}", cell.strip("`"), (m.group(1), m.group(2)) if m else None
                )
        i += 1


def _quoted(where: str, text: str, mark: tuple[str, str] | None) -> Quoted:
    if mark is None:
        return Quoted(where, text, None)
    kind, why = mark
    return Quoted(where, text, why or kind, synopsis=kind == "synopsis")


def _toml(path: Path) -> Iterator[Quoted]:
    lines = path.read_text(encoding="utf-8").splitlines()
    name = path.relative_to(ROOT)
    for i, line in enumerate(lines):
        body = line.lstrip("#").strip()
        if line.startswith("#") and COMMAND.match(body):
            m = TOML_MARK.match(lines[i - 1].strip()) if i else None
            yield _quoted(f"{name}:{i + 1}", body, (m.group(1), m.group(2)) if m else None)


def quoted_commands() -> list[Quoted]:
    out: list[Quoted] = []
    for path in DOCS:
        out.extend(_markdown(path))
    for path in PROFILES:
        out.extend(_toml(path))
    return out


QUOTED = quoted_commands()
RUNNABLE = [q for q in QUOTED if q.skip is None]


def test_the_docs_quote_commands_and_most_run_here() -> None:
    assert len(QUOTED) >= 20, [q.where for q in QUOTED]
    assert len(RUNNABLE) >= 15, [q.where for q in RUNNABLE]
    for q in QUOTED:
        if q.skip is not None and not q.synopsis:
            assert len(q.skip) > 5, f"{q.where}: say why it does not run here"


@pytest.mark.parametrize("name", ["", *sorted(cli.commands)])
def test_every_command_has_help(name: str) -> None:
    args = [name, "--help"] if name else ["--help"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("q", [q for q in QUOTED if not q.synopsis], ids=lambda q: q.where)
def test_quoted_flags_exist(q: Quoted) -> None:
    """`llmtop ARGS --help`: click rejects an option that does not exist before the help."""
    argv = q.argv
    cut = argv.index("--") if "--" in argv else len(argv)
    result = CliRunner().invoke(cli, [*argv[:cut], "--help"])
    assert result.exit_code == 0, f"{q.where}: {q.text}\n{result.output}"


# --- running them --------------------------------------------------------------------------


def _command(argv: list[str]) -> str:
    return argv[0] if argv and argv[0] in cli.commands else "ui"


def _flag(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else None


def _set(argv: list[str], flag: str, value: str) -> None:
    """`flag value`: replace the value where the line gives the flag, else append it."""
    if flag in argv and argv.index(flag) + 1 < len(argv):
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]


def _two_configurations(argv: list[str]) -> None:
    """At most two values per swept key: each configuration is an engine start."""
    sweeps = [i + 1 for i, a in enumerate(argv) if a == "--sweep" and i + 1 < len(argv)]
    for i in sweeps:
        key, _, values = argv[i].partition("=")
        argv[i] = f"{key}={','.join(values.split(',')[:2])}"
    profile = _flag(argv, "--profile")
    if not sweeps and profile:
        sweep = (load_profile(profile).engine or {}).get("sweep") or {}
        for key, values in sweep.items():
            argv += ["--sweep", f"{key}={','.join(str(v) for v in values[:2])}"]


def shortened(argv: list[str], sim_url: str) -> list[str]:
    """The same command, against the simulator, short enough for CI (see the module doc)."""
    argv = [PLACEHOLDER_URL.sub(sim_url, a) for a in argv]
    argv = [sim_url if a == "URL" else "report" if a == "DIR" else a for a in argv]
    cmd = _command(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    argv, tail = argv[:cut], argv[cut:]
    if cmd in ("run", "ui", "knee", "launch"):
        _set(argv, "--output-len", "8")
        if not {"--dataset", "--trace", "--input-len"} & set(argv):
            argv += ["--input-len", "64"]  # a length the line gives may matter (a prefix)
    if cmd == "run":
        _set(argv, *(("--duration", "2") if "--duration" in argv else ("--num-requests", "6")))
    elif cmd == "knee":
        _set(argv, "--min-step-s", "1")
        _set(argv, "--max-step-s", "2")
    elif cmd == "launch":
        _set(argv, "--num-requests", "8")
        _two_configurations(argv)
    elif cmd == "ui":
        _set(argv, "--exit-after", "2")
    return argv + tail


def _named_outputs(argv: list[str]) -> list[str]:
    outs = [_flag(argv, f) for f in ("--json", "--save", "--out", "-o", "--output")]
    return [o for o in outs if o and o != "-"]


@dataclass
class Outcome:
    code: int | None
    output: str
    argv: list[str]
    seconds: float


def _run_one(q: Quoted, sim_url: str, seed: Path, tmp: Path) -> Outcome:
    cwd = tmp / re.sub(r"[^A-Za-z0-9]+", "-", q.where)
    shutil.copytree(seed, cwd)
    argv = shortened(q.argv, sim_url)
    cmd = _command(argv)
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.monotonic()
    if cmd == "ui":
        code, out = run_cli_tty(*argv, timeout=90, cwd=cwd, env=env)
        return Outcome(code, out, argv, time.monotonic() - t0)
    full = [sys.executable, "-m", "llmtop", *argv]
    if cmd == "knee":  # a whole search takes minutes: run until a step is measured, then Ctrl-C
        proc = subprocess.Popen(
            full, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        log: list[str] = []  # the live step lines come on stderr
        reader = threading.Thread(target=lambda: log.extend(proc.stderr or []), daemon=True)
        reader.start()
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            if any(line.startswith("knee: step 0 ") for line in log):
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0]
        reader.join(10)
        err = "".join(log)
        clean = proc.returncode in (*OK_CODES, 130) and "Traceback" not in err
        code = 0 if clean and "knee: step 0 " in err else proc.returncode or 1
        return Outcome(code, out + err, argv, time.monotonic() - t0)
    if cmd == "sim":  # a server: it must come up and say where, then it is stopped
        proc = subprocess.Popen(
            full, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        ok = first.startswith("{") and "url" in json.loads(first)
        return Outcome(0 if ok else 1, first + err, argv, time.monotonic() - t0)
    proc2 = subprocess.Popen(
        full, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        out, err = proc2.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc2.send_signal(signal.SIGINT)  # what it did so far, and where it was
        out, err = proc2.communicate(timeout=60)
        return Outcome(None, f"timed out after {RUN_TIMEOUT_S:g} s\n{out}{err}", argv, 0.0)
    missing = [o for o in _named_outputs(argv) if not (cwd / o).exists()]
    code = proc2.returncode if not missing else 1
    out = out + err + (f"\nnot written: {missing}" if missing else "")
    return Outcome(code, out, argv, time.monotonic() - t0)


def _seed(folder: Path, sim_url: str) -> None:
    """The files the docs name, made by one short run against the simulator."""
    folder.mkdir()
    snap, res = folder / "snap.json", folder / "out.json"
    subprocess.run(
        [sys.executable, "-m", "llmtop", "run", "--url", sim_url, "--num-requests", "6",
         "--input-len", "64", "--output-len", "8", "--save", str(snap), "--json", str(res)],
        cwd=ROOT, check=True, capture_output=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    for name in ("A.json", "B.json", "vllm.json", "trtllm.json", "run.json"):
        shutil.copy(snap, folder / name)
    turns = [{"from": "human", "value": "What is a knee?"}, {"from": "gpt", "value": "x" * 64}]
    (folder / "sharegpt.json").write_text(json.dumps([{"conversations": turns}] * 4))
    (folder / "prompts.jsonl").write_text('{"prompt": "hello", "output_len": 8}\n')
    trace = [
        {"timestamp": 100 * i, "input_length": 512, "output_length": 8, "hash_ids": [i]}
        for i in range(4)
    ]  # Mooncake's trace format (docs/workloads.md)
    (folder / "mooncake_trace.jsonl").write_text("".join(json.dumps(t) + "\n" for t in trace))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """Every runnable quoted line, run 4 at a time against one fast simulator."""
    tmp = tmp_path_factory.mktemp("docs")
    sim = subprocess.Popen(
        [sys.executable, "-m", "llmtop", "sim", "--port", "0", "--time-scale", "10"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert sim.stdout is not None
        ready, _, _ = select.select([sim.stdout], [], [], RUN_TIMEOUT_S)
        assert ready, "the simulator did not say where it listens"
        sim_url = json.loads(sim.stdout.readline())["url"]
        _seed(tmp / "seed", sim_url)
        # The same line quoted in two places runs once; the slow kinds start first.
        first: dict[tuple[str, ...], Quoted] = {}
        for q in RUNNABLE:
            first.setdefault(tuple(shortened(q.argv, "SIM")), q)
        slow = {"ui": 0, "launch": 1, "knee": 2, "report": 3}
        order = sorted(first.values(), key=lambda q: slow.get(_command(q.argv), 9))
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {q.where: pool.submit(_run_one, q, sim_url, tmp / "seed", tmp) for q in order}
            ran = {key: futures[q.where] for key, q in first.items()}
            yield {q.where: ran[tuple(shortened(q.argv, "SIM"))].result() for q in RUNNABLE}
    finally:
        sim.terminate()
        sim.wait(timeout=30)


@pytest.mark.parametrize("q", RUNNABLE, ids=lambda q: q.where)
def test_quoted_command_runs(q: Quoted, outcomes: dict[str, Outcome]) -> None:
    o = outcomes[q.where]
    detail = f"{q.where}: {q.text}\nran: llmtop {shlex.join(o.argv)} ({o.seconds:.1f} s)\n"
    assert o.code in OK_CODES, detail + o.output[-3000:]
    assert "Traceback" not in o.output, detail + o.output[-3000:]
