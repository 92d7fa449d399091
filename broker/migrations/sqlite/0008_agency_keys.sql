-- Agencies' keys for sealing case files and free text to them, each bound to the agency's
-- certificate by a signature the broker checked when it was published. Every key an agency ever
-- published stays, so that what was sealed with an older key can still be opened; the newest is
-- its current key.
CREATE TABLE agency_keys (
    key_id       BLOB    PRIMARY KEY,          -- SHA-256 of public_key
    agency_id    TEXT    NOT NULL,
    public_key   BLOB    NOT NULL,
    certificate  BLOB    NOT NULL,             -- DER
    signature    BLOB    NOT NULL,
    published_at INTEGER NOT NULL              -- unix microseconds
) WITHOUT ROWID;
CREATE INDEX agency_keys_by_agency ON agency_keys (agency_id, published_at DESC);
