-- Who may see a referral is read by referral on every change and every delivery (`parties`). The
-- primary key leads with the agency, so without this index each of those reads scanned the table.
-- PostgreSQL has had this index from its first migration.
CREATE INDEX referral_access_by_referral ON referral_access (referral_id);
