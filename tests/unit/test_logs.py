"""The librdkafka log filter: one line per kind of message per window, whatever librdkafka's version."""

from __future__ import annotations

import logging

from consumer.logs import ThrottleFilter


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("librdkafka.producer", logging.ERROR, __file__, 1, message, None, None)


def test_librdkafka_repeat_counts_and_digits_do_not_make_a_new_kind_of_line() -> None:
    throttle = ThrottleFilter(every_s=30.0)
    first = ("FAIL [p#producer-1] [thrd:127.0.0.1:49149/bootstrap]: 127.0.0.1:49149/bootstrap: Connect to "
             "ipv4#127.0.0.1:49149 failed: Connection refused (after 0ms in state CONNECT)")
    # librdkafka 2.6 appends its own count of repeats; later versions do not
    repeat = first.replace("CONNECT)", "CONNECT, 1 identical error(s) suppressed)").replace("0ms", "12ms")
    other = "FAIL [p#producer-1] [thrd:127.0.0.1:49149/bootstrap]: 127.0.0.1:49149/bootstrap: Disconnected"
    assert [throttle.filter(_record(m)) for m in (first, repeat, repeat, other, first)] == [
        True, False, False, True, False]
