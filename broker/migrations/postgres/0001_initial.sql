-- Spean broker store, PostgreSQL (production). Same model as the SQLite schema.
-- Timestamps are unix microseconds (BIGINT), as in SQLite, so both backends share one mapping.

CREATE TABLE directory (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    document    TEXT    NOT NULL,
    version     BIGINT  NOT NULL,
    imported_at BIGINT  NOT NULL
);

CREATE TABLE referrals (
    id                 TEXT    PRIMARY KEY,           -- UUIDv7, text so ids sort as in SQLite
    sender             TEXT    NOT NULL,
    client_ref         TEXT    NOT NULL,
    fingerprint        TEXT    NOT NULL,
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
    case_file          BYTEA   NOT NULL,
    UNIQUE (sender, client_ref)
);

CREATE TABLE referral_access (
    referral_id TEXT NOT NULL REFERENCES referrals (id),
    agency_id   TEXT NOT NULL,
    PRIMARY KEY (agency_id, referral_id)
);
CREATE INDEX referral_access_by_referral ON referral_access (referral_id);

CREATE TABLE referral_events (
    seq          BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           TEXT    NOT NULL UNIQUE,
    referral_id  TEXT    NOT NULL REFERENCES referrals (id),
    kind         TEXT    NOT NULL,
    actor        TEXT    NOT NULL,
    actor_person TEXT    NOT NULL,
    at           BIGINT  NOT NULL,
    note         TEXT    NOT NULL,
    state_after  TEXT    NOT NULL,
    details      TEXT    NOT NULL,
    request_id   TEXT,
    UNIQUE (actor, request_id)
);
CREATE INDEX referral_events_by_referral ON referral_events (referral_id, seq);

CREATE FUNCTION referral_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'referral_events is append-only';
END;
$$;
CREATE TRIGGER referral_events_are_append_only BEFORE UPDATE OR DELETE ON referral_events
    FOR EACH ROW EXECUTE FUNCTION referral_events_append_only();

-- Deliveries not yet confirmed (embedded delivery) or not yet published (RabbitMQ: the outbox).
CREATE TABLE mailbox (
    seq         BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agency_id   TEXT    NOT NULL,
    delivery_id TEXT    NOT NULL UNIQUE,
    referral_id TEXT    NOT NULL,
    event_id    TEXT,
    created_at  BIGINT  NOT NULL,
    lease_until BIGINT
);
CREATE INDEX mailbox_by_agency ON mailbox (agency_id, seq);
