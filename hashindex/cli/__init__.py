"""Layer 5: the ``hashindex`` command line, one module per command group, and the demo."""

from hashindex.cli.index_commands import build_parser, main

__all__ = ["build_parser", "main"]
