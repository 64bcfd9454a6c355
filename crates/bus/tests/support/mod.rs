//! Helpers shared by the bus tests: adapters set up like a service would, and generous waits.

use std::future::Future;
use std::time::Duration;

use bus::{Bus, Definitions, LocalBus, NatsBus, NatsOptions};
use futures_util::{Stream, StreamExt};

/// How long a test waits for something that should happen: generous, so a loaded 2-core CI
/// machine never fails a test that is only slow.
pub const WAIT: Duration = Duration::from_secs(30);

/// A nats bus on the shared test server, in its own namespace, with Croupier's definitions.
pub async fn nats_bus() -> NatsBus {
    testkit::init_logging();
    let nats = testkit::nats().expect("a NATS server for tests");
    let bus = NatsBus::connect(&nats.url, &nats.prefix, NatsOptions::default())
        .await
        .expect("connect to the test NATS server");
    bus.setup(&Definitions::croupier())
        .await
        .expect("set up Croupier's streams and buckets");
    bus
}

/// A local bus with Croupier's definitions.
pub async fn local_bus() -> LocalBus {
    testkit::init_logging();
    let bus = LocalBus::new();
    bus.setup(&Definitions::croupier())
        .await
        .expect("set up Croupier's streams and buckets");
    bus
}

/// Awaits `future`, failing the test with `what` if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// The next item of `stream`, failing the test if the stream ends or nothing comes in time.
pub async fn next<S: Stream + Unpin>(stream: &mut S, what: &str) -> S::Item {
    within(what, stream.next())
        .await
        .unwrap_or_else(|| panic!("the stream ended while waiting for {what}"))
}

/// Asserts that `stream` yields nothing for `quiet`.
pub async fn assert_quiet<S>(stream: &mut S, quiet: Duration, what: &str)
where
    S: Stream + Unpin,
    S::Item: std::fmt::Debug,
{
    if let Ok(item) = tokio::time::timeout(quiet, stream.next()).await {
        panic!("expected {what}, got {item:?}");
    }
}
