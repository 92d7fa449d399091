//! A broadcast (story 2) as the adapter reads it, with no I/O: the candidates a referral went to at
//! once, how each has answered so far, which one won, and whether the broker told the sender that
//! none accepted. Read from the envelope and the stored history only, so the listings and `show`
//! work offline and say the same thing.
//!
//! The broadcast is open while no candidate accepted and the sender did not send it on to one
//! agency (a redirect): until then the envelope names no recipient. A candidate's answers are the
//! events it recorded while the broadcast was open; whatever it does after it won is the work of a
//! recipient, not an answer. The first acceptance wins (the broker decides it atomically), so the
//! winner is the actor of the first `accepted` event of an open broadcast.

use serde::Serialize;
use spean_proto::v1::{Envelope, FeedbackEvent, FeedbackKind, feedback_event::Details};

/// How one candidate has answered a broadcast so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Nothing yet.
    None,
    /// A person there saw it; it may still accept or decline.
    Acknowledged,
    /// It declined (a candidate answers once).
    Declined,
    /// It accepted, and won: the first acceptance is the only one the broker records.
    Accepted,
}

impl Answer {
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::None => "none",
            Answer::Acknowledged => "acknowledged",
            Answer::Declined => "declined",
            Answer::Accepted => "accepted",
        }
    }
}

/// One candidate and its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub agency_id: String,
    pub answer: Answer,
    /// The decline's reason code, when this agency may read it (the sender, or the candidate
    /// itself): the broker withholds it from the other candidates, as it says about the child.
    pub reason_code: Option<String>,
}

/// A broadcast's candidates and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broadcast {
    /// In the order the directory lists them (the envelope's order).
    pub candidates: Vec<Candidate>,
    /// The candidate whose acceptance won, if one did.
    pub winner: Option<String>,
    /// The agency the sender sent the broadcast on to instead, if it did (a one-to-one referral
    /// from then on).
    pub redirected_to: Option<String>,
    /// The broker recorded that every candidate declined (`no_candidate_accepted`).
    pub no_candidate_accepted: bool,
}

impl Broadcast {
    /// The broadcast `envelope` describes, read from its `history` (oldest first); `None` for a
    /// referral sent to one agency.
    pub fn read(envelope: &Envelope, history: &[FeedbackEvent]) -> Option<Self> {
        if envelope.candidate_agency_ids.is_empty() {
            return None;
        }
        let mut candidates: Vec<Candidate> = envelope
            .candidate_agency_ids
            .iter()
            .map(|id| Candidate {
                agency_id: id.clone(),
                answer: Answer::None,
                reason_code: None,
            })
            .collect();
        let mut broadcast = Broadcast {
            candidates: Vec::new(),
            winner: None,
            redirected_to: None,
            no_candidate_accepted: false,
        };
        for event in history {
            let kind = FeedbackKind::try_from(event.kind).unwrap_or(FeedbackKind::Unspecified);
            if kind == FeedbackKind::NoCandidateAccepted {
                broadcast.no_candidate_accepted = true;
            }
            if !broadcast.is_open() {
                continue;
            }
            if kind == FeedbackKind::Redirected {
                if let Some(Details::Redirected(r)) = &event.details {
                    broadcast.redirected_to = Some(r.to_agency_id.clone());
                }
                continue;
            }
            let Some(candidate) = candidates
                .iter_mut()
                .find(|c| c.agency_id == event.actor_agency_id)
            else {
                continue;
            };
            match kind {
                FeedbackKind::Acknowledged if candidate.answer == Answer::None => {
                    candidate.answer = Answer::Acknowledged;
                }
                FeedbackKind::Declined => {
                    candidate.answer = Answer::Declined;
                    candidate.reason_code = match &event.details {
                        Some(Details::Declined(d)) if !d.reason_code.is_empty() => {
                            Some(d.reason_code.clone())
                        }
                        _ => None,
                    };
                }
                FeedbackKind::Accepted => {
                    candidate.answer = Answer::Accepted;
                    broadcast.winner = Some(candidate.agency_id.clone());
                }
                _ => {}
            }
        }
        broadcast.candidates = candidates;
        Some(broadcast)
    }

    /// No candidate won and the sender did not send it on: the candidates may still answer.
    pub fn is_open(&self) -> bool {
        self.winner.is_none() && self.redirected_to.is_none()
    }

    /// The candidate that won, when `agency` is a candidate that did not: the referral was taken
    /// by another agency and is no longer open to `agency`.
    pub fn taken_from(&self, agency: &str) -> Option<&str> {
        let winner = self.winner.as_deref()?;
        (winner != agency && self.is_candidate(agency)).then_some(winner)
    }

    pub fn is_candidate(&self, agency: &str) -> bool {
        self.candidates.iter().any(|c| c.agency_id == agency)
    }

    /// How `agency` has answered, if it is a candidate.
    pub fn answer_of(&self, agency: &str) -> Option<Answer> {
        self.candidates
            .iter()
            .find(|c| c.agency_id == agency)
            .map(|c| c.answer)
    }

    /// How many candidates answered `answer`.
    pub fn count(&self, answer: Answer) -> usize {
        self.candidates
            .iter()
            .filter(|c| c.answer == answer)
            .count()
    }

    /// What the sender's `status` says of it while it is open: how far the candidates got, or,
    /// once every one declined, what the sender has to do. `None` once it is closed.
    pub fn sender_next(&self) -> Option<String> {
        if !self.is_open() {
            return None;
        }
        if self.no_candidate_accepted {
            return Some("no candidate accepted: redirect or withdraw".into());
        }
        let mut line = format!("broadcast to {} candidates", self.candidates.len());
        for (answer, word) in [
            (Answer::Declined, "declined"),
            (Answer::Acknowledged, "acknowledged"),
        ] {
            let n = self.count(answer);
            if n > 0 {
                line.push_str(&format!(", {n} {word}"));
            }
        }
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use spean_proto::v1::{Decline, Redirect};

    use super::*;

    fn envelope(candidates: &[&str]) -> Envelope {
        Envelope {
            candidate_agency_ids: candidates.iter().map(|c| (*c).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn event(kind: FeedbackKind, actor: &str) -> FeedbackEvent {
        FeedbackEvent {
            kind: kind as i32,
            actor_agency_id: actor.into(),
            ..Default::default()
        }
    }

    fn declined(actor: &str, code: &str) -> FeedbackEvent {
        let mut e = event(FeedbackKind::Declined, actor);
        e.details = Some(Details::Declined(Decline {
            reason_code: code.into(),
            reason_text: String::new(),
        }));
        e
    }

    #[test]
    fn a_referral_to_one_agency_is_no_broadcast() {
        assert_eq!(Broadcast::read(&envelope(&[]), &[]), None);
    }

    #[test]
    fn each_candidate_answers_and_the_first_acceptance_wins() {
        let history = [
            event(FeedbackKind::Submitted, "s"),
            event(FeedbackKind::Acknowledged, "a"),
            declined("b", "no_capacity"),
            event(FeedbackKind::Accepted, "c"),
            // The winner's work as recipient is no answer.
            event(FeedbackKind::InProgress, "c"),
        ];
        let b = Broadcast::read(&envelope(&["a", "b", "c"]), &history).unwrap();
        let answers: Vec<_> = b.candidates.iter().map(|c| c.answer.as_str()).collect();
        assert_eq!(answers, ["acknowledged", "declined", "accepted"]);
        assert_eq!(b.candidates[1].reason_code.as_deref(), Some("no_capacity"));
        assert_eq!(b.winner.as_deref(), Some("c"));
        assert!(!b.is_open());
        assert_eq!(b.taken_from("a"), Some("c"));
        assert_eq!(b.taken_from("c"), None);
        assert_eq!(b.taken_from("s"), None, "the sender is no candidate");
        assert_eq!(b.sender_next(), None);
    }

    #[test]
    fn the_sender_sees_how_far_an_open_broadcast_got_and_what_to_do_when_all_declined() {
        let env = envelope(&["a", "b"]);
        let mut history = vec![declined("a", "")];
        let b = Broadcast::read(&env, &history).unwrap();
        assert_eq!(b.candidates[0].reason_code, None, "a withheld code");
        assert_eq!(
            b.sender_next().as_deref(),
            Some("broadcast to 2 candidates, 1 declined")
        );
        history.push(declined("b", "out_of_area"));
        history.push(event(FeedbackKind::NoCandidateAccepted, "s"));
        let b = Broadcast::read(&env, &history).unwrap();
        assert!(b.no_candidate_accepted && b.is_open());
        assert_eq!(
            b.sender_next().as_deref(),
            Some("no candidate accepted: redirect or withdraw")
        );
    }

    #[test]
    fn a_broadcast_sent_on_by_its_sender_is_closed_and_later_acceptances_are_no_answers() {
        let mut redirect = event(FeedbackKind::Redirected, "s");
        redirect.details = Some(Details::Redirected(Redirect {
            to_agency_id: "a".into(),
            reason: String::new(),
            case_file: Vec::new(),
        }));
        let history = [
            declined("a", ""),
            declined("b", ""),
            event(FeedbackKind::NoCandidateAccepted, "s"),
            redirect,
            event(FeedbackKind::Accepted, "a"),
        ];
        let b = Broadcast::read(&envelope(&["a", "b"]), &history).unwrap();
        assert_eq!(b.redirected_to.as_deref(), Some("a"));
        assert_eq!(b.winner, None);
        assert_eq!(b.answer_of("a"), Some(Answer::Declined));
        assert_eq!(b.taken_from("b"), None);
        assert_eq!(b.sender_next(), None);
    }
}
