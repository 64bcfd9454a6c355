//! Throttling, shedding and back-pressure bounds of a gateway node (ADR 0012): how many
//! connections it holds, how fast it accepts handshakes, how fast one client may send, when it
//! sheds work with `OVERLOADED`, and how much one connection may have waiting to be written
//! before it is cut off as a slow consumer (4008).
//!
//! Owns the token bucket and the node-wide counters; depends on nothing but tokio's clock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The node's limits. Every field is configurable (`croupier run gateway --help`); the
/// defaults never trouble a normal client.
#[derive(Debug, Clone)]
pub struct GatewayLimits {
    /// Open WebSocket connections per node; an upgrade beyond it is answered HTTP 503.
    /// 50 000 idle connections are about a gigabyte of kernel and process memory.
    pub max_connections: usize,
    /// Handshakes (upgrades) accepted per second per node, sustained; beyond it HTTP 503
    /// with `Retry-After: 1`. A reconnect storm after a restart is spread out instead of
    /// landing at once.
    pub handshakes_per_s: u32,
    /// Handshakes accepted at once before the rate applies.
    pub handshake_burst: u32,
    /// Messages one client may send per second, sustained; beyond it each message is dropped
    /// and answered `RATE_LIMITED` (the connection stays).
    pub client_msgs_per_s: u32,
    /// Messages one client may send at once before the rate applies.
    pub client_burst: u32,
    /// Bets waiting on GS across the node; beyond it a bet is answered `OVERLOADED` at once
    /// instead of queueing behind thousands of others until it times out.
    pub max_bets_in_flight: usize,
    /// Bytes of broadcast events one connection may have waiting (received by the node, not
    /// yet written to its socket) before it is closed with 4008.
    pub outbound_max_bytes: usize,
    /// Events one connection may have waiting (queued behind its blocked socket, or held while
    /// a `subscribe` is answered) before it is closed with 4008.
    pub outbound_max_messages: usize,
    /// How long one flush to a client's socket may take; a client whose TCP window stays shut
    /// longer is a slow consumer and is closed with 4008.
    pub write_timeout: Duration,
    /// `SO_SNDBUF` of client sockets (set on the listener, inherited by each accepted
    /// socket); `None` leaves the kernel's autotuning, which lets a stalled reader pin up to
    /// `net.ipv4.tcp_wmem`'s maximum of kernel memory before `write_timeout` notices it.
    pub send_buffer: Option<u32>,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        Self {
            max_connections: 50_000,
            handshakes_per_s: 1_000,
            handshake_burst: 1_000,
            client_msgs_per_s: 10,
            client_burst: 20,
            max_bets_in_flight: 10_000,
            // A few thousand typical events (a few hundred bytes each): the message bound
            // trips first unless events are unusually large.
            outbound_max_bytes: 1 << 20,
            // Minutes of a busy table's events for a client that stalls for a moment.
            outbound_max_messages: 1024,
            write_timeout: Duration::from_secs(10),
            send_buffer: None,
        }
    }
}

/// A token bucket: `burst` tokens at most, refilled at `rate` per second. Small (16 bytes of
/// state besides its settings) because every connection holds one.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f32,
    burst: f32,
    tokens: f32,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = burst.max(1) as f32;
        Self {
            rate: rate.max(1) as f32,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Node-wide admission: connection slots and the handshake bucket.
#[derive(Debug)]
pub(crate) struct Admission {
    max_connections: usize,
    connections: AtomicUsize,
    handshakes: std::sync::Mutex<TokenBucket>,
    /// Bets waiting on GS, across the node.
    pub bets_in_flight: AtomicUsize,
}

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    ConnectionLimit,
    HandshakeRate,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::HandshakeRate => "handshake_rate",
        }
    }
}

impl Admission {
    pub fn new(limits: &GatewayLimits) -> Self {
        Self {
            max_connections: limits.max_connections,
            connections: AtomicUsize::new(0),
            handshakes: std::sync::Mutex::new(TokenBucket::new(
                limits.handshakes_per_s,
                limits.handshake_burst,
            )),
            bets_in_flight: AtomicUsize::new(0),
        }
    }

    /// A connection slot, or why there is none. The slot is given back when dropped.
    pub fn admit(self: &std::sync::Arc<Self>) -> Result<Slot, Refusal> {
        let taken = self.connections.fetch_add(1, Ordering::AcqRel);
        if taken >= self.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::ConnectionLimit);
        }
        let allowed = self
            .handshakes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_take(Instant::now());
        if !allowed {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::HandshakeRate);
        }
        metrics::gauge!("gateway_connections").increment(1);
        Ok(Slot(self.clone()))
    }
}

/// One admitted connection; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Slot(std::sync::Arc<Admission>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("gateway_connections").decrement(1);
    }
}

/// A bet counted against the node's `max_bets_in_flight` until dropped.
#[derive(Debug)]
pub(crate) struct BetTicket(std::sync::Arc<Admission>);

impl BetTicket {
    /// A ticket, or `None` when the node already has `max` bets waiting.
    pub fn take(admission: &std::sync::Arc<Admission>, max: usize) -> Option<Self> {
        let before = admission.bets_in_flight.fetch_add(1, Ordering::AcqRel);
        let ticket = Self(admission.clone());
        (before < max).then_some(ticket)
    }
}

impl Drop for BetTicket {
    fn drop(&mut self) {
        self.0.bets_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 20);
        bucket.last = start;
        let taken = (0..30).filter(|_| bucket.try_take(start)).count();
        assert_eq!(taken, 20, "the burst, no more");
        assert!(!bucket.try_take(start + Duration::from_millis(50)));
        assert!(
            bucket.try_take(start + Duration::from_millis(150)),
            "one every 100 ms"
        );
        assert!(!bucket.try_take(start + Duration::from_millis(160)));
        let later = start + Duration::from_secs(60);
        let taken = (0..30).filter(|_| bucket.try_take(later)).count();
        assert_eq!(taken, 20, "refills up to the burst only");
    }

    #[test]
    fn connection_slots_are_given_back() {
        let limits = GatewayLimits {
            max_connections: 2,
            ..GatewayLimits::default()
        };
        let admission = std::sync::Arc::new(Admission::new(&limits));
        let a = admission.admit().expect("first");
        let _b = admission.admit().expect("second");
        assert_eq!(admission.admit().err(), Some(Refusal::ConnectionLimit));
        drop(a);
        assert!(admission.admit().is_ok(), "a freed slot is reused");
    }

    #[test]
    fn bets_beyond_the_node_bound_get_no_ticket() {
        let admission = std::sync::Arc::new(Admission::new(&GatewayLimits::default()));
        let first = BetTicket::take(&admission, 1).expect("first");
        assert!(BetTicket::take(&admission, 1).is_none());
        drop(first);
        assert!(BetTicket::take(&admission, 1).is_some());
    }
}
