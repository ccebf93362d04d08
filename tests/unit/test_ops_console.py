"""The tools' console output (consumer/ops/console.py): the progress bar, plurals, durations."""

from __future__ import annotations

import io

import pytest

from consumer.ops.console import Progress, duration, plural


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_shows_the_rate_and_the_time_left_then_the_average_and_the_time_taken() -> None:
    clock, out = Clock(), io.StringIO()
    bar = Progress("replay", 100, stream=out, interval_s=1.0, clock=clock)
    for _ in range(4):
        clock.t += 1.0
        bar.advance(20, detail="pushed 3")
    lines = out.getvalue().splitlines()
    assert lines[-1] == "replay [########################------]  80% 80/100 20.0/s ETA 0:01 pushed 3"
    clock.t += 1.0
    bar.advance(20)
    bar.close()
    assert out.getvalue().splitlines()[-1] == (
        "replay [##############################] 100% 100/100 20.0/s in 0:05 pushed 3")


def test_the_rate_follows_the_last_seconds_not_the_whole_run() -> None:
    clock, out = Clock(), io.StringIO()
    bar = Progress("replay", 10_000, stream=out, interval_s=1.0, clock=clock)
    for _ in range(30):  # 100/s for 30 s, then 500/s
        clock.t += 1.0
        bar.advance(100)
    for _ in range(20):
        clock.t += 1.0
        bar.advance(500)
    last = out.getvalue().splitlines()[-1]
    assert " 500.0/s ETA 0:00" in last or " 500.0/s ETA 0:01" in last, last


@pytest.mark.parametrize("stream_kind", ["pipe", "dumb terminal"])
def test_no_control_sequence_unless_on_a_terminal_that_understands_it(
        stream_kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    out: io.StringIO
    if stream_kind == "pipe":
        out = io.StringIO()
    else:
        monkeypatch.setenv("TERM", "dumb")
        out = Terminal()
    clock = Clock()
    bar = Progress("dlq replay", 3, stream=out, interval_s=0.0, clock=clock)
    bar.advance(detail="accepted 1")
    bar.note("ERP answered retry (InternalError: boom); retrying in 0.5 s")
    bar.advance()
    bar.close()
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text
    assert "ERP answered retry (InternalError: boom); retrying in 0.5 s\n" in text
    assert text.endswith("\n")


def test_on_a_terminal_the_line_is_redrawn_in_place_and_cut_to_its_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", "50")
    out, clock = Terminal(), Clock()
    bar = Progress("replay", 10, stream=out, interval_s=0.0, clock=clock)
    bar.advance(detail="x" * 200)
    bar.note("a note")
    bar.close()
    text = out.getvalue()
    draws = text.split("\r\x1b[K")[1:]
    assert draws and all(len(d.rstrip("\n").split("\n")[0]) <= 49 for d in draws), draws
    assert "a note\n" in text and text.endswith("\n")


def test_duration_and_plural() -> None:
    assert [duration(s) for s in (0, 7.4, 61, 750, 3723)] == ["0:00", "0:07", "1:01", "12:30", "1:02:03"]
    assert [plural(n, "partition") for n in (0, 1, 2)] == ["0 partitions", "1 partition", "2 partitions"]
