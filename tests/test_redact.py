"""The one redaction (llmtop.errors.redact) and the exit points that use it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmtop.errors import (
    MASK,
    describe_exception,
    forget_secrets,
    redact,
    register_secret,
    register_secrets_from_argv,
)
from llmtop.output.jsonfile import write_json_atomic
from llmtop.output.terminal import RedactingStream

KEY = "sk-live-0123456789abcdef"


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    forget_secrets()
    yield
    forget_secrets()


def test_registered_secrets_and_patterns_are_masked() -> None:
    register_secret(KEY)
    register_secret("tenant-a", header="X-Tenant")
    cases = {
        f"refused key {KEY}.": f"refused key {MASK}.",
        "http://bob:hunter2@h:8000/v1?access_token=zz&max_tokens=5": (
            f"http://{MASK}@h:8000/v1?access_token={MASK}&max_tokens=5"
        ),
        "Authorization: Bearer abc123xyz": f"Authorization: {MASK}",
        "<Proxy('Host': 'h', 'Authorization': 'Bearer q', 'X-Tenant': 'tenant-a')>": (
            f"<Proxy('Host': 'h', 'Authorization': '{MASK}', 'X-Tenant': '{MASK}')>"
        ),
        "vllm --api-key s3 --port 8000 --hf-token=hf_x": (
            f"vllm --api-key {MASK} --port 8000 --hf-token={MASK}"
        ),
        "HF_TOKEN=hf_abc make": f"HF_TOKEN={MASK} make",
        '{"api_key": "zzz", "model": "m"}': f'{{"api_key": "{MASK}", "model": "m"}}',
        "X-Tenant: tenant-a": f"X-Tenant: {MASK}",
    }
    for text, want in cases.items():
        assert redact(text) == want, text


def test_ordinary_text_is_left_alone() -> None:
    register_secret("abc")  # too short to look for in free text
    for text in (
        "one token per content chunk is assumed; token counts 42",
        "TTFT p99 12.5 ms   rate 3/s   max_tokens=5",
        "model llama-3-8b at http://127.0.0.1:8000/v1",
        "label abc abcd",
    ):
        assert redact(text) == text


def test_structures_mask_secret_keys_and_argv_values() -> None:
    data = {
        "argv": ["vllm", "serve", "--api-key", "k", "--port", "1", "--token=abc"],
        "engine_config": {"hf_token": "x", "max_num_seqs": 8},
        "nested": [("--hf-token", "v")],
    }
    out = redact(data)
    assert out["argv"] == ["vllm", "serve", "--api-key", MASK, "--port", "1", f"--token={MASK}"]
    assert out["engine_config"] == {"hf_token": MASK, "max_num_seqs": 8}
    assert out["nested"] == [("--hf-token", MASK)]


def test_terminal_controls_are_removed_and_the_terminal_keeps_ours() -> None:
    evil = "\x1b]52;c;aGk=\x07a\x1b[2Jb\x1b[31mc\x1b[0m\rd\u202ee\x9b1;1Hf\x00g"
    assert redact(evil) == "abcdefg"
    assert redact(evil, terminal=True) == "ab\x1b[31mc\x1b[0m\rdefg"
    assert redact("line one\r\nline\ttwo") == "line one\nline\ttwo"


def test_argv_and_environment_register_their_secrets() -> None:
    register_secrets_from_argv(
        [
            "run",
            "--url",
            "http://u:pw-123456@h/v1?token=tok-123456",
            "--api-key",
            KEY,
            "--header",
            "X-Key: header-value-1",
            "--",
            "--hf-token=hf_abcdef12",
        ],
        {"OPENAI_API_KEY": "env-key-9876543", "PATH": "/usr/bin"},
    )
    text = f"{KEY} header-value-1 hf_abcdef12 env-key-9876543 pw-123456 tok-123456 /usr/bin"
    assert redact(text) == " ".join([MASK] * 6) + " /usr/bin"


def test_describe_exception_is_one_redacted_line() -> None:
    register_secret(KEY)
    exc = ValueError(f"bad header\nAuthorization: Bearer {KEY}")
    assert describe_exception(exc) == "ValueError: bad header"
    assert KEY not in describe_exception(RuntimeError(f"sent {KEY}"))


def test_the_json_writer_and_the_terminal_stream_redact(tmp_path: Path) -> None:
    register_secret(KEY)
    path = write_json_atomic(tmp_path / "x.json", {"note": f"key {KEY}\x1b[2J", "n": 1.5})
    assert json.loads(path.read_text()) == {"note": f"key {MASK}", "n": 1.5}
    raw = io.StringIO()
    stream = RedactingStream(raw)  # type: ignore[arg-type]
    stream.write("\r\x1b[2Kprogress 5/s\x1b]0;title\x07\n")  # ours kept, the title not
    stream.write("\x1b[31mkey sk-live\x1b[0m-0123456789abcdef\n")  # a key split by a colour
    assert raw.getvalue() == f"\r\x1b[2Kprogress 5/s\nkey {MASK}\n"
    with pytest.raises(TypeError):
        stream.write(b"bytes would bypass")  # type: ignore[arg-type]


def test_a_device_path_is_written_in_place_not_replaced(tmp_path: Path) -> None:
    fifo_free = Path("/dev/null")
    if not fifo_free.exists():
        pytest.skip("no /dev/null")
    write_json_atomic(fifo_free, {"a": 1})
    assert fifo_free.exists() and not fifo_free.is_file()  # still the device


_PIECES = st.sampled_from(["\x1b[", "\x1b]", KEY, "@", "?token=", "Bearer ", "--api-key "])
_TEXT = st.lists(
    st.text(st.characters(min_codepoint=0, max_codepoint=0x2070), max_size=20) | _PIECES,
    max_size=12,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(_TEXT, _TEXT)
def test_property_no_secret_and_no_control_survives(before: str, after: str) -> None:
    register_secret(KEY)
    text = f"{before} {KEY} {after}"
    out = redact(text)
    assert KEY not in out
    assert not any(ord(c) < 32 and c not in "\t\n" for c in out)
    assert not any(0x7F <= ord(c) <= 0x9F for c in out)
    assert redact(out) == out  # a second pass changes nothing


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.text(max_size=20) | st.integers(), lambda c: st.lists(c, max_size=4)))
def test_property_structures_keep_their_shape(value: object) -> None:
    out = redact(value)
    assert type(out) is type(value)
    if isinstance(value, list):
        assert len(out) == len(value)  # type: ignore[arg-type]
