"""The ``ser`` command line: the parser and its command modules (``main``, ``grid``, ``deploy``)."""

from ser_plugins.cli.commands import main

__all__ = ["main"]
