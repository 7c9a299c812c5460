"""The recovery point objective test, one definition for target status, metrics and alerts."""

from __future__ import annotations


def within_rpo(age_s: float | None, rpo_hours: float) -> bool:
    """Whether a last good backup ``age_s`` seconds old meets the RPO; None (no known good
    backup, or a record that cannot be read) never does: a human looks, the safe side."""
    return age_s is not None and age_s <= rpo_hours * 3600
