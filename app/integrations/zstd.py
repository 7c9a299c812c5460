"""zstd: the argument vectors of the compression stages.

zstd reads stdin and writes stdout (``-c -``); ``-q`` keeps progress off stderr, so its stderr
holds only errors. Exit codes: 0 on success, 1 on any failure (a truncated or corrupt frame on
decompression). It needs no secret and no environment beyond :func:`~app.integrations.process.
child_env`'s. :func:`installed` is the start-up check (``app.lifespan``).
"""

from __future__ import annotations

import shutil

from app.integrations.process import Stage

PROGRAM = "zstd"


def installed() -> bool:
    """Whether ``zstd`` is on PATH (its output format has been stable for years: no version
    check)."""
    return shutil.which(PROGRAM) is not None


def compress_stage(level: int, threads: int) -> Stage:
    """``threads`` 0 means one per core."""
    return Stage("zstd", ["zstd", f"-{level}", f"-T{threads}", "-q", "-c", "-"])


def decompress_stage() -> Stage:
    return Stage("zstd -d", ["zstd", "-d", "-q", "-c", "-"])
