//! The referral state machine: who may do what in which state, written once.
//!
//! Everything that changes a referral goes through [`decide`]; the store only records what it allows.
//! The test at the bottom spells out the whole table, and `docs/reference.md` shows the same table.

use std::fmt;

/// Where a referral is in its loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Persisted and routed; the recipient's adapter has not stored it yet.
    Sent,
    Delivered,
    Acknowledged,
    Accepted,
    InProgress,
    Declined,
    Completed,
    Failed,
    Withdrawn,
    EnteredInError,
}

impl State {
    pub const ALL: [State; 10] = [
        State::Sent,
        State::Delivered,
        State::Acknowledged,
        State::Accepted,
        State::InProgress,
        State::Declined,
        State::Completed,
        State::Failed,
        State::Withdrawn,
        State::EnteredInError,
    ];

    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Sent => "sent",
            State::Delivered => "delivered",
            State::Acknowledged => "acknowledged",
            State::Accepted => "accepted",
            State::InProgress => "in_progress",
            State::Declined => "declined",
            State::Completed => "completed",
            State::Failed => "failed",
            State::Withdrawn => "withdrawn",
            State::EnteredInError => "entered_in_error",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// A closed loop: nothing but "entered in error" can follow.
    pub fn is_closed(self) -> bool {
        matches!(
            self,
            State::Declined
                | State::Completed
                | State::Failed
                | State::Withdrawn
                | State::EnteredInError
        )
    }

    /// Who must act next, for the sender's status view.
    pub fn next_actor(self) -> Option<Role> {
        match self {
            State::Sent
            | State::Delivered
            | State::Acknowledged
            | State::Accepted
            | State::InProgress => Some(Role::Recipient),
            _ => None,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which side of a referral an agency is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Sender,
    Recipient,
    /// The agency the recipient delegated the follow-up of an accepted referral to: it records
    /// follow-up visits and nothing else.
    Delegate,
    /// One of the agencies a broadcast went to, while no candidate has accepted it: it may
    /// acknowledge, decline or accept ([`decide_broadcast`]).
    Candidate,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Sender => "sender",
            Role::Recipient => "recipient",
            Role::Delegate => "delegate",
            Role::Candidate => "candidate",
        })
    }
}

/// What happened to a referral: one kind per history event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Submitted,
    Delivered,
    Acknowledged,
    Accepted,
    Declined,
    Redirected,
    InProgress,
    FollowUp,
    Completed,
    Failed,
    Withdrawn,
    EnteredInError,
    /// Recorded by the broker when the recipient let an acknowledgement deadline pass: the
    /// referral is escalated to the agencies of that tier, which become its notified parties.
    Escalated,
    /// Recorded by the broker when a follow-up visit was not recorded by its due date plus the
    /// schedule's grace: once per missed visit.
    FollowUpOverdue,
    /// The recipient handed the follow-up visits of an accepted referral to another agency.
    FollowUpDelegated,
    /// The recipient took the follow-up visits back from its delegate.
    DelegationRevoked,
    /// Recorded by the broker when every candidate of a broadcast declined it: its sender is
    /// told, and may redirect it to one agency or withdraw it.
    NoCandidateAccepted,
    /// The client or their guardian withdrew consent: every agency holding the referral deletes
    /// its case file and free text. It closes an open referral; nothing follows it.
    ConsentWithdrawn,
}

impl EventKind {
    pub const ALL: [EventKind; 18] = [
        EventKind::Submitted,
        EventKind::Delivered,
        EventKind::Acknowledged,
        EventKind::Accepted,
        EventKind::Declined,
        EventKind::Redirected,
        EventKind::InProgress,
        EventKind::FollowUp,
        EventKind::Completed,
        EventKind::Failed,
        EventKind::Withdrawn,
        EventKind::EnteredInError,
        EventKind::Escalated,
        EventKind::FollowUpOverdue,
        EventKind::FollowUpDelegated,
        EventKind::DelegationRevoked,
        EventKind::NoCandidateAccepted,
        EventKind::ConsentWithdrawn,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Submitted => "submitted",
            EventKind::Delivered => "delivered",
            EventKind::Acknowledged => "acknowledged",
            EventKind::Accepted => "accepted",
            EventKind::Declined => "declined",
            EventKind::Redirected => "redirected",
            EventKind::InProgress => "in_progress",
            EventKind::FollowUp => "follow_up",
            EventKind::Completed => "completed",
            EventKind::Failed => "failed",
            EventKind::Withdrawn => "withdrawn",
            EventKind::Escalated => "escalated",
            EventKind::FollowUpOverdue => "follow_up_overdue",
            EventKind::FollowUpDelegated => "follow_up_delegated",
            EventKind::DelegationRevoked => "delegation_revoked",
            EventKind::NoCandidateAccepted => "no_candidate_accepted",
            EventKind::ConsentWithdrawn => "consent_withdrawn",
            EventKind::EnteredInError => "entered_in_error",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == raw)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an action is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The caller is a party, but not the one this action belongs to.
    #[error("only the {allowed} may record {action}; this agency is the {actual}")]
    WrongParty {
        action: EventKind,
        allowed: &'static str,
        actual: Role,
    },
    /// The action is not possible in the referral's current state.
    #[error("cannot record {action} on a referral that is {state}")]
    WrongState { action: EventKind, state: State },
    /// Events the broker records itself and no caller may request.
    #[error("{action} is recorded by the broker, not requested")]
    NotAnAction { action: EventKind },
}

/// The outcome of an allowed action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub to: State,
}

/// The rules, written once: may `role` record `action` on a referral in `state`, and where does it go?
pub fn decide(state: State, role: Role, action: EventKind) -> Result<Transition, TransitionError> {
    use EventKind as E;
    use State as S;

    let parties: &[Role] = match action {
        E::Submitted
        | E::Delivered
        | E::Escalated
        | E::FollowUpOverdue
        | E::NoCandidateAccepted => {
            return Err(TransitionError::NotAnAction { action });
        }
        E::Withdrawn | E::EnteredInError => &[Role::Sender],
        E::FollowUp | E::ConsentWithdrawn => &[Role::Sender, Role::Recipient, Role::Delegate],
        E::FollowUpDelegated | E::DelegationRevoked => &[Role::Recipient],
        E::Acknowledged
        | E::Accepted
        | E::Declined
        | E::Redirected
        | E::InProgress
        | E::Completed
        | E::Failed => &[Role::Recipient],
    };
    if !parties.contains(&role) {
        return Err(TransitionError::WrongParty {
            action,
            allowed: if parties.len() == 3 {
                "sender, recipient or delegate"
            } else if parties.len() == 2 {
                "sender or recipient"
            } else if parties[0] == Role::Sender {
                "sender"
            } else {
                "recipient"
            },
            actual: role,
        });
    }

    let to = match (action, state) {
        (E::Acknowledged, S::Sent | S::Delivered) => S::Acknowledged,
        (E::Accepted, S::Sent | S::Delivered | S::Acknowledged) => S::Accepted,
        (E::Declined, S::Sent | S::Delivered | S::Acknowledged) => S::Declined,
        // A redirected referral starts its loop again with the new recipient.
        (E::Redirected, S::Sent | S::Delivered | S::Acknowledged) => S::Sent,
        (E::InProgress, S::Accepted) => S::InProgress,
        (E::FollowUp, S::Accepted | S::InProgress) => state,
        // Who makes the visits changes, not where the referral is.
        (E::FollowUpDelegated | E::DelegationRevoked, S::Accepted | S::InProgress) => state,
        (E::Completed, S::Accepted | S::InProgress) => S::Completed,
        (E::Failed, S::Accepted | S::InProgress) => S::Failed,
        (E::Withdrawn, s) if !s.is_closed() => S::Withdrawn,
        (E::EnteredInError, s) if s != S::EnteredInError => S::EnteredInError,
        // Whatever the state, the case must be deleted: an open referral closes, a closed one
        // keeps how it ended. That it is recorded once, the workflow decides from the history.
        (E::ConsentWithdrawn, s) if s.is_closed() => s,
        (E::ConsentWithdrawn, _) => S::Withdrawn,
        _ => return Err(TransitionError::WrongState { action, state }),
    };
    Ok(Transition { to })
}

/// The rules for a broadcast that no candidate has accepted yet (story 2), where nobody is the
/// recipient: each candidate may acknowledge, decline (which leaves the referral as it is for the
/// others) or accept (which makes it the recipient); the sender may redirect it to one agency,
/// withdraw it or mark it entered in error. That a candidate answers once, and what is left when
/// all declined, the workflow decides from the history.
pub fn decide_broadcast(
    state: State,
    role: Role,
    action: EventKind,
) -> Result<Transition, TransitionError> {
    use EventKind as E;
    use State as S;

    let allowed: &'static str = match action {
        E::Acknowledged | E::Accepted | E::Declined => "candidates",
        E::Redirected | E::Withdrawn | E::EnteredInError | E::ConsentWithdrawn => "sender",
        E::Submitted
        | E::Delivered
        | E::Escalated
        | E::FollowUpOverdue
        | E::NoCandidateAccepted => return Err(TransitionError::NotAnAction { action }),
        E::InProgress
        | E::FollowUp
        | E::Completed
        | E::Failed
        | E::FollowUpDelegated
        | E::DelegationRevoked => return Err(TransitionError::WrongState { action, state }),
    };
    let party = if allowed == "sender" {
        Role::Sender
    } else {
        Role::Candidate
    };
    if role != party {
        return Err(TransitionError::WrongParty {
            action,
            allowed,
            actual: role,
        });
    }
    let to = match (action, state) {
        (E::Acknowledged, S::Sent | S::Delivered | S::Acknowledged) => S::Acknowledged,
        (E::Accepted, S::Sent | S::Delivered | S::Acknowledged) => S::Accepted,
        (E::Declined, S::Sent | S::Delivered | S::Acknowledged) => state,
        // The sender sends it on to one agency: a one-to-one referral from now on.
        (E::Redirected, S::Sent | S::Delivered | S::Acknowledged) => S::Sent,
        (E::Withdrawn | E::EnteredInError | E::ConsentWithdrawn, _) => {
            return decide(state, Role::Sender, action);
        }
        _ => return Err(TransitionError::WrongState { action, state }),
    };
    Ok(Transition { to })
}

/// Whether the current recipient's confirmation that it stored the referral is news, given the
/// referral's history (oldest first): it is, unless a delivery was recorded since the referral last
/// reached a recipient (its submission or its last redirect). It is recorded whatever happened
/// meanwhile, because a recipient may act on a referral before its confirmation reaches the broker.
pub fn records_delivery(history: impl DoubleEndedIterator<Item = EventKind>) -> bool {
    for kind in history.rev() {
        match kind {
            EventKind::Delivered => return false,
            EventKind::Submitted | EventKind::Redirected => return true,
            _ => {}
        }
    }
    true
}

/// The state a recorded delivery leaves: `delivered` if nothing happened yet, else unchanged.
pub fn after_delivery(state: State) -> State {
    if state == State::Sent {
        State::Delivered
    } else {
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EventKind as E;
    use State as S;

    /// The whole table, spelled out independently of `decide`: (action, role, from, to).
    const ALLOWED: &[(EventKind, Role, State, State)] = &[
        (E::Acknowledged, Role::Recipient, S::Sent, S::Acknowledged),
        (
            E::Acknowledged,
            Role::Recipient,
            S::Delivered,
            S::Acknowledged,
        ),
        (E::Accepted, Role::Recipient, S::Sent, S::Accepted),
        (E::Accepted, Role::Recipient, S::Delivered, S::Accepted),
        (E::Accepted, Role::Recipient, S::Acknowledged, S::Accepted),
        (E::Declined, Role::Recipient, S::Sent, S::Declined),
        (E::Declined, Role::Recipient, S::Delivered, S::Declined),
        (E::Declined, Role::Recipient, S::Acknowledged, S::Declined),
        (E::Redirected, Role::Recipient, S::Sent, S::Sent),
        (E::Redirected, Role::Recipient, S::Delivered, S::Sent),
        (E::Redirected, Role::Recipient, S::Acknowledged, S::Sent),
        (E::InProgress, Role::Recipient, S::Accepted, S::InProgress),
        (E::FollowUp, Role::Recipient, S::Accepted, S::Accepted),
        (E::FollowUp, Role::Recipient, S::InProgress, S::InProgress),
        (E::FollowUp, Role::Sender, S::Accepted, S::Accepted),
        (E::FollowUp, Role::Sender, S::InProgress, S::InProgress),
        (E::FollowUp, Role::Delegate, S::Accepted, S::Accepted),
        (E::FollowUp, Role::Delegate, S::InProgress, S::InProgress),
        (
            E::FollowUpDelegated,
            Role::Recipient,
            S::Accepted,
            S::Accepted,
        ),
        (
            E::FollowUpDelegated,
            Role::Recipient,
            S::InProgress,
            S::InProgress,
        ),
        (
            E::DelegationRevoked,
            Role::Recipient,
            S::Accepted,
            S::Accepted,
        ),
        (
            E::DelegationRevoked,
            Role::Recipient,
            S::InProgress,
            S::InProgress,
        ),
        (E::Completed, Role::Recipient, S::Accepted, S::Completed),
        (E::Completed, Role::Recipient, S::InProgress, S::Completed),
        (E::Failed, Role::Recipient, S::Accepted, S::Failed),
        (E::Failed, Role::Recipient, S::InProgress, S::Failed),
        (E::Withdrawn, Role::Sender, S::Sent, S::Withdrawn),
        (E::Withdrawn, Role::Sender, S::Delivered, S::Withdrawn),
        (E::Withdrawn, Role::Sender, S::Acknowledged, S::Withdrawn),
        (E::Withdrawn, Role::Sender, S::Accepted, S::Withdrawn),
        (E::Withdrawn, Role::Sender, S::InProgress, S::Withdrawn),
        (E::EnteredInError, Role::Sender, S::Sent, S::EnteredInError),
        (
            E::EnteredInError,
            Role::Sender,
            S::Delivered,
            S::EnteredInError,
        ),
        (
            E::EnteredInError,
            Role::Sender,
            S::Acknowledged,
            S::EnteredInError,
        ),
        (
            E::EnteredInError,
            Role::Sender,
            S::Accepted,
            S::EnteredInError,
        ),
        (
            E::EnteredInError,
            Role::Sender,
            S::InProgress,
            S::EnteredInError,
        ),
        (
            E::EnteredInError,
            Role::Sender,
            S::Declined,
            S::EnteredInError,
        ),
        (
            E::EnteredInError,
            Role::Sender,
            S::Completed,
            S::EnteredInError,
        ),
        (
            E::EnteredInError,
            Role::Sender,
            S::Failed,
            S::EnteredInError,
        ),
        (
            E::EnteredInError,
            Role::Sender,
            S::Withdrawn,
            S::EnteredInError,
        ),
    ];

    /// The open broadcast's table, spelled out the same way.
    const BROADCAST: &[(EventKind, Role, State, State)] = &[
        (E::Acknowledged, Role::Candidate, S::Sent, S::Acknowledged),
        (
            E::Acknowledged,
            Role::Candidate,
            S::Delivered,
            S::Acknowledged,
        ),
        (
            E::Acknowledged,
            Role::Candidate,
            S::Acknowledged,
            S::Acknowledged,
        ),
        (E::Accepted, Role::Candidate, S::Sent, S::Accepted),
        (E::Accepted, Role::Candidate, S::Delivered, S::Accepted),
        (E::Accepted, Role::Candidate, S::Acknowledged, S::Accepted),
        (E::Declined, Role::Candidate, S::Sent, S::Sent),
        (E::Declined, Role::Candidate, S::Delivered, S::Delivered),
        (
            E::Declined,
            Role::Candidate,
            S::Acknowledged,
            S::Acknowledged,
        ),
        (E::Redirected, Role::Sender, S::Sent, S::Sent),
        (E::Redirected, Role::Sender, S::Delivered, S::Sent),
        (E::Redirected, Role::Sender, S::Acknowledged, S::Sent),
        (E::Withdrawn, Role::Sender, S::Sent, S::Withdrawn),
        (E::Withdrawn, Role::Sender, S::Delivered, S::Withdrawn),
        (E::Withdrawn, Role::Sender, S::Acknowledged, S::Withdrawn),
        (E::EnteredInError, Role::Sender, S::Sent, S::EnteredInError),
        (
            E::EnteredInError,
            Role::Sender,
            S::Delivered,
            S::EnteredInError,
        ),
        (
            E::EnteredInError,
            Role::Sender,
            S::Acknowledged,
            S::EnteredInError,
        ),
        (
            E::EnteredInError,
            Role::Sender,
            S::Withdrawn,
            S::EnteredInError,
        ),
        (E::ConsentWithdrawn, Role::Sender, S::Sent, S::Withdrawn),
        (
            E::ConsentWithdrawn,
            Role::Sender,
            S::Delivered,
            S::Withdrawn,
        ),
        (
            E::ConsentWithdrawn,
            Role::Sender,
            S::Acknowledged,
            S::Withdrawn,
        ),
        (
            E::ConsentWithdrawn,
            Role::Sender,
            S::Withdrawn,
            S::Withdrawn,
        ),
    ];

    /// A withdrawal of consent: by the sender, the recipient or the delegate, from every state; an
    /// open referral closes as withdrawn, a closed one keeps how it ended.
    const CONSENT_WITHDRAWN: &[(EventKind, Role, State, State)] = &{
        let roles = [Role::Sender, Role::Recipient, Role::Delegate];
        let mut table = [(E::ConsentWithdrawn, Role::Sender, S::Sent, S::Sent); 30];
        let mut i = 0;
        while i < 30 {
            let state = State::ALL[i % 10];
            let to = match state {
                S::Declined | S::Completed | S::Failed | S::Withdrawn | S::EnteredInError => state,
                _ => S::Withdrawn,
            };
            table[i] = (E::ConsentWithdrawn, roles[i / 10], state, to);
            i += 1;
        }
        table
    };

    #[test]
    fn an_open_broadcast_follows_its_own_table() {
        // A broadcast is open only while nobody accepted it: Sent, Delivered, Acknowledged, or
        // closed by its sender.
        let open = [S::Sent, S::Delivered, S::Acknowledged, S::Withdrawn];
        for action in EventKind::ALL {
            for role in [Role::Sender, Role::Candidate] {
                for state in open {
                    let expected = BROADCAST
                        .iter()
                        .find(|(a, r, from, _)| *a == action && *r == role && *from == state)
                        .map(|(_, _, _, to)| *to);
                    let got = decide_broadcast(state, role, action).ok().map(|t| t.to);
                    assert_eq!(got, expected, "{action} by {role} from {state}");
                }
            }
        }
        assert_eq!(
            decide_broadcast(S::Delivered, Role::Sender, E::Accepted)
                .unwrap_err()
                .to_string(),
            "only the candidates may record accepted; this agency is the sender"
        );
    }

    #[test]
    fn every_listed_transition_is_allowed_and_every_other_is_refused() {
        for action in EventKind::ALL {
            for role in [
                Role::Sender,
                Role::Recipient,
                Role::Delegate,
                Role::Candidate,
            ] {
                for state in State::ALL {
                    let expected = ALLOWED
                        .iter()
                        .chain(CONSENT_WITHDRAWN)
                        .find(|(a, r, from, _)| *a == action && *r == role && *from == state)
                        .map(|(_, _, _, to)| *to);
                    let got = decide(state, role, action).ok().map(|t| t.to);
                    assert_eq!(got, expected, "{action} by {role} from {state}");
                }
            }
        }
    }

    #[test]
    fn the_wrong_party_is_told_who_may_act_before_the_state_is_considered() {
        let err = decide(S::Completed, Role::Sender, E::Accepted).unwrap_err();
        assert!(matches!(err, TransitionError::WrongParty { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "only the recipient may record accepted; this agency is the sender"
        );
        let err = decide(S::Sent, Role::Recipient, E::Withdrawn).unwrap_err();
        assert!(matches!(err, TransitionError::WrongParty { .. }));
    }

    #[test]
    fn a_declined_referral_cannot_be_completed() {
        let err = decide(S::Declined, Role::Recipient, E::Completed).unwrap_err();
        assert_eq!(
            err,
            TransitionError::WrongState {
                action: E::Completed,
                state: S::Declined
            }
        );
        assert_eq!(
            err.to_string(),
            "cannot record completed on a referral that is declined"
        );
    }

    #[test]
    fn submitted_and_delivered_are_recorded_by_the_broker_only() {
        for role in [Role::Sender, Role::Recipient] {
            for state in State::ALL {
                assert!(matches!(
                    decide(state, role, E::Delivered),
                    Err(TransitionError::NotAnAction { .. })
                ));
                assert!(decide(state, role, E::Submitted).is_err());
            }
        }
    }

    #[test]
    fn a_delivery_is_recorded_once_per_recipient_whatever_came_first() {
        let recorded = |h: &[EventKind]| records_delivery(h.iter().copied());
        assert!(recorded(&[E::Submitted]));
        assert!(!recorded(&[E::Submitted, E::Delivered]));
        // The recipient acknowledged before its confirmation arrived: still news.
        assert!(recorded(&[E::Submitted, E::Acknowledged]));
        assert!(!recorded(&[E::Submitted, E::Acknowledged, E::Delivered]));
        // A redirect starts the loop again with the new recipient.
        assert!(recorded(&[E::Submitted, E::Delivered, E::Redirected]));
        assert!(!recorded(&[
            E::Submitted,
            E::Delivered,
            E::Redirected,
            E::Delivered
        ]));
        assert_eq!(after_delivery(S::Sent), S::Delivered);
        assert_eq!(after_delivery(S::Acknowledged), S::Acknowledged);
        assert_eq!(after_delivery(S::Withdrawn), S::Withdrawn);
    }

    #[test]
    fn names_round_trip() {
        for s in State::ALL {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
    }
}
