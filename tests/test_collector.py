"""The collector turns raw records into exactly the metrics DESIGN.md defines."""

from __future__ import annotations

from array import array

import pytest
from hdrh.histogram import HdrHistogram

from llmtop.metrics import records
from llmtop.metrics.collector import Collector
from llmtop.metrics.figures import run_summary
from llmtop.metrics.records import RequestRecord

MS = 1_000_000


def rec(
    intended: int = 0,
    send: int = 0,
    chunks: list[tuple[int, int]] | None = None,
    output_tokens: int | None = None,
    error: str | None = None,
    measured: bool = True,
    slot: int | None = None,
    end: int | None = None,
) -> RequestRecord:
    chunks = chunks or []
    stamps = array("q", [t for t, _ in chunks])
    counts = array("i", [k for _, k in chunks])
    n = output_tokens if output_tokens is not None else sum(counts)
    return RequestRecord(
        intended,
        slot if slot is not None else intended,
        send,
        stamps[0] if stamps else 0,
        stamps[-1] if stamps else 0,
        end if end is not None else (stamps[-1] if stamps else send),
        10,
        n,
        stamps.tobytes(),
        counts.tobytes(),
        error,
        "detail" if error else "",
        measured,
    )


def test_ttft_e2e_tpot_and_slip() -> None:
    c = Collector()
    c.measurement_started(0)
    # intended at 0, sent 2 ms late, first token at 52 ms, then 4 more 10 ms apart
    chunks = [(52 * MS + i * 10 * MS, 1) for i in range(5)]
    c.add([rec(intended=0, send=2 * MS, chunks=chunks)])
    c.tick(200 * MS)
    s = run_summary(c)
    assert s["ttft_ms"]["p50"] == pytest.approx(50.0, rel=1e-3)
    assert s["e2el_ms"]["p50"] == pytest.approx(90.0, rel=1e-3)
    assert s["tpot_ms"]["p50"] == pytest.approx(10.0, rel=1e-3)
    assert s["itl_ms"]["count"] == 4 and s["itl_ms"]["p50"] == pytest.approx(10.0, rel=1e-3)
    assert s["send_slip_ms"]["p50"] == pytest.approx(2.0, rel=1e-3)
    assert s["ttft_from_intended_ms"]["p50"] == pytest.approx(52.0, rel=1e-3)
    assert s["completed"] == 1 and s["output_tokens"] == 5 and s["input_tokens"] == 10


def test_chunk_with_k_tokens_gives_k_itl_samples_of_gap_over_k() -> None:
    c = Collector()
    chunks = [(10 * MS, 1), (40 * MS, 3), (50 * MS, 1)]  # 30 ms gap carrying 3 tokens
    c.add([rec(chunks=chunks)])
    c.tick(100 * MS)
    h = c.cumulative["itl"]
    assert h.get_total_count() == 4
    assert h.get_count_at_value(10_000) == 4  # three of 30/3 ms and one of 10 ms
    # TPOT uses usage's token count: (50 − 10) / (5 − 1) = 10 ms
    assert run_summary(c)["tpot_ms"]["p50"] == pytest.approx(10.0, rel=1e-3)


def test_failures_warmup_and_cancelled_are_kept_apart() -> None:
    c = Collector()
    c.add(
        [
            rec(chunks=[(5 * MS, 1)], measured=False),
            rec(error=records.http_error(429)),
            rec(error=records.STREAM_CUT, chunks=[(5 * MS, 1)]),
            rec(error=records.CANCELLED),
            rec(chunks=[(5 * MS, 1), (6 * MS, 1)]),
        ]
    )
    c.tick(10 * MS)
    s = run_summary(c)
    assert s["completed"] == 1 and s["failed"] == 2 and s["cancelled"] == 1
    assert s["warmup_requests"] == 1
    assert s["errors"] == {"http_429": 1, "stream_cut": 1}
    assert s["ttft_ms"]["count"] == 1  # failed requests put nothing in latency histograms
    assert s["send_slip_ms"]["count"] == 3  # but every sent, measured request has a slip


def test_window_slides_and_cumulative_keeps_everything() -> None:
    c = Collector(window_s=2.0)
    c.tick(0)  # the clock starts at 0: one-second buckets are [0, 1), [1, 2) ...
    for i in range(20):  # one request per 250 ms interval, TTFT growing: 1, 2, ... 20 ms
        t0 = i * 250 * MS
        c.add([rec(intended=t0, send=t0, chunks=[(t0 + (i + 1) * MS, 1)])])
        c.tick(t0 + 250 * MS)
    w = c.window_summary(["ttft"])["ttft"]
    assert w.count == 8  # the last two one-second buckets
    assert w.p50_ms == pytest.approx(16.0, abs=1.01)
    assert c.cumulative["ttft"].get_total_count() == 20
    counts, span = c.window_counts()
    assert counts.completed == 8 and span == pytest.approx(2.0)
    c.reset_window()
    assert c.window_summary(["ttft"])["ttft"].count == 0


def test_steps_follow_the_send_time_and_old_ones_are_packed() -> None:
    c = Collector(request_limits_ms={"ttft": 10.0})
    c.begin_step(0, 1.0)
    c.begin_step(1000 * MS, 2.0)
    # sent during step 0, finished after step 1 began: it belongs to step 0
    c.add([rec(intended=500 * MS, send=500 * MS, chunks=[(1500 * MS, 1)])])
    c.add([rec(intended=1200 * MS, send=1200 * MS, chunks=[(1205 * MS, 1)])])
    c.tick(2000 * MS)
    assert c.steps[0].counts.completed == 1 and c.steps[0].counts.good == 0
    assert c.steps[1].counts.completed == 1 and c.steps[1].counts.good == 1
    c.begin_step(3000 * MS, 4.0)
    c.tick(3250 * MS)  # now step 0 is two steps back: packed, still readable
    assert c.steps[0].compact is not None
    assert c.steps[0].histogram("ttft").get_total_count() == 1
    assert c.steps[0].histogram("ttft").get_max_value() == pytest.approx(1_000_000, rel=1e-3)


def test_throughput_over_measured_duration() -> None:
    c = Collector()
    c.measurement_started(0)
    c.add([rec(send=0, chunks=[(MS, 1), (2 * MS, 1)], end=2000 * MS) for _ in range(4)])
    c.tick(3000 * MS)
    s = run_summary(c)
    assert s["duration_s"] == pytest.approx(2.0)
    assert s["request_throughput"] == pytest.approx(2.0)
    assert s["output_throughput"] == pytest.approx(4.0)


def test_out_of_range_values_are_counted_not_lost_silently() -> None:
    c = Collector()
    c.add([rec(chunks=[(2 * 3600 * 1000 * MS, 1)])])  # a two-hour TTFT
    c.tick(1)
    assert run_summary(c)["out_of_range"]["ttft"] == 1


def test_interval_histograms_merge_exactly() -> None:
    c = Collector()
    for i in range(3):
        c.add([rec(chunks=[((j + 1) * MS, 1)]) for j in range(100 * (i + 1))])
        iv = c.tick((i + 1) * 1000 * MS)
        decoded = HdrHistogram.decode(iv.histograms["ttft"].encode())
        assert decoded.get_total_count() == 100 * (i + 1)
    assert c.cumulative["ttft"].get_total_count() == 600


def test_fast_statistics_match_hdrhistogram_py() -> None:
    """Our numpy percentiles and mean give exactly what HdrHistogram_py computes."""
    import random

    from llmtop.metrics.hdr import mean_us, new_histogram, value_at_percentile_us

    rng = random.Random(7)
    for n in (1, 10, 1000, 20_000):
        h = new_histogram()
        for _ in range(n):
            h.record_value(int(rng.lognormvariate(9, 1.5)) + 1)
        for p in (0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0):
            assert value_at_percentile_us(h, p) == h.get_value_at_percentile(p), (n, p)
        assert mean_us(h) == pytest.approx(h.get_mean_value(), rel=1e-12)


def test_bulk_recording_matches_record_value() -> None:
    """`record_many` puts every value where HdrHistogram_py's `record_value` would."""
    import random

    import numpy as np

    from llmtop.metrics.hdr import HIGHEST_US, new_histogram, record_many

    rng = random.Random(3)
    values = [
        rng.choice([0, 1, 2, 2047, 2048, 4095, 4096, HIGHEST_US, HIGHEST_US * 4])
        for _ in range(200)
    ]
    values += [int(rng.lognormvariate(8, 3)) for _ in range(5000)]
    weights = [rng.randint(1, 4) for _ in values]
    one, bulk = new_histogram(), new_histogram()
    rejected = 0
    for v, w in zip(values, weights, strict=True):
        rejected += 0 if one.record_value(v, w) else w
    got = record_many(bulk, np.array(values), np.array(weights))
    assert got == rejected > 0
    assert list(one.counts) == list(bulk.counts)
    assert (one.total_count, one.min_value, one.max_value) == (
        bulk.total_count,
        bulk.min_value,
        bulk.max_value,
    )
    assert bulk.encode() == one.encode()


def test_dropped_histograms_are_freed_at_once() -> None:
    """No histogram ↔ encoder cycle: memory comes back without waiting for a full GC."""
    import gc
    import weakref

    from llmtop.metrics.hdr import new_histogram

    gc.disable()
    try:
        h = new_histogram()
        h.record_value(5)
        assert h.encode()  # the encoder still reaches its histogram
        ref = weakref.ref(h)
        del h
        assert ref() is None
    finally:
        gc.enable()


def test_step_zero_starts_when_the_load_loop_does() -> None:
    """Spawning the load process is not time spent at the first load; later steps keep theirs."""
    c = Collector()
    c.begin_step(0, 1.0)
    c.load_started(300 * MS)
    assert c.steps[0].start_ns == 300 * MS
    assert c.steps[0].duration_s(1300 * MS) == pytest.approx(1.0)
    c2 = Collector()
    c2.begin_step(0, 1.0)
    c2.begin_step(100 * MS, 2.0)  # the user changed the rate before the load loop started
    c2.load_started(300 * MS)
    assert [s.start_ns for s in c2.steps] == [0, 100 * MS]


def test_exceedances_and_stddev_match_hdrhistogram_py() -> None:
    """`count_above_us` counts what the recorded iterator would; `stddev_us` is `get_stddev`."""
    import random

    from llmtop.metrics.hdr import (
        CountsHistogram,
        count_above_us,
        counts_of,
        new_histogram,
        stddev_us,
    )

    rng = random.Random(11)
    for n in (1, 50, 5000):
        h = new_histogram()
        for _ in range(n):
            h.record_value(int(rng.lognormvariate(9, 1.2)) + 1)
        window = CountsHistogram()  # the sliding window's kind answers the same
        window.add_counts(counts_of(h), h.get_total_count())
        for threshold_us in (0.0, 500.0, 8_100.0, 8_191.0, 30_000.0, 1e9):
            want = sum(
                it.count_added_in_this_iter_step
                for it in h.get_recorded_iterator()
                if it.value_iterated_to > threshold_us
            )
            assert count_above_us(h, threshold_us) == want == count_above_us(window, threshold_us)
        assert stddev_us(h) == pytest.approx(h.get_stddev(), rel=1e-9)
        assert stddev_us(window) == pytest.approx(h.get_stddev(), rel=1e-9)


def test_one_decoder_for_packed_steps_and_snapshot_text() -> None:
    """Bytes (packed steps) and ASCII text (snapshots) decode alike, without a reference cycle."""
    import gc
    import weakref

    from llmtop.metrics.hdr import decode_histogram, encode_histogram, new_histogram

    h = new_histogram()
    for v in (3, 70, 70, 9_000):
        h.record_value(v)
    text = encode_histogram(h)
    assert text is not None and encode_histogram(new_histogram()) is None
    for data in (h.encode(), text):
        back = decode_histogram(data)
        assert list(back.counts) == list(h.counts) and back.get_total_count() == 4
        gc.disable()
        try:
            ref = weakref.ref(back)
            del back
            assert ref() is None
        finally:
            gc.enable()
    with pytest.raises(ValueError):
        decode_histogram("HISTFAAA\u00e9")


def test_records_of_a_packed_step_count_in_the_run_and_are_reported() -> None:
    """A request that ends after its step was packed away is in the run's figures, not its
    step's: the summary says how many (`late_records`) instead of hiding it."""
    c = Collector()
    c.begin_step(0, 1.0)
    c.add([rec(intended=100 * MS, send=100 * MS, chunks=[(110 * MS, 1)])])
    c.begin_step(1000 * MS, 2.0)
    c.begin_step(2000 * MS, 4.0)
    c.tick(2100 * MS)
    assert c.steps[0].compact is not None
    c.add([rec(intended=500 * MS, send=500 * MS, chunks=[(2500 * MS, 1)])])  # step 0's
    c.tick(2600 * MS)
    s = run_summary(c)
    assert s["completed"] == 2 and s["ttft_ms"]["count"] == 2
    assert c.steps[0].counts.completed == 1
    assert s["late_records"] == 1
    assert run_summary(Collector())["late_records"] == 0
