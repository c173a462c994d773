"""What the parent can take from its workers (issue 13): raw records vs interval histograms.

With `--workers N` every worker ships its raw records to the parent, whose one collector
fills the histograms: exact, and what `--save-requests` needs, but the parent's one core
sets a ceiling. This measures that ceiling, in records and tokens per second of the parent's
CPU, for everything the parent does per record: unpickle the batch (`channel`), the
per-worker book (`WorkerBook.records`) and the collector (`Collector.add`), plus its ticks.

Past the ceiling (and past one machine) workers ship interval histograms instead (`--ray`:
`llmtop.load.remote`): the agent beside each load process runs the collector on its own
records and ships sparse counter arrays four times a second; the parent only adds them. This
measures both halves: the agent's cost per record and the parent's cost per shipment, hence
how many workers one parent can merge.

    python benchmarks/workers.py [--tokens 200,20] [--records 20000] [--json out.json]

Single-threaded CPU time (time.process_time), on whatever core it runs: pin it with
`taskset -c 1` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmtop.load import channel as ch
from llmtop.load.book import WorkerBook
from llmtop.load.remote import DeltaCollector
from llmtop.metrics.collector import Collector
from llmtop.metrics.records import RequestRecord

MS = 1_000_000
BATCH_S = 0.1  # a worker ships its records every 100 ms
TICK_S = 0.25  # the parent closes an interval every 250 ms; a remote agent ships as often


def make_records(n: int, tokens: int, rate: float, seed: int = 0) -> list[RequestRecord]:
    """n records of `tokens` streamed tokens each, as a load at `rate` req/s makes them."""
    rng = np.random.default_rng(seed)
    out = []
    t = 0
    for _ in range(n):
        t += int(rng.exponential(1e9 / rate))
        send = t + int(rng.integers(10_000, 200_000))
        gaps = rng.integers(9 * MS, 11 * MS, tokens)
        stamps = send + 50 * MS + np.cumsum(gaps)
        k = np.ones(tokens, dtype=np.int32)
        out.append(
            RequestRecord(
                t,
                t,
                send,
                int(stamps[0]),
                int(stamps[-1]),
                int(stamps[-1]) + 100_000,
                32,
                tokens,
                stamps.astype(np.int64).tobytes(),
                k.tobytes(),
                None,
                "",
                True,
            )
        )
    return out


def _cpu(fn: Any) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def parent_records(recs: list[RequestRecord], rate: float) -> dict[str, float]:
    """The parent's CPU for raw records: per record (unpickle, book, collector) and per tick
    (four a second, whatever the rate); the ceiling is what one core can do of both."""
    per_batch = max(1, round(rate * BATCH_S))
    batches = [
        ch.encode(ch.RecordsShipped(recs[i : i + per_batch]))[4:]
        for i in range(0, len(recs), per_batch)
    ]
    coll = Collector(10.0)
    coll.begin_step(0, rate)
    book = WorkerBook(["here"])

    def run() -> None:
        for data in batches:
            msg = pickle.loads(data)
            book.records(0, msg.records, 0)
            coll.add(msg.records)

    cpu = _cpu(run)
    n_ticks = 200
    now = [0]

    def ticks() -> None:
        for _ in range(n_ticks):
            now[0] += round(TICK_S * 1e9)
            coll.add(recs[: max(1, round(rate * TICK_S))][:50])  # a filled interval each tick
            coll.tick(now[0])

    tick_cpu = _cpu(ticks)
    n = len(recs)
    us = cpu * 1e6 / n
    tick_ms = tick_cpu * 1e3 / n_ticks
    spare = 1.0 - tick_ms / 1e3 / TICK_S  # of one core, after the ticks
    return {
        "us_per_record": us,
        "tick_ms": tick_ms,
        "records_per_core_s": spare / (us / 1e6),
    }


def remote_halves(recs: list[RequestRecord], rate: float) -> dict[str, float]:
    """Interval histograms: the agent's CPU per record, the parent's per shipment."""
    per_tick = max(1, round(rate * TICK_S))
    agent = DeltaCollector(10.0)
    agent.begin_step(0, rate)
    shipments = []

    def agent_run() -> None:
        for i in range(0, len(recs), per_tick):
            agent.add(recs[i : i + per_tick])
            got = agent.drain(0)
            if got is not None:
                shipments.append(pickle.dumps(got, protocol=pickle.HIGHEST_PROTOCOL))

    agent_cpu = _cpu(agent_run)
    parent = Collector(10.0)
    parent.begin_step(0, rate)
    now = [0]

    def parent_run() -> None:
        for i, data in enumerate(shipments):
            pickle.loads(data).merge_into(parent)
            if i % 8 == 7:  # the parent ticks 4/s whatever the number of workers
                now[0] += round(TICK_S * 1e9)
                parent.tick(now[0])

    def ticks_only() -> None:
        for _ in range(len(shipments) // 8):
            now[0] += round(TICK_S * 1e9)
            parent.tick(now[0])

    parent_cpu = _cpu(parent_run)
    tick_cpu = _cpu(ticks_only)
    n, k = len(recs), max(len(shipments), 1)
    merge_s = max(parent_cpu - tick_cpu, 0.0) / k
    tick_s = tick_cpu / max(len(shipments) // 8, 1)
    return {
        "agent_us_per_record": agent_cpu * 1e6 / n,
        "shipments": len(shipments),
        "shipment_bytes_mean": sum(len(s) for s in shipments) / k,
        "parent_ms_per_shipment": merge_s * 1e3,
        # each worker ships 4 times a second (TICK_S); the parent's own ticks come first
        "workers_per_parent_core": (1.0 - tick_s / TICK_S) / (merge_s / TICK_S),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", default="200,20", help="streamed tokens per request (list)")
    p.add_argument("--records", type=int, default=20_000)
    p.add_argument(
        "--rate", type=float, default=2000.0, help="req/s the parent takes (sets the batches)"
    )
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = []
    for tokens in [int(t) for t in args.tokens.split(",")]:
        recs = make_records(args.records, tokens, args.rate)
        raw = parent_records(recs, args.rate)
        rem = remote_halves(recs, args.rate)
        rows.append({"tokens": tokens, "raw": raw, "remote": rem})
        print(
            f"{tokens:>4} tokens/request: raw records {raw['us_per_record']:.1f} µs each in the "
            f"parent + {raw['tick_ms']:.2f} ms a tick (4/s) → {raw['records_per_core_s']:,.0f} "
            f"records/s = {raw['records_per_core_s'] * tokens:,.0f} tokens/s per parent core; "
            f"histograms: agent {rem['agent_us_per_record']:.1f} µs/record, parent "
            f"{rem['parent_ms_per_shipment']:.2f} ms/shipment "
            f"({rem['shipment_bytes_mean']:,.0f} B) → {rem['workers_per_parent_core']:,.0f} "
            "workers per parent core"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
