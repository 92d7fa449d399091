-- Sealing (issue 23). Tables of their own, IF NOT EXISTS as in 0001-0003, so that a daemon and a
-- command migrating a file at once do not trip over each other.

-- This agency's private keys for opening what other agencies seal to it. Every key it ever had
-- stays: a box sealed to an older key (in flight during a rotation) still opens. The newest is the
-- one it publishes.
CREATE TABLE IF NOT EXISTS seal_keys (
    key_id     BLOB PRIMARY KEY,   -- SHA-256 of the public key
    secret     BLOB NOT NULL,      -- X25519 private key, 32 bytes
    created_at TEXT NOT NULL
);

-- Other agencies' public keys, each checked against the network CA (the certificate that signed
-- it) before it was stored here.
CREATE TABLE IF NOT EXISTS peer_keys (
    key_id       BLOB PRIMARY KEY,
    agency_id    TEXT NOT NULL,
    public_key   BLOB NOT NULL,
    published_at TEXT NOT NULL,
    checked_at   TEXT NOT NULL
);

-- An outbox request as it was first sealed: every later attempt sends these same bytes, so the
-- broker sees one request however often it is retried (sealing again would give other bytes).
CREATE TABLE IF NOT EXISTS outbox_sealed (
    request_id TEXT PRIMARY KEY,
    payload    BLOB NOT NULL
);
