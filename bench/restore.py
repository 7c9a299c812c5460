"""Restore benchmark (SPEC section 7): pgvault against a bare pg_restore, in the same run.

    .venv/bin/python bench/restore.py --rows 3000000     # the SPEC's size (a few minutes)
    .venv/bin/python bench/restore.py --rows 200000      # a quick run

On one freshly generated database of random text and jsonb it takes a pgvault backup through the
API and a local ``pg_dump -Fc`` file, then times

(a) a bare ``pg_restore --jobs 2`` of the local file into a fresh database;
(b) a pgvault restore of its backup into a new database through the API (download from S3,
    hash check, decryption and decompression, ``pg_restore --jobs 2``, post-restore checklist),
    from POST to ``succeeded``.

``--stages`` also times pg_restore by hand from -Z0 dumps, to show where the difference lies.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    BenchEnv,
    bench_env,
    checkpoint,
    cpu_summary,
    create_db,
    header,
    log,
    mb,
    parse_args,
    pg_args,
    print_table,
    psql,
    rss_summary,
    run_job,
    secs,
    timed,
    verdict,
)


def stages(env: BenchEnv) -> dict[str, float]:
    """pg_restore --jobs 2 by hand from the two other kinds of dump file, each into a fresh
    database: ``-Z0`` written to a file (seekable: the TOC has data offsets), and ``-Z0`` written
    to a pipe, through zstd and back, as pgvault's archives are (no data offsets)."""
    out: dict[str, float] = {}
    seekable, piped = env.tmp / "z0.dump", env.tmp / "piped.dump"
    src = " ".join(pg_args(env.source_db))
    timed(["pg_dump", "-Fc", "-Z0", "-f", str(seekable), *pg_args(env.source_db)])
    timed(f"pg_dump -Fc -Z0 {src} | zstd -q -1 -T0 | zstd -q -d > {piped}")
    for name, path in (("-Z0 file", seekable), ("-Z0 via a pipe", piped)):
        db = f"{env.prefix}_s{len(out)}"
        create_db(db)
        checkpoint()
        out[f"pg_restore --jobs 2, {name}"] = round(
            timed(["pg_restore", "--jobs", "2", "--exit-on-error", *pg_args(db), str(path)]), 2)
        path.unlink()
    return out


def main() -> int:
    parser = parse_args(__doc__.splitlines()[0])
    parser.add_argument("--stages", action="store_true",
                        help="also time pg_restore by hand from -Z0 dumps (file and pipe)")
    args = parser.parse_args()
    with bench_env(args.rows) as env:
        log("1/4 pgvault backup through the API")
        checkpoint()
        backup = run_job(env, "/v1/targets/bench/backups", timeout=args.timeout)
        backup_id = backup.result["backup_id"]
        log(f"    {backup_id} in {backup.wall_s:.2f} s")

        log("2/4 local pg_dump -Fc file")
        local = env.tmp / "local.dump"
        checkpoint()
        dump_s = timed(["pg_dump", "-Fc", "-f", str(local), *pg_args(env.source_db)])
        local_bytes = local.stat().st_size
        log(f"    {mb(local_bytes)} in {dump_s:.2f} s")

        log("3/4 bare pg_restore --jobs 2 from the local file")
        bare_db = f"{env.prefix}_bare"
        create_db(bare_db)
        checkpoint()
        bare = timed(["pg_restore", "--jobs", "2", "--exit-on-error", *pg_args(bare_db),
                      str(local)])
        log(f"    {bare:.2f} s")
        local.unlink()

        log("4/4 pgvault restore through the API")
        pgv_db = f"{env.prefix}_pgv"
        checkpoint()
        restore = run_job(env, "/v1/targets/bench/restores", timeout=args.timeout,
                          body={"backup_id": backup_id, "database": pgv_db, "jobs": 2})
        log(f"    {restore.wall_s:.2f} s")
        counts = [psql(db, "SELECT count(*) FROM events") for db in (bare_db, pgv_db)]
        if counts[0] != counts[1] or int(counts[0]) != env.rows:
            raise RuntimeError(f"row counts differ: bare {counts[0]}, pgvault {counts[1]}, "
                               f"source {env.rows}")
        stage_times = stages(env) if args.stages else {}

    result = restore.result
    wall, job_s = restore.wall_s, float(result["duration_s"])
    ratio = wall / bare
    phases = restore.phase_durations()
    rows = [
        ("database size / rows", f"{mb(env.db_size)} / {env.rows}", "", ""),
        ("pgvault backup, wall (setup)", secs(backup.wall_s), "", ""),
        ("  stored size (encrypted objects)", mb(backup.result["size_bytes"]), "", ""),
        ("local pg_dump -Fc -f (setup)", f"{secs(dump_s)}, {mb(local_bytes)}", "", ""),
        ("bare pg_restore --jobs 2 (local file)", secs(bare), "", ""),
        ("pgvault restore, wall (POST..succeeded)", secs(wall), "", ""),
        ("pgvault restore, job duration_s", secs(job_s), "", ""),
        ("pgvault / bare pg_restore (wall)", f"{ratio:.3f}x", "<= 1.25x", verdict(ratio, 1.25)),
        ("  same, from duration_s", f"{job_s / bare:.3f}x", "", ""),
        ("  rows match the manifest", str(result.get("rows_match")), "", ""),
        ("service peak RSS during the restore", mb(restore.rss.service_peak), "", ""),
    ]
    for name, t in phases.items():
        rows.append((f"  phase {name} (as polled)", secs(t), "", ""))
    for name, t in stage_times.items():
        rows.append((f"by hand: {name}", secs(t), "", ""))
    print_table(f"pgvault restore benchmark, {env.rows} rows", rows)
    print("CPU seconds during the pgvault restore:", cpu_summary(restore.rss))
    figures = {
        "bench": "restore", **header(env),
        "backup_wall_s": round(backup.wall_s, 2), "backup_duration_s":
            backup.result["duration_s"], "stored_bytes": backup.result["size_bytes"],
        "local_dump_s": round(dump_s, 2), "local_dump_bytes": local_bytes,
        "bare_pg_restore_s": round(bare, 2),
        "pgvault_restore_wall_s": round(wall, 2), "pgvault_restore_duration_s": job_s,
        "pgvault_restore_phases_s": phases,
        "ratio_vs_bare_pg_restore": round(ratio, 3),
        "ratio_vs_bare_pg_restore_duration": round(job_s / bare, 3),
        "rows_match": result.get("rows_match"), "rss": rss_summary(restore.rss),
        "cpu": cpu_summary(restore.rss),
        "stages_s": stage_times, "pass": {"vs_bare": ratio <= 1.25},
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    code = main()
    log(f"done in {time.perf_counter() - t0:.0f} s")
    sys.exit(code)
