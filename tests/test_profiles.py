"""Profiles, length distributions and datasets: parsing, precedence, and what is sent."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click
import pytest

from llmtop.backends.openai import RequestFactory, parse_url
from llmtop.cli.options import (
    RunOptions,
    load_options,
    target_options,
    workload_options,
)
from llmtop.config import Dialect, LengthDist, RunConfig, Target, Workload
from llmtop.datasets import load_dataset
from llmtop.errors import ConfigError
from llmtop.profiles import load_profile, shipped_profiles
from tests.conftest import assert_one_line_error, run_cli
from tests.support.fault_server import FaultServer


@click.command()
@target_options
@workload_options
@load_options
@click.option("--slo")
def _cmd(**o: Any) -> None:
    """A command with the same flags as `run` (plus --slo)."""


def options(*args: str) -> dict[str, Any]:
    """The command's parameters with the validated RunOptions' values over them (and "_opts")."""
    with _cmd.make_context("run", list(args)) as ctx:
        opts = RunOptions.from_params(ctx.params, ctx)
        o = dict(ctx.params)
        o.update({f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)})
        o["_opts"] = opts
        return o


def test_shipped_profiles_are_the_comparison_experiments() -> None:
    by_name = {load_profile(p).name: load_profile(p) for p in shipped_profiles()}
    for i, o in ((128, 128), (2048, 128), (128, 2048), (2048, 2048)):
        p = by_name[f"llama3-8b-{i}-{o}"]
        assert p.options["input_len"] == i and p.options["output_len"] == o
        assert p.options["request_rate"] == float("inf") and p.options["ignore_eos"] is True
        assert p.slo is None and "args" not in (p.engine or {})  # default settings
    tpot = by_name["llama3-8b-tpot-20ms"]
    assert tpot.slo == "tpot_p99<=20ms" and tpot.search["over"] == "concurrency"
    assert tpot.engine and tpot.engine["sweep"]["max_batch_size"][-1] == 256
    ttft = by_name["llama3-8b-ttft-1s"]
    assert ttft.slo == "ttft_p99<=1s" and ttft.search["over"] == "request_rate"
    assert (ttft.options["input_len"], ttft.options["output_len"]) == (2048, 128)


def test_profile_fills_what_the_flags_do_not_give() -> None:
    o = options("--profile", "llama3-8b-ttft-1s", "--num-requests", "5", "--output-len", "8")
    assert o["input_len"] == 2048 and o["output_len"] == 8  # the flag wins
    assert o["num_requests"] == 5 and o["duration"] is None  # flag beats the profile's duration
    assert o["request_rate"] == 1.0 and o["slo"] == "ttft_p99<=1s"
    assert o["profile"].name == "llama3-8b-ttft-1s"
    # without a profile the usual defaults stand
    o = options("--num-requests", "5")
    assert o["input_len"] == 1024 and o["slo"] is None and o["profile"] is None


def test_profile_closed_loop_gives_way_to_an_explicit_rate(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[load]\nconcurrency = 8\nduration = 30\n")
    assert options("--profile", str(p))["concurrency"] == 8
    o = options("--profile", str(p), "--request-rate", "3")
    assert o["concurrency"] is None and o["request_rate"] == 3.0
    o = options("--profile", str(p), "--max-concurrency", "4", "--request-rate", "9")
    assert o["concurrency"] is None and o["max_concurrency"] == 4


def test_length_distributions_and_shared_prefix(tmp_path: Path) -> None:
    p = tmp_path / "d.toml"
    p.write_text(
        '[workload]\ninput_len = {dist = "uniform", min = 100, max = 200}\n'
        'output_len = "normal:50:5"\nshared_prefix_len = 32\n'
    )
    o = options("--profile", str(p))
    assert o["input_len"] == LengthDist("uniform", 100, 200)
    assert o["output_len"] == LengthDist("normal", 50, 5)
    cfg = o["_opts"].config()
    assert cfg.workload.input_len == 150 and cfg.workload.input_dist == o["input_len"]
    assert cfg.public()["workload"]["input_dist"] == "uniform:100:200"
    f = RequestFactory(cfg, parse_url("http://127.0.0.1:1"))
    bodies = [json.loads(f.build().split(b"\r\n\r\n", 1)[1]) for _ in range(300)]
    lengths = [len(b["prompt"]) for b in bodies]
    assert min(lengths) >= 100 and max(lengths) <= 200 and len(set(lengths)) > 50
    assert 30 < sum(b["max_tokens"] for b in bodies) / 300 < 70
    prefixes = {tuple(b["prompt"][:32]) for b in bodies}
    assert len(prefixes) == 1  # the shared prefix
    assert len({tuple(b["prompt"][32:36]) for b in bodies}) == 300  # then unique per request


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[workload]\ninput_lenn = 5\n", ["[workload] input_lenn", "allowed: input_len"]),
        ('[workload]\ninput_len = "lots"\n', ["[workload] input_len", "whole number >= 1"]),
        ("[load]\nrequest_rate = -1\n", ["[load] request_rate", "'inf'"]),
        ("[load]\nnum_requests = 2.5\n", ["[load] num_requests", "whole number"]),
        ("[loads]\nx = 1\n", ["unknown section [loads]", "[load]"]),
        ('[slo]\nttft_p99 = "fast"\n', ["slo"]),
        ("[workload\n", ["not valid toml"]),
        ("[load]\nduration = 5\nnum_requests = 3\n", ["duration or num_requests"]),
    ],
)
def test_bad_profiles_name_file_key_and_allowed(
    tmp_path: Path, text: str, needles: list[str]
) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_profile(p)
    msg = str(exc.value)
    assert str(p) in msg and "\n" not in msg
    for needle in needles:
        assert needle.lower() in msg.lower(), msg


def test_bad_profile_on_the_command_line_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('[load]\nburstiness = "high"\n')
    r = run_cli("run", "--profile", str(p))
    assert_one_line_error(r, "bad.toml", "[load] burstiness", "a number > 0")
    assert r.returncode == 2
    r = run_cli("run", "--profile", str(tmp_path / "missing.toml"))
    assert_one_line_error(r, "missing.toml", "no such file")  # a path: the file is missing
    assert "no such profile" not in r.stderr
    r = run_cli("run", "--profile", "llama3-8b-nope")
    assert_one_line_error(r, "no such profile 'llama3-8b-nope'", "llama3-8b-2048-128")
    r = run_cli("run", "--input-len", "uniform:9", "--num-requests", "1")
    assert_one_line_error(r, "--input-len", "uniform:MIN:MAX")


def test_datasets_jsonl_and_sharegpt(tmp_path: Path) -> None:
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"prompt": "hello", "output_len": 7}\n\n{"prompt": "world"}\n')
    assert load_dataset(jl) == (("hello", 7), ("world", 0))
    sg = tmp_path / "sg.json"
    conv = [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x" * 40}]},
        {"conversations": [{"from": "gpt", "value": "no human turn"}]},
        {"conversations": [{"from": "human", "value": "only a question"}]},
    ]
    sg.write_text(json.dumps(conv))
    assert load_dataset(sg) == (("hi", 10), ("only a question", 0))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: expected"):
        load_dataset(bad)
    with pytest.raises(ConfigError, match="no such dataset file"):
        load_dataset(tmp_path / "none.jsonl")


def test_dataset_prompts_reach_the_server(fault_server: FaultServer, tmp_path: Path) -> None:
    ds = tmp_path / "p.jsonl"
    ds.write_text(
        "\n".join(json.dumps({"prompt": f"question {i}", "output_len": 3 + i}) for i in range(4))
    )
    prof = tmp_path / "p.toml"
    prof.write_text('[workload]\ndataset = "p.jsonl"\noutput_len = 5\n[load]\nnum_requests = 4\n')
    r = run_cli(
        "run", "--url", fault_server.url, "--profile", str(prof), json_path=tmp_path / "o.json"
    )
    assert r.returncode == 0, r.stderr
    bodies = fault_server.requests[-4:]
    assert sorted(b["prompt"] for b in bodies) == [f"question {i}" for i in range(4)]
    assert sorted(b["max_tokens"] for b in bodies) == [3, 4, 5, 6]
    assert r.data["completed"] == 4 and r.data["output_tokens"] == 3 + 4 + 5 + 6
    assert r.data["config"]["workload"]["dataset"] == str(ds)


def test_chat_dataset_body_and_build_cost() -> None:
    cfg = RunConfig(
        Target("http://x", api="chat", model="m"),
        Workload(output_len=9),
        dialect=Dialect(),
        dataset=(("a", 0), ("b", 2)),
    )
    f = RequestFactory(cfg, parse_url("http://127.0.0.1:1"))
    first, second = (json.loads(f.build().split(b"\r\n\r\n", 1)[1]) for _ in range(2))
    assert first["messages"] == [{"role": "user", "content": "a"}] and first["max_tokens"] == 9
    assert second["max_tokens"] == 2 and second["stream"] is True


def test_search_section_sets_the_knee_flags() -> None:
    knee = pytest.importorskip("llmtop.cli.knee").knee_command
    with knee.make_context("knee", ["--profile", "llama3-8b-tpot-20ms"]) as ctx:
        o = ctx.params
    assert tuple(o["slo"]) == ("tpot_p99<=20ms",) and o["concurrency_search"] is True
    assert o["max_conc"] == 256 and o["factor"] == 2.0 and o["input_len"] == 2048
    with knee.make_context("knee", ["--profile", "llama3-8b-ttft-1s", "--max-rate", "9"]) as ctx:
        o = ctx.params
    assert o["start_rate"] == 1.0 and o["max_rate"] == 9.0 and o["concurrency_search"] is False
