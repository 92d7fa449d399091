-- Acknowledgement deadlines that escalate (issue 21), kept here so that they outlive a restart: the
-- broker reads the deadlines due, and turns each into a versioned change of its referral that also
-- moves or clears the deadline. `due_at` is unix microseconds, as every timestamp here.
CREATE TABLE referral_deadlines (
    referral_id TEXT    PRIMARY KEY REFERENCES referrals (id),
    due_at      INTEGER NOT NULL,
    escalations INTEGER NOT NULL CHECK (escalations >= 0)    -- tiers fired so far
) WITHOUT ROWID;
CREATE INDEX referral_deadlines_by_due_at ON referral_deadlines (due_at);

-- Why an agency may see a referral: `party` (its sender, a recipient now or before) or `notified`
-- (told of it by an escalation). Rows written before this column are all parties.
ALTER TABLE referral_access
    ADD COLUMN role TEXT NOT NULL DEFAULT 'party' CHECK (role IN ('party', 'notified'));
