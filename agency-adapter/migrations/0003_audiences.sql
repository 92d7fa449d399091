-- How this agency stands to each referral it holds, as the broker said in the copy it sent
-- (`Referral.audience`): sender, recipient, former_recipient, notified or delegate. A notified party
-- (an escalation or a missed visit reached it) and a delegate (the recipient handed it the follow-up)
-- hold a referral that names neither of them as sender nor recipient, without its case file; the
-- audience is how the store and the listings tell them from a former recipient. A table of its own,
-- IF NOT EXISTS as in 0001 and 0002 (SQLite has no ADD COLUMN IF NOT EXISTS), so that a daemon and a
-- command migrating a file at the same moment do not trip over each other. No row: a copy stored
-- before this migration, or one whose audience the broker left unspecified.
CREATE TABLE IF NOT EXISTS referral_audiences (
    referral_id TEXT PRIMARY KEY,
    audience    TEXT NOT NULL   -- e.g. 'recipient', 'notified', 'delegate'
);
