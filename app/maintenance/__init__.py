"""Maintenance jobs run against a target (SPEC 2.7): ANALYZE and materialized view refreshes."""
