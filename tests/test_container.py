"""The container image's recipe, checked without Docker (no engine here, and base images cannot be
pulled): the Dockerfile's order and contents, its entrypoint run with stand-in programs, and the
lock file against pyproject.toml."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
LOCK = ROOT / "requirements.lock"


def instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of each Dockerfile line, continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stage(name: str | None) -> list[tuple[str, str]]:
    """The instructions of one build stage (``None``: the last, the image itself)."""
    stages: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            stages.append([])
        stages[-1].append(ins)
    if name is None:
        return stages[-1]
    return next(s for s in stages if s[0][1].endswith(f" AS {name}"))


def test_dependencies_are_installed_from_the_lock_before_the_code_is_copied() -> None:
    build = stage("build")
    steps = [f"{word} {args}" for word, args in build]
    lock_copy = next(i for i, s in enumerate(steps) if s.startswith("COPY requirements.lock"))
    deps = next(i for i, s in enumerate(steps)
                if s.startswith("RUN pip install") and "-r requirements.lock" in s)
    code = next(i for i, s in enumerate(steps) if s.startswith("COPY app"))
    pyproject = next(i for i, s in enumerate(steps) if s.startswith("COPY pyproject.toml"))
    assert lock_copy < deps < min(code, pyproject)
    assert "--require-hashes" in steps[deps]
    app_install = next(s for s in steps[code:] if s.startswith("RUN pip install"))
    assert "--no-deps" in app_install  # nothing unpinned comes in with the app


def test_the_image_carries_clients_13_to_17_and_says_so() -> None:
    image = stage(None)
    args = dict(a[1].split("=", 1) for a in image if a[0] == "ARG")
    assert args["PG_MAJORS"].strip('"').split() == ["13", "14", "15", "16", "17"]
    run = " ".join(a for w, a in image if w == "RUN")
    assert "apt.postgresql.org" in run and 'postgresql-client-${major}' in run
    labels = " ".join(a for w, a in image if w == "LABEL")
    assert "13, 14, 15, 16 and 17" in labels
    assert "13, 14, 15, 16 and 17" in DOCKERFILE.read_text().split("FROM", 1)[0]


def test_the_work_directory_is_a_volume_and_the_keyring_belongs_to_the_service_user() -> None:
    image = stage(None)
    env = " ".join(a for w, a in image if w == "ENV")
    assert "PGVAULT_WORK_DIR=/var/lib/pgvault/work" in env
    assert any(w == "VOLUME" and "/var/lib/pgvault/work" in a for w, a in image)
    user = next(a for w, a in image if w == "USER")
    setup = " ".join(a for w, a in image if w == "RUN")
    assert f"-o {user} -g {user} -m 0700 /var/lib/pgvault/gnupg" in setup
    readme = (ROOT / "README.md").read_text()
    assert "chown -R 10001:10001" in readme and "PGVAULT_WORK_DIR" in readme


def _fake_bin(folder: Path, name: str, log: Path, code: int = 0) -> None:
    path = folder / name
    path.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexit {code}\n')
    path.chmod(0o755)


def test_the_entrypoint_migrates_then_becomes_uvicorn(tmp_path: Path) -> None:
    """alembic and uvicorn are stand-ins that log their arguments (the real ones need the image)."""
    assert subprocess.run(["bash", "-n", str(ENTRYPOINT)]).returncode == 0
    assert ENTRYPOINT.stat().st_mode & 0o111
    image = stage(None)
    entry = next(a for w, a in image if w == "ENTRYPOINT")
    assert any(w == "COPY" and a.startswith("docker/entrypoint.sh") and entry.strip('[]" ') in a
               for w, a in image)
    log = tmp_path / "calls"
    _fake_bin(tmp_path, "alembic", log)
    _fake_bin(tmp_path, "uvicorn", log)
    env = {**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin"}
    subprocess.run([str(ENTRYPOINT), "--log-level", "info"], env=env, check=True)
    calls = log.read_text().splitlines()
    assert calls[0] == "alembic upgrade head"
    assert calls[1].startswith("uvicorn app.main:app --host 0.0.0.0 --port 8000")
    assert calls[1].endswith("--log-level info") and len(calls) == 2
    # A failed migration serves nothing.
    log.unlink()
    _fake_bin(tmp_path, "alembic", log, code=3)
    assert subprocess.run([str(ENTRYPOINT)], env=env).returncode == 3
    assert log.read_text().splitlines() == ["alembic upgrade head"]


def test_the_lock_pins_every_dependency_of_pyproject_within_its_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", line):
            pinned[canonicalize_name(match.group(1))] = match.group(2)
    assert "--hash=sha256:" in LOCK.read_text()
    for spec in project["dependencies"]:
        req = Requirement(spec.split("#")[0])
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(pinned[name]), f"{req.name}=={pinned[name]} vs {req}"
    # uvicorn[standard]'s extras are locked too (the image serves with uvloop and httptools).
    assert {"uvloop", "httptools"} <= set(pinned)
