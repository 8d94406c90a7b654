"""One log record is one line of JSON, whatever its message quotes."""

from __future__ import annotations

import json
import logging

import pytest

from shared.logs import JsonFormatter


@pytest.mark.parametrize("quoted", ["\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"])
def test_a_message_quoting_a_line_break_stays_on_one_line(quoted: str) -> None:
    message = f"agency ag-001 has no service 'a{quoted}b'"
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, message, None, None)
    line = JsonFormatter("test").format(record)
    assert line.splitlines() == [line]
    assert json.loads(line)["message"] == message
