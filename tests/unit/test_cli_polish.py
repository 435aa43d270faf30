"""CLI polish: kubectl-like tables, an example in every `--help`, shell completion."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from controlplane.cli import completion
from controlplane.cli.main import build_parser
from controlplane.cli.output import table
from controlplane.main import _server_commands

PARSER = build_parser(_server_commands)
COMMANDS = [path for path, _ in completion.walk(PARSER)]


def test_table_columns_align_whatever_the_widths() -> None:
    out = table(["NAME", "ACTIVE", "ENDPOINTS"], [
        ["payments", "v1", "127.0.0.1:9001"],
        ["a", "very-long-version-name", "-"],
        ["inventory-service-east", "", "10.0.0.1:80,10.0.0.2:80"],
    ])
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ACTIVE", "ENDPOINTS"]
    # Each column starts at the same offset on every line, three spaces after the widest.
    active, endpoints = lines[0].index("ACTIVE"), lines[0].index("ENDPOINTS")
    assert active == len("inventory-service-east") + 3
    assert endpoints == active + len("very-long-version-name") + 3
    for line, row in zip(lines[1:], [["payments", "v1", "127.0.0.1:9001"],
                                      ["a", "very-long-version-name", "-"],
                                      ["inventory-service-east", "", "10.0.0.1:80,10.0.0.2:80"]],
                         strict=True):
        assert line[:active].rstrip() == row[0]
        assert line[active:endpoints].rstrip() == row[1]
        assert line[endpoints:] == row[2]
        assert line == line.rstrip()  # no trailing blanks


def test_a_table_without_rows_is_its_header() -> None:
    assert table(["NAME", "PHASE"], []) == "NAME   PHASE"


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "controlplane")
def test_every_command_help_shows_an_example(path: tuple[str, ...]) -> None:
    parser = dict(completion.walk(PARSER))[path]
    assert "example" in parser.format_help(), f"`controlplane {' '.join(path)} --help`"


def test_the_tree_has_the_documented_commands() -> None:
    assert {("serve",), ("apply",), ("get",), ("delete",), ("rollout", "status"),
            ("rollout", "rollback"), ("credential", "rotate"), ("cert", "rotate"), ("audit",),
            ("token", "create"), ("bootstrap",), ("completion",),
            ("endpoint", "register")} <= set(COMMANDS)


def complete(script: str, *words: str) -> list[str]:
    """What bash offers for `words` (the last one is being typed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    program = (f"{script}\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
               "_controlplane; printf '%s\\n' \"${COMPREPLY[@]}\"")
    result = subprocess.run(["bash", "--norc", "-c", program], capture_output=True,
                            text=True, timeout=30, check=True)
    return [w for w in result.stdout.splitlines() if w]


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_completion_walks_the_tree() -> None:
    script = completion.script(PARSER, "bash")
    assert complete(script, "controlplane", "ro") == ["rollout"]
    assert complete(script, "controlplane", "rollout", "") == [
        "status", "pause", "resume", "promote", "abort", "rollback"]
    assert "--watch" in complete(script, "controlplane", "rollout", "status", "--")
    assert complete(script, "controlplane", "get", "upstreams", "-o", "") == ["yaml", "json"]
    assert complete(script, "controlplane", "token", "create", "--role", "a") == ["admin"]
    assert complete(script, "controlplane", "completion", "") == ["bash", "zsh"]
    assert "--log-format" in complete(script, "controlplane", "serve", "--log")
    assert complete(script, "controlplane", "serve", "--log-format", "") == ["text", "json"]


def test_zsh_completion_reuses_the_bash_function() -> None:
    script = completion.script(PARSER, "zsh")
    assert "bashcompinit" in script and "complete -o default -F _controlplane controlplane" in (
        script)


def test_a_token_value_is_never_read_as_an_option() -> None:
    """Tokens start with "cpt_": `--token VALUE` always parses (a token_urlsafe value
    starting with "-" once made `--token -abc` an error, one time in 64)."""
    from controlplane.store.tokens import TOKEN_PREFIX

    token = TOKEN_PREFIX + "-leading-dash-inside"
    args = PARSER.parse_args(["get", "upstreams", "--token", token])
    assert args.token == token


def _examples(help_text: str) -> list[list[str]]:
    """The `controlplane ...` command lines of a help text's examples, as argv."""
    import re
    import shlex

    found = []
    for match in re.finditer(r"(?:^\s*|&&\s*|\$\()controlplane ([^|>)&\n]*)", help_text,
                             re.M):
        found.append(shlex.split(match.group(1), comments=True))
    return found


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "controlplane")
def test_every_example_in_help_parses(path: tuple[str, ...],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """An example a user copies must be accepted as written (flags after the command)."""
    parser = dict(completion.walk(PARSER))[path]
    for argv in _examples(parser.format_help()):
        try:
            build_parser(_server_commands).parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"`controlplane {' '.join(argv)}` (in `controlplane "
                        f"{' '.join(path)} --help`) does not parse: exit {exc.code}, "
                        f"{capsys.readouterr().err.strip()[-300:]}")
