"""The log line formats (appliance.logformat): json fields, exceptions, extras, and the
journald rule (only the very stream JOURNAL_STREAM names loses its timestamp)."""

from __future__ import annotations

import json
import logging
import os
import re
import sys

from appliance import logformat


def _record(
    msg: str = "node %s is %s", args: tuple = ("acme/n1", "online"), **kw
) -> logging.LogRecord:
    return logging.LogRecord("pushy.dispatch", logging.INFO, __file__, 1, msg, args, None, **kw)


def test_a_json_line_holds_time_level_logger_and_the_message():
    record = _record()
    record.created = 1_800_000_000.25
    line = json.loads(logformat.JsonFormatter().format(record))
    assert line == {
        "time": "2027-01-15T08:00:00.250Z",
        "level": "INFO",
        "logger": "pushy.dispatch",
        "message": "node acme/n1 is online",
    }


def test_a_json_line_holds_the_exception_and_the_fields_passed_in_extra():
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = _record()
        record.exc_info = sys.exc_info()
    record.__dict__.update({"job_id": "abc", "nodes": 3})
    line = json.loads(logformat.JsonFormatter().format(record))
    assert (
        line["exception"].startswith("Traceback") and "ValueError: bad\nthing" in line["exception"]
    )
    assert (line["job_id"], line["nodes"]) == ("abc", 3)
    assert "\n" not in logformat.JsonFormatter().format(record)  # one line, whatever the text


def test_text_loses_its_timestamp_only_on_the_journal_s_own_stream(tmp_path, monkeypatch):
    journal, redirected = tmp_path / "journal", tmp_path / "file"
    with open(journal, "w") as j, open(redirected, "w") as r:
        st = os.fstat(j.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        record = _record()
        plain = logformat.formatter("text", j).format(record)
        stamped = logformat.formatter("text", r).format(record)  # output moved elsewhere
    assert plain == "INFO pushy.dispatch: node acme/n1 is online"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} " + re.escape(plain), stamped)
    monkeypatch.delenv("JOURNAL_STREAM")
    with open(journal) as j:
        assert logformat.formatter("text", j).format(record) != plain
