"""GnuPG: keyring checks (python-gnupg), the streaming stages and what gpg's status output says.

Encryption needs only the recipients' public keys. Recipients are pinned by fingerprint and
``--no-auto-key-locate``/``--no-auto-key-retrieve`` stop gpg from asking a key server about an
unknown one. gpg's own compression is off (``--compress-algo none``): zstd has already compressed
the stream once, faster.

Decryption exit codes: 0 = success; 2 = any failure, including a modification-detection (MDC)
failure, in which case gpg has already *written the whole plaintext* (SPEC 2.12). So decryption
always writes to a private file, and the caller trusts that file only when gpg exited 0 and its
status output holds ``DECRYPTION_OKAY`` and no ``DECRYPTION_FAILED``/``BADMDC``. A passphrase, if
the private key has one, is fed through a file descriptor, never argv.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import gnupg
from pydantic import SecretStr

from app.integrations.process import Stage

BASE_ARGS = [
    "--batch", "--no-tty", "--quiet", "--no-greeting", "--no-permission-warning",
    "--no-auto-key-locate", "--no-auto-key-retrieve", "--trust-model", "always",
]


class KeyringError(Exception):
    """The keyring is unusable or a recipient key cannot encrypt."""


def installed() -> bool:
    """Whether ``gpg`` is on PATH (the start-up check; python-gnupg checks its version when it
    opens the keyring)."""
    return shutil.which("gpg") is not None


def encrypt_stage(home: Path, recipients: list[str]) -> Stage:
    argv = ["gpg", "--homedir", str(home), *BASE_ARGS, "--compress-algo", "none",
            "--cipher-algo", "AES256", "--encrypt"]
    for fpr in recipients:
        argv += ["--recipient", fpr]
    argv += ["--output", "-"]
    return Stage("gpg --encrypt", argv)


@contextlib.contextmanager
def decrypt_stage(home: Path, status_file: Path, passphrase: SecretStr | None) -> Iterator[Stage]:
    """Decrypt stdin to stdout; the status lines go to ``status_file``. A passphrase is written
    into a pipe whose read end gpg inherits (``--passphrase-fd``), never argv or the
    environment; the pipe is closed when the block ends, so keep the stage's pipeline in it."""
    argv = ["gpg", "--homedir", str(home), *BASE_ARGS, "--status-file", str(status_file)]
    if passphrase is None:
        yield Stage("gpg --decrypt", [*argv, "--decrypt", "--output", "-"])
        return
    read_end, write_end = os.pipe()
    try:
        # Shorter than the pipe's buffer: written whole before gpg starts, and never blocks.
        os.write(write_end, passphrase.get_secret_value().encode() + b"\n")
        os.close(write_end)
        write_end = -1
        argv += ["--pinentry-mode", "loopback", "--passphrase-fd", str(read_end)]
        yield Stage("gpg --decrypt", [*argv, "--decrypt", "--output", "-"],
                    pass_fds=(read_end,))
    finally:
        os.close(read_end)
        if write_end != -1:
            os.close(write_end)


def _status_keywords(status_text: str) -> set[str]:
    """The keywords of gpg's ``[GNUPG:] KEYWORD args`` status lines (doc/DETAILS in GnuPG)."""
    return {line.split()[1] for line in status_text.splitlines()
            if line.startswith("[GNUPG:] ") and len(line.split()) > 1}


def decryption_succeeded(status_text: str) -> bool:
    has = _status_keywords(status_text)
    return "DECRYPTION_OKAY" in has and not has & {"DECRYPTION_FAILED", "BADMDC", "ERROR"}


def lacks_secret_key(status_text: str, error_text: str) -> bool:
    """Whether a failed decryption failed because this keyring holds no secret key for the
    message. gpg says NO_SECKEY in its status, or only "No secret key" on stderr (when the
    keyring lacks the subkey altogether); children run in the C locale, so the words are
    stable."""
    has = _status_keywords(status_text)
    return ("NO_SECKEY" in has or "No secret key" in error_text) and "DECRYPTION_OKAY" not in has


def _check_recipients_sync(home: Path, recipients: list[str]) -> list[str]:
    if not home.is_dir():
        raise KeyringError(f"GnuPG home {home} does not exist or is not a directory")
    _check_owner(home)
    try:
        gpg = gnupg.GPG(gnupghome=str(home))
        keys = gpg.list_keys()
    except (OSError, ValueError) as exc:
        raise KeyringError(f"GnuPG home {home} cannot be read: {exc}") from None
    if keys.returncode != 0:
        # gpg's own words ("keyblock resource ...: Permission denied"), not a missing key.
        raise KeyringError(f"GnuPG home {home} cannot be read: {_gpg_messages(keys.stderr)}")
    by_fpr = {k["fingerprint"].upper(): k for k in keys}
    # A recipient may also name an encryption subkey.
    for key in keys:
        for sub_fpr in key.get("subkey_info", {}):
            by_fpr.setdefault(sub_fpr.upper(), key)
    now = time.time()
    found = []
    for fpr in recipients:
        key = by_fpr.get(fpr)
        if key is None:
            raise KeyringError(f"recipient key {fpr} is not in the keyring at {home}")
        if key.get("trust") in ("r", "e") or (key.get("expires") and int(key["expires"]) < now):
            raise KeyringError(f"recipient key {fpr} is expired or revoked")
        caps = key.get("cap", "")
        usable_sub = any(
            "e" in info.get("cap", "")
            and not (info.get("expires") and int(info["expires"]) < now)
            and info.get("trust") not in ("r", "e")
            for info in key.get("subkey_info", {}).values()
        )
        if "E" not in caps and "e" not in caps and not usable_sub:
            raise KeyringError(f"recipient key {fpr} has no valid encryption capability")
        found.append(fpr)
    return found


def _check_owner(home: Path) -> None:
    """A keyring another user owns could be given a key of theirs to encrypt to; gpg only warns
    ("unsafe ownership on homedir") and then often fails to read or lock it. Refuse it up front."""
    owner, me = home.stat().st_uid, os.geteuid()
    if owner != me:
        raise KeyringError(
            f"GnuPG home {home} has unsafe ownership: it belongs to {_user(owner)}, but pgvault "
            f"runs as {_user(me)}; give it to that user (chown -R {me} {home}) and make it "
            "private (chmod 700)")


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _gpg_messages(stderr: str) -> str:
    """gpg's human lines from its stderr (python-gnupg mixes the status lines in)."""
    lines = [line.strip() for line in stderr.splitlines()
             if line.startswith("gpg: ") and "WARNING: unsafe" not in line]
    return "; ".join(dict.fromkeys(lines))[:500] or "gpg failed without a message"


async def check_recipients(home: Path, recipients: list[str]) -> list[str]:
    """Every recipient exists, can encrypt and has not expired (the fingerprints checked);
    :class:`KeyringError` otherwise."""
    return await asyncio.to_thread(_check_recipients_sync, home, recipients)


def _has_secret_key_sync(home: Path) -> bool:
    return bool(gnupg.GPG(gnupghome=str(home)).list_keys(secret=True))


async def has_secret_key(home: Path) -> bool:
    return await asyncio.to_thread(_has_secret_key_sync, home)
