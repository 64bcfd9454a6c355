-- What the shape of `bets` and the fill of `accounts` cost per 10k-bet batch (ADR 0016).
-- Run against any scratch Postgres >= 13 with durable settings, e.g. the stack's:
--   psql "$DATABASE_URL" -f docs/experiments/bets-keys.sql
-- It works in its own schema and drops it at the end. Seven rounds, the variants interleaved
-- so a noisy neighbour falls on all of them alike. Medians per variant:
--   psql "$DATABASE_URL" -f docs/experiments/bets-keys.sql 2>/dev/null \
--     | awk '/^[a-z_0-9]+$/ {v=$1} /^Time/ && v {print v, $2; v=""}' | sort -k1,1 -k2n \
--     | awk '{t[$1]=t[$1] " " $2; n[$1]++} END {for (v in t) {split(t[v], a, " "); print v, a[int((n[v]+1)/2)]}}'
--
-- Variants: `bets` keyed on the bet id plus an index on (table_id, round) (migration 0004),
-- keyed on (table_id, round, placed_position) alone (0005), each with the selection as jsonb
-- and as text; and 2,000 `accounts` rows updated at fill factor 100 and 50.
\set ON_ERROR_STOP on
\timing on
DROP SCHEMA IF EXISTS bets_keys_experiment CASCADE;
CREATE SCHEMA bets_keys_experiment;
SET search_path = bets_keys_experiment;

CREATE TABLE src AS
SELECT gen_random_uuid() AS id, 'bench'::text AS t, 1::int8 AS n, 'bench-' || (g % 2000) AS p,
       '{"kind":"straight","numbers":[17]}'::text AS s, (10 + g % 90)::int8 AS a, g::int8 AS pos
FROM generate_series(1, 10000) AS g;
CREATE TABLE by_bet_id (bet_id uuid PRIMARY KEY, table_id text NOT NULL, round int8 NOT NULL,
    player text NOT NULL, selection jsonb NOT NULL, amount int8 NOT NULL,
    placed_position int8 NOT NULL, placed_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON by_bet_id (table_id, round);
CREATE TABLE by_bet_id_text (LIKE by_bet_id INCLUDING ALL);
ALTER TABLE by_bet_id_text ALTER COLUMN selection TYPE text;
CREATE TABLE by_position (LIKE by_bet_id INCLUDING DEFAULTS,
    PRIMARY KEY (table_id, round, placed_position));
CREATE TABLE by_position_text (LIKE by_position INCLUDING ALL);
ALTER TABLE by_position_text ALTER COLUMN selection TYPE text;

CREATE TABLE accounts_fill100 (player text PRIMARY KEY, balance int8 NOT NULL,
    version int4 NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (octet_length(player) BETWEEN 1 AND 64),
    CHECK (balance >= 0 AND balance <= 9007199254740991), CHECK (version >= 0));
CREATE TABLE accounts_fill50 (LIKE accounts_fill100 INCLUDING ALL) WITH (fillfactor = 50);
INSERT INTO accounts_fill100 SELECT 'bench-' || g, 1000000000, 0 FROM generate_series(0, 1999) g;
INSERT INTO accounts_fill50 SELECT * FROM accounts_fill100;
CREATE TABLE debits AS
SELECT array_agg('bench-' || g) AS p, array_agg(999999::int8 - g) AS b
FROM generate_series(0, 1999) g;

\echo each round: by_bet_id, by_bet_id_text, by_position, by_position_text, accounts_fill100, accounts_fill50
\echo by_bet_id
\o /dev/null
INSERT INTO by_bet_id SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos + 1 * 100000 FROM src;
\o
\echo by_bet_id_text
\o /dev/null
INSERT INTO by_bet_id_text SELECT gen_random_uuid(), t, n, p, s, a, pos + 1 * 100000 FROM src;
\o
\echo by_position
\o /dev/null
INSERT INTO by_position SELECT id, t, n, p, s::jsonb, a, pos + 1 * 100000 FROM src;
\o
\echo by_position_text
\o /dev/null
INSERT INTO by_position_text SELECT id, t, n, p, s, a, pos + 1 * 100000 FROM src;
\o
\echo accounts_fill100
\o /dev/null
UPDATE accounts_fill100 a SET balance = d.b - 1, version = a.version + 1, updated_at = now()
FROM debits, unnest(debits.p, debits.b) AS d(p, b) WHERE a.player = d.p;
\o
\echo accounts_fill50
\o /dev/null
UPDATE accounts_fill50 a SET balance = d.b - 1, version = a.version + 1, updated_at = now()
FROM debits, unnest(debits.p, debits.b) AS d(p, b) WHERE a.player = d.p;
\o
\echo by_bet_id
\o /dev/null
INSERT INTO by_bet_id SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos + 2 * 100000 FROM src;
\o
\echo by_bet_id_text
\o /dev/null
INSERT INTO by_bet_id_text SELECT gen_random_uuid(), t, n, p, s, a, pos + 2 * 100000 FROM src;
\o
\echo by_position
\o /dev/null
INSERT INTO by_position SELECT id, t, n, p, s::jsonb, a, pos + 2 * 100000 FROM src;
\o
\echo by_position_text
\o /dev/null
INSERT INTO by_position_text SELECT id, t, n, p, s, a, pos + 2 * 100000 FROM src;
\o
\echo accounts_fill100
\o /dev/null
UPDATE accounts_fill100 a SET balance = d.b - 2, version = a.version + 1, updated_at = now()
FROM debits, unnest(debits.p, debits.b) AS d(p, b) WHERE a.player = d.p;
\o
\echo accounts_fill50
\o /dev/null
UPDATE accounts_fill50 a SET balance = d.b - 2, version = a.version + 1, updated_at = now()
FROM debits, unnest(debits.p, debits.b) AS d(p, b) WHERE a.player = d.p;
\o
\echo by_bet_id
\o /dev/null
INSERT INTO by_bet_id SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos + 3 * 100000 FROM src;
\o
\echo by_bet_id_text
\o /dev/null
INSERT INTO by_bet_id_text SELECT gen_random_uuid(), t, n, p, s, a, pos + 3 * 100000 FROM src;
\o
\echo by_position
\o /dev/null
INSERT INTO by_position SELECT id, t, n, p, s::jsonb, a, pos + 3 * 100000 FROM src;
\o
\echo by_position_text
\o /dev/null
INSERT INTO by_position_text SELECT id, t, n, p, s, a, pos + 3 * 100000 FROM src;
\o
\echo accounts_fill100
\o /dev/null
UPDATE accounts_fill100 a SET balance = d.b - 3, version = a.version + 1, updated_at = now()
FROM debits, unnest(debits.p, debits.b) AS d(p, b) WHERE a.player = d.p;
\o
\echo accounts_fill50
\o /dev/null
UPDATE accounts_fill50 a SET balance = d.b - 3, version = a.version + 1, updated_at = now()
FROM debits, unnest(debits.p, debits.b) AS d(p, b) WHERE a.player = d.p;
\o
\echo by_bet_id
\o /dev/null
INSERT INTO by_bet_id SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos + 4 * 100000 FROM src;
\o
\echo by_bet_id_text
\o /dev/null
INSERT INTO by_bet_id_text SELECT gen_random_uuid(), t, n, p, s, a, pos + 4 * 100000 FROM src;
\o
\echo by_position
\o /dev/null
INSERT INTO by_position SELECT id, t, n, p, s::jsonb, a, pos + 4 * 100000 FROM src;
\o
\echo by_position_text
\o /dev/null
INSERT INTO by_position_text SELECT id, t, n, p, s, a, pos + 4 * 100000 FROM src;
\o
\echo accounts_fill100
\o /dev/null
UPDATE accounts_fill100 a SET balance = d.b - 4, version = a.version + 1, updated_at = now()
FROM debits, unnest(debits.p, debits.b) AS d(p, b) WHERE a.player = d.p;
\o
\echo accounts_fill50
\o /dev/null
UPDATE accounts_fill50 a SET balance = d.b - 4, version = a.version + 1, updated_at = now()
FROM debits, unnest(debits.p, debits.b) AS d(p, b) WHERE a.player = d.p;
\o
\echo by_bet_id
\o /dev/null
INSERT INTO by_bet_id SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos + 5 * 100000 FROM src;
\o
\echo by_bet_id_text
\o /dev/null
INSERT INTO by_bet_id_text SELECT gen_random_uuid(), t, n, p, s, a, pos + 5 * 100000 FROM src;
\o
\echo by_position
\o /dev/null
INSERT INTO by_position SELECT id, t, n, p, s::jsonb, a, pos + 5 * 100000 FROM src;
\o
\echo by_position_text
\o /dev/null
INSERT INTO by_position_text SELECT id, t, n, p, s, a, pos + 5 * 100000 FROM src;
\o
\echo accounts_fill100
\o /dev/null
UPDATE accounts_fill100 a SET balance = d.b - 5, version = a.version + 1, updated_at = now()
FROM debits, unnest(debits.p, debits.b) AS d(p, b) WHERE a.player = d.p;
\o
\echo accounts_fill50
\o /dev/null
UPDATE accounts_fill50 a SET balance = d.b - 5, version = a.version + 1, updated_at = now()
FROM debits, unnest(debits.p, debits.b) AS d(p, b) WHERE a.player = d.p;
\o
\echo by_bet_id
\o /dev/null
INSERT INTO by_bet_id SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos + 6 * 100000 FROM src;
\o
\echo by_bet_id_text
\o /dev/null
INSERT INTO by_bet_id_text SELECT gen_random_uuid(), t, n, p, s, a, pos + 6 * 100000 FROM src;
\o
\echo by_position
\o /dev/null
INSERT INTO by_position SELECT id, t, n, p, s::jsonb, a, pos + 6 * 100000 FROM src;
\o
\echo by_position_text
\o /dev/null
INSERT INTO by_position_text SELECT id, t, n, p, s, a, pos + 6 * 100000 FROM src;
\o
\echo accounts_fill100
\o /dev/null
UPDATE accounts_fill100 a SET balance = d.b - 6, version = a.version + 1, updated_at = now()
FROM debits, unnest(debits.p, debits.b) AS d(p, b) WHERE a.player = d.p;
\o
\echo accounts_fill50
\o /dev/null
UPDATE accounts_fill50 a SET balance = d.b - 6, version = a.version + 1, updated_at = now()
FROM debits, unnest(debits.p, debits.b) AS d(p, b) WHERE a.player = d.p;
\o
\echo by_bet_id
\o /dev/null
INSERT INTO by_bet_id SELECT gen_random_uuid(), t, n, p, s::jsonb, a, pos + 7 * 100000 FROM src;
\o
\echo by_bet_id_text
\o /dev/null
INSERT INTO by_bet_id_text SELECT gen_random_uuid(), t, n, p, s, a, pos + 7 * 100000 FROM src;
\o
\echo by_position
\o /dev/null
INSERT INTO by_position SELECT id, t, n, p, s::jsonb, a, pos + 7 * 100000 FROM src;
\o
\echo by_position_text
\o /dev/null
INSERT INTO by_position_text SELECT id, t, n, p, s, a, pos + 7 * 100000 FROM src;
\o
\echo accounts_fill100
\o /dev/null
UPDATE accounts_fill100 a SET balance = d.b - 7, version = a.version + 1, updated_at = now()
FROM debits, unnest(debits.p, debits.b) AS d(p, b) WHERE a.player = d.p;
\o
\echo accounts_fill50
\o /dev/null
UPDATE accounts_fill50 a SET balance = d.b - 7, version = a.version + 1, updated_at = now()
FROM debits, unnest(debits.p, debits.b) AS d(p, b) WHERE a.player = d.p;
\o
DROP SCHEMA bets_keys_experiment CASCADE;
