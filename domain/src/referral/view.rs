//! Who may see what of a referral: the one rule, written once.
//!
//! Every answer and every delivery that carries a referral is made from a [`ReferralView`], and
//! the only way to get one is [`Referral::as_seen_by`]. The wire codec takes a view, not a
//! referral, so no path can put a case file on the wire without passing through this rule. The
//! roles still to come (notified parties, coordinators, broadcast candidates) each become one more
//! [`Audience`] here.

use super::Referral;
use crate::ids::AgencyId;

/// How an agency that may see a referral at all stands to it now. Whether it may see the referral
/// at all (it is, or was, one of its parties) is the store's to say; this says what it sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// It sent the referral.
    Sender,
    /// The referral is with it now.
    Recipient,
    /// The referral was with it once and was redirected away: it keeps the envelope and the
    /// history, never the case file.
    FormerRecipient,
}

impl Audience {
    /// Where `agency`, a party of the referral sent by `sender` and now with `recipient`, stands.
    pub fn of(sender: &AgencyId, recipient: &AgencyId, agency: &AgencyId) -> Self {
        if agency == sender {
            Audience::Sender
        } else if agency == recipient {
            Audience::Recipient
        } else {
            Audience::FormerRecipient
        }
    }

    /// Whether this audience may read the case file: only its sender and its current recipient.
    pub fn reads_case_file(self) -> bool {
        matches!(self, Audience::Sender | Audience::Recipient)
    }
}

/// A referral as one of its parties may see it: its case file is there only if that party may read
/// it. Made only by [`Referral::as_seen_by`].
#[derive(Debug, Clone)]
pub struct ReferralView {
    referral: Referral,
    audience: Audience,
}

impl ReferralView {
    /// The referral as this audience sees it (its case file empty where it may not read it).
    pub fn referral(&self) -> &Referral {
        &self.referral
    }

    pub fn audience(&self) -> Audience {
        self.audience
    }

    pub fn into_referral(self) -> Referral {
        self.referral
    }
}

impl Referral {
    /// This referral as `party` may see it. The caller has established that `party` may see the
    /// referral at all (the store knows its parties); this decides what it sees.
    pub fn as_seen_by(mut self, party: &AgencyId) -> ReferralView {
        let audience = Audience::of(&self.sender, &self.recipient, party);
        if !audience.reads_case_file() {
            self.case_file = Default::default();
        }
        ReferralView {
            referral: self,
            audience,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::referral::tests::sample;

    fn agency(raw: &str) -> AgencyId {
        AgencyId::parse("agency", raw).unwrap()
    }

    #[test]
    fn only_the_sender_and_the_current_recipient_see_the_case_file() {
        let referral = sample("ahc-swu", "mlup-russey");
        for (party, audience, sees) in [
            ("ahc-swu", Audience::Sender, true),
            ("mlup-russey", Audience::Recipient, true),
            ("fcf-kandal", Audience::FormerRecipient, false),
        ] {
            let view = referral.clone().as_seen_by(&agency(party));
            assert_eq!(view.audience(), audience, "{party}");
            assert_eq!(!view.referral().case_file.is_empty(), sees, "{party}");
        }
    }

    #[test]
    fn a_redirect_takes_the_case_file_from_the_former_recipient() {
        let mut referral = sample("ahc-swu", "mlup-russey");
        referral.recipient = agency("dosvy-24");
        let former = referral.clone().as_seen_by(&agency("mlup-russey"));
        assert_eq!(former.audience(), Audience::FormerRecipient);
        assert!(former.referral().case_file.is_empty());
        let new = referral.as_seen_by(&agency("dosvy-24"));
        assert_eq!(new.referral().case_file.as_bytes(), "សុខ".as_bytes());
    }
}
