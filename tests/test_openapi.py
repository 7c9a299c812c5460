"""The exported OpenAPI document in openapi/ matches the app; regenerate with `make openapi`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from app.config import DATABASE_NAME_RE, TARGET_NAME_RE
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


# -- SPEC 2.13: the document as a client generator's input ------------------------------------

OPERATIONS = {  # (method, path): (operationId, role), as SPEC 4's table gives the roles
    ("get", "/healthz"): ("healthz", "none"),
    ("get", "/readyz"): ("readyz", "none"),
    ("get", "/metrics"): ("metrics", "none"),
    ("get", "/v1/targets"): ("listTargets", "viewer"),
    ("get", "/v1/targets/{target}"): ("getTarget", "viewer"),
    ("post", "/v1/targets/{target}/backups"): ("startBackup", "operator"),
    ("get", "/v1/targets/{target}/archives"): ("listArchives", "viewer"),
    ("get", "/v1/targets/{target}/archives/{backup_id}"): ("getArchive", "viewer"),
    ("delete", "/v1/targets/{target}/archives/{backup_id}"): ("deleteArchive", "admin"),
    ("post", "/v1/targets/{target}/archives/{backup_id}/verify"): ("verifyArchive", "operator"),
    ("post", "/v1/targets/{target}/restores"): ("startRestore", "admin"),
    ("post", "/v1/targets/{target}/retention"): ("startRetention", "admin"),
    ("post", "/v1/targets/{target}/maintenance"): ("startMaintenance", "operator"),
    ("post", "/v1/targets/{target}/reconcile"): ("startReconcile", "operator"),
    ("get", "/v1/targets/{target}/monitoring/{view}"): ("getMonitoringView", "viewer"),
    ("get", "/v1/jobs"): ("listJobs", "viewer"),
    ("get", "/v1/jobs/{job_id}"): ("getJob", "viewer"),
    ("post", "/v1/jobs/{job_id}/cancel"): ("cancelJob", "operator"),
    ("get", "/v1/jobs/{job_id}/events"): ("streamJobEvents", "viewer"),
    ("get", "/v1/audit"): ("listAudit", "admin"),
}


def _operations() -> dict[tuple[str, str], dict[str, Any]]:
    paths: dict[str, dict[str, Any]] = document()["paths"]  # type: ignore[assignment]
    return {(m, p): op for p, ops in paths.items() for m, op in ops.items()}


def test_operation_ids_are_short_and_name_the_role() -> None:
    operations = _operations()
    for key, (operation_id, role) in OPERATIONS.items():
        op = operations[key]
        assert op["operationId"] == operation_id, key
        assert op["x-required-role"] == role, key
        assert ("no token needed" if role == "none" else f"`{role}`") in op["description"], key
    ids = [op["operationId"] for op in operations.values()]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    assert all(re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)*", i) for i in ids), ids


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _enum(doc: dict[str, Any], schema: dict[str, Any]) -> list[Any]:
    schema = _resolve(doc, schema)
    if "anyOf" in schema:  # an optional field: the enum and null
        return next(_enum(doc, s) for s in schema["anyOf"] if s.get("type") != "null")
    return list(schema["enum"])


def test_closed_sets_are_enums() -> None:
    doc = document()
    ops = _operations()
    schemas = doc["components"]["schemas"]  # type: ignore[index]

    def param(key: tuple[str, str], name: str) -> dict[str, Any]:
        return next(p["schema"] for p in ops[key]["parameters"] if p["name"] == name)

    jobs_kinds = ["backup", "restore", "verify", "retention", "maintenance", "reconcile"]
    statuses = ["queued", "running", "succeeded", "failed", "cancelled"]
    assert _enum(doc, param(("get", "/v1/targets/{target}/monitoring/{view}"), "view")) == [
        "connections", "bloat", "indexes", "tables", "snapshot"]
    assert _enum(doc, param(("get", "/v1/jobs"), "kind")) == jobs_kinds
    assert _enum(doc, param(("get", "/v1/jobs"), "status")) == statuses
    assert _enum(doc, schemas["Job"]["properties"]["kind"]) == jobs_kinds
    assert _enum(doc, schemas["Job"]["properties"]["status"]) == statuses
    assert _enum(doc, schemas["VerifyRequest"]["properties"]["level"]) == ["checksum", "restore"]
    assert _enum(doc, schemas["Verification"]["properties"]["level"]) == ["checksum", "restore"]
    assert _enum(doc, schemas["RestoreRequest"]["properties"]["mode"]) == [
        "new_database", "in_place"]
    assert _enum(doc, schemas["RestoreRequest"]["properties"]["severity"]) == [1, 2, 3]
    assert _enum(doc, schemas["MaintenanceRequest"]["properties"]["task"]) == [
        "analyze", "refresh_materialized_views"]


def test_monitoring_views_and_job_results_are_typed() -> None:
    doc = document()
    ok = _operations()[("get", "/v1/targets/{target}/monitoring/{view}")]["responses"]["200"]
    views = {_resolve(doc, s)["title"]
             for s in ok["content"]["application/json"]["schema"]["anyOf"]}
    assert views == {"ConnectionsView", "BloatView", "IndexesView", "TablesView", "SnapshotView"}
    result = doc["components"]["schemas"]["Job"]["properties"]["result"]  # type: ignore[index]
    kinds = {_resolve(doc, s)["title"] for s in result["anyOf"]}
    assert {"BackupResult", "RestoreResult", "VerifyResult", "RetentionResult",
            "MaintenanceResult", "FailedResult"} <= kinds
    backup = doc["components"]["schemas"]["BackupResult"]  # type: ignore[index]
    assert {"backup_id", "size_bytes"} <= set(backup["required"])  # SPEC 4
    restore = doc["components"]["schemas"]["RestoreResult"]  # type: ignore[index]
    assert {"database", "duration_s", "rto_met", "checklist"} <= set(restore["required"])
    text = json.dumps(doc)
    for ref in set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text)):
        assert ref in doc["components"]["schemas"], f"dangling $ref {ref}"  # type: ignore[index]


def _body_examples(key: tuple[str, str]) -> dict[str, Any]:
    content = _operations()[key]["requestBody"]["content"]["application/json"]
    examples: dict[str, Any] = content["examples"]
    return {name: example["value"] for name, example in examples.items()}


def test_no_example_starts_work_with_invented_values() -> None:
    # Swagger's "Try it out" sends the first example as is.
    restore = _body_examples(("post", "/v1/targets/{target}/restores"))
    first = next(iter(restore.values()))
    assert set(first) == {"backup_id"}, first
    for value in restore.values():
        # A database or confirm shown is a placeholder that fails validation, never a name.
        assert not DATABASE_NAME_RE.match(value.get("database", "<none>")), value
        assert not TARGET_NAME_RE.match(value.get("confirm", "<none>")), value
    assert next(iter(_body_examples(("post", "/v1/targets/{target}/retention")).values())) == {
        "dry_run": True}
    assert next(iter(_body_examples(("post", "/v1/targets/{target}/backups")).values())) == {}
    for key in [("post", "/v1/targets/{target}/archives/{backup_id}/verify"),
                ("post", "/v1/targets/{target}/maintenance")]:
        assert _body_examples(key), key
    ops = _operations()
    for key, op in ops.items():
        for p in op.get("parameters", []):
            # A target in a path example would point Try it out at a real target.
            assert "example" not in p and "examples" not in p.get("schema", {}), (key, p)


async def test_swaggers_restore_example_starts_nothing(client: Any) -> None:
    from tests.conftest import auth

    before = (await client.get("/v1/jobs?kind=restore", headers=auth("viewer"))).json()["items"]
    example = next(iter(_body_examples(("post", "/v1/targets/{target}/restores")).values()))
    resp = await client.post("/v1/targets/pagila/restores", json=example, headers=auth())
    assert resp.status_code == 404, resp.text  # a well-formed id no archive has
    assert set(example) == {"backup_id"}  # no invented database name, no confirm
    # What Swagger invented before the examples, confirm "string" on a new_database restore, is
    # ignored there (SPEC: confirm is for in_place only): the answer is the same 404.
    resp = await client.post("/v1/targets/pagila/restores", headers=auth(),
                             json={"backup_id": example["backup_id"], "confirm": "string"})
    assert resp.status_code == 404, resp.text
    after = (await client.get("/v1/jobs?kind=restore", headers=auth("viewer"))).json()["items"]
    assert after == before


async def test_monitoring_answers_its_typed_model(client: Any) -> None:
    from fastapi.encoders import jsonable_encoder

    from app.monitoring.schemas import MODELS
    from app.monitoring.service import get_view
    from tests.conftest import auth

    services = client.app.state.resources
    for view, model in MODELS.items():
        resp = await client.get(f"/v1/targets/pagila/monitoring/{view}", headers=auth("viewer"))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        model.model_validate(body)  # extra="forbid": the document names every field
        # The JSON is what the untyped route answered: the service's dict, encoded by FastAPI
        # (the same answer again, from the service's 2 s cache).
        untyped = await get_view(services.monitoring, services.settings, "pagila", view)
        assert body == jsonable_encoder(untyped)
    unknown = await client.get("/v1/targets/pagila/monitoring/vacuum", headers=auth("viewer"))
    assert unknown.status_code == 404, unknown.text  # as before the enum: no such view


def test_response_examples_are_valid_answers() -> None:
    from app.archives.schemas import Archive, ArchiveDetail
    from app.jobs.schemas import Job
    from app.targets.schemas import TargetStatus

    for model in (Job, Archive, ArchiveDetail, TargetStatus):
        examples = model.model_config["json_schema_extra"]["examples"]  # type: ignore[index]
        for example in examples:
            assert model.model_validate(example).model_dump(mode="json").keys() == example.keys()
