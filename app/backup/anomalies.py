"""The anomaly guard (SPEC 2.14): is a new archive suspect?

A backup that "worked" can still be useless: the application truncated a table the night
before, a migration dropped one, the backup role lost its grants on a schema. Each new archive's
facts are compared, before its manifest is written, with those of the target's previous good
archives (:func:`previous_good`: up to :data:`BASELINE` complete archives, not damaged, not
suspect unless an operator cleared them), by the median of each figure:

- ``size_drop``: the dump (the database object as stored, compressed and encrypted; globals and
  properties are small and steady, so they are left out) is smaller than
  ``100 - size_drop_pct`` percent of the median dump;
- ``rows_drop``: a table whose median is at least ``min_rows`` rows lost at least
  ``rows_drop_pct`` percent of them (only when both sides counted rows);
- ``table_missing``: a table of the newest previous good archive is gone (unless its schema is
  now excluded from backups on purpose).

:func:`judge` is the pure comparison; :func:`check` runs it for a backup job and never fails the
backup: previous manifests that cannot be read, a storage outage or a slow listing are logged and
the comparison skipped (the archive is then not suspect: the guard is a warning, not a gate).
"""

from __future__ import annotations

import asyncio
import re
import statistics
from typing import Any

from app.archives.service import catalogue, is_good, load_manifest
from app.backup import manifest as mf
from app.config_models import AnomalyConfig
from app.errors import PgVaultError
from app.resources import Resources

BASELINE = 5  # previous good archives compared with
CHECK_TIMEOUT_S = 60.0  # reading the catalogue (at most half stall_timeout_s); then skipped


def _dump_size(doc: mf.Manifest) -> int | None:
    for obj in doc.objects:
        if obj.kind == "database" or obj.key == mf.DATABASE_OBJECT:
            return obj.size_bytes
    return None


def _median(values: list[int]) -> int | None:
    return round(statistics.median(values)) if values else None


_PLAIN = re.compile(r"[a-z_][a-z0-9_$]*")


def _key(table: mf.TableRows) -> tuple[str, str]:
    """A table is its (schema, name) pair: joined, schema "a.b" with table "c" and schema "a"
    with table "b.c" would be one."""
    return table.schema_, table.name


def _name(key: tuple[str, str]) -> str:
    """``schema.name`` for people, each part double-quoted unless plain (as SQL writes it), so
    two tables never read the same."""
    return ".".join(p if _PLAIN.fullmatch(p) else '"' + p.replace('"', '""') + '"' for p in key)


def judge(current: mf.Manifest, previous: list[mf.Manifest],
          config: AnomalyConfig) -> list[mf.Anomaly]:
    """The anomalies of ``current`` against ``previous`` (newest first); none without any."""
    if not previous:
        return []
    found: list[mf.Anomaly] = []
    size = _dump_size(current)
    before = _median([s for s in map(_dump_size, previous) if s is not None])
    if size is not None and before and size < before * (100 - config.size_drop_pct) / 100:
        found.append(mf.Anomaly(kind="size_drop", table=None, before=before, now=size))
    now = {_key(t): t for t in current.tables}
    history: dict[tuple[str, str], list[int]] = {}
    for doc in previous:
        for t in doc.tables:
            if t.rows is not None:
                history.setdefault(_key(t), []).append(t.rows)
    excluded = set(current.exclude_schemas)
    for table in previous[0].tables:
        key = _key(table)
        median = _median(history.get(key, []))
        if key not in now:
            if table.schema_ not in excluded:
                found.append(mf.Anomaly(kind="table_missing", table=_name(key), before=median,
                                        now=None))
            continue
        rows = now[key].rows
        if (rows is not None and median is not None and median >= max(config.min_rows, 1)
                and rows <= median * (100 - config.rows_drop_pct) / 100):
            found.append(mf.Anomaly(kind="rows_drop", table=_name(key), before=median,
                                    now=rows))
    return found


def describe(anomalies: list[mf.Anomaly]) -> str:
    """One line for humans: ``SUSPECT: dump 41% of the median; public.rental lost 80% ...``."""
    parts = []
    for a in anomalies:
        share = (f"{100 * (a.now or 0) / a.before:.0f}%" if a.before else "?")
        if a.kind == "size_drop":
            parts.append(f"dump {share} of the median ({a.now} of {a.before} bytes)")
        elif a.kind == "rows_drop":
            parts.append(f"{a.table} {a.before} -> {a.now} rows ({share})")
        elif a.kind == "table_missing":
            parts.append(f"{a.table} is gone")
        else:
            parts.append(f"{a.kind} {a.table or ''}".strip())
    return "SUSPECT: " + "; ".join(parts)


async def previous_good(services: Resources, target: str) -> list[mf.Manifest]:
    """The manifests of the target's newest :data:`BASELINE` good archives, newest first."""
    # Ids sort by the second they were made in; two backups of one second tie on it, so the
    # finish time decides which is newer.
    good = sorted((a for a in await catalogue(services, target) if is_good(a)),
                  key=lambda a: (a.created_at, a.finished_at or a.created_at),
                  reverse=True)[:BASELINE]
    return [await load_manifest(services, target, a.backup_id) for a in good]


async def check(services: Resources, current: mf.Manifest, config: AnomalyConfig | bool,
                log: Any) -> tuple[list[mf.Anomaly], str | None]:
    """The new archive's anomalies ([] when the guard is off or the comparison failed), and why
    the comparison was skipped (None when it ran or the guard is off): the job's summary says
    so, since a guard that silently stopped judging would be one more thing quietly broken."""
    if not isinstance(config, AnomalyConfig):
        return [], None
    # Within half the stall timeout too: a slow catalogue must not get a whole backup, done
    # but for its manifest, killed as stalled (the guard is a warning, not a gate).
    bound = min(CHECK_TIMEOUT_S, services.settings.stall_timeout_s / 2)
    try:
        async with asyncio.timeout(bound):
            previous = await previous_good(services, current.target)
        found = judge(current, previous, config)
    except Exception as exc:  # never fail a backup for this: say so and go on
        detail = exc.detail if isinstance(exc, PgVaultError) else None  # safe to show
        log.warning("anomaly_check_skipped", error_type=type(exc).__name__, detail=detail)
        why = (detail or (f"the previous archives could not be read within {bound:g} s"
                          if isinstance(exc, TimeoutError) else
                          f"an internal error ({type(exc).__name__}); see the service log"))
        return [], why
    log.info("anomaly_check", compared_with=len(previous), anomalies=len(found))
    return found, None
