-- Objects in the style of PostgreSQL's regression tests, written for pgvault's tests (no network
-- here to fetch the suite): partitions (multi-level, default, hash), inheritance, rules, policies,
-- domains, ranges, enums, generated columns, an event trigger, large objects, comments, grants,
-- NOT VALID constraints and partitioned indexes left invalid, as the regression database has them.
-- Run with psql; role names come as variables so that tests can make them unique on a shared
-- server (the roles must exist already):
--   psql -v owner=... -v reader=... -f this
\set ON_ERROR_STOP 1

CREATE SCHEMA regress;
COMMENT ON SCHEMA regress IS 'regression-style objects';
GRANT USAGE ON SCHEMA regress TO :"reader";
SET search_path = regress, public;

-- enums, composite types, ranges, domains
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
ALTER TYPE mood ADD VALUE 'meh' BEFORE 'ok';
ALTER TYPE mood RENAME VALUE 'sad' TO 'blue';
CREATE TYPE complex AS (r float8, i float8);
CREATE TYPE floatrange AS RANGE (subtype = float8, subtype_diff = float8mi);
CREATE DOMAIN us_postal_code AS text CONSTRAINT postal_format CHECK (VALUE ~ '^\d{5}$');
CREATE DOMAIN posint AS int DEFAULT 1 NOT NULL;
CREATE DOMAIN "Odd ""Domain""" AS numeric(10, 2) CHECK (VALUE >= 0);
COMMENT ON TYPE mood IS 'with a value added BEFORE another and one renamed';
COMMENT ON DOMAIN posint IS 'its check is NOT VALID: old rows break it';
GRANT USAGE ON TYPE mood TO :"reader";

-- partitions: range over list (multi-level), defaults at both levels, hash
CREATE TABLE measurement (
    city_id int NOT NULL,
    logdate date NOT NULL,
    peaktemp int,
    unitsales int,
    PRIMARY KEY (city_id, logdate)
) PARTITION BY RANGE (logdate);
CREATE TABLE measurement_y2025 PARTITION OF measurement
    FOR VALUES FROM ('2025-01-01') TO ('2026-01-01') PARTITION BY LIST (city_id);
CREATE TABLE measurement_y2025_c12 PARTITION OF measurement_y2025 FOR VALUES IN (1, 2);
CREATE TABLE measurement_y2025_other PARTITION OF measurement_y2025 DEFAULT;
CREATE TABLE measurement_y2026 PARTITION OF measurement
    FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
CREATE TABLE measurement_default PARTITION OF measurement DEFAULT;
CREATE INDEX measurement_logdate ON measurement (logdate);
-- Created ON ONLY a parent and never attached: invalid, as in the regression database.
CREATE INDEX measurement_peak_only ON ONLY measurement (peaktemp);
CREATE INDEX measurement_y2025_sales_only ON ONLY measurement_y2025 (unitsales);
INSERT INTO measurement SELECT 1 + g % 4, date '2024-12-20' + g, g % 40, g * 3
    FROM generate_series(1, 800) g;
CREATE TABLE hashed (id bigint PRIMARY KEY, payload text) PARTITION BY HASH (id);
CREATE TABLE hashed_0 PARTITION OF hashed FOR VALUES WITH (MODULUS 3, REMAINDER 0);
CREATE TABLE hashed_1 PARTITION OF hashed FOR VALUES WITH (MODULUS 3, REMAINDER 1);
CREATE TABLE hashed_2 PARTITION OF hashed FOR VALUES WITH (MODULUS 3, REMAINDER 2);
INSERT INTO hashed SELECT g, repeat(chr(65 + g % 26), g % 50) FROM generate_series(1, 500) g;

-- inheritance, single and multiple, with an inherited NOT VALID check
CREATE TABLE cities (name text PRIMARY KEY, population real, elevation int
    CHECK (elevation > -500));
CREATE TABLE capitals (state char(2) NOT NULL) INHERITS (cities);
CREATE TABLE a (aa text CONSTRAINT aa_not_empty CHECK (aa <> '') NO INHERIT);
CREATE TABLE b (bb text DEFAULT 'b');
CREATE TABLE ab (abab int) INHERITS (a, b);
INSERT INTO cities VALUES ('Las Vegas', 5.8e5, 2174), ('Ghost Town', -1, 10);
INSERT INTO capitals VALUES ('Madison', 1.9e5, 845, 'WI'), ('Ruin', -5, 0, 'XX');
INSERT INTO ab VALUES ('', 'x', 1), ('aa', DEFAULT, 2);
ALTER TABLE cities ADD CONSTRAINT population_positive CHECK (population >= 0) NOT VALID;

-- NOT VALID foreign key and check; a domain's NOT VALID check
CREATE TABLE customers (id int PRIMARY KEY, zip us_postal_code, grade posint);
CREATE TABLE orders (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id int,
    price numeric(10, 2) NOT NULL,
    qty int NOT NULL DEFAULT 1,
    total numeric GENERATED ALWAYS AS (price * qty) STORED,
    feeling mood,
    at complex
);
INSERT INTO customers VALUES (1, '12345', 1), (2, '54321', -3);
INSERT INTO orders (customer_id, price, qty, feeling, at)
    SELECT 1 + g % 3, g / 7.0, g % 5, (enum_range(NULL::mood))[1 + g % 4], ROW(g::float8, -g::float8)::complex
    FROM generate_series(1, 300) g;
ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id)
    REFERENCES customers NOT VALID;
ALTER TABLE orders ADD CONSTRAINT orders_qty_positive CHECK (qty > 0) NOT VALID;
ALTER DOMAIN posint ADD CONSTRAINT posint_positive CHECK (VALUE > 0) NOT VALID;
COMMENT ON CONSTRAINT orders_customer_fk ON orders IS 'customer 3 never existed';
COMMENT ON COLUMN orders.total IS 'generated';

-- ranges and an exclusion constraint
CREATE TABLE reservation (
    id serial PRIMARY KEY,
    during tstzrange NOT NULL,
    weights floatrange,
    slots int4multirange,
    EXCLUDE USING gist (during WITH &&)
);
INSERT INTO reservation (during, weights, slots) SELECT
    tstzrange(timestamptz '2026-01-01 00:00+00' + g * interval '1 hour',
              timestamptz '2026-01-01 00:00+00' + (g + 1) * interval '1 hour', '[)'),
    floatrange(g, g + 0.5), int4multirange(int4range(g, g + 2), int4range(g + 5, g + 9))
    FROM generate_series(0, 99) g;

-- rules, views, a materialized view
CREATE TABLE shoes (name text PRIMARY KEY, size int);
CREATE TABLE shoe_log (name text, old_size int, new_size int);
CREATE RULE log_shoe_size AS ON UPDATE TO shoes WHERE new.size <> old.size
    DO ALSO INSERT INTO shoe_log VALUES (new.name, old.size, new.size);
CREATE VIEW shoe_view AS SELECT name, size FROM shoes WHERE size > 0 WITH CHECK OPTION;
CREATE RULE shoe_view_delete AS ON DELETE TO shoe_view DO INSTEAD
    DELETE FROM shoes WHERE name = old.name;
INSERT INTO shoes VALUES ('sneaker', 42), ('boot', 44);
UPDATE shoes SET size = 43 WHERE name = 'sneaker';
COMMENT ON RULE log_shoe_size ON shoes IS 'rules fire on UPDATE, never on COPY';
CREATE MATERIALIZED VIEW order_totals AS
    SELECT customer_id, sum(total) AS total, count(*) AS n FROM orders GROUP BY customer_id;
CREATE UNIQUE INDEX order_totals_customer ON order_totals (customer_id);

-- row-level security
CREATE TABLE documents (id int PRIMARY KEY, owner name NOT NULL DEFAULT current_user,
                        body text);
ALTER TABLE documents ENABLE ROW LEVEL SECURITY;
CREATE POLICY "own documents" ON documents USING (owner = current_user);
CREATE POLICY readers ON documents FOR SELECT TO :"reader" USING (body NOT LIKE 'secret%');
COMMENT ON POLICY readers ON documents IS 'readers see what is not secret';
INSERT INTO documents VALUES (1, 'postgres', 'hello'), (2, 'postgres', 'secret plan');
GRANT SELECT ON documents TO :"reader";

-- triggers: row, statement with a transition table, deferrable constraint trigger
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN new.size := coalesce(new.size, 0); RETURN new; END $$;
CREATE TRIGGER shoes_touch BEFORE INSERT OR UPDATE ON shoes FOR EACH ROW EXECUTE FUNCTION touch();
CREATE FUNCTION count_new() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM count(*) FROM inserted; RETURN NULL; END $$;
CREATE TRIGGER orders_count AFTER INSERT ON orders REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION count_new();
CREATE FUNCTION check_customer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER customers_check AFTER INSERT ON customers DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION check_customer();
COMMENT ON TRIGGER shoes_touch ON shoes IS 'sizes are never null';

-- an event trigger (harmless unless asked to block DDL)
CREATE FUNCTION block_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('regress.block_ddl', true) = 'on' THEN
    RAISE EXCEPTION 'DDL blocked: %', tg_tag;
  END IF;
END $$;
CREATE EVENT TRIGGER "regress ddl guard" ON ddl_command_start EXECUTE FUNCTION block_ddl();
COMMENT ON EVENT TRIGGER "regress ddl guard" IS 'set regress.block_ddl to on to stop DDL';

-- sequences, collations, statistics, text search, operators, aggregates, casts
CREATE SEQUENCE odd_seq INCREMENT -3 MINVALUE -1000 MAXVALUE 10 START 7 CYCLE;
SELECT nextval('odd_seq'), nextval('odd_seq');
CREATE COLLATION "C ci" (provider = libc, locale = 'C');
CREATE TABLE words (w text COLLATE "C ci", tsv tsvector, tags text[], doc jsonb);
INSERT INTO words SELECT 'word ' || g, to_tsvector('english', 'the quick brown fox ' || g),
    ARRAY['a', 'b' || g, NULL], jsonb_build_object('g', g, 'nested', jsonb_build_array(g, 'x'))
    FROM generate_series(1, 100) g;
CREATE STATISTICS orders_stats (dependencies, ndistinct) ON customer_id, qty FROM orders;
CREATE TEXT SEARCH CONFIGURATION english_copy (COPY = pg_catalog.english);
CREATE OPERATOR === (LEFTARG = int, RIGHTARG = int, FUNCTION = int4eq, COMMUTATOR = ===);
CREATE AGGREGATE textcat_all(text) (SFUNC = textcat, STYPE = text, INITCOND = '');
CREATE FUNCTION complex_text(complex) RETURNS text LANGUAGE sql IMMUTABLE
    AS $$ SELECT $1.r || '+' || $1.i || 'i' $$;
CREATE CAST (complex AS text) WITH FUNCTION complex_text(complex) AS ASSIGNMENT;
CREATE UNLOGGED TABLE scratch (k int PRIMARY KEY, v text);
INSERT INTO scratch SELECT g, g::text FROM generate_series(1, 10) g;

-- storage parameters, statistics targets, replica identity, clustering, trigger states
ALTER TABLE words ALTER COLUMN w SET STATISTICS 500;
ALTER TABLE words ALTER COLUMN doc SET STORAGE EXTERNAL;
ALTER TABLE shoes SET (fillfactor = 70, autovacuum_enabled = false);
ALTER TABLE orders REPLICA IDENTITY FULL;
ALTER TABLE cities CLUSTER ON cities_pkey;
ALTER TABLE shoes DISABLE TRIGGER shoes_touch;
ALTER TABLE customers ENABLE ALWAYS TRIGGER customers_check;
CREATE VIEW cheap_orders WITH (security_barrier) AS SELECT id, total FROM orders WHERE total < 10;
CREATE PROCEDURE bump_sizes(delta int) LANGUAGE sql AS $$ UPDATE shoes SET size = size + delta $$;

-- names that need quoting everywhere
CREATE TABLE "Mixed Case ""quoted"" tæble" (
    "-dash col" int PRIMARY KEY,
    "new
line" text,
    "ünïcode" text DEFAULT 'ü'
);
INSERT INTO "Mixed Case ""quoted"" tæble" VALUES (1, 'a', 'b'), (2, E'multi\nline', NULL);
COMMENT ON TABLE "Mixed Case ""quoted"" tæble" IS 'quotes, spaces, unicode, a newline';

-- foreign data: wrapper, server, user mapping, foreign table (never queried)
CREATE FOREIGN DATA WRAPPER regress_fdw;
CREATE SERVER "regress server" FOREIGN DATA WRAPPER regress_fdw OPTIONS (host 'nowhere');
CREATE USER MAPPING FOR :"reader" SERVER "regress server" OPTIONS (user 'remote');
CREATE FOREIGN TABLE remote_things (id int, name text) SERVER "regress server";
GRANT USAGE ON FOREIGN SERVER "regress server" TO :"reader";

-- large objects, with owners, comments and grants
SELECT lo_from_bytea(4242001, convert_to('large object one', 'UTF8'));
SELECT lo_from_bytea(4242002, decode(repeat('00ff', 5000), 'hex'));
ALTER LARGE OBJECT 4242001 OWNER TO :"owner";
COMMENT ON LARGE OBJECT 4242001 IS 'owned by someone else';
GRANT SELECT ON LARGE OBJECT 4242002 TO :"reader";

-- ownership and grants: whole tables, columns, with grant option, functions, sequences
ALTER TABLE shoes OWNER TO :"owner";
ALTER TABLE "Mixed Case ""quoted"" tæble" OWNER TO :"owner";
ALTER FUNCTION touch() OWNER TO :"owner";
GRANT SELECT ON ALL TABLES IN SCHEMA regress TO :"reader";
GRANT INSERT (customer_id, price, qty) ON orders TO :"reader";
GRANT UPDATE (name) ON cities TO :"reader" WITH GRANT OPTION;
GRANT ALL ON customers TO :"owner" WITH GRANT OPTION;
GRANT USAGE, SELECT ON SEQUENCE odd_seq TO :"reader";
REVOKE EXECUTE ON FUNCTION block_ddl() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION complex_text(complex) TO :"reader";
REVOKE ALL ON documents FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA regress GRANT SELECT ON TABLES TO :"reader";

-- an index left invalid by a failed CREATE INDEX CONCURRENTLY: pg_dump leaves it out (it never
-- finished), so a restore lacks it and no check may blame the archive for that
CREATE TABLE dup (v int);
INSERT INTO dup VALUES (1), (1);
\set ON_ERROR_STOP 0
CREATE UNIQUE INDEX CONCURRENTLY dup_v_unique ON dup (v);
\set ON_ERROR_STOP 1

-- a publication of some tables, and public's own objects
CREATE PUBLICATION regress_pub FOR TABLE orders, customers WITH (publish = 'insert');
CREATE TABLE public.plain (id int PRIMARY KEY, note text);
INSERT INTO public.plain SELECT g, md5(g::text) FROM generate_series(1, 100) g;
COMMENT ON TABLE public.plain IS 'public schema too';

-- the database itself
GRANT CREATE ON DATABASE :"DBNAME" TO :"owner";
ALTER DATABASE :"DBNAME" SET work_mem TO '6MB';
ALTER ROLE :"reader" IN DATABASE :"DBNAME" SET search_path TO regress, public;
COMMENT ON DATABASE :"DBNAME" IS 'regression-style database';
ANALYZE;
