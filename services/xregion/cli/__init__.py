"""The `xregion` command line: `main` parses, dispatches to one subcommand module, and maps
errors to exit codes (`services/xregion/cli/main.py`)."""

from services.xregion.cli.main import main

__all__ = ["main"]
