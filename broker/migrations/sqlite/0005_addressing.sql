-- Broadcast placement, notified parties and linked referrals (issue 22). How the sender addressed a
-- referral beyond one recipient, as JSON: a broadcast's candidates, the agencies it named to be
-- notified, the referral it follows. NULL for a referral with none of these, nearly all of them.
--
-- `recipient` is the empty string while a broadcast waits for a candidate to accept it: nobody
-- holds it yet. The candidates have access as parties and the named agencies as `notified`, in
-- `referral_access`, from the submit on.
ALTER TABLE referrals ADD COLUMN addressing TEXT;
