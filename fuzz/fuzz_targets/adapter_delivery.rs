//! What an adapter does with the bytes of a delivery from the broker: decode the `Delivery`,
//! decide whether it concerns this agency, decode the case file it carries (and the follow-up part
//! a delegation carries), read the broadcast and the follow-up schedule from the history, and
//! render it all as `show` does, as text and as JSON. A delivery may be refused or rendered with
//! placeholders; it may not panic or hang the adapter.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use spean_adapter::broadcast::Broadcast;
use spean_adapter::case_file::CaseFile;
use spean_adapter::cli::{Lines, case_file_lines, event_json, history_row, shown};
use spean_adapter::delivery::concerns;
use spean_adapter::follow_up::{self, Schedule};
use spean_adapter::referral::{
    age_band_name, audience_name, is_closed, next_action, sex_name, state_name, urgency_name,
};
use spean_adapter::store::timestamp;
use spean_proto::v1::{Delivery, Envelope, FeedbackEvent, delivery::Payload};

/// The agency this adapter is.
const ME: &str = "ngo-a";
/// A fixed "now" (2026-01-01), so that a run is repeatable.
const NOW: i64 = 1_767_225_600;

fuzz_target!(|data: &[u8]| {
    let Ok(delivery) = Delivery::decode(data) else {
        return;
    };
    let _ = concerns(&delivery, ME);
    match &delivery.payload {
        Some(Payload::Referral(referral)) => {
            let state = state_name(referral.state);
            let _ = is_closed(&state);
            let _ = audience_name(referral.audience);
            if let Some(envelope) = &referral.envelope {
                envelope_shown(envelope, &state);
                let _ = Broadcast::read(envelope, &referral.history);
            }
            case_file_shown(&referral.case_file);
            history_shown(&referral.history, &state);
        }
        Some(Payload::Feedback(event)) => history_shown(std::slice::from_ref(event), "sent"),
        None => {}
    }
});

/// The envelope as `show` prints it, and as the store keeps it (encoded, read back).
fn envelope_shown(envelope: &Envelope, state: &str) {
    for text in [
        &envelope.referral_id,
        &envelope.client_ref,
        &envelope.sender_agency_id,
        &envelope.recipient_agency_id,
        &envelope.kind,
        &envelope.client_pseudonym,
        &envelope.follows_referral_id,
    ] {
        let _ = shown(text, Lines::One);
    }
    let _ = shown(&envelope.notified_agency_ids.join(", "), Lines::One);
    let _ = urgency_name(envelope.urgency);
    if let Some(subject) = &envelope.subject {
        let _ = (sex_name(subject.sex), age_band_name(subject.age_band));
    }
    let _ = timestamp(envelope.created_at.as_ref());
    let _ = timestamp(envelope.updated_at.as_ref());
    let _ = next_action(state, &envelope.recipient_agency_id);
    let stored = Envelope::decode(envelope.encode_to_vec().as_slice());
    assert!(
        stored.is_ok_and(|back| &back == envelope),
        "an envelope does not read back"
    );
}

/// The case file section of `show`, and the follow-up part a recipient would hand on from it.
fn case_file_shown(bytes: &[u8]) {
    let Ok(case_file) = CaseFile::decode(bytes) else {
        return;
    };
    let _ = case_file_lines(&case_file);
    let part = case_file.follow_up_part();
    let back = CaseFile::decode(&part.encode());
    assert!(
        back.is_ok_and(|back| back == part),
        "a follow-up part does not read back"
    );
}

/// The history table, `--json`, the follow-up schedule and the delegation in force.
fn history_shown(history: &[FeedbackEvent], state: &str) {
    for event in history {
        let _ = history_row(event);
        let _ = event_json(event).to_string();
        let _ = follow_up::without_follow_up_part(event);
    }
    let schedule = Schedule::read(history, state, NOW);
    let _ = serde_json::to_string(&schedule);
    let _ = follow_up::active_delegation(history).and_then(follow_up::delegated_to);
    let _ = follow_up::follow_up_is_with(history, ME, ME);
    let _ = follow_up::ended_delegations_holding_a_part(history, ME);
    if let Some(part) = follow_up::follow_up_part_for(history, ME) {
        case_file_shown(part);
    }
}
