-- GS judges the per-player-per-round stake limit for a whole batch of bets at once (issue 7):
-- it sums the stakes already on each (table, round, player) of the batch. With only the
-- (table_id, round) index that is a scan of every bet of the round per player, so a round of
-- 100k bets made each batch slower than the last. This index answers each (table, round,
-- player) directly and also serves everything the old one did (its leading columns), so the
-- old one goes.
CREATE INDEX bets_table_round_player_idx ON public.bets (table_id, round, player);
DROP INDEX public.bets_table_round_idx;

-- Settlement updates every bet of a round once (status, payout, settled_position), none of
-- them indexed columns: free space left in each page lets more of those be HOT updates (no
-- new index entries).
ALTER TABLE public.bets SET (fillfactor = 70);
