"""Wrappers around what pgvault talks to: processes, PostgreSQL tools, gpg, storage, webhooks.

The bottom layer: nothing here imports a domain package (import-linter holds that line)."""
