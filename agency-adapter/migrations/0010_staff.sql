-- Staff accounts for the pages (docs/operations.md#staff-accounts) and their sessions. Tables of
-- their own, IF NOT EXISTS as in 0001-0009, so that a daemon and a command migrating a file at once
-- do not trip over each other. No password and no session token is kept: an Argon2id hash (PHC
-- string) of the password, and the SHA-256 of the token.
CREATE TABLE IF NOT EXISTS staff (
    id            INTEGER PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,   -- the login name, lower-case
    display_name  TEXT NOT NULL,          -- recorded with the person's actions and reads
    language      TEXT NOT NULL,          -- 'km' or 'en'
    password_hash TEXT NOT NULL,
    failures      INTEGER NOT NULL DEFAULT 0,  -- wrong passwords in a row
    locked_until  TEXT,                   -- RFC 3339; set while locked out
    created_at    TEXT NOT NULL,
    disabled_at   TEXT,
    last_login_at TEXT
);

CREATE TABLE IF NOT EXISTS staff_sessions (
    token_hash   BLOB PRIMARY KEY,        -- SHA-256 of the cookie's token
    staff_id     INTEGER NOT NULL REFERENCES staff (id),
    csrf         TEXT NOT NULL,           -- the token every form of the session carries
    created_at   TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    expires_at   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS staff_sessions_by_staff ON staff_sessions (staff_id);
