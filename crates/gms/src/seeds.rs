//! Where round seeds come from, and how a pending one survives a crash (ADR 0007).
//!
//! A round's server seed is `HMAC-SHA256(key = master secret, "croupier-seed:v1:<table>:<round>")`.
//! The seed of a round still in progress is therefore never stored or published anywhere before
//! its outcome, yet any GMS holding the master secret (a restarted leader, a standby taking
//! over) recomputes it and completes the round. Knowing revealed seeds does not reveal the
//! secret or future seeds (HMAC is a pseudo-random function). Without a configured secret the
//! process draws a random one: a crash then leaves the pending seed unrecoverable and the round
//! is voided, which is honest but refunds every bet.

use domain::{RoundId, ServerSeed, TableId};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The shortest master secret accepted.
pub const MIN_SECRET_BYTES: usize = 32;

/// The master secret seeds derive from. Never printed.
#[derive(Clone)]
pub struct SeedSecret {
    key: Vec<u8>,
    /// Configured (shared by every GMS, survives restarts) or drawn at start.
    persistent: bool,
}

impl std::fmt::Debug for SeedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SeedSecret(.., persistent: {})", self.persistent)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedSecretError {
    #[error("CROUPIER_SEED_SECRET must be at least {MIN_SECRET_BYTES} bytes (it has {0})")]
    TooShort(usize),
    #[error("the OS random source failed: {0}")]
    Random(String),
}

impl SeedSecret {
    /// A configured secret, shared by every GMS of the deployment.
    pub fn new(secret: &str) -> Result<Self, SeedSecretError> {
        let key = secret.as_bytes().to_vec();
        if key.len() < MIN_SECRET_BYTES {
            return Err(SeedSecretError::TooShort(key.len()));
        }
        Ok(Self {
            key,
            persistent: true,
        })
    }

    /// A secret drawn from the OS CSPRNG for this process only.
    pub fn random() -> Result<Self, SeedSecretError> {
        let mut key = vec![0u8; 32];
        getrandom::fill(&mut key).map_err(|e| SeedSecretError::Random(e.to_string()))?;
        Ok(Self {
            key,
            persistent: false,
        })
    }

    /// Whether another process (or this one after a restart) can recompute pending seeds.
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// The server seed of `table`'s round `round`.
    pub fn seed(&self, table: &TableId, round: RoundId) -> ServerSeed {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.key) {
            Ok(mac) => mac,
            // HMAC takes keys of any length; this arm cannot be reached.
            Err(_) => unreachable_key(),
        };
        mac.update(format!("croupier-seed:v1:{table}:{}", round.get()).as_bytes());
        let bytes: [u8; 32] = mac.finalize().into_bytes().into();
        ServerSeed::from_bytes(bytes)
    }
}

#[cold]
fn unreachable_key() -> ! {
    panic!("HMAC-SHA256 accepts keys of every length")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> TableId {
        TableId::parse("roulette-1").expect("id")
    }

    #[test]
    fn a_seed_is_recomputed_identically_from_the_same_secret() {
        let a = SeedSecret::new("0123456789abcdef0123456789abcdef").expect("secret");
        let b = SeedSecret::new("0123456789abcdef0123456789abcdef").expect("secret");
        let round = RoundId::new(7).expect("round");
        assert_eq!(
            a.seed(&table(), round).as_bytes(),
            b.seed(&table(), round).as_bytes()
        );
    }

    #[test]
    fn rounds_and_tables_get_different_seeds() {
        let secret = SeedSecret::new("0123456789abcdef0123456789abcdef").expect("secret");
        let one = secret.seed(&table(), RoundId::new(1).expect("round"));
        let two = secret.seed(&table(), RoundId::new(2).expect("round"));
        let other = secret.seed(
            &TableId::parse("vip_7").expect("id"),
            RoundId::new(1).expect("round"),
        );
        assert_ne!(one.as_bytes(), two.as_bytes());
        assert_ne!(one.as_bytes(), other.as_bytes());
    }

    #[test]
    fn a_short_secret_is_refused_and_never_printed() {
        assert_eq!(
            SeedSecret::new("short").err(),
            Some(SeedSecretError::TooShort(5))
        );
        let secret = SeedSecret::new("0123456789abcdef0123456789abcdef").expect("secret");
        assert!(!format!("{secret:?}").contains("0123"));
    }
}
