"""The shared Ruby lexer (core/rubylex.py): one token of each kind, problems with their lines,
and the line joining that each reader configures."""

from __future__ import annotations

import pytest

from appliance.core.rubylex import Lexer, Token, join_lines


def toks(text: str, **kw: bool) -> list[Token]:
    return list(Lexer(text, **kw).tokens())


def kinds(text: str, **kw: bool) -> list[tuple[str, str]]:
    return [(t.kind, t.text) for t in toks(text, **kw) if t.kind not in ("nl", "eof")]


def test_every_kind_of_token():
    text = (
        "name Const @iv $gv k: 'sq' \"dq\" `cmd` %w(a b) %q(x) <<~EOS , /re/i, ?c 12 1.5 :sym "
        "=> :: .. ;\nbody\nEOS\n__END__\n"
    )
    assert kinds(text) == [
        ("name", "name"),
        ("const", "Const"),
        ("var", "@iv"),
        ("var", "$gv"),
        ("label", "k"),
        ("str", "'"),
        ("str", '"'),
        ("xstr", "`"),
        ("percent", "%w"),
        ("str", "%"),
        ("heredoc", "<<heredoc"),
        ("op", ","),
        ("regex", "/regex/"),
        ("op", ","),
        ("str", "?"),
        ("int", "12"),
        ("float", "1.5"),
        ("sym", "sym"),
        ("op", "=>"),
        ("op", "::"),
        ("op", ".."),
        ("data", "__END__"),
    ]
    values = {t.text: t.value for t in toks(text) if t.value is not None}
    assert values["/regex/"] == ("re", "i")
    assert values["12"] == 12 and values["1.5"] == 1.5 and values["sym"] == "sym"


def test_values_and_escapes():
    (tok,) = [t for t in toks(r'"a\tb\x41\u{42 43}\101\s"') if t.kind == "str"]
    assert tok.value == "a\tbABCA " and not tok.problems
    (tok,) = [t for t in toks(r"'it\'s \n'") if t.kind == "str"]
    assert tok.value == "it's \\n"
    assert [t.value for t in toks("0x1f 0b11 017 0o17 1_000 1e3") if t.kind != "eof"] == [
        31,
        3,
        15,
        15,
        1000,
        1000.0,
    ]


def test_interpolation_is_a_nested_token_list_and_a_problem():
    (tok,) = [t for t in toks("x \"a#{ENV['H']}b\"") if t.kind == "str"]
    assert tok.parts[0] == "a" and tok.parts[2] == "b"
    assert [t.text for t in tok.parts[1]] == ["ENV", "[", "'", "]"]
    assert tok.problem is not None and not tok.problem.fatal
    assert "interpolation" in tok.problem.message


@pytest.mark.parametrize(
    ("text", "line", "message", "fatal"),
    [
        ("x = 1\n'open\nmore", 2, "unterminated string", True),
        ("x\n/open", 2, "unterminated string", True),
        ("a\n=begin\nno end", 2, "=begin without =end", True),
        ('"\\xZZ"', 1, "invalid \\x escape", False),
        ('"\n\\u12"', 2, "invalid \\u escape", False),
        ("a(\n]", 2, "']' does not match '(' opened on line 1", False),
        ("\n\n)", 3, "unmatched ')'", False),
        ("a(\n\n", 1, "'(' is never closed", False),
        ("x 12abc", 1, "malformed number", False),
        ("x " + "9" * 65, 1, "number too long", False),
    ],
)
def test_problems_name_their_line(text, line, message, fatal):
    problem = next(t.problem for t in toks(text) if t.problem is not None)
    assert (problem.line, problem.message, problem.fatal) == (line, message, fatal)


def test_fatal_problems_end_the_stream_and_report_where_the_lexer_stopped():
    stream = toks("a\nx = <<EOS\nbody\n")
    assert stream[-1].kind != "eof"
    fatal = stream[-1].fatal
    assert fatal is not None and fatal.message == "heredoc EOS is not terminated"
    unterminated = toks("'a\nb\nc")[-1].fatal
    assert unterminated is not None and (unterminated.line, unterminated.end_line) == (1, 3)
    nested = toks('x "#{a')[-1].fatal
    assert nested is not None and "#{" in nested.message


def test_slash_divides_after_a_value_unless_told_otherwise():
    assert ("op", "/") in kinds("a = b / c")
    assert ("regex", "/regex/") in kinds("a = b / c/", division=False)
    assert ("regex", "/regex/") in kinds("x /re/")


def test_heredoc_bodies_and_end_data_are_skipped_lazily():
    stream = toks("a <<~EOS\n  node_name 'x'\nEOS\nb\n")
    assert [t.text for t in stream if t.kind == "name"] == ["a", "b"]
    assert next(t.line for t in stream if t.text == "b") == 4
    lexer = Lexer("__END__\n'unterminated")
    first = next(lexer.tokens())
    assert first.kind == "data"


def test_newlines_inside_brackets_vanish_and_semicolons_end_statements():
    assert [t.kind for t in toks("a(1,\n2)\nb; c")] == [
        "name", "op", "int", "op", "int", "op", "nl", "name", "nl", "name", "eof",
    ]  # fmt: skip
    assert ("op", ";") in kinds("a(1; 2)")


def test_join_lines_drops_what_each_reader_continues():
    stream = toks("\n\na =\n 1\n\nb ,\n2\n")

    def continues(tok: Token) -> bool:
        return tok.kind == "op" and tok.text == "="

    joined = [(t.kind, t.text) for t in join_lines(stream, continues)]
    assert joined == [
        ("name", "a"), ("op", "="), ("int", "1"), ("nl", "\n"), ("name", "b"), ("op", ","),
        ("nl", "\n"), ("int", "2"), ("nl", "\n"), ("eof", ""),
    ]  # fmt: skip


def test_spaced_and_start():
    a, bracket, *_ = toks("a[1] a [1]")
    assert (a.start, bracket.start, bracket.spaced) == (0, 1, False)
    assert [t.spaced for t in toks("a [1]") if t.text == "["] == [True]
