//! The `Bus` port (publish with message id and expected sequence, ordered replay, durable
//! consume, request/reply, key-value) and its adapters: `nats` (async-nats JetStream) and `local`
//! (in-process, for the single-binary mode and for tests). DESIGN §5.
//!
//! May depend on `domain` and `protocol`; services depend on the port, never on an adapter.
