"""Table lines for production-like workloads: what the prefix cache held, reasoning, turns."""

from __future__ import annotations

from typing import Any


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def _ms(m: dict[str, Any] | None, key: str) -> str:
    v = (m or {}).get(key)
    return "-" if v is None or not (m or {}).get("count") else f"{v:.2f}"


def cache_lines(summary: dict[str, Any]) -> list[str]:
    """Cached prompt tokens (the client's sum of usage) beside the server's own hit rate."""
    lines: list[str] = []
    cached = summary.get("cached_prompt_tokens")
    server = summary.get("server_prefix_cache") or {}
    if cached is not None or server.get("hit_rate") is not None:
        text = "cache       "
        if cached is not None:
            text += (
                f"{cached:,} of {summary.get('prompt_tokens', 0):,} prompt tokens cached "
                f"({_pct(summary.get('cached_prompt_fraction'))}, from usage)"
            )
        else:
            text += "usage gave no cached_tokens (vLLM: --enable-prompt-tokens-details)"
        if server.get("hit_rate") is not None:
            text += f"   server hit rate {_pct(server.get('hit_rate'))} (its /metrics)"
        lines.append(text)
    if summary.get("reasoning_tokens"):
        lines.append(
            f"reasoning   {summary['reasoning_tokens']:,} reasoning + "
            f"{summary.get('answer_tokens', 0):,} answer tokens"
        )
    return lines


def turn_lines(summary: dict[str, Any]) -> list[str]:
    """One row per conversation turn: where a prefix cache shows (TTFT falls from turn 2)."""
    by_turn = summary.get("by_turn") or {}
    if not by_turn:
        return []
    lines = [
        "",
        f"{'turn':<6}{'done':>6}{'prompt tok':>12}{'cached':>9}{'TTFT p50':>10}{'TTFT p99':>10}"
        f"{'TPOT p50':>10}{'E2E p50':>10}   (ms; prompt tokens and cached share per turn)",
    ]
    for turn, t in by_turn.items():
        prompt = t.get("prompt_tokens") or 0
        cached = t.get("cached_prompt_tokens")
        share = cached / prompt if cached is not None and prompt else None
        lines.append(
            f"{turn:<6}{t.get('completed', 0):>6}{prompt:>12,}{_pct(share):>9}"
            f"{_ms(t.get('ttft_ms'), 'p50'):>10}{_ms(t.get('ttft_ms'), 'p99'):>10}"
            f"{_ms(t.get('tpot_ms'), 'p50'):>10}{_ms(t.get('e2el_ms'), 'p50'):>10}"
        )
    return lines
