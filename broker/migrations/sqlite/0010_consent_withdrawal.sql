-- Consent withdrawn (issue 23): the history stays append-only, with one exception. Once a referral
-- has a `consent_withdrawn` event, the broker drops what was sealed in its events' details (the
-- sealed free text, a redirect's re-sealed case file, a delegation's follow-up part). Such an
-- update may change `details` and nothing else; every other UPDATE and any DELETE are still
-- refused.
DROP TRIGGER referral_events_are_append_only_update;
CREATE TRIGGER referral_events_are_append_only_update BEFORE UPDATE ON referral_events
WHEN NOT (
    NEW.seq IS OLD.seq AND NEW.id IS OLD.id AND NEW.referral_id IS OLD.referral_id
    AND NEW.kind IS OLD.kind AND NEW.actor IS OLD.actor AND NEW.actor_person IS OLD.actor_person
    AND NEW.at IS OLD.at AND NEW.note IS OLD.note AND NEW.state_after IS OLD.state_after
    AND NEW.request_id IS OLD.request_id
    AND EXISTS (SELECT 1 FROM referral_events
                WHERE referral_id = OLD.referral_id AND kind = 'consent_withdrawn')
)
BEGIN SELECT RAISE(ABORT, 'referral_events is append-only'); END;
