"""The maintenance command: ANALYZE, or refresh every materialized view, as a job."""

from __future__ import annotations

from typing import Any

from app.integrations.target_db import connect_target
from app.jobs.context import JobContext
from app.maintenance import tasks


async def run_maintenance(ctx: JobContext) -> tuple[dict[str, Any], str]:
    task = ctx.params["task"]
    dsn = ctx.services.settings.targets[ctx.target].parsed_dsn
    await ctx.set_phase(task)
    conn = await connect_target(dsn)
    try:
        if task == "analyze":
            result = await tasks.analyze(conn)
            return ({"task": task, **result},
                    f"ANALYZE of {ctx.target}: {result['tables_analyzed']} tables in "
                    f"{result['duration_s']:.1f} s")
        views = await tasks.refresh_materialized_views(conn)
        concurrently = sum(1 for v in views if v["concurrently"])
        return ({"task": task, "materialized_views": views},
                f"refreshed {len(views)} materialized view(s) of {ctx.target} "
                f"({concurrently} concurrently)")
    finally:
        await conn.close()
