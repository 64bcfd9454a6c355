//! Bets whose fate this gateway left unknown: answered `TIMEOUT` (GS got the request and may
//! have recorded it, but no answer came back), or still in flight when their client went away.
//! A client retries such a bet with the same `bet_id` (`docs/contract/websocket.md`), and the
//! retry must not be told `BETTING_UNAVAILABLE` ("not recorded") by something that did not
//! look: the gateway's own refusal while betting is off, "no game service" from the bus, or a
//! GS that refused it without reaching the store. For a doubtful bet those become `TIMEOUT`
//! too (retry later with the same `bet_id`), until GS gives it a definite answer, which ends
//! the doubt.
//!
//! Per node and bounded ([`CAPACITY`], oldest forgotten first): a client that resends through
//! another gateway is not known here (`docs/contract/websocket.md` says what it may conclude).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use domain::{BetId, PlayerId};

/// How many doubtful bets a node remembers. An entry is two short strings: a few MB at most.
pub(crate) const CAPACITY: usize = 65_536;

type Key = (PlayerId, BetId);

/// The set, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Doubtful {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Each doubtful bet with the generation it was last marked at.
    marked: HashMap<Key, u64>,
    /// Marks in order; an entry whose generation is not the map's is stale and skipped.
    order: VecDeque<(Key, u64)>,
    generation: u64,
}

impl Doubtful {
    /// The bet's fate is unknown to its client.
    pub(crate) fn mark(&self, player: &PlayerId, bet: &BetId) {
        let mut inner = self.inner.lock().expect("doubtful bets");
        inner.generation += 1;
        let generation = inner.generation;
        let key = (player.clone(), *bet);
        inner.marked.insert(key.clone(), generation);
        inner.order.push_back((key, generation));
        while inner.marked.len() > CAPACITY || inner.order.len() > 2 * CAPACITY {
            let Some((key, generation)) = inner.order.pop_front() else {
                break;
            };
            if inner.marked.get(&key) == Some(&generation) {
                inner.marked.remove(&key);
            }
        }
    }

    /// GS answered the bet definitely.
    pub(crate) fn clear(&self, player: &PlayerId, bet: &BetId) {
        let mut inner = self.inner.lock().expect("doubtful bets");
        if inner.marked.is_empty() {
            return;
        }
        inner.marked.remove(&(player.clone(), *bet));
    }

    pub(crate) fn contains(&self, player: &PlayerId, bet: &BetId) -> bool {
        let inner = self.inner.lock().expect("doubtful bets");
        !inner.marked.is_empty() && inner.marked.contains_key(&(player.clone(), *bet))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().expect("doubtful bets").marked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> (PlayerId, BetId) {
        (
            PlayerId::parse("p-1").expect("player"),
            BetId::parse(&format!("00000000-0000-4000-8000-{i:012}")).expect("bet id"),
        )
    }

    #[test]
    fn marked_until_cleared() {
        let doubtful = Doubtful::default();
        let (player, bet) = key(1);
        assert!(!doubtful.contains(&player, &bet));
        doubtful.mark(&player, &bet);
        assert!(doubtful.contains(&player, &bet));
        let other = PlayerId::parse("p-2").expect("player");
        assert!(!doubtful.contains(&other, &bet), "keyed by player too");
        doubtful.clear(&player, &bet);
        assert!(!doubtful.contains(&player, &bet));
    }

    #[test]
    fn bounded_oldest_forgotten_first() {
        let doubtful = Doubtful::default();
        for i in 0..CAPACITY + 10 {
            let (player, bet) = key(i);
            doubtful.mark(&player, &bet);
        }
        assert_eq!(doubtful.len(), CAPACITY);
        let (player, oldest) = key(0);
        assert!(!doubtful.contains(&player, &oldest));
        let (player, newest) = key(CAPACITY + 9);
        assert!(doubtful.contains(&player, &newest));
    }

    #[test]
    fn marking_again_renews_and_stale_marks_do_not_grow_without_bound() {
        let doubtful = Doubtful::default();
        let (player, bet) = key(7);
        for _ in 0..3 * CAPACITY {
            doubtful.mark(&player, &bet);
        }
        assert_eq!(doubtful.len(), 1);
        assert!(doubtful.contains(&player, &bet));
        assert!(doubtful.inner.lock().expect("lock").order.len() <= 2 * CAPACITY);
    }
}
