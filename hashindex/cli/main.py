"""The ``hashindex`` command: build / search / info / demo (serving), train / eval / export (training).

Serving subcommands never import torch; training ones import it when they run. A user error
(bad argument, unreadable or malformed file, input the library rejects) exits with status 2
and one line on stderr naming the problem, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from hashindex.cli.demo import add_parsers as add_demo
from hashindex.cli.export_commands import add_parsers as add_export
from hashindex.cli.identity_commands import add_parsers as add_identity
from hashindex.cli.index_commands import add_parsers as add_index
from hashindex.cli.train_commands import add_parsers as add_train
from hashindex.core.errors import HashIndexError

USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``hashindex search: error: ...``), not the usage text."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hashindex", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_index, add_identity, add_demo, add_train, add_export):  # the order of --help
        add(sub)
    return parser


def _one_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.filename and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, already printed)
        return e.code if isinstance(e.code, int) else USAGE_ERROR
    try:
        return args.func(args)
    except (HashIndexError, OSError) as e:
        print(f"hashindex {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
