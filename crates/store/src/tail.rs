//! Tailing the store: every committed event from a position on, in order, forever, never
//! skipping one. Built for the outbox publisher (publish committed events to the bus).
//!
//! A tailer holds its own connection (not a pooled one: `LISTEN` needs a session of its own),
//! reads pages of at most [`TailOptions::batch`] events, and when it has caught up waits for a
//! notification on [`crate::EVENTS_CHANNEL`] (sent by every append on commit) or for
//! [`TailOptions::poll_interval`], whichever comes first; polling covers a lost notification
//! or a writer that does not notify. Positions are gapless as readers see them (the head row),
//! so "the next position" is always the next event; should a gap ever show (a store written
//! around the head row), the tailer waits at the gap rather than skip it.
//!
//! Errors are yielded as items, and the tailer then reconnects after
//! [`TailOptions::reconnect_delay`] and resumes at the first position not yet yielded: the
//! consumer decides whether to keep going.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::append::EVENTS_CHANNEL;
use crate::error::{StoreError, Unavailable};
use crate::read::{StoredEvent, read_from};

/// How a tailer reads.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Events per read. Bounds the tailer's buffer: at most this many events are held at once.
    pub batch: i64,
    /// How long to wait for a notification before reading again anyway.
    pub poll_interval: Duration,
    /// Client-side timeout of each connect and each read.
    pub call_timeout: Duration,
    /// Pause after an error before reconnecting.
    pub reconnect_delay: Duration,
}

impl Default for TailOptions {
    fn default() -> Self {
        Self {
            // 500 events of a few hundred bytes: a page costs one round trip and well under a MB.
            batch: 500,
            poll_interval: Duration::from_millis(250),
            call_timeout: Duration::from_secs(5),
            reconnect_delay: Duration::from_millis(500),
        }
    }
}

/// Every committed event with `position >= from_position`, in position order, without end.
///
/// The stream connects lazily, on first poll, with `config` (which should carry keepalives and
/// timeouts, like [`crate::PoolConfig::pg_config`] gives). Dropping the stream closes its
/// connection.
pub fn tail(
    config: tokio_postgres::Config,
    from_position: i64,
    options: TailOptions,
) -> impl Stream<Item = Result<StoredEvent, StoreError>> + Send + 'static {
    let state = Tailer {
        config,
        options,
        next: from_position.max(1),
        connection: None,
        buffered: VecDeque::new(),
        retry: false,
        gap_logged_at: None,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        let item = state.next_item().await;
        Some((item, state))
    })
}

struct Tailer {
    config: tokio_postgres::Config,
    options: TailOptions,
    /// The first position not yet read.
    next: i64,
    connection: Option<Listening>,
    buffered: VecDeque<StoredEvent>,
    /// An error was just yielded: pause before reconnecting.
    retry: bool,
    /// The position at which a gap was last logged, so it is logged once.
    gap_logged_at: Option<i64>,
}

/// A connection listening on the events channel.
struct Listening {
    client: Client,
    wake: Arc<Notify>,
    driver: JoinHandle<()>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        // The driver ends by itself once the client is gone; aborting makes it immediate.
        self.driver.abort();
    }
}

impl Tailer {
    async fn next_item(&mut self) -> Result<StoredEvent, StoreError> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Ok(event);
            }
            if std::mem::take(&mut self.retry) {
                tokio::time::sleep(self.options.reconnect_delay).await;
            }
            let listening = match self.connection.take() {
                Some(listening) => listening,
                None => match self.connect().await {
                    Ok(listening) => listening,
                    Err(error) => {
                        self.retry = true;
                        return Err(error);
                    }
                },
            };
            let read = tokio::time::timeout(
                self.options.call_timeout,
                read_from(&listening.client, self.next, self.options.batch),
            )
            .await;
            let events = match read {
                Ok(Ok(events)) => events,
                Ok(Err(error)) => {
                    self.retry = true;
                    return Err(error);
                }
                Err(_) => {
                    self.retry = true;
                    return Err(Unavailable::TimedOut {
                        what: "tail read",
                        after: self.options.call_timeout,
                    }
                    .into());
                }
            };
            // Keep only the gapless prefix starting at `next`.
            let mut expected = self.next;
            for event in events {
                if event.position != expected {
                    if self.gap_logged_at != Some(expected) {
                        tracing::warn!(
                            missing = expected,
                            found = event.position,
                            "the event store shows a gap; waiting for the missing position"
                        );
                        self.gap_logged_at = Some(expected);
                    }
                    break;
                }
                expected += 1;
                self.buffered.push_back(event);
            }
            self.next = expected;
            let caught_up = self.buffered.is_empty();
            let wake = Arc::clone(&listening.wake);
            self.connection = Some(listening);
            if caught_up {
                // A notification that arrived since the last wait is stored in `wake`, so one
                // sent between the read above and this wait is not lost.
                let _ = tokio::time::timeout(self.options.poll_interval, wake.notified()).await;
            }
        }
    }

    async fn connect(&self) -> Result<Listening, StoreError> {
        let timeout = self.options.call_timeout;
        let connected = tokio::time::timeout(timeout, async {
            let (client, mut connection) = self.config.connect(NoTls).await?;
            let wake = Arc::new(Notify::new());
            let notify = Arc::clone(&wake);
            let driver = tokio::spawn(async move {
                // Drives the connection and turns notifications into wake-ups; ends when the
                // connection closes (the client was dropped, or the server went away).
                while let Some(message) =
                    std::future::poll_fn(|cx| connection.poll_message(cx)).await
                {
                    match message {
                        Ok(AsyncMessage::Notification(_)) => notify.notify_one(),
                        Ok(_) => {}
                        Err(error) => {
                            tracing::debug!(%error, "tail connection ended");
                            break;
                        }
                    }
                }
            });
            let listening = Listening {
                client,
                wake,
                driver,
            };
            listening
                .client
                .batch_execute(&format!("LISTEN {EVENTS_CHANNEL}"))
                .await?;
            Ok::<_, StoreError>(listening)
        })
        .await;
        match connected {
            Ok(result) => result,
            Err(_) => Err(Unavailable::TimedOut {
                what: "tail connect",
                after: timeout,
            }
            .into()),
        }
    }
}
