"""The ``pgvault`` command-line client: a client of the HTTP API, nothing from the server."""

from app.cli.commands import main

__all__ = ["main"]
