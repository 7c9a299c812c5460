"""Print the OpenAPI document: ``python -m app.openapi > openapi/openapi.json``.

Built from placeholder settings: the document does not depend on configuration."""

from __future__ import annotations

import json
import sys

from app.config import Settings
from app.main import create_app


def document() -> dict[str, object]:
    settings = Settings(
        _env_file=None, database_url="postgresql://pgvault@localhost/pgvault",
        storage_url="file:///var/lib/pgvault", gpg_home="/nonexistent",
        gpg_recipients=["0" * 40])
    return create_app(settings).openapi()


if __name__ == "__main__":
    json.dump(document(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
