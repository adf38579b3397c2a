"""Every `edge-runtime ...` line in the README parses with the real CLI (and passes the command's own argument
checks where it has them), so the README cannot teach a flag or value the program refuses."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from edge_runtime.cli import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[tuple[int, list[str]]]:
    """(line number, argv) for each `edge-runtime` command in the README's bash blocks, continuations joined."""
    commands: list[tuple[int, list[str]]] = []
    in_bash, pending, start = False, "", 0
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if line.startswith("```"):
            in_bash = line.strip() in ("```bash", "```sh") and not in_bash
            continue
        if not in_bash:
            continue
        text = line.split(" #", 1)[0].rstrip() if not pending else line.rstrip()
        if not pending:
            if not text.startswith("edge-runtime "):
                continue
            start = number
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        full = (pending + text).split(" #", 1)[0]
        pending = ""
        commands.append((start, shlex.split(full)[1:]))
    return commands


COMMANDS = readme_commands()


def test_the_readme_has_commands_to_check() -> None:
    assert len(COMMANDS) >= 15, COMMANDS
    assert {argv[0] for _, argv in COMMANDS} >= {"run", "serve", "convert", "agent", "fleet", "keygen", "verify"}


@pytest.mark.parametrize(("line", "argv"), COMMANDS, ids=[f"README:{n}" for n, _ in COMMANDS])
def test_a_readme_command_parses_with_the_real_cli(line: int, argv: list[str]) -> None:
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"README line {line}: `edge-runtime {shlex.join(argv)}` is refused by the CLI (exit {exc.code})")
    check = getattr(getattr(args, "_module", None), "check_arguments", None)
    if check is not None:
        check(args)  # raises the command's own one-line ConfigError for a refused value
