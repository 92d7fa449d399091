//! Staff accounts for the pages (`spean-adapter user …`): each person logs in with their own
//! username and password, and what they do is recorded under their name, as `--by` records it.
//!
//! - Passwords are Argon2id hashes (PHC strings), never kept or logged in clear. An unknown
//!   username costs the same verification as a known one, and gets the same answer as a wrong
//!   password, so the login page does not tell which usernames exist.
//! - [`MAX_FAILURES`] wrong passwords in a row lock the account for [`LOCKOUT`]; while locked no
//!   password is checked. An administrator's `user password` lifts it.
//! - A session is a 256-bit random token in the browser's cookie; the store keeps its SHA-256
//!   only, so a copy of the store opens no session. It ends after [`IDLE`] unused, [`LIFETIME`]
//!   after login, on logout, and when the account is disabled or its password changed.
//! - Each session has its own CSRF token, which every form carries.

use std::sync::LazyLock;

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier, password_hash::SaltString};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use rand_core::{OsRng, TryRngCore};
use rusqlite::OptionalExtension;
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime, format_description::well_known::Rfc3339};

use crate::{AdapterError, store::Store};

/// Wrong passwords in a row that lock an account.
pub const MAX_FAILURES: u32 = 5;
/// How long a locked account stays locked.
pub const LOCKOUT: Duration = Duration::minutes(15);
/// A session unused this long ends (a shared computer left open).
pub const IDLE: Duration = Duration::minutes(30);
/// A session ends this long after login, used or not.
pub const LIFETIME: Duration = Duration::hours(12);

const MIN_PASSWORD: usize = 10;
const MAX_PASSWORD_BYTES: usize = 256;

/// A staff member as `user list` shows them: never the password or its hash.
#[derive(Debug, Clone, Serialize)]
pub struct StaffMember {
    pub id: i64,
    /// The login name: lower-case letters, digits, `.`, `_`, `-`.
    pub username: String,
    /// The person's name, recorded with their actions and reads; may be Khmer.
    pub display_name: String,
    /// `km` or `en`: the language of their pages.
    pub language: String,
    pub created_at: String,
    pub disabled_at: Option<String>,
    pub last_login_at: Option<String>,
    /// Set while the account is locked after wrong passwords.
    pub locked_until: Option<String>,
}

/// A session just opened: `token` goes in the cookie, and is not kept anywhere else.
pub struct NewSession {
    pub token: String,
    pub session: Session,
}

/// A live session, as each request finds it.
#[derive(Debug, Clone)]
pub struct Session {
    pub staff: StaffMember,
    /// The anti-CSRF token every form of this session carries.
    pub csrf: String,
    pub expires_at: String,
}

impl Session {
    /// Whether a form's token is this session's, compared in constant time.
    pub fn csrf_matches(&self, presented: &str) -> bool {
        let (a, b) = (self.csrf.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Why a login was refused.
#[derive(Debug)]
pub enum LoginRefused {
    /// Unknown user, wrong password or a disabled account: one answer for all.
    WrongCredentials,
    /// Too many wrong passwords: nothing is checked until `until` (RFC 3339).
    LockedOut { until: String },
}

fn stamp(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

fn parse_stamp(raw: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(raw, &Rfc3339).ok()
}

fn invalid(field: &str, reason: impl Into<String>) -> AdapterError {
    AdapterError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn random_token() -> Result<String, AdapterError> {
    let mut bytes = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|error| AdapterError::Config(format!("no randomness for a session: {error}")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The login name, checked and lower-cased.
fn username(raw: &str) -> Result<String, AdapterError> {
    let name = raw.trim().to_lowercase();
    if name.is_empty() || name.len() > 64 {
        return Err(invalid("username", "must be 1 to 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(
            "username",
            "only letters a-z, digits and . _ - are allowed (the person's own name goes in --name)",
        ));
    }
    Ok(name)
}

fn display_name(raw: &str) -> Result<String, AdapterError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(invalid("name", "must be 1 to 100 characters"));
    }
    if name
        .chars()
        .any(|c| c.is_control() || spean_domain::referral::is_bidi_control(c))
    {
        return Err(invalid("name", "must not hold control characters"));
    }
    Ok(name.to_owned())
}

fn language(raw: &str) -> Result<String, AdapterError> {
    match raw {
        "km" | "en" => Ok(raw.to_owned()),
        other => Err(invalid(
            "language",
            format!("{other:?} is neither km (Khmer) nor en (English)"),
        )),
    }
}

fn check_password(password: &str) -> Result<(), AdapterError> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(invalid(
            "password",
            format!("must be at least {MIN_PASSWORD} characters"),
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(invalid(
            "password",
            format!("must be at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// The PHC string of `password` under Argon2id with the crate's default (OWASP) parameters, on a
/// blocking thread: it takes tens of milliseconds on purpose.
async fn hash(password: &str) -> Result<String, AdapterError> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut salt = [0u8; 16];
        OsRng
            .try_fill_bytes(&mut salt)
            .map_err(|error| AdapterError::Config(format!("no randomness for a salt: {error}")))?;
        let salt = SaltString::encode_b64(&salt)
            .map_err(|error| AdapterError::Config(format!("salt: {error}")))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|error| AdapterError::Config(format!("password hash: {error}")))
    })
    .await
    .map_err(|error| AdapterError::Config(format!("password hash: {error}")))?
}

/// A hash no password matches, verified against when the username is unknown, so that an unknown
/// username costs as much as a known one.
static DUMMY: LazyLock<Option<String>> = LazyLock::new(|| {
    let salt = SaltString::encode_b64(b"spean-dummy-salt").ok()?;
    Argon2::default()
        .hash_password(b"no password is this one", &salt)
        .ok()
        .map(|h| h.to_string())
});

/// Whether `password` matches the PHC string `stored`, on a blocking thread.
async fn verify(password: &str, stored: Option<String>) -> bool {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        let Some(stored) = stored.or_else(|| DUMMY.clone()) else {
            return false;
        };
        PasswordHash::new(&stored).is_ok_and(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

const MEMBER_COLUMNS: &str = "id, username, display_name, language, created_at, disabled_at, \
     last_login_at, locked_until";

fn member(r: &rusqlite::Row<'_>) -> rusqlite::Result<StaffMember> {
    Ok(StaffMember {
        id: r.get(0)?,
        username: r.get(1)?,
        display_name: r.get(2)?,
        language: r.get(3)?,
        created_at: r.get(4)?,
        disabled_at: r.get(5)?,
        last_login_at: r.get(6)?,
        locked_until: r.get(7)?,
    })
}

fn find(conn: &rusqlite::Connection, username: &str) -> Result<StaffMember, AdapterError> {
    conn.query_row(
        &format!("SELECT {MEMBER_COLUMNS} FROM staff WHERE username = ?1"),
        [username],
        member,
    )
    .optional()?
    .ok_or_else(|| AdapterError::NotFound {
        what: "staff member",
        id: username.to_owned(),
    })
}

impl Store {
    /// Adds a staff member; a taken username is refused, naming the field.
    pub async fn add_staff(
        &self,
        username_raw: &str,
        name: &str,
        password: &str,
        lang: &str,
    ) -> Result<StaffMember, AdapterError> {
        let username = username(username_raw)?;
        let name = display_name(name)?;
        let lang = language(lang)?;
        check_password(password)?;
        let hashed = hash(password).await?;
        let now = stamp(OffsetDateTime::now_utc());
        self.write(move |conn| {
            let taken: Option<i64> = conn
                .query_row(
                    "SELECT id FROM staff WHERE username = ?1",
                    [&username],
                    |r| r.get(0),
                )
                .optional()?;
            if taken.is_some() {
                return Err(invalid(
                    "username",
                    format!("{username:?} is taken; choose another"),
                ));
            }
            conn.execute(
                "INSERT INTO staff (username, display_name, language, password_hash, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![username, name, lang, hashed, now],
            )?;
            find(conn, &username)
        })
        .await
    }

    /// Every staff member: live ones first, then by username.
    pub async fn staff(&self) -> Result<Vec<StaffMember>, AdapterError> {
        self.write(|conn| {
            let mut query = conn.prepare(&format!(
                "SELECT {MEMBER_COLUMNS} FROM staff ORDER BY disabled_at IS NOT NULL, username"
            ))?;
            let members = query
                .query_map([], member)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(members)
        })
        .await
    }

    /// Disables an account and ends its sessions at once.
    pub async fn disable_staff(&self, username_raw: &str) -> Result<StaffMember, AdapterError> {
        let username = username(username_raw)?;
        let now = stamp(OffsetDateTime::now_utc());
        self.write(move |conn| {
            let found = find(conn, &username)?;
            conn.execute(
                "UPDATE staff SET disabled_at = COALESCE(disabled_at, ?2) WHERE id = ?1",
                rusqlite::params![found.id, now],
            )?;
            conn.execute("DELETE FROM staff_sessions WHERE staff_id = ?1", [found.id])?;
            find(conn, &username)
        })
        .await
    }

    /// Enables a disabled account again.
    pub async fn enable_staff(&self, username_raw: &str) -> Result<StaffMember, AdapterError> {
        let username = username(username_raw)?;
        self.write(move |conn| {
            let found = find(conn, &username)?;
            conn.execute(
                "UPDATE staff SET disabled_at = NULL WHERE id = ?1",
                [found.id],
            )?;
            find(conn, &username)
        })
        .await
    }

    /// Sets a new password: ends the member's sessions and lifts a lockout.
    pub async fn set_staff_password(
        &self,
        username_raw: &str,
        password: &str,
    ) -> Result<StaffMember, AdapterError> {
        let username = username(username_raw)?;
        check_password(password)?;
        let hashed = hash(password).await?;
        self.write(move |conn| {
            let found = find(conn, &username)?;
            conn.execute(
                "UPDATE staff SET password_hash = ?2, failures = 0, locked_until = NULL \
                 WHERE id = ?1",
                rusqlite::params![found.id, hashed],
            )?;
            conn.execute("DELETE FROM staff_sessions WHERE staff_id = ?1", [found.id])?;
            find(conn, &username)
        })
        .await
    }

    /// Sets the language of a member's pages.
    pub async fn set_staff_language(&self, staff_id: i64, lang: &str) -> Result<(), AdapterError> {
        let lang = language(lang)?;
        self.write(move |conn| {
            conn.execute(
                "UPDATE staff SET language = ?2 WHERE id = ?1",
                rusqlite::params![staff_id, lang],
            )?;
            Ok(())
        })
        .await
    }

    /// Checks a login and opens a session.
    pub async fn log_in(
        &self,
        username_raw: &str,
        password: &str,
    ) -> Result<Result<NewSession, LoginRefused>, AdapterError> {
        self.log_in_at(username_raw, password, OffsetDateTime::now_utc())
            .await
    }

    async fn log_in_at(
        &self,
        username_raw: &str,
        password: &str,
        now: OffsetDateTime,
    ) -> Result<Result<NewSession, LoginRefused>, AdapterError> {
        let Ok(username) = username(username_raw) else {
            verify(password, None).await;
            return Ok(Err(LoginRefused::WrongCredentials));
        };
        let wanted = username.clone();
        let found: Option<(i64, String, Option<String>, Option<String>)> = self
            .write(move |conn| {
                Ok(conn
                    .query_row(
                        "SELECT id, password_hash, disabled_at, locked_until FROM staff \
                         WHERE username = ?1",
                        [&wanted],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                    )
                    .optional()?)
            })
            .await?;
        let Some((id, stored, disabled_at, locked_until)) = found else {
            verify(password, None).await;
            tracing::info!(username = %username, "login refused: no such user");
            return Ok(Err(LoginRefused::WrongCredentials));
        };
        if let Some(until) = locked_until
            .as_deref()
            .and_then(parse_stamp)
            .filter(|until| *until > now)
        {
            tracing::info!(username = %username, "login refused: locked out");
            return Ok(Err(LoginRefused::LockedOut {
                until: stamp(until),
            }));
        }
        let right = verify(password, Some(stored)).await;
        if !right || disabled_at.is_some() {
            if right {
                tracing::info!(username = %username, "login refused: account disabled");
                return Ok(Err(LoginRefused::WrongCredentials));
            }
            let locked = self
                .write(move |conn| {
                    let failures: u32 = conn.query_row(
                        "UPDATE staff SET failures = failures + 1 WHERE id = ?1 RETURNING failures",
                        [id],
                        |r| r.get(0),
                    )?;
                    if failures >= MAX_FAILURES {
                        let until = stamp(now + LOCKOUT);
                        conn.execute(
                            "UPDATE staff SET failures = 0, locked_until = ?2 WHERE id = ?1",
                            rusqlite::params![id, until],
                        )?;
                        return Ok(Some(until));
                    }
                    Ok(None)
                })
                .await?;
            return Ok(Err(match locked {
                Some(until) => {
                    tracing::warn!(username = %username, until = %until, "too many wrong passwords: account locked");
                    LoginRefused::LockedOut { until }
                }
                None => {
                    tracing::info!(username = %username, "login refused: wrong password");
                    LoginRefused::WrongCredentials
                }
            }));
        }
        let token = random_token()?;
        let csrf = random_token()?;
        let (hashed, created, expires) = (digest(&token), stamp(now), stamp(now + LIFETIME));
        let session_csrf = csrf.clone();
        let staff = self
            .write(move |conn| {
                conn.execute(
                    "UPDATE staff SET failures = 0, locked_until = NULL, last_login_at = ?2 \
                     WHERE id = ?1",
                    rusqlite::params![id, created],
                )?;
                // This member's sessions that ended unseen (a browser closed, never logged out)
                // go now, so the table holds one row per live session, not one per login.
                let ended: Vec<Vec<u8>> = conn
                    .prepare(
                        "SELECT token_hash, last_seen_at, expires_at FROM staff_sessions \
                         WHERE staff_id = ?1",
                    )?
                    .query_map([id], |r| {
                        Ok((
                            r.get::<_, Vec<u8>>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                        ))
                    })?
                    .filter_map(Result::ok)
                    .filter(|(_, seen, expires)| {
                        let live = parse_stamp(expires).is_some_and(|e| e > now)
                            && parse_stamp(seen).is_some_and(|s| now - s < IDLE);
                        !live
                    })
                    .map(|(hash, _, _)| hash)
                    .collect();
                for hash in ended {
                    conn.execute("DELETE FROM staff_sessions WHERE token_hash = ?1", [hash])?;
                }
                conn.execute(
                    "INSERT INTO staff_sessions (token_hash, staff_id, csrf, created_at, \
                     last_seen_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
                    rusqlite::params![hashed, id, session_csrf, created, expires],
                )?;
                conn.query_row(
                    &format!("SELECT {MEMBER_COLUMNS} FROM staff WHERE id = ?1"),
                    [id],
                    member,
                )
                .map_err(AdapterError::from)
            })
            .await?;
        tracing::info!(username = %staff.username, "logged in");
        Ok(Ok(NewSession {
            token,
            session: Session {
                staff,
                csrf,
                expires_at: stamp(now + LIFETIME),
            },
        }))
    }

    /// The live session `token` opens, its idle clock reset; `None` if it opens none.
    pub async fn session(&self, token: &str) -> Result<Option<Session>, AdapterError> {
        self.session_at(token, OffsetDateTime::now_utc()).await
    }

    async fn session_at(
        &self,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<Option<Session>, AdapterError> {
        let hashed = digest(token);
        self.write(move |conn| {
            let found: Option<(i64, String, String, String)> = conn
                .query_row(
                    "SELECT staff_id, csrf, last_seen_at, expires_at FROM staff_sessions \
                     WHERE token_hash = ?1",
                    [&hashed],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((staff_id, csrf, last_seen, expires)) = found else {
                return Ok(None);
            };
            let live = parse_stamp(&expires).is_some_and(|e| e > now)
                && parse_stamp(&last_seen).is_some_and(|seen| now - seen < IDLE);
            let staff = conn.query_row(
                &format!("SELECT {MEMBER_COLUMNS} FROM staff WHERE id = ?1"),
                [staff_id],
                member,
            )?;
            if !live || staff.disabled_at.is_some() {
                conn.execute(
                    "DELETE FROM staff_sessions WHERE token_hash = ?1",
                    [&hashed],
                )?;
                return Ok(None);
            }
            conn.execute(
                "UPDATE staff_sessions SET last_seen_at = ?2 WHERE token_hash = ?1",
                rusqlite::params![hashed, stamp(now)],
            )?;
            Ok(Some(Session {
                staff,
                csrf,
                expires_at: expires,
            }))
        })
        .await
    }

    /// Ends the session `token` opens, if any.
    pub async fn log_out(&self, token: &str) -> Result<(), AdapterError> {
        let hashed = digest(token);
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM staff_sessions WHERE token_hash = ?1",
                [&hashed],
            )?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(
            &dir.path().join("s.db"),
            &spean_domain::ids::AgencyId::parse("agency", "ngo-a").unwrap(),
            &crate::at_rest::StoreKey::File(dir.path().join("store.key")),
        )
        .await
        .unwrap();
        (dir, store)
    }

    const PASSWORD: &str = "ពាក្យសម្ងាត់-long-enough";

    #[tokio::test]
    async fn five_wrong_passwords_lock_the_account_until_the_lockout_ends() {
        let (_dir, store) = store().await;
        store
            .add_staff("sophea", "សុភា", PASSWORD, "km")
            .await
            .unwrap();
        let t0 = OffsetDateTime::now_utc();
        for n in 1..=MAX_FAILURES {
            let refused = store
                .log_in_at("sophea", "wrong-wrong-wrong", t0)
                .await
                .unwrap();
            match (n, refused) {
                (n, Err(LoginRefused::WrongCredentials)) if n < MAX_FAILURES => {}
                (n, Err(LoginRefused::LockedOut { .. })) if n == MAX_FAILURES => {}
                (n, other) => panic!("failure {n}: {:?}", other.map(|_| "a session")),
            }
        }
        let right_but_locked = store
            .log_in_at("sophea", PASSWORD, t0 + Duration::minutes(14))
            .await
            .unwrap();
        assert!(matches!(
            right_but_locked,
            Err(LoginRefused::LockedOut { .. })
        ));
        let after = store
            .log_in_at("sophea", PASSWORD, t0 + LOCKOUT + Duration::seconds(1))
            .await
            .unwrap();
        assert!(after.is_ok(), "the lockout ends");
        // A right password resets the count: four more failures do not lock it.
        for _ in 1..MAX_FAILURES {
            let refused = store
                .log_in_at("sophea", "wrong-wrong-wrong", t0 + LOCKOUT * 2)
                .await
                .unwrap();
            assert!(matches!(refused, Err(LoginRefused::WrongCredentials)));
        }
    }

    #[tokio::test]
    async fn sessions_end_when_idle_when_old_and_when_the_account_is_disabled() {
        let (_dir, store) = store().await;
        store
            .add_staff("dara", "Dara", PASSWORD, "en")
            .await
            .unwrap();
        let t0 = OffsetDateTime::now_utc();
        let opened = store
            .log_in_at("dara", PASSWORD, t0)
            .await
            .unwrap()
            .ok()
            .unwrap();
        let token = opened.token;
        // Used every 20 minutes, it lives until its lifetime ends.
        let mut at = t0;
        while at + Duration::minutes(20) < t0 + LIFETIME {
            at += Duration::minutes(20);
            assert!(
                store.session_at(&token, at).await.unwrap().is_some(),
                "at {at}"
            );
        }
        assert!(
            store
                .session_at(&token, t0 + LIFETIME)
                .await
                .unwrap()
                .is_none()
        );
        // Unused past IDLE, it ends.
        let idle = store
            .log_in_at("dara", PASSWORD, t0)
            .await
            .unwrap()
            .ok()
            .unwrap()
            .token;
        assert!(
            store
                .session_at(&idle, t0 + IDLE + Duration::seconds(1))
                .await
                .unwrap()
                .is_none()
        );
        // Sessions that ended unseen are cleared at the member's next login: one row per live one.
        let forgotten = store.log_in_at("dara", PASSWORD, t0).await.unwrap();
        assert!(forgotten.is_ok());
        assert!(
            store
                .log_in_at("dara", PASSWORD, t0 + LIFETIME)
                .await
                .unwrap()
                .is_ok()
        );
        let rows: i64 = store
            .write(|conn| {
                Ok(conn.query_row("SELECT COUNT(*) FROM staff_sessions", [], |r| r.get(0))?)
            })
            .await
            .unwrap();
        assert_eq!(rows, 1, "only the new session is kept");
        // Disabled, its sessions end at once; a login is refused like a wrong password.
        let live = store
            .log_in("dara", PASSWORD)
            .await
            .unwrap()
            .ok()
            .unwrap()
            .token;
        store.disable_staff("dara").await.unwrap();
        assert!(store.session(&live).await.unwrap().is_none());
        assert!(matches!(
            store.log_in("dara", PASSWORD).await.unwrap(),
            Err(LoginRefused::WrongCredentials)
        ));
        store.enable_staff("dara").await.unwrap();
        assert!(store.log_in("dara", PASSWORD).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_new_password_ends_sessions_and_lifts_a_lockout() {
        let (_dir, store) = store().await;
        store
            .add_staff("vanna", "វណ្ណា", PASSWORD, "km")
            .await
            .unwrap();
        let live = store
            .log_in("vanna", PASSWORD)
            .await
            .unwrap()
            .ok()
            .unwrap()
            .token;
        for _ in 0..MAX_FAILURES {
            store
                .log_in("vanna", "wrong-wrong-wrong")
                .await
                .unwrap()
                .ok();
        }
        let member = store
            .set_staff_password("vanna", "another-password-1")
            .await
            .unwrap();
        assert_eq!(member.locked_until, None);
        assert!(store.session(&live).await.unwrap().is_none());
        assert!(
            store
                .log_in("vanna", "another-password-1")
                .await
                .unwrap()
                .is_ok()
        );
    }

    #[tokio::test]
    async fn bad_accounts_are_refused_naming_the_field_and_khmer_names_are_kept() {
        let (_dir, store) = store().await;
        let field = |e: AdapterError| match e {
            AdapterError::Invalid { field, .. } => field,
            other => panic!("{other}"),
        };
        assert_eq!(
            field(
                store
                    .add_staff("a b", "A", PASSWORD, "km")
                    .await
                    .unwrap_err()
            ),
            "username"
        );
        assert_eq!(
            field(store.add_staff("ab", "", PASSWORD, "km").await.unwrap_err()),
            "name"
        );
        assert_eq!(
            field(
                store
                    .add_staff("ab", "A\u{202E}", PASSWORD, "km")
                    .await
                    .unwrap_err()
            ),
            "name"
        );
        assert_eq!(
            field(store.add_staff("ab", "A", "short", "km").await.unwrap_err()),
            "password"
        );
        assert_eq!(
            field(
                store
                    .add_staff("ab", "A", PASSWORD, "fr")
                    .await
                    .unwrap_err()
            ),
            "language"
        );
        let added = store
            .add_staff("Sophea", "សុខ សុភា", PASSWORD, "km")
            .await
            .unwrap();
        assert_eq!(added.username, "sophea");
        assert_eq!(added.display_name, "សុខ សុភា");
        assert_eq!(
            field(
                store
                    .add_staff("sophea", "B", PASSWORD, "en")
                    .await
                    .unwrap_err()
            ),
            "username"
        );
        assert!(matches!(
            store.log_in("nobody", PASSWORD).await.unwrap(),
            Err(LoginRefused::WrongCredentials)
        ));
    }

    #[test]
    fn csrf_tokens_match_only_themselves() {
        let session = Session {
            staff: StaffMember {
                id: 1,
                username: "a".into(),
                display_name: "A".into(),
                language: "en".into(),
                created_at: String::new(),
                disabled_at: None,
                last_login_at: None,
                locked_until: None,
            },
            csrf: "abc".into(),
            expires_at: String::new(),
        };
        assert!(session.csrf_matches("abc"));
        assert!(!session.csrf_matches("abd"));
        assert!(!session.csrf_matches("ab"));
        assert!(!session.csrf_matches(""));
    }
}
