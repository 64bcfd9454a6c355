//! Wire types at the edge: the bus event envelope of DESIGN §4/§5 and the WebSocket messages of
//! DESIGN §7, with their JSON and MessagePack codecs.
//!
//! May depend on `domain` only (plus encoding crates); never on an adapter or a service.
