"""Monitoring snapshots of a target (SPEC 2.7): connections, bloat, indexes, tables.

``repository`` holds every query as a named constant; ``service`` runs them through a small,
read-only pool per target with a statement timeout, and composes the views and the snapshot.
"""
