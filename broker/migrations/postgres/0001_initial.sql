-- Spean broker store, PostgreSQL (production). Same tables, columns and constraints as the SQLite schema.
-- Timestamps are unix microseconds (BIGINT), as in SQLite, so both backends share one row mapping.
-- Ids are UUIDv7 as `uuid`: they order by creation like SQLite's text ids (the 16 bytes compare in the
-- same order as their lowercase hex), independent of the database's collation.

-- The directory document as last imported; one row.
CREATE TABLE directory (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    document    TEXT    NOT NULL,                     -- JSON, stored as written
    version     BIGINT  NOT NULL,
    imported_at BIGINT  NOT NULL
);

CREATE TABLE referrals (
    id                 UUID    PRIMARY KEY,           -- UUIDv7
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
    version            BIGINT  NOT NULL,
    created_at         BIGINT  NOT NULL,
    updated_at         BIGINT  NOT NULL,
    case_file          BYTEA   NOT NULL,              -- opaque to the broker
    UNIQUE (sender, client_ref)
);

-- Who may see a referral: its sender, its recipient, and recipients it was redirected away from.
CREATE TABLE referral_access (
    referral_id UUID NOT NULL REFERENCES referrals (id),
    agency_id   TEXT NOT NULL,
    PRIMARY KEY (agency_id, referral_id)
);
CREATE INDEX referral_access_by_referral ON referral_access (referral_id);

-- The append-only history. Never updated, never deleted.
CREATE TABLE referral_events (
    seq          BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           UUID    NOT NULL UNIQUE,
    referral_id  UUID    NOT NULL REFERENCES referrals (id),
    kind         TEXT    NOT NULL,
    actor        TEXT    NOT NULL,
    actor_person TEXT    NOT NULL,
    at           BIGINT  NOT NULL,
    note         TEXT    NOT NULL,
    state_after  TEXT    NOT NULL,
    details      TEXT    NOT NULL,                    -- JSON, kind-specific, stored as written
    request_id   TEXT,
    UNIQUE (actor, request_id)
);
CREATE INDEX referral_events_by_referral ON referral_events (referral_id, seq);

-- Row triggers refuse UPDATE and DELETE; a statement trigger refuses TRUNCATE, which skips row triggers.
CREATE FUNCTION referral_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'referral_events is append-only' USING ERRCODE = 'restrict_violation';
END;
$$;
CREATE TRIGGER referral_events_are_append_only BEFORE UPDATE OR DELETE ON referral_events
    FOR EACH ROW EXECUTE FUNCTION referral_events_append_only();
CREATE TRIGGER referral_events_are_never_truncated BEFORE TRUNCATE ON referral_events
    FOR EACH STATEMENT EXECUTE FUNCTION referral_events_append_only();

-- Embedded delivery: what each agency's adapter has yet to confirm. Written in the same transaction as
-- the change it announces; a row is deleted when the adapter confirms it. With RabbitMQ configured it is
-- the transactional outbox: a relay leases rows until `lease_until` (unix microseconds), publishes them,
-- and deletes them once RabbitMQ confirms.
CREATE TABLE mailbox (
    seq         BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agency_id   TEXT    NOT NULL,
    delivery_id UUID    NOT NULL UNIQUE,
    referral_id UUID    NOT NULL,
    event_id    UUID,                                 -- NULL: the referral itself
    created_at  BIGINT  NOT NULL,
    lease_until BIGINT
);
CREATE INDEX mailbox_by_agency ON mailbox (agency_id, seq);
