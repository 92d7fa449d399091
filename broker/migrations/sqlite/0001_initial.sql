-- Spean broker store, SQLite (the embedded default).
-- Timestamps are unix microseconds (INTEGER). Case files are opaque BLOBs.

-- The directory document as last imported; one row.
CREATE TABLE directory (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    document    TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    imported_at INTEGER NOT NULL
);

CREATE TABLE referrals (
    id                 TEXT    PRIMARY KEY,           -- UUIDv7
    sender             TEXT    NOT NULL,
    client_ref         TEXT    NOT NULL,
    fingerprint        TEXT    NOT NULL,              -- sha256 of the submitted content
    addressee_agency   TEXT,
    addressee_service  TEXT,
    addressee_province TEXT,
    recipient          TEXT    NOT NULL,
    kind               TEXT    NOT NULL,
    urgency            TEXT    NOT NULL,
    subject_sex        TEXT    NOT NULL,
    subject_age_band   TEXT    NOT NULL,
    subject_province   TEXT    NOT NULL,
    client_pseudonym   TEXT,
    state              TEXT    NOT NULL,
    version            INTEGER NOT NULL,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    case_file          BLOB    NOT NULL,
    UNIQUE (sender, client_ref)
);

-- Who may see a referral: its sender, its recipient, and recipients it was redirected away from.
CREATE TABLE referral_access (
    referral_id TEXT NOT NULL REFERENCES referrals (id),
    agency_id   TEXT NOT NULL,
    PRIMARY KEY (agency_id, referral_id)
) WITHOUT ROWID;

-- The append-only history. Never updated, never deleted.
CREATE TABLE referral_events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    referral_id  TEXT    NOT NULL REFERENCES referrals (id),
    kind         TEXT    NOT NULL,
    actor        TEXT    NOT NULL,
    actor_person TEXT    NOT NULL,
    at           INTEGER NOT NULL,
    note         TEXT    NOT NULL,
    state_after  TEXT    NOT NULL,
    details      TEXT    NOT NULL,                    -- JSON, kind-specific
    request_id   TEXT,
    UNIQUE (actor, request_id)
);
CREATE INDEX referral_events_by_referral ON referral_events (referral_id, seq);

CREATE TRIGGER referral_events_are_append_only_update BEFORE UPDATE ON referral_events
BEGIN SELECT RAISE(ABORT, 'referral_events is append-only'); END;
CREATE TRIGGER referral_events_are_append_only_delete BEFORE DELETE ON referral_events
BEGIN SELECT RAISE(ABORT, 'referral_events is append-only'); END;

-- Embedded delivery: what each agency's adapter has yet to confirm. Written in the same transaction as
-- the change it announces; a row is deleted when the adapter confirms it.
CREATE TABLE mailbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    agency_id   TEXT    NOT NULL,
    delivery_id TEXT    NOT NULL UNIQUE,
    referral_id TEXT    NOT NULL,
    event_id    TEXT,                                 -- NULL: the referral itself
    created_at  INTEGER NOT NULL
);
CREATE INDEX mailbox_by_agency ON mailbox (agency_id, seq);
