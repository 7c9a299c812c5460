"""Which location holds an archive whole (SPEC 2.15), judged from listings: every object its
manifest lists, at the manifest's size, and the manifest itself.

The catalogue asks only about archives whose manifest is on the primary but one of whose objects
is missing or short there: such an archive is still restorable when a copy holds it whole, or
the copies between them hold every object the primary lacks (restores and verifications read
each object from the first location holding it intact, app/restore/fetch.py), so it is
listed as ``complete`` with a ``degraded`` note instead of ``incomplete``, and retention, which
deletes incomplete archives, keeps it. When no copy could be listed, nobody can tell: the archive
is shown ``unreadable`` (kept, never restored, never counted as good) until the copy answers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from app.backup import manifest as mf
from app.integrations.storage import Location, ObjectInfo, StorageError

# How long the catalogue waits for a copy's listing (a copy that does not answer must not hold
# the primary's listing, or the /metrics scrape that reads it, LIST_TIMEOUT_S in app.health).
LIST_TIMEOUT_S = 3.0


def stored_sizes(objects: list[ObjectInfo]) -> dict[str, int]:
    """A listing of one archive folder (``<target>/<backup_id>/...``): each usable object's key
    relative to the folder (as the manifest names it) and its size."""
    return {o.key.split("/", 2)[-1]: o.size for o in objects if o.usable}


def short_objects(objects: list[ObjectInfo], doc: mf.Manifest) -> list[str]:
    """The manifest's objects missing from a listing of the archive or of another size there."""
    stored = stored_sizes(objects)
    return [obj.key for obj in doc.objects if stored.get(obj.key) != obj.size_bytes]


def holds_whole(objects: list[ObjectInfo], doc: mf.Manifest) -> bool:
    return mf.MANIFEST in stored_sizes(objects) and not short_objects(objects, doc)


@dataclass(frozen=True)
class Verdict:
    """For an archive the primary holds short: ``degraded`` (a copy holds it whole: restorable)
    or ``reason`` (no copy could be checked: not judged)."""

    degraded: str | None = None
    reason: str | None = None


async def judge(copies: list[Location], target: str, backup_id: str, doc: mf.Manifest,
                primary_objects: list[ObjectInfo],
                down: dict[str, str] | None = None) -> Verdict | None:
    """None when the archive is not restorable from any copy (or no copy is configured).
    ``down``: copies that failed to answer earlier in the same listing (name -> why), not asked
    again, and where a failure now is noted: a copy that does not answer costs one
    :data:`LIST_TIMEOUT_S`, not one per archive, so a listing (and ``/metrics``) still answers.
    Without ``down`` (a restore deciding whether it may read the archive) copies are waited for:
    a slow copy must not refuse the restore that needs it."""
    timeout = None if down is None else LIST_TIMEOUT_S
    down = {} if down is None else down
    short = short_objects(primary_objects, doc)
    what = f"{', '.join(short[:3])} {'is' if len(short) == 1 else 'are'} missing or short"
    unreachable: list[str] = []
    sizes = {obj.key: obj.size_bytes for obj in doc.objects}
    lacking, holders = set(short), []  # what no copy asked so far holds at its size; who does
    for location in copies:
        if location.name in down:
            unreachable.append(f"{location.name} ({down[location.name]})")
            continue
        try:
            listed = await asyncio.wait_for(
                location.storage.list_objects(mf.archive_prefix(target, backup_id)), timeout)
        except (StorageError, TimeoutError) as exc:
            down[location.name] = str(exc) or f"no answer within {LIST_TIMEOUT_S:g} s"
            unreachable.append(f"{location.name} ({down[location.name]})")
            continue
        if holds_whole(listed, doc):
            return Verdict(degraded=f"{what} on the primary; copy {location.name} holds the "
                                    "archive whole: restores read it from there, and a "
                                    "reconcile job repairs the primary")
        # Restores read each object from the first location holding it intact: objects spread
        # over several copies restore as well as one copy holding them all.
        held = stored_sizes(listed)
        covered = {k for k in lacking if held.get(k) == sizes[k]}
        if covered:
            holders.append(location.name)
            lacking -= covered
    if not lacking:
        return Verdict(degraded=f"{what} on the primary; copies {', '.join(holders)} hold "
                                "them: restores read them from there, and a reconcile job "
                                "repairs the primary")
    if unreachable:
        return Verdict(reason=f"{what} on the primary and copy {', '.join(unreachable)} could "
                              "not be listed: cannot tell whether a copy holds it")
    return None
