-- The audit trail (docs/security.md#audit). Tables of their own, IF NOT EXISTS as in 0001-0005, so
-- that a daemon and a command migrating a file at once do not trip over each other.

-- Every read of a case file through the adapter (`show`, and any page or API that shows one): who,
-- when, which referral; never the case file. Chained by hash (spean_domain::audit); rows are only
-- ever appended.
CREATE TABLE IF NOT EXISTS audit_log (
    seq         INTEGER PRIMARY KEY,   -- 1, 2, 3, … with no gaps
    at          INTEGER NOT NULL,      -- unix microseconds
    actor       TEXT    NOT NULL,      -- the staff member who read (`--by`, else the OS user)
    action      TEXT    NOT NULL,      -- 'show'
    referral_id TEXT,
    digest      BLOB    NOT NULL,      -- SHA-256 of which part was shown, never its content
    prev_hash   BLOB    NOT NULL,      -- the previous entry's hash; 32 zero bytes first
    hash        BLOB    NOT NULL       -- SHA-256(prev_hash || canonical entry)
);

-- The newest head of the broker's audit log a delivery carried (highest seq): what
-- `spean-broker audit verify --head` checks the broker's log against. One row.
CREATE TABLE IF NOT EXISTS broker_audit_head (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    seq         INTEGER NOT NULL,
    hash        BLOB    NOT NULL,
    received_at TEXT    NOT NULL
);
