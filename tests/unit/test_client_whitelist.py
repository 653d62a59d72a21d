"""Whitelist lookup against client-knife.md §A.4 and the original's whitelist_spec (§C)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from appliance.client.whitelist import Resolved, expand, resolve


@dataclass(frozen=True)
class Entry:
    key: str | re.Pattern[str]
    command_line: str
    lock: bool | str | None = None


DELIVERANCE = Entry(re.compile(r"^deliverance (.+)$"), r"deliverance eats at \1")
CHICKEN = Entry(re.compile(r"^(.+) chicken$"), "tastes like chicken", lock=True)
ENTRIES = [
    Entry("chef-client", "chef-client"),
    Entry("ruby", "ruby -e 'puts 1'"),
    DELIVERANCE,
    CHICKEN,
]


def test_exact_match():
    assert resolve(ENTRIES, "ruby") == Resolved("ruby -e 'puts 1'", None)
    assert resolve(ENTRIES, "chef-client") == Resolved("chef-client", None)


def test_regex_key_with_backreference():
    assert resolve(ENTRIES, "deliverance lunchtime") == Resolved(
        "deliverance eats at lunchtime", None
    )


def test_regex_key_with_hash_value_keeps_the_lock():
    assert resolve(ENTRIES, "hard chicken") == Resolved("tastes like chicken", True)


def test_no_match_is_none():
    assert resolve(ENTRIES, "rm -rf /") is None
    assert resolve(ENTRIES, "") is None
    assert resolve([], "chef-client") is None


def test_exact_match_beats_an_earlier_regex():
    entries = [Entry(re.compile(r".*"), "anything"), Entry("chef-client", "exact")]
    assert resolve(entries, "chef-client") == Resolved("exact", None)
    assert resolve(entries, "other") == Resolved("anything", None)


def test_first_regex_in_insertion_order_wins():
    first, second = Entry(re.compile(r"go (\w+)"), r"first \1"), Entry(re.compile(r"go .*"), "2")
    assert resolve([first, second], "go home").command_line == "first home"
    assert resolve([second, first], "go home").command_line == "2"


def test_regex_must_match_the_whole_command():
    # Ruby's gsub matched anywhere and kept the rest: "chef-client; rm -rf /" would pass through.
    entries = [Entry(re.compile(r"chef-client"), "chef-client")]
    assert resolve(entries, "chef-client; rm -rf /") is None
    assert resolve(entries, "x chef-client") is None
    assert resolve(entries, "chef-client") == Resolved("chef-client", None)


@pytest.mark.parametrize("flags", [0, re.MULTILINE])
def test_newline_injection_is_refused(flags):
    entries = [Entry(re.compile(r"^deliverance (.+)$", flags), r"deliverance eats at \1")]
    assert resolve(entries, "deliverance lunchtime\nrm -rf /") is None
    assert resolve(entries, "rm -rf /\ndeliverance lunchtime") is None
    assert resolve(entries, "deliverance lunchtime\n") is None


def test_falsy_lock_is_none_and_string_lock_is_kept():
    entries = [Entry("a", "a", lock=False), Entry("b", "b", lock="/var/run/b.lock")]
    assert resolve(entries, "a").lock is None
    assert resolve(entries, "b").lock == "/var/run/b.lock"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (r"\0", "hard chicken"),
        (r"\&", "hard chicken"),
        (r"\1-\2", "hard-chicken"),
        (r"\k<how>/\k<what>", "hard/chicken"),
        (r"\k<1>", "hard"),
        (r"[\3]", "[]"),  # a group that did not take part
        (r"[\9]", "[]"),  # no such group
        (r"[\k<nope>]", "[]"),
        (r"a\\1", "a\\1"),  # escaped backslash, then a literal 1
        (r"\`\'", ""),  # pre/post match are empty under full matching
        (r"\q\k", "\\q\\k"),  # unknown sequences are kept
        ("end\\", "end\\"),  # a trailing lone backslash is kept
        ("no refs", "no refs"),
    ],
)
def test_expand_ruby_replacement_syntax(template, expected):
    match = re.fullmatch(r"(?P<how>\w+) (?P<what>\w+)( extra)?", "hard chicken")
    assert expand(template, match) == expected
