-- A round's bets are found in the event store itself, not in a copy of them (issue 18, ADR 0033).
--
-- Every accepted bet was written twice: its `bet_placed` event, and a `bets` row repeating
-- the event's bet id, table, round, player, selection and amount for settlement to read.
-- That second write was a third of a batch's cost (`just bench-store`). Settlement and
-- refunds now read the round's `bet_placed` events themselves, found through `round_stakes`,
-- which every batch writes anyway (one row per table, round and player): each row also keeps
-- the first and last version of the player's stream (`player-<id>`) that holds a bet of that
-- player on that round. The events between them are read by the events' own key
-- (`events_stream_version_key`), and the ones of other rounds are skipped.
ALTER TABLE public.round_stakes
    ADD COLUMN first_version integer,
    ADD COLUMN last_version integer;

-- Rows written before this migration: from the bets they summed, whose events are at
-- `placed_position` (each `bets` row was written in the same transaction as its
-- `round_stakes` row, and `croupier projections rebuild` wrote both from the events).
UPDATE public.round_stakes s
SET first_version = v.first_version, last_version = v.last_version
FROM (
    SELECT b.table_id, b.round, b.player,
           min(e.version) AS first_version, max(e.version) AS last_version
    FROM public.bets b
    JOIN public.events e ON e.position = b.placed_position
    GROUP BY b.table_id, b.round, b.player
) v
WHERE s.table_id = v.table_id AND s.round = v.round AND s.player = v.player;

-- A row with no bet behind it cannot be (both were written together); should one exist,
-- setting NOT NULL fails here and the migration stops, leaving the database as it was
-- (`croupier projections rebuild` then recreates every read model from the events).
ALTER TABLE public.round_stakes
    ALTER COLUMN first_version SET NOT NULL,
    ALTER COLUMN last_version SET NOT NULL,
    ADD CONSTRAINT round_stakes_versions CHECK (first_version >= 1 AND last_version >= first_version);

-- `bets` and its view go: the events hold all they held (`bets_with_results` showed each
-- bet's result beside it; `bet_results` keeps the results, by bet id).
DROP VIEW public.bets_with_results;
DROP TABLE public.bets;
