-- Write-path keys (issue 7, ADR 0016): a bet's idempotency key is its `bet_placed` event's id,
-- and the hot-updated read models leave room for heap-only updates.
--
-- From now on GS gives each `bet_placed` event the id UUIDv5(GS's namespace, bet_id), so the
-- unique `events.event_id` (DESIGN §6: "idempotency with no time window") refuses a bet id
-- placed twice, and a retry finds its first answer by that id. `bets` no longer needs a key
-- of its own on the client's random bet id — one random-order index less to write for every
-- bet. Its key becomes the position of its `bet_placed` event, which only grows.
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

ALTER TABLE public.bets
    DROP CONSTRAINT bets_pkey,
    ALTER COLUMN placed_position SET NOT NULL,
    ADD CONSTRAINT bets_pkey PRIMARY KEY (placed_position);

-- Every batch rewrites one `accounts` row and one `round_stakes` row per player it touches.
-- With full pages each such UPDATE must put the new row version on another page and add an
-- entry to the table's key; with room left on the page it is a heap-only (HOT) update, which
-- touches no index (neither table indexes a column the writers change). Half-empty pages
-- halve what the updates cost (ADR 0016). Pages written before this migration keep their
-- old fill until their rows move.
ALTER TABLE public.accounts SET (fillfactor = 50);
ALTER TABLE public.round_stakes SET (fillfactor = 50);
