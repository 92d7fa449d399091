//! Protection of the local store at rest, against a stolen laptop or a copied store file: every
//! column that holds case data or a secret is sealed with XChaCha20-Poly1305 under a data key that
//! is kept apart from the store (docs/security.md#at-rest).
//!
//! - [`Vault`]: seals and opens one column value. The associated data binds the ciphertext to its
//!   table, column and row id (`purpose` and `row_id`), so a value copied into another row or
//!   column does not open: rows cannot be swapped behind the adapter's back.
//! - [`StoreKey`]: where the data key comes from: a key file (0600, created with 32 random bytes on
//!   first use; setting `store_key`) or a passphrase given at start
//!   (`SPEAN_ADAPTER_STORE_PASSPHRASE`, stretched with scrypt and a salt kept in the store).
//!
//! Why application-level sealing and not an encrypted SQLite: SQLCipher needs OpenSSL (not built
//! here) and would change the `libsqlite3-sys` build the broker shares. What stays in clear is the
//! envelope (ids, agencies, codes, dates, the client's pseudonym), which the listings and figures
//! query and which holds no name, note or reason.
//!
//! An empty value stays empty: "nothing held" (a withdrawn case file, a forgotten note) reads the
//! same sealed or not, and the SQL that asks `length(case_file) > 0` keeps its meaning.

use std::path::{Path, PathBuf};

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use rand_core::{OsRng, TryRngCore};
use rusqlite::{Connection, OptionalExtension, params};
use spean_domain::ids::AgencyId;
use zeroize::Zeroizing;

use crate::AdapterError;

/// `referrals.case_file`, bound to the referral id.
pub const CASE_FILE: &str = "referrals.case_file";
/// `events.encoded` (the whole event, with its opened free text), bound to the event id. The
/// `actor_person` and `note` columns are kept empty: reads come from this.
pub const EVENT: &str = "events.encoded";
/// `outbox.payload` (a submit holds the case file before it is sealed to its readers), bound to
/// the request id.
pub const OUTBOX_PAYLOAD: &str = "outbox.payload";
/// `outbox_sealed.payload`, bound to the request id.
pub const OUTBOX_SEALED: &str = "outbox_sealed.payload";
/// `seal_keys.secret` (the agency's private sealing keys), bound to the key id in hex.
pub const SEAL_KEY: &str = "seal_keys.secret";
/// `audit_log.actor` (the name of the staff member who read a case file), bound to the entry's
/// hash in hex.
pub const AUDIT_ACTOR: &str = "audit_log.actor";

/// The environment variable holding the passphrase, when the key is derived from one. Not a
/// setting in the TOML file on purpose: a passphrase written beside the store protects nothing.
pub const PASSPHRASE_ENV: &str = "SPEAN_ADAPTER_STORE_PASSPHRASE";

/// The first byte of every sealed value: the format, so that a later one (another cipher, a key
/// id for rotation) can be told apart.
const FORMAT: u8 = 1;
const NONCE_LEN: usize = 24;
const KEY_LEN: usize = 32;

/// The purpose of the value that proves a key is the store's own ([`Vault::check_value`]).
const KEY_CHECK: &str = "at_rest.key_check";
const KEY_CHECK_PLAIN: &[u8] = b"spean adapter store key";

/// Seals and opens column values under the store's data key. Never prints the key.
#[derive(Clone)]
pub struct Vault {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(..)")
    }
}

impl Vault {
    /// A vault over a 32-byte data key.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Seals `plain` for the column named by `purpose` (e.g. `referrals.case_file`) of the row
    /// `row_id`: a random nonce, then the ciphertext and its tag. Empty stays empty.
    ///
    /// Other parts of the adapter (webhook secrets) call this with a purpose of their own.
    pub fn seal(&self, purpose: &str, row_id: &str, plain: &[u8]) -> Result<Vec<u8>, AdapterError> {
        if plain.is_empty() {
            return Ok(Vec::new());
        }
        let mut nonce = [0u8; NONCE_LEN];
        OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|e| AdapterError::AtRest(format!("no randomness for a nonce: {e}")))?;
        let aad = associated_data(purpose, row_id);
        let sealed = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .map_err(|_| AdapterError::AtRest(format!("cannot seal {purpose}")))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(FORMAT);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`Vault::seal`] sealed for the same `purpose` and `row_id`. Empty stays empty.
    /// Fails, naming the column and row (never the content), when the key is another or the value
    /// was moved, changed, or never sealed.
    pub fn open(
        &self,
        purpose: &str,
        row_id: &str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, AdapterError> {
        if sealed.is_empty() {
            return Ok(Vec::new());
        }
        let refused = || {
            AdapterError::AtRest(format!(
                "{purpose} of {row_id} does not open with the store key (another key, or changed)"
            ))
        };
        let (format, rest) = sealed.split_first().ok_or_else(refused)?;
        if *format != FORMAT || rest.len() < NONCE_LEN {
            return Err(refused());
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| refused())?;
        let aad = associated_data(purpose, row_id);
        self.cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| refused())
    }

    /// Text sealed as its UTF-8 bytes, opened back ([`Vault::open`]).
    pub fn open_text(
        &self,
        purpose: &str,
        row_id: &str,
        sealed: &[u8],
    ) -> Result<String, AdapterError> {
        String::from_utf8(self.open(purpose, row_id, sealed)?)
            .map_err(|_| AdapterError::AtRest(format!("{purpose} of {row_id} is not UTF-8")))
    }

    /// A value kept in the store that only this key opens: how a wrong key is told before anything
    /// is read or written ([`Vault::opens_check_value`]).
    pub fn check_value(&self) -> Result<Vec<u8>, AdapterError> {
        self.seal(KEY_CHECK, "1", KEY_CHECK_PLAIN)
    }

    /// Whether `check` (from [`Vault::check_value`]) was sealed with this vault's key.
    pub fn opens_check_value(&self, check: &[u8]) -> bool {
        self.open(KEY_CHECK, "1", check)
            .is_ok_and(|plain| plain == KEY_CHECK_PLAIN)
    }
}

/// `purpose`, a zero byte, then `row_id`: neither holds a zero byte, so no two pairs give the same.
fn associated_data(purpose: &str, row_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(purpose.len() + 1 + row_id.len());
    aad.extend_from_slice(purpose.as_bytes());
    aad.push(0);
    aad.extend_from_slice(row_id.as_bytes());
    aad
}

/// The key file of a store opened without a `store_key` setting (tools and tests): beside the
/// store, `<store>.key`. The daemon and the commands keep it apart (`config::Settings::store_key`).
pub fn key_beside(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".key");
    PathBuf::from(name)
}

/// The `at_rest` row of a store.
struct Sealing {
    key_check: Vec<u8>,
    salt: Vec<u8>,
}

fn sealing(conn: &Connection) -> Result<Option<Sealing>, AdapterError> {
    Ok(conn
        .prepare_cached("SELECT key_check, salt FROM at_rest WHERE id = 1")?
        .query_row([], |row| {
            Ok(Sealing {
                key_check: row.get(0)?,
                salt: row.get(1)?,
            })
        })
        .optional()?)
}

/// The vault of the store on `conn` (at `store`), if `key` is its key: checked against the
/// store's key check before anything is read or written. A store never sealed (no `at_rest` row)
/// is sealed now with `key`, made if it is a key file that does not exist yet.
pub(crate) fn unlock(
    conn: &Connection,
    key: &StoreKey,
    agency: &AgencyId,
    store: &Path,
) -> Result<Vault, AdapterError> {
    let checked = |found: Sealing| {
        let vault = key.vault(&found.salt, false)?;
        if vault.opens_check_value(&found.key_check) {
            Ok(vault)
        } else {
            Err(AdapterError::WrongStoreKey {
                setting: key.setting(),
                store: store.to_owned(),
            })
        }
    };
    if let Some(found) = sealing(conn)? {
        return checked(found);
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result =
        (|| {
            // Another process (the daemon and a command started at once) may have sealed it first.
            if let Some(found) = sealing(conn)? {
                return Ok((checked(found)?, 0));
            }
            let salt = match key {
                StoreKey::File(_) => Vec::new(),
                StoreKey::Passphrase(_) => StoreKey::new_salt()?,
            };
            let vault = key.vault(&salt, true)?;
            let sealed = seal_in_place(conn, &vault)?;
            conn.execute(
            "INSERT INTO at_rest (id, key_check, salt, agency, sealed_at) VALUES (1, ?, ?, ?, ?)",
            params![vault.check_value()?, salt, agency.as_str(), crate::store::now()],
        )?;
            Ok((vault, sealed))
        })();
    let (vault, sealed) = match result.and_then(|done| {
        conn.execute_batch("COMMIT")?;
        Ok(done)
    }) {
        Ok(done) => done,
        Err(error) => {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            return Err(error);
        }
    };
    if sealed > 0 {
        // The values in clear were overwritten in their pages (secure_delete); the write-ahead log
        // still holds the pages as they were: rewrite the file and empty the log. Best effort: a
        // reader holding an old snapshot defers it, and the next open of an idle store finds
        // nothing left to seal but the log is checkpointed by SQLite as usual.
        if let Err(e) = conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);") {
            tracing::warn!(error = %e, "rewriting the store after sealing it deferred");
        }
        tracing::warn!(
            values = sealed,
            "the store held case data in clear: sealed in place"
        );
    }
    Ok(vault)
}

/// Seals every value of a store written before sealing, inside the caller's transaction; how many.
fn seal_in_place(conn: &Connection, vault: &Vault) -> Result<usize, AdapterError> {
    let columns = [
        ("referrals", "referral_id", "case_file", CASE_FILE),
        ("events", "event_id", "encoded", EVENT),
        ("outbox", "request_id", "payload", OUTBOX_PAYLOAD),
        ("outbox_sealed", "request_id", "payload", OUTBOX_SEALED),
        ("seal_keys", "lower(hex(key_id))", "secret", SEAL_KEY),
        ("audit_log", "lower(hex(hash))", "actor", AUDIT_ACTOR),
    ];
    let mut sealed = 0;
    for (table, id, column, purpose) in columns {
        let rows: Vec<(String, Vec<u8>, i64)> = {
            let mut statement = conn.prepare(&format!(
                "SELECT {id}, CAST({column} AS BLOB), rowid FROM {table} \
                 WHERE length({column}) > 0"
            ))?;
            let rows =
                statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut update = conn.prepare(&format!(
            "UPDATE {table} SET {column} = ?1 WHERE rowid = ?2"
        ))?;
        for (row_id, plain, rowid) in rows {
            update.execute(params![vault.seal(purpose, &row_id, &plain)?, rowid])?;
            sealed += 1;
        }
    }
    // Who acted and the note live in the sealed event only.
    sealed += conn.execute(
        "UPDATE events SET actor_person = '', note = '' WHERE actor_person <> '' OR note <> ''",
        [],
    )?;
    Ok(sealed)
}

/// Where the store's data key comes from.
#[derive(Clone)]
pub enum StoreKey {
    /// A file of 32 random bytes (0600), created on first use; the setting `store_key`.
    File(PathBuf),
    /// A passphrase given at start, stretched with scrypt and the salt kept in the store.
    Passphrase(Zeroizing<String>),
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "StoreKey::File({})", path.display()),
            Self::Passphrase(_) => f.write_str("StoreKey::Passphrase(..)"),
        }
    }
}

/// The salt length for a passphrase's key.
pub const SALT_LEN: usize = 16;

impl StoreKey {
    /// The passphrase from [`PASSPHRASE_ENV`] when it is set and not empty, else the key file.
    pub fn from_env_or_file(file: &Path) -> Self {
        match std::env::var(PASSPHRASE_ENV) {
            Ok(passphrase) if !passphrase.is_empty() => {
                Self::Passphrase(Zeroizing::new(passphrase))
            }
            _ => Self::File(file.to_owned()),
        }
    }

    /// The setting to name when this key does not open a store.
    pub fn setting(&self) -> String {
        match self {
            Self::File(path) => format!("store_key ({})", path.display()),
            Self::Passphrase(_) => PASSPHRASE_ENV.to_owned(),
        }
    }

    /// A vault over this key. A key file is read, or created (0600, in a 0700 folder) when
    /// `create` and it does not exist; a passphrase is stretched with `salt` (the store's).
    pub fn vault(&self, salt: &[u8], create: bool) -> Result<Vault, AdapterError> {
        let key = match self {
            Self::File(path) => read_or_create_key_file(path, create)?,
            Self::Passphrase(passphrase) => stretch(passphrase.as_bytes(), salt)?,
        };
        Ok(Vault::new(&key))
    }

    /// A new random salt for a passphrase's key.
    pub fn new_salt() -> Result<Vec<u8>, AdapterError> {
        let mut salt = vec![0u8; SALT_LEN];
        OsRng
            .try_fill_bytes(&mut salt)
            .map_err(|e| AdapterError::AtRest(format!("no randomness for a salt: {e}")))?;
        Ok(salt)
    }
}

/// scrypt with N = 2^15, r = 8, p = 1 (32 MiB, a fraction of a second): memory-hard, so guessing a
/// passphrase from a stolen store costs as much per guess as it does here per start.
fn stretch(passphrase: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>, AdapterError> {
    let params = scrypt::Params::new(15, 8, 1, KEY_LEN)
        .map_err(|e| AdapterError::AtRest(format!("scrypt parameters: {e}")))?;
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    scrypt::scrypt(passphrase, salt, &params, key.as_mut())
        .map_err(|e| AdapterError::AtRest(format!("scrypt: {e}")))?;
    Ok(key)
}

fn read_or_create_key_file(
    path: &Path,
    create: bool,
) -> Result<Zeroizing<[u8; KEY_LEN]>, AdapterError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let named = |reason: String| AdapterError::Invalid {
        field: "store_key".into(),
        reason: format!("{}: {reason}", path.display()),
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            crate::private_files::tighten(path, 0o600)?;
            let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
                named(format!(
                    "holds {} bytes, not a {KEY_LEN}-byte key",
                    bytes.len()
                ))
            })?;
            return Ok(Zeroizing::new(key));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {}
        Err(e) => return Err(named(e.to_string())),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| named(e.to_string()))?;
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    OsRng
        .try_fill_bytes(key.as_mut())
        .map_err(|e| AdapterError::AtRest(format!("no randomness for a key: {e}")))?;
    // create_new: a daemon and a command starting at once must not each write a key of their own.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(key.as_ref())
                .and_then(|()| file.sync_all())
                .map_err(|e| named(e.to_string()))?;
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read_or_create_key_file(path, false)
        }
        Err(e) => Err(named(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_opens_only_in_its_own_row_and_column_and_under_its_own_key() {
        let vault = Vault::new(&[7; 32]);
        let name = "សុខា".as_bytes();
        let sealed = vault.seal("referrals.case_file", "r1", name).unwrap();
        assert!(!sealed.windows(name.len()).any(|w| w == name));
        assert_eq!(
            vault.open("referrals.case_file", "r1", &sealed).unwrap(),
            name
        );
        assert!(vault.open("referrals.case_file", "r2", &sealed).is_err());
        assert!(vault.open("events.encoded", "r1", &sealed).is_err());
        assert!(
            Vault::new(&[8; 32])
                .open("referrals.case_file", "r1", &sealed)
                .is_err()
        );
        assert!(vault.open("referrals.case_file", "r1", name).is_err());
        assert!(vault.seal("x", "y", b"").unwrap().is_empty());
    }

    #[test]
    fn a_passphrase_gives_the_same_key_with_the_same_salt_only() {
        let key = StoreKey::Passphrase(Zeroizing::new("ពាក្យសម្ងាត់".into()));
        let check = key
            .vault(b"salt-one-16bytes", false)
            .unwrap()
            .check_value()
            .unwrap();
        assert!(
            key.vault(b"salt-one-16bytes", false)
                .unwrap()
                .opens_check_value(&check)
        );
        assert!(
            !key.vault(b"salt-two-16bytes", false)
                .unwrap()
                .opens_check_value(&check)
        );
    }
}
