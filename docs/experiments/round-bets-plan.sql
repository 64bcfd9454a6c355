-- ADR 0033's plan figures: a round's bets read through `round_stakes` as a plain join, and as
-- the lateral subquery fenced by `OFFSET 0` that `gs::ledger::ROUND_BETS` is.
-- Run against a scratch database migrated to 0006 or later (it fills `events` and
-- `round_stakes` with made-up rows, so never against a real store), e.g.:
--   createdb round_bets && DATABASE_URL=postgres:///round_bets target/release/croupier migrate
--   psql postgres:///round_bets -f docs/experiments/round-bets-plan.sql
-- The data is the plan test's (`a_rounds_bets_are_read_by_the_events_key`): 20 rounds of
-- 2,000 players, five bets and five results each (400k events).
\set ON_ERROR_STOP on
INSERT INTO events (position, event_id, stream, version, type, data, metadata, hash)
SELECT row_number() OVER (ORDER BY r, k, p), gen_random_uuid(), 'player-p' || p,
       (r - 1) * 10 + k, CASE WHEN k <= 5 THEN 'bet_placed' ELSE 'bet_settled' END,
       decode(repeat('ab', 180), 'hex'), '', decode(repeat('00', 32), 'hex')
FROM generate_series(1, 20) r, generate_series(1, 10) k, generate_series(1, 2000) p;
INSERT INTO round_stakes (table_id, round, player, staked, bets, first_version, last_version)
SELECT 't1', r, 'p' || p, 50, 5, (r - 1) * 10 + 1, (r - 1) * 10 + 5
FROM generate_series(1, 20) r, generate_series(1, 2000) p;
ANALYZE events;
ANALYZE round_stakes;
SET plan_cache_mode = force_custom_plan;

-- The plain join: planned as a merge join over a sorted sequential scan of `events`.
EXPLAIN (ANALYZE, BUFFERS)
SELECT e.position, e.data FROM round_stakes s
JOIN events e ON e.stream = 'player-' || s.player
             AND e.version BETWEEN s.first_version AND s.last_version
WHERE s.table_id = 't1' AND s.round = 17 AND e.type = 'bet_placed';

-- The fenced lateral subquery (ROUND_BETS): one index range scan per player.
EXPLAIN (ANALYZE, BUFFERS)
SELECT e.position, e.data FROM round_stakes s
CROSS JOIN LATERAL (
    SELECT position, data FROM events
    WHERE stream = 'player-' || s.player
      AND version BETWEEN s.first_version AND s.last_version AND type = 'bet_placed'
    OFFSET 0
) e
WHERE s.table_id = 't1' AND s.round = 17;
