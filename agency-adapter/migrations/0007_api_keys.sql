-- Keys for the local HTTP API (docs/integration.md). A table of its own, IF NOT EXISTS as in
-- 0001-0006, so that a daemon and a command migrating a file at once do not trip over each other.
-- The key itself is shown once, when it is made, and never stored: only its SHA-256. A key is
-- 256 random bits, so a fast hash is enough (nothing to guess from a dictionary).
CREATE TABLE IF NOT EXISTS api_keys (
    key_id     TEXT PRIMARY KEY,   -- the key's public part, e.g. 'k3f9a1c0d2b4e6f8'
    name       TEXT NOT NULL,      -- what the key is for, e.g. 'oscar-sync'; written in the audit log
    hash       BLOB NOT NULL,      -- SHA-256 of the whole key
    created_at TEXT NOT NULL,
    revoked_at TEXT                -- set once; a revoked key opens nothing
);
CREATE UNIQUE INDEX IF NOT EXISTS api_keys_live_name ON api_keys (name) WHERE revoked_at IS NULL;

-- The link to the broker as the daemon last found it, so that a command run while the broker is
-- out of reach queues at once instead of waiting for its own connection attempt to time out
-- (a field site can be offline for days). One row; none while no daemon has looked.
CREATE TABLE IF NOT EXISTS link_status (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    connected  INTEGER NOT NULL,
    since      TEXT    NOT NULL,   -- when it last changed, RFC 3339 UTC
    last_error TEXT,
    checked_at INTEGER NOT NULL    -- unix seconds of the daemon's latest attempt
);
