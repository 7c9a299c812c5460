"""The ``pgvault`` commands (SPEC 2.13): a client of the HTTP API, reading ``PGVAULT_URL`` and
``PGVAULT_TOKEN``.

Exit codes: 0 done (a waited-for job succeeded); 1 a waited-for job failed or was cancelled (its
cause printed in words); 2 usage, connection or API errors, one readable line on stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import click
from humanize import naturalsize
from rich.console import Console
from rich.table import Column, Table

from app.cli.client import DEFAULT_URL, Client, CliError
from app.cli.follow import TERMINAL, follow

F = TypeVar("F", bound=Callable[..., Any])

# Piped output is read by people in logs and by grep: wide enough that no id is cut short.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 240)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True,
                        help="print the API's JSON answer (for scripts)")(fn)


def _wait_option(fn: F) -> F:
    return click.option("--wait", is_flag=True,
                        help="follow the job with a progress bar until it ends; exit 0 when it "
                             "succeeded, 1 when it failed or was cancelled")(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="PGVAULT_URL", default=DEFAULT_URL, show_default=True,
              help="the pgvault service (or PGVAULT_URL); the token is read from PGVAULT_TOKEN")
@click.pass_context
def cli(ctx: click.Context, url: str) -> None:
    """pgvault: back up, verify and restore PostgreSQL databases through a pgvault service."""
    ctx.obj = ctx.with_resource(_closing(Client(url)))


class _closing:
    def __init__(self, client: Client) -> None:
        self.client = client

    def __enter__(self) -> Client:
        return self.client

    def __exit__(self, *_: object) -> None:
        self.client.close()


pass_client = click.make_pass_decorator(Client)


@cli.command()
@_json_option
@pass_client
def status(client: Client, as_json: bool) -> None:
    """Each target: last good backup, its age and size, and whether the RPO holds."""
    body = client.get("/v1/targets")
    if as_json:
        _print_json(body)
        return
    table = _table("TARGET", "LAST BACKUP", "AGE", "SIZE", "RPO")
    for t in body["items"]:
        last = t.get("last_backup")
        table.add_row(t["name"], last["backup_id"] if last else "none",
                      _age(last["age_s"]) if last else "-",
                      naturalsize(last["size_bytes"]) if last else "-",
                      "ok" if t["rpo_ok"] else f"BREACHED ({t['rpo_hours']:g} h)")
    out.print(table)


@cli.command()
@click.argument("target")
@click.option("--label", help="free text shown in the archive listing")
@_wait_option
@_json_option
@pass_client
def backup(client: Client, target: str, label: str | None, wait: bool, as_json: bool) -> None:
    """Start a backup of TARGET."""
    job = client.post(f"/v1/targets/{_segment(target)}/backups",
                      {"label": label} if label else None)
    _job_outcome(client, job, wait, as_json)


@cli.command()
@click.argument("target")
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@_json_option
@pass_client
def archives(client: Client, target: str, limit: int, as_json: bool) -> None:
    """TARGET's archives, newest first."""
    items: list[dict[str, Any]] = []
    cursor = None
    while len(items) < limit:
        page = client.get(f"/v1/targets/{_segment(target)}/archives", cursor=cursor,
                          limit=min(200, limit - len(items)))
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    if as_json:
        _print_json({"items": items, "next_cursor": cursor})
        return
    table = _table("BACKUP ID", "CREATED", "SIZE", "COMPLETE", "VERIFIED", "LABEL")
    for a in items:
        check = a.get("verification")
        verified = "-" if not check else (
            f"{check['level']} {'passed' if check['status'] == 'succeeded' else 'FAILED'}")
        table.add_row(a["backup_id"], _time(a["created_at"]), naturalsize(a["size_bytes"]),
                      "yes" if a["complete"] else "NO", verified, a.get("label") or "")
    out.print(table)


@cli.command()
@click.argument("target")
@click.argument("backup_id")
@click.option("--level", type=click.Choice(["checksum", "restore"]), default="checksum",
              show_default=True, help="checksum: hashes, decryption, table of contents; "
                                      "restore: also restore into a scratch database and compare")
@_wait_option
@_json_option
@pass_client
def verify(client: Client, target: str, backup_id: str, level: str, wait: bool,
           as_json: bool) -> None:
    """Verify archive BACKUP_ID of TARGET."""
    job = client.post(f"/v1/targets/{_segment(target)}/archives/{_segment(backup_id)}/verify",
                      {"level": level})
    _job_outcome(client, job, wait, as_json)


@cli.command()
@click.argument("target")
@click.argument("backup_id")
@click.option("--database", required=True,
              help="the new database to restore into (the target's own is never touched)")
@click.option("--include-globals", is_flag=True, help="restore roles first (existing skipped)")
@click.option("--jobs", type=click.IntRange(1, 16), default=2, show_default=True,
              help="parallel pg_restore jobs")
@click.option("--severity", type=click.Choice(["1", "2", "3"]), default="2", show_default=True,
              help="incident severity, for the RTO check")
@_wait_option
@_json_option
@pass_client
def restore(client: Client, target: str, backup_id: str, database: str, include_globals: bool,
            jobs: int, severity: str, wait: bool, as_json: bool) -> None:
    """Restore archive BACKUP_ID of TARGET into a new database."""
    job = client.post(f"/v1/targets/{_segment(target)}/restores", {
        "backup_id": backup_id, "mode": "new_database", "database": database,
        "include_globals": include_globals, "jobs": jobs, "severity": int(severity)})
    _job_outcome(client, job, wait, as_json)


@cli.command()
@click.argument("target")
@click.option("--deep", is_flag=True, help="also read every object back and check its SHA-256 "
                                           "(by default: sizes, from listings)")
@_wait_option
@_json_option
@pass_client
def reconcile(client: Client, target: str, deep: bool, wait: bool, as_json: bool) -> None:
    """Check TARGET's archives in every storage location; copy what is missing or damaged."""
    job = client.post(f"/v1/targets/{_segment(target)}/reconcile", {"deep": deep})
    _job_outcome(client, job, wait, as_json)


@cli.command()
@click.option("--target")
@click.option("--kind", type=click.Choice(["backup", "restore", "verify", "retention",
                                           "maintenance", "reconcile"]))
@click.option("--status", type=click.Choice(sorted(TERMINAL | {"queued", "running"})))
@click.option("--limit", type=click.IntRange(1, 200), default=20, show_default=True)
@_json_option
@pass_client
def jobs(client: Client, target: str | None, kind: str | None, status: str | None, limit: int,
         as_json: bool) -> None:
    """Recent jobs, newest first."""
    body = client.get("/v1/jobs", target=target, kind=kind, status=status, limit=limit)
    if as_json:
        _print_json(body)
        return
    table = _table("JOB", "KIND", "TARGET", "STATUS", "CREATED", "SUMMARY")
    for j in body["items"]:
        table.add_row(j["id"], j["kind"], j["target"], j["status"], _time(j["created_at"]),
                      j["summary"])
    out.print(table)


@cli.command()
@click.argument("job_id")
@_wait_option
@_json_option
@pass_client
def job(client: Client, job_id: str, wait: bool, as_json: bool) -> None:
    """One job; with --wait, follow it until it ends."""
    _job_outcome(client, client.get(f"/v1/jobs/{_segment(job_id)}"), wait, as_json,
                 started=False)


def _job_outcome(client: Client, job: dict[str, Any], wait: bool, as_json: bool,
                 started: bool = True) -> None:
    if wait and job["status"] not in TERMINAL:
        if started:
            err.print(f"job {job['id']}: {job['summary']}")
        try:
            job = follow(client, job, err)
        except KeyboardInterrupt:
            err.print(f"stopped following job {job['id']}; it goes on in the service")
            raise SystemExit(130) from None
    if as_json:
        _print_json(job)
    else:
        out.print(job["summary"] if wait or not started else
                  f"job {job['id']} {job['status']}: {job['summary']}")
        if job["status"] in ("failed", "cancelled") and job.get("error"):
            err.print(f"{job['error']['title']}: {job['error']['detail']}")
    if wait and job["status"] in ("failed", "cancelled"):
        raise SystemExit(1)


def _segment(value: str) -> str:
    """A path segment as given, so a stray '/' or '..' cannot reach another endpoint."""
    return quote(value, safe="")


def _table(*headers: str) -> Table:
    """Every column but the last keeps its values whole (ids, names); the last one wraps."""
    columns = [Column(h, no_wrap=True) for h in headers[:-1]] + [Column(headers[-1])]
    return Table(*columns, box=None)


def _time(iso: str) -> str:
    return iso[:19].replace("T", " ")


def _print_json(body: Any) -> None:
    sys.stdout.write(json.dumps(body, indent=2) + "\n")


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def main() -> None:
    try:
        cli.main(prog_name="pgvault")
    except CliError as exc:
        err.print(f"pgvault: {exc}", markup=False)
        raise SystemExit(2) from None


