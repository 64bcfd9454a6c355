-- What the shape of `bets` and the fill of `accounts` cost per 10k-bet batch (ADR 0016).
-- Run against any scratch Postgres >= 13 with durable settings, e.g. the stack's:
--   psql "$DATABASE_URL" -f docs/experiments/bets-keys.sql
-- It works in its own schema and drops it at the end, and prints each variant's median over
-- seven rounds; in each round the variants run one after another (each statement committed
-- on its own, so its WAL flush counts), so a noisy neighbour falls on all of them alike.
--
-- Variants: `bets` keyed on the bet id plus an index on (table_id, round) (migration 0004),
-- or keyed on (table_id, round, placed_position) alone (0005), each with the selection as
-- jsonb and as text; and 2,000 `accounts` rows updated at fill factor 100 and at 50.
\set ON_ERROR_STOP on
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS bets_keys_experiment CASCADE;
RESET client_min_messages;
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

CREATE TABLE timings (variant text NOT NULL, ms float8 NOT NULL);

DO $$
DECLARE
    variant text;
    started timestamptz;
BEGIN
    FOR round IN 1..7 LOOP
        FOREACH variant IN ARRAY ARRAY['by_bet_id', 'by_bet_id_text', 'by_position',
                                       'by_position_text', 'accounts_fill100',
                                       'accounts_fill50'] LOOP
            started := clock_timestamp();
            IF variant LIKE 'accounts%' THEN
                EXECUTE format(
                    'UPDATE %I a SET balance = d.b - %s, version = a.version + 1, '
                    'updated_at = now() FROM debits, unnest(debits.p, debits.b) AS d(p, b) '
                    'WHERE a.player = d.p', variant, round);
            ELSE
                EXECUTE format(
                    'INSERT INTO %I SELECT %s, t, n, p, %s, a, pos + %s * 100000 FROM src',
                    variant,
                    CASE WHEN variant LIKE 'by_bet_id%' THEN 'gen_random_uuid()' ELSE 'id' END,
                    CASE WHEN variant LIKE '%text' THEN 's' ELSE 's::jsonb' END,
                    round);
            END IF;
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
DROP SCHEMA bets_keys_experiment CASCADE;
