-- Write-path keys (issue 7, ADR 0016): a bet's idempotency key is its `bet_placed` event's id,
-- and the hot-updated read models leave room for heap-only updates.
--
-- From now on GS gives each `bet_placed` event the id UUIDv5(GS's namespace, bet_id), so the
-- unique `events.event_id` (DESIGN §6: "idempotency with no time window") refuses a bet id
-- placed twice, and a retry finds its first answer by that id. `bets` no longer needs a key
-- on the client's random bet id — one random-order index less to write for every bet.
--
-- Bets placed before this migration have random event ids. `legacy_bets` keeps their bet ids
-- (and where their events are), so they stay findable by bet id; new bets never enter it.
CREATE TABLE public.legacy_bets (
    bet_id          uuid   NOT NULL,
    placed_position bigint NOT NULL,
    CONSTRAINT legacy_bets_pkey PRIMARY KEY (bet_id)
);
COMMENT ON TABLE public.legacy_bets IS
    'Bets whose bet_placed event id is not derived from the bet id (placed before migration '
    '0005): looked up by bet id here. Empty in a database that began at 0005 or later.';
INSERT INTO public.legacy_bets (bet_id, placed_position)
SELECT bet_id, placed_position FROM public.bets;

-- `bets` is written once and never updated (results go to `bet_results` since 0004), so:
-- - full pages (0003 left 30 % of each page free for updates that no longer happen);
-- - one key, (table_id, round, placed_position), instead of a key on the bet id plus an index
--   on (table_id, round): it serves settlement's "every bet of a round" as that index did,
--   and each batch's rows land at one end of it;
-- - the selection as text, the exact JSON GS wrote, instead of jsonb, which parsed and
--   re-encoded every row on the way in (settlement reads it back as text anyway). Rows
--   converted here are written in that compact form too (no spaces), as a rebuild writes
--   them: a selection's keys are `kind` and at most one of `numbers`/`index`, so jsonb's
--   key order is GS's order.
DROP VIEW public.bets_with_results;
ALTER TABLE public.bets SET (fillfactor = 100);
ALTER TABLE public.bets
    DROP CONSTRAINT bets_pkey,
    ALTER COLUMN placed_position SET NOT NULL,
    ALTER COLUMN selection TYPE text
        USING replace(replace(selection::text, ': ', ':'), ', ', ','),
    ADD CONSTRAINT bets_pkey PRIMARY KEY (table_id, round, placed_position);
DROP INDEX public.bets_table_round_idx;
CREATE VIEW public.bets_with_results AS
SELECT b.bet_id, b.table_id, b.round, b.player, b.selection, b.amount,
       coalesce(r.status, 'accepted') AS status, r.payout,
       b.placed_position, r.position AS settled_position, b.placed_at
FROM public.bets b
LEFT JOIN public.bet_results r USING (bet_id);

-- Every batch rewrites one `accounts` row and one `round_stakes` row per player it touches.
-- With full pages each such UPDATE must put the new row version on another page and add an
-- entry to the table's key; with room left on the page it is a heap-only (HOT) update, which
-- touches no index (neither table indexes a column the writers change). Half-empty pages
-- halve what the updates cost (ADR 0016). Pages written before this migration keep their
-- old fill until their rows move.
ALTER TABLE public.accounts SET (fillfactor = 50);
ALTER TABLE public.round_stakes SET (fillfactor = 50);
