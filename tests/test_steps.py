"""Step names are stored (jobs.phase, result->>'failed_step', phase_durations_s): the shared Step
enum must keep every value as older versions wrote it, or verdicts on old rows would change."""

from __future__ import annotations

import json

from app.errors import StepFailed
from app.jobs import summaries
from app.steps import DAMAGE_STEPS, Step


def test_damage_verdicts_match_the_strings_older_jobs_stored() -> None:
    assert sorted(str(s) for s in DAMAGE_STEPS) == [
        "checksum", "compare", "decrypt", "pg_restore --list"]


def test_a_step_is_stored_and_shown_as_its_plain_words() -> None:
    failure = StepFailed(Step.PG_RESTORE_LIST, "bad header")
    assert failure.detail == "pg_restore --list: bad header"
    assert json.dumps({"failed_step": failure.step}) == '{"failed_step": "pg_restore --list"}'
    assert json.dumps({Step.CONNECTING: 0.1}) == '{"connecting": 0.1}'
    assert summaries.failed("backup", "demo", {}, step=Step.DUMP_UPLOAD, cause="refused") == (
        "backup of demo failed at dump upload: refused")
    assert summaries.running("backup", "demo", {}, phase="connecting", bytes_done=0,
                             bytes_total=None, bytes_uploaded=0) == (
        "backup of demo: connecting to the database")
