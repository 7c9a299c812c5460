"""Shared set-up for the benchmark scripts (SPEC section 7).

Everything is real and local: a uniquely named source database on the PostgreSQL server at
127.0.0.1:5432 filled with rows that do not compress 50:1, moto's S3 server in this process, a
throwaway GnuPG home with one key pair, and the service itself as a separate process (``alembic
upgrade head`` on a fresh metadata database, then ``uvicorn app.main:app``) driven over HTTP.

Every database a run creates is named ``pgvb_<tag>_*`` and dropped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
PY = sys.executable
TERMINAL = ("succeeded", "failed", "cancelled")
MONITORING_VIEWS = ("connections", "tables", "indexes")

# About 300 bytes a row on disk (id, timestamp, 97 characters of hex text, a jsonb object of
# random values): a default-compressed dump is about 40% of the table, not 2%.
SOURCE_SQL = """
CREATE TABLE events (
    id bigint NOT NULL,
    created_at timestamptz NOT NULL,
    body text NOT NULL,
    attrs jsonb NOT NULL
);
INSERT INTO events
SELECT g,
       now() - random() * interval '365 days',
       md5(random()::text) || md5(random()::text) || ' ' || md5(random()::text),
       jsonb_build_object('user', md5(random()::text), 'score', random(),
                          'n', (random() * 1e9)::bigint,
                          'tag', substr(md5(random()::text), 1, 12), 'ok', random() < 0.5)
FROM generate_series(1, {rows}) g;
ALTER TABLE events ADD PRIMARY KEY (id);
CREATE INDEX events_created_at ON events (created_at);
VACUUM (FREEZE, ANALYZE) events;
"""


def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rows", type=int, default=3_000_000,
                        help="rows in the source table (about 300 bytes each; default 3000000)")
    parser.add_argument("--timeout", type=float, default=3600,
                        help="seconds a pgvault job may take before the run gives up")
    parser.add_argument("--burst-client", choices=("raw", "httpx"), default="raw",
                        help="client of the 50-client monitoring burst (see RawClient)")
    return parser


# -- PostgreSQL ------------------------------------------------------------------------------------

def pg_args(db: str) -> list[str]:
    return ["-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, "-d", db]


def dsn(db: str) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{db}"


def psql(db: str, sql: str) -> str:
    out = subprocess.run(["psql", *pg_args(db), "-v", "ON_ERROR_STOP=1", "-qAtX"], input=sql,
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def create_db(name: str) -> None:
    psql("postgres", f'CREATE DATABASE "{name}"')


def drop_databases(prefix: str) -> list[str]:
    names = psql("postgres", f"SELECT datname FROM pg_database "
                             f"WHERE starts_with(datname, '{prefix}')").split()
    for name in names:
        psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return names


def checkpoint() -> None:
    """Flush dirty buffers so that a timed step does not pay for the previous one's writes."""
    psql("postgres", "CHECKPOINT")


# -- timing helpers --------------------------------------------------------------------------------

def timed(cmd: list[str] | str, *, stdout: Any = subprocess.DEVNULL,
          env: dict[str, str] | None = None) -> float:
    """Run a command (a list, or a bash pipeline with pipefail) and return its wall time."""
    if isinstance(cmd, str):
        cmd = ["bash", "-o", "pipefail", "-c", cmd]
    started = time.perf_counter()
    proc = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, env=env, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd!r} exited {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace')[-2000:]}")
    return elapsed


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100), or None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil
    return ordered[int(rank) - 1]


def mb(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.1f} MB"


def secs(n: float | None) -> str:
    return "n/a" if n is None else f"{n:.2f} s"


def ms(n: float | None) -> str:
    return "n/a" if n is None else f"{n * 1000:.1f} ms"


def verdict(value: float | None, limit: float, *, strict: bool = False) -> str:
    if value is None:
        return "n/a"
    ok = value < limit if strict else value <= limit
    return "PASS" if ok else "MISS"


def print_table(title: str, rows: list[tuple[str, str, str, str]]) -> None:
    header = ("figure", "value", "target", "")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}")
    print(line)
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if row is header:
            print(line)
    print(line, flush=True)


# -- memory of the service -------------------------------------------------------------------------

@dataclass
class RssStats:
    service_peak: int = 0
    service_start: int = 0
    children_peak_total: int = 0
    children_peak: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    # CPU seconds while the job ran: the machine's busy time (all cores), the service process,
    # its child processes by program (last sample of each), and this process (moto's S3 server)
    cpu_busy: float = 0.0
    cpu_iowait: float = 0.0
    cpu_service: float = 0.0
    cpu_children: dict[str, float] = field(default_factory=dict)
    cpu_bench: float = 0.0
    wall: float = 0.0


class RssSampler:
    """Sample the service process's RSS (and, separately, its child processes') every 50 ms."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.proc = psutil.Process(pid)
        self.cmdline = self.proc.cmdline()
        self.interval = interval
        self.stats = RssStats()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssStats:
        self.stats.service_start = self.proc.memory_info().rss
        self._cpu0 = self._cpu()
        self._child_cpu: dict[int, tuple[str, float]] = {}
        self._thread.start()
        return self.stats

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        s = self.stats
        (busy0, io0, svc0, bench0, t0), (busy1, io1, svc1, bench1, t1) = self._cpu0, self._cpu()
        s.cpu_busy, s.cpu_iowait = busy1 - busy0, io1 - io0
        s.cpu_service, s.cpu_bench, s.wall = svc1 - svc0, bench1 - bench0, t1 - t0
        for name, cpu in self._child_cpu.values():
            s.cpu_children[name] = s.cpu_children.get(name, 0.0) + cpu

    def _cpu(self) -> tuple[float, float, float, float, float]:
        sys_t = psutil.cpu_times()
        iowait = getattr(sys_t, "iowait", 0.0)
        busy = sum(sys_t) - sys_t.idle - iowait
        svc = self.proc.cpu_times()
        own = psutil.Process().cpu_times()
        return (busy, iowait, svc.user + svc.system, own.user + own.system, time.perf_counter())

    def _run(self) -> None:
        s = self.stats
        while not self._stop.is_set():
            try:
                s.service_peak = max(s.service_peak, self.proc.memory_info().rss)
                total = 0
                per_name: dict[str, int] = {}
                for child in self.proc.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        if child.cmdline() == self.cmdline:
                            continue  # forked, not yet exec'd: the service's own pages
                        rss = child.memory_info().rss
                        name = child.name()
                        per_name[name] = per_name.get(name, 0) + rss
                        total += rss
                        cpu = child.cpu_times()
                        self._child_cpu[child.pid] = (name, cpu.user + cpu.system)
                s.children_peak_total = max(s.children_peak_total, total)
                for name, rss in per_name.items():
                    s.children_peak[name] = max(s.children_peak.get(name, 0), rss)
                s.samples += 1
            except psutil.Error:
                return
            self._stop.wait(self.interval)


# -- concurrent latency probes (separate processes, so this process's moto server and GIL do not
# -- add to the latencies they measure) ---------------------------------------------------------

def healthz_probe(base_url: str, ready: Any, go: Any, stop: Any, out: Any, max_n: int,
                  max_s: float, pause: float) -> None:
    samples: list[tuple[float, float, int]] = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        client.get("/healthz")  # connect before the clock starts
        ready.set()
        while not go.wait(0.02):
            if stop.is_set():
                out.put(samples)
                return
        deadline = time.monotonic() + max_s
        while not stop.is_set() and len(samples) < max_n and time.monotonic() < deadline:
            t0 = time.time()
            started = time.perf_counter()
            try:
                status = client.get("/healthz").status_code
            except httpx.HTTPError:
                status = 0
            samples.append((t0, time.perf_counter() - started, status))
            time.sleep(pause)
    out.put(samples)


def monitoring_probe(base_url: str, token: str, target: str, ready: Any, go: Any, stop: Any,
                     out: Any, clients: int, max_rounds: int, max_s: float, period: float,
                     kind: str) -> None:
    asyncio.run(_monitoring(base_url, token, target, ready, go, stop, out, clients, max_rounds,
                            max_s, period, kind))


class RawClient:
    """One HTTP/1.1 keep-alive connection that sends GETs: a lean client.

    Fifty httpx clients in one process spend about a millisecond of CPU a request; on two cores,
    shared with the service and the backup, that queues the burst in the client itself (50
    concurrent /healthz calls measured p99 1.1-1.6 s through one httpx.AsyncClient, 26 ms through
    this), so the figure would describe httpx, not the service. ``--burst-client httpx`` keeps the
    httpx variant (one AsyncClient per client) for comparison.
    """

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        host, _, port = base_url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port or 80)
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.extra = f"Host: {host}\r\n{extra}"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def get(self, path: str) -> int:
        if self.writer is None:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        try:
            self.writer.write(f"GET {path} HTTP/1.1\r\n{self.extra}\r\n".encode())
            await self.writer.drain()
            head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            status_line, *lines = head.split("\r\n")
            fields = {k.strip().lower(): v.strip() for k, _, v in
                      (line.partition(":") for line in lines if line)}
            if fields.get("transfer-encoding", "").lower() == "chunked":
                while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                    await self.reader.readexactly(size + 2)
                await self.reader.readuntil(b"\r\n")
            else:
                await self.reader.readexactly(int(fields.get("content-length", "0")))
            if fields.get("connection", "").lower() == "close":
                await self.close()
            return int(status_line.split()[1])
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


class _HttpxClient:
    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        self.client = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30)

    async def connect(self) -> None:
        await self.client.get("/healthz")

    async def get(self, path: str) -> int:
        return (await self.client.get(path)).status_code

    async def close(self) -> None:
        await self.client.aclose()


async def _monitoring(base_url: str, token: str, target: str, ready: Any, go: Any, stop: Any,
                      out: Any, clients: int, max_rounds: int, max_s: float, period: float,
                      kind: str) -> None:
    samples: list[tuple[float, float, int]] = []
    windows: list[tuple[float, float]] = []  # (start, end) of each burst, wall clock
    headers = {"Authorization": f"Bearer {token}"}
    make = RawClient if kind == "raw" else _HttpxClient
    pool = [make(base_url, headers) for _ in range(clients)]

    async def one(client: RawClient | _HttpxClient, view: str) -> None:
        t0 = time.time()
        started = time.perf_counter()
        try:
            status = await asyncio.wait_for(
                client.get(f"/v1/targets/{target}/monitoring/{view}"), 30)
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError, httpx.HTTPError):
            status = 0
        samples.append((t0, time.perf_counter() - started, status))

    async def dashboard(client: RawClient | _HttpxClient) -> None:
        for view in MONITORING_VIEWS:  # one client: the three views, one after the other
            await one(client, view)

    try:
        await asyncio.gather(*(c.connect() for c in pool))  # connected before the clock starts
        ready.set()
        while not await asyncio.to_thread(go.wait, 0.02):
            if stop.is_set():
                out.put((samples, windows))
                return
        deadline = time.monotonic() + max_s
        for _ in range(max_rounds):
            if stop.is_set() or time.monotonic() > deadline:
                break
            round_start = time.time()
            await asyncio.gather(*(dashboard(c) for c in pool))
            windows.append((round_start, time.time()))
            # The next burst a period after this one started (at once if this one took longer).
            await asyncio.sleep(max(0.0, round_start + period - time.time()))
    finally:
        for c in pool:
            with contextlib.suppress(Exception):
                await c.close()
    out.put((samples, windows))


@dataclass
class ProbeResult:
    latencies: list[float]
    errors: int
    total: int
    # /healthz only: the latencies of calls sent while a monitoring burst was in flight, and not
    in_burst: list[float] = field(default_factory=list)
    between_bursts: list[float] = field(default_factory=list)
    bursts: int = 0

    def summary(self) -> dict[str, Any]:
        out = {"n": len(self.latencies), "errors": self.errors,
               "p50_ms": _ms(percentile(self.latencies, 50)),
               "p99_ms": _ms(percentile(self.latencies, 99)),
               "max_ms": _ms(max(self.latencies) if self.latencies else None),
               "samples_outside_window": self.total - len(self.latencies) - self.errors}
        if self.in_burst or self.between_bursts:
            out["in_burst"] = {"n": len(self.in_burst),
                               "p99_ms": _ms(percentile(self.in_burst, 99))}
            out["between_bursts"] = {"n": len(self.between_bursts),
                                     "p99_ms": _ms(percentile(self.between_bursts, 99))}
        if self.bursts:
            out["bursts"] = self.bursts
        return out


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 1)


class Probes:
    """A /healthz loop (one client, a call every 20 ms) and bursts of 50 concurrent clients that
    each read the three monitoring views in turn (a burst every ``period`` seconds), each in its
    own process, from the moment the job runs until it ends; bounded in count and time."""

    def __init__(self, base_url: str, token: str, target: str, *, clients: int = 50,
                 healthz_max: int = 5000, rounds_max: int = 15, period: float = 1.0,
                 max_s: float = 600, kind: str = "raw") -> None:
        ctx = multiprocessing.get_context("spawn")
        self.go, self.stop = ctx.Event(), ctx.Event()
        ready_h, ready_m = ctx.Event(), ctx.Event()
        self.ready = (ready_h, ready_m)
        self.q_h: Any = ctx.Queue()
        self.q_m: Any = ctx.Queue()
        self.procs = [
            ctx.Process(target=healthz_probe, daemon=True,
                        args=(base_url, ready_h, self.go, self.stop, self.q_h, healthz_max,
                              max_s, 0.02)),
            ctx.Process(target=monitoring_probe, daemon=True,
                        args=(base_url, token, target, ready_m, self.go, self.stop, self.q_m,
                              clients, rounds_max, max_s, period, kind)),
        ]

    def start(self) -> None:
        for proc in self.procs:
            proc.start()
        for event in self.ready:
            if not event.wait(60):
                raise RuntimeError("a latency probe process did not start")

    def idle(self, seconds: float) -> tuple[ProbeResult, ProbeResult]:
        """Run the probes for ``seconds`` with no job running: the reference figures."""
        self.start()
        started = time.time()
        self.go.set()
        time.sleep(seconds)
        return self.finish(started, float("inf"))

    def finish(self, started: float, ended: float) -> tuple[ProbeResult, ProbeResult]:
        """Stop the probes; keep the samples sent while the job ran (wall clock)."""
        self.stop.set()
        self.go.set()
        h_samples = self.q_h.get(timeout=120)
        m_samples, windows = self.q_m.get(timeout=120)
        for proc in self.procs:
            proc.join(30)
        results = []
        for samples in (h_samples, m_samples):
            during = [(t0, dt, st) for t0, dt, st in samples if started <= t0 < ended]
            results.append(ProbeResult([dt for _, dt, st in during if st == 200],
                                       sum(1 for *_, st in during if st != 200), len(samples)))
        health, monitoring = results
        monitoring.bursts = sum(1 for a, _ in windows if started <= a < ended)
        for t0, dt, st in h_samples:
            if st == 200 and started <= t0 < ended:
                overlaps = any(a < t0 + dt and t0 < b for a, b in windows)
                (health.in_burst if overlaps else health.between_bursts).append(dt)
        return health, monitoring

    def kill(self) -> None:
        self.stop.set()
        self.go.set()
        for proc in self.procs:
            if proc.is_alive():
                proc.join(5)
            if proc.is_alive():
                proc.kill()


# -- the environment: S3, gpg, databases, the service ----------------------------------------------

@dataclass
class BenchEnv:
    tag: str
    prefix: str
    tmp: Path
    gpg_home: Path
    fpr: str
    s3_endpoint: str
    bucket: str
    source_db: str
    rows: int
    token: str
    base_url: str = ""
    service: subprocess.Popen[bytes] | None = None
    service_log: Path | None = None
    db_size: int = 0

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.auth, timeout=60)

    def log_tail(self, n: int = 40) -> str:
        if self.service_log is None or not self.service_log.exists():
            return ""
        return "\n".join(self.service_log.read_text(errors="replace").splitlines()[-n:])

    def gpg(self, *args: str) -> list[str]:
        return ["gpg", "--homedir", str(self.gpg_home), "--batch", "--yes", *args]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _gen_key(home: Path) -> str:
    home.mkdir(mode=0o700)
    uid = "bench <b@x.invalid>"
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "",
                    "--quick-gen-key", uid, "future-default", "default", "never"],
                   check=True, capture_output=True)
    out = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--with-colons",
                          "--list-keys", uid], check=True, capture_output=True, text=True).stdout
    return next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))


def _raise_on_sigterm() -> None:
    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def bench_env(rows: int, target_options: dict[str, Any] | None = None) -> Iterator[BenchEnv]:
    """Set everything up; tear everything down on the way out, whatever happened."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    _raise_on_sigterm()
    tag = secrets.token_hex(3)
    prefix = f"pgvb_{tag}"
    tmp = Path(tempfile.mkdtemp(prefix="pgvb-", dir="/tmp"))
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    os.environ.pop("AWS_PROFILE", None)
    moto: Any = None
    env: BenchEnv | None = None
    try:
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        host, port = moto.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        import boto3

        bucket = f"pgvb-{tag}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket=bucket)
        home = tmp / "g"
        fpr = _gen_key(home)

        source = f"{prefix}_src"
        log(f"creating {source} with {rows} rows")
        started = time.perf_counter()
        create_db(source)
        psql(source, SOURCE_SQL.format(rows=int(rows)))
        db_size = int(psql(source, "SELECT pg_database_size(current_database())"))
        log(f"{source}: {mb(db_size)} in {time.perf_counter() - started:.1f} s")

        env = BenchEnv(tag=tag, prefix=prefix, tmp=tmp, gpg_home=home, fpr=fpr,
                       s3_endpoint=endpoint, bucket=bucket, source_db=source, rows=rows,
                       token=f"bench-{secrets.token_hex(16)}", db_size=db_size)
        _start_service(env, target_options or {})
        yield env
    finally:
        steps: list[tuple[str, Callable[[], object]]] = []
        if env is not None and env.service is not None:
            steps.append(("stop the service", lambda: _stop_service(env)))
        if moto is not None:
            steps.append(("stop moto", moto.stop))
        steps.append(("stop gpg-agent", lambda: _stop_gpg_agent(tmp / "g")))
        steps.append(("drop databases", lambda: log(
            f"dropped {', '.join(drop_databases(prefix)) or 'nothing'}")))
        steps.append(("remove the scratch folder", lambda: shutil.rmtree(tmp, True)))
        for what, step in steps:
            try:
                step()
            except Exception as exc:
                log(f"cleanup: could not {what}: {exc}")


def _stop_gpg_agent(home: Path) -> None:
    """``gpgconf --kill all``, then make sure: an agent left behind keeps the folder alive."""
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True,
                   timeout=30)
    deadline = time.monotonic() + 5
    for proc in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["name"] == "gpg-agent" and str(home) in (proc.info["cmdline"] or []):
                with contextlib.suppress(psutil.TimeoutExpired):
                    proc.wait(max(0.1, deadline - time.monotonic()))
                if proc.is_running():
                    proc.terminate()
                    proc.wait(5)


def _start_service(env: BenchEnv, target_options: dict[str, Any], *, name: str = "meta",
                   extra_env: dict[str, str] | None = None) -> None:
    """``name``: the service's metadata database suffix and log name (a second service needs
    its own, or the two runners would claim each other's jobs); ``extra_env``: more settings."""
    meta = f"{env.prefix}_{name}"
    create_db(meta)
    base = {k: v for k, v in os.environ.items() if not k.startswith("PGVAULT_")}
    service_env = {
        **base,
        "PGVAULT_DATABASE_URL": dsn(meta),
        "PGVAULT_STORAGE_URL": f"s3://{env.bucket}/bench",
        "PGVAULT_S3_ENDPOINT_URL": env.s3_endpoint,
        "PGVAULT_GPG_HOME": str(env.gpg_home),
        "PGVAULT_GPG_RECIPIENTS": json.dumps([env.fpr]),
        "PGVAULT_TARGETS": json.dumps({"bench": {"dsn": dsn(env.source_db),
                                                 **target_options}}),
        "PGVAULT_API_TOKENS": json.dumps([{
            "name": "bench", "role": "admin",
            "sha256": hashlib.sha256(env.token.encode()).hexdigest()}]),
        # No scheduled jobs in the middle of a measurement.
        "PGVAULT_SCHEDULER_ENABLED": "false",
        "PGVAULT_WORK_DIR": str(env.tmp),
        **(extra_env or {}),
    }
    subprocess.run([PY, "-m", "alembic", "upgrade", "head"], cwd=ROOT, env=service_env,
                   check=True, capture_output=True)
    port = _free_port()
    env.base_url = f"http://127.0.0.1:{port}"
    env.service_log = env.tmp / ("service.log" if name == "meta" else f"service-{name}.log")
    with env.service_log.open("wb") as out:
        env.service = subprocess.Popen(
            [PY, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
             "--no-access-log"],
            cwd=ROOT, env=service_env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    with httpx.Client(base_url=env.base_url, timeout=15) as client:
        while True:
            if env.service.poll() is not None:
                raise RuntimeError(f"the service exited {env.service.returncode}:\n"
                                   f"{env.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/readyz").status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service did not become ready:\n{env.log_tail()}")
            time.sleep(0.2)
    log(f"service pid {env.service.pid} ready on {env.base_url}")


@contextlib.contextmanager
def second_service(env: BenchEnv, name: str, extra_env: dict[str, str],
                   target_options: dict[str, Any] | None = None) -> Iterator[BenchEnv]:
    """Another service on the same database, S3 endpoint and keys, with its own metadata
    database and more settings; stopped on the way out."""
    other = dataclasses.replace(env, base_url="", service=None, service_log=None)
    try:
        _start_service(other, target_options or {}, name=name, extra_env=extra_env)
        yield other
    finally:
        _stop_service(other)


def _stop_service(env: BenchEnv) -> None:
    proc = env.service
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# -- jobs over the API -----------------------------------------------------------------------------

@dataclass
class JobRun:
    job: dict[str, Any]
    wall_s: float
    started_wall: float  # time.time() when the job was first seen running
    ended_wall: float  # time.time() when it was first seen finished
    phases: list[tuple[str, float]]  # (phase, seconds after the POST when first seen)
    rss: RssStats

    @property
    def result(self) -> dict[str, Any]:
        return self.job.get("result") or {}

    def phase_durations(self) -> dict[str, float]:
        marks = [*self.phases, ("end", self.wall_s)]
        out: dict[str, float] = {}
        for (name, t), (_, t_next) in itertools.pairwise(marks):
            out[name] = round(out.get(name, 0) + t_next - t, 2)
        return out


def run_job(env: BenchEnv, path: str, body: dict[str, Any] | None = None, *, timeout: float,
            on_running: Callable[[], None] | None = None, poll: float = 0.1) -> JobRun:
    """POST a job, poll it until it ends while sampling the service's memory; raise if it failed."""
    assert env.service is not None
    with env.client() as client, RssSampler(env.service.pid) as rss:
        started = time.perf_counter()
        resp = client.post(path, json=body)
        if resp.status_code != 202:
            raise RuntimeError(f"POST {path}: {resp.status_code} {resp.text}")
        job_id = resp.json()["id"]
        phases: list[tuple[str, float]] = []
        running_wall = 0.0
        while True:
            job = client.get(f"/v1/jobs/{job_id}").json()
            now = time.perf_counter() - started
            if job["status"] != "queued" and not running_wall:
                running_wall = time.time()
                if on_running is not None:
                    on_running()
            if job["status"] in TERMINAL:
                wall = now
                ended_wall = time.time()
                break
            if job["status"] == "running" and (not phases or phases[-1][0] != job["phase"]):
                phases.append((job["phase"], now))
            if now > timeout:
                raise RuntimeError(f"job {job_id} still {job['status']} at {job['phase']}")
            time.sleep(poll)
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} {job['status']}: {job.get('error')}\n{env.log_tail()}")
    return JobRun(job, wall, running_wall, ended_wall, phases, rss)


def rss_summary(stats: RssStats) -> dict[str, Any]:
    return {"service_peak_mb": round(stats.service_peak / 1e6, 1),
            "service_at_start_mb": round(stats.service_start / 1e6, 1),
            "children_peak_total_mb": round(stats.children_peak_total / 1e6, 1),
            "children_peak_mb": {k: round(v / 1e6, 1)
                                 for k, v in sorted(stats.children_peak.items())},
            "samples": stats.samples}


def cpu_summary(stats: RssStats) -> dict[str, Any]:
    """Where the CPU went while the job ran (seconds; the machine has ``cpus`` cores)."""
    children = {k: round(v, 1) for k, v in sorted(stats.cpu_children.items())}
    known = stats.cpu_service + stats.cpu_bench + sum(stats.cpu_children.values())
    return {"wall_s": round(stats.wall, 1), "cpus": os.cpu_count(),
            "busy_s": round(stats.cpu_busy, 1),
            "utilisation": round(stats.cpu_busy / (stats.wall * (os.cpu_count() or 1)), 2)
            if stats.wall else None,
            "iowait_s": round(stats.cpu_iowait, 1), "service_s": round(stats.cpu_service, 1),
            "children_s": children, "bench_process_moto_s": round(stats.cpu_bench, 1),
            "other_s": round(stats.cpu_busy - known, 1)}


def header(env: BenchEnv) -> dict[str, Any]:
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "rows": env.rows,
            "database_size_bytes": env.db_size, "cpus": os.cpu_count(),
            "pg_dump": subprocess.run(["pg_dump", "--version"], capture_output=True,
                                      text=True).stdout.strip()}
