//! Player authentication: HS256 JWTs (`sub` = player id, `exp`) signed with
//! `CROUPIER_JWT_SECRET` (`docs/contract/websocket.md`). Minting lives here too, so the `croupier
//! token` command and the gateway agree on claims by construction.

use std::fmt;
use std::time::Duration;

use domain::PlayerId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The shortest secret accepted: HS256 keys shorter than the hash output weaken it.
pub const MIN_SECRET_BYTES: usize = 32;

/// Clock skew tolerated on `exp`, so a token minted on a slightly faster machine still works.
const LEEWAY_SECONDS: u64 = 5;

/// The HMAC key: the UTF-8 bytes of `CROUPIER_JWT_SECRET`. Never printed.
#[derive(Clone)]
pub struct JwtSecret {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtSecret(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("CROUPIER_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes (it has {0})")]
    TooShort(usize),
}

impl JwtSecret {
    pub fn new(secret: &str) -> Result<Self, SecretError> {
        let bytes = secret.as_bytes();
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort(bytes.len()));
        }
        Ok(Self {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    /// Written by [`mint`]; optional when verifying (the contract requires only `sub` and `exp`).
    #[serde(default)]
    iat: u64,
}

/// Why a token was refused. The gateway says only "invalid token" or "token expired" to the
/// client; the detail is for logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token subject is not a valid player id")]
    BadSubject,
}

/// Mints a token for `player` valid for `ttl` from `now_unix` (seconds since the epoch).
pub fn mint(secret: &JwtSecret, player: &PlayerId, ttl: Duration, now_unix: u64) -> String {
    let claims = Claims {
        sub: player.as_str().to_string(),
        iat: now_unix,
        exp: now_unix.saturating_add(ttl.as_secs()),
    };
    // Encoding an in-memory struct with an HMAC key cannot fail; an empty token would simply be
    // refused by every verifier, so nothing unsafe leaks out if the library ever disagrees.
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &secret.encoding)
        .unwrap_or_default()
}

/// Checks signature, algorithm (HS256 only: `none` and others are refused) and expiry, and
/// returns the player the token names.
pub fn verify(secret: &JwtSecret, token: &str) -> Result<PlayerId, AuthError> {
    verify_token(secret, token).map(|verified| verified.player)
}

/// A token that passed [`verify_token`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub player: PlayerId,
    /// `exp`, seconds since the Unix epoch: after it (and the leeway) the connection's bets are
    /// refused with `UNAUTHORIZED`.
    pub expires_at: u64,
}

impl Verified {
    /// Whether the token has expired at `now_unix` (with the same leeway as at the upgrade).
    pub fn expired(&self, now_unix: u64) -> bool {
        now_unix > self.expires_at.saturating_add(LEEWAY_SECONDS)
    }
}

/// [`verify`], keeping the expiry.
pub fn verify_token(secret: &JwtSecret, token: &str) -> Result<Verified, AuthError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = LEEWAY_SECONDS;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let data = jsonwebtoken::decode::<Claims>(token, &secret.decoding, &validation).map_err(
        |e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        },
    )?;
    let player = PlayerId::parse(&data.claims.sub).map_err(|_| AuthError::BadSubject)?;
    Ok(Verified {
        player,
        expires_at: data.claims.exp,
    })
}

/// Seconds since the Unix epoch, for minting.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> JwtSecret {
        JwtSecret::new(s).expect("long enough")
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_short_secret_is_refused() {
        assert_eq!(
            JwtSecret::new("short").err(),
            Some(SecretError::TooShort(5))
        );
    }

    #[test]
    fn a_minted_token_names_its_player() {
        let alice = PlayerId::parse("alice").expect("id");
        let token = mint(&secret(SECRET), &alice, Duration::from_secs(60), now_unix());
        assert_eq!(verify(&secret(SECRET), &token), Ok(alice));
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let alice = PlayerId::parse("alice").expect("id");
        let token = mint(&secret(SECRET), &alice, Duration::from_secs(60), now_unix());
        let other = secret("fedcba9876543210fedcba9876543210");
        assert!(matches!(verify(&other, &token), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn an_expired_token_is_refused() {
        let alice = PlayerId::parse("alice").expect("id");
        let token = mint(
            &secret(SECRET),
            &alice,
            Duration::from_secs(60),
            now_unix() - 3600,
        );
        assert_eq!(verify(&secret(SECRET), &token), Err(AuthError::Expired));
    }

    #[test]
    fn garbage_and_unsigned_tokens_are_refused() {
        assert!(verify(&secret(SECRET), "not.a.token").is_err());
        // {"alg":"none"} with alice as subject and no signature.
        let unsigned =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(verify(&secret(SECRET), unsigned).is_err());
    }

    #[test]
    fn a_token_with_only_sub_and_exp_is_accepted_and_knows_when_it_expires() {
        #[derive(Serialize)]
        struct Minimal<'a> {
            sub: &'a str,
            exp: u64,
        }
        let exp = now_unix() + 60;
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Minimal { sub: "alice", exp },
            &secret(SECRET).encoding,
        )
        .expect("encode");
        let verified = verify_token(&secret(SECRET), &token).expect("valid");
        assert_eq!(verified.player.as_str(), "alice");
        assert!(!verified.expired(exp));
        assert!(verified.expired(exp + LEEWAY_SECONDS + 1));
    }

    #[test]
    fn the_secret_is_never_printed() {
        assert_eq!(format!("{:?}", secret(SECRET)), "JwtSecret(..)");
    }
}
