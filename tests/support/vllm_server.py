"""A real vLLM (CPU build) with a tiny random-weight Llama, for end-to-end tests.

vLLM lives in its own venv (``.ci/install_vllm.sh`` builds it): ``$LLMTOP_VLLM_VENV``, default
``~/.cache/llmtop/vllm-venv``. The project venv never imports vLLM, torch or transformers; the
model dir is written by the vLLM venv's python in a subprocess.

    with running_vllm(max_num_seqs=16) as url:      # url is a str: "http://127.0.0.1:PORT"
        ...                                          # url.model is the served model name

The model dir: a Llama ``config.json`` (hidden 256, 2 layers, 4 heads, vocab 1000, 4096
positions, bfloat16) and a byte-level BPE tokenizer trained here with ``tokenizers`` and saved
with transformers' ``PreTrainedTokenizerFast`` (so text prompts, ``/tokenize`` and chat work).
Weights are random (``--load-format dummy``): the text is gibberish, ``ignore_eos`` gives
exact output lengths.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

VLLM_VERSION = "0.32.0"
DEFAULT_VENV = Path.home() / ".cache" / "llmtop" / "vllm-venv"
DEFAULT_MODEL_NAME = "tiny-llama"
VOCAB_SIZE = 1000
MAX_MODEL_LEN = 4096

# Runs inside the vLLM venv: python - OUT_DIR
_WRITE_MODEL_DIR = r"""
import json, sys
from pathlib import Path
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
vocab = int(sys.argv[2]); max_len = int(sys.argv[3])

config = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 64,
    "vocab_size": vocab, "max_position_embeddings": max_len,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
}
(out / "config.json").write_text(json.dumps(config, indent=2))
(out / "generation_config.json").write_text(json.dumps(
    {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, indent=2))

# A deterministic little corpus: enough for a 1000-entry byte-level BPE.
words = ("the a of to and in is it that for on with as was at by an be this from or are "
         "load test token stream server request latency throughput rate model engine queue "
         "prompt output input chunk usage metric histogram percentile knee slo vllm llama "
         "hello world quick brown fox jumps over lazy dog time first per second").split()
lines = []
x = 12345
for i in range(4000):
    n = 5 + i % 11
    row = []
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        row.append(words[x % len(words)])
    lines.append(" ".join(row) + (" %d." % i))

tok = Tokenizer(models.BPE(unk_token=None))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(
    vocab_size=vocab, special_tokens=["<pad>", "<s>", "</s>"],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
tok.train_from_iterator(lines, trainer=trainer)
assert tok.token_to_id("<pad>") == 0 and tok.token_to_id("<s>") == 1
assert tok.token_to_id("</s>") == 2 and tok.get_vocab_size() <= vocab, tok.get_vocab_size()

chat_template = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
fast = PreTrainedTokenizerFast(
    tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
    model_max_length=max_len, clean_up_tokenization_spaces=False)
fast.chat_template = chat_template
fast.save_pretrained(str(out))
print(tok.get_vocab_size())
"""


class VllmNotInstalled(RuntimeError):
    pass


class VllmServer(str):
    """The server's base URL (a str), with a few facts about the running server attached."""

    model: str
    model_dir: Path
    log_path: Path
    pid: int
    startup_s: float

    @property
    def url(self) -> str:
        return str(self)


def vllm_venv() -> Path:
    return Path(os.environ.get("LLMTOP_VLLM_VENV") or DEFAULT_VENV)


def vllm_python() -> Path | None:
    """The vLLM venv's python, or None when the venv is missing."""
    py = vllm_venv() / "bin" / "python"
    return py if py.exists() else None


def vllm_required() -> bool:
    """CI must really run the vLLM tests: there a missing vLLM is a failure, not a skip."""
    return (
        os.environ.get("CI", "").lower() == "true"
        or os.environ.get("LLMTOP_REQUIRE_VLLM", "") == "1"
    )


def vllm_python_or_skip() -> Path:
    """For pytest: the vLLM python; skip when missing, but fail in CI / LLMTOP_REQUIRE_VLLM=1."""
    import pytest

    py = vllm_python()
    if py is not None:
        return py
    msg = f"no vLLM venv at {vllm_venv()} (run: bash .ci/install_vllm.sh)"
    if vllm_required():
        pytest.fail(msg + " — required because CI=true or LLMTOP_REQUIRE_VLLM=1", pytrace=False)
    pytest.skip(msg)
    raise AssertionError("unreachable")


def write_model_dir(out: Path, python: Path | None = None) -> Path:
    """Write the tiny Llama config and a locally trained tokenizer into ``out``."""
    py = python or vllm_python()
    if py is None:
        raise VllmNotInstalled(f"no vLLM venv at {vllm_venv()}")
    proc = subprocess.run(
        [str(py), "-", str(out), str(VOCAB_SIZE), str(MAX_MODEL_LEN)],
        input=_WRITE_MODEL_DIR,
        text=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        timeout=180,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"writing the tiny model dir failed:\n{proc.stderr[-3000:]}")
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _raise_priority(pid: int, nice: int) -> None:
    """Run the server ahead of everything else on a small machine (2 cores here).

    On a busy 2-core machine vLLM's API server is starved for tens of ms at a time and then
    writes a whole response in one burst: a truthful client then sees TTFT ~= E2E and ITL 0.
    In production the server has its own machine; a higher priority is the nearest thing here.
    Set right after the start, before vLLM spawns its engine process, which inherits it.
    Needs root (CI runs as root); elsewhere it is silently left as it is.
    """
    if nice:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, nice)


def _stop(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the server's process group (API server + engine core), then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    # The engine-core child may outlive the API server: kill whatever is left in the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@contextlib.contextmanager
def running_vllm(
    max_num_seqs: int = 16,
    served_model_name: str | None = DEFAULT_MODEL_NAME,
    *,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout_s: float = 180.0,
    python: Path | None = None,
    nice: int = -10,
) -> Iterator[VllmServer]:
    """Start a real vLLM on loopback; yield its base URL (a ``VllmServer`` str); stop it.

    ``served_model_name=None`` serves the model under its directory path, as vLLM does.
    ``nice``: the server's scheduling priority (see ``_raise_priority``); 0 leaves it alone.
    Raises ``VllmNotInstalled`` when the venv is missing (tests use ``vllm_python_or_skip``).
    Healthy in ~25-35 s on a quiet 2-core machine; ~70 s was seen with other work beside it.
    """
    py = python or vllm_python()
    if py is None:
        raise VllmNotInstalled(f"no vLLM venv at {vllm_venv()} (run: bash .ci/install_vllm.sh)")
    tmp = Path(tempfile.mkdtemp(prefix="llmtop-vllm-"))
    proc: subprocess.Popen | None = None
    try:
        model_dir = write_model_dir(tmp / "tiny-llama", py)
        port = port or free_port()
        cmd = [
            str(py), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model_dir),
            "--load-format", "dummy",
            "--dtype", "bfloat16",
            "--max-model-len", str(MAX_MODEL_LEN),
            "--enforce-eager",
            "--max-num-seqs", str(max_num_seqs),
            "--host", "127.0.0.1",
            "--port", str(port),
        ]  # fmt: skip
        if served_model_name:
            cmd += ["--served-model-name", served_model_name]
        cmd += list(extra_args)
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }
        log_path = tmp / "vllm.log"
        t0 = time.monotonic()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tmp,
                start_new_session=True,  # its own process group: we stop it and its children
            )
        _raise_priority(proc.pid, nice)
        url = f"http://127.0.0.1:{port}"
        deadline = t0 + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM exited with code {proc.returncode} before it was healthy; "
                    f"log tail ({log_path}):\n{_log_tail(log_path)}"
                )
            if _healthy(url):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"vLLM not healthy after {startup_timeout_s:.0f} s; "
                    f"log tail ({log_path}):\n{_log_tail(log_path)}"
                )
            time.sleep(0.5)
        server = VllmServer(url)
        server.model = served_model_name or str(model_dir)
        server.model_dir = model_dir
        server.log_path = log_path
        server.pid = proc.pid
        server.startup_s = time.monotonic() - t0
        yield server
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
