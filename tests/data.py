"""Test data: realistic rows (random text and jsonb) that do not compress 50:1."""

from __future__ import annotations

BIG_TABLE_SQL = """
CREATE TABLE big AS
SELECT g AS id,
       md5(g::text) || md5((g * 7)::text) || md5(random()::text) AS t,
       jsonb_build_object('a', md5(random()::text), 'n', g, 'r', random()) AS j
FROM generate_series(1, {rows}) g;
ALTER TABLE big ADD PRIMARY KEY (id);
"""
