"""Backup benchmark (SPEC section 7): pgvault against baselines measured in the same run.

    .venv/bin/python bench/backup.py --rows 3000000     # the SPEC's size (a few minutes)
    .venv/bin/python bench/backup.py --rows 200000      # a quick run

On one freshly generated database of random text and jsonb it times

1. a bare ``pg_dump -Fc > /dev/null``;
2. the runbook's sequential script: ``pg_dump -Fc -f file``, ``gpg --encrypt`` of that file to
   another file, then a boto3 multipart ``upload_file`` of it to the same S3 endpoint;
3. a pgvault backup through the HTTP API, end to end (POST to ``succeeded``), while it samples the
   service's resident memory every 50 ms, loops on ``GET /healthz`` and sends bursts of 50
   concurrent clients reading the monitoring views.

``--stages`` also times the pipeline's pieces by hand, to show which one dominates.

Then (``--copies-rounds``, default 3; 0 skips it) one location against two (SPEC 2.15): two more
services with ``PGVAULT_COPIES`` back the same database up, alternating with the first service
(primary only): one copies to a bucket on a second S3 endpoint (moto's server in a process of
its own), one to a local folder. The ratios of the medians are printed (target: two locations
at most 1.15x one), with the CPU seconds the second endpoint itself spent per backup.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    PY,
    BenchEnv,
    JobRun,
    Probes,
    _free_port,
    bench_env,
    checkpoint,
    cpu_summary,
    header,
    log,
    mb,
    ms,
    parse_args,
    pg_args,
    print_table,
    rss_summary,
    run_job,
    second_service,
    secs,
    timed,
    verdict,
)

UPLOAD = """
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
s3.upload_file(sys.argv[2], sys.argv[3], sys.argv[4])
"""
# The same, from stdin (multipart, 8 MiB parts): the end of a by-hand streaming pipeline.
UPLOAD_STDIN = """
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
s3.upload_fileobj(sys.stdin.buffer, sys.argv[2], sys.argv[3])
"""


def bare_pg_dump(env: BenchEnv) -> float:
    checkpoint()
    return timed(["pg_dump", "-Fc", *pg_args(env.source_db)])


def sequential(env: BenchEnv) -> dict[str, float]:
    """The runbook: dump to a file, encrypt the file, upload it (a separate boto3 process, as
    ``aws s3 cp`` would be, so it does not share this process's interpreter with moto)."""
    dump, enc = env.tmp / "runbook.dump", env.tmp / "runbook.dump.gpg"
    checkpoint()
    out = {"dump_s": timed(["pg_dump", "-Fc", "-f", str(dump), *pg_args(env.source_db)])}
    out["gpg_s"] = timed(env.gpg("-o", str(enc), "--encrypt", "-r", env.fpr, str(dump)))
    out["upload_s"] = timed([PY, "-c", UPLOAD, env.s3_endpoint, str(enc), env.bucket,
                             "runbook/runbook.dump.gpg"])
    out["total_s"] = out["dump_s"] + out["gpg_s"] + out["upload_s"]
    out["dump_bytes"] = dump.stat().st_size
    out["encrypted_bytes"] = enc.stat().st_size
    dump.unlink()
    enc.unlink()
    return out


def stages(env: BenchEnv) -> dict[str, float]:
    """The pipeline's pieces by hand, to /dev/null, then streamed to the same S3 endpoint (the
    SPEC's reference pipelines)."""
    src = " ".join(pg_args(env.source_db))
    dump = f"pg_dump -Fc -Z0 {src}"
    gpg = " ".join(env.gpg("--compress-algo", "none", "--encrypt", "-r", env.fpr))
    gpg_default = " ".join(env.gpg("--encrypt", "-r", env.fpr))
    upload = " ".join([PY, "-c", shlex.quote(UPLOAD_STDIN), env.s3_endpoint, env.bucket])
    pipelines = {
        "pg_dump -Fc -Z0": f"{dump} > /dev/null",
        "pg_dump -Fc -Z0 | zstd -1 -T0": f"{dump} | zstd -q -1 -T0 > /dev/null",
        "pg_dump -Fc -Z0 | zstd -1 -T0 | gpg --compress-algo none":
            f"{dump} | zstd -q -1 -T0 | {gpg} > /dev/null",
        "pg_dump -Fc -Z0 | zstd -1 -T0 | gpg --compress-algo none | upload":
            f"{dump} | zstd -q -1 -T0 | {gpg} | {upload} stages/z0.zst.gpg",
        "pg_dump -Fc | gpg | upload":
            f"pg_dump -Fc {src} | {gpg_default} | {upload} stages/fc.gpg",
    }
    out = {}
    for name, cmd in pipelines.items():
        checkpoint()
        out[name] = round(timed(cmd), 2)
        log(f"stage {name}: {out[name]:.2f} s")
    return out


# The alternative to fanning the stream out: copy the archive from the primary right after the
# backup, streaming each object down from one bucket and up into the other (as between two
# providers: no server-side copy), in a separate process.
COPY_AFTER = """
import sys, boto3
from boto3.s3.transfer import TransferConfig
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1")
s3_dst = boto3.client("s3", endpoint_url=sys.argv[3], region_name="us-east-1")
src, dst, prefix = sys.argv[2], sys.argv[4], sys.argv[5]
config = TransferConfig(multipart_chunksize=8 << 20, max_concurrency=2)
for obj in s3.list_objects_v2(Bucket=src, Prefix=prefix).get("Contents", []):
    body = s3.get_object(Bucket=src, Key=obj["Key"])["Body"]
    s3_dst.upload_fileobj(body, dst, "after/" + obj["Key"], Config=config)
"""


@contextlib.contextmanager
def moto_process() -> Iterator[tuple[str, psutil.Process]]:
    """A second S3 endpoint: moto's server in a process of its own (as a second location is a
    server of its own), so that it does not share the first endpoint's interpreter."""
    port = _free_port()
    proc = subprocess.Popen([PY, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            time.sleep(0.1)
        yield url, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def copies_comparison(env: BenchEnv, rounds: int, timeout: float,
                      options: dict[str, Any]) -> dict[str, Any]:
    """The same backup to one location and to two, alternated so that drift in the machine's
    load hits all alike: the copy (a) in a bucket on a second S3 endpoint (moto in a process of
    its own), (b) in a local folder."""
    import boto3

    one: list[JobRun] = []
    two: list[JobRun] = []
    two_file: list[JobRun] = []
    moto_cpu: list[float] = []  # CPU seconds the copy's endpoint spent per backup
    after: list[float] = []  # one location, then the archive copied from the primary
    folder_copy = Path(tempfile.mkdtemp(prefix="pgvb-copy-"))
    copy_bucket = f"{env.bucket}-copy"
    with moto_process() as (endpoint2, moto2):
        boto3.client("s3", endpoint_url=endpoint2, region_name="us-east-1").create_bucket(
            Bucket=copy_bucket)
        s3_copy = json.dumps([{"name": "copy", "url": f"s3://{copy_bucket}/bench",
                               "s3_endpoint_url": endpoint2}])
        file_copy = json.dumps([{"name": "copy", "url": f"file://{folder_copy}"}])
        try:
            with second_service(env, "meta_copies", {"PGVAULT_COPIES": s3_copy},
                                options) as env2, \
                    second_service(env, "meta_copies_file", {"PGVAULT_COPIES": file_copy},
                                   options) as env3:
                for i in range(rounds):
                    for runs, where, label in ((one, env, "one location"),
                                               (two, env2, "two locations (S3 copy)"),
                                               (two_file, env3, "two locations (folder copy)")):
                        checkpoint()
                        cpu0 = sum(moto2.cpu_times()[:2])
                        run = run_job(where, "/v1/targets/bench/backups", timeout=timeout)
                        if where is not env:
                            assert run.result["copies"]["copy"]["status"] == "complete", \
                                run.result
                        if where is env2:
                            moto_cpu.append(sum(moto2.cpu_times()[:2]) - cpu0)
                        runs.append(run)
                        log(f"    round {i + 1}, {label}: {run.wall_s:.2f} s "
                            f"(service peak RSS {mb(run.rss.service_peak)})")
                        if where is env:
                            folder = f"bench/bench/{run.result['backup_id']}/"
                            copy_s = timed([PY, "-c", COPY_AFTER, env.s3_endpoint, env.bucket,
                                            endpoint2, copy_bucket, folder])
                            after.append(run.wall_s + copy_s)
                            log(f"    round {i + 1}, then copied from the primary: "
                                f"{copy_s:.2f} s")
        finally:
            shutil.rmtree(folder_copy, ignore_errors=True)
    med1 = statistics.median(r.wall_s for r in one)
    med2 = statistics.median(r.wall_s for r in two)
    med3 = statistics.median(r.wall_s for r in two_file)
    return {"rounds": rounds, "one_location_s": [round(r.wall_s, 2) for r in one],
            "two_locations_s": [round(r.wall_s, 2) for r in two],
            "two_locations_file_s": [round(r.wall_s, 2) for r in two_file],
            "one_location_median_s": round(med1, 2), "two_locations_median_s": round(med2, 2),
            "two_locations_file_median_s": round(med3, 2),
            "ratio": round(med2 / med1, 3), "file_ratio": round(med3 / med1, 3),
            "copy_endpoint_cpu_s": round(statistics.median(moto_cpu), 2),
            "copy_after_s": [round(t, 2) for t in after],
            "copy_after_ratio": round(statistics.median(after) / med1, 3),
            "one_location_peak_rss_mb": round(max(r.rss.service_peak for r in one) / 1e6, 1),
            "two_locations_peak_rss_mb": round(max(r.rss.service_peak for r in two) / 1e6, 1)}


def main() -> int:
    parser = parse_args(__doc__.splitlines()[0])
    parser.add_argument("--stages", action="store_true",
                        help="also time the pipeline's pieces by hand")
    parser.add_argument("--no-quiet-run", action="store_true",
                        help="skip the extra pgvault backup without latency clients")
    parser.add_argument("--no-row-counts", action="store_true",
                        help="target option row_counts=false: no exact row counts in the "
                             "manifest (to see what counting costs)")
    parser.add_argument("--copies-rounds", type=int, default=3,
                        help="backups to one location and to two, alternated (0: skip)")
    args = parser.parse_args()
    options = {"row_counts": False} if args.no_row_counts else {}
    with bench_env(args.rows, options) as env:
        log("0/4 /healthz and monitoring latency with nothing running (reference)")
        idle_probes = Probes(env.base_url, env.token, "bench", rounds_max=2,
                             kind=args.burst_client)
        try:
            idle_h, idle_m = idle_probes.idle(2.5)
        finally:
            idle_probes.kill()
        log("1/4 bare pg_dump -Fc > /dev/null")
        bare = bare_pg_dump(env)
        log(f"    {bare:.2f} s")
        log("2/4 the runbook's sequential script (dump file, gpg, upload)")
        seq = sequential(env)
        log(f"    {seq['total_s']:.2f} s")
        quiet = None
        if not args.no_quiet_run:
            log("3/4 pgvault backup through the API, nothing else running (for reference)")
            checkpoint()
            quiet = run_job(env, "/v1/targets/bench/backups", timeout=args.timeout)
            log(f"    {quiet.wall_s:.2f} s")
        log("4/4 pgvault backup through the API, with /healthz and monitoring clients")
        probes = Probes(env.base_url, env.token, "bench", kind=args.burst_client)
        try:
            probes.start()
            checkpoint()
            run = run_job(env, "/v1/targets/bench/backups", timeout=args.timeout,
                          on_running=probes.go.set)
            healthz, monitoring = probes.finish(run.started_wall, run.ended_wall)
        finally:
            probes.kill()
        log(f"    {run.wall_s:.2f} s")
        stage_times = stages(env) if args.stages else {}
        copied = None
        if args.copies_rounds > 0:
            log(f"5/5 one location against two, {args.copies_rounds} round(s) alternated")
            copied = copies_comparison(env, args.copies_rounds, args.timeout, options)

    result = run.result
    wall, job_s = run.wall_s, float(result["duration_s"])
    peak = max(run.rss.service_peak, quiet.rss.service_peak if quiet else 0)
    h, m = healthz.summary(), monitoring.summary()
    ih, im = idle_h.summary(), idle_m.summary()
    r_bare, r_seq = wall / bare, wall / seq["total_s"]
    rows = [
        ("database size / rows", f"{mb(env.db_size)} / {env.rows}", "", ""),
        ("bare pg_dump -Fc > /dev/null", secs(bare), "", ""),
        ("runbook: pg_dump -Fc -f", secs(seq["dump_s"]), "", ""),
        ("runbook: gpg --encrypt", secs(seq["gpg_s"]), "", ""),
        ("runbook: upload_file (multipart)", secs(seq["upload_s"]), "", ""),
        ("runbook sequential, total", secs(seq["total_s"]), "", ""),
        ("pgvault backup, wall (POST..succeeded)", secs(wall), "", ""),
        ("pgvault backup, job duration_s", secs(job_s), "", ""),
        ("pgvault / bare pg_dump (wall)", f"{r_bare:.3f}x", "<= 0.4x", verdict(r_bare, 0.4)),
        ("pgvault / sequential (wall)", f"{r_seq:.3f}x", "<= 0.3x", verdict(r_seq, 0.3)),
        ("  same, from duration_s", f"{job_s / bare:.3f}x / {job_s / seq['total_s']:.3f}x",
         "", ""),
    ]
    if quiet is not None:
        rows += [
            ("  backup without latency clients, wall", secs(quiet.wall_s), "", ""),
            ("  its ratios (bare / sequential)",
             f"{quiet.wall_s / bare:.3f}x / {quiet.wall_s / seq['total_s']:.3f}x", "", ""),
        ]
    rows += [
        ("service peak RSS (both backups)", mb(peak), "< 200 MB",
         verdict(peak / 1e6, 200, strict=True)),
        ("  service RSS before the backup", mb(run.rss.service_start), "", ""),
        ("  children peak RSS (pg_dump, zstd, gpg)", mb(run.rss.children_peak_total), "", ""),
        ("stored size (encrypted objects)", mb(result["size_bytes"]), "", ""),
        ("  runbook file (pg_dump -Fc, gpg)",
         f"{mb(seq['dump_bytes'])}, {mb(seq['encrypted_bytes'])}", "", ""),
        (f"/healthz p50 / p99 (n={h['n']}, errors {h['errors']})",
         f"{ms(_s(h['p50_ms']))} / {ms(_s(h['p99_ms']))}", "p99 < 50 ms",
         verdict(h["p99_ms"], 50, strict=True) if not h["errors"] else "MISS"),
    ]
    if "in_burst" in h:
        rows.append((f"  p99 during a burst (n={h['in_burst']['n']}) / between "
                     f"(n={h['between_bursts']['n']})",
                     f"{ms(_s(h['in_burst']['p99_ms']))} / "
                     f"{ms(_s(h['between_bursts']['p99_ms']))}", "", ""))
    rows += [
        (f"monitoring p50 / p99 (n={m['n']}, {m.get('bursts', 0)} bursts, errors {m['errors']})",
         f"{ms(_s(m['p50_ms']))} / {ms(_s(m['p99_ms']))}", "p99 < 250 ms",
         verdict(m["p99_ms"], 250, strict=True) if not m["errors"] else "MISS"),
        (f"  idle reference: /healthz (n={ih['n']})",
         f"{ms(_s(ih['p50_ms']))} / {ms(_s(ih['p99_ms']))}", "", ""),
        (f"  idle reference: monitoring (n={im['n']})",
         f"{ms(_s(im['p50_ms']))} / {ms(_s(im['p99_ms']))}", "", ""),
    ]
    if copied is not None:
        rows += [
            (f"one location, median of {copied['rounds']} (wall)",
             secs(copied["one_location_median_s"]), "", ""),
            (f"two locations (primary + copy), median of {copied['rounds']}",
             secs(copied["two_locations_median_s"]), "", ""),
            ("two locations / one", f"{copied['ratio']:.3f}x", "<= 1.15x",
             verdict(copied["ratio"], 1.15)),
            ("  the copy's endpoint CPU per backup (same machine)",
             secs(copied["copy_endpoint_cpu_s"]), "", ""),
            (f"two locations, copy in a folder, median of {copied['rounds']}",
             secs(copied["two_locations_file_median_s"]), "", ""),
            ("two locations (folder copy) / one", f"{copied['file_ratio']:.3f}x", "<= 1.15x",
             verdict(copied["file_ratio"], 1.15)),
            ("  alternative: one location, then copied (median)",
             f"{copied['copy_after_ratio']:.3f}x", "", ""),
            ("  service peak RSS, one / two locations",
             f"{copied['one_location_peak_rss_mb']:.1f} MB / "
             f"{copied['two_locations_peak_rss_mb']:.1f} MB", "", ""),
        ]
    for name, t in stage_times.items():
        short = name.replace("pg_dump -Fc -Z0", "dump -Z0").replace(" --compress-algo none", "")
        rows.append((f"by hand: {short}", secs(t), "", ""))
    counts = ", row_counts=false" if args.no_row_counts else ""
    print_table(f"pgvault backup benchmark, {env.rows} rows{counts}", rows)
    print("pgvault phases (s, as polled):", run.phase_durations())
    print("children peak RSS by program (MB):", rss_summary(run.rss)["children_peak_mb"])
    if quiet is not None:
        print("CPU seconds during the backup without latency clients:", cpu_summary(quiet.rss))
    print("CPU seconds during the backup with latency clients:", cpu_summary(run.rss))
    figures = {
        "bench": "backup", **header(env),
        "bare_pg_dump_s": round(bare, 2),
        "sequential_s": {k: round(v, 2) if k.endswith("_s") else v for k, v in seq.items()},
        "pgvault_wall_s": round(wall, 2), "pgvault_duration_s": job_s,
        "pgvault_phases_s": run.phase_durations(),
        "pgvault_quiet_wall_s": round(quiet.wall_s, 2) if quiet else None,
        "pgvault_quiet_duration_s": quiet.result["duration_s"] if quiet else None,
        "ratio_vs_bare_pg_dump": round(r_bare, 3), "ratio_vs_sequential": round(r_seq, 3),
        "ratio_vs_bare_pg_dump_duration": round(job_s / bare, 3),
        "ratio_vs_sequential_duration": round(job_s / seq["total_s"], 3),
        "stored_bytes": result["size_bytes"], "rss": rss_summary(run.rss),
        "rss_quiet": rss_summary(quiet.rss) if quiet else None,
        "cpu": cpu_summary(run.rss), "cpu_quiet": cpu_summary(quiet.rss) if quiet else None,
        "healthz": h, "monitoring": m, "idle_healthz": ih, "idle_monitoring": im,
        "burst_client": args.burst_client, "row_counts": not args.no_row_counts,
        "stages_s": stage_times, "copies": copied,
        "pass": {"vs_bare": r_bare <= 0.4, "vs_sequential": r_seq <= 0.3,
                 "rss": peak < 200e6,
                 "healthz_p99": h["p99_ms"] is not None and h["p99_ms"] < 50
                 and not h["errors"],
                 "monitoring_p99": m["p99_ms"] is not None and m["p99_ms"] < 250
                 and not m["errors"],
                 "copies": None if copied is None else copied["ratio"] <= 1.15},
    }
    print(json.dumps(figures))
    return 0


def _s(v: float | None) -> float | None:
    return None if v is None else v / 1000


if __name__ == "__main__":
    t0 = time.perf_counter()
    code = main()
    log(f"done in {time.perf_counter() - t0:.0f} s")
    sys.exit(code)
