"""Which PostgreSQL client programs are installed, and which one fits a given server (SPEC 2.13).

Discovery runs once at start-up, in a thread (it starts ``--version`` processes). It looks in

1. ``PGVAULT_PG_BIN_DIRS`` when set, and only there (an operator pinning exact installs);
2. otherwise the Debian/PGDG layout ``/usr/lib/postgresql/<major>/bin``, then each directory of
   ``PATH``. Debian's ``/usr/bin/pg_dump`` is ``pg_wrapper``, which picks a version by its own
   rules at each call: it is skipped, the versioned directories behind it are what counts.

Each program found is one :class:`Client` (its path, version and major); the first directory
that gives a program of some major wins. :meth:`PgClients.choose` picks, per program and server:

- the server's own major when installed, else the lowest newer one (pg_dump refuses servers newer
  than itself, and a newer pg_restore or psql talks to older servers);
- for pg_restore, never one older than the pg_dump that wrote the archive (it cannot read the
  newer archive format);
- nothing fitting: :class:`NoFittingClient`, whose message says which package to install.

A missing major is not a start-up problem: only the jobs whose server needs it fail, at their
first step. Start-up fails only when a program has no version at all.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

PROGRAMS = ("pg_dump", "pg_dumpall", "pg_restore", "psql")
DEBIAN_ROOT = Path("/usr/lib/postgresql")
_VERSION_RE = re.compile(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?")


class NoFittingClient(Exception):
    """No installed version of a program fits the server (or archive) at hand."""


@dataclass(frozen=True)
class Client:
    program: str
    path: str
    version: str  # "15.20"
    major: int


def parse_version(text: str) -> tuple[int, str] | None:
    """``(major, "major.minor")`` from a ``--version`` line (``pg_dump (PostgreSQL) 15.20 ...``)."""
    match = _VERSION_RE.search(text)
    if not match:
        return None
    major, minor = match.group(1), match.group(2)
    return int(major), f"{major}.{minor}" if minor is not None else major


@dataclass(frozen=True)
class PgClients:
    """The client programs installed, by program and major."""

    clients: tuple[Client, ...] = ()

    def majors(self, program: str) -> list[int]:
        return sorted({c.major for c in self.clients if c.program == program})

    def missing_programs(self) -> list[str]:
        return [p for p in PROGRAMS if not self.majors(p)]

    def summary(self) -> dict[str, list[str]]:
        """``{"pg_dump": ["15.20", "17.6"], ...}`` for the start-up log and status."""
        return {p: [c.version for c in sorted(self._of(p), key=lambda c: c.major)]
                for p in PROGRAMS}

    def choose(self, program: str, server_major: int, *, archive_major: int = 0) -> Client:
        """The ``program`` for a PostgreSQL ``server_major`` server: that major, else the lowest
        newer; for pg_restore at least ``archive_major`` (the archive's pg_dump)."""
        floor = max(server_major, archive_major)
        fitting = sorted((c for c in self._of(program) if c.major >= floor),
                         key=lambda c: c.major)
        if fitting:
            return fitting[0]
        if archive_major > server_major:
            raise NoFittingClient(
                f"no {program} that reads archives of pg_dump {archive_major} is installed: "
                f"install postgresql-client-{archive_major}")
        raise NoFittingClient(
            f"no {program} for PostgreSQL {server_major} servers is installed: install "
            f"postgresql-client-{server_major}"
            + (f" (installed: {', '.join(map(str, self.majors(program)))})"
               if self.majors(program) else ""))

    def _of(self, program: str) -> list[Client]:
        return [c for c in self.clients if c.program == program]


def discover(bin_dirs: Sequence[Path] | None = None, *, path: str | None = None,
             debian_root: Path = DEBIAN_ROOT) -> PgClients:
    """Find the installed client programs (blocking: call it in a thread).

    ``bin_dirs``: the only directories to search when given (``PGVAULT_PG_BIN_DIRS``); else
    ``debian_root/<major>/bin`` and then ``path`` (default: this process's ``PATH``)."""
    if bin_dirs:
        dirs = list(bin_dirs)
    else:
        dirs = _debian_dirs(debian_root)
        search = os.environ.get("PATH", "") if path is None else path
        dirs += [Path(d) for d in search.split(os.pathsep) if d]
    found: list[Client] = []
    seen: set[tuple[str, int]] = set()
    for directory in _unique(dirs):
        for program in PROGRAMS:
            client = _probe(directory / program, program)
            if client is not None and (program, client.major) not in seen:
                seen.add((program, client.major))
                found.append(client)
    return PgClients(tuple(found))


def _debian_dirs(root: Path) -> list[Path]:
    try:
        majors = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())
    except OSError:
        return []
    return [root / str(m) / "bin" for m in majors]


def _unique(dirs: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def _probe(candidate: Path, program: str) -> Client | None:
    if not (candidate.is_file() and os.access(candidate, os.X_OK)):
        return None
    # pg_wrapper (Debian's /usr/bin/pg_dump and friends) chooses a version per call, from the
    # environment: not one fixed version that could be recorded.
    if Path(os.path.realpath(candidate)).name != program:
        return None
    try:
        out = subprocess.run([str(candidate), "--version"], capture_output=True, timeout=30,
                             env=_env(), check=False).stdout.decode(errors="replace")
    except (OSError, subprocess.SubprocessError):
        return None
    parsed = parse_version(out)
    if parsed is None:
        return None
    return Client(program=program, path=str(candidate), version=parsed[1], major=parsed[0])


def _env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}


def archive_major(pg_dump_version: str | None) -> int:
    """The major of the pg_dump that wrote an archive (its manifest's ``pg_dump_version``)."""
    text = pg_dump_version or ""
    # "15.20" since pgvault records the chosen client; older manifests hold the whole
    # "pg_dump (PostgreSQL) 15.20 (Debian ...)" line.
    parsed = parse_version(text) or parse_version(f"(PostgreSQL) {text.strip()}")
    return parsed[0] if parsed else 0


class ToolVersions(BaseModel):
    """The client programs a job used, with versions (``{"pg_dump": "15.20", ...}``): the
    ``tools`` of a manifest and of a job's result. Only the programs used appear (a None is left
    out when written), and an unknown program (a newer pgvault's) is kept."""

    model_config = ConfigDict(extra="allow")

    pg_dump: str | None = None
    pg_dumpall: str | None = None
    pg_restore: str | None = None
    psql: str | None = None

    @model_serializer(mode="wrap")
    def _used_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, str]:
        return {k: v for k, v in handler(self).items() if v is not None}

    def record(self, client: Client) -> None:
        setattr(self, client.program, client.version)

    def as_dict(self) -> dict[str, str]:
        """As a job's result stores it."""
        dumped: dict[str, str] = self.model_dump(mode="json")
        return dumped


@dataclass
class RestoreTools:
    """The pg_restore and psql one restore or verification uses against one server, chosen at
    its first step; ``used`` is what the job result records."""

    pg_restore: Client
    psql: Client
    server_major: int
    used: ToolVersions = field(default_factory=ToolVersions)

    @classmethod
    def choose(cls, clients: PgClients, server_major: int, archive: int) -> RestoreTools:
        return cls(pg_restore=clients.choose("pg_restore", server_major, archive_major=archive),
                   psql=clients.choose("psql", server_major), server_major=server_major)

    def use(self, client: Client) -> Client:
        self.used.record(client)
        return client

    @property
    def script_needs_fitting(self) -> bool:
        """A newer pg_restore writes a script for its own major: settings it SETs (17's
        ``transaction_timeout``) may not exist on the destination."""
        return self.pg_restore.major > self.server_major

