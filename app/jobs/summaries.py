"""A job's ``summary``: one self-contained line for people and chat bots (SPEC 2.13).

While a job runs, the line says what it is doing, with numbers ("backup of demo: dumping, 42% of
~168 MB"); it is rewritten with every progress flush. When it fails, the line names the target,
the step and the cause in words ("... stalled: no progress for 900 s at dump" when the stall
watchdog stopped it). A succeeded job's line is its command's own.
"""

from __future__ import annotations

from typing import Any

from app.steps import Step

# Phases of a byte stream: the words, and whether the total is an estimate (a database's size on
# disk against pg_dump's output) or exact (the archive's objects).
_STREAMS: dict[str, tuple[str, bool]] = {
    Step.DUMP: ("dumping", True),
    Step.DOWNLOAD: ("downloading", False),
}

# Phases that are steps in words; maintenance's phases are its tasks.
_WORDS: dict[str, str] = {
    Step.STARTING: "starting",
    Step.CONNECTING: "connecting to the database",
    Step.GLOBALS: "copying roles and tablespaces",
    Step.MANIFEST: "writing the manifest",
    Step.CREATE_DATABASE: "creating the database",
    Step.RESTORE: "restoring (pg_restore)",
    Step.POST_RESTORE: "checking the restored database (ANALYZE, views, row counts, indexes)",
    Step.TABLE_OF_CONTENTS: "checking the table of contents",
    Step.COMPARE: "comparing row counts with the manifest",
    Step.PLAN: "choosing archives to delete",
    Step.CHECK_LOCATIONS: "checking archives in every location",
    Step.REPAIR: "copying missing or damaged objects",
    "analyze": "running ANALYZE",
    "refresh_materialized_views": "refreshing materialized views",
}

MAX_LEN = 400


def size(n: float) -> str:
    """Bytes in decimal units, as people read them (3 significant digits)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            break
        n /= 1000
    if unit == "B":
        return f"{int(n)} B"
    return f"{n:.0f} {unit}" if abs(n) >= 100 else f"{n:.1f} {unit}"


def subject(kind: str, target: str, params: dict[str, Any]) -> str:
    """What the job works on: "backup of demo", "restore of demo 2026...-abc123 into x"."""
    backup_id = params.get("backup_id")
    if kind == "verify" and backup_id:
        return f"{params.get('level', 'checksum')} verification of {target} {backup_id}"
    if kind == "restore" and backup_id:
        into = params.get("database") if params.get("mode") != "in_place" else "itself"
        return f"restore of {target} {backup_id} into {into}"
    if kind == "maintenance" and params.get("task"):
        return f"maintenance ({params['task']}) of {target}"
    if kind == "retention" and params.get("dry_run"):
        return f"retention dry run of {target}"
    if kind == "reconcile" and params.get("deep"):
        return f"deep reconcile of {target}"
    return f"{kind} of {target}"


def running(kind: str, target: str, params: dict[str, Any], *, phase: str, bytes_done: int,
            bytes_total: int | None, bytes_uploaded: int) -> str:
    """The line of a running job, from its phase and progress."""
    return _clip(f"{subject(kind, target, params)}: "
                 f"{_doing(kind, phase, bytes_done, bytes_total, bytes_uploaded)}")


def _doing(kind: str, phase: str, done: int, total: int | None, uploaded: int) -> str:
    if kind == "retention" and phase == Step.DELETE:
        return f"deleting archives, {done} of {total or 0} done"
    if phase in _STREAMS:
        verb, estimate = _STREAMS[phase]
        text = verb
        if total:
            pct = min(99, int(done * 100 / total)) if done < total or estimate else 100
            text += f", {pct}% of {'~' if estimate else ''}{size(total)}"
            text += f" ({size(done)} {'read' if estimate else 'done'}"
        else:
            text += f" ({size(done)}"
        text += f", {size(uploaded)} uploaded)" if phase == "dump" else ")"
        return text
    words = _WORDS.get(phase, phase)
    if kind == "reconcile" and (done or uploaded):
        return f"{words} ({size(done)} read, {size(uploaded)} written)"
    if done:
        words += f" ({size(done)}" + (f" of {size(total)})" if total else ")")
    return words


def failed(kind: str, target: str, params: dict[str, Any], *, step: str, cause: str) -> str:
    """The line of a failed job: target, step and cause."""
    return _clip(f"{subject(kind, target, params)} failed at {step}: {cause}")


def stalled(kind: str, target: str, params: dict[str, Any], *, idle_s: float, phase: str) -> str:
    """The line of a job the stall watchdog stopped: how long nothing moved, and where."""
    return _clip(f"{subject(kind, target, params)} stalled: no progress for {idle_s:.0f} s at "
                 f"{phase}")


def cancelled(kind: str, target: str, params: dict[str, Any], *, phase: str,
              reason: str) -> str:
    return _clip(f"{subject(kind, target, params)} {reason} (during {_WORDS.get(phase, phase)})")


def _clip(text: str) -> str:
    text = " ".join(text.split())  # one line, whatever a cause held
    return text if len(text) <= MAX_LEN else text[:MAX_LEN - 1] + "…"
