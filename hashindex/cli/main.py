"""The ``hashindex`` command: build / search / info / demo (serving), train / eval / export (training).

Serving subcommands never import torch; training ones import it when they run. A user error
(bad argument, unreadable or malformed file, input the library rejects) exits with status 2
and one line on stderr naming the problem, never a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys

from hashindex.cli.demo import add_parsers as add_demo
from hashindex.cli.export_commands import add_parsers as add_export
from hashindex.cli.identity_commands import add_parsers as add_identity
from hashindex.cli.index_commands import add_parsers as add_index
from hashindex.cli.train_commands import add_parsers as add_train
from hashindex import __version__
from hashindex.core.errors import HashIndexError

USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``hashindex search: error: ...``), not the usage text."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hashindex", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"hashindex {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_index, add_identity, add_demo, add_train, add_export):  # the order of --help
        add(sub)
    return parser


def _one_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.filename and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    return " ".join(text.split())


_API_WORD = re.compile(r"(?<![\w/\\.-])([a-z]+(?:_[a-z]+)*)=(?:'([^']*)'|\"([^\"]*)\"|(-?[\w.]+))?")
_API_NAME = re.compile(r"(?<![\w/\\.-])([a-z]+(?:_[a-z]+)+)(?![\w/\\-]|\.\w)")  # not inside a path
_TOO_FEW = re.compile(r"needs at least (--[a-z][a-z-]*) (\d+)\b.*\bfound (\d+)\b")


def user_words(text: str, flags: set[str]) -> str:
    """A library message in the words of the command line: an API argument that is also one of
    this command's ``flags`` becomes the flag (``group_by="label"`` -> ``--group-by label``,
    ``min_score`` -> ``--min-score``, ``nprobe=`` -> ``--nprobe``); other words stay as they are."""

    def keyword(m: re.Match) -> str:
        flag = "--" + m.group(1).replace("_", "-")
        if flag not in flags:
            return m.group(0)
        value = next((v for v in m.groups()[1:] if v is not None), "")
        return f"{flag} {value}" if value else flag

    def name(m: re.Match) -> str:
        flag = "--" + m.group(1).replace("_", "-")
        return flag if flag in flags else m.group(0)

    text = text.replace("(add items with labels=...)", "(build it with --labels-key)")
    text = _API_NAME.sub(name, _API_WORD.sub(keyword, text))
    short = _TOO_FEW.search(text)  # e.g. P x K sampling: "needs at least --p 32 identities ..., found 18"
    if short and int(short.group(3)) < int(short.group(2)):
        text += f": lower {short.group(1)} (at most {short.group(3)} here)"
    return text


def _flags_of(parser: argparse.ArgumentParser, command: str) -> set[str]:
    for action in parser._subparsers._group_actions:  # the subcommand's own options
        if command in getattr(action, "choices", {}):
            return {s for a in action.choices[command]._actions for s in a.option_strings}
    return set()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help / --version (0) or a usage error (2, already printed)
        return e.code if isinstance(e.code, int) else USAGE_ERROR
    try:
        return args.func(args)
    except (HashIndexError, OSError) as e:
        line = user_words(_one_line(e), _flags_of(parser, args.command))
        print(f"hashindex {args.command}: error: {line}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
