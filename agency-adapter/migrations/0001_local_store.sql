-- The adapter's local copy of what concerns this agency. IF NOT EXISTS so that a daemon and a command
-- started at the same moment on a fresh file do not trip over each other.

-- Referrals this agency sent or received. State and last_event_id follow the newest stored event.
CREATE TABLE IF NOT EXISTS referrals (
    referral_id      TEXT PRIMARY KEY,
    client_ref       TEXT NOT NULL,
    sender           TEXT NOT NULL,
    recipient        TEXT NOT NULL,
    kind             TEXT NOT NULL,
    urgency          TEXT NOT NULL,
    subject_sex      TEXT NOT NULL,
    subject_age_band TEXT NOT NULL,
    subject_province TEXT NOT NULL,
    client_pseudonym TEXT NOT NULL,
    state            TEXT NOT NULL,
    last_event_id    TEXT,
    case_file        BLOB NOT NULL,   -- encoded CaseFile, as received
    envelope         BLOB NOT NULL,   -- encoded Envelope, as received
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    received_at      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS referrals_recipient ON referrals (recipient, created_at);
CREATE INDEX IF NOT EXISTS referrals_sender ON referrals (sender, created_at);

-- Every feedback event, including ones whose referral is not stored yet (they join when it arrives).
CREATE TABLE IF NOT EXISTS events (
    event_id        TEXT PRIMARY KEY,  -- UUIDv7: sorts by time
    referral_id     TEXT NOT NULL,
    kind            TEXT NOT NULL,
    actor_agency_id TEXT NOT NULL,
    actor_person    TEXT NOT NULL,
    at              TEXT NOT NULL,
    note            TEXT NOT NULL,
    state_after     TEXT NOT NULL,
    redirect_to     TEXT,              -- set for `redirected`: the referral's new recipient
    encoded         BLOB NOT NULL      -- encoded FeedbackEvent
);
CREATE INDEX IF NOT EXISTS events_referral ON events (referral_id, event_id);

-- Requests written here first, then sent; status pending -> sent | rejected.
CREATE TABLE IF NOT EXISTS outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id  TEXT NOT NULL UNIQUE,  -- client_ref for submit, request_id for actions
    operation   TEXT NOT NULL,
    referral_id TEXT,
    payload     BLOB NOT NULL,         -- the encoded request message
    status      TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'rejected')),
    error       TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL,
    sent_at     TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (status, seq);

-- Deliveries already stored, so a repeated delivery is recognised before anything else.
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id TEXT PRIMARY KEY,
    received_at TEXT NOT NULL
);
