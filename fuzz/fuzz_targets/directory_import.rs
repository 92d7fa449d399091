//! The directory import (`spean-broker directory import`, `Directory::from_json`): the network's
//! JSON document, parsed and checked. A document may be refused, naming its field; it may not
//! panic. One that is accepted must be storable: the broker keeps it as JSON and reads it back
//! at every start, so what it writes must read back to the same directory. And every question
//! the broker asks of an accepted directory must be answerable.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spean_broker::directory::{Directory, DirectoryError};
use spean_broker::ids::{AgencyId, ProvinceCode};
use spean_broker::referral::{Code, Urgency};

fuzz_target!(|data: &[u8]| {
    let directory = match Directory::from_json(data) {
        Ok(directory) => directory,
        Err(DirectoryError::Invalid(e)) => {
            assert!(!e.field.is_empty(), "a refusal without a field: {e:?}");
            return;
        }
        Err(DirectoryError::Json(_)) => return,
    };
    let stored = match serde_json::to_string(&directory) {
        Ok(stored) => stored,
        Err(e) => panic!("an imported directory cannot be stored: {e}"),
    };
    let back = match Directory::from_json(stored.as_bytes()) {
        Ok(back) => back,
        Err(e) => panic!("a stored directory does not read back: {e}"),
    };
    assert_eq!(
        serde_json::to_string(&back).ok().as_deref(),
        Some(stored.as_str()),
        "a stored directory reads back different"
    );
    ask(&directory);
});

/// What the broker asks of its directory, about every agency, province and kind it names.
fn ask(directory: &Directory) {
    let provinces: Vec<ProvinceCode> = directory
        .provinces
        .iter()
        .map(|p| p.code.as_str())
        .chain(
            directory
                .agencies
                .iter()
                .flat_map(|a| a.provinces.iter().map(String::as_str)),
        )
        .filter_map(|p| ProvinceCode::parse("province", p).ok())
        .collect();
    let kinds: Vec<Code> = directory
        .referral_kinds
        .iter()
        .filter_map(|k| Code::parse("kind", &k.kind).ok())
        .collect();
    for kind in &kinds {
        let _ = directory.has_kind(kind);
        let _ = directory.follow_up_schedule(kind);
        for urgency in [Urgency::Emergency, Urgency::Urgent, Urgency::Routine] {
            let _ = directory.acknowledgement_deadline(kind, urgency);
        }
        for province in &provinces {
            let _ = directory.providers(kind, province);
        }
    }
    for tier in 0..=directory.escalation_tiers() + 1 {
        let _ = directory.after_deadlines(tier);
        for province in &provinces {
            let _ = directory.escalate_to(tier, province);
        }
    }
    for province in &provinces {
        let _ = directory.coordinators(province);
    }
    for agency in &directory.agencies {
        let id: &AgencyId = &agency.id;
        let _ = directory.agency(id);
        let _ = directory.oversight(id);
    }
}
