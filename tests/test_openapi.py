"""The exported OpenAPI document in openapi/ matches the app; regenerate with `make openapi`."""

from __future__ import annotations

import json
from pathlib import Path

from app.openapi import document

EXPORTED = Path(__file__).resolve().parents[1] / "openapi" / "openapi.json"


def test_exported_openapi_is_current() -> None:
    assert json.loads(EXPORTED.read_text()) == json.loads(json.dumps(document())), (
        "openapi/openapi.json is stale: run `make openapi`")


def test_contract_paths_are_present() -> None:
    paths = document()["paths"]
    assert isinstance(paths, dict)
    for path in ["/healthz", "/readyz", "/metrics", "/v1/targets", "/v1/targets/{target}",
                 "/v1/targets/{target}/backups", "/v1/targets/{target}/archives",
                 "/v1/targets/{target}/archives/{backup_id}", "/v1/jobs", "/v1/jobs/{job_id}",
                 "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/events", "/v1/audit"]:
        assert path in paths, path
    schemes = document()["components"]["securitySchemes"]  # type: ignore[index]
    assert schemes["HTTPBearer"]["scheme"] == "bearer"
