"""`runwire runs ...`, `runwire query`, `runwire report` subcommands (registered by runwire.cli;
imports stay lazy)."""

from __future__ import annotations


def register(subparsers) -> None:
    """Add this group's subcommands to the `runwire` parser."""
