//! What a late joiner needs to know (`subscribed.state`, `docs/contract/websocket.md`), folded from
//! the events a channel's feed relays: the table's current round, phase, deadline, commitment and
//! recent outcomes, or the player's balance.

use domain::{Money, Phase};
use protocol::{ChannelState, Event, EventBody, PlayerState, TableState};

/// Outcomes kept for `state.recent`.
pub(crate) const RECENT_OUTCOMES: usize = 20;

/// Where a channel stands.
#[derive(Debug, Clone)]
pub(crate) enum Standing {
    Table(TableState),
    /// `None` until a wallet event of the player has been seen.
    Player(Option<Money>),
}

impl Standing {
    pub fn new_table() -> Self {
        Standing::Table(TableState {
            round: None,
            phase: None,
            closes_at: None,
            seed_hash: None,
            recent: Vec::new(),
        })
    }

    /// Applies one event of the channel.
    pub fn apply(&mut self, event: &Event) {
        match self {
            Standing::Table(state) => fold_table(state, &event.body),
            Standing::Player(balance) => {
                if let Some(new_balance) = wallet_balance(&event.body) {
                    *balance = Some(new_balance);
                }
            }
        }
    }

    pub fn to_state(&self) -> ChannelState {
        match self {
            Standing::Table(state) => ChannelState::Table(state.clone()),
            Standing::Player(balance) => ChannelState::Player(PlayerState {
                balance: balance.unwrap_or(Money::ZERO),
            }),
        }
    }
}

fn fold_table(state: &mut TableState, body: &EventBody) {
    match body {
        EventBody::RoundOpened(opened) => {
            state.round = Some(opened.round);
            state.phase = Some(Phase::Open);
            state.closes_at = Some(opened.closes_at);
            state.seed_hash = Some(opened.seed_hash);
        }
        EventBody::BettingClosed(closed) => {
            state.round = Some(closed.round);
            state.phase = Some(Phase::Closed);
        }
        EventBody::OutcomeDeclared(declared) => {
            state.round = Some(declared.round);
            state.phase = Some(Phase::Resulted);
            state.recent.insert(0, declared.outcome);
            state.recent.truncate(RECENT_OUTCOMES);
        }
        // A result may trail the next round's opening; it only moves the phase of its own round.
        EventBody::RoundSettled(settled) if state.round == Some(settled.round) => {
            state.phase = Some(Phase::Settled);
        }
        EventBody::RoundVoided(voided) => {
            state.round = Some(voided.round);
            state.phase = Some(Phase::Voided);
        }
        _ => {}
    }
}

fn wallet_balance(body: &EventBody) -> Option<Money> {
    match body {
        EventBody::BetPlaced(e) => Some(e.balance),
        EventBody::BetSettled(e) => Some(e.balance),
        EventBody::BetRefunded(e) => Some(e.balance),
        EventBody::FundsDeposited(e) => Some(e.balance),
        _ => None,
    }
}
