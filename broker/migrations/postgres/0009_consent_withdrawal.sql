-- Consent withdrawn (issue 23): the history stays append-only, with one exception. Once a referral
-- has a `consent_withdrawn` event, the broker drops what was sealed in its events' details (the
-- sealed free text, a redirect's re-sealed case file, a delegation's follow-up part). Such an
-- update may change `details` and nothing else; every other UPDATE, any DELETE and TRUNCATE are
-- still refused.
CREATE OR REPLACE FUNCTION referral_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND (to_jsonb(NEW) - 'details') = (to_jsonb(OLD) - 'details')
       AND EXISTS (SELECT 1 FROM referral_events
                   WHERE referral_id = OLD.referral_id AND kind = 'consent_withdrawn') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'referral_events is append-only' USING ERRCODE = 'restrict_violation';
END;
$$;
