//! The Gateway: hyper + fastwebsockets server speaking WebSocket protocol v1 (DESIGN §7). Holds
//! one bus subscription per channel per node, encodes each event once and fans the same bytes
//! out through bounded per-connection queues; forwards bets to GS; serves the demo page.
//!
//! Depends on `domain`, `protocol` and the `bus` port; never on another service or an adapter.

pub mod auth;
