-- Local data protection (issue 24). Tables of their own, IF NOT EXISTS as in 0001-0006, so that a
-- daemon and a command migrating a file at once do not trip over each other.

-- How this store is sealed at rest (docs/security.md#at-rest). One row, written in the transaction
-- that sealed the store: no row means a store written before sealing, sealed in place on open.
CREATE TABLE IF NOT EXISTS at_rest (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    key_check BLOB NOT NULL,  -- a constant sealed with the data key: a wrong key is told at once
    salt      BLOB NOT NULL,  -- the passphrase's scrypt salt; empty with a key file
    agency    TEXT NOT NULL,  -- whose store this is: a restore refuses another agency's backup
    sealed_at TEXT NOT NULL
);

-- Each run of the retention purge that removed something: when, and how many referrals' case files
-- and notes it removed. Which referrals, and when, is in withdrawn_case_files (because 'retention').
CREATE TABLE IF NOT EXISTS retention_purges (
    at         TEXT NOT NULL,
    referrals  INTEGER NOT NULL,
    closed_for TEXT NOT NULL   -- the setting in force, e.g. '730d'
);

-- Referrals a restore lost deliveries of (received after the backup was taken): read again from the
-- broker by the `restore` command, else by the daemon each time it connects, until one read works.
CREATE TABLE IF NOT EXISTS to_read_again (
    referral_id TEXT PRIMARY KEY,
    since       TEXT NOT NULL   -- when the restore lost it
);
