"""The README's break-glass procedure, run line for line with pgvault out of the picture."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import PG_HOST, PG_PORT, PREFIX, ROOT, backup
from tests.test_restore import fingerprint

README = ROOT / "README.md"


def break_glass_script() -> str:
    text = README.read_text()
    block = re.search(r"<!-- break-glass:begin -->\s*```bash\n(.*?)```\s*<!-- break-glass:end -->",
                      text, re.S)
    assert block, "README lost its break-glass block"
    return block.group(1)


def fetch_archive(s3: Any, bucket: str, backup_id: str, dest: Path) -> Path:
    """Step 0, `aws s3 cp --recursive`: the same objects, fetched over the S3 protocol."""
    dest.mkdir()
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"archives/pagila/{backup_id}/")
    for obj in listing["Contents"]:
        s3.download_file(bucket, obj["Key"], str(dest / obj["Key"].rsplit("/", 1)[1]))
    return dest


def run_break_glass(archive: Path, home: Path, newdb: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "ARCHIVE_DIR": str(archive), "GNUPGHOME": str(home),
           "NEWDB": newdb, "PGHOST": PG_HOST, "PGPORT": str(PG_PORT), "PGUSER": "postgres"}
    return subprocess.run(["bash", "-c", break_glass_script()], env=env, capture_output=True,
                          text=True)


async def test_readme_break_glass_restores_an_archive(client: Any, s3: Any, bucket: str,
                                                      pagila_db: str, gpg_key: tuple[Path, str],
                                                      tmp_path: Path) -> None:
    job = await backup(client)
    archive = fetch_archive(s3, bucket, job["result"]["backup_id"], tmp_path / "archive")
    newdb = f"{PREFIX}_breakglass"
    done = run_break_glass(archive, gpg_key[0], newdb)
    assert done.returncode == 0, done.stderr
    assert await fingerprint(newdb) == await fingerprint(pagila_db)


async def test_break_glass_stops_on_a_flipped_bit(client: Any, s3: Any, bucket: str,
                                                  gpg_key: tuple[Path, str],
                                                  tmp_path: Path) -> None:
    job = await backup(client)
    archive = fetch_archive(s3, bucket, job["result"]["backup_id"], tmp_path / "archive")
    dump = archive / "database.dump.zst.gpg"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    done = run_break_glass(archive, gpg_key[0], f"{PREFIX}_breakglass_bad")
    assert done.returncode != 0
    assert "FAILED" in done.stdout + done.stderr  # sha256sum names the object
    assert not (archive / "database.dump").exists()
