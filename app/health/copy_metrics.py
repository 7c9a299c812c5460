"""The copies' figures (SPEC 2.15), derived at scrape time like the others (:mod:`metrics`):

- ``pgvault_archive_copies{target,location,status}``: complete archives (in the primary) by each
  copy location's recorded state of them: ``complete``, ``missing``, ``incomplete``, ``damaged``,
  or ``unknown`` when none is recorded. Alert on anything but ``complete``.
- ``pgvault_copy_failures_total{target,location}``: copies that failed during a backup (the
  succeeded backups' results name them), as a counter read from the metadata database.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from app.archives.schemas import Archive

STATUSES = ("complete", "missing", "incomplete", "damaged", "unknown")

FAILURES_SQL = """
SELECT j.target, c.key AS location, count(*) AS n
FROM jobs j, jsonb_each(coalesce(j.result -> 'copies', '{}'::jsonb)) AS c
WHERE j.kind = 'backup' AND j.status = 'succeeded'
  AND jsonb_typeof(j.result -> 'copies') = 'object' AND c.value ->> 'status' = 'missing'
GROUP BY j.target, c.key
"""


async def failures(conn: Any) -> list[Any]:
    return list(await conn.fetch(FAILURES_SQL))


def collect(copies: list[str], archives: dict[str, list[Archive] | None],
            failed: list[Any]) -> Iterator[Metric]:
    by_state = GaugeMetricFamily(
        "pgvault_archive_copies",
        "Complete archives by each copy location's state of them (unknown: none recorded)",
        labels=["target", "location", "status"])
    for target, listed in archives.items():
        if listed is None or not copies:
            continue
        for location in copies:
            counts = dict.fromkeys(STATUSES, 0)
            for archive in listed:
                if archive.complete:
                    state = archive.copies.get(location)
                    counts[state.status if state is not None else "unknown"] += 1
            for status, n in counts.items():
                by_state.add_metric([target, location, status], n)
    total = CounterMetricFamily("pgvault_copy_failures",
                                "Copy locations that failed during a succeeded backup",
                                labels=["target", "location"])
    for row in failed:
        total.add_metric([row["target"], row["location"]], row["n"])
    yield from (by_state, total)
