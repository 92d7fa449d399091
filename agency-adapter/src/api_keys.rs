//! Keys for the local HTTP API: made, listed and revoked by `spean-adapter api-key`, checked on
//! every request. A key reads `spean_<key_id>_<secret>`; the store keeps the key id, a name and
//! the SHA-256 of the whole key, never the key. Shown once, when it is made.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use rand_core::{OsRng, TryRngCore};
use rusqlite::OptionalExtension;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{AdapterError, store::Store};

/// What every key starts with, so that a key pasted in the wrong place is recognisable (and
/// secret scanners can find one committed by mistake).
const PREFIX: &str = "spean_";
/// The longest name a key may have: it is written in the audit log with every read it makes.
const MAX_NAME: usize = 64;

/// A key as `api-key list` shows it: never the key, never its hash.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub key_id: String,
    pub name: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// A key just made: the only time the whole key is known.
#[derive(Serialize)]
pub struct NewKey {
    #[serde(flatten)]
    pub key: ApiKey,
    /// The key to give the system that calls the API. Not stored; not shown again.
    pub secret: String,
}

/// Who a valid key says is calling: its id and name, as the audit log records them.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: String,
    pub name: String,
}

fn digest(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

fn random<const N: usize>() -> Result<[u8; N], AdapterError> {
    let mut bytes = [0u8; N];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|error| AdapterError::Config(format!("no randomness for an API key: {error}")))?;
    Ok(bytes)
}

fn check_name(name: &str) -> Result<(), AdapterError> {
    let invalid = |reason: &str| AdapterError::Invalid {
        field: "name".into(),
        reason: reason.into(),
    };
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(invalid("must be 1 to 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(
            "only letters, digits and - _ . are allowed (it names a system, e.g. oscar-sync)",
        ));
    }
    Ok(())
}

impl Store {
    /// Makes a key named `name`; a live key of the same name is refused, naming the field.
    pub async fn create_api_key(&self, name: &str) -> Result<NewKey, AdapterError> {
        check_name(name)?;
        let key_id = format!("k{}", hex::encode(random::<8>()?));
        let secret = format!(
            "{PREFIX}{key_id}_{}",
            URL_SAFE_NO_PAD.encode(random::<32>()?)
        );
        let key = ApiKey {
            key_id,
            name: name.to_owned(),
            created_at: crate::store::now(),
            revoked_at: None,
        };
        let row = key.clone();
        let hash = digest(&secret);
        self.write(move |conn| {
            let taken: Option<String> = conn
                .query_row(
                    "SELECT key_id FROM api_keys WHERE name = ?1 AND revoked_at IS NULL",
                    [&row.name],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(taken) = taken {
                return Err(AdapterError::Invalid {
                    field: "name".into(),
                    reason: format!(
                        "a live key {taken} is already named {:?}; revoke it or choose another name",
                        row.name
                    ),
                });
            }
            conn.execute(
                "INSERT INTO api_keys (key_id, name, hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![row.key_id, row.name, hash, row.created_at],
            )?;
            Ok(())
        })
        .await?;
        Ok(NewKey { key, secret })
    }

    /// Every key ever made, live ones first, newest first.
    pub async fn api_keys(&self) -> Result<Vec<ApiKey>, AdapterError> {
        self.write(|conn| {
            let mut query = conn.prepare(
                "SELECT key_id, name, created_at, revoked_at FROM api_keys \
                 ORDER BY revoked_at IS NOT NULL, created_at DESC",
            )?;
            let keys = query
                .query_map([], |r| {
                    Ok(ApiKey {
                        key_id: r.get(0)?,
                        name: r.get(1)?,
                        created_at: r.get(2)?,
                        revoked_at: r.get(3)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(keys)
        })
        .await
    }

    /// Revokes a key by its id or its (live) name. Revoking a revoked key changes nothing.
    pub async fn revoke_api_key(&self, id_or_name: &str) -> Result<ApiKey, AdapterError> {
        let wanted = id_or_name.to_owned();
        self.write(move |conn| {
            let found = conn
                .query_row(
                    "SELECT key_id, name, created_at, revoked_at FROM api_keys \
                     WHERE key_id = ?1 OR (name = ?1 AND revoked_at IS NULL)",
                    [&wanted],
                    |r| {
                        Ok(ApiKey {
                            key_id: r.get(0)?,
                            name: r.get(1)?,
                            created_at: r.get(2)?,
                            revoked_at: r.get(3)?,
                        })
                    },
                )
                .optional()?;
            let mut key = found.ok_or_else(|| AdapterError::NotFound {
                what: "API key",
                id: wanted.clone(),
            })?;
            if key.revoked_at.is_none() {
                let now = crate::store::now();
                conn.execute(
                    "UPDATE api_keys SET revoked_at = ?2 WHERE key_id = ?1",
                    rusqlite::params![key.key_id, now],
                )?;
                key.revoked_at = Some(now);
            }
            Ok(key)
        })
        .await
    }

    /// Who `presented` says is calling, if it is a live key of this store; `None` otherwise.
    /// Reads only: a refused request writes nothing.
    pub async fn api_caller(&self, presented: &str) -> Result<Option<Caller>, AdapterError> {
        let Some(key_id) = presented
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id.to_owned())
        else {
            return Ok(None);
        };
        let row: Option<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT name, hash FROM api_keys WHERE key_id = ? AND revoked_at IS NULL",
        )
        .bind(&key_id)
        .fetch_optional(self.pool())
        .await?;
        Ok(row.and_then(|(name, hash)| {
            same(&hash, &digest(presented)).then_some(Caller { key_id, name })
        }))
    }
}

/// Compares two digests in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_not_name_a_system_are_refused_naming_the_field() {
        for bad in ["", "has space", "ឈ្មោះ", &"x".repeat(65), "a/b"] {
            match check_name(bad) {
                Err(AdapterError::Invalid { field, .. }) => assert_eq!(field, "name"),
                other => panic!("{bad:?} was not refused: {other:?}"),
            }
        }
        check_name("oscar-sync_2.prod").unwrap();
    }

    #[test]
    fn digests_compare_equal_only_when_equal() {
        assert!(same(&digest("a"), &digest("a")));
        assert!(!same(&digest("a"), &digest("b")));
        assert!(!same(b"ab", b"a"));
    }
}
