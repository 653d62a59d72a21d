"""``pushy COMMAND …`` builds only COMMAND's parser (its start-up imports only its stack):
the parser it builds must be the one the full command tree holds, for every command."""

from __future__ import annotations

import argparse
import subprocess
import sys

from appliance.cli import _GROUPS, _parser
from appliance.completion import command_tree


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    return command_tree(parser)[""][0]


def test_the_groups_name_every_command_exactly_once():
    named = [name for names, _ in _GROUPS for name in names]
    assert sorted(named) == sorted(_commands(_parser())) and len(set(named)) == len(named)


def test_one_commands_parser_is_that_command_in_the_full_tree():
    full = command_tree(_parser())
    for command in _commands(_parser()):
        alone = command_tree(_parser(command))
        assert command in _commands(_parser(command))
        if command != "completion":  # which prints the whole tree: it builds all of it
            assert len(_commands(_parser(command))) <= 2  # edge and edge-key come together
        mine = {path: entry for path, entry in full.items() if path.split(" ")[0] == command}
        assert {p: e for p, e in alone.items() if p.split(" ")[0] == command} == mine, command
        for path in mine:  # the same help text, the exit table included
            words = path.split(" ")
            assert _help(_parser(command), words) == _help(_parser(), words), path


def _help(parser: argparse.ArgumentParser, words: list[str]) -> str:
    node = parser
    for word in words:
        action = next(a for a in node._actions if isinstance(a, argparse._SubParsersAction))
        node = action.choices[word]
    return node.format_help()


def test_a_job_command_does_not_import_the_bench_demo_client_or_server():
    probe = (
        "import sys\n"
        "from appliance.cli import _parser\n"
        "_parser('job').parse_args(['job', 'list'])\n"
        "heavy = ('appliance.bench', 'appliance.demo', 'appliance.client.cli',"
        " 'appliance.server', 'appliance.edge', 'appliance.knife.watch', 'appliance.knife.admin')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
