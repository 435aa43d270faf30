"""Log lines about client input: clipped, and at most one per interval with a count."""

from __future__ import annotations

from controlplane.xds.loglimit import LogLimiter, clip


def test_clip_keeps_short_text_and_cuts_long_text_saying_how_much() -> None:
    assert clip("short") == "short"
    assert clip("x" * 200, 128) == "x" * 128 + "...(+72 chars)"


def test_one_line_per_interval_and_the_next_counts_those_held_back() -> None:
    now = [0.0]
    limiter = LogLimiter(10.0, clock=lambda: now[0])
    assert limiter.allow() == ""
    assert [limiter.allow() for _ in range(3)] == [None, None, None]
    now[0] = 10.0
    assert limiter.allow() == " (3 similar lines suppressed)"
    assert limiter.allow() is None
