"""The Prometheus figures (SPEC 2.8, 2.13), named as the conventions and the pgBackRest / WAL-G
exporters have them: ``_total`` counters, ``_seconds`` histograms, ``_timestamp_seconds`` gauges.

Every figure is derived at scrape time, by a custom collector, from the metadata database (jobs)
and from storage (archives), never counted in the process. Several replicas share one metadata
database: any of them, scraped through a load balancer or after a restart, reports the same
totals, and they include the jobs that another replica ran or reaped. Counters kept in memory
would count one replica's work and start from zero at each restart. (A finished job row is never
rewritten, so the totals only grow; if old jobs were ever purged, Prometheus would see a counter
reset, which ``rate()`` already handles.)

Continuous proof (unverified archives, last proven backup, restore forecast against the RTOs)
is drawn from the same listing and a few job queries: no storage read of its own.

Archives are read from storage as the API lists them; a target whose listing fails within
``LIST_TIMEOUT_S`` shows ``pgvault_storage_up 0`` and no archive figures, rather than stale ones
or a failed scrape.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, get_args

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from app.archives import service as archives
from app.archives.schemas import Archive
from app.health import copy_metrics
from app.jobs import repository as jobs_repo
from app.jobs.schemas import JobKind
from app.resources import Resources
from app.targets import proof
from app.targets.proof import Proof
from app.targets.rpo import good_backup, within_rpo

# Job durations run from seconds (a checksum verify) to hours (a restore of a large database).
DURATION_BUCKETS = [1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
                    14400.0, 28800.0]
LIST_TIMEOUT_S = 10.0
FINISHED = ("succeeded", "failed", "cancelled")


@dataclass
class Facts:
    """Everything one scrape reports, read before the collector runs (it cannot await)."""

    targets: list[str]
    rpo_hours: float
    now: float
    counts: list[Any] = field(default_factory=list)
    durations: list[Any] = field(default_factory=list)
    last_backup: dict[str, Any] = field(default_factory=dict)
    last_verify: dict[str, Any] = field(default_factory=dict)
    running_backup: dict[str, Any] = field(default_factory=dict)
    archives: dict[str, list[Archive] | None] = field(default_factory=dict)
    rto_hours: dict[int, float] = field(default_factory=dict)
    proofs: dict[str, Proof] = field(default_factory=dict)
    copies: list[str] = field(default_factory=list)
    copy_failures: list[Any] = field(default_factory=list)


async def gather(services: Resources) -> Facts:
    names = sorted(services.settings.targets)
    facts = Facts(targets=names, rpo_hours=services.settings.rpo_hours, now=time.time(),
                  copies=[c.name for c in services.settings.copies])
    async with services.pool.acquire() as conn:
        facts.counts = await jobs_repo.counts(conn)
        facts.durations = await jobs_repo.duration_buckets(conn, DURATION_BUCKETS)
        facts.last_backup = {r["target"]: r
                             for r in await jobs_repo.last_succeeded(conn, "backup", names)}
        facts.last_verify = {r["target"]: r
                             for r in await jobs_repo.last_finished(conn, "verify", names)}
        facts.running_backup = {r["target"]: r
                                for r in await jobs_repo.running_of(conn, "backup")}
        facts.copy_failures = await copy_metrics.failures(conn)
    listed = await asyncio.gather(*(_archives(services, n) for n in names))
    facts.archives = dict(zip(names, listed, strict=True))
    # Continuous proof from the listing just read (no second one): a few indexed job queries.
    facts.rto_hours = services.settings.rto_hours
    now = datetime.fromtimestamp(facts.now, UTC)
    for name, found in facts.archives.items():
        if found is not None:
            facts.proofs[name] = await proof.proof_of(services, name, found, now)
    return facts


async def _archives(services: Resources, target: str) -> list[Archive] | None:
    try:
        return await asyncio.wait_for(archives.catalogue(services, target), LIST_TIMEOUT_S)
    except Exception:  # storage down or slow: reported as pgvault_storage_up 0
        return None


class FactsCollector(Collector):
    def __init__(self, facts: Facts) -> None:
        self.facts = facts

    def collect(self) -> Iterator[Metric]:
        yield from self._jobs()
        yield from self._backups()
        yield from self._archives()
        yield from self._verifications()
        yield from self._proof()
        yield from copy_metrics.collect(self.facts.copies, self.facts.archives,
                                        self.facts.copy_failures)

    def _jobs(self) -> Iterator[Metric]:
        total = CounterMetricFamily("pgvault_jobs", "Finished jobs by kind and outcome",
                                    labels=["kind", "outcome"])
        active = GaugeMetricFamily("pgvault_jobs_active", "Queued and running jobs by kind",
                                   labels=["kind", "status"])
        # Every kind, from 0: an alert on its increase needs the series before the first stall.
        stalled = CounterMetricFamily(
            "pgvault_jobs_stalled", "Jobs failed by the stall watchdog (no change of phase or "
            "progress for stall_timeout_s), by kind", labels=["kind"])
        stalls = dict.fromkeys(get_args(JobKind), 0)
        for row in self.facts.counts:
            stalls[row["kind"]] = stalls.get(row["kind"], 0) + row["stalled"]
            if row["status"] in FINISHED:
                total.add_metric([row["kind"], row["status"]], row["n"])
            else:
                active.add_metric([row["kind"], row["status"]], row["n"])
        durations = HistogramMetricFamily(
            "pgvault_job_duration_seconds", "Run time of finished jobs (start to end)",
            labels=["kind", "outcome"])
        for row in self.facts.durations:
            buckets = [(_le(b), float(c)) for b, c in zip(DURATION_BUCKETS, row["buckets"],
                                                          strict=True)]
            buckets.append(("+Inf", float(row["n"])))
            durations.add_metric([row["kind"], row["status"]], buckets,
                                 sum_value=float(row["seconds"] or 0))
        for kind, n in stalls.items():
            stalled.add_metric([kind], n)
        yield from (total, active, durations, stalled)

    def _backups(self) -> Iterator[Metric]:
        f = self.facts
        last_ts = _gauge("pgvault_backup_last_success_timestamp_seconds",
                         "Finish time of the last successful backup")
        last_size = _gauge("pgvault_backup_last_size_bytes",
                           "Stored size of the last successful backup")
        last_dur = _gauge("pgvault_backup_last_duration_seconds",
                          "Duration of the last successful backup")
        rpo_ok = _gauge("pgvault_rpo_compliant", "1 when the last good backup is within the RPO")
        running = _gauge("pgvault_backup_running", "1 while a backup of the target runs")
        dumped = _gauge("pgvault_backup_running_bytes",
                        "Bytes pg_dump has written so far in the running backup (0: none runs)")
        uploaded = _gauge("pgvault_backup_running_uploaded_bytes",
                          "Bytes the running backup has stored so far (0: none runs)")
        for name in f.targets:
            good = good_backup(f.last_backup.get(name))  # a damaged record: none known
            ok = False
            if good is not None:
                finished = good.finished_at.timestamp()
                last_ts.add_metric([name], finished)
                last_size.add_metric([name], good.size_bytes)
                last_dur.add_metric([name], good.duration_s)
                ok = within_rpo(f.now - finished, f.rpo_hours)
            rpo_ok.add_metric([name], 1 if ok else 0)
            job = f.running_backup.get(name)
            running.add_metric([name], 1 if job is not None else 0)
            dumped.add_metric([name], job["bytes_done"] if job is not None else 0)
            uploaded.add_metric([name], job["bytes_uploaded"] if job is not None else 0)
        yield from (last_ts, last_size, last_dur, rpo_ok, running, dumped, uploaded)

    def _archives(self) -> Iterator[Metric]:
        up = _gauge("pgvault_storage_up", "1 when the target's archives could be listed")
        count = _gauge("pgvault_archives", "Complete archives (with a manifest) in storage")
        incomplete = _gauge("pgvault_archives_incomplete",
                            "Archives without a manifest or with an object missing")
        damaged = _gauge("pgvault_archives_damaged",
                         "Complete archives whose last conclusive verification found damage")
        unverified = _gauge("pgvault_archives_unverified",
                            "Complete archives with no conclusive verification yet")
        suspect = _gauge("pgvault_suspect_archives",
                         "Archives marked suspect by the anomaly guard and not cleared")
        newest = _gauge("pgvault_archive_newest_timestamp_seconds",
                        "Creation time of the newest complete archive")
        oldest = _gauge("pgvault_archive_oldest_timestamp_seconds",
                        "Creation time of the oldest complete archive")
        for name in self.facts.targets:
            listed = self.facts.archives.get(name)
            up.add_metric([name], 0 if listed is None else 1)
            if listed is None:
                continue
            complete = [a for a in listed if a.complete]
            count.add_metric([name], len(complete))
            incomplete.add_metric([name], len(listed) - len(complete))
            damaged.add_metric([name], sum(1 for a in complete if a.verification
                                           and a.verification.damaged))
            unverified.add_metric([name], sum(1 for a in complete if not _conclusive(a)))
            suspect.add_metric([name], sum(1 for a in complete if a.suspect))
            if complete:
                times = [a.created_at.timestamp() for a in complete]
                newest.add_metric([name], max(times))
                oldest.add_metric([name], min(times))
        yield from (up, count, incomplete, damaged, unverified, suspect, newest, oldest)

    def _verifications(self) -> Iterator[Metric]:
        when = _gauge("pgvault_verification_last_timestamp_seconds",
                      "Finish time of the target's last verification that succeeded or failed")
        ok = GaugeMetricFamily("pgvault_verification_last_success",
                               "1 when the target's last verification passed, 0 when it failed",
                               labels=["target", "level"])
        for name in self.facts.targets:
            row = self.facts.last_verify.get(name)
            if row is None:
                continue
            when.add_metric([name], row["finished_at"].timestamp())
            ok.add_metric([name, (row["params"] or {}).get("level", "checksum")],
                          1 if row["status"] == "succeeded" else 0)
        yield from (when, ok)

    def _proof(self) -> Iterator[Metric]:
        unverified = _gauge("pgvault_unverified_archives", "Complete archives with no "
                            "conclusive verification (a passed restore test, or damage found)")
        last = _gauge("pgvault_last_verified_backup_timestamp_seconds",
                      "When the newest good archive with a passed restore test passed it")
        expected = _gauge("pgvault_restore_forecast_seconds",
                          "Expected restore time of the newest good archive")
        ok = GaugeMetricFamily("pgvault_rto_forecast_ok",
                               "1 when the restore forecast is within the severity's RTO",
                               labels=["target", "severity"])
        for name, found in sorted(self.facts.proofs.items()):
            unverified.add_metric([name], found.unverified)
            if found.last_verified is not None:
                last.add_metric([name], found.last_verified[1].timestamp())
            if found.forecast_s is None:
                continue
            expected.add_metric([name], found.forecast_s)
            for severity, fits in (proof.rto_ok(found.forecast_s, self.facts.rto_hours)
                                   or {}).items():
                ok.add_metric([name, severity], 1 if fits else 0)
        yield from (unverified, last, expected, ok)


def _gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=["target"])


def _le(bound: float) -> str:
    return f"{bound:g}" if bound != int(bound) else f"{bound:.1f}"


def _conclusive(archive: Archive) -> bool:
    check = archive.verification
    return check is not None and (check.status == "succeeded" or check.damaged)


async def metrics_text(services: Resources) -> bytes:
    registry = CollectorRegistry()
    registry.register(FactsCollector(await gather(services)))
    data: bytes = generate_latest(registry)
    return data

