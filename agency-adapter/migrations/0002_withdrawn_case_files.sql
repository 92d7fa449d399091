-- Case files this agency held and removed because the referral left it (issue: a former recipient
-- must not keep the child's details). One row per referral: what was removed is gone, this says when
-- and why, for the agency's own records and for `show`. IF NOT EXISTS, as in 0001, so that a daemon
-- and a command migrating a file at the same moment do not trip over each other.
CREATE TABLE IF NOT EXISTS withdrawn_case_files (
    referral_id  TEXT PRIMARY KEY,
    withdrawn_at TEXT NOT NULL,  -- local time of the removal, RFC 3339 UTC
    now_with     TEXT NOT NULL,  -- the agency the referral went to
    because      TEXT NOT NULL   -- why it left, e.g. 'redirected'
);
