"""Pipelines of argument-vector stages, connected by OS pipes, optionally fed from Python.

``Pipeline([pg_dump, zstd, gpg])`` runs ``pg_dump | zstd | gpg`` with kernel pipes between the
stages (the data never passes through Python until the last stage's output), and lets the caller
read that output in chunks. Rules it enforces:

- argument vectors only, never a shell;
- children get a minimal environment: ``PATH`` and a locale, plus what the stage names (secrets such
  as ``PGPASSWORD`` travel there, never in argv); the service's own environment (AWS keys, DSNs)
  is not inherited;
- each child leads its own process group, so :meth:`Pipeline.kill` reaches anything it forked;
- every stderr is drained concurrently (a full stderr pipe would hang the child) and its tail kept
  for the error message;
- :meth:`Pipeline.wait` checks every exit code: when ``pg_dump`` dies mid-stream, ``zstd`` and
  ``gpg`` see a clean end of input and exit 0, so only the upstream code tells the truth;
- a ``feed=True`` pipeline's input comes from Python (:meth:`Pipeline.write`, blocking writes on a
  thread of its own), so no caller builds pipes or descriptors by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

STDERR_TAIL = 4000
KILL_AFTER_S = 5.0


@dataclass(frozen=True)
class Stage:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # File descriptors the child keeps open (e.g. gpg's --passphrase-fd).
    pass_fds: tuple[int, ...] = ()


class PipelineError(Exception):
    """One or more stages exited non-zero; ``failures`` lists them, most downstream first."""

    def __init__(self, failures: list[tuple[str, int, str]]) -> None:
        self.failures = failures
        parts = [f"{name} exited with {describe_code(code)}: {err or 'no message'}"
                 for name, code, err in failures]
        super().__init__("; ".join(parts))


# Lines of PostgreSQL client output that quote row data or whole statements (key values, COPY
# input lines, "Command was: INSERT ..."): job records and errors are read by every viewer.
_DATA_LINES = ("DETAIL:", "CONTEXT:", "Command was:", "LINE ", "QUERY:", "WHERE:")
_MAX_LINE = 300


# What a tool's own message starts with. A statement quoted after "Command was:" runs on over
# as many lines as it has (a user mapping's options, password included, one per line) until the
# next of these.
_TOOL_LINES = ("pg_restore:", "pg_dump:", "pg_dumpall:", "psql:", "gpg:", "zstd:")


def reduce_stderr(text: str) -> str:
    """The last few error lines of a tool's stderr, without the ones that quote data."""
    kept: list[str] = []
    quoting = False  # inside a statement that "Command was:" began
    for raw in text.splitlines():
        line = " ".join(raw.split())
        if quoting and not line.startswith(_TOOL_LINES):
            continue
        quoting = False
        if line.startswith("Command was:") or " Command was: " in line:
            quoting = True
        if not line or line.startswith(_DATA_LINES) or line.startswith("^"):
            continue
        line = line.split(" Command was: ", 1)[0]
        kept.append(line[:_MAX_LINE])
    return " | ".join(kept[-4:])


def describe_code(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"code {code}"


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    env.update(extra)
    return env


class Pipeline:
    """``stages[0] | stages[1] | ...``; see the module docstring."""

    def __init__(self, stages: Sequence[Stage], *, stdin: int | None = None,
                 stdout: int | None = None, feed: bool = False) -> None:
        """``stdin``/``stdout``: file descriptors for the ends; ``None`` means /dev/null for
        stdin and a pipe read through :meth:`read` for stdout. ``feed``: the first stage reads
        a pipe that :meth:`write` fills from Python and :meth:`close_input` ends."""
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        if feed and stdin is not None:
            raise ValueError("a fed pipeline has no stdin descriptor")
        self.stages = list(stages)
        self._stdin = stdin
        self._stdout = stdout
        self._feed = feed
        self._writer: PipeWriter | None = None
        self.procs: list[asyncio.subprocess.Process] = []
        self._stderr: list[bytearray] = []
        self._drains: list[asyncio.Task[None]] = []

    async def start(self) -> Pipeline:
        fds_to_close: list[int] = []
        feed_read: int | None = None
        if self._feed:
            feed_read, feed_write = os.pipe()
            self._writer = PipeWriter(feed_write, "feed")
            self._stdin = feed_read
        try:
            prev_read: int | None = self._stdin
            for i, stage in enumerate(self.stages):
                last = i == len(self.stages) - 1
                if last:
                    out: int | None = self._stdout
                else:
                    read_end, write_end = os.pipe()
                    fds_to_close += [read_end, write_end]
                    out = write_end
                proc = await asyncio.create_subprocess_exec(
                    *stage.argv,
                    stdin=prev_read if prev_read is not None else asyncio.subprocess.DEVNULL,
                    stdout=out if out is not None else asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=child_env(stage.env),
                    start_new_session=True,
                    pass_fds=stage.pass_fds,
                    limit=1024 * 1024,
                )
                self.procs.append(proc)
                buf = bytearray()
                self._stderr.append(buf)
                self._drains.append(asyncio.create_task(_drain(proc, buf)))
                if not last:
                    os.close(write_end)
                    fds_to_close.remove(write_end)
                if prev_read is not None and prev_read != self._stdin:
                    os.close(prev_read)
                    fds_to_close.remove(prev_read)
                prev_read = None if last else read_end
        except BaseException:
            for fd in fds_to_close:
                with contextlib.suppress(OSError):
                    os.close(fd)
            await asyncio.shield(self.kill())
            raise
        finally:
            if feed_read is not None:  # the first stage holds its own copy now
                os.close(feed_read)
                self._stdin = None
        return self

    async def write(self, data: bytes, digest: Any = None) -> None:
        """Write all of ``data`` to the first stage's stdin (a ``feed`` pipeline), updating
        ``digest`` with it first; :class:`BrokenPipeError` when that stage stopped reading (its
        exit code says why)."""
        assert self._writer is not None, "write() needs a started pipeline with feed=True"
        await self._writer.write(data, digest)

    async def close_input(self) -> None:
        """End of input for the first stage of a ``feed`` pipeline. Safe to call twice, and
        after :meth:`kill` (which closes it too, once the stages are gone)."""
        if self._writer is not None:
            await self._writer.close()

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes of the last stage's output; ``b""`` at the end."""
        stdout = self.procs[-1].stdout
        assert stdout is not None, "read() needs the pipeline's stdout to be a pipe"
        return await stdout.read(n)

    async def read_exactly(self, n: int) -> bytes:
        """``n`` bytes, or fewer only at the end of the output."""
        chunks: list[bytes] = []
        size = 0
        while size < n:
            chunk = await self.read(n - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    async def wait(self) -> None:
        """Wait for every stage; raise :class:`PipelineError` if any exited non-zero."""
        codes = [await proc.wait() for proc in self.procs]
        await asyncio.gather(*self._drains, return_exceptions=True)
        failures = [
            (stage.name, code, self.stderr_tail(i))
            for i, (stage, code) in enumerate(zip(self.stages, codes, strict=True))
            if code != 0
        ]
        if failures:
            raise PipelineError(list(reversed(failures)))

    def stderr_tail(self, index: int) -> str:
        text = bytes(self._stderr[index][-STDERR_TAIL:]).decode("utf-8", "replace")
        return reduce_stderr(text)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def kill(self) -> None:
        """Terminate every stage's process group, then kill what is left. Safe to call twice."""
        live = [p for p in self.procs if p.returncode is None]
        for proc in live:
            _signal_group(proc.pid, signal.SIGTERM)
        # asyncio's wait() returns only once the process's pipes are closed too: output nobody
        # reads any more (a stuck upload stopped reading) would hold it until the kill below.
        stdout = self.procs[-1].stdout if live else None
        discard = asyncio.create_task(_discard(stdout)) if stdout is not None else None
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in live)), KILL_AFTER_S)
        except TimeoutError:
            for proc in live:
                _signal_group(proc.pid, signal.SIGKILL)
            await asyncio.gather(*(p.wait() for p in live))
        finally:
            if discard is not None:
                discard.cancel()
                await asyncio.gather(discard, return_exceptions=True)
        # Children that forked keep the group alive: make sure nothing of it survives. Only the
        # groups of stages that were alive above: a reaped stage's pid may belong to another.
        for proc in live:
            _signal_group(proc.pid, signal.SIGKILL)
        for task in self._drains:
            task.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)
        # The reader is dead: a write still blocked has ended (EPIPE), so joining cannot hang.
        await self.close_input()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _discard(stream: asyncio.StreamReader) -> None:
    """Read and drop what is left of a killed pipeline's output, to its end."""
    with contextlib.suppress(RuntimeError, OSError):  # RuntimeError: another read is waiting
        while await stream.read(1 << 20):
            pass


async def _drain(proc: asyncio.subprocess.Process, buf: bytearray) -> None:
    assert proc.stderr is not None
    while chunk := await proc.stderr.read(65536):
        buf += chunk
        if len(buf) > 4 * STDERR_TAIL:
            del buf[: len(buf) - STDERR_TAIL]


async def run(stage: Stage, *, stdin: int | None = None, timeout: float | None = None) -> bytes:
    """Run one stage to completion and return its stdout; raise :class:`PipelineError` on failure.

    For small outputs only (versions, table-of-contents listings)."""
    pipeline = await Pipeline([stage], stdin=stdin).start()
    try:
        out = bytearray()
        async with asyncio.timeout(timeout):
            while chunk := await pipeline.read(1 << 20):
                out += chunk
            await pipeline.wait()
        return bytes(out)
    except BaseException:
        await asyncio.shield(pipeline.kill())
        raise


class PipeWriter:
    """Blocking writes into a pipe to a child (its stdin), off the event loop; a ``feed``
    :class:`Pipeline` writes through one.

    All writes run on one thread of its own, and :meth:`close` joins that thread before it closes
    the descriptor, once: a write still looping after a cancel can never go on into whatever file
    reuses the descriptor number. Kill the reading child first on a failure path, so a blocked
    write ends (EPIPE)."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"pgvault-{name}")
        self._closing: asyncio.Future[None] | None = None

    async def write(self, data: bytes, digest: Any = None) -> None:
        """Write all of ``data`` (updating ``digest`` with it first, on the same thread)."""
        await asyncio.get_running_loop().run_in_executor(self._thread, _write_all, self.fd,
                                                         data, digest)

    async def close(self) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._join_and_close())
        await asyncio.shield(self._closing)

    async def _join_and_close(self) -> None:
        await asyncio.to_thread(self._thread.shutdown, wait=True)
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _write_all(fd: int, data: bytes, digest: Any) -> None:
    if digest is not None:
        digest.update(data)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
