-- The audit log: every action the broker accepted, one entry each, chained by hash
-- (docs/security.md#audit). Rows are only ever appended, by the writer, in the same job as the
-- action they record. The hashes are computed by spean_domain::audit.
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY,           -- 1, 2, 3, … with no gaps
    at          INTEGER NOT NULL,              -- unix microseconds
    actor       TEXT    NOT NULL,              -- the agency that acted
    action      TEXT    NOT NULL,              -- an event kind, publish_key, revoke, adapter_head
    referral_id TEXT,                          -- the referral acted on, if any
    digest      BLOB    NOT NULL,              -- SHA-256 of the action's details, never content
    prev_hash   BLOB    NOT NULL,              -- the previous entry's hash; 32 zero bytes first
    hash        BLOB    NOT NULL               -- SHA-256(prev_hash || canonical entry)
);

-- The last head of its own log each agency's adapter reported (AuditService.WitnessHead), so that
-- a cut tail of an adapter's log shows against what the broker saw.
CREATE TABLE audit_witnessed (
    agency_id   TEXT    PRIMARY KEY,
    seq         INTEGER NOT NULL,
    hash        BLOB    NOT NULL,
    at          INTEGER NOT NULL               -- unix microseconds
) WITHOUT ROWID;
