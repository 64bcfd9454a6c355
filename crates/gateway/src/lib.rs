//! The Gateway: hyper + fastwebsockets server speaking WebSocket protocol v1
//! (`docs/contract/websocket.md`). Holds
//! one bus subscription per channel per node, encodes each event once and fans the same bytes
//! out through bounded per-connection queues; forwards bets to GS; serves the demo page.
//!
//! Depends on `domain`, `protocol` and the `bus` port; never on another service or an adapter.
//!
//! A service is a library: [`Gateway::build`] binds and validates, [`Gateway::run`] serves until
//! its shutdown token fires, then closes every WebSocket with 1001 and drains within a deadline.
//!
//! Metrics (the binary owns the recorder and serves them on `/metrics`):
//! - connections: `gateway_connections` (open WebSockets, gauge),
//!   `gateway_rejected_connections_total{reason}` (upgrades refused with 503: `connection_limit`,
//!   `handshake_rate`);
//! - events: `gateway_events_relayed_total` (events taken from the bus, once per node),
//!   `gateway_events_delivered_total` (those events handed to connections, one per connection),
//!   `gateway_events_undecodable_total`, `gateway_fanout_seconds{channel}` (an event's arrival
//!   at its feed → its last connection written or queued; `table`, `player`);
//! - bets: `gateway_bets_forwarded_total` (bets sent to GS: bets/s),
//!   `gateway_bet_answer_seconds{outcome}` (bet forwarded → answer; `accepted`, `rejected`,
//!   `timeout`, `unavailable`), `gateway_overloaded_total`;
//! - answers: `gateway_rejections_total{code}` (every `error` a client is sent, by code: the
//!   gateway's own refusals and GS's rejections it relays), `gateway_rate_limited_total`;
//! - closes: `gateway_slow_consumers_total` (closed with 4008), `gateway_idle_disconnects_total`,
//!   `gateway_resumes_unrecovered_total` (a `since` answered `recovered: false`);
//! - betting status as this node tells clients: `gateway_betting_enabled` (1/0),
//!   `gateway_betting_disabled{reason}` (1 for the reason betting is off, 0 for every other
//!   reason of `protocol::status::reason`, all 0 while on; `other` for an unknown one) and
//!   `gateway_betting_status_changes_total{betting}`.

pub mod auth;
mod betting;
mod doubtful;
mod frame;
mod http;
mod hub;
mod inbound;
mod limits;
mod outbox;
mod session;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bus::Bus;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use auth::JwtSecret;
pub use limits::GatewayLimits;

/// Renders the node's metrics in the Prometheus text format (the binary owns the recorder).
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// The gateway's settings.
#[derive(Clone)]
pub struct GatewayConfig {
    pub http_addr: SocketAddr,
    pub jwt_secret: JwtSecret,
    /// How long a bet waits for GS before the client gets `TIMEOUT`.
    pub bet_timeout: Duration,
    /// How long shutdown waits for connections to finish after Close 1001.
    pub drain_timeout: Duration,
    /// After this long without hearing anything from a client the gateway pings it; after as
    /// long again with still nothing, the peer is taken for dead and the connection is dropped.
    pub idle_timeout: Duration,
    /// Serve `GET /dev/token?player=P` (mints a one-hour token for anyone who asks). For
    /// development stacks only (`CROUPIER_DEV_TOKENS=1`, ADR 0011); off by default.
    pub dev_tokens: bool,
    /// Throttling, shedding and back-pressure bounds (ADR 0012).
    pub limits: GatewayLimits,
    pub metrics: Option<MetricsRenderer>,
}

impl GatewayConfig {
    /// Development defaults for everything but the address and the secret.
    pub fn new(http_addr: SocketAddr, jwt_secret: JwtSecret) -> Self {
        Self {
            http_addr,
            jwt_secret,
            bet_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            dev_tokens: false,
            limits: GatewayLimits::default(),
            metrics: None,
        }
    }
}

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("http_addr", &self.http_addr)
            .field("bet_timeout", &self.bet_timeout)
            .field("drain_timeout", &self.drain_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("dev_tokens", &self.dev_tokens)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// How many connections may wait to be accepted (the listen backlog; tokio's default).
const LISTEN_BACKLOG: u32 = 1024;

/// Binds the listener; accepted sockets inherit its `SO_SNDBUF` when one is set.
fn listen(addr: SocketAddr, send_buffer: Option<u32>) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    if let Some(bytes) = send_buffer {
        socket.set_send_buffer_size(bytes)?;
    }
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What every connection of the node shares.
pub(crate) struct Shared<B> {
    pub bus: B,
    pub config: GatewayConfig,
    pub hub: hub::Hub<B>,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    /// The betting status as last read from the `status` bucket; sessions watch it.
    pub betting: tokio::sync::watch::Sender<betting::Current>,
    /// Connection slots, the handshake bucket and the node's bets in flight.
    pub admission: Arc<limits::Admission>,
    /// Bets whose fate this node left unknown to their client (never refused "not recorded").
    pub doubt: Arc<doubtful::Doubtful>,
}

/// A bound, not yet serving gateway.
pub struct Gateway<B> {
    listener: TcpListener,
    shared: Arc<Shared<B>>,
    /// What the buckets said at start-up, handed to the betting watch when it starts.
    heard: betting::Heard,
}

impl<B> std::fmt::Debug for Gateway<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("addr", &self.listener.local_addr().ok())
            .finish()
    }
}

impl<B: Bus> Gateway<B> {
    /// Binds the HTTP listener.
    pub async fn build(
        config: GatewayConfig,
        bus: B,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let listener = listen(config.http_addr, config.limits.send_buffer)?;
        let tasks = TaskTracker::new();
        // Learn the betting status before the first client is welcomed.
        let mut heard = betting::initial(&bus).await;
        let (betting, _) = tokio::sync::watch::channel(heard.now());
        let admission = Arc::new(limits::Admission::new(&config.limits));
        let shared = Arc::new(Shared {
            admission,
            doubt: Arc::default(),
            hub: hub::Hub::new(bus.clone(), tasks.clone(), shutdown.clone()),
            bus,
            config,
            tasks,
            shutdown,
            betting,
        });
        Ok(Self {
            listener,
            shared,
            heard,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the shutdown token fires, then closes every connection and waits for them
    /// (at most `drain_timeout`).
    pub async fn run(self) {
        let Self {
            listener,
            shared,
            heard,
        } = self;
        shared.tasks.spawn(betting::watch(
            shared.bus.clone(),
            heard,
            shared.betting.clone(),
            shared.shutdown.clone(),
        ));
        shared.tasks.spawn(export_betting_status(
            shared.betting.subscribe(),
            shared.shutdown.clone(),
        ));
        register_metrics();
        tracing::info!(addr = ?listener.local_addr().ok(), "gateway listening");
        loop {
            let accepted = tokio::select! {
                () = shared.shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let shared_for_conn = shared.clone();
                    shared
                        .tasks
                        .spawn(http::serve_connection(stream, peer, shared_for_conn));
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        drop(listener);
        shared.tasks.close();
        if tokio::time::timeout(shared.config.drain_timeout, shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after the drain deadline; dropping them");
        }
        tracing::info!("gateway stopped");
    }
}

/// Counters that only rise on trouble are exported from the start, at 0: a dashboard finds the
/// series, and an alert on their rise sees the first one. (No-ops without a recorder.)
fn register_metrics() {
    metrics::gauge!("gateway_connections").increment(0.0);
    for counter in [
        "gateway_events_relayed_total",
        "gateway_events_delivered_total",
        "gateway_events_undecodable_total",
        "gateway_bets_forwarded_total",
        "gateway_overloaded_total",
        "gateway_rate_limited_total",
        "gateway_slow_consumers_total",
        "gateway_idle_disconnects_total",
        "gateway_resumes_unrecovered_total",
    ] {
        metrics::counter!(counter).increment(0);
    }
    for reason in [
        limits::Refusal::ConnectionLimit,
        limits::Refusal::HandshakeRate,
    ] {
        metrics::counter!("gateway_rejected_connections_total", "reason" => reason.label())
            .increment(0);
    }
}

/// The reasons `gateway_betting_disabled` has a series for; any other is counted as `other`.
const BETTING_REASONS: [&str; 6] = [
    protocol::status::reason::STORE_UNAVAILABLE,
    protocol::status::reason::STORE_SLOW,
    protocol::status::reason::GS_UNAVAILABLE,
    protocol::status::reason::BUS_UNAVAILABLE,
    protocol::status::reason::OPERATOR,
    "other",
];

/// Exports the betting status this node tells its clients, as it changes, until shutdown.
async fn export_betting_status(
    mut betting: tokio::sync::watch::Receiver<betting::Current>,
    shutdown: CancellationToken,
) {
    for status in [protocol::Betting::Enabled, protocol::Betting::Disabled] {
        metrics::counter!("gateway_betting_status_changes_total", "betting" => status.as_str())
            .increment(0);
    }
    let mut first = true;
    loop {
        let current = betting.borrow_and_update().clone();
        let enabled = current.betting.is_enabled();
        metrics::gauge!("gateway_betting_enabled").set(if enabled { 1.0 } else { 0.0 });
        // A label from a fixed set: the reason comes from the bus and could be anything.
        let off_because = (!enabled).then(|| {
            BETTING_REASONS
                .iter()
                .copied()
                .find(|known| *known == current.reason)
                .unwrap_or("other")
        });
        for reason in BETTING_REASONS {
            let on = off_because == Some(reason);
            metrics::gauge!("gateway_betting_disabled", "reason" => reason).set(if on {
                1.0
            } else {
                0.0
            });
        }
        if !first {
            metrics::counter!("gateway_betting_status_changes_total", "betting" => current.betting.as_str())
                .increment(1);
        }
        first = false;
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = betting.changed() => if changed.is_err() { return },
        }
    }
}
