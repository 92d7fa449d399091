//! Standard Webhooks signing (<https://www.standardwebhooks.com>): a per-endpoint secret
//! `whsec_<base64 of 32 random bytes>`, and the `webhook-signature` header
//! `v1,<base64(HMAC-SHA256(secret bytes, "{id}.{timestamp}.{body}"))>`. The receiver recomputes it
//! with the same secret and compares: the POST came from this adapter and was not altered, and the
//! timestamp (of this attempt) lets it refuse replays.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use rand_core::{OsRng, TryRngCore};
use sha2::Sha256;

use crate::AdapterError;

/// What every secret starts with, so that one pasted in the wrong place is recognised.
pub const SECRET_PREFIX: &str = "whsec_";

/// A new secret: 32 bytes from the operating system's generator, in the Standard Webhooks form.
pub fn new_secret() -> Result<String, AdapterError> {
    let mut bytes = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| AdapterError::Invalid {
            field: "secret".into(),
            reason: format!("the operating system gave no random bytes: {e}"),
        })?;
    Ok(format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes)))
}

/// The `webhook-signature` header value for one attempt.
pub fn signature(
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &str,
) -> Result<String, AdapterError> {
    let invalid = |reason: String| AdapterError::Invalid {
        field: "secret".into(),
        reason,
    };
    let key = STANDARD
        .decode(secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret))
        .map_err(|e| invalid(format!("stored secret is not base64: {e}")))?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&key).map_err(|e| invalid(format!("unusable key: {e}")))?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_32_random_bytes_in_the_standard_form() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a, b);
        let raw = STANDARD
            .decode(a.strip_prefix(SECRET_PREFIX).unwrap())
            .unwrap();
        assert_eq!(raw.len(), 32);
    }

    #[test]
    fn the_signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification (and its reference libraries).
        let sig = signature(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            r#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
