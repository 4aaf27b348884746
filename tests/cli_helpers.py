"""Shared by the command-line tests: run one command that must fail as a user error."""

from __future__ import annotations

from hashindex.cli import main


def run(capsys, argv: list[str]) -> str:
    """Run ``hashindex argv``; assert it exits 2 with one stderr line, no traceback, and return it."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("hashindex")
    return lines[0]
