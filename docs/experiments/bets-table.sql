-- What the shape of `bets` costs per 10k-bet batch (ADR 0014, "alternatives considered").
-- Run against any scratch Postgres ≥ 13 with durable settings, e.g. the stack's:
--   psql "$DATABASE_URL" -f docs/experiments/bets-table.sql
-- It works in its own schema and drops it at the end, and prints each variant's median over
-- seven rounds; in each round the variants run one after another (each statement committed
-- on its own, so its WAL flush counts), so a noisy neighbour falls on all of them alike.
-- (ADR 0016 took two of these alternatives; docs/experiments/bets-keys.sql measures them.)
\set ON_ERROR_STOP on
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS bets_experiment CASCADE;
RESET client_min_messages;
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

CREATE TABLE timings (variant text NOT NULL, ms float8 NOT NULL);

DO $$
DECLARE
    variant text;
    started timestamptz;
BEGIN
    FOR round IN 1..7 LOOP
        FOREACH variant IN ARRAY ARRAY['keyed', 'round_keyed', 'unkeyed', 'text_selection'] LOOP
            started := clock_timestamp();
            EXECUTE format(
                'INSERT INTO %I (bet_id, table_id, round, player, selection, amount, '
                'placed_position) SELECT gen_random_uuid(), t, n, p, %s, a, pos FROM src',
                variant,
                CASE WHEN variant = 'text_selection' THEN 's' ELSE 's::jsonb' END);
            COMMIT;
            INSERT INTO timings
            VALUES (variant, extract(epoch FROM clock_timestamp() - started) * 1000);
            COMMIT;
        END LOOP;
    END LOOP;
END
$$;

SELECT variant, round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1) AS median_ms,
       round(min(ms)::numeric, 1) AS min_ms, round(max(ms)::numeric, 1) AS max_ms
FROM timings GROUP BY variant ORDER BY variant;

SET client_min_messages = warning;
DROP SCHEMA bets_experiment CASCADE;
