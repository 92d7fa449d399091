//! Who may see what of a referral: the one rule, written once.
//!
//! Every answer and every delivery that carries a referral is made from a [`ReferralView`], and
//! the only way to get one is [`Referral::as_seen_by`]. The wire codec takes a view, not a
//! referral, so no path can put a case file on the wire without passing through this rule. An
//! event delivered on its own passes through [`Event::as_seen_by`]. The roles still to come
//! (notified parties, coordinators, broadcast candidates) each become one more [`Audience`] here.
//!
//! A former recipient (the referral was redirected away from it) keeps the envelope and the
//! skeleton of the history: what happened, when, by which agency, and where the referral went.
//! It loses the case file and what people wrote after it let the referral go: notes, staff
//! names, reasons, planned actions, outcomes. Its own events stay whole: they are its words.

use std::borrow::Cow;

use super::{Event, EventDetails, Referral};
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
    /// Told of the referral by an escalation or a missed visit (a provincial department, a
    /// coordinator): the envelope, the state and the skeleton of the history.
    Notified,
    /// The recipient delegated the referral's follow-up visits to it: what a notified party sees,
    /// plus the delegation addressed to it (with the case file's follow-up part) and its own visits.
    Delegate,
    /// One of the agencies a broadcast went to (story 2): what a notified party sees, and its own
    /// answers. The case file goes to the candidate that accepts and to no other, as a placement
    /// search sends providers a profile and the chosen one the file. One that did not win keeps
    /// the same.
    Candidate,
}

impl Audience {
    /// Where `agency`, a party of the referral sent by `sender` and now with `recipient` (nobody,
    /// for an open broadcast), stands: the sender, the recipient, or else one that reads what a
    /// former recipient reads. Who it is beyond that (notified, a candidate, a delegate) changes
    /// the label, never what it reads of an event, which [`Event::as_seen_by`] decides alike.
    pub fn of(sender: &AgencyId, recipient: Option<&AgencyId>, agency: &AgencyId) -> Self {
        if agency == sender {
            Audience::Sender
        } else if recipient == Some(agency) {
            Audience::Recipient
        } else {
            Audience::FormerRecipient
        }
    }

    /// How `agency` stands to `event` of a referral sent by `sender` and now with `recipient`: as
    /// [`Audience::of`], except that the delegate an event is addressed to (a delegation) reads
    /// it as the delegate.
    pub fn of_event(
        event: &Event,
        sender: &AgencyId,
        recipient: Option<&AgencyId>,
        agency: &AgencyId,
    ) -> Self {
        if event.addressed_to(agency) {
            Audience::Delegate
        } else {
            Audience::of(sender, recipient, agency)
        }
    }

    /// How `agency`, which is neither the sender nor the recipient of the referral with this
    /// `history` (oldest first) but may see it, stands to it: its current delegate, a recipient it
    /// was redirected away from, or else an agency notified of it.
    pub fn outside_party(history: &[Event], agency: &AgencyId) -> Self {
        if super::delegate_in(history).as_ref() == Some(agency) {
            Audience::Delegate
        } else if history
            .iter()
            .any(|e| e.kind == super::EventKind::Redirected && &e.actor == agency)
        {
            Audience::FormerRecipient
        } else {
            Audience::Notified
        }
    }

    /// Whether this audience may read the case file: only its sender and its current recipient.
    pub fn reads_case_file(self) -> bool {
        matches!(self, Audience::Sender | Audience::Recipient)
    }

    /// Whether this audience reads what others wrote on the referral (notes, staff names, reasons,
    /// outcomes): the same two parties. A former recipient sees only the skeleton of each event.
    pub fn reads_notes(self) -> bool {
        self.reads_case_file()
    }
}

/// A referral as one of its parties may see it: its case file is there only if that party may read
/// it. Made only by [`Referral::as_seen_by`].
#[derive(Debug, Clone)]
pub struct ReferralView {
    referral: Referral,
    audience: Audience,
    party: AgencyId,
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

    /// One event of the referral's history as this view's party may see it
    /// ([`Event::as_seen_by`]); borrowed when nothing is withheld, which is the common case.
    pub fn event<'e>(&self, event: &'e Event) -> Cow<'e, Event> {
        if self.audience.reads_notes()
            || event.actor == self.party
            || (self.audience == Audience::Delegate && event.addressed_to(&self.party))
        {
            Cow::Borrowed(event)
        } else {
            Cow::Owned(event.clone().as_seen_by(&self.party, self.audience))
        }
    }
}

impl Event {
    /// Whether this event is addressed to `party` (a delegation to it), which then reads it whole.
    pub fn addressed_to(&self, party: &AgencyId) -> bool {
        matches!(&self.details, EventDetails::FollowUpDelegated { to, .. } if to == party)
    }

    /// This event as `party`, which stands to its referral as `audience`, may see it. An audience
    /// that does not read notes gets the skeleton: kind, time, acting agency, state after, and for
    /// a redirect where the referral went (the envelope it keeps names the new recipient too).
    /// Everything a person wrote is withheld, and the codes of a decline, a follow-up and an
    /// outcome with it, since they say as much about the child as the text. Its own events it
    /// sees whole.
    pub fn as_seen_by(mut self, party: &AgencyId, audience: Audience) -> Event {
        if audience.reads_notes() || &self.actor == party {
            return self;
        }
        // A delegation is addressed to its delegate, who reads it whole: the reason it is asked,
        // and the part of the case file its visits need.
        if audience == Audience::Delegate && self.addressed_to(party) {
            return self;
        }
        self.actor_person = Default::default();
        self.note = Default::default();
        self.sealed_text = Default::default();
        // A candidate makes no visits: the schedule of a referral another candidate won is not
        // its to follow.
        if audience == Audience::Candidate {
            self.next_visit = None;
        }
        self.details = match self.details {
            EventDetails::Redirected { to, .. } => EventDetails::Redirected {
                to,
                reason: Default::default(),
                case_file: Default::default(),
            },
            EventDetails::FollowUpDelegated { to, .. } => EventDetails::FollowUpDelegated {
                to,
                reason: Default::default(),
                follow_up_part: Default::default(),
            },
            // Who, when and which tier or visit: nothing a person wrote.
            kept @ (EventDetails::Escalated { .. }
            | EventDetails::FollowUpOverdue { .. }
            | EventDetails::DelegationRevoked { .. }
            | EventDetails::EmergencyException { .. }
            | EventDetails::ConsentWithdrawn { .. }) => kept,
            _ => EventDetails::None,
        };
        self
    }
}

impl Referral {
    /// This referral as `party` may see it. The caller has established that `party` may see the
    /// referral at all (the store knows its parties); this decides what it sees. Where the
    /// referral alone cannot tell a former recipient from a delegate, use
    /// [`Referral::as_seen_by_as`] with what the history says.
    pub fn as_seen_by(self, party: &AgencyId) -> ReferralView {
        self.seen_standing(party, None)
    }

    /// This referral as `party` may see it, where the history says how an agency outside its
    /// two parties stands to it (`standing`, [`Audience::outside_party`]): the sender and the
    /// recipient are still seen as such; a former recipient or a delegate as `standing` says; a
    /// broadcast's candidate and an agency its sender named to be notified as such; anyone else
    /// as `standing`. What each sees follows from [`Audience`] alone.
    pub fn as_seen_by_as(self, party: &AgencyId, standing: Audience) -> ReferralView {
        self.seen_standing(party, Some(standing))
    }

    fn seen_standing(self, party: &AgencyId, standing: Option<Audience>) -> ReferralView {
        let audience = match Audience::of(&self.sender, self.recipient.as_ref(), party) {
            Audience::FormerRecipient => match standing {
                Some(s @ (Audience::FormerRecipient | Audience::Delegate)) => s,
                _ if self.is_candidate(party) => Audience::Candidate,
                _ if self.notify.contains(party) => Audience::Notified,
                Some(s) => s,
                None => Audience::FormerRecipient,
            },
            own => own,
        };
        self.seen_as(party, audience)
    }

    fn seen_as(mut self, party: &AgencyId, audience: Audience) -> ReferralView {
        if !audience.reads_case_file() {
            self.case_file = Default::default();
            // The pseudonym links the referrals about one person: a key to the client's history,
            // for the agencies that work with the client, not for those told of one referral.
            self.client_pseudonym = None;
        }
        ReferralView {
            referral: self,
            audience,
            party: party.clone(),
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
        referral.recipient = Some(agency("dosvy-24"));
        let former = referral.clone().as_seen_by(&agency("mlup-russey"));
        assert_eq!(former.audience(), Audience::FormerRecipient);
        assert!(former.referral().case_file.is_empty());
        let new = referral.as_seen_by(&agency("dosvy-24"));
        assert_eq!(new.referral().case_file.as_bytes(), "សុខ".as_bytes());
    }

    fn completed_by(actor: &str) -> Event {
        Event {
            id: uuid::Uuid::now_v7(),
            referral_id: crate::ids::ReferralId::new(),
            kind: crate::referral::EventKind::Completed,
            actor: agency(actor),
            actor_person: crate::referral::FreeText::line("actor_person", "សុភា", 64).unwrap(),
            at: time::OffsetDateTime::UNIX_EPOCH,
            note: crate::referral::FreeText::parse("note", "កុមារនៅផ្ទះ", 512).unwrap(),
            state_after: crate::referral::State::Completed,
            details: EventDetails::Completed {
                outcome_code: crate::referral::Code::parse("outcome_code", "reunified").unwrap(),
                summary: crate::referral::FreeText::parse("summary", "ជួបគ្រួសារ", 512).unwrap(),
            },
            request_id: None,
            next_visit: None,
            sealed_text: Default::default(),
        }
    }

    #[test]
    fn candidates_and_notified_agencies_never_see_the_case_file_until_a_candidate_wins() {
        let mut referral = sample("ahc-swu", "mlup-russey");
        referral.recipient = None;
        referral.candidates = vec![agency("mlup-russey"), agency("dosvy-17")];
        referral.notify = vec![agency("dosvy-15")];
        referral.client_pseudonym =
            Some(crate::ids::ClientRef::parse("client_pseudonym", "ahc-2026-0042").unwrap());
        for (party, audience) in [
            ("mlup-russey", Audience::Candidate),
            ("dosvy-17", Audience::Candidate),
            ("dosvy-15", Audience::Notified),
        ] {
            let view = referral.clone().as_seen_by(&agency(party));
            assert_eq!(view.audience(), audience, "{party}");
            assert!(view.referral().case_file.is_empty(), "{party}");
            assert_eq!(view.referral().client_pseudonym, None, "{party}");
            assert!(!audience.reads_notes());
        }
        let sender = referral.clone().as_seen_by(&agency("ahc-swu"));
        assert!(!sender.referral().case_file.is_empty());
        assert!(sender.referral().client_pseudonym.is_some());
        // mlup-russey accepts: it reads the case file, dosvy-17 still does not.
        referral.recipient = Some(agency("mlup-russey"));
        let winner = referral.clone().as_seen_by(&agency("mlup-russey"));
        assert_eq!(winner.audience(), Audience::Recipient);
        assert!(!winner.referral().case_file.is_empty());
        let other = referral.as_seen_by(&agency("dosvy-17"));
        assert_eq!(other.audience(), Audience::Candidate);
        assert!(other.referral().case_file.is_empty());
    }

    #[test]
    fn a_former_recipient_sees_only_the_skeleton_of_what_others_wrote() {
        let event = completed_by("dosvy-24");
        let seen = event
            .clone()
            .as_seen_by(&agency("mlup-russey"), Audience::FormerRecipient);
        assert_eq!(seen.kind, event.kind);
        assert_eq!(seen.state_after, event.state_after);
        assert_eq!(seen.actor, event.actor);
        assert!(seen.note.as_str().is_empty());
        assert!(seen.actor_person.as_str().is_empty());
        assert!(matches!(seen.details, EventDetails::None));
        for audience in [Audience::Sender, Audience::Recipient] {
            let seen = event.clone().as_seen_by(&agency("ahc-swu"), audience);
            assert_eq!(seen.note.as_str(), "កុមារនៅផ្ទះ", "{audience:?}");
        }
    }

    #[test]
    fn a_former_recipient_keeps_its_own_words_and_where_a_redirect_went() {
        let own = completed_by("mlup-russey")
            .as_seen_by(&agency("mlup-russey"), Audience::FormerRecipient);
        assert_eq!(own.actor_person.as_str(), "សុភា");
        let mut redirect = completed_by("dosvy-24");
        redirect.details = EventDetails::Redirected {
            to: agency("fcf-kandal"),
            reason: crate::referral::FreeText::parse("reason", "ឆ្ងាយ", 512).unwrap(),
            case_file: crate::referral::Sealed::new(b"sealed to fcf-kandal".to_vec()),
        };
        redirect.sealed_text = crate::referral::Sealed::new(b"sealed text".to_vec());
        let seen = redirect.as_seen_by(&agency("mlup-russey"), Audience::FormerRecipient);
        assert!(seen.sealed_text.is_empty());
        match seen.details {
            EventDetails::Redirected {
                to,
                reason,
                case_file,
            } => {
                assert_eq!(to.as_str(), "fcf-kandal");
                assert!(reason.as_str().is_empty());
                assert!(case_file.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_view_withholds_history_only_from_a_former_recipient() {
        let mut referral = sample("ahc-swu", "mlup-russey");
        referral.recipient = Some(agency("dosvy-24"));
        let event = completed_by("dosvy-24");
        let former = referral.clone().as_seen_by(&agency("mlup-russey"));
        assert!(former.event(&event).note.as_str().is_empty());
        let sender = referral.as_seen_by(&agency("ahc-swu"));
        assert!(matches!(sender.event(&event), Cow::Borrowed(_)));
    }
}
