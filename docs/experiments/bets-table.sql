-- What the shape of `bets` costs per 10k-bet batch (ADR 0014, "alternatives considered").
-- Run against any scratch Postgres ≥ 13 with durable settings, e.g. the stack's:
--   psql "$DATABASE_URL" -f docs/experiments/bets-table.sql
-- It works in its own schema and drops it at the end. Seven rounds, the variants interleaved
-- so a noisy neighbour falls on all of them alike. Medians per variant:
--   psql "$DATABASE_URL" -f docs/experiments/bets-table.sql 2>/dev/null \
--     | awk '/^[a-z_]+$/ {v=$1} /^Time/ && v {print v, $2; v=""}' | sort -k1,1 -k2n \
--     | awk '{t[$1]=t[$1] " " $2; n[$1]++} END {for (v in t) {split(t[v], a, " "); print v, a[int((n[v]+1)/2)]}}'
\set ON_ERROR_STOP on
\timing on
DROP SCHEMA IF EXISTS bets_experiment CASCADE;
CREATE SCHEMA bets_experiment;
SET search_path = bets_experiment;

CREATE TABLE src AS
SELECT 'bench'::text AS t, 1::int8 AS n, 'bench-' || (g % 2000) AS p,
       '{"kind":"straight","numbers":[17]}'::text AS s, (10 + g % 90)::int8 AS a, g::int8 AS pos
FROM generate_series(1, 10000) AS g;

-- As migration 0004 leaves it: primary key on the bet id, plus (table_id, round).
CREATE TABLE keyed (bet_id uuid PRIMARY KEY, table_id text NOT NULL, round int8 NOT NULL,
    player text NOT NULL, selection jsonb NOT NULL, amount int8 NOT NULL,
    placed_position int8, placed_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON keyed (table_id, round);
-- The key on (table_id, round, bet_id) instead of both.
CREATE TABLE round_keyed (LIKE keyed INCLUDING DEFAULTS, PRIMARY KEY (table_id, round, bet_id));
-- No key on the bet id (the UUIDv5-event-id alternative): (table_id, round) only.
CREATE TABLE unkeyed (LIKE keyed INCLUDING DEFAULTS);
CREATE INDEX ON unkeyed (table_id, round);
-- As `keyed`, with the selection as text instead of jsonb.
CREATE TABLE text_selection (LIKE keyed INCLUDING ALL);
ALTER TABLE text_selection ALTER COLUMN selection TYPE text;

\echo each round: keyed, round_keyed, unkeyed, text_selection
\o /dev/null
\o
\echo keyed
\o /dev/null
INSERT INTO keyed (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos FROM src;
\o
\echo round_keyed
\o /dev/null
INSERT INTO round_keyed (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos FROM src;
\o
\echo unkeyed
\o /dev/null
INSERT INTO unkeyed (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos FROM src;
\o
\echo text_selection
\o /dev/null
INSERT INTO text_selection (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s, a, pos FROM src;
\o
\echo keyed
\o /dev/null
INSERT INTO keyed (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos FROM src;
\o
\echo round_keyed
\o /dev/null
INSERT INTO round_keyed (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos FROM src;
\o
\echo unkeyed
\o /dev/null
INSERT INTO unkeyed (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos FROM src;
\o
\echo text_selection
\o /dev/null
INSERT INTO text_selection (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s, a, pos FROM src;
\o
\echo keyed
\o /dev/null
INSERT INTO keyed (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos FROM src;
\o
\echo round_keyed
\o /dev/null
INSERT INTO round_keyed (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos FROM src;
\o
\echo unkeyed
\o /dev/null
INSERT INTO unkeyed (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos FROM src;
\o
\echo text_selection
\o /dev/null
INSERT INTO text_selection (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s, a, pos FROM src;
\o
\echo keyed
\o /dev/null
INSERT INTO keyed (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos FROM src;
\o
\echo round_keyed
\o /dev/null
INSERT INTO round_keyed (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos FROM src;
\o
\echo unkeyed
\o /dev/null
INSERT INTO unkeyed (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos FROM src;
\o
\echo text_selection
\o /dev/null
INSERT INTO text_selection (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s, a, pos FROM src;
\o
\echo keyed
\o /dev/null
INSERT INTO keyed (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos FROM src;
\o
\echo round_keyed
\o /dev/null
INSERT INTO round_keyed (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos FROM src;
\o
\echo unkeyed
\o /dev/null
INSERT INTO unkeyed (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos FROM src;
\o
\echo text_selection
\o /dev/null
INSERT INTO text_selection (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s, a, pos FROM src;
\o
\echo keyed
\o /dev/null
INSERT INTO keyed (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos FROM src;
\o
\echo round_keyed
\o /dev/null
INSERT INTO round_keyed (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos FROM src;
\o
\echo unkeyed
\o /dev/null
INSERT INTO unkeyed (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos FROM src;
\o
\echo text_selection
\o /dev/null
INSERT INTO text_selection (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s, a, pos FROM src;
\o
\echo keyed
\o /dev/null
INSERT INTO keyed (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos FROM src;
\o
\echo round_keyed
\o /dev/null
INSERT INTO round_keyed (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos FROM src;
\o
\echo unkeyed
\o /dev/null
INSERT INTO unkeyed (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos FROM src;
\o
\echo text_selection
\o /dev/null
INSERT INTO text_selection (bet_id, table_id, round, player, selection, amount, placed_position) SELECT gen_random_uuid(), t, n, p, s, a, pos FROM src;
\o
RESET search_path;
DROP SCHEMA bets_experiment CASCADE;
