"""``--wait``: follow a job's events with a live progress bar, and return the finished job.

On a terminal the bar is rich's (phase, bytes, rate, time left); elsewhere (CI logs, pipes) one
plain line per phase and at most one per ``PLAIN_EVERY_S`` seconds, on stderr, so stdout keeps
only the result. A broken stream is reopened: the service replays the job's current state.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import httpx
from humanize import naturalsize
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from app.cli.client import Client, CliError

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
PLAIN_EVERY_S = 2.0
RECONNECTS = 5


def follow(client: Client, job: dict[str, Any], console: Console) -> dict[str, Any]:
    """Show the job's progress until it ends; the finished job."""
    view: _View = _Bar(console) if console.is_terminal else _Lines(console)
    failures = 0
    try:
        while job["status"] not in TERMINAL:
            try:
                for event in client.events(job["id"]):
                    job = event
                    failures = 0
                    view.show(job)
            except CliError:
                raise
            except httpx.TransportError:
                failures += 1
                if failures > RECONNECTS:
                    raise CliError(f"lost the event stream of job {job['id']}; follow it with "
                                   f"'pgvault job {job['id']} --wait'") from None
                time.sleep(min(2.0 * failures, 10.0))
            if job["status"] not in TERMINAL:  # the stream ended early: look once more
                job = client.get(f"/v1/jobs/{job['id']}")
    finally:
        view.close(job)
    return job


class _View:
    def show(self, job: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self, job: dict[str, Any]) -> None:
        pass


class _Bar(_View):
    def __init__(self, console: Console) -> None:
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                                 console=console, transient=False)
        self.progress.start()
        self.task: TaskID | None = None
        self.phase: str | None = None

    def show(self, job: dict[str, Any]) -> None:
        done, total = _bytes(job)
        if job["status"] in TERMINAL:
            # The end: fill the last bar when it succeeded; no new bar for the final record.
            if job["status"] == "succeeded" and self.task is not None:
                task = self.progress.tasks[-1]
                end = task.total if task.total else max(task.completed, 1)
                self.progress.update(self.task, total=end, completed=end)
            return
        if job["phase"] != self.phase or self.task is None:
            if self.task is not None:
                self.progress.stop_task(self.task)
            self.phase = job["phase"]
            self.task = self.progress.add_task(job["phase"], total=total, completed=done)
        else:
            self.progress.update(self.task, completed=done, total=total)

    def close(self, job: dict[str, Any]) -> None:
        self.progress.stop()


class _Lines(_View):
    """Plain lines: phase, bytes, rate and time left, as a log keeps them."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.phase: str | None = None
        self.phase_start = (0.0, 0)
        self.last = 0.0

    def show(self, job: dict[str, Any]) -> None:
        now = time.monotonic()
        done, _ = _bytes(job)
        new_phase = job["phase"] != self.phase
        if new_phase:
            self.phase = job["phase"]
            self.phase_start = (now, done)
        elif now - self.last < PLAIN_EVERY_S and job["status"] not in TERMINAL:
            return
        self.last = now
        self.console.print(_line(job, now, self.phase_start), highlight=False, markup=False,
                           soft_wrap=True)


def _bytes(job: dict[str, Any]) -> tuple[int, int | None]:
    progress = job.get("progress") or {}
    return int(progress.get("bytes_done") or 0), progress.get("bytes_total")


def _line(job: dict[str, Any], now: float, start: tuple[float, int]) -> str:
    done, total = _bytes(job)
    parts = [f"[{job['status']}] {job['phase']}"]
    if done or total:
        parts.append(f"{naturalsize(done)}" + (f" of ~{naturalsize(total)}" if total else ""))
        elapsed = now - start[0]
        rate = (done - start[1]) / elapsed if elapsed > 0.5 else 0.0
        if job["status"] in TERMINAL and (took := _took(job)):
            rate = done / took  # the last line: the whole job's rate, however short its phases
        if rate > 0:
            parts.append(f"{naturalsize(rate)}/s")
            if total and total > done and job["status"] == "running":
                parts.append(f"ETA {_duration((total - done) / rate)}")
    return "  ".join(parts)


def _took(job: dict[str, Any]) -> float:
    """Seconds from the job's start to its end (0 when either is unknown)."""
    try:
        started = datetime.fromisoformat(job["started_at"])
        finished = datetime.fromisoformat(job["finished_at"])
    except (KeyError, TypeError, ValueError):
        return 0.0
    return max((finished - started).total_seconds(), 0.0)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
