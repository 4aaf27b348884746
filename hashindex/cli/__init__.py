"""Layer 5: the ``hashindex`` command line, one module per command group, and the demo.

:mod:`.main` (parser and dispatch), :mod:`.index_commands` (build / search / info),
:mod:`.train_commands` (train / eval), :mod:`.export_commands` (export), :mod:`.demo`.
"""

from hashindex.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
