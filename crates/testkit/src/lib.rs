//! Test harness: real, ephemeral NATS JetStream and Postgres servers for every test (or the ones
//! named by `NATS_URL` / `DATABASE_URL` when adequate), isolated per test by database and
//! `CROUPIER_NATS_PREFIX`. A dev-dependency only; never linked into the product.
