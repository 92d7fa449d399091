-- Acknowledgement deadlines that escalate (issue 21), kept in the store so that they outlive a restart and
-- fire once however many brokers share the database: a broker reads the deadlines due, and turns
-- each into a versioned change of its referral that also moves or clears the deadline, so only one
-- broker's change applies. `due_at` is unix microseconds, as every timestamp here.
--
-- Kept on the referral's own row rather than in a table of timers: a submit then writes two more
-- columns instead of one more row with two index entries, which cost a tenth of the production
-- path's throughput, and a change moves or clears the deadline in the update it already makes.
ALTER TABLE referrals
    ADD COLUMN ack_due_at  BIGINT,                                              -- NULL: none
    ADD COLUMN escalations INTEGER NOT NULL DEFAULT 0 CHECK (escalations >= 0); -- tiers fired
-- Only referrals waiting for an acknowledgement are in it: a few among many.
CREATE INDEX referrals_by_ack_due_at ON referrals (ack_due_at) WHERE ack_due_at IS NOT NULL;

-- Why an agency may see a referral: `party` (its sender, a recipient now or before) or `notified`
-- (told of it by an escalation). Rows written before this column are all parties.
ALTER TABLE referral_access
    ADD COLUMN role TEXT NOT NULL DEFAULT 'party' CHECK (role IN ('party', 'notified'));
